//! Scan-mode capture: walk a directory, read what changed, store new
//! blocks, commit a snapshot.
//!
//! The walk uses directory file descriptors (`openat` with `O_NOFOLLOW`),
//! so a concurrent rename cannot redirect it outside the source. Changed
//! files are cut into work units of a few blocks that a pool of workers
//! reads, hashes, compresses and stores in parallel.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, unbounded};

use super::manifest::{display_path, Blocks, Entry, Manifest, Meta, Node, MANIFEST_FORMAT};
use super::model::{Kind, SnapshotRecord, Stats};
use super::tree::Tree;
use crate::error::{Error, IoContext, Result};
use crate::repo::{ChunkWriter, Repository, SnapshotDraft};
use crate::store::{BlobKind, ChunkId};
use crate::util::sys::{self, file_type};
use crate::util::time;
use crate::util::walk::walk;

/// A file whose ctime is this close to (or after) the start of a capture
/// may change again within the same timestamp tick without its (size,
/// mtime, ctime) changing. Such "racily clean" entries are recorded with
/// [`RACY_CTIME`] so that the next scan re-reads them instead of trusting
/// their stat. One second covers coarse kernel clocks and NFS.
const RACY_MARGIN_NS: i64 = 1_000_000_000;

/// The `ctime_ns` recorded for a racily clean file: never equal to a
/// real ctime, so the next scan always re-reads the file.
pub const RACY_CTIME: i64 = -1;

/// Blocks per work unit: large enough to keep reads sequential, small
/// enough to spread one big file over every worker.
const UNIT_BLOCKS: u64 = 8;

#[derive(Clone, Debug)]
pub struct ScanOptions {
    pub kind: Kind,
    pub label: Option<String>,
    /// Worker threads (0: one per core).
    pub threads: usize,
}

#[derive(Debug)]
pub struct ScanResult {
    pub record: SnapshotRecord,
    /// The kind asked for, when it had to be changed (the first snapshot
    /// of a repository is always full).
    pub requested: Kind,
    pub warnings: Vec<String>,
}

struct FileJob {
    file: File,
    size: u64,
    mtime: crate::snapshot::manifest::Time,
    path: Vec<u8>,
    remaining: AtomicUsize,
    unstable: AtomicBool,
}

struct Unit {
    job: usize,
    file: Arc<FileJob>,
    first: u64,
    count: u64,
}

struct UnitDone {
    job: usize,
    first: u64,
    ids: Vec<ChunkId>,
    /// Set by the unit that finished its file: did it change while read?
    finished_unstable: Option<bool>,
}

/// Pick the base a capture of `kind` is compared with: the latest snapshot
/// (incremental) or the latest full (differential).
pub fn base_for(kind: Kind, all: &[SnapshotRecord]) -> Option<&SnapshotRecord> {
    match kind {
        Kind::Full => None,
        Kind::Incremental => all.iter().max_by_key(|r| r.id),
        Kind::Differential => all
            .iter()
            .filter(|r| r.kind == Kind::Full)
            .max_by_key(|r| r.id),
    }
}

/// Why a snapshot of `kind` cannot be based on the existing chain with
/// the repository's `block_size` (someone changed `block_size` in
/// config.json): a chain's manifests must share one block size. `None`
/// when it can.
pub fn block_size_break(all: &[SnapshotRecord], kind: Kind, block_size: u32) -> Option<String> {
    let base = base_for(kind, all)?;
    (base.block_size != block_size).then(|| {
        format!(
            "the repository's block size is {block_size} but snapshot {} was taken with {}",
            base.id, base.block_size
        )
    })
}

/// Take a snapshot of `source` by scanning it.
pub fn snapshot_dir(repo: &Repository, source: &Path, opts: &ScanOptions) -> Result<ScanResult> {
    let time_ns = time::now_ns();
    let all = repo.snapshots()?;
    let kind = if all.is_empty() {
        Kind::Full
    } else if let Some(why) = block_size_break(&all, opts.kind, repo.config.block_size) {
        tracing::warn!("{why}: taking a full snapshot");
        Kind::Full
    } else {
        opts.kind
    };
    let base_rec = base_for(kind, &all).cloned();
    let base = match &base_rec {
        Some(r) => Some(repo.resolve(r)?),
        None => None,
    };
    let root_fd = rustix::fs::openat(
        rustix::fs::CWD,
        source,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ctx("open source directory", source)?;
    let writer = repo.writer()?;
    let result = capture(
        repo,
        source,
        opts,
        &writer,
        root_fd,
        Base {
            kind,
            record: base_rec,
            tree: base,
        },
        time_ns,
    );
    if result.is_err() {
        // Give the space of unreferenced blobs back (a full disk, say).
        writer.abort();
    }
    let (record, warnings) = result?;
    Ok(ScanResult {
        record,
        requested: opts.kind,
        warnings,
    })
}

/// What a capture is compared with.
struct Base {
    kind: Kind,
    record: Option<SnapshotRecord>,
    tree: Option<Tree>,
}

fn capture(
    repo: &Repository,
    source: &Path,
    opts: &ScanOptions,
    writer: &ChunkWriter<'_>,
    root_fd: OwnedFd,
    base: Base,
    time_ns: i64,
) -> Result<(SnapshotRecord, Vec<String>)> {
    let kind = base.kind;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.threads
    };
    let bs = repo.config.block_size as u64;
    let repo_id = repo.dir().stat().ok().map(|st| (st.st_dev, st.st_ino));
    let (unit_tx, unit_rx) = bounded::<Unit>(threads * 4);
    let (done_tx, done_rx) = unbounded::<Result<UnitDone>>();
    let walk = std::thread::scope(|s| -> Result<Walk> {
        for _ in 0..threads {
            let unit_rx = unit_rx.clone();
            let done_tx = done_tx.clone();
            s.spawn(move || {
                let mut buf = vec![0u8; bs as usize];
                for unit in unit_rx.iter() {
                    let r = process_unit(&unit, bs, &mut buf, writer);
                    if done_tx.send(r).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let mut w = Walk::new(
            base.tree.as_ref(),
            kind,
            repo_id,
            bs,
            time_ns - RACY_MARGIN_NS,
        );
        let walked = w.walk(root_fd, &unit_tx);
        drop(unit_tx);
        // Collect every unit, even after an error, so workers finish.
        let mut first_err = walked.err();
        for r in done_rx.iter() {
            match r {
                Ok(d) => w.accept(d),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(w),
        }
    })?;

    let (manifest, mut stats, warnings) =
        walk.finish(base.tree.as_ref(), kind, repo.config.block_size)?;
    stats.changed_entries = manifest.entries.len() as u64;
    stats.removed_entries = manifest.removed.len() as u64;
    let (parent, full) = match &base.record {
        None => (None, None),
        Some(b) => (Some(b.id), Some(b.full)),
    };
    let record = repo.commit_snapshot(
        writer,
        &manifest,
        SnapshotDraft {
            kind,
            parent,
            full,
            time_ns,
            label: opts.label.clone(),
            source: source.display().to_string(),
            stats,
        },
    )?;
    writer.close()?;
    Ok((record, warnings))
}

fn process_unit(
    unit: &Unit,
    bs: u64,
    buf: &mut [u8],
    writer: &ChunkWriter<'_>,
) -> Result<UnitDone> {
    let job = &unit.file;
    let mut ids = Vec::with_capacity(unit.count as usize);
    for b in unit.first..unit.first + unit.count {
        let off = b * bs;
        let len = (job.size - off).min(bs) as usize;
        let data = &mut buf[..len];
        let mut got = 0;
        while got < len {
            match job.file.read_at(&mut data[got..], off + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read", display_path(&job.path), e)),
            }
        }
        if got < len {
            // The file shrank while we read it.
            data[got..].fill(0);
            job.unstable.store(true, Ordering::Relaxed);
        }
        let id = ChunkId::of(data);
        writer.store(BlobKind::Chunk, id, data)?;
        ids.push(id);
    }
    let mut finished_unstable = None;
    if job.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        let changed = match rustix::fs::fstat(&job.file) {
            Ok(st) => st.st_size as u64 != job.size || sys::mtime(&st) != job.mtime,
            Err(_) => true,
        };
        finished_unstable = Some(changed || job.unstable.load(Ordering::Relaxed));
    }
    Ok(UnitDone {
        job: unit.job,
        first: unit.first,
        ids,
        finished_unstable,
    })
}

/// A regular file of the new manifest whose blocks are being read.
struct PendingFile {
    path: Vec<u8>,
    meta: Meta,
    size: u64,
    link: Option<u64>,
    ids: Vec<ChunkId>,
    unstable: bool,
}

struct Walk<'b> {
    base: Option<&'b Tree>,
    kind: Kind,
    repo_id: Option<(u64, u64)>,
    bs: u64,
    /// Files with a ctime at or after this are recorded as racy.
    racy_after: i64,
    seen: HashSet<Vec<u8>>,
    entries: Vec<Entry>,
    jobs: Vec<PendingFile>,
    /// Hard-link groups already being read: inode -> job.
    link_jobs: HashMap<u64, usize>,
    /// Entries that share another job's blocks: (path, meta, job).
    followers: Vec<(Vec<u8>, Meta, usize)>,
    stats: Stats,
    warnings: Vec<String>,
}

impl<'b> Walk<'b> {
    fn new(
        base: Option<&'b Tree>,
        kind: Kind,
        repo_id: Option<(u64, u64)>,
        bs: u64,
        racy_after: i64,
    ) -> Self {
        Walk {
            base,
            kind,
            repo_id,
            bs,
            racy_after,
            seen: HashSet::new(),
            entries: Vec::new(),
            jobs: Vec::new(),
            link_jobs: HashMap::new(),
            followers: Vec::new(),
            stats: Stats::default(),
            warnings: Vec::new(),
        }
    }

    fn base_entry(&self, path: &[u8]) -> Option<&'b (Meta, Node)> {
        self.base.and_then(|t| t.get(path))
    }

    fn walk(&mut self, root: OwnedFd, units: &crossbeam_channel::Sender<Unit>) -> Result<()> {
        let st = rustix::fs::fstat(&root).ctx("stat", "source")?;
        let mut meta = sys::meta_of(&st);
        meta.xattrs = sys::read_xattrs(&root).ctx("read xattrs", "/")?;
        self.add_simple(Vec::new(), meta, Node::Dir);
        self.stats.dirs += 1;
        walk(root, |e| {
            let path = e.path.to_vec();
            let st = e.stat;
            let mut meta = sys::meta_of(st);
            match file_type(st.st_mode) {
                libc::S_IFDIR => {
                    if self.repo_id == Some((st.st_dev, st.st_ino)) {
                        return Ok(false);
                    }
                    if let Some(fd) = e.dir_fd {
                        meta.xattrs =
                            sys::read_xattrs(fd).ctx("read xattrs", display_path(&path))?;
                    }
                    self.stats.dirs += 1;
                    self.add_simple(path, meta, Node::Dir);
                    return Ok(true);
                }
                libc::S_IFREG => self.add_file(e.dir, e.name, path, st, units)?,
                libc::S_IFLNK => {
                    let target = match rustix::fs::readlinkat(e.dir, e.name, Vec::new()) {
                        Ok(t) => t.into_bytes(),
                        Err(rustix::io::Errno::NOENT) => return Ok(false),
                        Err(err) => {
                            return Err(Error::io("readlink", display_path(&path), err.into()))
                        }
                    };
                    self.stats.symlinks += 1;
                    self.add_simple(path, meta, Node::Symlink { target });
                }
                libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK => {
                    let rdev = st.st_rdev;
                    self.add_simple(path, meta, Node::Special { rdev });
                }
                _ => {
                    self.warnings
                        .push(format!("{}: sockets are not captured", display_path(&path)));
                }
            }
            Ok(false)
        })
    }

    /// Directories, symlinks and special files: recorded when new or
    /// different from the base.
    fn add_simple(&mut self, path: Vec<u8>, meta: Meta, node: Node) {
        self.seen.insert(path.clone());
        let changed = match self.base_entry(&path) {
            Some((bm, bn)) if self.kind != Kind::Full => !(bm.same_visible(&meta) && *bn == node),
            _ => true,
        };
        if changed {
            self.entries.push(Entry { path, meta, node });
        }
    }

    fn add_file(
        &mut self,
        dfd: &OwnedFd,
        name: &[u8],
        path: Vec<u8>,
        st: &rustix::fs::Stat,
        units: &crossbeam_channel::Sender<Unit>,
    ) -> Result<()> {
        let size = st.st_size as u64;
        self.seen.insert(path.clone());
        self.stats.files += 1;
        self.stats.logical_bytes += size;
        let meta = sys::meta_of(st);
        let link = (st.st_nlink > 1).then_some(st.st_ino);
        if self.kind != Kind::Full {
            if let Some((bm, Node::File { size: bsize, .. })) = self.base_entry(&path) {
                if bm.ino == meta.ino
                    && bm.ctime_ns == meta.ctime_ns
                    && bm.mtime == meta.mtime
                    && *bsize == size
                {
                    return Ok(());
                }
            }
        }
        if let Some(ino) = link {
            if let Some(&job) = self.link_jobs.get(&ino) {
                let mut meta = meta;
                meta.xattrs = self.jobs[job].meta.xattrs.clone();
                meta.ctime_ns = self.jobs[job].meta.ctime_ns;
                self.followers.push((path, meta, job));
                return Ok(());
            }
        }
        let fd = match sys::open_file_for_read_at(dfd, name) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                self.seen.remove(&path);
                self.stats.files -= 1;
                self.stats.logical_bytes -= size;
                return Ok(());
            }
            Err(e) => return Err(Error::io("open", display_path(&path), e.into())),
        };
        // Metadata from the open file: it is what we read.
        let st = rustix::fs::fstat(&fd).ctx("stat", display_path(&path))?;
        if file_type(st.st_mode) != libc::S_IFREG {
            return Err(Error::InvalidInput(format!(
                "{} was replaced while being captured",
                display_path(&path)
            )));
        }
        self.stats.logical_bytes = self.stats.logical_bytes - size + st.st_size as u64;
        let size = st.st_size as u64;
        let mut meta = sys::meta_of(&st);
        meta.xattrs = sys::read_xattrs(&fd).ctx("read xattrs", display_path(&path))?;
        if meta.ctime_ns >= self.racy_after {
            meta.ctime_ns = RACY_CTIME;
        }
        let job = self.jobs.len();
        let nblocks = size.div_ceil(self.bs);
        let nunits = nblocks.div_ceil(UNIT_BLOCKS);
        self.jobs.push(PendingFile {
            path: path.clone(),
            meta: meta.clone(),
            size,
            link,
            ids: vec![ChunkId([0; 32]); nblocks as usize],
            unstable: false,
        });
        if let Some(ino) = link {
            self.link_jobs.insert(ino, job);
        }
        if nunits == 0 {
            return Ok(());
        }
        let fj = Arc::new(FileJob {
            file: File::from(fd),
            size,
            mtime: meta.mtime,
            path,
            remaining: AtomicUsize::new(nunits as usize),
            unstable: AtomicBool::new(false),
        });
        for u in 0..nunits {
            let first = u * UNIT_BLOCKS;
            let unit = Unit {
                job,
                file: fj.clone(),
                first,
                count: UNIT_BLOCKS.min(nblocks - first),
            };
            if units.send(unit).is_err() {
                return Err(Error::Poisoned("capture workers stopped".into()));
            }
        }
        Ok(())
    }

    fn accept(&mut self, d: UnitDone) {
        let job = &mut self.jobs[d.job];
        let first = d.first as usize;
        job.ids[first..first + d.ids.len()].copy_from_slice(&d.ids);
        if d.finished_unstable == Some(true) {
            job.unstable = true;
        }
    }

    fn finish(
        mut self,
        base: Option<&Tree>,
        kind: Kind,
        block_size: u32,
    ) -> Result<(Manifest, Stats, Vec<String>)> {
        let mut entries = std::mem::take(&mut self.entries);
        let mut files: Vec<(Vec<u8>, Meta, usize)> = Vec::new();
        for (i, j) in self.jobs.iter().enumerate() {
            files.push((j.path.clone(), j.meta.clone(), i));
            if j.unstable {
                self.stats.unstable_files += 1;
                self.warnings.push(format!(
                    "{}: changed while being read; this snapshot may hold a mix of old and new content",
                    display_path(&j.path)
                ));
            }
        }
        let owners = files.len();
        files.append(&mut self.followers);
        for (n, (path, meta, job)) in files.into_iter().enumerate() {
            // Hard links share their first path's blocks: count them once.
            let counted = n < owners;
            let j = &self.jobs[job];
            let base_blocks = match base.and_then(|t| t.get(&path)) {
                Some((_, n @ Node::File { .. })) if kind != Kind::Full => Some(Tree::blocks_of(n)),
                _ => None,
            };
            let blocks = match base_blocks {
                Some(old) => {
                    let changes: Vec<(u64, ChunkId)> = j
                        .ids
                        .iter()
                        .enumerate()
                        .filter(|(i, id)| old.get(*i) != Some(id))
                        .map(|(i, id)| (i as u64, *id))
                        .collect();
                    if counted {
                        self.stats.changed_blocks += changes.len() as u64;
                    }
                    Blocks::Patch(changes)
                }
                None => {
                    if counted {
                        self.stats.changed_blocks += j.ids.len() as u64;
                    }
                    Blocks::Full(j.ids.clone())
                }
            };
            entries.push(Entry {
                path,
                meta,
                node: Node::File {
                    size: j.size,
                    blocks,
                    link: j.link,
                },
            });
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let removed = match (base, kind != Kind::Full) {
            (Some(t), true) => t.topmost_absent(|p| self.seen.contains(p)),
            _ => Vec::new(),
        };
        Ok((
            Manifest {
                format: MANIFEST_FORMAT,
                block_size,
                removed,
                entries,
            },
            self.stats,
            self.warnings,
        ))
    }
}
