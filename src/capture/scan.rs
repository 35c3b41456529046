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
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::base::{base_for, effective_kind};
use super::blocks::{self, Source};
use super::manifest::Builder;
use crate::error::{Error, IoContext, Result};
use crate::repo::{ChunkWriter, Repository, SnapshotDraft};
use crate::snapshot::manifest::{
    display_path, meta_of, mtime_of, Blocks, Entry, Manifest, Meta, Node,
};
use crate::snapshot::unchanged::{recorded_ctime, unchanged_by_stat};
use crate::snapshot::{Kind, SnapshotRecord, Stats, Tree};
use crate::util::sys::{self, file_type};
use crate::util::walk::walk;
use crate::util::{pool, time};

#[derive(Clone, Debug)]
pub struct ScanOptions {
    pub kind: Kind,
    pub label: Option<String>,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// The time the record states, instead of the capture's start
    /// (imports and simulations; the capture itself still compares file
    /// times with the real clock).
    pub recorded_time_ns: Option<i64>,
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

impl Source for FileJob {
    fn size(&self) -> u64 {
        self.size
    }

    fn file(&self) -> Option<&File> {
        Some(&self.file)
    }

    /// Read whole on the feeding thread: did it change while read?
    fn finished(&self) -> Option<bool> {
        self.remaining.store(1, Ordering::Release);
        self.after_unit()
    }

    fn read(&self, _b: u64, off: u64, buf: &mut Vec<u8>) -> Result<()> {
        let got = crate::util::bytes::read_at_full(&self.file, off, buf)
            .map_err(|e| Error::io("read", display_path(&self.path), e))?;
        if got < buf.len() {
            // The file shrank while we read it (the rest is zeros).
            self.unstable.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// After the file's last unit: did it change while it was read?
    fn after_unit(&self) -> Option<bool> {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return None;
        }
        let changed = match rustix::fs::fstat(&self.file) {
            Ok(st) => st.st_size as u64 != self.size || mtime_of(&st) != self.mtime,
            Err(_) => true,
        };
        Some(changed || self.unstable.load(Ordering::Relaxed))
    }
}

type Feeder<'f> = pool::Feeder<'f, blocks::Unit<FileJob>>;

/// Take a snapshot of `source` by scanning it.
pub fn snapshot_dir(repo: &Repository, source: &Path, opts: &ScanOptions) -> Result<ScanResult> {
    let time_ns = time::now_ns();
    // From choosing the base to committing: forget and gc wait for us.
    let _capture = repo.capture_guard();
    let all = repo.snapshots()?;
    let kind = effective_kind(&all, opts.kind, repo.config.block_size);
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
    let threads = pool::threads_or_default(opts.threads);
    let bs = repo.config.block_size as u64;
    let repo_id = repo.dir().stat().ok().map(|st| (st.st_dev, st.st_ino));
    let margin = crate::snapshot::unchanged::racy_margin_ns(&root_fd);
    let mut w = Walk::new(base.tree.as_ref(), kind, repo_id, bs, time_ns, margin);
    w.chunker = Some(writer.chunker(bs));
    let pb = crate::util::progress::bytes("scan: read", None, true);
    let (walked, stored) = blocks::store(writer, threads, bs, &pb, |feed| w.walk(root_fd, feed));
    pb.finish_and_clear();
    // Every unit is collected, even after an error.
    let mut first_err = walked.err();
    for r in stored {
        match r {
            Ok(d) => w.accept(d),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let walk = w;

    let (manifest, mut stats, warnings) =
        walk.finish(base.tree.as_ref(), kind, repo.config.block_size)?;
    stats.changed_entries = manifest.entries.len() as u64;
    stats.removed_entries = manifest.removed.len() as u64;
    let (parent, full) = match &base.record {
        None => (None, None),
        Some(b) => (Some(b.id), Some(b.full)),
    };
    // The new tree: the base with the changes applied.
    let mut tree = base.tree.unwrap_or_default();
    tree.apply(&manifest)?;
    drop(manifest);
    let record = repo.commit_snapshot(
        writer,
        &tree,
        None,
        SnapshotDraft {
            synthetic: false,
            kind,
            parent,
            full,
            time_ns: opts.recorded_time_ns.unwrap_or(time_ns),
            label: opts.label.clone(),
            source: source.display().to_string(),
            stats,
        },
    )?;
    writer.close()?;
    Ok((record, warnings))
}

/// A regular file of the new manifest whose blocks are being read.
struct PendingFile {
    path: Vec<u8>,
    meta: Meta,
    size: u64,
    link: Option<u64>,
    list: Option<blocks::Assembly>,
    blocks: Blocks,
    unstable: bool,
}

struct Walk<'b> {
    base: Option<&'b Tree>,
    kind: Kind,
    repo_id: Option<(u64, u64)>,
    bs: u64,
    /// When the capture started (racily clean entries are near it).
    started_ns: i64,
    /// The source filesystem's racy margin (snapshot::unchanged).
    racy_margin_ns: i64,
    seen: HashSet<Vec<u8>>,
    entries: Vec<Entry>,
    jobs: Vec<PendingFile>,
    /// Hard-link groups already being read: inode -> job.
    link_jobs: HashMap<u64, usize>,
    /// How files read whole are cut (fixed blocks without one).
    chunker: Option<crate::chunking::Chunker>,
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
        started_ns: i64,
        racy_margin_ns: i64,
    ) -> Self {
        Walk {
            base,
            kind,
            repo_id,
            bs,
            started_ns,
            racy_margin_ns,
            seen: HashSet::new(),
            entries: Vec::new(),
            jobs: Vec::new(),
            link_jobs: HashMap::new(),
            chunker: None,
            followers: Vec::new(),
            stats: Stats::default(),
            warnings: Vec::new(),
        }
    }

    fn base_entry(&self, path: &[u8]) -> Option<&'b (Meta, Node)> {
        self.base.and_then(|t| t.get(path))
    }

    fn walk(&mut self, root: OwnedFd, units: &Feeder<'_>) -> Result<()> {
        let st = rustix::fs::fstat(&root).ctx("stat", "source")?;
        let mut meta = meta_of(&st);
        meta.xattrs = sys::read_xattrs(&root).ctx("read xattrs", "/")?;
        self.add_simple(Vec::new(), meta, Node::Dir);
        self.stats.dirs += 1;
        walk(root, |e| {
            let path = e.path.to_vec();
            let st = e.stat;
            let mut meta = meta_of(st);
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
                    // Its xattrs (security.*, trusted.*), read through a
                    // descriptor of this very symlink.
                    if let Ok(fd) = rustix::fs::openat(
                        e.dir,
                        e.name,
                        rustix::fs::OFlags::PATH
                            | rustix::fs::OFlags::NOFOLLOW
                            | rustix::fs::OFlags::CLOEXEC,
                        rustix::fs::Mode::empty(),
                    ) {
                        let same = rustix::fs::fstat(&fd)
                            .is_ok_and(|s| s.st_ino == st.st_ino && s.st_dev == st.st_dev);
                        if same {
                            meta.xattrs = sys::read_xattrs_opath(&fd)
                                .ctx("read xattrs", display_path(&path))?;
                        }
                    }
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
        units: &Feeder<'_>,
    ) -> Result<()> {
        let size = st.st_size as u64;
        self.seen.insert(path.clone());
        self.stats.files += 1;
        self.stats.logical_bytes += size;
        let meta = meta_of(st);
        let link = (st.st_nlink > 1).then_some(st.st_ino);
        if self.kind != Kind::Full {
            if let Some(b @ (_, Node::File { .. })) = self.base_entry(&path) {
                if unchanged_by_stat(b, st) {
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
        let mut meta = meta_of(&st);
        meta.xattrs = sys::read_xattrs(&fd).ctx("read xattrs", display_path(&path))?;
        meta.ctime_ns = recorded_ctime(meta.ctime_ns, self.started_ns, self.racy_margin_ns);
        let job = self.jobs.len();
        let nblocks = size.div_ceil(self.bs);
        let nunits = pool::units(nblocks).count();
        // A file of more than a block is cut by content (it is read whole).
        let content = self.chunker.as_ref().is_some_and(|c| c.by_content(size));
        self.jobs.push(PendingFile {
            path: path.clone(),
            meta: meta.clone(),
            size,
            link,
            list: Some(blocks::Assembly::new(size, self.bs, content)),
            blocks: Blocks::Full(Vec::new()),
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
            remaining: AtomicUsize::new(nunits),
            unstable: AtomicBool::new(false),
        });
        if let (true, Some(c)) = (content, &self.chunker) {
            return blocks::feed_whole(units, &fj, job, c, self.bs);
        }
        let all: Vec<u64> = (0..nblocks).collect();
        if !blocks::feed_blocks(units, &fj, job, &all) {
            return Err(Error::Poisoned("capture workers stopped".into()));
        }
        Ok(())
    }

    fn accept(&mut self, d: blocks::Stored) {
        let job = &mut self.jobs[d.tag];
        if let Some(l) = job.list.as_mut() {
            l.add(&d.ids);
        }
        if d.after == Some(true) {
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
        for j in &mut self.jobs {
            if let Some(l) = j.list.take() {
                j.blocks = l.finish()?;
            }
        }
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
        if base.is_some() {
            self.stats.rewritten_bytes.get_or_insert(0);
            self.stats.shared_bytes.get_or_insert(0);
        }
        let mut m =
            Builder::new(if kind == Kind::Full { None } else { base }).block_size(block_size);
        for e in entries.drain(..) {
            m.changed(e.path, e.meta, e.node, true);
        }
        for (n, (path, meta, job)) in files.into_iter().enumerate() {
            // Hard links share their first path's blocks: count them once.
            let j = &self.jobs[job];
            let node = Node::File {
                size: j.size,
                blocks: j.blocks.clone(),
                link: j.link,
            };
            if let (true, Some((_, old))) = (n < owners, base.and_then(|t| t.get(&path))) {
                self.stats.add_sharing(old, &node, block_size);
            }
            m.changed(path, meta, node, n < owners);
        }
        m.removed_unless(|p| self.seen.contains(p));
        let (manifest, changed) = m.finish(block_size);
        self.stats.changed_blocks += changed;
        Ok((manifest, self.stats, self.warnings))
    }
}
