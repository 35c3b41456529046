//! The capture: from the latest snapshot's tree and the cut, build the
//! tree as it was at the cut, reading only the blocks that changed (all of
//! them for a full snapshot) through copy-before-write.
//!
//! Work is spread over a pool of threads (read -> hash -> compress ->
//! `ChunkWriter`, whose pack writer runs on its own thread), connected
//! with crossbeam channels.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, unbounded};
use rustix::fs::{Mode, OFlags};

use crate::error::{Error, Result};
use crate::repo::ChunkWriter;
use crate::snapshot::manifest::{display_path, Blocks, Node};
use crate::snapshot::scan::RACY_CTIME;
use crate::snapshot::{Stats, Tree};
use crate::store::{BlobKind, ChunkId};
use crate::track::cow::Need;
use crate::track::cut::{walk_verified, BaseIndex, CutInfo, ObjKind};
use crate::track::FileKey;
use crate::util::bytes::read_full;

/// Blocks per work unit.
const UNIT_BLOCKS: u64 = 8;

pub struct Captured {
    pub tree: Tree,
    pub stats: Stats,
    /// Bytes read from backing files (or saved by copy-before-write).
    pub bytes_read: u64,
}

pub struct CaptureRequest<'a> {
    pub root: &'a OwnedFd,
    pub root_dev: u64,
    pub base: &'a BaseIndex<'a>,
    pub cut: &'a CutInfo,
    pub full: bool,
    pub writer: &'a ChunkWriter<'a>,
    pub block_size: u64,
    pub threads: usize,
    /// Entries changed at or after this time are recorded racily clean
    /// (ctime -1); `None` when nothing can change any more (unmount).
    pub racy_after: Option<i64>,
}

fn rebase(p: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let rest = &p[from.len()..];
    [to, rest].concat()
}

fn remove_subtree(t: &mut Tree, p: &[u8]) {
    let doomed: Vec<Vec<u8>> = t.descendants(p).map(|(k, _)| k.clone()).collect();
    for k in doomed {
        t.entries.remove(&k);
    }
    t.entries.remove(p);
}

/// The tree at the cut, with file block lists still to be completed.
fn tree_at_cut(req: &CaptureRequest<'_>) -> Tree {
    let base = req.base;
    let mut n = base.tree.clone();
    n.block_size = req.block_size as u32;
    let root_key = FileKey {
        dev: req.root_dev,
        ino: rustix::fs::fstat(req.root).map(|s| s.st_ino).unwrap_or(0),
    };
    if let Some(s) = req.cut.states.get(&root_key) {
        n.entries.insert(Vec::new(), (s.meta.clone(), Node::Dir));
    }
    for e in &req.cut.edges {
        remove_subtree(&mut n, &e.path);
        let Some(c) = &e.child else { continue };
        let node = match &c.kind {
            ObjKind::Dir => {
                if let Some((q, (_, Node::Dir))) = base.entry_of(c.key.ino) {
                    for (p, v) in base.tree.descendants(q) {
                        n.entries.insert(rebase(p, q, &e.path), v.clone());
                    }
                }
                Node::Dir
            }
            ObjKind::File { size } => {
                let blocks = match base.entry_of(c.key.ino) {
                    Some((_, (_, node @ Node::File { .. }))) => Tree::blocks_of(node).to_vec(),
                    _ => Vec::new(),
                };
                Node::File {
                    size: *size,
                    blocks: Blocks::Full(blocks),
                    link: (c.nlink > 1).then_some(c.key.ino),
                }
            }
            ObjKind::Symlink { target } => Node::Symlink {
                target: target.clone(),
            },
            ObjKind::Special { rdev } => Node::Special { rdev: *rdev },
        };
        n.entries.insert(e.path.clone(), (c.meta.clone(), node));
    }
    // Changed objects at every path they have (hard links included).
    let by_ino = ino_index(&n);
    for (key, s) in &req.cut.states {
        let Some(paths) = by_ino.get(&key.ino) else {
            continue;
        };
        for p in paths {
            if let Some((meta, node)) = n.entries.get_mut(p) {
                *meta = s.meta.clone();
                if let (Node::File { size, link, .. }, ObjKind::File { size: cut }) =
                    (node, &s.kind)
                {
                    *size = *cut;
                    *link = (s.nlink > 1).then_some(key.ino);
                }
            }
        }
    }
    n
}

fn ino_index(t: &Tree) -> HashMap<u64, Vec<Vec<u8>>> {
    let mut m: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    for (p, (meta, _)) in &t.entries {
        m.entry(meta.ino).or_default().push(p.clone());
    }
    m
}

/// Open a file of the cut tree for reading: through its path, checked
/// inode by inode, or through the descriptor kept for the deepest
/// ancestor (or the file itself) that moved since the cut.
fn open_for_read(req: &CaptureRequest<'_>, n: &Tree, path: &[u8], key: &FileKey) -> Option<File> {
    let comps: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
    let reopen = |fd: &OwnedFd| -> Option<File> {
        use std::os::fd::AsRawFd;
        let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
        rustix::fs::openat(
            rustix::fs::CWD,
            p.as_str(),
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .map(File::from)
        .filter(|f| {
            rustix::fs::fstat(f)
                .map(|s| s.st_ino == key.ino)
                .unwrap_or(false)
        })
    };
    if let Some(fd) = req.cut.cow.moved(key) {
        if let Some(f) = reopen(&fd) {
            return Some(f);
        }
    }
    for i in (0..comps.len()).rev() {
        let prefix = comps[..i].join(&b'/');
        let start: Arc<OwnedFd> = if i == 0 {
            Arc::new(
                rustix::fs::openat(req.root, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
                    .ok()?,
            )
        } else {
            let (m, _) = n.get(&prefix)?;
            match req.cut.cow.moved(&FileKey {
                dev: req.root_dev,
                ino: m.ino,
            }) {
                Some(fd) => fd,
                None => continue,
            }
        };
        let rest = &comps[i..];
        let expect = |j: usize| n.get(&comps[..=i + j].join(&b'/')).map(|(m, _)| m.ino);
        if let Some(fd) = walk_verified(&start, rest, expect) {
            if let Some(f) = reopen(&fd) {
                return Some(f);
            }
        }
    }
    None
}

struct Job {
    key: FileKey,
    file: File,
    size: u64,
}

struct Unit {
    job: Arc<Job>,
    idx: usize,
    blocks: Vec<u64>,
}

/// Build the tree at the cut and store every block it needs.
pub fn capture(req: &CaptureRequest<'_>) -> Result<Captured> {
    let bs = req.block_size;
    let mut n = tree_at_cut(req);
    let by_ino = ino_index(&n);

    // What to read: (key, path, size, needed blocks).
    let mut reads: Vec<(FileKey, Vec<u8>, u64, Vec<u64>)> = Vec::new();
    if req.full {
        let mut seen = BTreeSet::new();
        for (p, (m, node)) in &n.entries {
            if let Node::File { size, .. } = node {
                if seen.insert(m.ino) {
                    let key = FileKey {
                        dev: req.root_dev,
                        ino: m.ino,
                    };
                    req.cut.cow.ensure(&key, *size);
                    reads.push((key, p.clone(), *size, (0..size.div_ceil(bs)).collect()));
                }
            }
        }
    } else {
        for (key, (need, size)) in &req.cut.needs {
            let Some(p) = by_ino.get(&key.ino).and_then(|v| v.first()) else {
                continue;
            };
            let blocks: Vec<u64> = match need {
                Need::All => (0..size.div_ceil(bs)).collect(),
                Need::Blocks(s) => s.iter().copied().collect(),
            };
            reads.push((*key, p.clone(), *size, blocks));
        }
    }

    let threads = req.threads.max(1);
    let (unit_tx, unit_rx) = bounded::<Unit>(threads * 4);
    let (done_tx, done_rx) = unbounded::<Result<(usize, Vec<(u64, ChunkId)>)>>();
    let bytes_read = AtomicU64::new(0);
    let cow = &req.cut.cow;
    let writer = req.writer;
    let mut results: Vec<Vec<(u64, ChunkId)>> = vec![Vec::new(); reads.len()];
    let r = std::thread::scope(|s| -> Result<()> {
        for _ in 0..threads {
            let unit_rx = unit_rx.clone();
            let done_tx = done_tx.clone();
            let bytes_read = &bytes_read;
            s.spawn(move || {
                for u in unit_rx.iter() {
                    let mut out = Vec::with_capacity(u.blocks.len());
                    let mut err = None;
                    for b in &u.blocks {
                        let off = b * bs;
                        let len = (u.job.size.saturating_sub(off)).min(bs) as usize;
                        let data =
                            cow.read_block(&u.job.key, *b, || read_full(&u.job.file, off, len));
                        match data {
                            Ok(d) => {
                                bytes_read.fetch_add(d.len() as u64, Ordering::Relaxed);
                                let id = ChunkId::of(&d);
                                if let Err(e) = writer.store(BlobKind::Chunk, id, &d) {
                                    err = Some(e);
                                    break;
                                }
                                out.push((*b, id));
                            }
                            Err(e) => {
                                err = Some(Error::io(
                                    "read for snapshot",
                                    format!("inode {}", u.job.key.ino),
                                    e,
                                ));
                                break;
                            }
                        }
                    }
                    let msg = match err {
                        Some(e) => Err(e),
                        None => Ok((u.idx, out)),
                    };
                    if done_tx.send(msg).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let mut first_err = None;
        for (idx, (key, path, size, blocks)) in reads.iter().enumerate() {
            if blocks.is_empty() {
                continue;
            }
            let Some(file) = open_for_read(req, &n, path, key) else {
                first_err.get_or_insert(Error::Corrupt(format!(
                    "{} (inode {}) could not be reached to read it for the snapshot",
                    display_path(path),
                    key.ino
                )));
                break;
            };
            let job = Arc::new(Job {
                key: *key,
                file,
                size: *size,
            });
            for chunk in blocks.chunks(UNIT_BLOCKS as usize) {
                let u = Unit {
                    job: job.clone(),
                    idx,
                    blocks: chunk.to_vec(),
                };
                if unit_tx.send(u).is_err() {
                    break;
                }
            }
        }
        drop(unit_tx);
        for r in done_rx.iter() {
            match r {
                Ok((idx, v)) => results[idx].extend(v),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    });
    r?;

    // Complete the block lists of every path of each file read.
    let mut changed_blocks = 0;
    for ((key, _, size, _), got) in reads.iter().zip(results) {
        let nblocks = size.div_ceil(bs) as usize;
        let Some(paths) = by_ino.get(&key.ino) else {
            continue;
        };
        for p in paths {
            if let Some((
                _,
                Node::File {
                    blocks: Blocks::Full(list),
                    ..
                },
            )) = n.entries.get_mut(p)
            {
                list.resize(nblocks, ChunkId([0; 32]));
                for (b, id) in &got {
                    if (*b as usize) < nblocks {
                        list[*b as usize] = *id;
                    }
                }
            }
        }
        changed_blocks += got.len() as u64;
    }
    // Racily clean entries (see snapshot::scan::RACY_CTIME).
    if let Some(after) = req.racy_after {
        for (m, _) in n.entries.values_mut() {
            if m.ctime_ns >= after {
                m.ctime_ns = RACY_CTIME;
            }
        }
    }
    let mut stats = Stats {
        changed_blocks,
        ..Default::default()
    };
    for (_, node) in n.entries.values() {
        match node {
            Node::Dir => stats.dirs += 1,
            Node::File { size, .. } => {
                stats.files += 1;
                stats.logical_bytes += size;
            }
            Node::Symlink { .. } => stats.symlinks += 1,
            Node::Special { .. } => {}
        }
    }
    check_complete(&n)?;
    Ok(Captured {
        tree: n,
        stats,
        bytes_read: bytes_read.load(Ordering::Relaxed),
    })
}

/// Every file's block list matches its size.
fn check_complete(t: &Tree) -> Result<()> {
    let bs = t.block_size as u64;
    for (p, (_, node)) in &t.entries {
        if let Node::File {
            size,
            blocks: Blocks::Full(b),
            ..
        } = node
        {
            if b.len() as u64 != size.div_ceil(bs) || b.iter().any(|id| id.0 == [0; 32]) {
                return Err(Error::Corrupt(format!(
                    "capture of {} has {} blocks for {size} bytes",
                    display_path(p),
                    b.len()
                )));
            }
        }
    }
    Ok(())
}
