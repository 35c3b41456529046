//! The capture: from the latest snapshot's tree and the cut, build the
//! tree as it was at the cut, reading only the blocks that changed (all of
//! them for a full snapshot) through copy-before-write.
//!
//! Blocks are stored by the shared engine (`blocks.rs`), read through
//! copy-before-write: a block changed since the cut comes from what the
//! writer saved before changing it.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

use super::blocks::{self, Source};
use crate::error::{Error, Result};
use crate::repo::ChunkWriter;
use crate::snapshot::manifest::{display_path, Blocks, Node};
use crate::snapshot::tree::ino_index;
use crate::snapshot::unchanged::RACY_CTIME;
use crate::snapshot::{Stats, Tree};
use crate::store::ChunkId;
use crate::track::cow::{CowSet, Need};
use crate::track::cut::{walk_verified, BaseIndex, CutInfo, ObjKind};
use crate::track::FileKey;
use crate::util::bytes::read_full;

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

/// A file read for the snapshot, through copy-before-write.
struct LiveFile<'c> {
    key: FileKey,
    file: File,
    size: u64,
    cow: &'c CowSet,
}

impl Source for LiveFile<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, b: u64, off: u64, buf: &mut Vec<u8>) -> Result<()> {
        let len = buf.len();
        let data = self
            .cow
            .read_block(&self.key, b, || read_full(&self.file, off, len))
            .map_err(|e| Error::io("read for snapshot", format!("inode {}", self.key.ino), e))?;
        *buf = data;
        Ok(())
    }
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
                    if req.cut.held_back.contains(&key) {
                        // Its last closed version: the base's blocks.
                        continue;
                    }
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

    let cow = &*req.cut.cow;
    let mut results: Vec<Vec<(u64, ChunkId)>> = vec![Vec::new(); reads.len()];
    let (fed, stored) = blocks::store(
        req.writer,
        req.threads,
        bs,
        &indicatif::ProgressBar::hidden(),
        |feed| -> Result<()> {
            for (idx, (key, path, size, blocks)) in reads.iter().enumerate() {
                if blocks.is_empty() {
                    continue;
                }
                let Some(file) = open_for_read(req, &n, path, key) else {
                    return Err(Error::Corrupt(format!(
                        "{} (inode {}) could not be reached to read it for the snapshot",
                        display_path(path),
                        key.ino
                    )));
                };
                let source = Arc::new(LiveFile {
                    key: *key,
                    file,
                    size: *size,
                    cow,
                });
                if !blocks::feed_blocks(feed, &source, idx, blocks) {
                    return Err(Error::Poisoned("capture workers stopped".into()));
                }
            }
            Ok(())
        },
    );
    let mut bytes_read = 0;
    let mut first_err = fed.err();
    for r in stored {
        match r {
            Ok(s) => {
                bytes_read += s.bytes;
                results[s.tag].extend(s.ids);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }

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
                // Exactly as long as the file needs (resize alone rounds
                // a small list up to 4 ids: 96 bytes lost per small file).
                if list.capacity() < nblocks {
                    list.reserve_exact(nblocks - list.len());
                }
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
    // Racily clean entries (see snapshot::unchanged).
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
        bytes_read,
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
