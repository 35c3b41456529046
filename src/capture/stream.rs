//! The repository's first snapshot, stored one directory at a time.
//!
//! A live mount's first snapshot has no base: every file is read. Listing
//! the whole tree first and reading it after held the listing (~700 B
//! per file: 704 MiB at 10^6 files) and ran the two one after the other.
//! Here the backing directory is walked depth first; each file is read
//! and stored as its directory is listed (on the worker pool, a number of
//! files opened and announced ahead), and each directory is written as
//! an object (`snapshot::dirs`) as soon as its last file and subdirectory
//! are: memory follows the directories on the walk's path and the files
//! in flight, not the tree.
//!
//! This runs before the cut, while writers go on. What it stores is the
//! base that the first snapshot's cut corrects, as an incremental
//! corrects the latest snapshot: every change through the mount meanwhile
//! is in the journal, so the capture after the cut reads again whatever
//! was written during the walk (a block read while it was written is one
//! the journal names). Two cases are handed to the cut explicitly (the
//! entry is left out and its name noted for the cut, which then reads
//! it, or holds it back):
//!
//! - a file open on the checkpoint fast path when it is met or when its
//!   read ends: its bytes may be half written, and the cut keeps the last
//!   closed version of such a file, which must never be a torn read;
//! - an entry that vanished or changed between its listing and its read.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fs::{Mode, OFlags};

use super::blocks::{self, Source};
use crate::error::{Error, Result};
use crate::repo::ChunkWriter;
use crate::snapshot::dirs::{self, DNode, DirEntry, DirRef, Objects, Root, TREE_MANIFEST_FORMAT};
use crate::snapshot::manifest::{display_path, Meta, Node};
use crate::snapshot::unchanged::RACY_CTIME;
use crate::track::cut::{listed_entry, state_of};
use crate::track::FileKey;
use crate::util::walk::{read_names, WalkEntry};
use crate::util::{pool, sys};

/// Files opened and announced (`fadvise(WILLNEED)`) ahead of the one
/// handed to the workers (as the live capture does).
const READ_AHEAD_FILES: usize = 64;

/// Asks the next cut to look at entry `name` of directory `dir`,
/// reachable through `dir_fd` (see [`StreamRequest::recheck`]).
pub type Recheck<'a> = dyn Fn(&FileKey, &[u8], Arc<OwnedFd>) + Sync + 'a;

pub struct StreamRequest<'a> {
    /// The backing directory (an `O_PATH` descriptor).
    pub root: &'a OwnedFd,
    /// The repository's directory when it is inside the backing one.
    pub hidden: Option<FileKey>,
    pub writer: &'a ChunkWriter<'a>,
    /// Where directory objects and segments go (through `writer`).
    pub objects: &'a (dyn Objects + Sync),
    pub block_size: u32,
    pub threads: usize,
    /// Entries changed at or after this time are recorded racily clean
    /// (see `snapshot::unchanged`).
    pub racy_after: Option<i64>,
    /// Is this file open on the checkpoint fast path now?
    pub held: &'a (dyn Fn(&FileKey) -> bool + Sync),
    /// Have the cut look at entry `name` of directory `dir`.
    pub recheck: &'a Recheck<'a>,
}

/// What the walk stored.
#[derive(Debug)]
pub struct Streamed {
    pub root: Root,
    /// Block references in the tree (each name of a hard link counted).
    pub blocks: u64,
    pub bytes_read: u64,
    /// The most directory entries held at once.
    pub peak_entries: usize,
    /// Entries left to the cut (see the module's doc).
    pub rechecked: u64,
}

/// A directory being assembled.
struct Pending {
    /// Its slot in its parent and its entry there (`None`: the root).
    parent: Option<(usize, usize)>,
    key: FileKey,
    fd: Arc<OwnedFd>,
    /// Sorted by name; `None`: left out.
    entries: Vec<Option<DirEntry>>,
    /// Entries not complete yet, plus one while it is being listed.
    waiting: usize,
}

/// A file being read.
struct InFlight {
    dir: usize,
    idx: usize,
    key: FileKey,
    list: blocks::Assembly,
}

/// The directories and files in flight, shared by the walk (which adds
/// them) and the sink of stored blocks (which completes them).
struct Assembly<'a> {
    req: &'a StreamRequest<'a>,
    dirs: HashMap<usize, Pending>,
    files: HashMap<usize, InFlight>,
    root: Option<DirRef>,
    blocks: u64,
    held_entries: usize,
    peak_entries: usize,
    rechecked: u64,
    error: Option<Error>,
}

impl Assembly<'_> {
    fn add_dir(&mut self, slot: usize, d: Pending) {
        self.held_entries += d.entries.len();
        self.peak_entries = self.peak_entries.max(self.held_entries);
        self.dirs.insert(slot, d);
    }

    /// One entry of directory `dir` is complete (or left out): when it
    /// was the last, store the directory, and so up the tree.
    fn done(&mut self, mut dir: usize) -> Result<()> {
        loop {
            let Some(d) = self.dirs.get_mut(&dir) else {
                return Err(Error::Poisoned(format!(
                    "the first snapshot's walk lost directory slot {dir}"
                )));
            };
            d.waiting = d.waiting.saturating_sub(1);
            if d.waiting > 0 {
                return Ok(());
            }
            let Some(d) = self.dirs.remove(&dir) else {
                return Ok(());
            };
            self.held_entries -= d.entries.len();
            let r = dirs::put_dir(self.req.objects, d.entries.into_iter().flatten().collect())?;
            match d.parent {
                None => {
                    self.root = Some(r);
                    return Ok(());
                }
                Some((p, idx)) => {
                    if let Some(Some(e)) =
                        self.dirs.get_mut(&p).and_then(|pd| pd.entries.get_mut(idx))
                    {
                        e.node = DNode::Dir(r);
                    }
                    dir = p;
                }
            }
        }
    }

    /// Leave entry `idx` of `dir` out, for the cut to look at.
    fn leave_out(&mut self, dir: usize, idx: usize) -> Result<()> {
        if let Some(d) = self.dirs.get_mut(&dir) {
            if let Some(e) = d.entries.get_mut(idx).and_then(Option::take) {
                (self.req.recheck)(&d.key, &e.name, d.fd.clone());
                self.rechecked += 1;
            }
        }
        self.done(dir)
    }

    /// A unit of file `s.tag` is stored.
    fn stored(&mut self, s: blocks::Stored) -> Result<()> {
        let Some(f) = self.files.get_mut(&s.tag) else {
            return Err(Error::Poisoned(format!(
                "the first snapshot's walk got blocks of unknown file {}",
                s.tag
            )));
        };
        f.list.add(&s.ids);
        if !f.list.done() {
            return Ok(());
        }
        let Some(f) = self.files.remove(&s.tag) else {
            return Ok(());
        };
        if (self.req.held)(&f.key) {
            // Opened on the fast path while it was read.
            return self.leave_out(f.dir, f.idx);
        }
        if let Some(Some(e)) = self
            .dirs
            .get_mut(&f.dir)
            .and_then(|d| d.entries.get_mut(f.idx))
        {
            if let DNode::File { size, link, .. } = e.node {
                self.blocks += f.list.count() as u64;
                let list = f.list.finish()?;
                e.node = dirs::file_dnode(self.req.objects, size, &list, link)?;
            }
        }
        self.done(f.dir)
    }
}

/// A file read for the walk.
struct StreamFile {
    file: File,
    size: u64,
    path: Vec<u8>,
}

impl Source for StreamFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn file(&self) -> Option<&File> {
        Some(&self.file)
    }

    fn read(&self, _b: u64, off: u64, buf: &mut Vec<u8>) -> Result<()> {
        // A file that shrank reads as zeros past its end: it changed, so
        // the journal (through the mount) or the next mount-time check
        // (its ctime) has it read again.
        crate::util::bytes::read_at_full(&self.file, off, buf)
            .map_err(|e| Error::io("read for snapshot", display_path(&self.path), e))?;
        Ok(())
    }
}

/// A directory still to walk: the root, or a subdirectory met in its
/// parent's listing (opened when its turn comes: a directory of many
/// subdirectories does not hold a descriptor for each).
enum Todo {
    Root(OwnedFd),
    Sub {
        parent_fd: Arc<OwnedFd>,
        name: Vec<u8>,
        path: Vec<u8>,
        ino: u64,
        slot: usize,
        idx: usize,
    },
}

/// Walk the backing directory and store it (see the module's doc).
pub fn store_first(req: &StreamRequest<'_>) -> Result<Streamed> {
    let bs = u64::from(req.block_size.max(1));
    let io = |op: &'static str, path: &[u8], e: rustix::io::Errno| {
        Error::io(op, display_path(path), e.into())
    };
    let root_dir = sys::open_dir_at(req.root, b".").map_err(|e| io("open directory", b"", e))?;
    let mut root_meta = state_of(req.root, None)?.meta;
    racy(req, &mut root_meta);
    let asm = Mutex::new(Assembly {
        req,
        dirs: HashMap::new(),
        files: HashMap::new(),
        root: None,
        blocks: 0,
        held_entries: 0,
        peak_entries: 0,
        rechecked: 0,
        error: None,
    });
    let mut bytes_read = 0u64;
    let chunker = req.writer.chunker(bs);
    let (fed, _) = blocks::store_into(
        req.writer,
        req.threads,
        bs,
        &indicatif::ProgressBar::hidden(),
        |feed| -> Result<()> {
            let mut stack = vec![Todo::Root(root_dir)];
            let mut ahead: VecDeque<(usize, Arc<StreamFile>)> =
                VecDeque::with_capacity(READ_AHEAD_FILES + 1);
            let mut every: Vec<u64> = Vec::new();
            let mut send = |(tag, f): (usize, Arc<StreamFile>)| -> Result<()> {
                if chunker.by_content(f.size) {
                    return blocks::feed_whole(feed, &f, tag, &chunker, bs);
                }
                every.clear();
                every.extend(0..f.size.div_ceil(bs));
                if blocks::feed_blocks(feed, &f, tag, &every) {
                    Ok(())
                } else {
                    Err(Error::Poisoned("capture workers stopped".into()))
                }
            };
            let mut next_slot = 0usize;
            let mut next_tag = 0usize;
            while let Some(todo) = stack.pop() {
                if asm.lock().error.is_some() {
                    break;
                }
                let (dfd, parent, path) = match todo {
                    Todo::Root(fd) => (fd, None, Vec::new()),
                    Todo::Sub {
                        parent_fd,
                        name,
                        path,
                        ino,
                        slot,
                        idx,
                    } => {
                        let fd = sys::open_dir_at(&*parent_fd, &name).ok().filter(|fd| {
                            rustix::fs::fstat(fd).is_ok_and(|st| {
                                st.st_ino == ino && sys::file_type(st.st_mode) == libc::S_IFDIR
                            })
                        });
                        match fd {
                            Some(fd) => (fd, Some((slot, idx)), path),
                            None => {
                                // Gone or replaced since its parent was
                                // listed: the cut looks at it.
                                asm.lock().leave_out(slot, idx)?;
                                continue;
                            }
                        }
                    }
                };
                let st = rustix::fs::fstat(&dfd).map_err(|e| io("stat", &path, e))?;
                let key = FileKey::of(&st);
                let names = read_names(&dfd, &path)?;
                let mut entries: Vec<Option<DirEntry>> = Vec::with_capacity(names.len());
                // (index, name, key, size) of files to read.
                let mut files: Vec<(usize, Vec<u8>, FileKey, u64)> = Vec::new();
                let mut subdirs: Vec<(usize, Vec<u8>, u64)> = Vec::new();
                for name in names {
                    let epath = dirs::join(&path, &name);
                    let est = match sys::lstat_at(&dfd, &name) {
                        Ok(st) => st,
                        Err(rustix::io::Errno::NOENT) => continue,
                        Err(e) => return Err(io("stat", &epath, e)),
                    };
                    let we = WalkEntry {
                        dir: &dfd,
                        name: &name,
                        path: &epath,
                        stat: &est,
                        dir_fd: None,
                    };
                    let Some((mut meta, node)) = listed_entry(&we, req.hidden)? else {
                        continue;
                    };
                    racy(req, &mut meta);
                    let idx = entries.len();
                    let node = match node {
                        Node::Dir => {
                            subdirs.push((idx, name.clone(), est.st_ino));
                            DNode::Dir(DirRef {
                                parts: Vec::new(),
                                len: 0,
                                entries: 0,
                                bytes: 0,
                            })
                        }
                        Node::File { size, link, .. } => {
                            if size > 0 {
                                files.push((idx, name.clone(), FileKey::of(&est), size));
                            }
                            DNode::File {
                                size,
                                blocks: Vec::new(),
                                segments: Vec::new(),
                                link,
                                lens: None,
                            }
                        }
                        Node::Symlink { target } => DNode::Symlink { target },
                        Node::Special { rdev } => DNode::Special { rdev },
                    };
                    entries.push(Some(DirEntry { name, meta, node }));
                }
                let slot = next_slot;
                next_slot += 1;
                let dfd = Arc::new(dfd);
                asm.lock().add_dir(
                    slot,
                    Pending {
                        parent,
                        key,
                        fd: dfd.clone(),
                        entries,
                        waiting: files.len() + subdirs.len() + 1,
                    },
                );
                for (idx, name, fkey, size) in files {
                    let file = if (req.held)(&fkey) {
                        None
                    } else {
                        rustix::fs::openat(
                            &*dfd,
                            name.as_slice(),
                            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                        .ok()
                        .and_then(|fd| super::live::reopen(&fd, fkey.ino))
                    };
                    let Some(file) = file else {
                        asm.lock().leave_out(slot, idx)?;
                        continue;
                    };
                    let tag = next_tag;
                    next_tag += 1;
                    asm.lock().files.insert(
                        tag,
                        InFlight {
                            dir: slot,
                            idx,
                            key: fkey,
                            list: blocks::Assembly::new(size, bs, chunker.by_content(size)),
                        },
                    );
                    let len = (pool::UNIT_BLOCKS * bs).min(size);
                    let _ = rustix::fs::fadvise(
                        &file,
                        0,
                        std::num::NonZeroU64::new(len),
                        rustix::fs::Advice::WillNeed,
                    );
                    ahead.push_back((
                        tag,
                        Arc::new(StreamFile {
                            file,
                            size,
                            path: dirs::join(&path, &name),
                        }),
                    ));
                    if ahead.len() > READ_AHEAD_FILES {
                        if let Some(next) = ahead.pop_front() {
                            send(next)?;
                        }
                    }
                }
                // Subdirectories in name order (the stack pops the last).
                for (idx, name, ino) in subdirs.into_iter().rev() {
                    stack.push(Todo::Sub {
                        parent_fd: dfd.clone(),
                        path: dirs::join(&path, &name),
                        name,
                        ino,
                        slot,
                        idx,
                    });
                }
                // Listed: it completes with its last entry.
                asm.lock().done(slot)?;
            }
            while let Some(next) = ahead.pop_front() {
                send(next)?;
            }
            Ok(())
        },
        |r: Result<blocks::Stored>| {
            let mut a = asm.lock();
            match r {
                Ok(s) => {
                    bytes_read += s.bytes;
                    if a.error.is_none() {
                        if let Err(e) = a.stored(s) {
                            a.error = Some(e);
                        }
                    }
                }
                Err(e) => {
                    a.error.get_or_insert(e);
                }
            }
        },
    );
    let a = asm.into_inner();
    if let Some(e) = a.error {
        return Err(e);
    }
    fed?;
    let Some(dir) = a.root else {
        return Err(Error::Poisoned(format!(
            "the first snapshot's walk ended with {} directories and {} files incomplete",
            a.dirs.len(),
            a.files.len()
        )));
    };
    Ok(Streamed {
        root: Root {
            format: TREE_MANIFEST_FORMAT,
            block_size: req.block_size,
            meta: Some(root_meta),
            dir,
        },
        blocks: a.blocks,
        bytes_read,
        peak_entries: a.peak_entries,
        rechecked: a.rechecked,
    })
}

/// Record an entry changed too recently to be trusted by its stat as
/// racily clean (as `capture::live` does for the entries it changes).
fn racy(req: &StreamRequest<'_>, meta: &mut Meta) {
    if req.racy_after.is_some_and(|a| meta.ctime_ns >= a) {
        meta.ctime_ns = RACY_CTIME;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::Repository;
    use std::os::unix::fs::MetadataExt;

    fn dir_of(repo: &Repository, r: &DirRef) -> Vec<DirEntry> {
        dirs::load_dir(repo, r, 64 << 10).unwrap().entries
    }

    fn sub(repo: &Repository, entries: &[DirEntry], name: &str) -> Vec<DirEntry> {
        let e = entries.iter().find(|e| e.name == name.as_bytes()).unwrap();
        let DNode::Dir(r) = &e.node else {
            panic!("{name} is not a directory")
        };
        dir_of(repo, r)
    }

    /// The walk stores every kind of entry, directory by directory, and
    /// leaves a file open on the fast path to the cut (noted, not read).
    #[test]
    fn stores_the_tree_and_leaves_held_files_to_the_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::create_dir_all(src.join("b/c")).unwrap();
        std::fs::write(src.join("a/x"), b"hello").unwrap();
        std::fs::write(src.join("a/held.ckpt"), vec![1u8; 100_000]).unwrap();
        let y: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(src.join("b/c/y"), &y).unwrap();
        std::fs::write(src.join("e"), b"").unwrap();
        std::os::unix::fs::symlink("a/x", src.join("s")).unwrap();
        let held_ino = std::fs::metadata(src.join("a/held.ckpt")).unwrap().ino();
        let a_ino = std::fs::metadata(src.join("a")).unwrap().ino();
        let root = tmp.path().join("repo");
        Repository::init(&root, 64 << 10, 3).unwrap();
        let repo = Repository::open(&root).unwrap();
        let writer = repo.writer().unwrap();
        let store = repo.tree_store(&writer);
        let noted = Mutex::new(Vec::new());
        let held = |k: &FileKey| k.ino == held_ino;
        let recheck =
            |d: &FileKey, name: &[u8], _fd: Arc<OwnedFd>| noted.lock().push((d.ino, name.to_vec()));
        let root_fd = sys::open_dir_path(&src).unwrap();
        let s = store_first(&StreamRequest {
            root: &root_fd,
            hidden: None,
            writer: &writer,
            objects: &store,
            block_size: 64 << 10,
            threads: 2,
            racy_after: None,
            held: &held,
            recheck: &recheck,
        })
        .unwrap();
        writer.commit().unwrap();
        assert_eq!(*noted.lock(), vec![(a_ino, b"held.ckpt".to_vec())]);
        assert_eq!(s.rechecked, 1);
        // x: 1 block, y: 4 blocks of 64 KiB; held.ckpt was not read.
        assert_eq!(s.blocks, 5);
        assert_eq!(s.bytes_read, 5 + 200_000);
        // a, a/x, b, b/c, b/c/y, e, s.
        assert_eq!(s.root.dir.entries, 7);
        assert_eq!(s.root.dir.bytes, 5 + 200_000);
        let top = dir_of(&repo, &s.root.dir);
        let names: Vec<&[u8]> = top.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, [&b"a"[..], b"b", b"e", b"s"]);
        let a = sub(&repo, &top, "a");
        assert_eq!(a.len(), 1, "the held file is left to the cut");
        let DNode::File { blocks, .. } = &a[0].node else {
            panic!()
        };
        assert_eq!(repo.read_blob(&blocks[0]).unwrap(), b"hello");
        let c = sub(&repo, &sub(&repo, &top, "b"), "c");
        let DNode::File { size, blocks, .. } = &c[0].node else {
            panic!()
        };
        assert_eq!(*size, 200_000);
        let mut got = Vec::new();
        for id in blocks {
            got.extend(repo.read_blob(id).unwrap());
        }
        assert_eq!(got, y);
        assert!(matches!(
            &top[3].node,
            DNode::Symlink { target } if target == b"a/x"
        ));
        // Never more entries held than were listed (the held file's too).
        assert!(s.peak_entries <= 8, "{}", s.peak_entries);
    }
}
