//! The live filesystem: every operation passes through to the backing
//! directory and every change is recorded in the journal.
//!
//! Operations return `Result<_, Errno>` and never panic; the fuser adapter
//! (`adapter.rs`) only matches and replies. All backing access goes through
//! the `O_PATH` descriptors of the inode table and `*at` calls with
//! `O_NOFOLLOW`; the few calls that have no such form go through
//! `/proc/self/fd/N` of the node's own descriptor, never through a path
//! built from names.
//!
//! Invariant: a handler does the backing syscall, records the change, and
//! replies. No hashing or compression happens here.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{Errno, FileAttr, TimeOrNow};
use parking_lot::{Mutex, RwLock};
use rustix::fs::{AtFlags, Mode, OFlags};

use super::creds::{as_caller, Caller};
use super::inode::{Inode, InodeTable, ROOT};
use crate::error::{OrErrno, ToErrno};
use crate::track::keep::Outcome;
use crate::track::{FileKey, FsEvent, Recorder};
use crate::util::bytes::read_full;
use crate::util::sys::fuse_file_type;
use crate::util::time;

/// The name reserved at the root for the snapshot views.
pub use crate::snapshot::SNAPSHOTS_DIR;

pub type FsResult<T> = Result<T, Errno>;

/// Options of a live mount.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// Serve read-only opens with kernel passthrough.
    pub passthrough_reads: bool,
    /// Attribute and entry cache time.
    pub ttl: Duration,
    /// A backing directory hidden from the mount (the repository when it
    /// lives inside the backing directory).
    pub hidden: Option<FileKey>,
    /// The checkpoint fast path's patterns (`None`: off). See
    /// [`super::fastpath`].
    pub checkpoints: Option<super::fastpath::CheckpointPatterns>,
    /// Send a close event for every file written (`--on-close` globs are
    /// set); otherwise only for checkpoints (files matching the patterns
    /// and checkpoint folders' markers), when the flusher listens.
    pub all_close_events: bool,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            passthrough_reads: true,
            ttl: Duration::from_secs(1),
            hidden: None,
            checkpoints: None,
            all_close_events: false,
        }
    }
}

/// How long a rewrite of a checkpoint no snapshot holds yet waits for
/// one (then it goes on, and that version is lost).
pub const REWRITE_WAIT: Duration = Duration::from_secs(30);
/// FUSE threads that may wait for such a snapshot at once.
const MAX_REWRITE_WAITERS: usize = 2;
/// How long a keep or a rewrite waits for a checkpoint's writer, whose
/// close began, to be released.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// An entry reply: node id and attributes.
pub struct Entry {
    pub attr: FileAttr,
}

/// An open file or directory.
pub struct OpenFile {
    pub inode: Arc<Inode>,
    /// The backing file, opened with the open's flags. A read-only open
    /// served by passthrough does not open it: the kernel got the inode's
    /// `O_PATH` descriptor as its backing file (see `LiveFs::open`), and
    /// this is opened only if a request on the handle needs it (fsync,
    /// copy_file_range, an ioctl...): [`OpenFile::file`].
    file: OnceLock<File>,
    /// The open's flags (to open `file` on demand).
    flags: i32,
    pub writable: bool,
    /// Something was written through this handle.
    wrote: std::sync::atomic::AtomicBool,
    /// Counted as a passthrough open of its inode.
    passthrough: std::sync::atomic::AtomicBool,
    /// A checkpoint fast-path writer (held by the tracker while open).
    fast: std::sync::atomic::AtomicBool,
    /// Created or truncated by a checkpoint's name (a pattern or a
    /// folder's marker): its close is an event for on-close snapshots.
    checkpoint: std::sync::atomic::AtomicBool,
    /// Opened by exec(2).
    exec: std::sync::atomic::AtomicBool,
    /// The backing descriptor is O_APPEND (an append-only file).
    append: bool,
    /// Its close began (FLUSH came).
    closing: std::sync::atomic::AtomicBool,
    /// A writer through passthrough outside the fast path (see
    /// `Recorder::bypass`).
    bypass: bool,
    /// The kernel backing id this open uses (kept alive while open).
    backing: Mutex<Option<Arc<fuser::BackingId>>>,
    dir: Option<Mutex<rustix::fs::Dir>>,
}

impl OpenFile {
    fn new(inode: Arc<Inode>, file: Option<File>, flags: i32, writable: bool) -> OpenFile {
        let append = file.as_ref().is_some_and(|f| {
            rustix::fs::fcntl_getfl(f).is_ok_and(|fl| fl.contains(OFlags::APPEND))
        });
        let cell = OnceLock::new();
        if let Some(f) = file {
            let _ = cell.set(f);
        }
        OpenFile {
            inode,
            file: cell,
            flags,
            writable,
            wrote: std::sync::atomic::AtomicBool::new(false),
            passthrough: std::sync::atomic::AtomicBool::new(false),
            fast: std::sync::atomic::AtomicBool::new(false),
            checkpoint: std::sync::atomic::AtomicBool::new(false),
            closing: std::sync::atomic::AtomicBool::new(false),
            exec: std::sync::atomic::AtomicBool::new(false),
            append,
            bypass: false,
            backing: Mutex::new(None),
            dir: None,
        }
    }

    /// The backing file of this open, opened now if it was not.
    pub fn file(&self) -> FsResult<&File> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        let f = reopen(&self.inode, self.flags)?;
        Ok(self.file.get_or_init(|| f))
    }
}

impl OpenReply {
    /// The handle of the open.
    pub fn fh(&self) -> u64 {
        match self {
            OpenReply::Plain { fh, .. } | OpenReply::Passthrough { fh, .. } => *fh,
        }
    }
}

/// How an open should be answered.
pub enum OpenReply {
    Plain {
        fh: u64,
        keep_cache: bool,
    },
    /// Kernel passthrough with this backing id (shared by every
    /// passthrough open of the file).
    Passthrough {
        fh: u64,
        backing: Arc<fuser::BackingId>,
    },
}

/// Makes a kernel backing id of an open backing file (the reply's
/// `open_backing`: an ioctl on the FUSE connection).
pub type Backer<'a> = &'a dyn Fn(BorrowedFd<'_>) -> std::io::Result<fuser::BackingId>;

/// The ioctls passed through to the backing file (by type and number:
/// 32-bit callers encode another size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IoctlKind {
    GetFlags,
    SetFlags,
    FsGetXattr,
    FsSetXattr,
}

const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;
/// sizeof(struct fsxattr).
const FSXATTR_LEN: usize = 28;

impl IoctlKind {
    fn of(cmd: u32) -> Option<IoctlKind> {
        match cmd & 0xffff {
            0x6601 => Some(IoctlKind::GetFlags),
            0x6602 => Some(IoctlKind::SetFlags),
            0x581f => Some(IoctlKind::FsGetXattr),
            0x5820 => Some(IoctlKind::FsSetXattr),
            _ => None,
        }
    }
}

/// A file changed this recently is read through the daemon, not by
/// passthrough (see [`LiveFs::open_mode`]).
pub const BUSY_WINDOW: Duration = Duration::from_secs(5);

/// Open files by how they are served (see [`LiveFs::open_modes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenCounts {
    /// Checkpoint fast-path writers.
    pub fast: u64,
    /// Other writers through passthrough (beside passthrough readers).
    pub bypass: u64,
    /// Readers through passthrough.
    pub passthrough: u64,
    /// Served by the daemon.
    pub daemon: u64,
}

/// How an open is served (see [`LiveFs::open_mode`]).
enum Mode2 {
    Passthrough(Arc<fuser::BackingId>),
    Cached { keep_cache: bool },
}

pub struct LiveFs {
    pub inodes: InodeTable,
    handles: RwLock<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    /// Where every change is recorded (and copy-before-write happens).
    track: Recorder,
    pub opts: LiveOptions,
    /// Set once the session exists; used to drop stale kernel attributes.
    pub notifier: Arc<OnceLock<fuser::Notifier>>,
    passthrough_ok: std::sync::atomic::AtomicBool,
    /// Whether the kernel takes an `O_PATH` descriptor as a backing file
    /// (`PATH_BACKING_*`; see `path_backing`).
    path_backing: std::sync::atomic::AtomicU8,
    /// Why passthrough is not used, once the kernel said so.
    passthrough_note: Mutex<Option<String>>,
    /// FUSE threads waiting for a snapshot before a checkpoint's rewrite.
    rewrite_waiters: std::sync::atomic::AtomicUsize,
    /// The kernel leaves killing setuid/setgid on write and truncation to
    /// the daemon (`FUSE_HANDLE_KILLPRIV_V2` negotiated).
    killpriv: std::sync::atomic::AtomicBool,
    /// Absolute path of the backing directory (for event paths).
    root_path: std::path::PathBuf,
}

pub fn to_system_time(sec: i64, nsec: u64) -> SystemTime {
    time::parts_to_system_time(sec, nsec.min(999_999_999) as u32)
}

pub fn attr_of(nodeid: u64, st: &rustix::fs::Stat) -> FileAttr {
    FileAttr {
        ino: fuser::INodeNo(nodeid),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: to_system_time(st.st_atime, st.st_atime_nsec),
        mtime: to_system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: to_system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: SystemTime::UNIX_EPOCH,
        kind: fuse_file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn name_bytes(name: &OsStr) -> FsResult<&[u8]> {
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&b'/') || b.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(b)
}

fn timespec(t: Option<TimeOrNow>) -> rustix::fs::Timespec {
    match t {
        None => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT as _,
        },
        Some(TimeOrNow::Now) => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW as _,
        },
        Some(TimeOrNow::SpecificTime(st)) => {
            let (sec, nsec) = time::system_time_to_parts(st);
            rustix::fs::Timespec {
                tv_sec: sec,
                tv_nsec: nsec as _,
            }
        }
    }
}

/// `LiveFs::path_backing`: not asked yet, accepted, refused.
const PATH_BACKING_UNKNOWN: u8 = 0;
const PATH_BACKING_YES: u8 = 1;
const PATH_BACKING_NO: u8 = 2;

/// Open the backing file of `n` with the open flags `flags` (through
/// its descriptor in /proc/self/fd: never by a path an attacker may
/// change).
fn reopen(n: &Arc<Inode>, flags: i32) -> FsResult<File> {
    let path = n.proc_path().or_errno()?;
    let open = |f: OFlags| rustix::fs::openat(rustix::fs::CWD, path.as_str(), f, Mode::empty());
    let fd = match open(backing_open_flags(flags) | OFlags::NONBLOCK) {
        // An append-only file (chattr +a) is opened for writing only
        // with O_APPEND; the daemon's writes then land at its end
        // (see `write`).
        Err(rustix::io::Errno::PERM) if writable(flags) && flags & libc::O_APPEND != 0 => {
            open(backing_open_flags(flags) | OFlags::APPEND | OFlags::NONBLOCK)
        }
        r => r,
    }
    .or_errno()?;
    // Clear O_NONBLOCK (used only so a FIFO open cannot hang).
    let f = File::from(fd);
    let fl = rustix::fs::fcntl_getfl(&f).or_errno()?;
    if (flags & libc::O_NONBLOCK) == 0 {
        rustix::fs::fcntl_setfl(&f, fl - OFlags::NONBLOCK).or_errno()?;
    }
    Ok(f)
}

/// Open flags passed through to the backing file. O_APPEND is dropped
/// (the kernel sends the offsets; a backing O_APPEND would ignore them),
/// O_DIRECT is dropped (request buffers are not aligned), O_CREAT/O_EXCL/
/// O_NOCTTY have no meaning on an existing object.
fn backing_open_flags(flags: i32) -> OFlags {
    let keep = flags
        & !(FMODE_EXEC_FLAG
            | libc::O_APPEND
            | libc::O_DIRECT
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_NOCTTY
            | libc::O_NOFOLLOW);
    OFlags::from_bits_retain(keep as u32) | OFlags::CLOEXEC
}

/// How many node descriptors to keep cached: the open-file limit minus a
/// reserve for open files, pins, packs and the index.
fn fd_budget() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    (limit.saturating_sub(4096) as usize).max(limit as usize / 2)
}

/// The open flag the kernel adds to exec(2)'s open of the program
/// (`__FMODE_EXEC`), passed on to FUSE.
const FMODE_EXEC_FLAG: i32 = 0x20;

fn writable(flags: i32) -> bool {
    matches!(flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR)
}

impl LiveFs {
    /// A live filesystem over the backing directory `root` (an `O_PATH`
    /// or directory descriptor).
    pub fn new(root: OwnedFd, track: Recorder, opts: LiveOptions) -> std::io::Result<LiveFs> {
        let st = rustix::fs::fstat(&root)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(std::io::Error::other("backing root is not a directory"));
        }
        let root_path = {
            use std::os::fd::AsRawFd;
            std::fs::read_link(format!("/proc/self/fd/{}", root.as_raw_fd())).unwrap_or_default()
        };
        Ok(LiveFs {
            root_path,
            inodes: InodeTable::new(root, FileKey::of(&st), fd_budget()),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            track,
            passthrough_ok: std::sync::atomic::AtomicBool::new(opts.passthrough_reads),
            path_backing: std::sync::atomic::AtomicU8::new(PATH_BACKING_UNKNOWN),
            passthrough_note: Mutex::new(None),
            rewrite_waiters: std::sync::atomic::AtomicUsize::new(0),
            killpriv: std::sync::atomic::AtomicBool::new(false),
            opts,
            notifier: Arc::new(OnceLock::new()),
        })
    }

    /// The path (relative to the mount root) of an open descriptor.
    fn rel_path_of(&self, fd: &impl std::os::fd::AsRawFd) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let rel = link.strip_prefix(&self.root_path).ok()?;
        Some(rel.as_os_str().as_bytes().to_vec())
    }

    fn emit(&self, e: impl FnOnce() -> Option<FsEvent>) {
        self.track.emit(e);
    }

    /// Record a directory entry change and keep the directory reachable.
    fn entry_changed(&self, dir: &Arc<Inode>, name: &[u8]) {
        self.track.entry(&dir.key, name, dir.fd().ok());
    }

    /// During a capture: keep `parent/name` reachable before it is renamed
    /// or removed.
    fn pin_before_move(&self, parent: &Arc<Inode>, name: &[u8]) {
        self.track.before_move(|| {
            let pfd = parent.fd().ok()?;
            let fd = rustix::fs::openat(
                &*pfd,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()?;
            let st = rustix::fs::fstat(&fd).ok()?;
            Some((FileKey::of(&st), Arc::new(fd)))
        });
    }

    /// During a capture: save the blocks `[first, last]` of a regular file
    /// that the snapshot still needs, before they change.
    fn cow_change(&self, n: &Arc<Inode>, first: u64, last: u64) -> FsResult<()> {
        if !self.track.capturing() || n.kind != libc::S_IFREG {
            return Ok(());
        }
        let file: std::cell::OnceCell<File> = std::cell::OnceCell::new();
        let proc = n.proc_path().or_errno()?;
        let reader = |off: u64, len: usize| -> std::io::Result<Vec<u8>> {
            if file.get().is_none() {
                let fd = rustix::fs::openat(
                    rustix::fs::CWD,
                    proc.as_str(),
                    OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
                    Mode::empty(),
                )?;
                let _ = file.set(File::from(fd));
            }
            let f = file
                .get()
                .ok_or_else(|| std::io::Error::other("no reader"))?;
            read_full(f, off, len)
        };
        let size_now =
            || -> std::io::Result<u64> { Ok(rustix::fs::fstat(&*n.fd()?)?.st_size as u64) };
        self.track
            .before_change(&n.key, first, last, &reader, &size_now)
            .or_errno()
    }

    fn block_of(&self, offset: u64) -> u64 {
        offset / self.track.block_size()
    }

    pub fn disable_passthrough(&self, why: &str) {
        if self.passthrough_ok.swap(false, Ordering::Relaxed) {
            *self.passthrough_note.lock() = Some(why.to_string());
        }
    }

    /// Handles open for writing on the checkpoint fast path.
    pub fn fast_path_open(&self) -> u64 {
        self.open_modes().fast
    }

    /// How the open files are served now.
    pub fn open_modes(&self) -> OpenCounts {
        let mut c = OpenCounts::default();
        for h in self.handles.read().values() {
            if h.dir.is_some() {
                continue;
            }
            if h.fast.load(Ordering::Relaxed) {
                c.fast += 1;
            } else if h.bypass {
                c.bypass += 1;
            } else if h.passthrough.load(Ordering::Relaxed) {
                c.passthrough += 1;
            } else {
                c.daemon += 1;
            }
        }
        c
    }

    /// How reads are served, for `status`.
    pub fn read_mode(&self) -> String {
        if self.passthrough_enabled() {
            return "kernel passthrough".into();
        }
        match &*self.passthrough_note.lock() {
            Some(why) => format!("through the daemon ({why})"),
            None => "through the daemon (passthrough off)".into(),
        }
    }

    /// The kernel negotiated `FUSE_HANDLE_KILLPRIV_V2`: the daemon kills
    /// setuid/setgid bits on write and truncation.
    pub fn set_killpriv(&self, on: bool) {
        self.killpriv.store(on, Ordering::Relaxed);
    }

    /// Drop setuid/setgid from a regular file changed by process `pid`
    /// (truncation, fallocate, copy into it), as the VFS would: the
    /// daemon's own calls run as root and would keep them.
    fn kill_privs(&self, n: &Arc<Inode>, pid: u32) -> FsResult<()> {
        if !self.killpriv.load(Ordering::Relaxed) || n.kind != libc::S_IFREG {
            return Ok(());
        }
        let st = self.stat_node(n)?;
        if let Some(mode) = super::creds::mode_without_privs(st.st_mode, st.st_gid, pid) {
            self.chmod_node(n, mode)?;
        }
        Ok(())
    }

    fn chmod_node(&self, n: &Arc<Inode>, mode: u32) -> FsResult<()> {
        rustix::fs::chmodat(
            rustix::fs::CWD,
            n.proc_path().or_errno()?.as_str(),
            Mode::from_raw_mode(mode & 0o7777),
            AtFlags::empty(),
        )
        .or_errno()?;
        self.track.meta(&n.key);
        self.invalidate(n.nodeid);
        Ok(())
    }

    /// May a file with `mode` named `name` (path on demand) take the
    /// checkpoint fast path? Never a setuid/setgid file (writes through
    /// passthrough run with the daemon's credentials, which keep them).
    fn fast_path(&self, mode: u32, name: &[u8], path: impl FnOnce() -> Option<Vec<u8>>) -> bool {
        let Some(p) = &self.opts.checkpoints else {
            return false;
        };
        self.passthrough_enabled()
            && mode & (libc::S_ISUID | libc::S_ISGID) == 0
            && p.matches(name, path)
    }

    /// Is a file named `name` (path on demand) a checkpoint, or a
    /// checkpoint folder's marker, whose close on-close snapshots hear of?
    fn is_checkpoint(&self, name: &[u8], path: impl FnOnce() -> Option<Vec<u8>>) -> bool {
        let Some(p) = &self.opts.checkpoints else {
            return false;
        };
        super::fastpath::may_be_marker(name) || p.matches(name, path)
    }

    pub fn passthrough_enabled(&self) -> bool {
        self.passthrough_ok.load(Ordering::Relaxed)
    }

    fn node(&self, nodeid: u64) -> FsResult<Arc<Inode>> {
        self.inodes.get(nodeid).ok_or(Errno::ESTALE)
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.handles.read().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    fn add_handle(&self, h: OpenFile) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.write().insert(fh, Arc::new(h));
        fh
    }

    fn stat_node(&self, n: &Arc<Inode>) -> FsResult<rustix::fs::Stat> {
        rustix::fs::fstat(&*n.fd().or_errno()?).or_errno()
    }

    pub fn attr(&self, n: &Arc<Inode>) -> FsResult<FileAttr> {
        Ok(attr_of(n.nodeid, &self.stat_node(n)?))
    }

    /// Is `name` in `parent` a name the mount hides or reserves?
    fn reserved(&self, parent: &Arc<Inode>, name: &[u8]) -> bool {
        parent.nodeid == ROOT && name == SNAPSHOTS_DIR.as_bytes()
    }

    /// Refuse mutations that name the hidden repository or the reserved
    /// `.snapshots` entry.
    fn check_mutable(&self, parent: &Arc<Inode>, name: &[u8]) -> FsResult<()> {
        if self.reserved(parent, name) {
            return Err(Errno::EPERM);
        }
        if let Some(hidden) = self.opts.hidden {
            if let Ok(st) =
                rustix::fs::statat(&*parent.fd().or_errno()?, name, AtFlags::SYMLINK_NOFOLLOW)
            {
                if FileKey::of(&st) == hidden {
                    return Err(Errno::EPERM);
                }
            }
        }
        Ok(())
    }

    fn is_hidden(&self, st: &rustix::fs::Stat) -> bool {
        self.opts.hidden == Some(FileKey::of(st))
    }

    /// Drop the kernel's cached attributes of a node (after changes the
    /// kernel cannot see, such as nlink and ctime after link/unlink/rename).
    fn invalidate(&self, nodeid: u64) {
        if let Some(n) = self.notifier.get() {
            let _ = n.inval_inode(fuser::INodeNo(nodeid), -1, 0);
        }
    }

    /// The node currently at `parent/name`, if the kernel knows it.
    fn known_child(&self, parent: &Arc<Inode>, name: &[u8]) -> Option<Arc<Inode>> {
        let st = rustix::fs::statat(&*parent.fd().ok()?, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        self.inodes.find(&FileKey::of(&st))
    }

    // ---- lookups ----------------------------------------------------

    fn do_lookup(&self, parent: &Arc<Inode>, name: &[u8]) -> FsResult<Entry> {
        let fd = rustix::fs::openat(
            &*parent.fd().or_errno()?,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .or_errno()?;
        let st = rustix::fs::fstat(&fd).or_errno()?;
        if self.is_hidden(&st) {
            return Err(Errno::ENOENT);
        }
        let n = self.inodes.lookup(fd, &st);
        Ok(Entry {
            attr: attr_of(n.nodeid, &st),
        })
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let p = self.node(parent)?;
        let name = name_bytes(name)?;
        if self.reserved(&p, name) {
            return Err(Errno::ENOENT);
        }
        self.do_lookup(&p, name)
    }

    pub fn forget(&self, nodeid: u64, n: u64) {
        self.inodes.forget(nodeid, n);
    }

    pub fn getattr(&self, nodeid: u64, fh: Option<u64>) -> FsResult<FileAttr> {
        if let Some(fh) = fh {
            if let Ok(h) = self.handle(fh) {
                // A handle whose file was not opened (passthrough by the
                // inode's O_PATH descriptor) is stat'ed by that one.
                let st = match h.file.get() {
                    Some(f) => rustix::fs::fstat(f),
                    None => rustix::fs::fstat(&*h.inode.fd().or_errno()?),
                }
                .or_errno()?;
                return Ok(attr_of(nodeid, &st));
            }
        }
        self.attr(&self.node(nodeid)?)
    }

    // ---- attributes -------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &self,
        nodeid: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<u64>,
        pid: u32,
    ) -> FsResult<FileAttr> {
        let n = self.node(nodeid)?;
        let _change = self.track.change();
        let proc = n.proc_path().or_errno()?;
        let is_link = n.kind == libc::S_IFLNK;
        if uid.is_some() || gid.is_some() {
            let u = uid.map(rustix::fs::Uid::from_raw);
            let g = gid.map(rustix::fs::Gid::from_raw);
            rustix::fs::chownat(&*n.fd().or_errno()?, "", u, g, AtFlags::EMPTY_PATH).or_errno()?;
        }
        if let Some(mode) = mode {
            if is_link {
                return Err(Errno::EOPNOTSUPP);
            }
            rustix::fs::chmodat(
                rustix::fs::CWD,
                proc.as_str(),
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )
            .or_errno()?;
        }
        if let Some(size) = size {
            let handle = fh
                .and_then(|fh| self.handle(fh).ok())
                .filter(|h| h.writable);
            let old = self.stat_node(&n)?.st_size as u64;
            if size < old {
                self.cow_change(&n, self.block_of(size), u64::MAX)?;
            }
            match handle {
                Some(h) => rustix::fs::ftruncate(h.file()?, size).or_errno()?,
                None => {
                    let f = rustix::fs::openat(
                        rustix::fs::CWD,
                        proc.as_str(),
                        OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
                        Mode::empty(),
                    )
                    .or_errno()?;
                    rustix::fs::ftruncate(&f, size).or_errno()?;
                }
            }
            self.track.resize(&n.key, old, size);
            if mode.is_none() {
                self.kill_privs(&n, pid)?;
            }
        }
        if atime.is_some() || mtime.is_some() {
            let ts = rustix::fs::Timestamps {
                last_access: timespec(atime),
                last_modification: timespec(mtime),
            };
            rustix::fs::utimensat(rustix::fs::CWD, proc.as_str(), &ts, AtFlags::empty())
                .or_errno()?;
        }
        if mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some() || mtime.is_some() {
            self.track.meta(&n.key);
        }
        self.attr(&n)
    }

    pub fn readlink(&self, nodeid: u64) -> FsResult<Vec<u8>> {
        let n = self.node(nodeid)?;
        rustix::fs::readlinkat(&*n.fd().or_errno()?, "", Vec::new())
            .map(|c| c.into_bytes())
            .or_errno()
    }

    // ---- namespace --------------------------------------------------

    fn created(&self, parent: &Arc<Inode>, name: &[u8]) -> FsResult<Entry> {
        self.created_or_opened(parent, name, true)
    }

    /// After a create: the entry, with the object marked created in the
    /// journal only if it is `new` (an open with `O_CREAT` of a file the
    /// kernel had no entry for in its cache also arrives as a create:
    /// that file keeps what the snapshots know of it).
    fn created_or_opened(&self, parent: &Arc<Inode>, name: &[u8], new: bool) -> FsResult<Entry> {
        let e = self.do_lookup(parent, name)?;
        if new {
            if let Some(n) = self.inodes.get(e.attr.ino.0) {
                self.track.created(&n.key);
            }
        }
        self.entry_changed(parent, name);
        Ok(e)
    }

    pub fn mknod(
        &self,
        c: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> FsResult<Entry> {
        let p = self.node(parent)?;
        let name = name_bytes(name)?;
        let _change = self.track.change();
        self.check_mutable(&p, name)?;
        {
            let _as = as_caller(c)?;
            let ft = rustix::fs::FileType::from_raw_mode(mode);
            rustix::fs::mknodat(
                &*p.fd().or_errno()?,
                name,
                ft,
                Mode::from_raw_mode(mode & 0o7777),
                rdev as u64,
            )
            .or_errno()?;
        }
        self.created(&p, name)
    }

    pub fn mkdir(&self, c: Caller, parent: u64, name: &OsStr, mode: u32) -> FsResult<Entry> {
        let p = self.node(parent)?;
        let name = name_bytes(name)?;
        let _change = self.track.change();
        self.check_mutable(&p, name)?;
        {
            let _as = as_caller(c)?;
            rustix::fs::mkdirat(
                &*p.fd().or_errno()?,
                name,
                Mode::from_raw_mode(mode & 0o7777),
            )
            .or_errno()?;
        }
        self.created(&p, name)
    }

    pub fn symlink(&self, c: Caller, parent: u64, name: &OsStr, target: &[u8]) -> FsResult<Entry> {
        let p = self.node(parent)?;
        let name = name_bytes(name)?;
        let _change = self.track.change();
        self.check_mutable(&p, name)?;
        {
            let _as = as_caller(c)?;
            rustix::fs::symlinkat(target, &*p.fd().or_errno()?, name).or_errno()?;
        }
        self.created(&p, name)
    }

    /// A checkpoint about to be deleted or replaced at `parent/name`
    /// whose last closed content no snapshot holds yet: move it aside
    /// (see `track::keep`) so that the next snapshot captures it. Returns
    /// the keep's outcome; `NotKept` when it is not such a file (or could
    /// not be kept: the caller then removes it as usual). Never an error:
    /// a delete does not fail because of this.
    fn keep_aside(
        &self,
        parent: &Arc<Inode>,
        name: &[u8],
        victim: &Arc<Inode>,
        deleting: bool,
    ) -> Outcome {
        let Some(keeper) = self.track.keeper() else {
            return Outcome::NotKept;
        };
        if victim.kind != libc::S_IFREG
            || !self.track.unsaved(&victim.key)
            || !self.writers_gone(&victim.key)
        {
            return Outcome::NotKept;
        }
        let Ok(pfd) = parent.fd() else {
            return Outcome::NotKept;
        };
        match rustix::fs::statat(&*pfd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st)
                if FileKey::of(&st) == victim.key
                    && st.st_nlink == 1
                    && st.st_dev == keeper.dev() => {}
            _ => return Outcome::NotKept,
        }
        let Some(dir) = self.rel_path_of(&*pfd) else {
            return Outcome::NotKept;
        };
        let path = if dir.is_empty() {
            name.to_vec()
        } else {
            [&dir[..], b"/", name].concat()
        };
        // A checkpoint: by its name, or as a file of a checkpoint folder
        // (a Trainer `checkpoint-N/`, or one a checkpoint was kept from).
        let folder = dir.rsplit(|b| *b == b'/').next().unwrap_or(&dir);
        let checkpoint = self.is_checkpoint(name, || Some(path.clone()))
            || (!dir.is_empty() && folder.starts_with(b"checkpoint-"))
            || (deleting && keeper.kept_from(&parent.key));
        if !checkpoint {
            return Outcome::NotKept;
        }
        let dirs = match self.dir_metas(&dir) {
            Some(d) => d,
            None => return Outcome::NotKept,
        };
        match keeper.keep(&pfd, parent.key, name, path, dirs, victim.key) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(
                    "a checkpoint could not be kept aside before its removal ({e}): removed"
                );
                Outcome::NotKept
            }
        }
    }

    /// A checkpoint about to be rewritten (truncated on open) whose last
    /// closed content no snapshot holds yet: wait (at most
    /// [`REWRITE_WAIT`]) for a snapshot that holds it, so that no completed
    /// checkpoint is lost to a job saving under the same name. Only with
    /// checkpoint versions on (a keeper is set); never in a change.
    fn capture_before_rewrite(&self, n: &Arc<Inode>) {
        if self.track.keeper().is_none()
            || n.kind != libc::S_IFREG
            || !self.track.unsaved(&n.key)
            || !self.writers_gone(&n.key)
        {
            return;
        }
        let Some(path) = n.fd().ok().and_then(|fd| self.rel_path_of(&*fd)) else {
            return;
        };
        let name = path.rsplit(|b| *b == b'/').next().unwrap_or(&path).to_vec();
        let folder = path
            .rsplit(|b| *b == b'/')
            .nth(1)
            .filter(|_| path.contains(&b'/'))
            .unwrap_or(b"");
        if !(self.is_checkpoint(&name, || Some(path.clone())) || folder.starts_with(b"checkpoint-"))
        {
            return;
        }
        // At most MAX_REWRITE_WAITERS FUSE threads wait at once: the
        // others keep serving the mount (a rewrite beyond them goes on).
        if self.rewrite_waiters.fetch_add(1, Ordering::SeqCst) >= MAX_REWRITE_WAITERS {
            self.rewrite_waiters.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(
                path = %crate::snapshot::manifest::display_path(&path),
                "a checkpoint is rewritten before a snapshot could hold its last version (too many rewrites waiting)"
            );
            return;
        }
        let captured = self
            .track
            .capture_before_rewrite(n.key, path.clone(), REWRITE_WAIT);
        self.rewrite_waiters.fetch_sub(1, Ordering::SeqCst);
        if !captured {
            tracing::warn!(
                path = %crate::snapshot::manifest::display_path(&path),
                "a checkpoint is rewritten before a snapshot could hold its last version"
            );
        }
    }

    /// No handle is open for writing on the file `key`: true at once, or
    /// once the writers whose close began (a fast-path writer's FLUSH
    /// came: its RELEASE follows close(2) a moment later) are released,
    /// waiting at most [`CLOSE_WAIT`]; false while another writer has it
    /// open.
    fn writers_gone(&self, key: &FileKey) -> bool {
        let t0 = std::time::Instant::now();
        loop {
            let (open, closing) = {
                let handles = self.handles.read();
                let mut open = false;
                let mut closing = true;
                for h in handles.values() {
                    if h.writable && h.inode.key == *key {
                        open = true;
                        closing &= h.closing.load(Ordering::Relaxed);
                    }
                }
                (open, closing)
            };
            if !open && !self.track.is_held(key) {
                return true;
            }
            if !closing || t0.elapsed() >= CLOSE_WAIT {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The path and metadata of every directory from the top down to
    /// `dir` (relative to the root), as a kept file's record needs them.
    fn dir_metas(&self, dir: &[u8]) -> Option<Vec<(Vec<u8>, crate::snapshot::manifest::Meta)>> {
        let mut out = Vec::new();
        if dir.is_empty() {
            return Some(out);
        }
        let mut fd = self.inodes.root().fd().ok()?;
        let mut at: Vec<u8> = Vec::new();
        for c in dir.split(|b| *b == b'/') {
            let next = rustix::fs::openat(
                &*fd,
                c,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()?;
            let st = rustix::fs::fstat(&next).ok()?;
            let mut meta = crate::snapshot::manifest::meta_of(&st);
            meta.xattrs = crate::util::sys::read_xattrs_opath(&next).unwrap_or_default();
            if !at.is_empty() {
                at.push(b'/');
            }
            at.extend_from_slice(c);
            out.push((at.clone(), meta));
            fd = Arc::new(next);
        }
        Some(out)
    }

    fn remove(&self, parent: u64, name: &OsStr, flags: AtFlags) -> FsResult<()> {
        let p = self.node(parent)?;
        let name = name_bytes(name)?;
        let _change = self.track.change();
        self.check_mutable(&p, name)?;
        let victim = self.known_child(&p, name);
        self.pin_before_move(&p, name);
        let kept = match &victim {
            Some(v) if flags.is_empty() => self.keep_aside(&p, name, v, true),
            _ => Outcome::NotKept,
        };
        let removed = p
            .fd()
            .or_errno()
            .and_then(|fd| rustix::fs::unlinkat(&*fd, name, flags).or_errno());
        if let (Outcome::Kept(id), Some(k)) = (kept, self.track.keeper()) {
            match &removed {
                Ok(()) => k.seal(id),
                Err(_) => k.abandon(id),
            }
        }
        removed?;
        self.entry_changed(&p, name);
        if let Some(v) = victim {
            self.track.meta(&v.key);
            self.invalidate(v.nodeid);
        }
        Ok(())
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, AtFlags::empty())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, AtFlags::REMOVEDIR)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        let p = self.node(parent)?;
        let np = self.node(newparent)?;
        let name = name_bytes(name)?;
        let newname = name_bytes(newname)?;
        let _change = self.track.change();
        self.check_mutable(&p, name)?;
        self.check_mutable(&np, newname)?;
        let moved = self.known_child(&p, name);
        let replaced = self.known_child(&np, newname);
        self.pin_before_move(&p, name);
        self.pin_before_move(&np, newname);
        let rflags = rustix::fs::RenameFlags::from_bits_retain(flags);
        // A checkpoint about to be replaced is kept aside first (the
        // rename then finds the name free); put back if the rename fails.
        let kept = match (&replaced, &moved) {
            (Some(v), Some(m)) if rflags.is_empty() && v.key != m.key => {
                self.keep_aside(&np, newname, v, false)
            }
            _ => Outcome::NotKept,
        };
        if rflags.is_empty() {
            let r = p.fd().or_errno().and_then(|pfd| {
                np.fd()
                    .or_errno()
                    .and_then(|npfd| rustix::fs::renameat(&*pfd, name, &*npfd, newname).or_errno())
            });
            if let (Outcome::Kept(id), Some(k)) = (kept, self.track.keeper()) {
                match &r {
                    Ok(()) => k.seal(id),
                    Err(_) => k.abandon(id),
                }
            }
            r?;
        } else {
            rustix::fs::renameat_with(
                &*p.fd().or_errno()?,
                name,
                &*np.fd().or_errno()?,
                newname,
                rflags,
            )
            .or_errno()?;
        }
        self.entry_changed(&p, name);
        self.entry_changed(&np, newname);
        if let Some(m) = &moved {
            self.emit(|| {
                let dir = self.rel_path_of(&*np.fd().ok()?)?;
                let path = if dir.is_empty() {
                    newname.to_vec()
                } else {
                    [&dir[..], b"/", newname].concat()
                };
                Some(FsEvent::RenamedTo { key: m.key, path })
            });
        }
        for n in moved.iter().chain(replaced.iter()) {
            self.track.meta(&n.key);
            self.invalidate(n.nodeid);
        }
        Ok(())
    }

    pub fn link(&self, nodeid: u64, newparent: u64, newname: &OsStr) -> FsResult<Entry> {
        let n = self.node(nodeid)?;
        let np = self.node(newparent)?;
        let newname = name_bytes(newname)?;
        let _change = self.track.change();
        self.check_mutable(&np, newname)?;
        rustix::fs::linkat(
            rustix::fs::CWD,
            n.proc_path().or_errno()?.as_str(),
            &*np.fd().or_errno()?,
            newname,
            AtFlags::SYMLINK_FOLLOW,
        )
        .or_errno()?;
        self.entry_changed(&np, newname);
        self.track.meta(&n.key);
        self.invalidate(n.nodeid);
        self.do_lookup(&np, newname)
    }

    // ---- files ------------------------------------------------------

    /// Decide how to serve an open of `n` and count it: passthrough
    /// (with the backing id its other passthrough opens use, if any),
    /// direct I/O, or the page cache.
    ///
    /// The kernel keeps one I/O mode per inode: every passthrough open of
    /// a file must use the same backing id, and no cached open may live
    /// beside them. The decision and the registration of a new backing id
    /// happen under the file's lock, so two opens arriving together agree
    /// (registering outside it gave two backing ids to one inode, and the
    /// kernel failed the second open with EIO). The counts here are never
    /// below the kernel's: an open counts before the kernel accepts it,
    /// and a RELEASE arrives after the kernel dropped the open.
    ///
    /// Files with setuid or setgid bits are never read by passthrough, so
    /// that a writer never joins passthrough opens of one: writes through
    /// passthrough run with the daemon's credentials, which keep the bits
    /// (the kernel drops them only for writes through the daemon). A
    /// writer joining passthrough opens of a file that got its bits while
    /// they were open drops them at open, as its first write would.
    fn open_mode(
        &self,
        n: &Arc<Inode>,
        file: BorrowedFd<'_>,
        write: bool,
        fast: bool,
        pid: u32,
        backer: Backer<'_>,
    ) -> FsResult<Mode2> {
        let privileged = || {
            rustix::fs::fstat(file)
                .map(|st| st.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0)
                .unwrap_or(true)
        };
        let mut m = n.opens.lock();
        let existing = if m.passthrough > 0 {
            m.backing.as_ref().and_then(|w| w.upgrade())
        } else {
            None
        };
        if let Some(b) = existing {
            // The kernel requires passthrough for every open of a file
            // that has passthrough opens (direct I/O included). A writer
            // then bypasses the daemon: see `serve`.
            if write && !fast && self.killpriv.load(Ordering::Relaxed) {
                let st = rustix::fs::fstat(file).or_errno()?;
                if let Some(mode) = super::creds::mode_without_privs(st.st_mode, st.st_gid, pid) {
                    rustix::fs::fchmod(file, Mode::from_raw_mode(mode)).or_errno()?;
                    self.track.meta(&n.key);
                    self.invalidate(n.nodeid);
                }
            }
            m.passthrough += 1;
            return Ok(Mode2::Passthrough(b));
        }
        // The checkpoint fast path: writes go to the backing file.
        // Otherwise passthrough for reads, except of a file written in the
        // last few seconds: a file being written (a database's, a log) is
        // read through the daemon, so that a writer opening it later is
        // tracked block by block (a writer joining passthrough readers
        // would bypass the daemon).
        let wanted = m.cached == 0
            && (fast
                || (!write
                    && self.passthrough_enabled()
                    && n.kind == libc::S_IFREG
                    && !self.track.changed_within(&n.key, BUSY_WINDOW)
                    && !privileged()));
        if wanted {
            match backer(file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    m.backing = Some(Arc::downgrade(&id));
                    m.passthrough += 1;
                    return Ok(Mode2::Passthrough(id));
                }
                Err(e) => {
                    tracing::info!(
                        "FUSE passthrough refused ({e}); files are served by the daemon"
                    );
                    self.disable_passthrough(&format!("the kernel refused passthrough: {e}"));
                }
            }
        }
        m.cached += 1;
        Ok(Mode2::Cached {
            keep_cache: !std::mem::take(&mut m.stale_cache),
        })
    }

    /// Count a handle and answer how its open is served. The caller holds
    /// the change gate when `write`.
    ///
    /// Without `file` (a read-only open, see `open`), the inode's `O_PATH`
    /// descriptor stands for it: passthrough registers it as the backing
    /// file, and the file is opened with `flags` only if the open is
    /// served otherwise.
    #[allow(clippy::too_many_arguments)]
    fn serve(
        &self,
        n: &Arc<Inode>,
        file: Option<File>,
        flags: i32,
        write: bool,
        fast: bool,
        pid: u32,
        backer: Backer<'_>,
    ) -> FsResult<OpenReply> {
        let (mode, file) = match file {
            Some(f) => (
                self.open_mode(n, f.as_fd(), write, fast, pid, backer)?,
                Some(f),
            ),
            None => {
                let path_fd = n.fd().or_errno()?;
                let mode = self.open_mode(n, path_fd.as_fd(), write, fast, pid, backer)?;
                match mode {
                    Mode2::Passthrough(_) => (mode, None),
                    Mode2::Cached { .. } => match reopen(n, flags) {
                        Ok(f) => (mode, Some(f)),
                        Err(e) => {
                            // Counted by open_mode: not opened after all.
                            let mut m = n.opens.lock();
                            m.cached = m.cached.saturating_sub(1);
                            return Err(e);
                        }
                    },
                }
            }
        };
        let mut h = OpenFile::new(n.clone(), file, flags, write);
        match &mode {
            Mode2::Passthrough(b) => {
                h.passthrough.store(true, Ordering::Relaxed);
                *h.backing.lock() = Some(b.clone());
                if fast {
                    // Held while open: a cut keeps its last closed
                    // version (the caller holds the change gate).
                    self.track.hold(&n.key);
                    h.fast.store(true, Ordering::Relaxed);
                    h.wrote.store(true, Ordering::Relaxed);
                } else if write {
                    // A writer joining passthrough readers: its writes
                    // bypass the daemon; a cut copies the file whole.
                    self.track.bypass(&n.key);
                    h.bypass = true;
                    h.wrote.store(true, Ordering::Relaxed);
                    tracing::debug!(ino = n.key.ino, "writable open of a file open for passthrough reads: written through passthrough, copied whole at each cut while open");
                }
            }
            Mode2::Cached { .. } => {}
        }
        let fh = self.add_handle(h);
        Ok(match mode {
            Mode2::Passthrough(backing) => OpenReply::Passthrough { fh, backing },
            Mode2::Cached { keep_cache } => OpenReply::Plain { fh, keep_cache },
        })
    }

    /// May a read-only open register the inode's `O_PATH` descriptor as
    /// its backing file instead of opening the file (recent kernels accept
    /// one; 6.18 here does)? Asked of the kernel once, with the first such
    /// open.
    fn path_backing(&self, n: &Arc<Inode>, backer: Backer<'_>) -> bool {
        match self.path_backing.load(Ordering::Relaxed) {
            PATH_BACKING_YES => return true,
            PATH_BACKING_NO => return false,
            _ => {}
        }
        let Ok(fd) = n.fd() else { return false };
        // The id is closed again at once (dropped).
        let ok = backer(fd.as_fd()).is_ok();
        tracing::debug!(
            ok,
            "backing files registered by their O_PATH descriptor (no open per passthrough open)"
        );
        self.path_backing.store(
            if ok {
                PATH_BACKING_YES
            } else {
                PATH_BACKING_NO
            },
            Ordering::Relaxed,
        );
        ok
    }

    pub fn open(
        &self,
        nodeid: u64,
        flags: i32,
        pid: u32,
        backer: Backer<'_>,
    ) -> FsResult<OpenReply> {
        let n = self.node(nodeid)?;
        let write = writable(flags);
        let truncating = write && flags & libc::O_TRUNC != 0;
        if !write && flags & libc::O_TRUNC != 0 && n.opens.lock().exec > 0 {
            // O_RDONLY|O_TRUNC of a running program: ETXTBSY, as on the
            // backing filesystem. (FUSE_ATOMIC_O_TRUNC leaves the
            // truncation to us; the kernel's own write-access check after
            // the open does not always catch it here: pjdfstest's
            // open::etxtbsy saw the open succeed in about 1 of 12 runs.)
            return Err(Errno::ETXTBSY);
        }
        if truncating {
            self.capture_before_rewrite(&n);
        }
        // A writable open may truncate, or start bypassing the daemon
        // (`serve`): both are changes a cut must not split.
        let _change = write.then(|| self.track.change());
        let mut fast = false;
        let mut checkpoint = false;
        let old_size = if truncating {
            let st = self.stat_node(&n)?;
            if n.kind == libc::S_IFREG && self.opts.checkpoints.is_some() {
                let path = self.rel_path_of(&*n.fd().or_errno()?);
                let name = path
                    .as_deref()
                    .map(|p| p.rsplit(|b| *b == b'/').next().unwrap_or(p).to_vec());
                if let Some(name) = name {
                    checkpoint = self.is_checkpoint(&name, || path.clone());
                    // The checkpoint fast path, for a file whose every
                    // change is in a snapshot already (its last closed
                    // version is then the base's, whenever a cut falls
                    // during the rewrite).
                    fast =
                        !self.track.is_dirty(&n.key) && self.fast_path(st.st_mode, &name, || path);
                }
            }
            self.cow_change(&n, 0, u64::MAX)?;
            Some(st.st_size as u64)
        } else {
            None
        };
        // A plain read-only open of a regular file, which passthrough will
        // likely serve, opens nothing here: the kernel gets the inode's
        // O_PATH descriptor as the backing file and opens it itself (one
        // path walk through /proc, two fcntls and a close less per open;
        // 13% and 2% of the daemon's CPU in a small-file epoch, perf).
        let by_path = !write
            && flags & (libc::O_TRUNC | FMODE_EXEC_FLAG) == 0
            && n.kind == libc::S_IFREG
            && self.passthrough_enabled()
            && self.path_backing(&n, backer);
        let file = if by_path {
            None
        } else {
            Some(reopen(&n, flags)?)
        };
        if let Some(old) = old_size {
            if old != 0 {
                self.track.resize(&n.key, old, 0);
            }
            self.kill_privs(&n, pid)?;
        }
        let reply = self.serve(&n, file, flags, write, fast, pid, backer)?;
        if checkpoint {
            if let Ok(h) = self.handle(reply.fh()) {
                h.checkpoint.store(true, Ordering::Relaxed);
            }
        }
        if flags & FMODE_EXEC_FLAG != 0 {
            n.opens.lock().exec += 1;
            if let Ok(h) = self.handle(reply.fh()) {
                // The handle was just added; mark it for release.
                h.exec.store(true, Ordering::Relaxed);
            }
        }
        Ok(reply)
    }

    pub fn create(
        &self,
        c: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        backer: Backer<'_>,
    ) -> FsResult<(Entry, OpenReply)> {
        let p = self.node(parent)?;
        let name = name_bytes(name)?;
        if flags & libc::O_TRUNC != 0 {
            if let Some(n) = self.known_child(&p, name) {
                self.capture_before_rewrite(&n);
            }
        }
        let _change = self.track.change();
        self.check_mutable(&p, name)?;
        let mut existing = None;
        if flags & libc::O_TRUNC != 0 {
            // O_CREAT|O_TRUNC of an existing file destroys its content.
            if let Some(n) = self.known_child(&p, name) {
                self.cow_change(&n, 0, u64::MAX)?;
                existing = Some(n.key);
            }
        }
        // A create may name a file that is there already (the kernel sends
        // one for an O_CREAT open of a name its lookup did not find, e.g.
        // a file made behind the mount): then it is opened, not created.
        // Exclusive first, so that a new file costs one call.
        let (file, new) = {
            let _as = as_caller(c)?;
            let dir = p.fd().or_errno()?;
            let open = |extra: OFlags| {
                rustix::fs::openat(
                    &*dir,
                    name,
                    backing_open_flags(flags) | extra | OFlags::NOFOLLOW,
                    Mode::from_raw_mode(mode & 0o7777),
                )
            };
            let r = if flags & libc::O_EXCL != 0 {
                open(OFlags::CREATE).map(|fd| (fd, true))
            } else {
                match open(OFlags::CREATE | OFlags::EXCL) {
                    Err(rustix::io::Errno::EXIST) => match open(OFlags::empty()) {
                        // Removed in between: create it after all.
                        Err(rustix::io::Errno::NOENT) => open(OFlags::CREATE).map(|fd| (fd, true)),
                        r => r.map(|fd| (fd, false)),
                    },
                    r => r.map(|fd| (fd, true)),
                }
            };
            let (fd, new) = r.or_errno()?;
            (File::from(fd), new)
        };
        let e = self.created_or_opened(&p, name, new)?;
        let n = self.node(e.attr.ino.0)?;
        let write = writable(flags);
        // The checkpoint fast path: a new file, or one truncated here
        // whose every change is in a snapshot already.
        let fresh = match existing {
            Some(old) if old == n.key => !self.track.is_dirty(&n.key),
            _ => true,
        };
        let st_mode = rustix::fs::fstat(&file).or_errno()?.st_mode;
        let path_of = || {
            let dir = self.rel_path_of(&*p.fd().ok()?)?;
            Some(if dir.is_empty() {
                name.to_vec()
            } else {
                [&dir[..], b"/", name].concat()
            })
        };
        let checkpoint = write && n.kind == libc::S_IFREG && self.is_checkpoint(name, path_of);
        let fast =
            write && fresh && n.kind == libc::S_IFREG && self.fast_path(st_mode, name, path_of);
        let reply = self.serve(&n, Some(file), flags, write, fast, c.pid, backer)?;
        if checkpoint {
            if let Ok(h) = self.handle(reply.fh()) {
                h.checkpoint.store(true, Ordering::Relaxed);
            }
        }
        Ok((e, reply))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let h = self.handle(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match h.file()?.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_errno()),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// Write through the daemon. `kill_privs`: the kernel asks the daemon
    /// to drop setuid/setgid first (`FUSE_WRITE_KILL_SUIDGID`: the writer
    /// lacks `CAP_FSETID`).
    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_privs: bool,
        pid: u32,
    ) -> FsResult<u32> {
        let h = self.handle(fh)?;
        let _change = self.track.change();
        if kill_privs && self.killpriv.load(Ordering::Relaxed) {
            // The kernel asks when the writer lacks CAP_FSETID; whether
            // a setgid without group execute goes depends on the writer's
            // groups.
            let st = rustix::fs::fstat(h.file()?).or_errno()?;
            if let Some(mode) = super::creds::mode_without_privs(st.st_mode, st.st_gid, pid) {
                self.chmod_node(&h.inode, mode)?;
            }
        }
        // An O_APPEND descriptor (append-only files) writes at the end,
        // whatever the offset: the change is recorded where it lands.
        let offset = if h.append {
            rustix::fs::fstat(h.file()?).or_errno()?.st_size as u64
        } else {
            offset
        };
        if !data.is_empty() {
            let last = self.block_of(offset + data.len() as u64 - 1);
            self.cow_change(&h.inode, self.block_of(offset), last)?;
        }
        let mut done = 0;
        while done < data.len() {
            match h.file()?.write_at(&data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if done > 0 {
                        break;
                    }
                    return Err(e.to_errno());
                }
            }
        }
        self.track.write(&h.inode.key, offset, done as u64);
        if done > 0 {
            h.wrote.store(true, Ordering::Relaxed);
        }
        Ok(done as u32)
    }

    /// Is `fh` a checkpoint fast-path writer?
    pub fn is_fast(&self, fh: u64) -> bool {
        self.handle(fh)
            .is_ok_and(|h| h.fast.load(Ordering::Relaxed))
    }

    /// A descriptor of `fh` is being closed (FLUSH, sent only for fast-path
    /// writers): its release follows, and a cut waits briefly for it, so
    /// that a snapshot taken right after close(2) returns holds the file.
    pub fn flush(&self, fh: u64) {
        if let Ok(h) = self.handle(fh) {
            if h.fast.load(Ordering::Relaxed) && !h.closing.swap(true, Ordering::Relaxed) {
                self.track.closing(&h.inode.key);
            }
        }
    }

    pub fn release(&self, fh: u64) {
        let removed = self.handles.write().remove(&fh);
        let Some(h) = removed else { return };
        let fast = h.fast.load(Ordering::Relaxed);
        if fast || h.bypass {
            let _change = self.track.change();
            if fast {
                self.track
                    .unhold(&h.inode.key, h.closing.load(Ordering::Relaxed));
            } else {
                self.track.unbypass(&h.inode.key);
            }
        }
        if h.wrote.load(Ordering::Relaxed)
            && (self.opts.all_close_events || fast || h.checkpoint.load(Ordering::Relaxed))
        {
            self.emit(|| {
                Some(FsEvent::ClosedAfterWrite {
                    key: h.inode.key,
                    path: self.rel_path_of(h.file().ok()?)?,
                })
            });
        }
        let mut m = h.inode.opens.lock();
        if h.exec.load(Ordering::Relaxed) {
            m.exec = m.exec.saturating_sub(1);
        }
        if h.passthrough.load(Ordering::Relaxed) {
            m.passthrough = m.passthrough.saturating_sub(1);
            if h.writable {
                m.stale_cache = true;
            }
        } else if h.dir.is_none() {
            m.cached = m.cached.saturating_sub(1);
        }
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let h = self.handle(fh)?;
        if datasync {
            rustix::fs::fdatasync(h.file()?).or_errno()
        } else {
            rustix::fs::fsync(h.file()?).or_errno()
        }
    }

    pub fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
        pid: u32,
    ) -> FsResult<()> {
        let h = self.handle(fh)?;
        let _change = self.track.change();
        self.kill_privs(&h.inode, pid)?;
        let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
        let old = rustix::fs::fstat(h.file()?).or_errno()?.st_size as u64;
        {
            use rustix::fs::FallocateFlags as F;
            if flags.intersects(F::COLLAPSE_RANGE | F::INSERT_RANGE) {
                self.cow_change(&h.inode, self.block_of(offset), u64::MAX)?;
            } else if flags.intersects(F::PUNCH_HOLE | F::ZERO_RANGE) && length > 0 {
                let last = self.block_of(offset + length - 1);
                self.cow_change(&h.inode, self.block_of(offset), last)?;
            }
        }
        rustix::fs::fallocate(h.file()?, flags, offset, length).or_errno()?;
        let new = rustix::fs::fstat(h.file()?).or_errno()?.st_size as u64;
        use rustix::fs::FallocateFlags as F;
        let key = &h.inode.key;
        if flags.intersects(F::COLLAPSE_RANGE | F::INSERT_RANGE) {
            self.track.all_from(key, offset);
        } else if flags.intersects(F::PUNCH_HOLE | F::ZERO_RANGE) {
            let end = (offset + length).min(old.max(new));
            if end > offset {
                self.track.range(key, offset, end - offset);
            }
        }
        if new != old {
            self.track.resize(key, old, new);
        }
        Ok(())
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let h = self.handle(fh)?;
        let pos = match whence {
            libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset as u64),
            libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset as u64),
            libc::SEEK_SET => rustix::fs::SeekFrom::Start(offset as u64),
            libc::SEEK_END => rustix::fs::SeekFrom::End(offset),
            _ => return Err(Errno::EINVAL),
        };
        rustix::fs::seek(h.file()?, pos)
            .map(|p| p as i64)
            .or_errno()
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        pid: u32,
    ) -> FsResult<u32> {
        let hi = self.handle(fh_in)?;
        let ho = self.handle(fh_out)?;
        let _change = self.track.change();
        self.kill_privs(&ho.inode, pid)?;
        if len > 0 {
            let last = self.block_of(off_out + len - 1);
            self.cow_change(&ho.inode, self.block_of(off_out), last)?;
        }
        let (mut a, mut b) = (off_in, off_out);
        let n = rustix::fs::copy_file_range(
            hi.file()?,
            Some(&mut a),
            ho.file()?,
            Some(&mut b),
            len.min(u32::MAX as u64) as usize,
        )
        .or_errno()?;
        self.track.range(&ho.inode.key, off_out, n as u64);
        Ok(n as u32)
    }

    // ---- directories ------------------------------------------------

    pub fn opendir(&self, nodeid: u64) -> FsResult<u64> {
        let n = self.node(nodeid)?;
        let fd = rustix::fs::openat(
            rustix::fs::CWD,
            n.proc_path().or_errno()?.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .or_errno()?;
        let file = File::from(fd);
        let dir = rustix::fs::Dir::read_from(&file).or_errno()?;
        let mut h = OpenFile::new(n, Some(file), libc::O_RDONLY | libc::O_DIRECTORY, false);
        h.dir = Some(Mutex::new(dir));
        Ok(self.add_handle(h))
    }

    /// Directory entries from `offset` (a cookie from an earlier entry),
    /// calling `add(name, backing ino, type, next offset)` until it
    /// returns true (buffer full).
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&[u8], u64, u32, u64) -> bool,
    ) -> FsResult<()> {
        let h = self.handle(fh)?;
        let Some(dir) = &h.dir else {
            return Err(Errno::ENOTDIR);
        };
        let mut dir = dir.lock();
        if offset == 0 {
            dir.rewind();
        } else {
            dir.seek(offset as i64).or_errno()?;
        }
        let at_root = h.inode.nodeid == ROOT;
        while let Some(e) = dir.read() {
            let e = e.or_errno()?;
            let name = e.file_name().to_bytes();
            if at_root && name == SNAPSHOTS_DIR.as_bytes() {
                continue;
            }
            if let Some(hidden) = self.opts.hidden {
                if e.ino() == hidden.ino && name != b"." && name != b".." {
                    if let Ok(st) = rustix::fs::statat(h.file()?, name, AtFlags::SYMLINK_NOFOLLOW) {
                        if self.is_hidden(&st) {
                            continue;
                        }
                    }
                }
            }
            let t = match e.file_type() {
                rustix::fs::FileType::Directory => libc::S_IFDIR,
                rustix::fs::FileType::Symlink => libc::S_IFLNK,
                rustix::fs::FileType::Fifo => libc::S_IFIFO,
                rustix::fs::FileType::CharacterDevice => libc::S_IFCHR,
                rustix::fs::FileType::BlockDevice => libc::S_IFBLK,
                rustix::fs::FileType::Socket => libc::S_IFSOCK,
                _ => libc::S_IFREG,
            };
            if add(name, e.ino(), t, e.offset() as u64) {
                // Not taken: the next call starts from this entry again.
                break;
            }
        }
        Ok(())
    }

    /// Look up a directory entry for readdirplus (counts a lookup).
    pub fn lookup_in_dir_handle(&self, fh: u64, name: &[u8]) -> FsResult<Entry> {
        let h = self.handle(fh)?;
        if name == b"." || name == b".." {
            // Not counted as lookups; the kernel does not instantiate them.
            let (st, id) = if name == b"." {
                (self.stat_node(&h.inode)?, h.inode.nodeid)
            } else {
                let st =
                    rustix::fs::statat(h.file()?, "..", AtFlags::SYMLINK_NOFOLLOW).or_errno()?;
                let id = if h.inode.nodeid == ROOT {
                    ROOT
                } else {
                    st.st_ino.max(2)
                };
                (st, id)
            };
            return Ok(Entry {
                attr: attr_of(id, &st),
            });
        }
        self.do_lookup(&h.inode, name)
    }

    pub fn fsyncdir(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        rustix::fs::fsync(h.file()?).or_errno()
    }

    pub fn statfs(&self) -> FsResult<rustix::fs::StatVfs> {
        let root = self.inodes.root();
        rustix::fs::fstatvfs(&*root.fd().or_errno()?).or_errno()
    }

    // ---- xattrs -----------------------------------------------------

    /// The node and a path reaching it for an xattr call. Through
    /// `/proc/self/fd/N` of the node's `O_PATH` descriptor the calls act
    /// on the object itself, a symlink included (the magic link is not
    /// followed further): trusted.* and security.* attributes of symlinks
    /// work as on the backing filesystem (overlayfs upper dirs, SELinux
    /// labels, `tar --xattrs`). user.* ones are refused on symlinks, as
    /// the kernel and ext4 do.
    fn xattr_target(
        &self,
        nodeid: u64,
        name: Option<&OsStr>,
    ) -> FsResult<(Arc<Inode>, super::inode::ProcPath)> {
        let n = self.node(nodeid)?;
        if n.kind == libc::S_IFLNK && name.is_some_and(|k| k.as_bytes().starts_with(b"user.")) {
            return Err(Errno::EPERM);
        }
        let p = n.proc_path().or_errno()?;
        Ok((n, p))
    }

    /// Set an xattr. An access ACL set by a caller who is neither in the
    /// file's group nor holds CAP_FSETID clears the setgid bit, as the
    /// kernel's `posix_acl_update_mode` does for such a caller (the daemon
    /// applies the ACL as root, which would keep it: generic/375, the
    /// class of CVE-2016-7097). The kernel's own way of telling us
    /// (FUSE_SETXATTR_ACL_KILL_SGID) needs FUSE_SETXATTR_EXT, which fuser
    /// 0.18 does not decode.
    pub fn setxattr(
        &self,
        nodeid: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        pid: u32,
    ) -> FsResult<()> {
        let (n, p) = self.xattr_target(nodeid, Some(name))?;
        let _change = self.track.change();
        let f = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
        rustix::fs::setxattr(p.as_str(), name, value, f).or_errno()?;
        if name.as_bytes() == b"system.posix_acl_access" && !value.is_empty() {
            let st = self.stat_node(&n)?;
            if st.st_mode & libc::S_ISGID != 0
                && !super::creds::in_group(pid, st.st_gid)
                && !super::creds::has_fsetid(pid)
            {
                self.chmod_node(&n, st.st_mode & 0o7777 & !libc::S_ISGID)?;
            }
        }
        self.track.meta(&n.key);
        self.invalidate(n.nodeid);
        Ok(())
    }

    /// `size == 0` asks for the length only.
    pub fn getxattr(&self, nodeid: u64, name: &OsStr, size: u32) -> FsResult<Vec<u8>> {
        let (_, p) = self.xattr_target(nodeid, Some(name)).map_err(|e| {
            if e == Errno::EPERM {
                Errno::NO_XATTR
            } else {
                e
            }
        })?;
        let mut buf = vec![0u8; size as usize];
        if size == 0 {
            let len = rustix::fs::getxattr_query(p.as_str(), name).or_errno()?;
            return Ok(vec![0u8; len]);
        }
        let len = rustix::fs::getxattr(p.as_str(), name, &mut buf[..]).or_errno()?;
        buf.truncate(len);
        Ok(buf)
    }

    pub fn listxattr(&self, nodeid: u64, size: u32) -> FsResult<Vec<u8>> {
        let (_, p) = self.xattr_target(nodeid, None)?;
        if size == 0 {
            let len = rustix::fs::listxattr_query(p.as_str()).or_errno()?;
            return Ok(vec![0u8; len]);
        }
        let mut buf = vec![0u8; size as usize];
        let len = rustix::fs::listxattr(p.as_str(), &mut buf[..]).or_errno()?;
        buf.truncate(len);
        Ok(buf)
    }

    pub fn removexattr(&self, nodeid: u64, name: &OsStr) -> FsResult<()> {
        let (n, p) = self.xattr_target(nodeid, Some(name))?;
        let _change = self.track.change();
        rustix::fs::removexattr(p.as_str(), name).or_errno()?;
        self.track.meta(&n.key);
        Ok(())
    }

    /// An ioctl on an open file or directory. The file-flag ioctls
    /// (`chattr`/`lsattr`: FS_IOC_GETFLAGS/SETFLAGS, and the xfs-style
    /// FS_IOC_FSGETXATTR/FSSETXATTR) pass through to the backing object
    /// (the kernel has already checked that the caller owns the file, and
    /// holds CAP_LINUX_IMMUTABLE to change the immutable or append-only
    /// flags); any other is answered as a regular file answers an ioctl
    /// it does not know, ENOTTY (Python's `open()` asks TCGETS of every
    /// file it opens, for isatty).
    pub fn ioctl(&self, fh: u64, cmd: u32, in_data: &[u8], out_size: u32) -> FsResult<Vec<u8>> {
        let kind = IoctlKind::of(cmd).ok_or(Errno::ENOTTY)?;
        let h = self.handle(fh)?;
        match kind {
            IoctlKind::GetFlags => {
                let f = rustix::fs::ioctl_getflags(h.file()?).or_errno()?;
                let b = f.bits().to_ne_bytes();
                Ok(b[..(out_size as usize).min(b.len())].to_vec())
            }
            IoctlKind::SetFlags => {
                let raw: [u8; 4] = in_data
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(Errno::EINVAL)?;
                let flags = rustix::fs::IFlags::from_bits_retain(u32::from_ne_bytes(raw));
                let _change = self.track.change();
                rustix::fs::ioctl_setflags(h.file()?, flags).or_errno()?;
                self.track.meta(&h.inode.key);
                // The change time moved: the kernel's attributes are stale.
                self.invalidate(h.inode.nodeid);
                Ok(Vec::new())
            }
            IoctlKind::FsGetXattr => {
                let mut buf = [0u8; FSXATTR_LEN];
                let fd = h.file()?.as_raw_fd();
                // SAFETY: FS_IOC_FSGETXATTR writes one struct fsxattr (28
                // bytes) into the buffer, which is that large; the
                // descriptor is open for the call's duration (`h` holds it).
                let r = unsafe { libc::ioctl(fd, FS_IOC_FSGETXATTR as _, buf.as_mut_ptr()) };
                if r < 0 {
                    return Err(std::io::Error::last_os_error().to_errno());
                }
                Ok(buf[..(out_size as usize).min(FSXATTR_LEN)].to_vec())
            }
            IoctlKind::FsSetXattr => {
                let mut buf = [0u8; FSXATTR_LEN];
                let src = in_data.get(..FSXATTR_LEN).ok_or(Errno::EINVAL)?;
                buf.copy_from_slice(src);
                let _change = self.track.change();
                let fd = h.file()?.as_raw_fd();
                // SAFETY: FS_IOC_FSSETXATTR reads one struct fsxattr (28
                // bytes) from the buffer, which is that large; `h` holds
                // the descriptor open.
                let r = unsafe { libc::ioctl(fd, FS_IOC_FSSETXATTR as _, buf.as_ptr()) };
                if r < 0 {
                    return Err(std::io::Error::last_os_error().to_errno());
                }
                self.track.meta(&h.inode.key);
                self.invalidate(h.inode.nodeid);
                Ok(Vec::new())
            }
        }
    }

    pub fn access(&self, nodeid: u64, mask: i32) -> FsResult<()> {
        let n = self.node(nodeid)?;
        let access = rustix::fs::Access::from_bits_retain(mask as u32);
        rustix::fs::accessat(
            rustix::fs::CWD,
            n.proc_path().or_errno()?.as_str(),
            access,
            AtFlags::empty(),
        )
        .or_errno()
    }
}

/// The cut reaches changed objects through the inode table.
impl crate::track::Objects for LiveFs {
    fn root(&self) -> std::io::Result<(FileKey, Arc<OwnedFd>)> {
        let r = self.inodes.root();
        Ok((r.key, r.fd()?))
    }

    fn find(&self, key: &FileKey) -> Option<Arc<OwnedFd>> {
        self.inodes.find(key)?.fd().ok()
    }
}
