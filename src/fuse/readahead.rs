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

use std::path::{Path, PathBuf};

/// Four full-size (1 MiB) requests ahead: snapshot files are usually read
/// whole (datasets, checkpoints) and each request costs a hash and a
/// decode, so several in flight keep both the daemon's threads and the
/// disk busy (a 1 GiB safetensors load from a snapshot: 2.4 s at 128 KiB,
/// 1.6 s at 1 MiB, 1.5 s at 4 MiB; commands in docs/benchmarks.md). The
/// kernel sizes a file's first window from the request and grows it only
/// on sequential access, so random readers do not read 4 MiB each.
pub const READAHEAD_KIB: u32 = 4096;

const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Raise the readahead of the FUSE mount on `mountpoint` to `kib` once
/// the kernel has finished INIT (which would otherwise lower it again).
/// Runs on its own thread: the statfs it starts with is answered by the
/// session only once INIT is done.
pub fn raise_after_init(mountpoint: PathBuf, kib: u32) {
    let spawned = std::thread::Builder::new()
        .name("readahead".into())
        .spawn(move || match raise(&mountpoint, kib) {
            Ok(Some(path)) => tracing::debug!(%path, kib, "raised the mount's readahead"),
            Ok(None) => {}
            Err(e) => tracing::info!(
                mountpoint = %mountpoint.display(),
                "kept the kernel's default readahead (128 KiB) for this mount: {e}"
            ),
        });
    if let Err(e) = spawned {
        tracing::info!("could not start the readahead thread: {e}");
    }
}

/// Returns the sysfs file written, or None if nothing needed doing.
fn raise(mountpoint: &Path, kib: u32) -> std::io::Result<Option<String>> {
    let sfs = rustix::fs::statfs(mountpoint)?;
    if sfs.f_type as i64 != FUSE_SUPER_MAGIC {
        // Not (or no longer) our mount.
        return Ok(None);
    }
    let st = rustix::fs::stat(mountpoint)?;
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        rustix::fs::major(st.st_dev),
        rustix::fs::minor(st.st_dev)
    );
    let current: u32 = std::fs::read_to_string(&path)?.trim().parse().unwrap_or(0);
    if current >= kib {
        return Ok(None);
    }
    std::fs::write(&path, format!("{kib}\n"))?;
    Ok(Some(path))
}
