//! The cut: the instant a snapshot describes.
//!
//! With the gate held exclusively (no change is in flight,
//! none starts), the cut freezes the journal's epoch, looks at the entries
//! of directories whose entries changed (by name, through descriptors kept
//! for them), stats every changed object, and registers copy-before-write
//! for the blocks the snapshot will read. It walks nothing else: its cost
//! grows with the number of changes, not with the size of the dataset.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};

use super::cow::{Cow, CowSet, Need};
use super::gate::Gate;
use super::journal::{FileDirty, FileKey, Journal};
use super::pins::DirPins;
use crate::error::{Error, Result};
use crate::snapshot::dirs::join;
use crate::snapshot::manifest::{Meta, Node};
use crate::snapshot::SNAPSHOTS_DIR;
use crate::util::{sys, time};

/// How the cut reaches the live objects the filesystem knows (so that it
/// can look at a changed object even when no path leads to it any more).
pub trait Objects: Send + Sync {
    /// The backing root: its key and an `O_PATH` descriptor.
    fn root(&self) -> std::io::Result<(FileKey, Arc<OwnedFd>)>;
    /// An `O_PATH` descriptor of a backing object the filesystem holds.
    fn find(&self, key: &FileKey) -> Option<Arc<OwnedFd>>;
}

/// An object as it was at the cut.
#[derive(Clone, Debug)]
pub struct ObjState {
    pub key: FileKey,
    pub meta: Meta,
    pub kind: ObjKind,
    pub nlink: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjKind {
    Dir,
    File { size: u64 },
    Symlink { target: Vec<u8> },
    Special { rdev: u64 },
}

/// A directory entry as it was at the cut (`child: None`: absent).
#[derive(Clone, Debug)]
pub struct Edge {
    /// Path of the entry at the cut.
    pub path: Vec<u8>,
    /// The directory holding the entry.
    pub dir: FileKey,
    pub child: Option<ObjState>,
    /// The journal says the object was created since the base: nothing
    /// of it comes from the base, even if the base knows its inode
    /// number (file systems reuse the numbers of removed objects).
    pub new: bool,
}

pub struct CutInfo {
    pub epoch: u64,
    pub time_ns: i64,
    pub frozen: HashMap<FileKey, FileDirty>,
    /// Entries that changed, shallow paths first.
    pub edges: Vec<Edge>,
    /// The state at the cut of every changed object still present.
    pub states: HashMap<FileKey, ObjState>,
    /// Blocks to read per file (what copy-before-write protects).
    pub needs: HashMap<FileKey, (Need, u64)>,
    pub cow: Arc<CowSet>,
    /// Pins taken with the frozen epoch (given back if the snapshot fails).
    pub pins: HashMap<FileKey, Arc<OwnedFd>>,
    /// How long the gate was held.
    pub held: Duration,
    /// Files open on the checkpoint fast path at the cut: the snapshot
    /// holds their last closed version (the base's), never their
    /// current bytes, and their changes wait for the next cut.
    pub held_back: HashSet<FileKey>,
    /// A kept snapshot's cut ([`kept_cut`]): the ids of the kept files it
    /// adds. It took nothing from the journal (its commit drops nothing).
    pub kept: Option<Vec<u64>>,
}

/// Files open in some mode, and how many times.
pub type OpenCount = parking_lot::Mutex<HashMap<FileKey, u32>>;

/// What the cut asks of the latest snapshot's tree (its base). Answers
/// are owned: an implementation may read directories on demand.
pub trait BaseLookup {
    /// No base at all: the cut lists everything.
    fn is_empty(&self) -> bool;
    /// The first path of inode `ino`.
    fn first_path(&self, ino: u64) -> Option<Vec<u8>>;
    /// The inode number of the entry at `path`.
    fn ino_at(&self, path: &[u8]) -> Option<u64>;
    /// Whether `path` is a directory.
    fn is_dir(&self, path: &[u8]) -> bool;
    /// The names in directory `dir`.
    fn child_names(&self, dir: &[u8]) -> Vec<Vec<u8>>;
    /// Inode `ino` at its first path, if it is a file there: its
    /// metadata, size, and whether it is in a hard-link group.
    fn file_of(&self, ino: u64) -> Option<(Meta, u64, bool)>;
    /// Whether inode `ino` is a directory at its first path.
    fn ino_is_dir(&self, ino: u64) -> bool;
}

fn io(op: &'static str, e: rustix::io::Errno) -> Error {
    Error::io(op, "", e.into())
}

/// Stat an object through an `O_PATH` descriptor (xattrs included).
pub fn state_of(fd: &OwnedFd, key_hint: Option<FileKey>) -> Result<ObjState> {
    let st = rustix::fs::fstat(fd).map_err(|e| io("stat", e))?;
    let key = FileKey::of(&st);
    if let Some(h) = key_hint {
        if h != key {
            return Err(Error::NotFound {
                snapshot: String::new(),
                path: format!("inode {}", h.ino),
            });
        }
    }
    let mut meta = crate::snapshot::manifest::meta_of(&st);
    let t = sys::file_type(st.st_mode);
    let kind = match t {
        libc::S_IFDIR => ObjKind::Dir,
        libc::S_IFREG => ObjKind::File {
            size: st.st_size as u64,
        },
        libc::S_IFLNK => ObjKind::Symlink {
            target: rustix::fs::readlinkat(fd, "", Vec::new())
                .map_err(|e| io("readlink", e))?
                .into_bytes(),
        },
        _ => ObjKind::Special { rdev: st.st_rdev },
    };
    if matches!(t, libc::S_IFLNK | libc::S_IFDIR | libc::S_IFREG) {
        // Through the descriptor's /proc link: no open (a listing of many
        // files pays one call per file for its attributes, not three).
        meta.xattrs = sys::read_xattrs_opath(fd).unwrap_or_default();
    }
    Ok(ObjState {
        key,
        meta,
        kind,
        nlink: st.st_nlink as u64,
    })
}

fn open_path_at(dir: &OwnedFd, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Walk `comps` from `start`, checking that component `i` is the inode
/// `expect(i)` says (so a rename cannot substitute another object).
pub fn walk_verified(
    start: &OwnedFd,
    comps: &[&[u8]],
    expect: impl Fn(usize) -> Option<u64>,
) -> Option<OwnedFd> {
    let mut cur =
        rustix::fs::openat(start, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).ok()?;
    for (i, comp) in comps.iter().enumerate() {
        let next = open_path_at(&cur, comp).ok()?;
        let st = rustix::fs::fstat(&next).ok()?;
        if Some(st.st_ino) != expect(i) {
            return None;
        }
        cur = next;
    }
    Some(cur)
}

/// Open `path` below `root`, each component checked against `tree`.
pub fn open_verified(root: &OwnedFd, base: &dyn BaseLookup, path: &[u8]) -> Option<OwnedFd> {
    if path.is_empty() {
        return walk_verified(root, &[], |_| None);
    }
    let comps: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
    walk_verified(root, &comps, |i| base.ino_at(&comps[..=i].join(&b'/')))
}

/// One entry met by the first snapshot's walk (`capture::stream`),
/// `None` for what is not captured (the snapshots directory, the
/// repository, a symlink gone since its directory was read: the journal
/// has that change).
pub(crate) fn listed_entry(
    e: &crate::util::walk::WalkEntry<'_>,
    hidden: Option<FileKey>,
) -> Result<Option<(Meta, Node)>> {
    let st = e.stat;
    if e.path == SNAPSHOTS_DIR.as_bytes() || Some(FileKey::of(st)) == hidden {
        return Ok(None);
    }
    let mut meta = crate::snapshot::manifest::meta_of(st);
    let t = sys::file_type(st.st_mode);
    let node = match t {
        libc::S_IFDIR => Node::Dir,
        libc::S_IFREG => Node::File {
            size: st.st_size as u64,
            blocks: crate::snapshot::manifest::Blocks::Full(Vec::new()),
            link: (st.st_nlink > 1).then_some(st.st_ino),
        },
        libc::S_IFLNK => match rustix::fs::readlinkat(e.dir, e.name, Vec::new()) {
            Ok(target) => Node::Symlink {
                target: target.into_bytes(),
            },
            Err(_) => return Ok(None),
        },
        _ => Node::Special { rdev: st.st_rdev },
    };
    if matches!(t, libc::S_IFLNK | libc::S_IFDIR | libc::S_IFREG) {
        meta.xattrs = sys::read_xattrs_at(e.dir, e.name).unwrap_or_default();
    }
    Ok(Some((meta, node)))
}

/// The path of a directory at the cut, from its descriptor.
fn path_of(fd: &OwnedFd, backing: &Path) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    if link.as_os_str().as_bytes().ends_with(b" (deleted)") {
        return None;
    }
    let rel = link.strip_prefix(backing).ok()?;
    Some(rel.as_os_str().as_bytes().to_vec())
}

/// Which blocks of a changed file the snapshot must read: the written
/// blocks, every block from the lower of the base and cut sizes on (its
/// extent changed) when the size changed, and every block from the lowest
/// size the file was truncated to. A file the base does not have is read
/// entirely.
pub fn need_of(fd: &FileDirty, base_size: Option<u64>, cut_size: u64, block_size: u64) -> Need {
    // A file created since the base is read whole, even when the base
    // knows its inode number (a removed file's, reused).
    let Some(base_size) = base_size.filter(|_| !fd.file.created) else {
        return Need::All;
    };
    let n = cut_size.div_ceil(block_size);
    let mut set: BTreeSet<u64> = fd.blocks.keys().copied().filter(|b| *b < n).collect();
    if cut_size != base_size {
        set.extend(base_size.min(cut_size) / block_size..n);
    }
    if let Some(t) = fd.file.truncated_to {
        set.extend(t / block_size..n);
    }
    Need::Blocks(set)
}

pub struct CutRequest<'a> {
    /// The live objects (descriptors of changed objects no path reaches).
    pub objects: &'a dyn Objects,
    pub backing: &'a Path,
    pub base: &'a dyn BaseLookup,
    /// Full snapshots need every block of every file.
    pub full: bool,
    pub spill_dir: Option<crate::util::dirfd::Dir>,
    /// The repository directory if it is inside the backing directory.
    pub hidden: Option<FileKey>,
}

/// Take the cut (through [`super::Freezer::cut`]).
pub(super) fn cut(
    journal: &Journal,
    gate: &Gate,
    dir_pins: &DirPins,
    cow_slot: &Cow,
    (held, bypass): (&OpenCount, &OpenCount),
    req: &CutRequest<'_>,
) -> Result<CutInfo> {
    let bs = journal.block_size();
    let gate = gate.freeze();
    let t0 = Instant::now();
    let time_ns = time::now_ns();
    let result = (|| -> Result<CutInfo> {
        let (epoch, mut frozen) = journal.take_epoch()?;
        let held_back: HashSet<FileKey> = held.lock().keys().copied().collect();
        let bypassed: Vec<FileKey> = bypass
            .lock()
            .keys()
            .filter(|k| !held_back.contains(k))
            .copied()
            .collect();
        let pins = dir_pins.take();
        let (root_key, root_fd) = req
            .objects
            .root()
            .map_err(|e| Error::io("open", "backing root", e))?;
        let mut states: HashMap<FileKey, ObjState> = HashMap::new();
        let mut edges: Vec<Edge> = Vec::new();

        // An O_PATH descriptor for a changed object, however we can get it.
        let find_fd = |key: &FileKey| -> Option<Arc<OwnedFd>> {
            if *key == root_key {
                return Some(root_fd.clone());
            }
            if let Some(p) = pins.get(key) {
                return Some(p.clone());
            }
            if let Some(fd) = req.objects.find(key) {
                return Some(fd);
            }
            let path = req.base.first_path(key.ino)?;
            open_verified(&root_fd, req.base, &path).map(Arc::new)
        };

        // Directories whose entries changed: look at those entries. With
        // no base (the repository's first snapshot) that is everything.
        let everything = FileDirty {
            file: super::journal::FileRecord {
                entries: true,
                all_names: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut dirs: Vec<(&FileKey, &FileDirty)> = frozen
            .iter()
            .filter(|(k, d)| {
                (d.file.entries || !d.names.is_empty()) && !(req.base.is_empty() && **k == root_key)
            })
            .collect();
        if req.base.is_empty() {
            dirs.push((&root_key, &everything));
        }
        dirs.sort_by_key(|(k, _)| **k);
        let mut listed: Vec<(Vec<u8>, Arc<OwnedFd>, FileKey)> = Vec::new();
        let created: HashSet<FileKey> = frozen
            .iter()
            .filter(|(_, d)| d.file.created)
            .map(|(k, _)| *k)
            .collect();
        for (key, d) in dirs {
            let Some(dfd) = find_fd(key) else { continue };
            let Some(dpath) = (if *key == root_key {
                Some(Vec::new())
            } else {
                path_of(&dfd, req.backing)
            }) else {
                continue;
            };
            let mut names: BTreeSet<Vec<u8>> = d.names.clone();
            if d.file.all_names {
                names.extend(list_names(&dfd)?);
                names.extend(req.base.child_names(&dpath));
            }
            for name in names {
                edge_at(
                    (&dfd, *key),
                    &dpath,
                    &name,
                    req,
                    &mut edges,
                    &mut states,
                    &mut listed,
                    &created,
                )?;
            }
        }
        // A directory created directly in the backing directory (not
        // through the mount) and then written into through the mount: the
        // journal knows the new entries but not the directory. Add its
        // topmost unknown ancestor as a new directory (listed in full
        // below), so the snapshot never holds an entry without its parent.
        add_missing_parents(
            &root_fd,
            req,
            &mut edges,
            &mut states,
            &mut listed,
            &created,
        )?;
        // New directories: everything below them is new.
        while let Some((dpath, dfd, dkey)) = listed.pop() {
            for name in list_names(&dfd)? {
                edge_at(
                    (&dfd, dkey),
                    &dpath,
                    &name,
                    req,
                    &mut edges,
                    &mut states,
                    &mut listed,
                    &created,
                )?;
            }
        }
        // The root, and every other changed object: its state now.
        states.insert(root_key, state_of(&root_fd, Some(root_key))?);
        for key in frozen.keys() {
            if states.contains_key(key) {
                continue;
            }
            if let Some(fd) = find_fd(key) {
                if let Ok(s) = state_of(&fd, Some(*key)) {
                    states.insert(*key, s);
                }
            }
        }
        if !held_back.is_empty() {
            hold_back(
                &held_back,
                req.base,
                &mut frozen,
                &mut edges,
                &mut states,
                |dir| find_fd(dir),
                journal,
                dir_pins,
            );
        }
        // Copy-before-write for the blocks the snapshot will read.
        let spill = req.spill_dir.as_ref().and_then(|d| d.try_clone().ok());
        let cow = Arc::new(CowSet::new(bs, req.full, spill));
        let mut needs = HashMap::new();
        for (key, st) in &states {
            let ObjKind::File { size } = st.kind else {
                continue;
            };
            let need = if req.full {
                Need::All
            } else {
                let d = frozen.get(key).cloned().unwrap_or_default();
                let base = req.base.file_of(key.ino).map(|(_, size, _)| size);
                need_of(&d, base, size, bs)
            };
            cow.register(*key, need.clone(), size);
            needs.insert(*key, (need, size));
        }
        cow_slot.set(Some(cow.clone()));
        // Files written through passthrough outside the fast path: no
        // write of theirs reaches copy-before-write, so what the snapshot
        // reads of them is saved now, while no writer runs. Their writes
        // after the cut are unknown to the journal: they stay wholly
        // changed for the next cut.
        if !bypassed.is_empty() {
            save_bypassed(&bypassed, &cow, &needs, |k| find_fd(k))?;
            let t = time::now_ns();
            let carry = bypassed
                .iter()
                .map(|k| {
                    let mut d = FileDirty::default();
                    d.file.truncated_to = Some(0);
                    d.file.first_ns = t;
                    d.file.last_ns = t;
                    (*k, d)
                })
                .collect();
            journal.carry(carry);
        }
        edges.sort_by(|a, b| {
            let da = a.path.iter().filter(|c| **c == b'/').count();
            let db = b.path.iter().filter(|c| **c == b'/').count();
            (da, &a.path).cmp(&(db, &b.path))
        });
        Ok(CutInfo {
            epoch,
            time_ns,
            frozen,
            edges,
            states,
            needs,
            cow,
            pins,
            held: Duration::ZERO,
            held_back,
            kept: None,
        })
    })();
    let held = t0.elapsed();
    drop(gate);
    let mut info = result?;
    info.held = held;
    Ok(info)
}

/// Inode numbers given to what a kept snapshot adds when the real one is
/// taken in its base (inode numbers are reused; a tree's inode index must
/// not join two objects). Far above what file systems hand out.
pub const KEPT_INO_BASE: u64 = 1 << 62;

/// The cut of a kept snapshot: the base (the latest snapshot) with the
/// kept files added at their paths, and the directories above them that
/// the base lacks, as they were when each file was kept. Nothing is taken
/// from the journal and no writer is held up: the kept files are no
/// longer reachable through the mount. Returns the cut and, per kept
/// file, the topmost path it added (the next cut looks at it again).
pub fn kept_cut(
    kept: &[super::keep::Kept],
    base: &dyn BaseLookup,
    dev: u64,
    block_size: u64,
) -> Result<(CutInfo, Vec<Vec<u8>>)> {
    let time_ns = time::now_ns();
    let cow = Arc::new(CowSet::new(block_size, false, None));
    let mut edges: Vec<Edge> = Vec::new();
    let mut needs = HashMap::new();
    let mut added: HashSet<Vec<u8>> = HashSet::new();
    let mut inos: HashSet<u64> = HashSet::new();
    let mut synthetic = KEPT_INO_BASE;
    let mut ids = Vec::new();
    let mut tops = Vec::new();
    let mut fresh_ino = |real: u64, inos: &mut HashSet<u64>| {
        if real != 0 && base.first_path(real).is_none() && inos.insert(real) {
            return real;
        }
        // One no object of the base has (an earlier kept snapshot's own
        // may still be there) and none given in this cut.
        loop {
            synthetic += 1;
            if base.first_path(synthetic).is_none() && inos.insert(synthetic) {
                return synthetic;
            }
        }
    };
    let root = FileKey { dev, ino: 0 };
    for k in kept {
        // (Keeper::pending hands only regular files of the kept inode.)
        let st = state_of(&k.fd, None)?;
        let path = k.rec.path.clone();
        if path.is_empty() || added.contains(&path) {
            // (Two kept files of one path: the later one waits for the
            // next kept snapshot.)
            continue;
        }
        let mut top: Option<Vec<u8>> = None;
        for (dpath, meta) in &k.rec.dirs {
            if dpath.is_empty() || added.contains(dpath) {
                continue;
            }
            if base.is_dir(dpath) {
                continue;
            }
            let ino = fresh_ino(0, &mut inos);
            let mut m = meta.clone();
            m.ino = ino;
            edges.push(Edge {
                path: dpath.clone(),
                dir: root,
                child: Some(ObjState {
                    key: FileKey { dev, ino },
                    meta: m,
                    kind: ObjKind::Dir,
                    nlink: 2,
                }),
                new: true,
            });
            added.insert(dpath.clone());
            top.get_or_insert_with(|| dpath.clone());
        }
        let ino = fresh_ino(st.key.ino, &mut inos);
        let key = FileKey { dev, ino };
        let mut meta = st.meta.clone();
        meta.ino = ino;
        let ObjKind::File { size } = st.kind else {
            continue;
        };
        cow.pin_kept(key, k.fd.clone(), st.key.ino);
        needs.insert(key, (Need::All, size));
        edges.push(Edge {
            path: path.clone(),
            dir: root,
            child: Some(ObjState {
                key,
                meta,
                kind: ObjKind::File { size },
                nlink: 1,
            }),
            new: true,
        });
        added.insert(path.clone());
        ids.push(k.rec.id);
        tops.push(top.unwrap_or(path));
    }
    edges.sort_by(|a, b| {
        let da = a.path.iter().filter(|c| **c == b'/').count();
        let db = b.path.iter().filter(|c| **c == b'/').count();
        (da, &a.path).cmp(&(db, &b.path))
    });
    if ids.is_empty() {
        return Err(Error::InvalidInput("no kept checkpoint to capture".into()));
    }
    Ok((
        CutInfo {
            epoch: 0,
            time_ns,
            frozen: HashMap::new(),
            edges,
            states: HashMap::new(),
            needs,
            cow,
            pins: HashMap::new(),
            held: Duration::ZERO,
            held_back: HashSet::new(),
            kept: Some(ids),
        },
        tops,
    ))
}

/// Save now (into copy-before-write) every block the snapshot will read
/// of files whose writers bypass the daemon.
fn save_bypassed(
    keys: &[FileKey],
    cow: &CowSet,
    needs: &HashMap<FileKey, (Need, u64)>,
    find_fd: impl Fn(&FileKey) -> Option<Arc<OwnedFd>>,
) -> Result<()> {
    use std::os::fd::AsRawFd;
    for key in keys {
        if !needs.contains_key(key) {
            continue;
        }
        let Some(fd) = find_fd(key) else { continue };
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let f = rustix::fs::openat(
            rustix::fs::CWD,
            proc.as_str(),
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open for the cut", e))?;
        let f = std::fs::File::from(f);
        let reader = |off: u64, len: usize| -> std::io::Result<Vec<u8>> {
            crate::util::bytes::read_full(&f, off, len)
        };
        let size_now = || -> std::io::Result<u64> { Ok(f.metadata()?.len()) };
        cow.before_change(key, 0, u64::MAX, &reader, &size_now)
            .map_err(|e| Error::io("save for the snapshot", format!("inode {}", key.ino), e))?;
    }
    Ok(())
}

/// The state a file had in the base snapshot (its last closed version,
/// for a file held back by the cut), if the base has it as a file.
fn base_state(base: &dyn BaseLookup, key: &FileKey) -> Option<ObjState> {
    let (meta, size, linked) = base.file_of(key.ino)?;
    Some(ObjState {
        key: *key,
        meta,
        kind: ObjKind::File { size },
        nlink: if linked { 2 } else { 1 },
    })
}

/// Files open on the checkpoint fast path at the cut: the snapshot shows
/// their last closed version, the base's (or, for a file the base does
/// not have, whatever the base had at that name, usually nothing); their
/// changes and the entries naming them go back to the journal (persisted
/// again) for the next cut, with their directories pinned.
#[allow(clippy::too_many_arguments)]
fn hold_back(
    held: &HashSet<FileKey>,
    base: &dyn BaseLookup,
    frozen: &mut HashMap<FileKey, FileDirty>,
    edges: &mut Vec<Edge>,
    states: &mut HashMap<FileKey, ObjState>,
    find_fd: impl Fn(&FileKey) -> Option<Arc<OwnedFd>>,
    journal: &Journal,
    dir_pins: &DirPins,
) {
    let mut carry: HashMap<FileKey, FileDirty> = HashMap::new();
    edges.retain_mut(|e| {
        let Some(c) = &e.child else { return true };
        if !held.contains(&c.key) {
            return true;
        }
        let name = e.path.rsplit(|b| *b == b'/').next().unwrap_or(&e.path);
        carry.entry(e.dir).or_default().names.insert(name.to_vec());
        match base_state(base, &c.key) {
            Some(s) => {
                e.child = Some(s);
                true
            }
            None => false,
        }
    });
    for k in held {
        match base_state(base, k) {
            Some(s) => {
                states.insert(*k, s);
            }
            None => {
                states.remove(k);
            }
        }
        let mut d = frozen.remove(k).unwrap_or_default();
        d.file.truncated_to = Some(0);
        carry.entry(*k).or_default().merge(&d);
    }
    for (dir, d) in carry.iter_mut() {
        if d.names.is_empty() {
            continue;
        }
        d.file.entries = true;
        if let Some(fd) = find_fd(dir) {
            dir_pins.pin(*dir, fd);
        }
    }
    for d in carry.values_mut() {
        if d.file.first_ns == 0 {
            let t = time::now_ns();
            d.file.first_ns = t;
            d.file.last_ns = t;
        }
    }
    journal.carry(carry);
}

/// Is `dir` a directory of the tree at the cut, as far as the base and
/// the edges found so far tell?
fn dir_present(dir: &[u8], base: &dyn BaseLookup, edges: &[Edge]) -> bool {
    if dir.is_empty() {
        return true;
    }
    let edge_kind = |p: &[u8]| {
        edges
            .iter()
            .rev()
            .find(|e| e.path == p)
            .map(|e| matches!(&e.child, Some(s) if s.kind == ObjKind::Dir))
    };
    // The directory itself, then every ancestor: an edge decides, else
    // the base.
    let mut p: &[u8] = dir;
    loop {
        let here = edge_kind(p).unwrap_or_else(|| {
            // Not an edge: the base decides for the directory itself; an
            // ancestor without an edge is as in the base (present, since
            // the directory is below it).
            p != dir || base.is_dir(p)
        });
        if !here {
            return false;
        }
        match p.iter().rposition(|c| *c == b'/') {
            Some(i) => p = &p[..i],
            None => return true,
        }
    }
}

/// See the call in [`cut`].
fn add_missing_parents(
    root_fd: &OwnedFd,
    req: &CutRequest<'_>,
    edges: &mut Vec<Edge>,
    states: &mut HashMap<FileKey, ObjState>,
    listed: &mut Vec<(Vec<u8>, Arc<OwnedFd>, FileKey)>,
    created: &HashSet<FileKey>,
) -> Result<()> {
    let parents: BTreeSet<Vec<u8>> = edges
        .iter()
        .filter(|e| e.child.is_some())
        .filter_map(|e| {
            e.path
                .iter()
                .rposition(|c| *c == b'/')
                .map(|i| e.path[..i].to_vec())
        })
        .collect();
    for parent in parents {
        if dir_present(&parent, req.base, edges) {
            continue;
        }
        // The topmost missing ancestor (its own parent is present).
        let comps: Vec<&[u8]> = parent.split(|c| *c == b'/').collect();
        let Some(k) = (1..=comps.len()).find(|&k| {
            let p = comps[..k].join(&b'/');
            !dir_present(&p, req.base, edges)
        }) else {
            continue;
        };
        let above = comps[..k - 1].join(&b'/');
        // Reach `above` from the root without following symlinks.
        let mut fd =
            rustix::fs::openat(root_fd, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| io("open", e))?;
        let mut reachable = true;
        for c in &comps[..k - 1] {
            match open_path_at(&fd, c) {
                Ok(next) => fd = next,
                Err(_) => {
                    reachable = false;
                    break;
                }
            }
        }
        if !reachable {
            continue;
        }
        tracing::debug!(
            dir = %crate::snapshot::manifest::display_path(&comps[..k].join(&b'/')),
            "a directory made outside the mount holds new entries: capturing it whole"
        );
        let above_key = FileKey::of(&rustix::fs::fstat(&fd).map_err(|e| io("stat", e))?);
        edge_at(
            (&fd, above_key),
            &above,
            comps[k - 1],
            req,
            edges,
            states,
            listed,
            created,
        )?;
    }
    Ok(())
}

fn list_names(dfd: &OwnedFd) -> Result<Vec<Vec<u8>>> {
    use std::os::fd::AsRawFd;
    let proc = format!("/proc/self/fd/{}", dfd.as_raw_fd());
    let d = rustix::fs::openat(
        rustix::fs::CWD,
        proc.as_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("open directory", e))?;
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(&d).map_err(|e| io("read directory", e))? {
        let e = e.map_err(|e| io("read directory", e))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn edge_at(
    (dfd, dkey): (&OwnedFd, FileKey),
    dpath: &[u8],
    name: &[u8],
    req: &CutRequest<'_>,
    edges: &mut Vec<Edge>,
    states: &mut HashMap<FileKey, ObjState>,
    listed: &mut Vec<(Vec<u8>, Arc<OwnedFd>, FileKey)>,
    created: &HashSet<FileKey>,
) -> Result<()> {
    let path = join(dpath, name);
    if dpath.is_empty() && name == SNAPSHOTS_DIR.as_bytes() {
        return Ok(());
    }
    let child = match open_path_at(dfd, name) {
        Ok(fd) => {
            let s = state_of(&fd, None)?;
            if Some(s.key) == req.hidden {
                return Ok(());
            }
            if s.kind == ObjKind::Dir {
                // A directory the base holds (moved here, or unchanged),
                // unless it is a new one that got a removed one's number.
                let known = req.base.ino_is_dir(s.key.ino) && !created.contains(&s.key);
                if !known {
                    listed.push((path.clone(), Arc::new(fd), s.key));
                }
            }
            states.insert(s.key, s.clone());
            Some(s)
        }
        Err(rustix::io::Errno::NOENT) => None,
        Err(e) => return Err(io("stat", e)),
    };
    let new = child.as_ref().is_some_and(|c| created.contains(&c.key));
    edges.push(Edge {
        path,
        dir: dkey,
        child,
        new,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirty(blocks: &[u64], truncated_to: Option<u64>) -> FileDirty {
        let mut d = FileDirty::default();
        for b in blocks {
            d.blocks.insert(
                *b,
                crate::track::journal::BlockTimes {
                    first_ns: 1,
                    last_ns: 1,
                },
            );
        }
        d.file.truncated_to = truncated_to;
        d
    }

    fn set(v: &[u64]) -> Need {
        Need::Blocks(v.iter().copied().collect())
    }

    #[test]
    fn needed_blocks() {
        assert_eq!(need_of(&dirty(&[1], None), None, 10, 4), Need::All);
        assert_eq!(need_of(&dirty(&[1], None), Some(10), 10, 4), set(&[1]));
        // Grown from 10 (partial block 2) to 14: blocks 2 and 3.
        assert_eq!(need_of(&dirty(&[], None), Some(10), 14, 4), set(&[2, 3]));
        // Grown from 8 (block-aligned) to 14: blocks 2 and 3 are new.
        assert_eq!(need_of(&dirty(&[], None), Some(8), 14, 4), set(&[2, 3]));
        // Shrunk from 14 to 10: block 2 is shorter.
        assert_eq!(need_of(&dirty(&[], None), Some(14), 10, 4), set(&[2]));
        // Shrunk to a block boundary: nothing to read.
        assert_eq!(need_of(&dirty(&[], None), Some(16), 8, 4), set(&[]));
        // Truncated to 5 and grown back to the same size: blocks 1 on.
        assert_eq!(
            need_of(&dirty(&[0], Some(5)), Some(16), 16, 4),
            set(&[0, 1, 2, 3])
        );
        // Writes past the cut size do not count.
        assert_eq!(need_of(&dirty(&[9], None), Some(16), 16, 4), set(&[]));
    }
}
