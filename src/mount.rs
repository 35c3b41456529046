//! One live mount, assembled in one place: the journal and its persister,
//! the tracker, the live filesystem, the snapshot views, the FUSE session
//! and the flusher. The mount daemon and the tests both start mounts
//! through [`LiveMount::start`], so what is tested is what runs.
//!
//! Order matters for kill -9 and for failed starts: the journal is open
//! (and an earlier mount's records loaded) before the filesystem records
//! anything; the flusher subscribes to events before the session serves
//! its first request; on stop, the session is gone before the last
//! snapshot, and the persister writes the journal after it.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::flusher::{Flusher, FlusherCtx, Policy};
use crate::fs::LiveFs;
use crate::fuse::guard::Guarded;
use crate::fuse::{LiveAdapter, MountConfig};
use crate::repo::Repository;
use crate::snapshot::SnapshotRecord;
use crate::track::persister::Persister;
use crate::track::{FileKey, Journal, Tracker};
use crate::views::{ViewOptions, Views};

/// What a live mount is made of.
pub struct LiveMountConfig {
    /// The backing directory (absolute, canonical).
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub repo: Arc<Repository>,
    pub mount: MountConfig,
    pub policy: Policy,
    /// The repository directory when it is inside the backing directory:
    /// hidden from the mount and never captured.
    pub hidden: Option<FileKey>,
    /// Serve the snapshot views under `.snapshots`.
    pub views: bool,
    /// Where the flusher reports the mount-time check.
    pub startup: Arc<Mutex<String>>,
    /// Capture threads.
    pub threads: usize,
    /// The flusher's events (snapshots, failures) go here.
    pub events: Arc<crate::flusher::Broadcast>,
}

/// A mounted live filesystem with everything that keeps it backed up.
pub struct LiveMount {
    pub repo: Arc<Repository>,
    pub tracker: Tracker,
    pub fs: Arc<LiveFs>,
    pub views: Option<Arc<Views>>,
    pub flusher: Arc<Flusher>,
    pub mountpoint: PathBuf,
    persister: Option<Persister>,
    session: Option<fuser::Session<Guarded<LiveAdapter>>>,
    background: Option<fuser::BackgroundSession>,
}

impl LiveMount {
    /// Open the journal, mount, and start the flusher and the persister.
    /// The session is mounted but serves nothing until [`LiveMount::serve`]
    /// or [`LiveMount::spawn`]; dropping the `LiveMount` unmounts.
    pub fn start(cfg: LiveMountConfig) -> Result<LiveMount> {
        crate::util::sys::tune_allocator();
        let journal = Arc::new(Journal::open(
            cfg.repo.index().journal_tree()?,
            cfg.repo.config.block_size,
        )?);
        let tracker = Tracker::new(journal.clone());
        // Checkpoints deleted or replaced before a snapshot held them are
        // kept aside (when closing one takes a snapshot).
        if cfg.policy.checkpoint_snapshots && cfg.policy.listens() && !tracker.untracked() {
            use std::os::unix::fs::MetadataExt;
            let dev = std::fs::metadata(&cfg.backing)
                .map_err(|e| Error::io("stat", &cfg.backing, e))?
                .dev();
            match crate::track::keep::Keeper::open(cfg.repo.dir(), dev) {
                Ok(Some(k)) => tracker.set_keeper(k),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    "checkpoints deleted before a snapshot holds them are not kept aside: {e}"
                ),
            }
        }
        let views = cfg.views.then(|| {
            Views::new(
                cfg.repo.clone(),
                cfg.mount.chunk_cache,
                ViewOptions {
                    materialize: cfg.mount.materialize.options(cfg.repo.dir()),
                    entries_cached: cfg.mount.view_entries,
                    ..ViewOptions::default()
                },
            )
        });
        let (session, fs) = crate::fuse::mount_live(
            &cfg.backing,
            &cfg.mountpoint,
            tracker.recorder(),
            &cfg.mount,
            cfg.hidden,
            views.clone(),
        )
        .map_err(|e| Error::io("mount on", &cfg.mountpoint, e))?;
        let flusher = Arc::new(Flusher::start(FlusherCtx {
            startup: cfg.startup,
            repo: cfg.repo.clone(),
            track: tracker.freezer(),
            objects: fs.clone(),
            backing: cfg.backing.clone(),
            mountpoint: cfg.mountpoint.clone(),
            hidden: cfg.hidden,
            writeback_cache: cfg.mount.writeback_cache,
            threads: cfg.threads,
            policy: cfg.policy,
            events: cfg.events,
            materialize: views.as_ref().and_then(|v| v.materialize.clone()),
        })?);
        let persister = Persister::start(journal)?;
        Ok(LiveMount {
            repo: cfg.repo,
            tracker,
            fs,
            views,
            flusher,
            mountpoint: cfg.mountpoint,
            persister: Some(persister),
            session: Some(session),
            background: None,
        })
    }

    /// What unmounts this mount from another thread (signals, `umount`).
    pub fn unmounter(&mut self) -> Option<fuser::SessionUnmounter> {
        self.session.as_mut().map(|s| s.unmount_callable())
    }

    /// Serve requests on this thread until the mount is unmounted.
    pub fn serve(&mut self) -> Result<()> {
        match self.session.take() {
            Some(s) => s.run().map_err(|e| Error::io("serve", &self.mountpoint, e)),
            None => Ok(()),
        }
    }

    /// Serve requests on background threads.
    pub fn spawn(&mut self) -> Result<()> {
        if let Some(s) = self.session.take() {
            self.background = Some(
                s.spawn()
                    .map_err(|e| Error::io("serve", &self.mountpoint, e))?,
            );
        }
        Ok(())
    }

    /// Unmount (if still mounted), stop the flusher (taking a last
    /// snapshot of pending changes if asked: nothing can change any more),
    /// and write the journal.
    pub fn stop(mut self, final_snapshot: bool) -> Result<Option<SnapshotRecord>> {
        self.unmount();
        let last = self.flusher.stop(final_snapshot);
        // Kept checkpoints served from the cache are made mutable again
        // (see `Materializer::release`).
        if let Some(m) = self.views.as_ref().and_then(|v| v.materialize.as_ref()) {
            m.release();
        }
        if let Some(k) = self.tracker.keeper() {
            k.release();
        }
        if let Some(p) = self.persister.take() {
            p.stop()?;
        }
        last
    }

    fn unmount(&mut self) {
        if let Some(bg) = self.background.take() {
            if bg.umount_and_join().is_err() {
                let _ =
                    rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
            }
        }
        // An unstarted or finished session unmounts when dropped.
        self.session = None;
    }
}

impl Drop for LiveMount {
    fn drop(&mut self) {
        self.unmount();
        let _ = self.flusher.stop(false);
    }
}
