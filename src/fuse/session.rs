//! Mounting: the options of a live mount and the FUSE session of one
//! (`nosuid,nodev` unless asked, `default_permissions` always, the
//! caller's access rule), over the live filesystem and the router.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};

use super::guard::Guarded;
use super::live_adapter::LiveAdapter;
use super::router::Router;
use crate::fs::{LiveFs, LiveOptions};
use crate::track::{FileKey, Recorder};
use crate::views::Views;

/// How long the kernel may cache entries (negative ones too) and
/// attributes of the live mount. Every change made through the mount is
/// seen by the kernel or invalidated by the daemon, so this only bounds
/// how late a change made directly in the backing directory shows up.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// The views' materialization cache as asked for on the command line.
#[derive(Clone, Debug, Default)]
pub struct MaterializeConfig {
    /// Bytes; `None`: the default for the repository's filesystem.
    pub capacity: Option<u64>,
    /// Globs of files copied at their first open.
    pub now: Vec<String>,
}

impl MaterializeConfig {
    /// The view options for a repository in `dir`.
    pub fn options(
        &self,
        dir: &crate::util::dirfd::Dir,
    ) -> crate::views::materialize::MaterializeOptions {
        crate::views::materialize::MaterializeOptions {
            capacity: self.capacity.unwrap_or_else(|| {
                crate::views::materialize::MaterializeOptions::default_capacity(dir)
            }),
            now: self.now.clone(),
        }
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
    /// The checkpoint fast path's patterns (`None`: off).
    pub checkpoints: Option<crate::fs::fastpath::CheckpointPatterns>,
    /// Every written file's close is an event (`--on-close` globs set),
    /// not only checkpoints'.
    pub all_close_events: bool,
    /// FUSE worker threads.
    pub threads: usize,
    pub ttl: Duration,
    /// Shown as the mount's source in /proc/mounts.
    pub fsname: String,
    /// List `.snapshots` in the root directory.
    pub snapdir_visible: bool,
    /// Bytes of verified chunks kept for snapshot reads.
    pub chunk_cache: u64,
    /// Entries of snapshot directories kept per open snapshot.
    pub view_entries: usize,
    /// The index's page cache (sled's cache capacity).
    pub index_cache: u64,
    /// The views' materialization cache.
    pub materialize: MaterializeConfig,
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
            passthrough_reads: true,
            checkpoints: None,
            all_close_events: false,
            threads: 4,
            ttl: DEFAULT_TTL,
            fsname: "rewindfs".into(),
            snapdir_visible: false,
            chunk_cache: 256 << 20,
            view_entries: crate::views::view_tree::DEFAULT_ENTRIES_CACHED,
            index_cache: crate::repo::INDEX_CACHE_BYTES,
            materialize: MaterializeConfig::default(),
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
) -> std::io::Result<(Session<Guarded<LiveAdapter>>, Arc<LiveFs>)> {
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
            checkpoints: cfg.checkpoints.clone(),
            all_close_events: cfg.all_close_events,
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
    let views_fresh = views.clone();
    let adapter = LiveAdapter {
        router: Router {
            fs: fs.clone(),
            views,
            snapdir_visible: cfg.snapdir_visible,
        },
        writeback_cache: cfg.writeback_cache,
        dont_mask: false,
        view_io: Default::default(),
    };
    let notifier = fs.notifier.clone();
    let first = super::readahead::FirstRequest::raise(mountpoint, super::readahead::READAHEAD_KIB);
    let session = Session::new(Guarded(adapter, first), mountpoint, &config)?;
    let _ = notifier.set(session.notifier());
    if let Some(v) = &views_fresh {
        // `.snapshots` below the live root is kept current as the list
        // changes (the registration lives as long as the views: the
        // daemon's).
        v.freshness
            .add(session.notifier(), crate::views::RootMap::BELOW_LIVE_ROOT);
    }
    Ok((session, fs))
}
