//! Acting as the caller for operations that create objects.
//!
//! When the daemon runs as root and serves other users (`allow_other`),
//! creating files as root would give them the wrong owner. For the span of
//! one backing call, [`as_caller`] switches this thread's filesystem uid
//! and gid (`setfsuid`/`setfsgid`) and supplementary groups (the raw
//! per-thread `setgroups` syscall, not glibc's process-wide wrapper) to
//! the caller's, so the backing filesystem assigns ownership, applies a
//! set-gid parent directory and checks permissions exactly as it would for
//! the caller. The guard switches back when dropped.

use fuser::Errno;

/// The caller of a request.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

pub struct CallerGuard {
    active: bool,
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

/// Act as `c` for filesystem access until the guard is dropped. A no-op
/// unless this process is root and the caller is not.
pub fn as_caller(c: Caller) -> Result<CallerGuard, Errno> {
    if !rustix::process::geteuid().is_root() || (c.uid == 0 && c.gid == 0) {
        return Ok(CallerGuard { active: false });
    }
    let groups: Vec<rustix::fs::Gid> = groups_of(c.pid)
        .into_iter()
        .filter(|g| *g != u32::MAX)
        .map(rustix::fs::Gid::from_raw)
        .collect();
    rustix::thread::set_thread_groups(&groups).map_err(|e| Errno::from_i32(e.raw_os_error()))?;
    setfsgid(c.gid);
    setfsuid(c.uid);
    Ok(CallerGuard { active: true })
}

impl Drop for CallerGuard {
    fn drop(&mut self) {
        if self.active {
            setfsuid(0);
            setfsgid(0);
            let _ = rustix::thread::set_thread_groups(&[]);
        }
    }
}
