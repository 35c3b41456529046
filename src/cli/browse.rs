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

/// Snapshot `spec` and what it holds on the way to `path` and below it
/// (`levels` deep; `None`: all), without reading the rest of its tree.
pub fn load(
    repo: &Repository,
    spec: &str,
    path: &[u8],
    levels: Option<usize>,
) -> Result<(SnapshotRecord, Tree)> {
    let all = repo.snapshots()?;
    let rec = select(&all, spec, time::now_ns())?.clone();
    let tree = repo
        .subtree(&rec, path, levels)
        .with_context(|| format!("reading snapshot {}", rec.id))?;
    Ok((rec, tree))
}

#[derive(Args)]
pub struct LsArgs {
    #[command(flatten)]
    repo: RepoArg,
    #[command(flatten)]
    remote: super::remote_cmds::RemoteRead,
    /// Snapshot: id, name, `latest`, or `@TIME` (RFC 3339 or relative like `@-2h`).
    snap: String,
    /// Directory (or file) inside the snapshot (any bytes: names that are
    /// not UTF-8 can be given as they are).
    #[arg(default_value = "/")]
    path: std::ffi::OsString,
    /// Print JSON (one object per entry; names that are not UTF-8 are
    /// escaped as in the text listing).
    #[arg(long)]
    json: bool,
}

/// One entry of `ls --json`.
#[derive(serde::Serialize)]
struct LsEntry {
    name: String,
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

fn entry(name: String, meta: &Meta, node: &Node) -> LsEntry {
    let (kind, size, target) = match node {
        Node::File { size, .. } => ("file", *size, None),
        Node::Dir => ("dir", 0, None),
        Node::Symlink { target } => ("symlink", target.len() as u64, Some(escape(target))),
        _ => ("special", 0, None),
    };
    LsEntry {
        name,
        kind,
        mode: meta.mode,
        uid: meta.uid,
        gid: meta.gid,
        size,
        mtime: time::rfc3339_parts(meta.mtime.sec, meta.mtime.nsec),
        target,
    }
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

    pub fn remote(&self) -> &super::remote_cmds::RemoteRead {
        &self.remote
    }
}

impl CatArgs {
    pub fn repo(&self) -> &RepoArg {
        &self.repo
    }

    pub fn remote(&self) -> &super::remote_cmds::RemoteRead {
        &self.remote
    }
}

pub fn ls(repo: &Repository, a: LsArgs, o: &mut Out) -> Result<i32> {
    let p = normalize_user_path(&a.path)?;
    let (rec, tree) = load(repo, &a.snap, &p, Some(1))?;
    let Some((meta, node)) = tree.get(&p) else {
        anyhow::bail!("{} does not exist in snapshot {}", display_path(&p), rec.id);
    };
    let out = &mut o.out;
    if a.json {
        let list: Vec<LsEntry> = if matches!(node, Node::Dir) {
            tree.children(&p)
                .map(|(name, (m, n))| entry(escape(name), m, n))
                .collect()
        } else {
            vec![entry(display_path(&p), meta, node)]
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(0);
    }
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
    #[command(flatten)]
    remote: super::remote_cmds::RemoteRead,
    /// Snapshot: id, name, `latest`, or `@TIME`.
    snap: String,
    /// File inside the snapshot (any bytes).
    path: std::ffi::OsString,
}

pub fn cat(repo: &Repository, a: CatArgs, o: &mut Out) -> Result<i32> {
    let p = normalize_user_path(&a.path)?;
    let (rec, tree) = load(repo, &a.snap, &p, Some(1))?;
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
