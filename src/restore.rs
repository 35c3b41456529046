//! Restore a snapshot (or part of it) into a directory.
//!
//! Everything is created through directory file descriptors: each parent is
//! opened component by component from the target with `O_NOFOLLOW |
//! O_DIRECTORY`, and every entry is created with `*at` calls and `O_EXCL`/
//! `O_NOFOLLOW`. A name from a manifest is a single checked component, so
//! no name (`..`, `/`, a symlink planted in the target) can make the
//! restore write outside the target directory.
//!
//! Restoring as root into a directory other users can write is safe:
//! every metadata call (owner, mode, xattrs, times) is made on a
//! descriptor of the object restore itself created, checked after
//! creation to be of the type it made and owned by the restoring user
//! (which nobody else can forge). A swapped-in symlink, FIFO or directory
//! is refused, never chmod'ed or chown'ed. Directories restore merges
//! into (that existed before) keep their own metadata.
//!
//! Owners, setuid/setgid bits and device nodes are restored only when
//! [`RestoreOptions::owners`] says so (root restoring from a trusted
//! repository); otherwise files belong to the restoring user, setuid and
//! setgid bits are dropped and device nodes are skipped (like tar without
//! `-p`).
//!
//! Content is read, verified (blake3) and written by a pool of workers.
//! A file whose data cannot be read or verified is removed and reported;
//! the other files restore.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use crate::error::{Error, IoContext, Result};
use crate::repo::Repository;
use crate::snapshot::manifest::{display_path, Meta, Node};
use crate::snapshot::Tree;
use crate::store::ChunkId;
use crate::util::{pool, sys};

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Replace existing files (directories are merged, never deleted).
    pub overwrite: bool,
    /// Restore owners and setuid/setgid bits, and create device nodes
    /// (root restoring from a trusted repository).
    pub owners: bool,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Show a progress bar on stderr (only if it is a terminal).
    pub progress: bool,
}

#[derive(Debug, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub specials: u64,
    pub bytes: u64,
    /// Files that could not be restored (their data is damaged), with why.
    pub failed: Vec<String>,
    /// Entries deliberately not restored (device nodes without
    /// [`RestoreOptions::owners`]), with why.
    pub skipped: Vec<String>,
}

struct FileJob {
    file: File,
    parent: Arc<OwnedFd>,
    name: Vec<u8>,
    display: String,
    meta: Meta,
    blocks: Vec<ChunkId>,
    /// Where each chunk lies (fixed blocks or content chunks).
    spans: crate::snapshot::spans::Spans,
    remaining: AtomicUsize,
    failed: Mutex<Option<String>>,
    /// Held around each write: two workers writing one file at once make
    /// the kernel's inode lock spin (10% of a remote restore's CPU,
    /// perf); a parked waiter leaves the core to the decoding.
    writing: Mutex<()>,
    /// For a file with hard links: its further names.
    linked: Option<Arc<Linked>>,
}

/// The further names (hard links) given to a restored file: removed with
/// it if its data cannot be restored.
#[derive(Default)]
struct Linked {
    names: Mutex<Vec<(Arc<OwnedFd>, Vec<u8>)>>,
    /// Set (under `names`' lock) once the file is known to have failed.
    failed: AtomicBool,
}

/// Where the first name of a hard-linked file is, and which inode it
/// must be (the file itself is not kept open: a tree of many hard-linked
/// files would run out of descriptors).
struct LinkSource {
    parent: Arc<OwnedFd>,
    name: Vec<u8>,
    key: (u64, u64),
    linked: Arc<Linked>,
}

struct Unit {
    job: Arc<FileJob>,
    first: u64,
    count: u64,
}

/// What a restore writes: (destination path relative to the target, entry).
type Plan<'t> = Vec<(Vec<u8>, &'t Meta, &'t Node)>;

fn plan<'t>(tree: &'t Tree, sub: &[u8]) -> Result<(Plan<'t>, Option<&'t Meta>)> {
    let Some((meta, node)) = tree.get(sub) else {
        return Err(Error::NotFound {
            snapshot: String::new(),
            path: display_path(sub),
        });
    };
    let mut out = Vec::new();
    if sub.is_empty() {
        for (p, (m, n)) in tree.descendants(b"") {
            out.push((p.clone(), m, n));
        }
        return Ok((out, Some(meta)));
    }
    let base = sub.rsplit(|b| *b == b'/').next().unwrap_or(sub).to_vec();
    out.push((base.clone(), meta, node));
    if matches!(node, Node::Dir) {
        let cut = sub.len();
        for (p, (m, n)) in tree.descendants(sub) {
            out.push(([&base[..], &p[cut..]].concat(), m, n));
        }
    }
    Ok((out, None))
}

fn times(meta: &Meta) -> Timestamps {
    let t = Timespec {
        tv_sec: meta.mtime.sec,
        tv_nsec: meta.mtime.nsec.min(999_999_999) as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn owner(meta: &Meta) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    let uid = (meta.uid != u32::MAX).then(|| rustix::fs::Uid::from_raw(meta.uid));
    let gid = (meta.gid != u32::MAX).then(|| rustix::fs::Gid::from_raw(meta.gid));
    (uid, gid)
}

/// The permission bits to restore: setuid and setgid only with `owners`.
fn perm(meta: &Meta, owners: bool) -> u32 {
    if owners {
        meta.perm()
    } else {
        meta.perm() & !(libc::S_ISUID | libc::S_ISGID)
    }
}

fn set_xattrs(
    meta: &Meta,
    mut set: impl FnMut(&[u8], &[u8]) -> rustix::io::Result<()>,
) -> std::io::Result<()> {
    for (k, v) in &meta.xattrs {
        match set(k, v) {
            Ok(()) => {}
            // Not permitted for this namespace (e.g. trusted.* as a user),
            // or unsupported by the target filesystem.
            Err(rustix::io::Errno::PERM | rustix::io::Errno::NOTSUP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Apply ownership (with `owners`), xattrs, mode and times to an open
/// file or directory.
fn apply_meta_fd<Fd: AsFd>(fd: Fd, meta: &Meta, owners: bool) -> std::io::Result<()> {
    let fd = fd.as_fd();
    if owners {
        let (u, g) = owner(meta);
        rustix::fs::fchown(fd, u, g)?;
    }
    set_xattrs(meta, |k, v| {
        rustix::fs::fsetxattr(fd, k, v, rustix::fs::XattrFlags::empty())
    })?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(perm(meta, owners)))?;
    rustix::fs::futimens(fd, &times(meta))?;
    Ok(())
}

fn replaced(rel: &[u8]) -> Error {
    Error::InvalidInput(format!(
        "{} was replaced while it was restored; refusing to touch it",
        display_path(rel)
    ))
}

/// Apply metadata through an `O_PATH` descriptor (symlinks, FIFOs and
/// device nodes cannot be opened for real without side effects): owner
/// and times on the descriptor itself, mode and xattrs through
/// `/proc/self/fd/N`, which names this very inode, not a path.
fn apply_meta_opath(fd: &OwnedFd, meta: &Meta, owners: bool, symlink: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if owners {
        let (u, g) = owner(meta);
        rustix::fs::chownat(fd, "", u, g, AtFlags::EMPTY_PATH)?;
    }
    // Through /proc/self/fd/N the calls act on this object itself, a
    // symlink included (symlinks have no mode to set).
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    set_xattrs(meta, |k, v| {
        rustix::fs::setxattr(proc.as_str(), k, v, rustix::fs::XattrFlags::empty())
    })?;
    if !symlink {
        rustix::fs::chmodat(
            rustix::fs::CWD,
            proc.as_str(),
            Mode::from_raw_mode(perm(meta, owners)),
            AtFlags::empty(),
        )?;
    }
    rustix::fs::utimensat(fd, "", &times(meta), AtFlags::EMPTY_PATH)?;
    Ok(())
}

/// Check that `fd` is what restore just created: of type `kind`, owned by
/// this thread's filesystem uid (nobody else can create an object owned
/// by it), with one link. A planted symlink or another user's object
/// fails. Returns its (device, inode).
fn check_ours(fd: &OwnedFd, kind: u32, rel: &[u8]) -> Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd).ctx("stat", display_path(rel))?;
    let me = crate::fs::creds::current_fsuid();
    let links_ok = kind == libc::S_IFDIR || st.st_nlink == 1;
    if sys::file_type(st.st_mode) != kind || st.st_uid != me || !links_ok {
        return Err(Error::InvalidInput(format!(
            "{} was replaced while it was restored (now {:o}, owned by uid {}); refusing to touch it",
            display_path(rel),
            st.st_mode,
            st.st_uid
        )));
    }
    Ok((st.st_dev, st.st_ino))
}

/// Open the directory a restore writes into, creating what is missing,
/// one component at a time from `/` (or the working directory) without
/// following a symlink another user could have made: a symlink on the
/// way is followed only if it belongs to root or to the restoring user,
/// as with the kernel's protected_symlinks. Directories it creates get
/// the caller's umask and are checked to be ours. Returns the directory
/// and whether it was created.
fn open_target(target: &Path) -> Result<(OwnedFd, bool)> {
    use std::os::unix::ffi::OsStrExt;
    use std::path::Component;
    let me = crate::fs::creds::current_fsuid();
    let dir_at = |at: &OwnedFd, name: &[u8]| {
        rustix::fs::openat(
            at,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let root = || {
        rustix::fs::openat(
            rustix::fs::CWD,
            "/",
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let mut cur = if target.is_absolute() {
        root()
    } else {
        rustix::fs::openat(
            rustix::fs::CWD,
            ".",
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }
    .ctx("open", target)?;
    let push_path = |q: &mut VecDeque<Vec<u8>>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => q.push_front(n.as_bytes().to_vec()),
                Component::ParentDir => q.push_front(b"..".to_vec()),
                _ => {}
            }
        }
    };
    let mut queue = VecDeque::new();
    push_path(&mut queue, target);
    let mut created = false;
    let mut steps = 0;
    while let Some(c) = queue.pop_front() {
        steps += 1;
        if steps > 4096 {
            return Err(Error::InvalidInput(format!(
                "{}: too many symbolic links on the way",
                target.display()
            )));
        }
        created = false;
        match rustix::fs::openat(
            &cur,
            &c[..],
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd).ctx("stat", target)?;
                match sys::file_type(st.st_mode) {
                    libc::S_IFDIR => cur = fd,
                    libc::S_IFLNK if st.st_uid == 0 || st.st_uid == me => {
                        let link = rustix::fs::readlinkat(&fd, "", Vec::new())
                            .ctx("read symlink", target)?;
                        let link = Path::new(std::ffi::OsStr::from_bytes(link.as_bytes()));
                        if link.is_absolute() {
                            cur = root().ctx("open", "/")?;
                        }
                        push_path(&mut queue, link);
                    }
                    libc::S_IFLNK => {
                        return Err(Error::InvalidInput(format!(
                            "{}: the way there crosses a symlink ({}) owned by uid {}, which could lead anywhere; give the real path",
                            target.display(),
                            String::from_utf8_lossy(&c),
                            st.st_uid
                        )))
                    }
                    _ => {
                        return Err(Error::InvalidInput(format!(
                            "{}: {} is not a directory",
                            target.display(),
                            String::from_utf8_lossy(&c)
                        )))
                    }
                }
            }
            Err(rustix::io::Errno::NOENT) if c != b".." => {
                match rustix::fs::mkdirat(&cur, &c[..], Mode::from_raw_mode(0o777)) {
                    Ok(()) => {
                        let fd = dir_at(&cur, &c).ctx("open", target)?;
                        check_ours(&fd, libc::S_IFDIR, &c)?;
                        cur = fd;
                        created = true;
                    }
                    // Made meanwhile: look again.
                    Err(rustix::io::Errno::EXIST) => queue.push_front(c),
                    Err(e) => return Err(Error::io("create directory", target, e.into())),
                }
            }
            Err(e) => return Err(Error::io("open", target, e.into())),
        }
    }
    let fd = rustix::fs::openat(
        &cur,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx("open", target)?;
    Ok((fd, created))
}

struct Creator<'a> {
    target: Arc<OwnedFd>,
    dirs: HashMap<Vec<u8>, Arc<OwnedFd>>,
    /// Directories this restore created (only those get metadata), with
    /// their (device, inode): a reopened one must still be that one.
    created: HashMap<Vec<u8>, (u64, u64)>,
    /// Every directory, symlink and special file this restore created
    /// (restore never removes those): one turning up again under another
    /// name was swapped there.
    seen: HashSet<(u64, u64)>,
    overwrite: bool,
    owners: bool,
    report: &'a mut RestoreReport,
}

fn split_parent(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&[], p),
    }
}

impl Creator<'_> {
    /// A directory (relative to the target), opened without following
    /// symlinks at any component.
    fn dir(&mut self, rel: &[u8]) -> Result<Arc<OwnedFd>> {
        if rel.is_empty() {
            return Ok(self.target.clone());
        }
        if let Some(fd) = self.dirs.get(rel) {
            return Ok(fd.clone());
        }
        let (parent, name) = split_parent(rel);
        let pfd = self.dir(parent)?;
        let fd = sys::open_dir_at(&*pfd, name).ctx("open directory", display_path(rel))?;
        if let Some(key) = self.created.get(rel) {
            if check_ours(&fd, libc::S_IFDIR, rel)? != *key {
                return Err(replaced(rel));
            }
        }
        let fd = Arc::new(fd);
        if self.dirs.len() > 1024 {
            self.dirs.clear();
        }
        self.dirs.insert(rel.to_vec(), fd.clone());
        Ok(fd)
    }

    /// Make room for a new non-directory entry `name` in `parent`.
    fn clear_slot(&self, parent: &OwnedFd, name: &[u8], rel: &[u8]) -> Result<()> {
        match sys::lstat_at(parent, name) {
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(Error::io("stat", display_path(rel), e.into())),
            Ok(_) if !self.overwrite => Err(Error::InvalidInput(format!(
                "{} already exists in the target (use --overwrite to replace files)",
                display_path(rel)
            ))),
            Ok(st) if sys::file_type(st.st_mode) == libc::S_IFDIR => {
                rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR).map_err(|_| {
                    Error::InvalidInput(format!(
                    "{} is a non-empty directory in the target; refusing to replace it with a file",
                    display_path(rel)
                ))
                })
            }
            Ok(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .ctx("remove", display_path(rel)),
        }
    }

    /// Record an object restore just created (checked by the caller).
    fn remember(&mut self, key: (u64, u64), rel: &[u8]) -> Result<()> {
        if !self.seen.insert(key) {
            return Err(replaced(rel));
        }
        Ok(())
    }

    fn mkdir(&mut self, rel: &[u8]) -> Result<()> {
        let (parent, name) = split_parent(rel);
        let pfd = self.dir(parent)?;
        let made = match rustix::fs::mkdirat(&*pfd, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            // Without --overwrite nothing was there when the restore
            // started: a directory now is another user's doing.
            Err(rustix::io::Errno::EXIST) if !self.overwrite => {
                return Err(Error::InvalidInput(format!(
                    "{} appeared in the target during the restore; refusing to merge into it",
                    display_path(rel)
                )))
            }
            Err(rustix::io::Errno::EXIST) => {
                let st = sys::lstat_at(&*pfd, name).ctx("stat", display_path(rel))?;
                if sys::file_type(st.st_mode) == libc::S_IFDIR {
                    false
                } else {
                    rustix::fs::unlinkat(&*pfd, name, AtFlags::empty())
                        .ctx("remove", display_path(rel))?;
                    rustix::fs::mkdirat(&*pfd, name, Mode::from_raw_mode(0o700))
                        .ctx("create directory", display_path(rel))?;
                    true
                }
            }
            Err(e) => return Err(Error::io("create directory", display_path(rel), e.into())),
        };
        if made {
            // Pin it now: opened, checked, remembered by inode.
            let fd = sys::open_dir_at(&*pfd, name).ctx("open directory", display_path(rel))?;
            let key = check_ours(&fd, libc::S_IFDIR, rel)?;
            self.remember(key, rel)?;
            self.created.insert(rel.to_vec(), key);
            if self.dirs.len() > 1024 {
                self.dirs.clear();
            }
            self.dirs.insert(rel.to_vec(), Arc::new(fd));
        }
        self.report.dirs += 1;
        Ok(())
    }

    /// Open what restore just created at `parent/name` without following
    /// it, check it (see [`check_ours`]) and remember it.
    fn open_created(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        kind: u32,
        rel: &[u8],
    ) -> Result<OwnedFd> {
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ctx("open", display_path(rel))?;
        let key = check_ours(&fd, kind, rel)?;
        self.remember(key, rel)?;
        Ok(fd)
    }

    fn create_file(&mut self, rel: &[u8]) -> Result<(Arc<OwnedFd>, File)> {
        let (parent, name) = split_parent(rel);
        let pfd = self.dir(parent)?;
        self.clear_slot(&pfd, name, rel)?;
        let fd = rustix::fs::openat(
            &*pfd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .ctx("create", display_path(rel))?;
        Ok((pfd, File::from(fd)))
    }

    /// Another name for a file this restore created: its first name is
    /// opened without following and must still be that file's inode (it
    /// may have been replaced since), then linked through that
    /// descriptor.
    fn link(&mut self, first: &LinkSource, rel: &[u8]) -> Result<()> {
        use std::os::fd::AsRawFd;
        let (parent, name) = split_parent(rel);
        let pfd = self.dir(parent)?;
        self.clear_slot(&pfd, name, rel)?;
        // Under the lock: a failure of the file either happened before
        // (then there is nothing to link to) or sees this name in the
        // list and removes it.
        let mut names = first.linked.names.lock();
        if first.linked.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let fd = rustix::fs::openat(
            &*first.parent,
            &first.name[..],
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ctx("open", display_path(rel))?;
        let st = rustix::fs::fstat(&fd).ctx("stat", display_path(rel))?;
        if (st.st_dev, st.st_ino) != first.key {
            return Err(replaced(rel));
        }
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        rustix::fs::linkat(
            rustix::fs::CWD,
            proc.as_str(),
            &*pfd,
            name,
            AtFlags::SYMLINK_FOLLOW,
        )
        .ctx("link", display_path(rel))?;
        names.push((pfd, name.to_vec()));
        Ok(())
    }

    fn symlink(&mut self, rel: &[u8], target: &[u8], meta: &Meta) -> Result<()> {
        let (parent, name) = split_parent(rel);
        let pfd = self.dir(parent)?;
        self.clear_slot(&pfd, name, rel)?;
        rustix::fs::symlinkat(target, &*pfd, name).ctx("create symlink", display_path(rel))?;
        let fd = self.open_created(&pfd, name, libc::S_IFLNK, rel)?;
        apply_meta_opath(&fd, meta, self.owners, true).ctx("set metadata", display_path(rel))?;
        self.report.symlinks += 1;
        Ok(())
    }

    fn special(&mut self, rel: &[u8], meta: &Meta, rdev: u64) -> Result<()> {
        let t = sys::file_type(meta.mode);
        if matches!(t, libc::S_IFCHR | libc::S_IFBLK) && !self.owners {
            self.report.skipped.push(format!(
                "{}: device node (restored only by root from a trusted repository)",
                display_path(rel)
            ));
            return Ok(());
        }
        let (parent, name) = split_parent(rel);
        let pfd = self.dir(parent)?;
        self.clear_slot(&pfd, name, rel)?;
        let ft = FileType::from_raw_mode(meta.mode);
        rustix::fs::mknodat(&*pfd, name, ft, Mode::from_raw_mode(0o600), rdev)
            .ctx("create special file", display_path(rel))?;
        let fd = self.open_created(&pfd, name, t, rel)?;
        apply_meta_opath(&fd, meta, self.owners, false).ctx("set metadata", display_path(rel))?;
        self.report.specials += 1;
        Ok(())
    }
}

/// Restore `sub` (a path in the tree, `""` for everything) of `tree` into
/// `target`. A file restores as `target/<its name>`, a directory as
/// `target/<its name>/...`, the whole snapshot as `target/...`.
pub fn restore(
    repo: &Repository,
    tree: &Tree,
    sub: &[u8],
    target: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let (plan, root_meta) = plan(tree, sub)?;
    for (p, _, _) in &plan {
        for c in p.split(|b| *b == b'/') {
            if !sys::is_safe_name(c) {
                return Err(Error::Corrupt(format!(
                    "unsafe name {:?} in snapshot; refusing to restore",
                    String::from_utf8_lossy(p)
                )));
            }
        }
    }
    crate::util::sys::raise_fd_limit();
    let (target_fd, created_target) = open_target(target)?;
    let target_fd = Arc::new(target_fd);
    // Nothing below a name that does not exist yet can exist: checking the
    // top-level names is enough to refuse before writing anything.
    if !opts.overwrite {
        let mut clashes = Vec::new();
        for (p, _, _) in &plan {
            if !p.contains(&b'/') {
                match sys::lstat_at(&*target_fd, p) {
                    Err(rustix::io::Errno::NOENT) => {}
                    _ => clashes.push(display_path(p)),
                }
            }
        }
        if !clashes.is_empty() {
            let more = if clashes.len() > 5 {
                format!(" and {} more", clashes.len() - 5)
            } else {
                String::new()
            };
            clashes.truncate(5);
            return Err(Error::InvalidInput(format!(
                "{} already exist{} in {}{more}; use --overwrite to replace files",
                clashes.join(", "),
                if clashes.len() == 1 { "s" } else { "" },
                target.display()
            )));
        }
    }

    let owners = opts.owners;
    let threads = pool::threads_or_default(opts.threads);
    let total: u64 = plan
        .iter()
        .map(|(_, _, n)| {
            if let Node::File { size, .. } = n {
                *size
            } else {
                0
            }
        })
        .sum();
    let pb = crate::util::progress::bytes("restore", Some(total), opts.progress);
    let bs = tree.block_size as u64;
    let mut report = RestoreReport::default();
    let written = AtomicU64::new(0);

    let result = (|| -> Result<()> {
        let mut c = Creator {
            target: target_fd.clone(),
            dirs: HashMap::new(),
            created: HashMap::new(),
            seen: HashSet::new(),
            overwrite: opts.overwrite,
            owners,
            report: &mut report,
        };
        let mut links: HashMap<u64, LinkSource> = HashMap::new();
        let mut dirs_meta: Vec<(Vec<u8>, &Meta)> = Vec::new();
        // Read, verify and write units on the workers; the last unit of a
        // file sets its metadata (or removes it if a block failed).
        let work = |_: &mut (), u: Unit| -> Option<String> {
            let n = write_unit(repo, &u);
            written.fetch_add(n, Ordering::Relaxed);
            pb.inc(n);
            finish_if_last(&u.job, owners)
        };
        let (r, failures) = pool::run(
            threads,
            || (),
            work,
            |feed| -> Result<()> {
                for (rel, meta, node) in &plan {
                    match node {
                        Node::Dir => {
                            c.mkdir(rel)?;
                            dirs_meta.push((rel.clone(), meta));
                        }
                        Node::Symlink { target } => c.symlink(rel, target, meta)?,
                        Node::Special { rdev } => c.special(rel, meta, *rdev)?,
                        Node::File { size, link, .. } => {
                            c.report.files += 1;
                            c.report.bytes += size;
                            if let Some(first) = link.and_then(|l| links.get(&l)) {
                                c.link(first, rel)?;
                                continue;
                            }
                            let (parent, file) = c.create_file(rel)?;
                            // (Not remembered in `seen`: a regular file is used
                            // through the descriptor that created it, and its
                            // inode number is freed again if its data fails.)
                            let st = rustix::fs::fstat(&file).ctx("stat", display_path(rel))?;
                            file.set_len(*size).ctx("truncate", display_path(rel))?;
                            let linked = link.map(|_| Arc::new(Linked::default()));
                            let blocks = Tree::blocks_of(node).to_vec();
                            let n = blocks.len() as u64;
                            let units = n.div_ceil(pool::UNIT_BLOCKS);
                            let job = Arc::new(FileJob {
                                file,
                                parent,
                                name: split_parent(rel).1.to_vec(),
                                display: display_path(rel),
                                meta: (*meta).clone(),
                                spans: crate::snapshot::spans::Spans::of(node, bs as u32)
                                    .unwrap_or(crate::snapshot::spans::Spans::Ends(Vec::new())),
                                blocks,
                                remaining: AtomicUsize::new(units.max(1) as usize),
                                failed: Mutex::new(None),
                                writing: Mutex::new(()),
                                linked: linked.clone(),
                            });
                            if let (Some(l), Some(linked)) = (link, linked) {
                                links.insert(
                                    *l,
                                    LinkSource {
                                        parent: job.parent.clone(),
                                        name: job.name.clone(),
                                        key: (st.st_dev, st.st_ino),
                                        linked,
                                    },
                                );
                            }
                            if units == 0 {
                                if let Some(why) = finish_if_last(&job, owners) {
                                    return Err(Error::InvalidInput(why));
                                }
                            }
                            for (first, count) in pool::units(n) {
                                // A remote's segments are fetched ahead of
                                // the workers, in the plan's order (the
                                // feed runs at most a few units ahead).
                                for id in &job.blocks[first as usize..(first + count) as usize] {
                                    repo.prefetch_blob(id);
                                }
                                let unit = Unit {
                                    job: job.clone(),
                                    first,
                                    count,
                                };
                                if !feed.send(unit) {
                                    return Err(Error::Poisoned("restore workers stopped".into()));
                                }
                            }
                        }
                    }
                }
                Ok(())
            },
        );
        c.report.failed.extend(failures.into_iter().flatten());
        r?;
        // Directory metadata last, deepest first, so creating children
        // does not disturb their times. Only directories this restore
        // created (opening them checks they still are ours).
        for (rel, meta) in dirs_meta.iter().rev() {
            if !c.created.contains_key(rel) {
                continue;
            }
            let fd = c.dir(rel)?;
            apply_meta_fd(&*fd, meta, owners).ctx("set metadata", display_path(rel))?;
        }
        if let (Some(meta), true) = (root_meta, created_target) {
            apply_meta_fd(&*target_fd, meta, owners).ctx("set metadata", target)?;
        }
        Ok(())
    })();
    pb.finish_and_clear();
    result?;
    report.failed.sort();
    Ok(report)
}

/// Read, verify and write one unit. Returns the bytes written.
fn write_unit(repo: &Repository, u: &Unit) -> u64 {
    let job = &u.job;
    if job.failed.lock().is_some() {
        return 0;
    }
    let mut n = 0;
    for b in u.first..u.first + u.count {
        let id = &job.blocks[b as usize];
        let (off, want) = job.spans.span(b as usize);
        let want = want as usize;
        let data = match repo.read_blob(id) {
            Ok(d) => d,
            Err(e) => {
                job.failed
                    .lock()
                    .get_or_insert(format!("{}: block {b} at offset {off}: {e}", job.display));
                return n;
            }
        };
        if data.len() != want {
            job.failed.lock().get_or_insert(format!(
                "{}: block {b} is {} bytes, expected {want}",
                job.display,
                data.len()
            ));
            return n;
        }
        // All-zero blocks stay holes (the file was sized with set_len).
        if data.iter().any(|x| *x != 0) {
            let written = {
                let _one_writer = job.writing.lock();
                job.file.write_all_at(&data, off)
            };
            if let Err(e) = written {
                job.failed
                    .lock()
                    .get_or_insert(format!("{}: write: {e}", job.display));
                return n;
            }
        }
        n += want as u64;
    }
    n
}

/// Called after each unit: the last one sets the file's metadata, or
/// removes the file if any of its blocks failed. Returns a failure text.
fn finish_if_last(job: &Arc<FileJob>, owners: bool) -> Option<String> {
    if job.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
        return None;
    }
    let failed = job.failed.lock().clone();
    if let Some(why) = failed {
        // Never leave wrong bytes behind, under any of its names.
        let _ = rustix::fs::unlinkat(&*job.parent, &job.name[..], AtFlags::empty());
        if let Some(l) = &job.linked {
            let names = l.names.lock();
            l.failed.store(true, Ordering::Release);
            for (dir, name) in names.iter() {
                let _ = rustix::fs::unlinkat(&**dir, &name[..], AtFlags::empty());
            }
        }
        return Some(why);
    }
    if let Err(e) = apply_meta_fd(&job.file, &job.meta, owners) {
        return Some(format!("{}: set metadata: {e}", job.display));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn dir_fd(p: &Path) -> OwnedFd {
        sys::open_dir_at(rustix::fs::CWD, p.as_os_str().as_encoded_bytes()).unwrap()
    }

    fn fifo(p: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    #[test]
    fn what_restore_did_not_create_is_never_touched() {
        let t = tempfile::tempdir().unwrap();
        let d = dir_fd(t.path());
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"secret").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A symlink swapped in where a FIFO was made.
        std::os::unix::fs::symlink(&victim, t.path().join("swapped")).unwrap();
        let open_created = |name: &[u8]| -> Result<(OwnedFd, (u64, u64))> {
            let fd = rustix::fs::openat(&d, name, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty())
                .ctx("open", "x")?;
            let key = check_ours(&fd, libc::S_IFIFO, name)?;
            Ok((fd, key))
        };
        assert!(open_created(b"swapped").is_err());
        // Another user's FIFO.
        fifo(&t.path().join("theirs"));
        std::os::unix::fs::lchown(t.path().join("theirs"), Some(65534), Some(65534)).unwrap();
        assert!(open_created(b"theirs").is_err());
        // A second name of an existing object (a hard link to it).
        fifo(&t.path().join("one"));
        std::fs::hard_link(t.path().join("one"), t.path().join("two")).unwrap();
        assert!(open_created(b"two").is_err());
        // Our own new FIFO: metadata lands on it, without setuid unless
        // owners are restored.
        fifo(&t.path().join("mine"));
        let (fd, _) = open_created(b"mine").unwrap();
        let meta = Meta {
            mode: libc::S_IFIFO | 0o4751,
            uid: 0,
            gid: 0,
            mtime: crate::snapshot::manifest::Time {
                sec: 12345,
                nsec: 6,
            },
            ctime_ns: 0,
            ino: 1,
            xattrs: vec![],
        };
        apply_meta_opath(&fd, &meta, false, false).unwrap();
        let m = std::fs::symlink_metadata(t.path().join("mine")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o751);
        assert_eq!(m.mtime(), 12345);
        apply_meta_opath(&fd, &meta, true, false).unwrap();
        let m = std::fs::symlink_metadata(t.path().join("mine")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o4751);
        let v = std::fs::metadata(&victim).unwrap();
        assert_eq!(v.mode() & 0o7777, 0o600);
    }
}
