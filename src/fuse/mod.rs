//! The kernel edge: fuser adapters that only match requests and reply,
//! the routing between the live filesystem and the snapshot views, the
//! panic guard around every handler, and the mount options.
//!
//! - `router.rs`: which side answers a request (tested without a mount)
//! - `live_adapter.rs`: `impl fuser::Filesystem` for the live mount
//! - `view_adapter.rs`: `impl fuser::Filesystem` for `mount-snapshot`
//! - `guard.rs`: a panicking handler costs one request (EIO), never the mount
//! - `readahead.rs`: raising the kernel's readahead window after INIT
//!
//! Errors reach the kernel through one mapping (`error::ToErrno`).

pub mod guard;
pub mod live_adapter;
pub mod readahead;
pub mod router;
pub mod view_adapter;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};

use crate::fs::{LiveFs, LiveOptions};
use crate::track::{FileKey, Recorder};
use crate::views::Views;
pub use live_adapter::LiveAdapter;
pub use router::Router;
pub use view_adapter::{mount_views, ViewAdapter};

/// Largest read/write request: 1 MiB (max_pages 256).
pub const MAX_IO: u32 = 1 << 20;

/// What a `statfs` reply carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

impl Statfs {
    /// The backing filesystem's figures.
    pub fn of(s: &rustix::fs::StatVfs) -> Statfs {
        Statfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        }
    }

    /// A read-only view's: sizes of the repository's filesystem, nothing
    /// free.
    pub fn read_only(s: &rustix::fs::StatVfs) -> Statfs {
        Statfs {
            blocks: s.f_blocks,
            bfree: 0,
            bavail: 0,
            files: s.f_files,
            ffree: 0,
            bsize: s.f_bsize as u32,
            namelen: 255,
            frsize: s.f_frsize as u32,
        }
    }

    pub fn reply(&self, reply: fuser::ReplyStatfs) {
        reply.statfs(
            self.blocks,
            self.bfree,
            self.bavail,
            self.files,
            self.ffree,
            self.bsize,
            self.namelen,
            self.frsize,
        )
    }
}

/// How to mount a live filesystem.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Let other users use the mount (`allow_other`; the kernel then checks
    /// permissions: `default_permissions` is always on).
    pub allow_other: bool,
    pub writeback_cache: bool,
    pub passthrough_reads: bool,
    /// FUSE worker threads.
    pub threads: usize,
    pub ttl: Duration,
    /// Shown as the mount's source in /proc/mounts.
    pub fsname: String,
    /// List `.snapshots` in the root directory.
    pub snapdir_visible: bool,
    /// Bytes of verified chunks kept for snapshot reads.
    pub chunk_cache: u64,
    /// Honour setuid/setgid bits and file capabilities of programs in
    /// the mount (off: `nosuid`). Snapshot views never honour them.
    pub suid: bool,
    /// Honour device nodes in the mount (off: `nodev`).
    pub dev: bool,
    /// Mount over a mountpoint that has entries.
    pub nonempty: bool,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            allow_other: false,
            writeback_cache: false,
            passthrough_reads: false,
            threads: 4,
            ttl: Duration::from_secs(1),
            fsname: "rewindfs".into(),
            snapdir_visible: false,
            chunk_cache: 256 << 20,
            suid: false,
            dev: false,
            nonempty: false,
        }
    }
}

/// Mount a live filesystem of `backing` on `mountpoint`. The session is
/// returned unstarted: run it (`Session::run`) or spawn it.
pub fn mount_live(
    backing: &Path,
    mountpoint: &Path,
    track: Recorder,
    cfg: &MountConfig,
    hidden: Option<FileKey>,
    views: Option<Arc<Views>>,
) -> std::io::Result<(Session<guard::Guarded<LiveAdapter>>, Arc<LiveFs>)> {
    let limit = crate::util::sys::raise_fd_limit();
    tracing::debug!("open file limit: {limit}");
    let root = crate::util::sys::open_dir_path(backing)?;
    let fs = Arc::new(LiveFs::new(
        root,
        track,
        LiveOptions {
            passthrough_reads: cfg.passthrough_reads,
            ttl: cfg.ttl,
            hidden,
        },
    )?);
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(cfg.fsname.clone()),
        MountOption::Subtype("rewindfs".into()),
        MountOption::DefaultPermissions,
        if cfg.suid {
            MountOption::Suid
        } else {
            MountOption::NoSuid
        },
        if cfg.dev {
            MountOption::Dev
        } else {
            MountOption::NoDev
        },
    ];
    config.acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(cfg.threads.max(1));
    config.clone_fd = true;
    let adapter = LiveAdapter {
        router: Router {
            fs: fs.clone(),
            views,
            snapdir_visible: cfg.snapdir_visible,
        },
        writeback_cache: cfg.writeback_cache,
        dont_mask: false,
    };
    let notifier = fs.notifier.clone();
    let session = Session::new(guard::Guarded(adapter), mountpoint, &config)?;
    let _ = notifier.set(session.notifier());
    Ok((session, fs))
}
