//! Acting as the caller: for creations in the live mount, and for
//! commands the daemon runs on behalf of a client.
//!
//! When the daemon runs as root and serves other users (`allow_other`),
//! creating files as root would give them the wrong owner. For the span of
//! one backing call, [`as_caller`] switches this thread's filesystem uid
//! and gid (`setfsuid`/`setfsgid`) and supplementary groups (the raw
//! per-thread `setgroups` syscall, not glibc's process-wide wrapper) to
//! the caller's, so the backing filesystem assigns ownership, applies a
//! set-gid parent directory and checks permissions exactly as it would for
//! the caller. The guard switches back when dropped.
//!
//! The umask is per thread too: a thread that acts for a caller first
//! gets its own filesystem context (`unshare(CLONE_FS)`, once), so setting
//! the caller's umask never touches the daemon's other threads. The
//! daemon's process umask is never changed.

use std::cell::Cell;

use fuser::Errno;

/// The caller of a request.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The umask creations must honour (`None`: leave this thread's).
    pub umask: Option<u32>,
}

pub struct CallerGuard {
    ids: bool,
    umask: Option<u32>,
}

fn setfsuid(uid: u32) -> i64 {
    // SAFETY: setfsuid takes an integer and changes only this thread's
    // filesystem uid; it cannot touch memory.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid as libc::c_long) }
}

fn setfsgid(gid: u32) -> i64 {
    // SAFETY: as for setfsuid.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid as libc::c_long) }
}

/// This thread's filesystem uid (the owner of what it creates).
pub fn current_fsuid() -> u32 {
    // setfsuid(-1) changes nothing and returns the current fsuid.
    setfsuid(u32::MAX) as u32
}

/// Supplementary groups of a process, from `/proc/PID/status`.
pub fn groups_of(pid: u32) -> Vec<u32> {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    s.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

thread_local! {
    /// This thread has its own filesystem context (umask, cwd).
    static PRIVATE_FS: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Give this thread its own umask and working directory, once. Threads
/// it starts afterwards share them. False if the kernel refused.
pub fn private_fs_context() -> bool {
    PRIVATE_FS.with(|p| {
        if let Some(ok) = p.get() {
            return ok;
        }
        // SAFETY: CLONE_FS only separates this thread's umask, cwd and
        // root from the other threads'; file descriptor tables are not
        // touched (the hazard `unshare_unsafe` documents is CLONE_FILES).
        let ok = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
            .map_err(|e| {
                tracing::warn!("unshare(CLONE_FS): {e}; creations keep the daemon's umask")
            })
            .is_ok();
        p.set(Some(ok));
        ok
    })
}

/// Set this thread's umask (its own, see [`private_fs_context`]).
/// Returns the previous one, or `None` if the thread has no private
/// context (then nothing changed).
pub fn set_thread_umask(mask: u32) -> Option<u32> {
    if !private_fs_context() {
        return None;
    }
    Some(rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask & 0o777)).as_raw_mode())
}

/// Act as `c` for filesystem access until the guard is dropped: its
/// umask when given, and (when this process is root and the caller is
/// not) its fsuid, fsgid and groups.
pub fn as_caller(c: Caller) -> Result<CallerGuard, Errno> {
    let umask = c.umask.and_then(set_thread_umask);
    if !rustix::process::geteuid().is_root() || (c.uid == 0 && c.gid == 0) {
        return Ok(CallerGuard { ids: false, umask });
    }
    let groups: Vec<rustix::fs::Gid> = groups_of(c.pid)
        .into_iter()
        .filter(|g| *g != u32::MAX)
        .map(rustix::fs::Gid::from_raw)
        .collect();
    let guard = CallerGuard { ids: true, umask };
    rustix::thread::set_thread_groups(&groups).map_err(|e| Errno::from_i32(e.raw_os_error()))?;
    setfsgid(c.gid);
    setfsuid(c.uid);
    Ok(guard)
}

impl Drop for CallerGuard {
    fn drop(&mut self) {
        if self.ids {
            setfsuid(0);
            setfsgid(0);
            let _ = rustix::thread::set_thread_groups(&[]);
        }
        if let Some(m) = self.umask {
            set_thread_umask(m);
        }
    }
}

/// `CAP_FSETID` (linux/capability.h).
const CAP_FSETID: u32 = 4;

/// Whether process `pid` has `CAP_FSETID` in its effective set (from
/// `/proc/PID/status`). A process that cannot be read is taken as not
/// having it (its privileges are then dropped, never kept).
pub fn has_fsetid(pid: u32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_FSETID) != 0)
}

/// Whether process `pid` is in group `gid` (its filesystem gid or a
/// supplementary group, from `/proc/PID/status`). A process that cannot
/// be read is taken as not in it.
pub fn in_group(pid: u32, gid: u32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let ids = |key: &str| -> Vec<u32> {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    // Gid: real, effective, saved, filesystem.
    ids("Gid:").get(3) == Some(&gid) || ids("Groups:").contains(&gid)
}

/// The mode a regular file must get when it is written, truncated or
/// allocated by a caller, as the kernel's VFS decides
/// (`setattr_should_drop_suidgid`): setuid goes; setgid goes when the
/// group may execute, or when the caller is not in the file's group;
/// nothing goes when the caller has `CAP_FSETID`. `None`: nothing to
/// drop. The daemon acts as root (which keeps the bits), so with
/// `FUSE_HANDLE_KILLPRIV_V2` it applies this itself.
pub fn mode_without_privs(mode: u32, file_gid: u32, caller_pid: u32) -> Option<u32> {
    let mut drop = 0;
    if mode & libc::S_ISUID != 0 {
        drop |= libc::S_ISUID;
    }
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !in_group(caller_pid, file_gid)) {
        drop |= libc::S_ISGID;
    }
    if drop == 0 || has_fsetid(caller_pid) {
        return None;
    }
    Some(mode & 0o7777 & !drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_dropped_as_the_vfs_does() {
        // This test runs as some process; a pid that cannot exist has no
        // capabilities.
        let gone = u32::MAX - 1;
        assert_eq!(mode_without_privs(0o4755, 0, gone), Some(0o755));
        assert_eq!(mode_without_privs(0o2755, 0, gone), Some(0o755));
        // setgid without group execute goes for a caller outside the
        // file's group (as the kernel does since 6.x: generic/683)...
        assert_eq!(mode_without_privs(0o2745, 0, gone), Some(0o745));
        // ...and stays for one in it.
        let me = std::process::id();
        let my_gid = rustix::process::getegid().as_raw();
        assert_eq!(mode_without_privs(0o2745, my_gid, me), None);
        assert_eq!(mode_without_privs(0o6755, 0, gone), Some(0o755));
        assert_eq!(mode_without_privs(0o0755, 0, gone), None);
        let expect = if has_fsetid(me) { None } else { Some(0o755) };
        assert_eq!(mode_without_privs(0o4755, 0, me), expect);
    }

    #[test]
    fn a_thread_umask_leaves_the_process_alone() {
        let before = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        rustix::process::umask(before);
        let t = tempfile::tempdir().unwrap();
        let p = t.path().to_path_buf();
        std::thread::spawn(move || {
            let _g = as_caller(Caller {
                uid: 0,
                gid: 0,
                pid: std::process::id(),
                umask: Some(0o077),
            })
            .unwrap();
            std::fs::create_dir(p.join("private")).unwrap();
        })
        .join()
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(t.path().join("private"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o700);
        // This thread (and the process) still has its umask.
        let now = rustix::process::umask(before);
        assert_eq!(now, before);
    }
}
