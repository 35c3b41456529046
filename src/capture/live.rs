//! The capture: from the latest snapshot's tree and the cut, build the
//! tree as it was at the cut, reading only the blocks that changed (all of
//! them for a full snapshot) through copy-before-write.
//!
//! Blocks are stored by the shared engine (`blocks.rs`), read through
//! copy-before-write: a block changed since the cut comes from what the
//! writer saved before changing it.

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

use super::base_tree::{BaseTree, Edits, Entry, Loader};
use super::blocks::{self, Source};
use super::runs;
use crate::chunking::Chunker;
use crate::error::{Error, Result};
use crate::repo::ChunkWriter;
use crate::snapshot::dirs::Objects;
use crate::snapshot::manifest::{display_path, Blocks, Node};
use crate::snapshot::spans::Spans;
use crate::snapshot::unchanged::RACY_CTIME;
use crate::snapshot::{Stats, Tree};
use crate::store::ChunkId;
use crate::track::cow::{CowSet, Need};
use crate::track::cut::{walk_verified, CutInfo, ObjKind};
use crate::track::FileKey;
use crate::util::bytes::read_full;
use crate::util::pool;

pub struct Captured {
    pub stats: Stats,
    /// Bytes read from backing files (or saved by copy-before-write).
    pub bytes_read: u64,
}

pub struct CaptureRequest<'a> {
    pub root: &'a OwnedFd,
    pub root_dev: u64,
    pub cut: &'a CutInfo,
    pub full: bool,
    pub writer: &'a ChunkWriter<'a>,
    pub block_size: u64,
    pub threads: usize,
    /// Entries changed at or after this time are recorded racily clean
    /// (ctime -1); `None` when nothing can change any more (unmount).
    pub racy_after: Option<i64>,
    /// Where the directories of a partly loaded base are read from.
    pub loader: Loader<'a>,
}

/// What an edge takes from the base, read before anything changes.
enum Taken {
    Nothing,
    /// The directory the base holds at the same path: everything below
    /// it stays where it is (what changed there has edges of its own),
    /// so it is neither read nor moved. (A directory listed whole, e.g.
    /// the root after the mount-time check, has an edge for each of its
    /// entries: taking each subdirectory's subtree read the whole tree.)
    InPlace,
    /// A directory known to the base: its entries, by path below it.
    Subtree(Vec<(Vec<u8>, Entry)>),
    /// A file known to the base: its blocks.
    Blocks(Blocks),
}

/// Turn the base into the tree at the cut, in place (file block lists
/// still to be completed).
fn tree_at_cut(req: &CaptureRequest<'_>, n: &mut BaseTree, edits: &mut Edits) -> Result<()> {
    let ld = &req.loader;
    // What each edge takes from the base, read before anything changes
    // (a moved directory's whole subtree is loaded for it).
    let mut taken: Vec<Taken> = Vec::with_capacity(req.cut.edges.len());
    for e in &req.cut.edges {
        let from = match &e.child {
            Some(c) if !e.new => n.first_path(c.key.ino),
            _ => None,
        };
        if let Some(q) = &from {
            n.ensure_parent(ld, q)?;
            let base_dir = matches!(n.get(q), Some((_, Node::Dir)));
            let child_dir = matches!(&e.child, Some(c) if c.kind == ObjKind::Dir);
            if base_dir && child_dir && *q == e.path {
                taken.push(Taken::InPlace);
                continue;
            }
            if base_dir {
                n.load_subtree(ld, q)?;
            }
        }
        let t = match (
            &e.child,
            from.as_ref().and_then(|q| n.get(q).map(|v| (q, v))),
        ) {
            (Some(c), Some((q, v))) => match (&c.kind, v) {
                (ObjKind::Dir, (_, Node::Dir)) => Taken::Subtree(
                    n.tree()
                        .descendants(q)
                        .map(|(p, v)| (p[q.len()..].to_vec(), v.clone()))
                        .collect(),
                ),
                (ObjKind::File { .. }, (_, Node::File { blocks, .. })) => {
                    Taken::Blocks(blocks.clone())
                }
                _ => Taken::Nothing,
            },
            _ => Taken::Nothing,
        };
        taken.push(t);
    }
    n.set_block_size(req.block_size as u32);
    let root_key = FileKey {
        dev: req.root_dev,
        ino: rustix::fs::fstat(req.root).map(|s| s.st_ino).unwrap_or(0),
    };
    if let Some(s) = req.cut.states.get(&root_key) {
        n.put(edits, b"", Some((s.meta.clone(), Node::Dir)));
    }
    for (e, taken) in req.cut.edges.iter().zip(taken) {
        if let (Taken::InPlace, Some(c)) = (&taken, &e.child) {
            n.put(edits, &e.path, Some((c.meta.clone(), Node::Dir)));
            continue;
        }
        n.load_subtree(ld, &e.path)?;
        n.remove_below(edits, &e.path);
        n.put(edits, &e.path, None);
        let Some(c) = &e.child else { continue };
        let node = match &c.kind {
            ObjKind::Dir => {
                if let Taken::Subtree(list) = taken {
                    for (rest, v) in list {
                        n.put(edits, &[e.path.as_slice(), &rest].concat(), Some(v));
                    }
                }
                Node::Dir
            }
            ObjKind::File { size } => Node::File {
                size: *size,
                blocks: match taken {
                    Taken::Blocks(b) => b,
                    _ => Blocks::Full(Vec::new()),
                },
                link: (c.nlink > 1).then_some(c.key.ino),
            },
            ObjKind::Symlink { target } => Node::Symlink {
                target: target.clone(),
            },
            ObjKind::Special { rdev } => Node::Special { rdev: *rdev },
        };
        n.put(edits, &e.path, Some((c.meta.clone(), node)));
    }
    // Changed objects at every path they have (hard links included).
    for (key, s) in &req.cut.states {
        for p in n.paths_of(key.ino) {
            n.ensure_parent(ld, &p)?;
            let Some((_, node)) = n.get(&p) else { continue };
            let mut node = node.clone();
            if let (Node::File { size, link, .. }, ObjKind::File { size: cut }) =
                (&mut node, &s.kind)
            {
                *size = *cut;
                *link = (s.nlink > 1).then_some(key.ino);
            }
            n.put(edits, &p, Some((s.meta.clone(), node)));
        }
    }
    Ok(())
}

/// Reopen an `O_PATH` descriptor for reading, if it is inode `ino`.
pub(super) fn reopen(fd: &OwnedFd, ino: u64) -> Option<File> {
    use std::os::fd::AsRawFd;
    // What the descriptor holds is checked before it is opened: a device
    // node put in the file's place is never opened. The descriptor pins
    // the inode and `/proc/self/fd/N` opens that very inode, so the check
    // holds for what is opened (no second check after the open).
    let st = rustix::fs::fstat(fd).ok()?;
    if st.st_ino != ino || crate::util::sys::file_type(st.st_mode) != libc::S_IFREG {
        return None;
    }
    let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::openat(
        rustix::fs::CWD,
        p.as_str(),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
    .map(File::from)
}

/// Reach `path` of the cut tree through its path, checked inode by
/// inode, starting from the descriptor kept for it or for its deepest
/// ancestor that moved since the cut, else from the root; `take` gets
/// each descriptor reached, until it accepts one.
fn reach<T>(
    req: &CaptureRequest<'_>,
    n: &Tree,
    path: &[u8],
    mut take: impl FnMut(OwnedFd) -> Option<T>,
) -> Option<T> {
    let comps: Vec<&[u8]> = if path.is_empty() {
        Vec::new()
    } else {
        path.split(|b| *b == b'/').collect()
    };
    // From the path itself (moved), its deepest moved ancestor, ..., the root.
    for i in (0..=comps.len()).rev() {
        let start: Arc<OwnedFd> = if i == 0 {
            Arc::new(
                rustix::fs::openat(req.root, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
                    .ok()?,
            )
        } else {
            let kept = n.get(&comps[..i].join(&b'/')).and_then(|(m, _)| {
                req.cut.cow.moved(&FileKey {
                    dev: req.root_dev,
                    ino: m.ino,
                })
            });
            match kept {
                Some(fd) => fd,
                None => continue,
            }
        };
        let rest = &comps[i..];
        let expect = |j: usize| n.get(&comps[..=i + j].join(&b'/')).map(|(m, _)| m.ino);
        if let Some(fd) = walk_verified(&start, rest, expect) {
            if let Some(t) = take(fd) {
                return Some(t);
            }
        }
    }
    None
}

/// Open a file of the cut tree for reading: through the descriptor kept
/// for it if it moved since the cut, else as [`reach`] finds it.
fn open_for_read(req: &CaptureRequest<'_>, n: &Tree, path: &[u8], key: &FileKey) -> Option<File> {
    if let Some((fd, ino)) = req.cut.cow.kept(key) {
        // A kept file (track::keep): only ever read through its own
        // descriptor, never through a path.
        return reopen(&fd, ino);
    }
    if let Some(fd) = req.cut.cow.moved(key) {
        if let Some(f) = reopen(&fd, key.ino) {
            return Some(f);
        }
    }
    reach(req, n, path, |fd| reopen(&fd, key.ino))
}

/// The directory reached for the previous file read (files are read in
/// path order: most follow a sibling).
type LastDir = Option<(Vec<u8>, OwnedFd)>;

/// A file to read: its key, path, size and the blocks needed (`None`:
/// every block below the size).
type Read<'t> = (FileKey, &'t [u8], u64, Option<Vec<u64>>);

/// Files a capture opens and announces to the kernel ahead of the one it
/// hands to the workers (each holds a descriptor until it is read).
const READ_AHEAD_FILES: usize = 64;

/// [`open_for_read`], reaching the file's directory once for all its
/// files: the file is then opened by name there and checked to be the
/// inode the cut saw (a rename after the cut cannot substitute another
/// file; a directory moved since keeps its descriptor's identity).
fn open_in_dir(
    req: &CaptureRequest<'_>,
    n: &Tree,
    path: &[u8],
    key: &FileKey,
    last: &mut LastDir,
) -> Option<File> {
    let (parent, name) = match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..0], path),
    };
    let moved = req.cut.cow.moved(key).is_some() || req.cut.cow.kept(key).is_some();
    if !moved {
        if !matches!(last, Some((p, _)) if p == parent) {
            *last = reach(req, n, parent, Some).map(|fd| (parent.to_vec(), fd));
        }
        if let Some((_, dir)) = last {
            let f = rustix::fs::openat(
                &*dir,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()
            .and_then(|fd| reopen(&fd, key.ino));
            if f.is_some() {
                return f;
            }
        }
    }
    open_for_read(req, n, path, key)
}

/// A file opened for reading: its index in the reads, the file, the
/// blocks to read (`None`: every block below its size).
type Opened<'c, 'b> = (usize, Arc<LiveFile<'c>>, Option<&'b [u64]>);

/// How a file read is stored.
enum Plan {
    /// In fixed blocks: the blocks needed (every one: from scratch), or
    /// changed blocks of a file in fixed blocks.
    Grid,
    /// Read whole and cut by content (a file of more than a block).
    Whole,
    /// Changed blocks of a file in content chunks: the chunks read again
    /// (`recut`: the whole file, rewritten in place, cut by content).
    Runs {
        runs: Vec<runs::Run>,
        ids: Vec<ChunkId>,
        lens: Vec<u32>,
        recut: bool,
    },
}

/// What sending a file needs besides the file.
struct SendCtx<'x> {
    bs: u64,
    chunker: &'x Chunker,
    plans: &'x [Plan],
    store: &'x dyn Objects,
}

/// Hand the blocks of one opened file to the workers (`None`: every
/// block below its size), or read and cut it here (see [`Plan`]).
fn send_file<'c>(
    feed: &pool::Feeder<'_, blocks::Unit<LiveFile<'c>>>,
    every: &mut Vec<u64>,
    cx: &SendCtx<'_>,
    (idx, source, blocks): Opened<'c, '_>,
) -> Result<()> {
    let bs = cx.bs;
    match &cx.plans[idx] {
        Plan::Grid => {}
        Plan::Whole => return blocks::feed_whole(feed, &source, idx, cx.chunker, bs),
        Plan::Runs {
            runs,
            ids,
            lens,
            recut,
        } => {
            let dirty = blocks.unwrap_or(&[]);
            return send_runs(feed, cx, idx, &source, dirty, runs, ids, lens, *recut);
        }
    }
    let blocks: &[u64] = match blocks {
        Some(b) => b,
        None => {
            every.clear();
            every.extend(0..source.size.div_ceil(bs));
            every
        }
    };
    if blocks::feed_blocks(feed, &source, idx, blocks) {
        Ok(())
    } else {
        Err(Error::Poisoned("capture workers stopped".into()))
    }
}

/// Read the runs of a file in content chunks that changed in place:
/// each old chunk's stored bytes with the changed blocks (`dirty`,
/// increasing) read over them, each block read once; cut where the old
/// chunks were cut.
#[allow(clippy::too_many_arguments)]
fn send_runs<'c>(
    feed: &pool::Feeder<'_, blocks::Unit<LiveFile<'c>>>,
    cx: &SendCtx<'_>,
    idx: usize,
    source: &Arc<LiveFile<'c>>,
    dirty: &[u64],
    runs: &[runs::Run],
    ids: &[ChunkId],
    lens: &[u32],
    recut: bool,
) -> Result<()> {
    let bs = cx.bs;
    let size = source.size;
    let spans = Spans::from_lens(lens);
    let mut out = blocks::PieceFeed::new(feed, source, idx, bs);
    // The last block read: (index, bytes).
    let mut cur: Option<(u64, Vec<u8>)> = None;
    let peek = |off: u64, len: usize| source.peek(off, len);
    for r in runs {
        let mut cutter = if recut {
            cx.chunker.whole(size, &peek)
        } else {
            cx.chunker.given(r.start, r.marks.clone())
        };
        let mut at = r.start;
        let mut k = r.first;
        while at < r.stop {
            // The next range: an old chunk (its stored bytes), or past
            // the old end a block's worth of zeros.
            let (mut data, end) = if k < r.end {
                let (o, l) = spans.span(k);
                let end = (o + l).min(r.stop);
                // Every byte of it rewritten (a file written again from
                // the start): its old bytes are not needed.
                let covered = o == at
                    && end > o
                    && (o / bs..=(end - 1) / bs).all(|b| dirty.binary_search(&b).is_ok());
                let d = if covered {
                    vec![0u8; l as usize]
                } else {
                    cx.store.chunk(&ids[k])?
                };
                if o != at || d.len() as u64 != l {
                    return Err(Error::Corrupt(format!(
                        "chunk {} of inode {} holds {} bytes, {l} expected",
                        ids[k].to_hex(),
                        source.key.ino,
                        d.len()
                    )));
                }
                k += 1;
                (d, (o + l).min(r.stop))
            } else {
                let end = (at + bs).min(r.stop);
                (vec![0u8; (end - at) as usize], end)
            };
            data.truncate((end - at) as usize);
            // Changed blocks over it.
            let first = dirty.partition_point(|b| (b + 1) * bs <= at);
            for &b in dirty[first..].iter().take_while(|b| **b * bs < end) {
                let boff = b * bs;
                if boff >= size {
                    break;
                }
                if cur.as_ref().is_none_or(|(cb, _)| *cb != b) {
                    let mut buf = vec![0u8; (size - boff).min(bs) as usize];
                    source.read(b, boff, &mut buf)?;
                    cur = Some((b, buf));
                }
                if let Some((_, blk)) = &cur {
                    let lo = boff.max(at);
                    let hi = (boff + blk.len() as u64).min(end);
                    if lo < hi {
                        data[(lo - at) as usize..(hi - at) as usize]
                            .copy_from_slice(&blk[(lo - boff) as usize..(hi - boff) as usize]);
                    }
                }
            }
            cutter.push(&data, &mut |o, v| out.add(o, v));
            at = end;
            if !out.flush(false, None) {
                return Err(Error::Poisoned("capture workers stopped".into()));
            }
        }
        cutter.finish(&mut |o, v| out.add(o, v));
    }
    if !out.flush(true, None) {
        return Err(Error::Poisoned("capture workers stopped".into()));
    }
    Ok(())
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

    fn file(&self) -> Option<&File> {
        Some(&self.file)
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

/// Turn the base (`n`, the latest snapshot's tree, or the listing for a
/// first snapshot) into the tree at the cut, in place, recording in
/// `edits` what each changed path held, and store every block it needs.
pub fn capture(req: &CaptureRequest<'_>, n: &mut BaseTree, edits: &mut Edits) -> Result<Captured> {
    let bs = req.block_size;
    if req.full {
        // Every file is read: the whole tree.
        n.load_all(&req.loader)?;
    }
    tree_at_cut(req, n, edits)?;
    // The directories of the files read (their entries are completed).
    for key in req.cut.needs.keys() {
        for p in n.paths_of(key.ino) {
            n.ensure_parent(&req.loader, &p)?;
        }
    }

    // What to read: (key, path, size, needed blocks: `None` for every
    // block below the size). The paths are the tree's own (a full capture
    // of 10^6 files copied 150 MB of paths and block numbers here).
    let mut reads: Vec<Read<'_>> = Vec::with_capacity(if req.full {
        n.counts().files as usize
    } else {
        req.cut.needs.len()
    });
    let tree = n.tree();
    if req.full {
        // Hard links: one read per inode (an entry without a link group
        // is the only name of its inode).
        let mut seen = BTreeSet::new();
        for (p, (m, node)) in &tree.entries {
            if let Node::File { size, link, .. } = node {
                if link.is_none() || seen.insert(m.ino) {
                    let key = FileKey {
                        dev: req.root_dev,
                        ino: m.ino,
                    };
                    if req.cut.held_back.contains(&key) {
                        // Its last closed version: the base's blocks.
                        continue;
                    }
                    reads.push((key, p.as_slice(), *size, None));
                }
            }
        }
    } else {
        for (key, (need, size)) in &req.cut.needs {
            // The path as the tree's own key (the index answers copies).
            let Some((p, _)) = n
                .first_path(key.ino)
                .and_then(|p| tree.entries.get_key_value(&p))
            else {
                continue;
            };
            let blocks = match need {
                Need::All => None,
                Need::Blocks(s) => Some(s.iter().copied().collect()),
            };
            reads.push((*key, p.as_slice(), *size, blocks));
        }
        // Path order: files of one directory one after the other (they
        // are opened through their directory, reached once).
        reads.sort_by(|a, b| a.1.cmp(b.1));
    }

    // How each read is stored: files in content chunks stay so.
    let chunker = req.writer.chunker(bs);
    let plans: Vec<Plan> = reads
        .iter()
        .map(|(_, path, size, need)| match (need, tree.get(path)) {
            (None, _) if chunker.by_content(*size) => Plan::Whole,
            (None, _) => Plan::Grid,
            (
                Some(dirty),
                Some((
                    _,
                    Node::File {
                        blocks: Blocks::Sized { ids, lens },
                        ..
                    },
                )),
            ) if ids.len() == lens.len() && !lens.is_empty() => {
                // Rewritten in place for the most part (truncated and
                // written again, say): cut again by content, so what
                // moved is still found.
                let recut = (dirty.len() as u64).saturating_mul(bs).saturating_mul(2) >= *size;
                Plan::Runs {
                    runs: if recut {
                        vec![runs::whole_run(lens, *size)]
                    } else {
                        runs::dirty_runs(lens, bs, dirty, *size)
                    },
                    ids: ids.clone(),
                    lens: lens.clone(),
                    recut,
                }
            }
            // A list not held whole: read it whole.
            (
                Some(_),
                Some((
                    _,
                    Node::File {
                        blocks: Blocks::Sized { .. },
                        ..
                    },
                )),
            ) => Plan::Whole,
            (Some(_), _) => Plan::Grid,
        })
        .collect();
    let cx = SendCtx {
        bs,
        chunker: &chunker,
        plans: &plans,
        store: req.loader.store,
    };
    let cow = &*req.cut.cow;
    // Each file's stored blocks, filed as they come back.
    let mut results: Vec<Vec<(u64, u32, ChunkId)>> = vec![Vec::new(); reads.len()];
    let mut bytes_read = 0;
    let mut store_err = None;
    let (fed, _) = blocks::store_into(
        req.writer,
        req.threads,
        bs,
        &indicatif::ProgressBar::hidden(),
        |feed| -> Result<()> {
            let mut last: LastDir = None;
            let mut every: Vec<u64> = Vec::new();
            // Files opened and announced (fadvise) ahead of the one fed:
            // a tree of small cold files is read with that many requests
            // in flight, not the few units the workers' queue holds.
            let mut ahead: VecDeque<Opened<'_, '_>> = VecDeque::with_capacity(READ_AHEAD_FILES + 1);
            for (idx, (key, path, size, blocks)) in reads.iter().enumerate() {
                let blocks = blocks.as_deref();
                // (A file in content chunks cut to a block boundary has
                // no block to read, but its last chunk to store again.)
                let runs = matches!(&plans[idx], Plan::Runs { runs, .. } if !runs.is_empty());
                let Some(first) = blocks
                    .map_or((*size > 0).then_some(0), |b| b.first().copied())
                    .or(runs.then_some(0))
                else {
                    continue;
                };
                if req.full {
                    // From now until its last block is read, a write
                    // through the mount saves what it changes (before
                    // this, the first write registers the file itself).
                    cow.ensure(key, *size);
                }
                let Some(file) = open_in_dir(req, tree, path, key, &mut last) else {
                    return Err(Error::Corrupt(format!(
                        "{} (inode {}) could not be reached to read it for the snapshot",
                        display_path(path),
                        key.ino
                    )));
                };
                // Start reading its first unit now.
                let first = first * bs;
                let len = (pool::UNIT_BLOCKS * bs).min(size.saturating_sub(first));
                let _ = rustix::fs::fadvise(
                    &file,
                    first,
                    std::num::NonZeroU64::new(len),
                    rustix::fs::Advice::WillNeed,
                );
                let source = Arc::new(LiveFile {
                    key: *key,
                    file,
                    size: *size,
                    cow,
                });
                ahead.push_back((idx, source, blocks));
                if ahead.len() > READ_AHEAD_FILES {
                    if let Some(next) = ahead.pop_front() {
                        send_file(feed, &mut every, &cx, next)?;
                    }
                }
            }
            while let Some(next) = ahead.pop_front() {
                send_file(feed, &mut every, &cx, next)?;
            }
            Ok(())
        },
        |r: Result<blocks::Stored>| match r {
            Ok(s) => {
                bytes_read += s.bytes;
                let slot = &mut results[s.tag];
                if slot.is_empty() {
                    // A list of its own, exactly as long (allocated on
                    // this thread: the workers' arenas keep only what
                    // they free soon, and the index's nodes).
                    let mut v = Vec::with_capacity(s.ids.len());
                    v.extend(s.ids);
                    *slot = v;
                } else {
                    slot.extend(s.ids);
                }
            }
            Err(e) => {
                store_err.get_or_insert(e);
            }
        },
    );
    if let Some(e) = fed.err().or(store_err) {
        return Err(e);
    }
    let reads: Vec<(FileKey, u64, bool)> = reads
        .into_iter()
        .map(|(k, _, s, need)| (k, s, need.is_none()))
        .collect();

    // Complete the block lists of every path of each file read.
    let mut changed_blocks = 0;
    for (((key, size, whole), got), plan) in reads.iter().zip(results).zip(&plans) {
        let Some(first) = n.paths_of(key.ino).into_iter().next() else {
            continue;
        };
        let Some((_, Node::File { blocks: base, .. })) = n.get(&first) else {
            continue;
        };
        // Content chunks count as the blocks their bytes would fill.
        changed_blocks += match plan {
            Plan::Grid => got.len() as u64,
            _ => got.iter().map(|p| u64::from(p.1)).sum::<u64>().div_ceil(bs),
        };
        let list = match plan {
            Plan::Whole => blocks::pieces_list(got, *size)?,
            Plan::Runs {
                runs, ids, lens, ..
            } => {
                let (ids, lens) = runs::splice(ids, lens, runs, got, *size)?;
                Blocks::Sized { ids, lens }
            }
            Plan::Grid => {
                let nblocks = size.div_ceil(bs) as usize;
                // Exactly as long as the file needs (resize alone rounds a
                // small list up to 4 ids: 96 bytes lost per small file).
                let mut list = Vec::with_capacity(nblocks);
                if let (false, Blocks::Full(old)) = (whole, base) {
                    list.extend(old.iter().take(nblocks).copied());
                }
                list.resize(nblocks, ChunkId([0; 32]));
                for (off, _, id) in &got {
                    if let Some(slot) = list.get_mut((off / bs) as usize) {
                        *slot = *id;
                    }
                }
                Blocks::Full(list)
            }
        }
        .normalized(*size, bs as u32);
        // (Their directories were read before the reads began.)
        for p in n.paths_of(key.ino) {
            let Some((
                meta,
                Node::File {
                    size: fsize, link, ..
                },
            )) = n.get(&p)
            else {
                continue;
            };
            let e = (
                meta.clone(),
                Node::File {
                    size: *fsize,
                    blocks: list.clone(),
                    link: *link,
                },
            );
            n.put(edits, &p, Some(e));
        }
    }
    mark_racy(req, n, edits)?;
    let c = n.counts();
    let stats = Stats {
        changed_blocks,
        dirs: c.dirs,
        files: c.files,
        symlinks: c.symlinks,
        logical_bytes: c.logical_bytes,
        ..Default::default()
    };
    check_complete(n, edits)?;
    Ok(Captured { stats, bytes_read })
}

/// Racily clean entries (see snapshot::unchanged): every entry changed
/// at or after the racy limit. Entries the capture did not change were
/// looked at by an earlier capture with a lower limit (the base says so:
/// `racy_limit`), so only the changed ones are looked at, unless the
/// base is new to this process or the clock went back.
fn mark_racy(req: &CaptureRequest<'_>, n: &mut BaseTree, edits: &mut Edits) -> Result<()> {
    let Some(after) = req.racy_after else {
        n.racy_limit = None;
        return Ok(());
    };
    let all = !edits.recording || n.racy_limit.is_none_or(|l| l > after);
    if all {
        n.load_all(&req.loader)?;
    }
    let due: Vec<Vec<u8>> = if all {
        n.tree()
            .entries
            .iter()
            .filter(|(_, (m, _))| m.ctime_ns >= after)
            .map(|(p, _)| p.clone())
            .collect()
    } else {
        edits
            .old
            .keys()
            .filter(|p| n.get(p).is_some_and(|(m, _)| m.ctime_ns >= after))
            .cloned()
            .collect()
    };
    for p in due {
        if let Some((m, node)) = n.get(&p) {
            let mut m = m.clone();
            m.ctime_ns = RACY_CTIME;
            let e = (m, node.clone());
            n.put(edits, &p, Some(e));
        }
    }
    n.racy_limit = Some(after);
    Ok(())
}

/// Every changed file's block list matches its size (the others were
/// complete in the base; every file when the changes were not recorded).
fn check_complete(n: &BaseTree, edits: &Edits) -> Result<()> {
    let bs = n.tree().block_size as u64;
    let entries: Box<dyn Iterator<Item = (&Vec<u8>, &Entry)>> = if edits.recording {
        Box::new(
            edits
                .old
                .keys()
                .filter_map(|p| n.tree().entries.get_key_value(p)),
        )
    } else {
        Box::new(n.tree().entries.iter())
    };
    for (p, e) in entries {
        if let (_, Node::File { size, blocks, .. }) = e {
            let b = blocks.ids();
            let fits = match blocks {
                Blocks::Sized { lens, .. } => {
                    crate::snapshot::spans::check_lens(lens, *size, bs as u32).is_ok()
                }
                _ => b.len() as u64 == size.div_ceil(bs),
            };
            if !fits || b.iter().any(|id| id.0 == [0; 32]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn o_path(p: &std::path::Path) -> OwnedFd {
        rustix::fs::openat(
            rustix::fs::CWD,
            p,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    /// Only the regular file of the expected inode is opened for a
    /// capture's read: not another inode, not a FIFO in its place.
    #[test]
    fn reopen_opens_only_the_expected_regular_file() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, b"data").unwrap();
        let fifo = tmp.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let f_ino = std::fs::metadata(&f).unwrap().ino();
        let fifo_ino = std::fs::symlink_metadata(&fifo).unwrap().ino();
        let mut got = String::new();
        std::io::Read::read_to_string(&mut reopen(&o_path(&f), f_ino).unwrap(), &mut got).unwrap();
        assert_eq!(got, "data");
        assert!(reopen(&o_path(&f), f_ino + 1).is_none());
        assert!(reopen(&o_path(&fifo), fifo_ino).is_none());
    }
}
