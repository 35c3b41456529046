//! `ls`, `cat`.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;

use super::{Out, RepoArg};
use rewindfs::repo::Repository;
use rewindfs::snapshot::manifest::{display_path, normalize_user_path, Meta, Node};
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
    /// Directory (or file) inside the snapshot.
    #[arg(default_value = "/")]
    path: String,
}

fn mode_string(m: &Meta) -> String {
    let t = match m.mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        _ => '-',
    };
    let mut s = String::from(t);
    let bits = ['r', 'w', 'x'];
    for i in 0..9 {
        let on = m.mode & (1 << (8 - i)) != 0;
        s.push(if on { bits[i % 3] } else { '-' });
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
        mode_string(meta),
        meta.uid,
        meta.gid,
        size,
        time::rfc3339_parts(meta.mtime.sec, meta.mtime.nsec),
        name
    );
    if let Node::Symlink { target } = node {
        s.push_str(" -> ");
        s.push_str(&String::from_utf8_lossy(target));
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
            writeln!(out, "{}", line(&String::from_utf8_lossy(name), m, n))?;
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
    /// File inside the snapshot.
    path: String,
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
