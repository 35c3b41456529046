//! `ls`, `cat`.
//!
//! These commands may run inside the daemon for a client: they write only
//! to their `Out` (printing elsewhere is a build error).
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;

use super::common::{Out, RepoArg};
use rewindfs::repo::Repository;
use rewindfs::snapshot::manifest::{display_path, escape, normalize_user_path, Meta, Node};
use rewindfs::snapshot::{select::select, SnapshotRecord, Tree};
use rewindfs::util::time;

pub fn load(repo: &Repository, spec: &str) -> Result<(SnapshotRecord, Tree)> {
    let all = repo.snapshots()?;
    let rec = select(&all, spec, time::now_ns())?.clone();
    let tree = repo
        .resolve(&rec)
        .with_context(|| format!("reading snapshot {}", rec.id))?;
    Ok((rec, tree))
}

#[derive(Args)]
pub struct LsArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Snapshot: id, name, `latest`, or `@TIME` (RFC 3339 or relative like `@-2h`).
    snap: String,
    /// Directory (or file) inside the snapshot (any bytes: names that are
    /// not UTF-8 can be given as they are).
    #[arg(default_value = "/")]
    path: std::ffi::OsString,
}

/// The mode column of `ls -l`: type, then rwx with the setuid, setgid
/// and sticky bits shown as s/S, s/S and t/T.
pub fn mode_string(mode: u32) -> String {
    let t = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFSOCK => 's',
        libc::S_IFREG => '-',
        _ => '?',
    };
    let mut s = String::from(t);
    for (shift, special, set, unset) in [
        (6, libc::S_ISUID, 's', 'S'),
        (3, libc::S_ISGID, 's', 'S'),
        (0, libc::S_ISVTX, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn line(name: &str, meta: &Meta, node: &Node) -> String {
    let size = match node {
        Node::File { size, .. } => *size,
        Node::Symlink { target } => target.len() as u64,
        _ => 0,
    };
    let mut s = format!(
        "{} {:>6} {:>6} {:>12} {} {}",
        mode_string(meta.mode),
        meta.uid,
        meta.gid,
        size,
        time::rfc3339_parts(meta.mtime.sec, meta.mtime.nsec),
        name
    );
    if let Node::Symlink { target } = node {
        s.push_str(" -> ");
        s.push_str(&escape(target));
    }
    s
}

impl LsArgs {
    pub fn repo(&self) -> &RepoArg {
        &self.repo
    }
}

impl CatArgs {
    pub fn repo(&self) -> &RepoArg {
        &self.repo
    }
}

pub fn ls(repo: &Repository, a: LsArgs, o: &mut Out) -> Result<i32> {
    let (rec, tree) = load(repo, &a.snap)?;
    let p = normalize_user_path(&a.path)?;
    let Some((meta, node)) = tree.get(&p) else {
        anyhow::bail!("{} does not exist in snapshot {}", display_path(&p), rec.id);
    };
    let out = &mut o.out;
    if matches!(node, Node::Dir) {
        for (name, (m, n)) in tree.children(&p) {
            writeln!(out, "{}", line(&escape(name), m, n))?;
        }
    } else {
        writeln!(out, "{}", line(&display_path(&p), meta, node))?;
    }
    Ok(0)
}

#[derive(Args)]
pub struct CatArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Snapshot: id, name, `latest`, or `@TIME`.
    snap: String,
    /// File inside the snapshot (any bytes).
    path: std::ffi::OsString,
}

pub fn cat(repo: &Repository, a: CatArgs, o: &mut Out) -> Result<i32> {
    let (rec, tree) = load(repo, &a.snap)?;
    let p = normalize_user_path(&a.path)?;
    let node = match tree.get(&p) {
        Some((_, n @ Node::File { .. })) => n,
        Some(_) => anyhow::bail!(
            "{} is not a regular file in snapshot {}",
            display_path(&p),
            rec.id
        ),
        None => anyhow::bail!("{} does not exist in snapshot {}", display_path(&p), rec.id),
    };
    let out = &mut o.out;
    for (i, id) in Tree::blocks_of(node).iter().enumerate() {
        let data = repo
            .read_blob(id)
            .with_context(|| format!("{}: block {i}", display_path(&p)))?;
        match out.write_all(&data) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
    out.flush().ok();
    Ok(0)
}
