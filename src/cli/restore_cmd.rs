//! `restore`. It may run inside the daemon for a client: it writes only
//! to its `Out` (printing elsewhere is a build error).
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::browse::load;
use super::common::{human_bytes, Out, RepoArg};
use rewindfs::repo::Repository;
use rewindfs::restore::{restore as run_restore, RestoreOptions};
use rewindfs::snapshot::manifest::normalize_user_path;

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    repo: RepoArg,
    #[command(flatten)]
    remote: super::remote_cmds::RemoteRead,
    /// Snapshot: id, name, `latest`, or `@TIME`.
    snap: String,
    /// A file or directory inside the snapshot (default: everything). It is
    /// restored as DIR/<its name>. Any bytes: names that are not UTF-8 can
    /// be given as they are.
    path: Option<std::ffi::OsString>,
    /// Target directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Replace files that already exist in the target.
    #[arg(long)]
    overwrite: bool,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0, hide = true)]
    threads: usize,
}

impl RestoreArgs {
    pub fn repo(&self) -> &RepoArg {
        &self.repo
    }

    pub fn remote(&self) -> &super::remote_cmds::RemoteRead {
        &self.remote
    }
}

pub fn restore(repo: &Repository, a: RestoreArgs, o: &mut Out) -> Result<i32> {
    let sub = normalize_user_path(a.path.as_deref().unwrap_or("/".as_ref()))?;
    let (rec, tree) = load(repo, &a.snap, &sub, None)?;
    let t0 = std::time::Instant::now();
    let r = run_restore(
        repo,
        &tree,
        &sub,
        &a.to,
        &RestoreOptions {
            overwrite: a.overwrite,
            owners: o.caller_is_root && repo.trusted(),
            threads: a.threads,
            progress: o.terminal,
        },
    )
    .with_context(|| format!("restoring snapshot {} to {}", rec.id, a.to.display()))?;
    if r.failed.is_empty() {
        // The measured speed, for `advise`.
        rewindfs::advise::restores::record(
            repo,
            rec.id,
            r.bytes,
            r.files,
            t0.elapsed().as_secs_f64(),
        );
    }
    for f in &r.failed {
        writeln!(o.err, "error: not restored: {f}")?;
    }
    for f in &r.skipped {
        writeln!(o.err, "warning: skipped {f}")?;
    }
    writeln!(
        o.out,
        "restored {} files ({}), {} directories, {} symlinks from snapshot {} to {}",
        r.files - r.failed.len() as u64,
        human_bytes(r.bytes),
        r.dirs,
        r.symlinks,
        rec.id,
        a.to.display()
    )?;
    if r.failed.is_empty() {
        Ok(0)
    } else {
        writeln!(
            o.err,
            "error: {} files could not be restored (damaged data)",
            r.failed.len()
        )?;
        Ok(1)
    }
}
