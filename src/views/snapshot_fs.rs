//! Read-only snapshot views: `.snapshots/` of the live mount and the
//! standalone `mount-snapshot` mounts.
//!
//! ```text
//! .snapshots/                      node SNAPDIR
//!   latest -> <name>               node AT + id of the newest (symlink)
//!   @<time> -> <name>              node AT + id (symlink; any RFC 3339 time or @-2h)
//!   <name>/...                     node VIEW_BASE + (id << 32) + preorder position in the snapshot's tree
//! ```
//! Node ids are computed, not stored: a snapshot's directories are read
//! when first used, a bounded number kept (`view_tree.rs`: positions from
//! the entry counts of format 3 directory references); hard links of a
//! snapshot share one node. File reads go through a bounded cache of verified chunks,
//! with prefetch on sequential reads; a chunk that fails verification
//! gives EIO (and is logged with snapshot, path and chunk), never wrong
//! bytes. Everything is read-only (EROFS). Snapshots are immutable, so the
//! kernel may cache their pages and attributes for long; `latest`, the
//! `@TIME` names and `.snapshots` itself are kept current as the list
//! changes (`freshness.rs`).
//!
//! Nothing in a view grants privilege, whatever the mount's options: the
//! setuid and setgid bits are not shown, device nodes are shown with
//! device number 0 (no driver behind them), and `security.capability`
//! (file capabilities) is hidden. A setuid-root program deleted from the
//! live tree long ago therefore cannot be run as root from
//! `.snapshots/`. `rewindfs ls` and `restore` still see and restore the
//! real bits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{Errno, FileAttr, FileType};
use parking_lot::{Mutex, RwLock};

use super::chunk_cache::ChunkCache;
use super::freshness::{Freshness, Source};
use super::materialize::{FileRef, Key, MaterializeOptions, Materializer};
use super::view_tree::{VKind, VNode, ViewTree};
use crate::repo::Repository;
use crate::snapshot::dirs::DNode;
use crate::snapshot::manifest::display_path;
use crate::snapshot::spans::Spans;
use crate::snapshot::Blocks;
use crate::snapshot::{select::select, SnapshotRecord};
use crate::store::ChunkId;
use crate::util::time;

pub const VIEW_BASE: u64 = 1 << 62;
pub const SNAPDIR: u64 = VIEW_BASE;
/// Was `latest` (kept reserved; `latest` now names the `AT` node of the
/// newest snapshot).
const LATEST: u64 = VIEW_BASE + 1;
const AT: u64 = VIEW_BASE + 2;
const VIEW_END: u64 = 1 << 63;
/// Handles of view files are tagged so the live mount's router can tell
/// them from live handles.
pub const FH_TAG: u64 = 1 << 63;

pub fn is_view(nodeid: u64) -> bool {
    (VIEW_BASE..VIEW_END).contains(&nodeid)
}

fn node_of(snap: u64, idx: u32) -> u64 {
    VIEW_BASE + (snap << 32) + idx as u64
}

/// What a view node id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Id {
    SnapDir,
    Latest,
    At(u64),
    Entry(u64, u32),
}

fn decode(nodeid: u64) -> Option<Id> {
    if !is_view(nodeid) {
        return None;
    }
    let off = nodeid - VIEW_BASE;
    Some(match off {
        0 => Id::SnapDir,
        1 => Id::Latest,
        o if o < (1 << 32) => Id::At(o - 2),
        o => Id::Entry(o >> 32, (o & 0xffff_ffff) as u32),
    })
}

/// An open file of a snapshot.
pub struct ViewFile {
    tree: Arc<ViewTree>,
    idx: u32,
    size: u64,
    blocks: Arc<Vec<ChunkId>>,
    /// Where each chunk lies (fixed blocks or content chunks).
    spans: Arc<Spans>,
    path: Vec<u8>,
    /// End of the last read (sequential reads trigger prefetch).
    last_end: AtomicU64,
    /// Its content key in the materialization cache (when it has one).
    key: Option<Key>,
    /// The next file of its directory was prefetched (a loader walking
    /// shards in name order).
    next_prefetched: std::sync::atomic::AtomicBool,
}

pub struct ViewOptions {
    /// Entry/attribute time for snapshot contents (immutable).
    pub ttl: Duration,
    /// For `.snapshots` itself and `latest` (new snapshots appear).
    pub short_ttl: Duration,
    /// Blocks to prefetch ahead of a sequential reader.
    pub readahead_blocks: usize,
    /// Snapshot trees kept open.
    pub trees_cached: usize,
    /// Entries of loaded directories kept per open snapshot tree.
    pub entries_cached: usize,
    /// The materialization cache (capacity 0: none).
    pub materialize: MaterializeOptions,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            ttl: Duration::from_secs(3600),
            short_ttl: Duration::from_secs(1),
            readahead_blocks: 16,
            trees_cached: 8,
            entries_cached: super::view_tree::DEFAULT_ENTRIES_CACHED,
            materialize: MaterializeOptions::default(),
        }
    }
}

pub struct Views {
    pub repo: Arc<Repository>,
    pub chunks: Arc<ChunkCache>,
    /// Verified copies of files read again (see `materialize.rs`).
    pub materialize: Option<Arc<Materializer>>,
    pub opts: ViewOptions,
    trees: Mutex<VecDeque<Arc<ViewTree>>>,
    /// The snapshot list as of a repository records generation.
    list: Mutex<Option<(u64, Arc<Vec<SnapshotRecord>>)>>,
    handles: RwLock<HashMap<u64, Arc<ViewFile>>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    /// The kernels showing `.snapshots`, told when the list changes.
    pub freshness: Freshness,
}

pub type VResult<T> = Result<T, Errno>;

fn ts(ns: i64) -> SystemTime {
    time::ns_to_system_time(ns)
}

impl Views {
    pub fn new(repo: Arc<Repository>, cache_bytes: u64, opts: ViewOptions) -> Arc<Views> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let chunks = ChunkCache::new(repo.clone(), cache_bytes, threads);
        let materialize = match Materializer::open(chunks.clone(), &opts.materialize) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(
                    "no materialization cache (snapshot files are served by the daemon): {e}"
                );
                None
            }
        };
        let views = Arc::new(Views {
            chunks,
            materialize,
            repo,
            opts,
            trees: Mutex::new(VecDeque::new()),
            list: Mutex::new(None),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            freshness: Freshness::default(),
        });
        let weak = Arc::downgrade(&views);
        views.repo.watch_records(Arc::new(move || {
            if let Some(v) = weak.upgrade() {
                v.freshness.signal();
            }
        }));
        Freshness::start(&views);
        // gc keeps what open files still read, even of a snapshot that
        // was forgotten after they were opened.
        let weak = Arc::downgrade(&views);
        views.repo.add_pins(Arc::new(move || {
            weak.upgrade().map(|v| v.open_chunks()).unwrap_or_default()
        }));
        views
    }

    /// Return once every kernel showing `.snapshots` has been told about
    /// the snapshot list as it is now (after a command that changed it).
    pub fn sync_kernel(&self) {
        self.freshness.sync(self.repo.records_generation());
    }

    /// The chunks of the files open in these views.
    pub fn open_chunks(&self) -> Vec<ChunkId> {
        let handles = self.handles.read();
        let mut out = Vec::new();
        for f in handles.values() {
            out.extend(f.blocks.iter().copied());
        }
        out
    }

    /// The snapshot trees open for the views: how many, the entries of
    /// their loaded directories, and about the heap bytes they take.
    pub fn trees_memory(&self) -> (u64, u64, u64) {
        let trees = self.trees.lock();
        let (mut nodes, mut bytes) = (0, 0);
        for t in trees.iter() {
            let (n, b) = t.memory();
            nodes += n;
            bytes += b;
        }
        (trees.len() as u64, nodes, bytes)
    }

    /// Whether snapshot `id` still exists (it may have been forgotten
    /// while a file of it was open).
    fn listed(&self, id: u64) -> bool {
        self.snapshots()
            .map(|l| l.iter().any(|r| r.id == id))
            .unwrap_or(true)
    }

    /// The snapshot list, read again only when the repository's records
    /// changed; trees of snapshots no longer listed (forgotten) are
    /// dropped then, so new lookups and opens no longer find them (open
    /// files keep theirs).
    fn snapshots(&self) -> VResult<Arc<Vec<SnapshotRecord>>> {
        let mut l = self.list.lock();
        let generation = self.repo.records_generation();
        if let Some((g, v)) = l.as_ref() {
            if *g == generation {
                return Ok(v.clone());
            }
        }
        let v = Arc::new(self.repo.snapshots().map_err(|_| Errno::EIO)?);
        *l = Some((generation, v.clone()));
        drop(l);
        self.trees
            .lock()
            .retain(|t| v.iter().any(|r| r.id == t.record.id));
        Ok(v)
    }

    pub fn tree(&self, id: u64) -> VResult<Arc<ViewTree>> {
        let all = self.snapshots()?;
        let cached = self
            .trees
            .lock()
            .iter()
            .find(|t| t.record.id == id)
            .cloned();
        if let Some(t) = cached {
            return Ok(t);
        }
        let find = |all: &[SnapshotRecord]| all.iter().find(|r| r.id == id).cloned();
        let rec = find(&all).ok_or(Errno::ENOENT)?;
        let open = |rec: SnapshotRecord| ViewTree::open(&self.repo, rec, self.opts.entries_cached);
        let vt = match open(rec.clone()) {
            Ok(t) => t,
            Err(e) => {
                // `forget` may have rewritten the record since the list
                // was read (its old manifest gone): once more, fresh.
                let now = find(&self.snapshots()?).ok_or(Errno::ENOENT)?;
                let fail = |e| {
                    tracing::error!(snapshot = id, "cannot read the snapshot's tree: {e}");
                    Errno::EIO
                };
                if now == rec {
                    return Err(fail(e));
                }
                open(now).map_err(fail)?
            }
        };
        let vt = Arc::new(vt);
        let mut trees = self.trees.lock();
        trees.push_back(vt.clone());
        while trees.len() > self.opts.trees_cached.max(1) {
            trees.pop_front();
        }
        Ok(vt)
    }

    /// Node `idx` of tree `t` (ENOENT: none; EIO: its directories
    /// cannot be read).
    fn node(&self, t: &ViewTree, idx: u32) -> VResult<VNode> {
        t.node(idx)
            .map_err(|e| self.failed(t, e))?
            .ok_or(Errno::ENOENT)
    }

    /// A directory of a snapshot that cannot be read: logged, EIO.
    fn failed(&self, t: &ViewTree, e: crate::error::Error) -> Errno {
        tracing::error!(
            snapshot = t.record.id,
            "cannot read the snapshot's directories: {e}"
        );
        Errno::EIO
    }

    fn dir_attr(&self, nodeid: u64, time_ns: i64, nlink: u32) -> FileAttr {
        FileAttr {
            ino: fuser::INodeNo(nodeid),
            size: 4096,
            blocks: 8,
            atime: ts(time_ns),
            mtime: ts(time_ns),
            ctime: ts(time_ns),
            crtime: SystemTime::UNIX_EPOCH,
            kind: FileType::Directory,
            perm: 0o555,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn link_attr(&self, nodeid: u64, target_len: usize, time_ns: i64) -> FileAttr {
        FileAttr {
            kind: FileType::Symlink,
            perm: 0o777,
            size: target_len as u64,
            blocks: 0,
            nlink: 1,
            ..self.dir_attr(nodeid, time_ns, 1)
        }
    }

    fn entry_attr(&self, t: &ViewTree, n: &VNode) -> FileAttr {
        let m = &n.meta;
        let mtime = time::parts_to_system_time(m.mtime.sec, m.mtime.nsec);
        let (kind, size, rdev) = match &n.kind {
            VKind::Dir => (FileType::Directory, 4096, 0),
            VKind::File { size, .. } => (FileType::RegularFile, *size, 0),
            VKind::Symlink(tg) => (FileType::Symlink, tg.len() as u64, 0),
            VKind::Special(r) => {
                let kind = crate::util::sys::fuse_file_type(m.mode);
                // A device node names no device here (see the module doc).
                let rdev = match kind {
                    FileType::CharDevice | FileType::BlockDevice => 0,
                    _ => *r as u32,
                };
                (kind, 0, rdev)
            }
        };
        FileAttr {
            ino: fuser::INodeNo(node_of(t.record.id, n.idx)),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm: (m.mode & 0o1777) as u16,
            nlink: n.nlink,
            uid: m.uid,
            gid: m.gid,
            rdev,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The attributes of a view node and how long the kernel may keep them.
    pub fn getattr(&self, nodeid: u64) -> VResult<(FileAttr, Duration)> {
        match decode(nodeid).ok_or(Errno::ENOENT)? {
            Id::SnapDir => {
                let all = self.snapshots()?;
                let t = all.iter().map(|r| r.time_ns).max().unwrap_or(0);
                Ok((
                    self.dir_attr(SNAPDIR, t, 2 + all.len() as u32),
                    self.opts.short_ttl,
                ))
            }
            Id::Latest => {
                let all = self.snapshots()?;
                let l = all.iter().max_by_key(|r| r.id).ok_or(Errno::ENOENT)?;
                Ok((
                    self.link_attr(LATEST, l.name.len(), l.time_ns),
                    self.opts.short_ttl,
                ))
            }
            Id::At(id) => {
                // Its target never changes, but the entries naming it
                // (`latest`, `@TIME`, also listed by readdirplus with
                // these attributes) must not be cached.
                let all = self.snapshots()?;
                let r = all.iter().find(|r| r.id == id).ok_or(Errno::ENOENT)?;
                Ok((
                    self.link_attr(nodeid, r.name.len(), r.time_ns),
                    Duration::ZERO,
                ))
            }
            Id::Entry(id, idx) => {
                let t = self.tree(id)?;
                let n = self.node(&t, idx)?;
                Ok((self.entry_attr(&t, &n), self.opts.ttl))
            }
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> VResult<(FileAttr, Duration)> {
        let name = name.as_bytes();
        match decode(parent).ok_or(Errno::ENOENT)? {
            Id::SnapDir => {
                let all = self.snapshots()?;
                // `latest` moves with the list: the kernel keeps it for
                // the short TTL, and every change of the list invalidates
                // it at once (freshness.rs). `@TIME` moves with the clock
                // too: looked up again at every use.
                if name == b"latest" {
                    let l = all.iter().max_by_key(|r| r.id).ok_or(Errno::ENOENT)?;
                    return Ok((self.getattr(AT + l.id)?.0, self.opts.short_ttl));
                }
                if name.first() == Some(&b'@') {
                    let spec = String::from_utf8_lossy(name);
                    let r = select(&all, &spec, time::now_ns()).map_err(|_| Errno::ENOENT)?;
                    return Ok((self.getattr(AT + r.id)?.0, Duration::ZERO));
                }
                let r = all
                    .iter()
                    .find(|r| r.name.as_bytes() == name)
                    .ok_or(Errno::ENOENT)?;
                let t = self.tree(r.id)?;
                let n = self.node(&t, 0)?;
                Ok((self.entry_attr(&t, &n), self.opts.ttl))
            }
            Id::Entry(id, idx) => {
                let t = self.tree(id)?;
                let found = t.child(idx, name).map_err(|e| self.failed(&t, e))?;
                let Some(found) = found else {
                    // Not a directory, or no such node.
                    self.node(&t, idx)?;
                    return Err(Errno::ENOTDIR);
                };
                let n = found.ok_or(Errno::ENOENT)?;
                Ok((self.entry_attr(&t, &n), self.opts.ttl))
            }
            _ => Err(Errno::ENOTDIR),
        }
    }

    pub fn readlink(&self, nodeid: u64) -> VResult<Vec<u8>> {
        match decode(nodeid).ok_or(Errno::ENOENT)? {
            Id::Latest => {
                let all = self.snapshots()?;
                let l = all.iter().max_by_key(|r| r.id).ok_or(Errno::ENOENT)?;
                Ok(l.name.as_bytes().to_vec())
            }
            Id::At(id) => {
                let all = self.snapshots()?;
                let r = all.iter().find(|r| r.id == id).ok_or(Errno::ENOENT)?;
                Ok(r.name.as_bytes().to_vec())
            }
            Id::Entry(id, idx) => {
                let t = self.tree(id)?;
                match self.node(&t, idx)?.kind {
                    VKind::Symlink(tg) => Ok(tg),
                    _ => Err(Errno::EINVAL),
                }
            }
            Id::SnapDir => Err(Errno::EINVAL),
        }
    }

    /// Directory entries after `offset` (its index): (next offset, node,
    /// kind, name). `.` and `..` come first; `parent` is the node of `..`.
    pub fn readdir(&self, nodeid: u64, parent: u64) -> VResult<Vec<(u64, FileType, Vec<u8>)>> {
        let mut out = vec![
            (nodeid, FileType::Directory, b".".to_vec()),
            (parent, FileType::Directory, b"..".to_vec()),
        ];
        match decode(nodeid).ok_or(Errno::ENOENT)? {
            Id::SnapDir => {
                let all = self.snapshots()?;
                if let Some(l) = all.iter().max_by_key(|r| r.id) {
                    out.push((AT + l.id, FileType::Symlink, b"latest".to_vec()));
                }
                for r in all.iter() {
                    out.push((
                        node_of(r.id, 0),
                        FileType::Directory,
                        r.name.as_bytes().to_vec(),
                    ));
                }
            }
            Id::Entry(id, idx) => {
                let t = self.tree(id)?;
                let d = t
                    .dir(idx)
                    .map_err(|e| self.failed(&t, e))?
                    .ok_or(Errno::ENOTDIR)?;
                out.reserve(d.children.len());
                for c in &d.children {
                    let kind = match &c.node {
                        DNode::Dir(_) => FileType::Directory,
                        DNode::File { .. } => FileType::RegularFile,
                        DNode::Symlink { .. } => FileType::Symlink,
                        DNode::Special { .. } => crate::util::sys::fuse_file_type(c.meta.mode),
                    };
                    let (node, _) = t.shown(c).map_err(|e| self.failed(&t, e))?;
                    out.push((node_of(id, node), kind, c.name.clone()));
                }
            }
            _ => return Err(Errno::ENOTDIR),
        }
        Ok(out)
    }

    /// The parent node of a directory node (for `..`).
    pub fn parent_of(&self, nodeid: u64) -> u64 {
        match decode(nodeid) {
            Some(Id::Entry(id, idx)) => {
                let Ok(t) = self.tree(id) else { return SNAPDIR };
                match t.node(idx) {
                    Ok(Some(_)) if idx == 0 => SNAPDIR,
                    Ok(Some(n)) => node_of(id, n.parent),
                    _ => SNAPDIR,
                }
            }
            _ => SNAPDIR,
        }
    }

    pub fn open(&self, nodeid: u64, flags: i32) -> VResult<u64> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(Errno::EROFS);
        }
        let Some(Id::Entry(id, idx)) = decode(nodeid) else {
            return Err(Errno::EISDIR);
        };
        let t = self.tree(id)?;
        let node = self.node(&t, idx)?;
        let (size, list) = match &node.kind {
            VKind::File { size } => (
                *size,
                t.file_blocks(node.idx)
                    .map_err(|e| self.failed(&t, e))?
                    .ok_or(Errno::ENOENT)?,
            ),
            VKind::Dir => return Err(Errno::EISDIR),
            _ => return Err(Errno::EACCES),
        };
        let spans = Arc::new(Spans::from_blocks(&list, size, t.record.block_size));
        let blocks = Arc::new(match list {
            Blocks::Full(ids) | Blocks::Sized { ids, .. } => ids,
            Blocks::Patch(_) => return Err(Errno::EIO),
        });
        if blocks.len() != spans.len() {
            return Err(Errno::EIO);
        }
        let file = self.materialize.as_ref().and_then(|m| {
            m.eligible(size).then(|| {
                let f = FileRef {
                    key: Key::of(t.record.block_size, size, &blocks),
                    snapshot: id,
                    block_size: t.record.block_size,
                    size,
                    blocks: blocks.clone(),
                    spans: spans.clone(),
                    path: node.path.clone(),
                };
                m.note_open(&f);
                f.key
            })
        });
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed) | FH_TAG;
        self.handles.write().insert(
            fh,
            Arc::new(ViewFile {
                tree: t,
                idx: node.idx,
                size,
                blocks,
                spans,
                path: node.path,
                last_end: AtomicU64::new(0),
                key: file,
                next_prefetched: std::sync::atomic::AtomicBool::new(false),
            }),
        );
        Ok(fh)
    }

    /// The content key in the materialization cache of the file open as
    /// `fh` (files the cache may hold).
    pub fn materialized_key(&self, fh: u64) -> Option<Key> {
        self.handles.read().get(&fh)?.key
    }

    pub fn release(&self, fh: u64) {
        self.handles.write().remove(&fh);
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> VResult<ReadData> {
        let f = self.handles.read().get(&fh).cloned().ok_or(Errno::EBADF)?;
        let (fsize, blocks) = (&f.size, &f.blocks);
        if offset >= *fsize {
            return Ok(ReadData::Owned(Vec::new()));
        }
        let end = (offset + size as u64).min(*fsize);
        tracing::trace!(fh, offset, size, "view read");
        let bs = f.tree.record.block_size as u64;
        let spans = &f.spans;
        let first = spans.find(offset) as u64;
        let last = spans.find(end - 1) as u64;
        // Within one chunk (the usual case: the kernel asks for aligned
        // 1 MiB), the reply is a slice of the cached chunk, not a copy.
        let mut out = ReadData::Owned(Vec::new());
        for b in first..=last {
            let id = blocks.get(b as usize).ok_or(Errno::EIO)?;
            let (start, want) = spans.span(b as usize);
            let data = self.chunks.get(id).map_err(|e| {
                if !self.listed(f.tree.record.id) {
                    // Its snapshot was forgotten and gc took its data
                    // (the file was opened after gc kept what open
                    // files read): the handle is stale.
                    return Errno::ESTALE;
                }
                tracing::error!(
                    snapshot = f.tree.record.id,
                    path = %display_path(&f.path),
                    chunk = %id,
                    "snapshot read failed: {e}"
                );
                Errno::EIO
            })?;
            let lo = if b == first {
                (offset - start) as usize
            } else {
                0
            };
            let hi = if b == last {
                (end - start) as usize
            } else {
                data.len()
            };
            if hi > data.len() || lo > hi || data.len() as u64 != want {
                return Err(Errno::EIO);
            }
            out = match out {
                ReadData::Owned(v) if v.is_empty() && first == last => {
                    ReadData::Shared { data, lo, hi }
                }
                ReadData::Owned(mut v) => {
                    if v.capacity() == 0 {
                        v.reserve_exact((end - offset) as usize);
                    }
                    v.extend_from_slice(&data[lo..hi]);
                    ReadData::Owned(v)
                }
                shared @ ReadData::Shared { .. } => shared,
            };
        }
        // Sequential reading (the kernel's readahead sends requests a bit
        // out of order): load the next blocks ahead.
        let prev = f.last_end.fetch_max(end, Ordering::Relaxed);
        let near = prev == u64::MAX || offset.abs_diff(prev) <= 8 * bs;
        if near || offset == 0 {
            let window = last + 1 + self.opts.readahead_blocks as u64;
            for b in last + 1..window.min(blocks.len() as u64) {
                self.chunks.prefetch(blocks[b as usize]);
            }
            // The window passes the end of the file: start on the next
            // file of the directory (in name order), once.
            let left = window.saturating_sub(blocks.len() as u64) as usize;
            if left > 0 && offset > 0 && !f.next_prefetched.swap(true, Ordering::Relaxed) {
                if let Some(next) = f.tree.next_file(f.idx) {
                    for id in next.iter().take(left) {
                        self.chunks.prefetch(*id);
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn getxattr(&self, nodeid: u64, name: &OsStr) -> VResult<Vec<u8>> {
        let Some(Id::Entry(id, idx)) = decode(nodeid) else {
            return Err(Errno::NO_XATTR);
        };
        let t = self.tree(id)?;
        let n = self.node(&t, idx)?;
        n.meta
            .xattrs
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes() && shown_xattr(k))
            .map(|(_, v)| v.clone())
            .ok_or(Errno::NO_XATTR)
    }

    pub fn listxattr(&self, nodeid: u64) -> VResult<Vec<u8>> {
        let Some(Id::Entry(id, idx)) = decode(nodeid) else {
            return Ok(Vec::new());
        };
        let t = self.tree(id)?;
        let n = self.node(&t, idx)?;
        let mut out = Vec::new();
        for (k, _) in n.meta.xattrs.iter().filter(|(k, _)| shown_xattr(k)) {
            out.extend_from_slice(k);
            out.push(0);
        }
        Ok(out)
    }

    pub fn statfs(&self) -> VResult<rustix::fs::StatVfs> {
        rustix::fs::fstatvfs(self.repo.dir()).map_err(|e| Errno::from_i32(e.raw_os_error()))
    }
}

impl Source for Views {
    fn generation(&self) -> u64 {
        self.repo.records_generation()
    }

    fn names(&self) -> Option<BTreeMap<u64, String>> {
        let l = self.snapshots().ok()?;
        Some(l.iter().map(|r| (r.id, r.name.clone())).collect())
    }

    fn at_node(&self, id: u64) -> u64 {
        AT + id
    }

    fn snapdir(&self) -> u64 {
        SNAPDIR
    }

    fn freshness(&self) -> &Freshness {
        &self.freshness
    }
}

/// Extended attributes a view shows: all but file capabilities, which
/// would grant privilege to whoever runs the file.
fn shown_xattr(name: &[u8]) -> bool {
    name != b"security.capability"
}

/// The bytes of a snapshot read: a slice of one cached chunk, or a copy
/// assembled from several.
pub enum ReadData {
    Shared {
        data: Arc<Vec<u8>>,
        lo: usize,
        hi: usize,
    },
    Owned(Vec<u8>),
}

impl std::ops::Deref for ReadData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReadData::Shared { data, lo, hi } => &data[*lo..*hi],
            ReadData::Owned(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_roundtrip() {
        assert_eq!(decode(SNAPDIR), Some(Id::SnapDir));
        assert_eq!(decode(LATEST), Some(Id::Latest));
        assert_eq!(decode(AT + 7), Some(Id::At(7)));
        assert_eq!(decode(node_of(5, 9)), Some(Id::Entry(5, 9)));
        assert_eq!(decode(node_of(1, 0)), Some(Id::Entry(1, 0)));
        assert_eq!(decode(42), None);
        assert!(!is_view(1 << 63));
    }
}
