//! `init`, `verify`, `rebuild-index`.
//!
//! `verify` may run inside the daemon for a client: it writes only to its
//! `Out` (the lints below make printing elsewhere a build error).
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::common::{parse_size, Out, RepoArg};
use rewindfs::repo::{self, Repository, DEFAULT_COMPRESSION};

#[derive(Args)]
pub struct InitArgs {
    /// Directory to create the repository in (new or empty).
    #[arg(long, env = "REWINDFS_REPO", value_name = "DIR")]
    repo: PathBuf,
    /// Block size: a power of two from 64K to 8M. Changes are tracked and
    /// deduplicated per block.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
    block_size: u32,
    /// zstd compression level (0 = off, 1-19). Blocks that do not shrink by
    /// ~3% are stored raw.
    #[arg(long, value_name = "LEVEL", default_value_t = DEFAULT_COMPRESSION)]
    compression: i32,
    /// Encrypt everything the repository stores (blocks, manifests,
    /// snapshot records; chunk ids keyed) with XChaCha20-Poly1305. The key
    /// is wrapped under a passphrase (REWINDFS_PASSWORD or
    /// REWINDFS_PASSWORD_FILE; Argon2id) or a key file of at least 32
    /// random bytes (REWINDFS_KEY_FILE), which every later command needs
    /// too. Lose it and the data is gone: keep a copy apart.
    #[arg(long)]
    encrypt: bool,
}

#[allow(clippy::print_stdout)] // never runs in the daemon
pub fn init(a: InitArgs) -> Result<i32> {
    let key = if a.encrypt {
        Some(repo::keys::KeySource::from_env()?.ok_or_else(|| {
            anyhow::anyhow!(
                "--encrypt needs a passphrase (REWINDFS_PASSWORD or REWINDFS_PASSWORD_FILE) or a key file (REWINDFS_KEY_FILE)"
            )
        })?)
    } else {
        None
    };
    let c = Repository::init_with(&a.repo, a.block_size, a.compression, key.as_ref())
        .with_context(|| format!("creating repository {}", a.repo.display()))?;
    println!(
        "created repository {} (block size {}, zstd level {}{})",
        a.repo.display(),
        super::common::human_bytes(c.block_size as u64),
        c.compression_level,
        if c.encryption.is_some() {
            ", encrypted: keep the passphrase or key file safe, nothing can be read without it"
        } else {
            ""
        }
    );
    Ok(0)
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    repo: RepoArg,
    #[command(flatten)]
    remote: super::remote_cmds::RemoteRead,
    /// Also read every chunk and check its hashes (reads the whole repository).
    #[arg(long)]
    read_data: bool,
    /// With --read-data: read only the chunks in a random PERCENT of the
    /// packs (a different sample every run), e.g. `--sample 5`.
    #[arg(long, value_name = "PERCENT", requires = "read_data", value_parser = super::common::parse_percent)]
    sample: Option<f64>,
}

impl VerifyArgs {
    pub fn repo(&self) -> &RepoArg {
        &self.repo
    }

    pub fn remote(&self) -> &super::remote_cmds::RemoteRead {
        &self.remote
    }
}

pub fn verify(repo: &Repository, a: VerifyArgs, o: &mut Out) -> Result<i32> {
    use rewindfs::verify::DataCheck;
    let data = match (a.read_data, a.sample) {
        (false, _) => DataCheck::None,
        (true, None) => DataCheck::All,
        (true, Some(p)) => DataCheck::Sample(p),
    };
    let r = rewindfs::verify::verify_with(repo, data).context("verifying")?;
    for p in &r.problems {
        writeln!(o.out, "problem: {p}")?;
    }
    for (id, files) in &r.damaged {
        writeln!(o.out, "snapshot {id} is damaged:")?;
        for f in files {
            writeln!(o.out, "  {f}")?;
        }
    }
    let what = match (data, r.packs_sampled) {
        (DataCheck::Sample(p), Some((n, total))) => format!(
            "checked references to {} chunks and the data of {} in {n} of {total} packs ({p}% sample)",
            r.chunks_checked, r.chunks_read
        ),
        (DataCheck::All, _) => format!("checked data of {} chunks", r.chunks_checked),
        _ => format!("checked references to {} chunks", r.chunks_checked),
    };
    if r.ok() {
        writeln!(o.out, "ok: {} snapshots, {what}", r.snapshots)?;
        Ok(0)
    } else {
        writeln!(
            o.err,
            "error: {} of {} snapshots are damaged",
            r.damaged.len(),
            r.snapshots
        )?;
        Ok(1)
    }
}

#[derive(Args)]
pub struct RebuildArgs {
    /// Repository directory (it must not be mounted).
    #[arg(long, env = "REWINDFS_REPO", value_name = "DIR")]
    pub repo: std::path::PathBuf,
}

#[allow(clippy::print_stdout)] // never runs in the daemon
pub fn rebuild(a: RebuildArgs) -> Result<i32> {
    let r = repo::rebuild_index(&a.repo)
        .with_context(|| format!("rebuilding the index of {}", a.repo.display()))?;
    if let Some(old) = &r.moved_to {
        println!("moved the old index to {}", old.display());
    }
    for d in &r.damaged {
        println!("damaged: {d}");
    }
    println!(
        "indexed {} blobs from {} packs and {} snapshots",
        r.blobs, r.packs, r.snapshots
    );
    Ok(0)
}
