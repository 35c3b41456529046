//! Thin, safe helpers over rustix for the file-descriptor based tree walks
//! of capture and restore.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags};

pub fn stat_ns(sec: i64, nsec: u64) -> i64 {
    sec.saturating_mul(1_000_000_000)
        .saturating_add(nsec as i64)
}

pub fn ctime_ns(st: &rustix::fs::Stat) -> i64 {
    stat_ns(st.st_ctime, st.st_ctime_nsec)
}

/// Open a directory by path as an `O_PATH` descriptor (the start of a
/// descriptor-based walk).
pub fn open_dir_path(dir: &std::path::Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        rustix::fs::CWD,
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Every object the live mount's kernel knows holds a descriptor (and
/// restore holds many): raise the open-file
/// limit as far as allowed (as root up to `fs.nr_open`), so large datasets
/// do not run out. Returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let want = Rlimit {
        current: Some(nr_open),
        maximum: Some(nr_open),
    };
    if setrlimit(Resource::Nofile, want).is_err() {
        // Not root: the soft limit up to the hard one.
        let hard = cur.maximum;
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: hard,
                maximum: hard,
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

pub const S_IFMT: u32 = libc::S_IFMT;

pub fn file_type(mode: u32) -> u32 {
    mode & S_IFMT
}

/// The FUSE file type of a mode.
pub fn fuse_file_type(mode: u32) -> fuser::FileType {
    use fuser::FileType;
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// Extended attributes of an open file, sorted by name. Filesystems that do
/// not support xattrs give an empty list.
pub fn read_xattrs<Fd: AsFd>(fd: Fd) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let fd = fd.as_fd();
    collect_xattrs(
        |buf| rustix::fs::flistxattr(fd, buf),
        |name, buf| rustix::fs::fgetxattr(fd, name, buf),
    )
}

/// Extended attributes of the object an `O_PATH` descriptor names (a
/// symlink, a FIFO, a device node: objects that cannot be opened for
/// reading). Through `/proc/self/fd/N` the calls act on that very object,
/// a symlink included (the magic link is not followed further).
pub fn read_xattrs_opath(fd: &OwnedFd) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use std::os::fd::AsRawFd;
    let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
    collect_xattrs(
        |buf| rustix::fs::listxattr(p.as_str(), buf),
        |name, buf| rustix::fs::getxattr(p.as_str(), name, buf),
    )
}

/// Extended attributes of entry `name` of directory `dir`, not following
/// a symlink, with no descriptor opened for the entry: by directory
/// descriptor and name (`listxattrat`/`getxattrat`, Linux 6.13), or on
/// older kernels through the directory's `/proc/self/fd` link (a path
/// walk through procfs per entry: a fifth of a first snapshot's listing
/// time at 10^6 files).
pub fn read_xattrs_at(dir: &OwnedFd, name: &[u8]) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    static NO_XATTRAT: AtomicBool = AtomicBool::new(false);
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        let c = std::ffi::CString::new(name)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let fd = dir.as_raw_fd();
        match collect_xattrs(
            |buf| xattrat::list(fd, &c, buf),
            |n, buf| xattrat::get(fd, &c, n, buf),
        ) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                NO_XATTRAT.store(true, Ordering::Relaxed);
            }
            r => return r,
        }
    }
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    let p = std::ffi::OsStr::from_bytes(&p);
    collect_xattrs(
        |buf| rustix::fs::llistxattr(p, buf),
        |n, buf| rustix::fs::lgetxattr(p, n, buf),
    )
}

/// `listxattrat(2)` and `getxattrat(2)` (Linux 6.13; new system calls
/// have one number on every architecture since 5.1), never following a
/// symlink at the name.
mod xattrat {
    use std::ffi::CStr;
    use std::os::fd::RawFd;

    const SYS_GETXATTRAT: libc::c_long = 464;
    const SYS_LISTXATTRAT: libc::c_long = 465;

    /// `struct xattr_args` of the kernel's uapi.
    #[repr(C)]
    struct XattrArgs {
        value: u64,
        size: u32,
        flags: u32,
    }

    fn answer(r: libc::c_long) -> rustix::io::Result<usize> {
        if r < 0 {
            let e = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            Err(rustix::io::Errno::from_raw_os_error(e))
        } else {
            Ok(r as usize)
        }
    }

    pub fn list(dir: RawFd, name: &CStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        // SAFETY: the kernel reads the NUL-terminated `name` and writes at
        // most `buf.len()` bytes into `buf`, both live for the call.
        answer(unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                dir,
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                buf.as_mut_ptr(),
                buf.len(),
            )
        })
    }

    pub fn get(dir: RawFd, name: &CStr, attr: &[u8], buf: &mut [u8]) -> rustix::io::Result<usize> {
        let attr = std::ffi::CString::new(attr).map_err(|_| rustix::io::Errno::INVAL)?;
        let args = XattrArgs {
            value: buf.as_mut_ptr() as u64,
            size: u32::try_from(buf.len()).unwrap_or(u32::MAX),
            flags: 0,
        };
        // SAFETY: the kernel reads `name`, `attr` (NUL-terminated) and
        // `args` (its size passed), and writes at most `args.size` bytes
        // at `args.value`, which is `buf`; all live for the call.
        answer(unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                dir,
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                attr.as_ptr(),
                &args as *const XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        })
    }
}

/// List then get every xattr, growing the buffers on ERANGE.
fn collect_xattrs(
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    get: impl Fn(&[u8], &mut [u8]) -> rustix::io::Result<usize>,
) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    // Most entries have none: no allocation for them.
    let mut small = [0u8; 256];
    let mut names: Vec<u8> = Vec::new();
    let n = loop {
        let buf: &mut [u8] = if names.is_empty() {
            &mut small
        } else {
            &mut names
        };
        match list(buf) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) if names.len() < 1 << 20 => {
                let need = list(&mut [])?;
                names.resize(need.max(names.len() * 2).max(small.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let names = if names.is_empty() {
        &small[..n]
    } else {
        &names[..n]
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let mut val = vec![0u8; 256];
        let len = loop {
            match get(name, &mut val[..]) {
                Ok(len) => break Some(len),
                Err(rustix::io::Errno::RANGE) if val.len() < 1 << 24 => {
                    let need = get(name, &mut [])?;
                    val.resize(need.max(val.len() * 2), 0);
                }
                // Removed between list and get.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(len) = len {
            val.truncate(len);
            out.push((name.to_vec(), val));
        }
    }
    out.sort();
    Ok(out)
}

/// Open a directory below `dir` without following a symlink at `name`.
pub fn open_dir_at<Fd: AsFd>(dir: Fd, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Open a regular file below `dir` for reading, without following a
/// symlink and without updating its atime where permitted.
pub fn open_file_for_read_at<Fd: AsFd>(dir: Fd, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    let dir = dir.as_fd();
    let base = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    match rustix::fs::openat(dir, name, base | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => rustix::fs::openat(dir, name, base, Mode::empty()),
        other => other,
    }
}

pub fn lstat_at<Fd: AsFd>(dir: Fd, name: &[u8]) -> rustix::io::Result<rustix::fs::Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

/// Is a name safe to create inside a directory (one component)?
pub fn is_safe_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// Give the calling thread the lowest normal priority: CPU (nice 19)
/// and disk (best-effort class, level 7). For background work (copies,
/// accounting): what asked for it must not slow down, yet it must still
/// progress on a busy machine (SCHED_IDLE and the idle I/O class starve
/// it there).
pub fn background_priority() {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority on this thread's id with a valid nice value.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) } != 0 {
        tracing::debug!("nice 19: {}", std::io::Error::last_os_error());
    }
    // ioprio_set(IOPRIO_WHO_PROCESS, this thread, BE class << 13 | level 7).
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_BE: libc::c_long = 2;
    // SAFETY: a plain syscall with integer arguments; 0 names this thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            (IOPRIO_CLASS_BE << 13) | 7,
        )
    };
    if r != 0 {
        tracing::debug!("I/O priority: {}", std::io::Error::last_os_error());
    }
}

/// Give the heap's free memory back to the system once the process has
/// been quiet for a moment. After a snapshot or a command run inside the
/// daemon, glibc keeps what they freed resident (measured: 665 MiB
/// resident, 261 MiB in use, after the first snapshot of 100,000 files
/// and a few commands). Trimming walks the whole heap (tens of ms with a
/// large one), so it is not done on the request's path: a thread does it
/// 2 s after the last call.
pub fn release_free_memory() {
    use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
    use std::sync::{Mutex, OnceLock};
    static TRIMMER: OnceLock<Option<Mutex<Sender<()>>>> = OnceLock::new();
    let tx = TRIMMER.get_or_init(|| {
        let (tx, rx) = channel::<()>();
        std::thread::Builder::new()
            .name("trim".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Quiet for 2 s: no call in between.
                    loop {
                        match rx.recv_timeout(std::time::Duration::from_secs(2)) {
                            Ok(()) => continue,
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    trim_now();
                }
            })
            .ok()
            .map(|_| Mutex::new(tx))
    });
    if let Some(tx) = tx {
        if let Ok(tx) = tx.lock() {
            let _ = tx.send(());
        }
    }
}

/// Keep large allocations out of the heap for the daemon's lifetime:
/// blocks of 4 MiB or more are mapped on their own and unmapped when
/// freed. glibc raises that threshold by itself (up to 32 MiB) each time
/// such a block is freed, after which the large arrays of a first
/// snapshot's listing come from the heap and leave it fragmented:
/// measured at 10^6 files, 514-587 MiB resident after the first
/// snapshot with the default, 350 MiB with the threshold fixed
/// (docs/benchmarks.md). Block buffers (at most the block size, 1 MiB by
/// default) stay below it.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter (under its lock);
    // it is valid at any time and touches no memory in use.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Return the heap's free pages to the kernel now.
pub fn trim_now() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of the allocator's own
    // arenas to the kernel; it takes the arenas' locks and touches no
    // memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The heap's bytes in use and free (held by the allocator), as glibc
/// counts them; (0, 0) elsewhere.
pub fn heap_usage() -> (u64, u64) {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters (under
        // its locks) and returns them by value.
        let m = unsafe { libc::mallinfo2() };
        (m.uordblks as u64, m.fordblks as u64)
    }
    #[cfg(not(target_env = "gnu"))]
    {
        (0, 0)
    }
}

/// How this process takes a write to a pipe (or socket) whose reader is
/// gone. The command line tool dies of SIGPIPE like other tools
/// (`rewindfs snapshots | head -1` ends quietly); daemons ignore it and
/// get EPIPE (a client that went away must not kill the mount).
pub fn on_broken_pipe(die: bool) {
    let action = if die { libc::SIG_DFL } else { libc::SIG_IGN };
    // SAFETY: setting the disposition of SIGPIPE to the default or to
    // ignore installs no handler code; it is async-signal-safe and
    // affects only how a later EPIPE is delivered.
    unsafe {
        libc::signal(libc::SIGPIPE, action);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Through the `*xattrat` calls or the `/proc` path: the same
    /// attributes, long lists and values included, and a symlink's own
    /// (none) rather than its target's.
    #[test]
    fn xattrs_are_read_by_directory_and_name_without_following() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        std::os::unix::fs::symlink("f", tmp.path().join("link")).unwrap();
        let mut want = Vec::new();
        for i in 0..30 {
            // 30 names of ~20 bytes (past the first 256-byte buffer) and
            // one value of 1,000 bytes (past the first value buffer;
            // ext4 holds 4 KiB of attributes in all).
            let name = format!("user.attribute-{i:04}");
            let value = if i == 7 {
                vec![7u8; 1000]
            } else {
                vec![i as u8; 3]
            };
            if rustix::fs::setxattr(&f, name.as_str(), &value, rustix::fs::XattrFlags::empty())
                .is_err()
            {
                panic!("the temporary directory's file system must support user xattrs");
            }
            want.push((name.into_bytes(), value));
        }
        want.sort();
        let dir = open_dir_path(tmp.path()).unwrap();
        assert_eq!(read_xattrs_at(&dir, b"f").unwrap(), want);
        assert_eq!(read_xattrs_at(&dir, b"link").unwrap(), Vec::new());
        assert!(read_xattrs_at(&dir, b"missing").is_err());
        // The system calls themselves, where the kernel has them.
        let c = std::ffi::CString::new("f").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
        match xattrat::list(fd, &c, &mut []) {
            Err(rustix::io::Errno::NOSYS) => eprintln!("no listxattrat here: /proc only"),
            r => assert!(r.unwrap() > 0),
        }
        // The fallback reads the same.
        let p = format!("/proc/self/fd/{}/f", std::os::fd::AsRawFd::as_raw_fd(&dir));
        let via_proc = collect_xattrs(
            |buf| rustix::fs::llistxattr(p.as_str(), buf),
            |n, buf| rustix::fs::lgetxattr(p.as_str(), n, buf),
        )
        .unwrap();
        assert_eq!(via_proc, want);
    }
}
