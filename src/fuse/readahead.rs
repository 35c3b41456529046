//! The kernel's readahead window for our FUSE mounts.
//!
//! FUSE's INIT exchange lets a server lower the kernel's readahead but
//! never raise it above the default of the mount's backing device info
//! (128 KiB), so sequential reads and mmap page faults reach the daemon as
//! 128 KiB requests, one or two in flight. Root can raise the window
//! afterwards through `/sys/class/bdi/MAJ:MIN/read_ahead_kb`; files opened
//! after that read ahead in requests of up to `max_pages` (1 MiB), several
//! in flight. Without the privilege the default stays and the mount works
//! as before.

//!
//! The window is raised when the session answers its first request after
//! INIT (the kernel sends none before it has applied INIT's reply), and
//! the mount's device is found in /proc/self/mountinfo: the daemon never
//! walks a path into its own mount. (It used to `statfs` and `stat` the
//! mountpoint from a thread started at readiness; an `umount` right after
//! `mount` returned then found the mount busy.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Four full-size (1 MiB) requests ahead: snapshot files are usually read
/// whole (datasets, checkpoints) and each request costs a hash and a
/// decode, so several in flight keep both the daemon's threads and the
/// disk busy (a 1 GiB safetensors load from a snapshot: 2.4 s at 128 KiB,
/// 1.6 s at 1 MiB, 1.5 s at 4 MiB; commands in docs/benchmarks.md). The
/// kernel sizes a file's first window from the request and grows it only
/// on sequential access, so random readers do not read 4 MiB each.
pub const READAHEAD_KIB: u32 = 4096;

/// Raises the readahead of one FUSE mount once, at the session's first
/// request after INIT ([`FirstRequest::seen`], called by `Guarded`).
#[derive(Default)]
pub struct FirstRequest {
    mountpoint: Option<PathBuf>,
    kib: u32,
    done: AtomicBool,
}

impl FirstRequest {
    /// Raise the readahead of the mount on `mountpoint` to `kib`.
    pub fn raise(mountpoint: &Path, kib: u32) -> FirstRequest {
        FirstRequest {
            mountpoint: Some(mountpoint.to_path_buf()),
            kib,
            done: AtomicBool::new(false),
        }
    }

    /// A request came (INIT is done): raise the window, the first time.
    pub fn seen(&self) {
        if self.done.load(Ordering::Relaxed) || self.done.swap(true, Ordering::Relaxed) {
            return;
        }
        let Some(mp) = &self.mountpoint else { return };
        match raise(mp, self.kib) {
            Ok(Some(path)) => {
                tracing::debug!(%path, kib = self.kib, "raised the mount's readahead")
            }
            Ok(None) => {}
            Err(e) => tracing::info!(
                mountpoint = %mp.display(),
                "kept the kernel's default readahead (128 KiB) for this mount: {e}"
            ),
        }
    }
}

/// Returns the sysfs file written, or None if nothing needed doing.
fn raise(mountpoint: &Path, kib: u32) -> std::io::Result<Option<String>> {
    // The newest FUSE mount there is ours (not, or no longer: nothing).
    let Some(m) = crate::util::mountinfo::mounts().into_iter().rfind(|m| {
        m.mountpoint == mountpoint && (m.fstype == "fuse" || m.fstype.starts_with("fuse."))
    }) else {
        return Ok(None);
    };
    let path = format!("/sys/class/bdi/{}/read_ahead_kb", m.dev);
    let current: u32 = std::fs::read_to_string(&path)?.trim().parse().unwrap_or(0);
    if current >= kib {
        return Ok(None);
    }
    std::fs::write(&path, format!("{kib}\n"))?;
    Ok(Some(path))
}
