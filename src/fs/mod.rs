//! The FUSE filesystems: the live passthrough mount (and, later, the
//! snapshot views).
//!
//! - `live.rs`: the filesystem core, `Result<_, Errno>` per operation
//! - `adapter.rs`: `impl fuser::Filesystem`, match-and-reply only
//! - `inode.rs`: node ids ⇄ backing objects (`O_PATH` fds), lookup counts
//! - `creds.rs`: acting as the caller when creating objects
//! - `readahead.rs`: raising the kernel's readahead window after INIT

pub mod adapter;
pub mod chunk_cache;
pub mod creds;
pub mod guard;
pub mod handle;
pub mod inode;
pub mod live;
pub mod readahead;
pub mod snapshot_view;
pub mod view_adapter;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};

use crate::track::{FileKey, Recorder};
pub use adapter::LiveAdapter;
pub use live::{LiveFs, LiveOptions};

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

/// Every object the kernel knows holds a descriptor: raise the open-file
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

/// Mount a live filesystem of `backing` on `mountpoint`. The session is
/// returned unstarted: run it (`Session::run`) or spawn it.
pub fn mount_live(
    backing: &Path,
    mountpoint: &Path,
    track: Recorder,
    cfg: &MountConfig,
    hidden: Option<FileKey>,
    views: Option<Arc<snapshot_view::Views>>,
) -> std::io::Result<(Session<guard::Guarded<LiveAdapter>>, Arc<LiveFs>)> {
    let limit = raise_fd_limit();
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
        fs: fs.clone(),
        writeback_cache: cfg.writeback_cache,
        views,
        snapdir_visible: cfg.snapdir_visible,
        dont_mask: false,
    };
    let notifier = fs.notifier.clone();
    let session = Session::new(guard::Guarded(adapter), mountpoint, &config)?;
    let _ = notifier.set(session.notifier());
    Ok((session, fs))
}
