//! The command line: one file per command group, clap derive.

mod browse;
mod mount_cmds;
mod repo_cmds;
mod restore_cmd;
mod snapshot_cmds;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use rewindfs::repo::Repository;

#[derive(Parser)]
#[command(
    name = "rewindfs",
    version,
    about = "Continuous-backup filesystem for AI data: versioned snapshots of a directory",
    long_about = "rewindfs keeps versions of a data directory in a repository of \
deduplicated, compressed, content-addressed blocks. Snapshots are full, incremental \
(changes since the previous snapshot) or differential (changes since the last full one). \
Set the repository with --repo or the REWINDFS_REPO environment variable."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct RepoArg {
    /// Repository directory.
    #[arg(long, env = "REWINDFS_REPO", value_name = "DIR")]
    pub repo: PathBuf,
}

impl RepoArg {
    pub fn open(&self) -> Result<Repository> {
        Repository::open(&self.repo)
            .with_context(|| format!("opening repository {}", self.repo.display()))
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(repo_cmds::InitArgs),
    /// Take a snapshot of a directory by scanning it.
    Snapshot(snapshot_cmds::SnapshotArgs),
    /// List snapshots.
    Snapshots(snapshot_cmds::ListArgs),
    /// List a directory of a snapshot.
    Ls(browse::LsArgs),
    /// Write a file of a snapshot to standard output.
    Cat(browse::CatArgs),
    /// Restore a snapshot, a directory or a file into a directory.
    Restore(restore_cmd::RestoreArgs),
    /// Check the repository: index, snapshot references, and optionally all data.
    Verify(repo_cmds::VerifyArgs),
    /// Recreate the index from the pack files and snapshot records.
    RebuildIndex(repo_cmds::RebuildArgs),
    /// Serve a data directory through FUSE, recording every change.
    Mount(mount_cmds::MountArgs),
    /// Unmount a live mount cleanly (flushing its change journal).
    Umount(mount_cmds::UmountArgs),
    /// Show the state of the live mount of a repository.
    Status(mount_cmds::StatusArgs),
}

/// Run a command. Returns the process exit code for outcomes that are not
/// errors but still must be non-zero (damage found by verify).
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Init(a) => repo_cmds::init(a),
        Command::Snapshot(a) => snapshot_cmds::snapshot(a),
        Command::Snapshots(a) => snapshot_cmds::list(a),
        Command::Ls(a) => browse::ls(a),
        Command::Cat(a) => browse::cat(a),
        Command::Restore(a) => restore_cmd::restore(a),
        Command::Verify(a) => repo_cmds::verify(a),
        Command::RebuildIndex(a) => repo_cmds::rebuild(a),
        Command::Mount(a) => mount_cmds::mount(a),
        Command::Umount(a) => mount_cmds::umount(a),
        Command::Status(a) => mount_cmds::status(a),
    }
}

/// Parse sizes like `1M`, `64KiB`, `1048576`.
pub fn parse_size(s: &str) -> std::result::Result<u32, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(format!("bad size unit {u:?} in {s:?} (use K, M or G)")),
    };
    u32::try_from(n * mult).map_err(|_| format!("size {s:?} is too large"))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("1T").is_err());
        assert!(parse_size("x").is_err());
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
