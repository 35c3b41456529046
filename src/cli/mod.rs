//! The command line: one file per command group, clap derive.

mod advise_cmd;
mod browse;
mod common;
mod diff_cmd;
mod lifecycle_cmds;
mod mount_cmds;
pub mod mount_helper;
mod remote_cmds;
mod repo_cmds;
mod restore_cmd;
mod snapshot_cmds;
mod stats_cmd;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

pub use common::{Out, RepoArg};

use rewindfs::daemon::control::{self, Request, Response};
use rewindfs::fs::creds::Caller;
use rewindfs::remote::read;
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

/// What a command does to the repository.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    Read,
    Write,
}

/// Run a repository command here, or in the daemon that holds the
/// repository (sled allows one process per database).
///
/// Only a trusted repository (see `repo::trust`) is written to or has
/// its daemon asked. A command that only reads may read a repository
/// that fails the trust checks, or sits on read-only media: it then
/// opens it without writing anything, says so on stderr, and treats its
/// content as untrusted data.
fn with_repo(
    repo: &RepoArg,
    usage: Use,
    f: impl FnOnce(&Repository, &mut Out) -> Result<i32>,
) -> Result<i32> {
    use rewindfs::repo::trust;
    let path = repo.resolve()?;
    let repo = &path;
    let trusted = match trust::open_trusted(repo, trust::Open::Existing) {
        Ok(_) => true,
        Err(e @ rewindfs::Error::Untrusted { .. }) if usage == Use::Write => {
            return Err(e).context("this command writes to the repository");
        }
        Err(rewindfs::Error::Untrusted { .. }) => false,
        Err(e) => return Err(e).with_context(|| format!("opening repository {}", repo.display())),
    };
    if trusted && control::daemon_running(repo) {
        use std::os::unix::ffi::OsStrExt;
        let mut args: Vec<Vec<u8>> = std::env::args_os()
            .skip(1)
            .map(|a| a.as_bytes().to_vec())
            .collect();
        // The repository may have come from REWINDFS_REPO or from
        // discovery: spell it out right after the subcommand (never after
        // a `--`, where it would be a positional argument).
        if !args
            .iter()
            .any(|a| a == b"--repo" || a.starts_with(b"--repo="))
        {
            let mut a = b"--repo=".to_vec();
            a.extend_from_slice(repo.as_os_str().as_bytes());
            let at = 1.min(args.len());
            args.insert(at, a);
        }
        let cwd = std::env::current_dir()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .unwrap_or_default();
        let code = control::call_cli(
            repo,
            args,
            cwd,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )
        .with_context(|| format!("asking the mount daemon of {}", repo.display()))?;
        return Ok(code);
    }
    let open = |p: &Path| -> Result<(Repository, Option<String>)> {
        match usage {
            Use::Write => Ok((Repository::open(p)?, None)),
            Use::Read => Ok(Repository::open_for_reading(p)?),
        }
    };
    let (r, note) = open(repo).with_context(|| format!("opening repository {}", repo.display()))?;
    if let Some(n) = note {
        eprintln!("warning: {n}");
    }
    with_open(&r, f)
}

/// Run a command on a repository this process opened.
fn with_open(r: &Repository, f: impl FnOnce(&Repository, &mut Out) -> Result<i32>) -> Result<i32> {
    let stdout = std::io::stdout();
    // stderr is not held locked: progress bars draw on it from their own
    // threads.
    let mut stderr = std::io::stderr();
    use std::io::IsTerminal;
    let terminal = stderr.is_terminal();
    let mut o = Out {
        out: &mut stdout.lock(),
        err: &mut stderr,
        terminal,
        caller_is_root: rustix::process::geteuid().is_root(),
    };
    f(r, &mut o)
}

/// Run a repository command inside the daemon (for `control`'s `cli`
/// requests): `args` without the program name, relative paths resolved
/// against the client's `cwd`.
pub fn run_in_daemon(args: &[Vec<u8>], cwd: &Path, repo: &Repository, o: &mut Out) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    let argv = std::iter::once(std::ffi::OsString::from("rewindfs")).chain(
        args.iter()
            .map(|a| std::ffi::OsStr::from_bytes(a).to_os_string()),
    );
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = write!(o.err, "{e}");
            return 2;
        }
    };
    let abs = |p: PathBuf| if p.is_absolute() { p } else { cwd.join(p) };
    let r = match cli.command {
        Command::Snapshot(mut a) => {
            a.source = a.source.map(abs);
            snapshot_cmds::snapshot(repo, a, o)
        }
        Command::Snapshots(a) => snapshot_cmds::list(repo, a, o),
        Command::Ls(a) => browse::ls(repo, a, o),
        Command::Cat(a) => browse::cat(repo, a, o),
        Command::Diff(a) => diff_cmd::run(repo, a, o),
        Command::Stats(a) => stats_cmd::run(repo, a, o),
        Command::Advise(a) => advise_cmd::run(repo, a, o),
        Command::Forget(a) => lifecycle_cmds::forget_cmd(repo, a, o),
        Command::Gc(a) => lifecycle_cmds::gc_cmd(repo, a, o),
        Command::Restore(mut a) => {
            a.to = abs(a.to);
            restore_cmd::restore(repo, a, o)
        }
        Command::Verify(a) => repo_cmds::verify(repo, a, o),
        Command::Push(a) => remote_cmds::push(repo, a, o),
        _ => Err(anyhow::anyhow!(
            "this command cannot run while the repository is mounted; unmount it first"
        )),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(o.err, "error: {e:#}");
            1
        }
    }
}

/// The hook the daemon uses to run forwarded commands (on a thread that
/// acts as the client).
pub fn daemon_hook() -> rewindfs::daemon::CliHook {
    Arc::new(
        |args: &[Vec<u8>],
         cwd: &Path,
         repo: &Repository,
         caller: Caller,
         out: &mut dyn Write,
         err: &mut dyn Write| {
            let mut o = Out {
                out,
                err,
                terminal: false,
                caller_is_root: caller.uid == 0,
            };
            run_in_daemon(args, cwd, repo, &mut o)
        },
    )
}

/// `rewindfs snapshot` without `--source`: ask the live mount.
fn live_snapshot(a: &snapshot_cmds::SnapshotArgs) -> Result<i32> {
    let repo = &a.repo().resolve()?;
    let resp = control::call(
        repo,
        &Request::Snapshot {
            kind: Some(a.kind.clone()),
            label: a.label.clone(),
        },
        Duration::from_secs(24 * 3600),
    )
    .map_err(|e| match e {
        control::CallError::NotRunning => anyhow::anyhow!(
            "no live mount holds {}: give --source DIR to snapshot a directory by scanning it",
            repo.display()
        ),
        e => anyhow::anyhow!("asking the mount daemon of {}: {e}", repo.display()),
    })?;
    let Response::Snapshot { record } = resp else {
        anyhow::bail!("the daemon did not return the snapshot");
    };
    println!("{}", snapshot_cmds::describe(&record));
    Ok(0)
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(repo_cmds::InitArgs),
    /// Take a snapshot of a directory by scanning it.
    Snapshot(snapshot_cmds::SnapshotArgs),
    /// List snapshots: what each added, what only it references (UNIQUE),
    /// and what the files it rewrote share with their earlier versions
    /// (SHARED: shared/rewritten bytes).
    Snapshots(snapshot_cmds::ListArgs),
    /// List a directory of a snapshot.
    Ls(browse::LsArgs),
    /// Write a file of a snapshot to standard output.
    Cat(browse::CatArgs),
    /// What changed between two snapshots (added, removed, modified,
    /// metadata only, type changed, renamed), from their manifests alone.
    Diff(diff_cmd::DiffArgs),
    /// Where the space goes: logical, stored and unique bytes per snapshot,
    /// the bytes its rewritten files share with their earlier versions,
    /// deduplication and compression, chunks, packs, chain lengths.
    Stats(stats_cmd::StatsArgs),
    /// Which schedule suits this dataset: from the repository's history
    /// (change per hour and day, manifest sizes, restore speed), the
    /// stored and read bytes per week, worst restore chain and time, and
    /// recovery-point age of candidate schedules; --rpo/--rto mark the
    /// cheapest that meets them.
    Advise(advise_cmd::AdviseArgs),
    /// Remove snapshots, by name or by keep rules (--keep-daily 7 ...),
    /// rewriting the chains that depend on them (synthetic fulls from
    /// manifests). The space comes back with `gc` (or --prune).
    Forget(lifecycle_cmds::ForgetArgs),
    /// Delete chunks no snapshot references and repack mostly-empty packs.
    Gc(lifecycle_cmds::GcArgs),
    /// Restore a snapshot, a directory or a file into a directory.
    Restore(restore_cmd::RestoreArgs),
    /// Check the repository: index, snapshot references, and optionally all data.
    Verify(repo_cmds::VerifyArgs),
    /// Recreate the index from the pack files and snapshot records.
    RebuildIndex(repo_cmds::RebuildArgs),
    /// Serve a data directory through FUSE, recording every change.
    Mount(Box<mount_cmds::MountArgs>),
    /// Mount one snapshot (or all of them) read-only.
    MountSnapshot(mount_cmds::MountSnapshotArgs),
    /// Unmount a live or snapshot mount cleanly (flushing the change journal).
    Umount(mount_cmds::UmountArgs),
    /// Show the state of the live mount of a repository.
    Status(mount_cmds::StatusArgs),
    /// Manage the object stores this repository replicates to.
    #[command(subcommand)]
    Remote(remote_cmds::RemoteCmd),
    /// Replicate the snapshots a remote lacks now (a live mount does it
    /// after each snapshot). Resumes where an interrupted push stopped.
    Push(remote_cmds::PushArgs),
    /// Rebuild a local repository from a remote (disaster recovery).
    Pull(remote_cmds::PullArgs),
}

/// Run a command. Returns the process exit code for outcomes that are not
/// errors but still must be non-zero (damage found by verify).
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Init(a) => repo_cmds::init(a),
        Command::Snapshot(a) if a.source.is_none() => live_snapshot(&a),
        Command::Snapshot(a) => {
            let r = a.repo().clone();
            with_repo(&r, Use::Write, |repo, o| {
                snapshot_cmds::snapshot(repo, a, o)
            })
        }
        Command::Snapshots(a) if a.all_hosts => snapshot_cmds::list_all_hosts(a),
        Command::Snapshots(a) => {
            if let Some(rr) = a.remote().open(read::DEFAULT_CACHE_BYTES)? {
                return with_open(&rr.repo, |repo, o| snapshot_cmds::list(repo, a, o));
            }
            let r = a.repo().clone();
            with_repo(&r, Use::Read, |repo, o| snapshot_cmds::list(repo, a, o))
        }
        Command::Ls(a) => {
            if let Some(rr) = a.remote().open(read::DEFAULT_CACHE_BYTES)? {
                return with_open(&rr.repo, |repo, o| browse::ls(repo, a, o));
            }
            let r = a.repo().clone();
            with_repo(&r, Use::Read, |repo, o| browse::ls(repo, a, o))
        }
        Command::Cat(a) => {
            if let Some(rr) = a.remote().open(read::DEFAULT_CACHE_BYTES)? {
                return with_open(&rr.repo, |repo, o| browse::cat(repo, a, o));
            }
            let r = a.repo().clone();
            with_repo(&r, Use::Read, |repo, o| browse::cat(repo, a, o))
        }
        Command::Diff(a) => {
            let r = a.repo().clone();
            with_repo(&r, Use::Read, |repo, o| diff_cmd::run(repo, a, o))
        }
        Command::Stats(a) => {
            let r = a.repo().clone();
            with_repo(&r, Use::Read, |repo, o| stats_cmd::run(repo, a, o))
        }
        Command::Advise(a) => {
            let r = a.repo().clone();
            with_repo(&r, Use::Read, |repo, o| advise_cmd::run(repo, a, o))
        }
        Command::Forget(a) => {
            let r = a.repo().clone();
            with_repo(&r, Use::Write, |repo, o| {
                lifecycle_cmds::forget_cmd(repo, a, o)
            })
        }
        Command::Gc(a) => {
            let r = a.repo().clone();
            with_repo(&r, Use::Write, |repo, o| lifecycle_cmds::gc_cmd(repo, a, o))
        }
        Command::Restore(a) => {
            if let Some(rr) = a.remote().open(read::DEFAULT_CACHE_BYTES)? {
                remote_cmds::note_untrusted(&rr);
                return with_open(&rr.repo, |repo, o| restore_cmd::restore(repo, a, o));
            }
            let r = a.repo().clone();
            with_repo(&r, Use::Read, |repo, o| restore_cmd::restore(repo, a, o))
        }
        Command::Verify(a) => {
            if let Some(rr) = a.remote().open(read::DEFAULT_CACHE_BYTES)? {
                return with_open(&rr.repo, |repo, o| repo_cmds::verify(repo, a, o));
            }
            let r = a.repo().clone();
            with_repo(&r, Use::Read, |repo, o| repo_cmds::verify(repo, a, o))
        }
        Command::RebuildIndex(a) => {
            let repo = a.repo.clone();
            if control::daemon_running(&repo) {
                anyhow::bail!(
                    "{} is mounted; unmount it before rebuilding its index",
                    repo.display()
                );
            }
            repo_cmds::rebuild(a)
        }
        Command::Mount(a) => mount_cmds::mount(*a, daemon_hook()),
        Command::MountSnapshot(a) => mount_cmds::mount_snapshot(a, daemon_hook()),
        Command::Umount(a) => mount_cmds::umount(a),
        Command::Status(a) => mount_cmds::status(a),
        Command::Remote(c) => remote_cmds::remote(c),
        Command::Push(a) => {
            let r = a.repo().clone();
            with_repo(&r, Use::Write, |repo, o| remote_cmds::push(repo, a, o))
        }
        Command::Pull(a) => remote_cmds::pull(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::{human_bytes, parse_size, parse_size_u64};

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("1T").is_err());
        assert!(parse_size("x").is_err());
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert!(parse_size_u64("99999999999999999999G").is_err());
        assert!(parse_size_u64("18446744073709551615G").is_err());
    }

    proptest::proptest! {
        #[test]
        fn sizes_parse_or_err(s in "\\PC{0,24}", n in proptest::num::u64::ANY, unit in "(|b|k|K|kib|M|MiB|g|G|t)") {
            let _ = parse_size(&s);
            let _ = parse_size_u64(&s);
            if let Ok(v) = parse_size_u64(&format!("{n}{unit}")) {
                proptest::prop_assert!(v >= n);
            }
        }

        #[test]
        fn human_bytes_never_panics(n in proptest::num::u64::ANY) {
            let _ = human_bytes(n);
        }

        #[test]
        fn any_command_line_parses_or_errs(args in proptest::collection::vec("\\PC{0,12}", 0..6)) {
            let argv = std::iter::once("rewindfs".to_string()).chain(args);
            let _ = Cli::try_parse_from(argv);
        }
    }
}
