//! The mount daemon: checks the setup, opens the repository, starts the
//! live mount (`mount::LiveMount`), serves the control socket, and
//! on unmount (or SIGTERM/SIGINT) flushes everything and leaves a clean
//! shutdown marker behind.
//!
//! Without `--foreground` the process forks before any thread exists; the
//! child does all the work and reports success (or the first error) to
//! the parent through a pipe, so `rewindfs mount` returns 0 only once the
//! mount is live, and prints one clear line otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::control::{self, DaemonStatus, NewestSnapshot, Peer, Request, Response};
use super::{
    check_mountpoint_empty, fork_daemon, is_mountpoint, on_first_signal, repository_at_or_above,
    run_cli_request, CliHook, Readiness,
};
use crate::error::{Error, IoContext, Result};
use crate::flusher::{policy::PolicyConfig, Flusher, Policy};
use crate::fuse::MountConfig;
use crate::mount::{LiveMount, LiveMountConfig};
use crate::repo::layout::MARKER;
use crate::repo::{Repository, DEFAULT_BLOCK_SIZE, DEFAULT_COMPRESSION};
use crate::track::{FileKey, Journal, JournalStats};
use crate::util::time;

#[derive(Clone)]
pub struct MountRequest {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    /// Default: `BACKING/.rewindfs`.
    pub repo: Option<PathBuf>,
    pub foreground: bool,
    pub config: MountConfig,
    /// Snapshot policy from the command line (wins over the repository's).
    pub policy: PolicyConfig,
    pub cli_hook: Option<CliHook>,
    /// Metrics, status page, hooks, rolling verification.
    pub manage: Manage,
}

/// What the daemon does for operators beside serving the mount.
#[derive(Clone, Debug, Default)]
pub struct Manage {
    /// Serve /metrics and the status page here.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Shell commands run with each committed snapshot (JSON on stdin).
    pub on_snapshot: Option<String>,
    /// Shell commands run with each failure (JSON on stdin).
    pub on_error: Option<String>,
    /// How long a hook may run before it is killed.
    pub hook_timeout: std::time::Duration,
    /// Rolling verification: every this long, check `verify_sample`
    /// percent of the chunks (rotating through all of them).
    pub verify_every: Option<std::time::Duration>,
    pub verify_sample: f64,
}

/// Checked, absolute paths of a mount.
#[derive(Clone, Debug)]
pub struct MountPaths {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub repo: PathBuf,
}

fn is_under(p: &Path, dir: &Path) -> bool {
    p == dir || p.starts_with(dir)
}

/// Refuse nonsensical setups with one clear message.
pub fn check_paths(req: &MountRequest) -> Result<MountPaths> {
    let bad = |m: String| Err(Error::InvalidInput(m));
    let backing = match req.backing.canonicalize() {
        Ok(p) if p.is_dir() => p,
        Ok(_) => return bad(format!("{} is not a directory", req.backing.display())),
        Err(_) => {
            return bad(format!(
                "backing directory {} does not exist",
                req.backing.display()
            ))
        }
    };
    let mountpoint = match std::fs::metadata(&req.mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return bad(format!(
                "{} is a stale FUSE mount (its daemon died); run `rewindfs umount {}` first",
                req.mountpoint.display(),
                req.mountpoint.display()
            ))
        }
        Err(_) => {
            return bad(format!(
                "mountpoint {} does not exist",
                req.mountpoint.display()
            ))
        }
        Ok(m) if !m.is_dir() => {
            return bad(format!(
                "mountpoint {} is not a directory",
                req.mountpoint.display()
            ))
        }
        Ok(_) => req
            .mountpoint
            .canonicalize()
            .ctx("resolve", &req.mountpoint)?,
    };
    if is_under(&mountpoint, &backing) {
        return bad(format!(
            "mountpoint {} is inside the backing directory {} (or equal to it)",
            mountpoint.display(),
            backing.display()
        ));
    }
    if is_under(&backing, &mountpoint) {
        return bad(format!(
            "backing directory {} is inside the mountpoint {}: the mount would hide it",
            backing.display(),
            mountpoint.display()
        ));
    }
    if is_mountpoint(&mountpoint) {
        return bad(format!(
            "mountpoint {} is busy: something is already mounted there",
            mountpoint.display()
        ));
    }
    check_mountpoint_empty(&mountpoint, req.config.nonempty)?;
    if let Some(r) = repository_at_or_above(&backing) {
        return bad(format!(
            "{} is {}a rewindfs repository ({}); mounting it would expose its packs and control socket. Mount the data directory instead",
            backing.display(),
            if r == backing { "" } else { "inside " },
            r.display()
        ));
    }
    let repo = match &req.repo {
        None => {
            // The default repository lives in BACKING: whoever owns
            // BACKING could replace it.
            let owner = std::fs::metadata(&backing).ctx("stat", &backing)?;
            use std::os::unix::fs::MetadataExt;
            let euid = rustix::process::geteuid().as_raw();
            if owner.uid() != euid {
                return bad(format!(
                    "{} is owned by uid {}, not by you (uid {euid}): the default repository {}/.rewindfs would be in that user's hands. Keep the repository where only you can write, e.g. `--repo /var/lib/rewindfs/NAME`",
                    backing.display(),
                    owner.uid(),
                    backing.display()
                ));
            }
            backing.join(".rewindfs")
        }
        Some(r) => {
            let parent = r
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let parent = parent.canonicalize().map_err(|_| {
                Error::InvalidInput(format!(
                    "the parent of repository {} does not exist",
                    r.display()
                ))
            })?;
            match r.file_name() {
                Some(n) => parent.join(n),
                None => parent,
            }
        }
    };
    if is_under(&repo, &mountpoint) {
        return bad(format!(
            "repository {} is inside the mountpoint {}",
            repo.display(),
            mountpoint.display()
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return bad("/dev/fuse is missing: load the fuse module (modprobe fuse) or run where FUSE is available".into());
    }
    Ok(MountPaths {
        backing,
        mountpoint,
        repo,
    })
}

#[derive(Serialize, Deserialize)]
struct Marker {
    pid: u32,
    mountpoint: String,
    backing: String,
    started: String,
}

/// Open (creating on first use) the repository of a mount.
fn open_repo(repo: &Path) -> Result<Repository> {
    match Repository::open(repo) {
        Err(Error::NotARepository { .. }) => {
            Repository::init(repo, DEFAULT_BLOCK_SIZE, DEFAULT_COMPRESSION)?;
            Repository::open(repo)
        }
        other => other,
    }
}

/// Everything the daemon's threads share.
struct Shared {
    paths: MountPaths,
    repo: Arc<Repository>,
    journal: Arc<Journal>,
    started: String,
    unclean: bool,
    startup: Arc<Mutex<String>>,
    cfg: MountConfig,
    fs: Arc<crate::fs::LiveFs>,
    untracked: bool,
    unmount: Mutex<Option<fuser::SessionUnmounter>>,
    /// The mount was detached lazily (see `request_unmount`).
    detached: std::sync::atomic::AtomicBool,
    flusher: Arc<Flusher>,
    cli_hook: Option<CliHook>,
    views: Arc<crate::views::Views>,
    /// Read-only snapshot mounts served by this daemon.
    extra: super::views::ExtraMounts,
    /// Rolling verification and its coverage.
    verify: Option<super::verifier::Rolling>,
    coverage: Arc<Mutex<super::metrics::VerifyCoverage>>,
    metrics_url: Mutex<Option<String>>,
    /// The listener's access token (shown only through the control
    /// socket, which answers root and the daemon's own user).
    metrics_token: Mutex<Option<String>>,
    replicas: super::replicator::Replicas,
}

impl Shared {
    fn status(&self) -> DaemonStatus {
        let JournalStats {
            dirty_files,
            dirty_blocks,
            oldest_change_ns,
            records,
        } = self.journal.stats();
        let list = self.repo.snapshots().unwrap_or_default();
        // Read before the struct below: its temporaries (lock guards among
        // them) live until its end.
        let metrics_url = self.metrics_url.lock().clone();
        let metrics_token = self.metrics_token.lock().clone();
        let flusher = self.flusher.status.lock().clone();
        let memory = super::control::MemoryStatus {
            flusher_tree_entries: flusher.tree_entries,
            flusher_tree_bytes: flusher.tree_bytes,
            flusher_index_entries: flusher.index_entries,
            flusher_index_bytes: flusher.index_bytes,
            flusher_index_file_bytes: flusher.index_file_bytes,
            ..super::control::MemoryStatus::with_views(&self.views)
        };
        DaemonStatus {
            pid: std::process::id(),
            mountpoint: self.paths.mountpoint.display().to_string(),
            backing: self.paths.backing.display().to_string(),
            repo: self.paths.repo.display().to_string(),
            started: self.started.clone(),
            unclean_start: self.unclean,
            startup_check: self.startup.lock().clone(),
            dirty_files,
            dirty_blocks,
            dirty_bytes: dirty_blocks * self.journal.block_size(),
            oldest_change: oldest_change_ns.map(time::rfc3339),
            journal_records: records,
            block_size: self.repo.config.block_size,
            passthrough_reads: self.fs.passthrough_enabled(),
            reads: self.fs.read_mode(),
            checkpoint_patterns: self
                .cfg
                .checkpoints
                .as_ref()
                .map(|p| p.patterns().to_vec())
                .unwrap_or_default(),
            fast_path_open: self.fs.fast_path_open(),
            untracked: self.untracked,
            writeback_cache: self.cfg.writeback_cache,
            snapshots: list.len() as u64,
            newest: NewestSnapshot::of(&list),
            oldest_change_ns,
            flusher: Some(flusher),
            mounts: self.extra.mountpoints(),
            live: true,
            detached: self.detached.load(std::sync::atomic::Ordering::Relaxed),
            manifests_read: crate::repo::manifests_read(),
            dir_objects_read: crate::repo::Repository::dir_objects_read(),
            open_files: {
                let c = self.fs.open_modes();
                c.fast + c.bypass + c.passthrough + c.daemon
            },
            chunk_cache_bytes: self.views.chunks.bytes(),
            materialized: self.views.materialize.as_ref().map(|m| m.status()),
            verify: self.verify.map(|r| {
                let c = self.coverage.lock().clone();
                super::control::VerifyStatus {
                    every_seconds: r.every.as_secs(),
                    sample_percent: r.sample,
                    bound_seconds: r.bound().as_secs(),
                    coverage: c.ratio,
                    checked_total: c.chunks_checked_total,
                    damaged_total: c.damaged_total,
                    last_rotation: c.last_cycle_ns.map(time::rfc3339),
                }
            }),
            metrics_url: metrics_url.clone(),
            status_page: metrics_url
                .zip(metrics_token.as_ref())
                .map(|(u, t)| format!("{u}?token={t}")),
            metrics_token_file: metrics_token.as_ref().map(|_| {
                self.paths
                    .repo
                    .join(crate::repo::layout::WEB_TOKEN)
                    .display()
                    .to_string()
            }),
            remotes: self.replicas.lock().clone(),
            memory: Some(memory),
        }
    }

    /// Ask the kernel to unmount; the session then ends. A busy mount is
    /// refused (the error names who holds it) unless `lazy`: it is then
    /// detached, and the session ends when the last user closes.
    fn request_unmount(&self, lazy: bool) -> std::result::Result<(), String> {
        super::unmount_mount(&self.paths.mountpoint, lazy)?;
        if lazy {
            self.detached
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // fuser's own unmount now finds the mount gone (and will not try
        // again when the session ends).
        if let Some(u) = self.unmount.lock().as_mut() {
            let _ = u.unmount();
        }
        Ok(())
    }

    fn handle(&self, req: Request, peer: Peer, w: &mut dyn Write) -> Option<Response> {
        Some(match req {
            Request::Status => Response::Status {
                status: Box::new(self.status()),
            },
            Request::Unmount { mountpoint, lazy } => {
                if let Some(mp) = &mountpoint {
                    match self.extra.unmount(Path::new(mp), lazy) {
                        Ok(true) => return Some(Response::Ok),
                        Ok(false) => {}
                        Err(e) => return Some(Response::error(e)),
                    }
                    if Path::new(mp) != self.paths.mountpoint {
                        return Some(Response::error(format!(
                            "{mp} is not served by this daemon"
                        )));
                    }
                }
                match self.request_unmount(lazy) {
                    Ok(()) => Response::Ok,
                    Err(e) => Response::error(e),
                }
            }
            Request::MountSnapshot {
                snap,
                mountpoint,
                all,
                allow_other,
                nonempty,
            } => {
                match self.extra.mount(
                    &self.views,
                    &snap,
                    all,
                    Path::new(&mountpoint),
                    allow_other,
                    nonempty,
                ) {
                    Ok(()) => Response::Ok,
                    Err(e) => Response::error(e.to_string()),
                }
            }
            Request::Snapshot { kind, label } => {
                let kind = match kind.as_deref().map(str::parse).transpose() {
                    Ok(k) => k,
                    Err(e) => return Some(Response::error(format!("{e}"))),
                };
                match self.flusher.snapshot(kind, label) {
                    Ok(rec) => {
                        // `.snapshots/latest` names it when we answer.
                        self.views.sync_kernel();
                        Response::Snapshot {
                            record: Box::new(rec),
                        }
                    }
                    Err(e) => Response::error(e.to_string()),
                }
            }
            Request::Failpoint { name, actions } => {
                if !cfg!(feature = "failpoints") {
                    return Some(Response::error("this build has no fault injection points"));
                }
                #[cfg(feature = "failpoints")]
                if let Err(e) = fail::cfg(name.clone(), &actions) {
                    return Some(Response::error(e));
                }
                let _ = (&name, &actions);
                Response::Ok
            }
            Request::Cli { args, cwd, umask } => {
                return run_cli_request(
                    self.cli_hook.as_ref(),
                    &self.repo,
                    Some(&self.views),
                    peer,
                    super::Forwarded {
                        args: &args,
                        cwd: &cwd,
                        umask,
                    },
                    w,
                )
            }
        })
    }
}

/// `rewindfs mount`: check, fork (unless foreground), run.
pub fn mount(req: MountRequest) -> Result<()> {
    let paths = check_paths(&req)?;
    // Bad policy flags are refused before anything starts.
    Policy::layered(&[&req.policy])?;
    if req.foreground {
        return run(paths, &req, None);
    }
    fork_daemon(
        "the mount daemon exited before the mount was live (see REPO/daemon.log)",
        |ready| run(paths, &req, Some(ready)),
    )
}

fn run(paths: MountPaths, req: &MountRequest, ready: Option<&Readiness>) -> Result<()> {
    // A client that goes away must not kill the daemon (EPIPE instead).
    crate::util::sys::on_broken_pipe(false);
    let cfg = req.config.clone();
    crate::repo::set_index_cache(cfg.index_cache);
    let repo = Arc::new(open_repo(&paths.repo)?);
    repo.announce_daemon();
    // `status` finds this daemon even after its mount was detached.
    let _registered = super::registry::register(&paths.repo);
    // Every path is absolute (check_paths): keep no directory busy (the
    // directory `mount` was run from could be another mount to unmount).
    let _ = std::env::set_current_dir("/");
    let stored = repo.config.policy.clone().unwrap_or_default();
    let policy = Policy::layered(&[&stored, &req.policy])?;
    let unclean = repo.dir().stat_at(MARKER).is_ok();
    if unclean {
        tracing::warn!("the previous mount did not stop cleanly; checking the backing directory against the latest snapshot");
    }
    let started = time::rfc3339(time::now_ns());
    let hidden = if paths.repo.starts_with(&paths.backing) {
        Some(FileKey::of(&repo.dir().stat()?))
    } else {
        None
    };
    let mut cfg = cfg;
    cfg.checkpoints = policy.checkpoint_patterns()?;
    cfg.all_close_events = !policy.on_close.is_empty();
    cfg.fsname = super::discover::mount_source(&paths.repo);
    let startup = Arc::new(Mutex::new("running".to_string()));
    // Subscribers of the flusher's events exist before it starts: the
    // first snapshot's event reaches them too.
    let events = Arc::new(crate::flusher::Broadcast::default());
    let metrics_events = req.manage.metrics_listen.map(|_| events.subscribe(256));
    let hooks = super::hooks::Hooks {
        on_snapshot: req.manage.on_snapshot.clone(),
        on_error: req.manage.on_error.clone(),
        timeout: req.manage.hook_timeout,
    };
    let hook_events = (!hooks.is_empty()).then(|| events.subscribe(64));
    let replica_events = events.subscribe(16);
    let size_events = events.subscribe(256);
    // A taken port fails the start before anything is mounted.
    let listener = req
        .manage
        .metrics_listen
        .map(super::web::bind)
        .transpose()?;
    let mut live = LiveMount::start(LiveMountConfig {
        events: events.clone(),
        backing: paths.backing.clone(),
        mountpoint: paths.mountpoint.clone(),
        repo: repo.clone(),
        mount: cfg.clone(),
        policy: policy.clone(),
        hidden,
        views: true,
        startup: startup.clone(),
        threads: crate::util::pool::threads(),
    })?;
    // Mounted (no request is served before `serve`): from here until a
    // clean stop, the marker says a mount is running. Any start-up
    // failure below removes it again (and unmounts, dropping `live`).
    let m = Marker {
        pid: std::process::id(),
        mountpoint: paths.mountpoint.display().to_string(),
        backing: paths.backing.display().to_string(),
        started: started.clone(),
    };
    repo.dir().write_atomic(
        MARKER,
        &serde_json::to_vec(&m).map_err(|e| Error::InvalidInput(e.to_string()))?,
    )?;
    let mut marker = MarkerGuard {
        repo: &repo,
        mountpoint: &paths.mountpoint,
        armed: true,
        keep_marker: unclean,
    };
    let views = live
        .views
        .clone()
        .ok_or_else(|| Error::Poisoned("the live mount has no snapshot views".into()))?;
    let shared = Arc::new(Shared {
        views,
        extra: Default::default(),
        flusher: live.flusher.clone(),
        cli_hook: req.cli_hook.clone(),
        paths: paths.clone(),
        repo: repo.clone(),
        journal: live.tracker.journal().clone(),
        started,
        unclean,
        startup,
        fs: live.fs.clone(),
        untracked: live.tracker.untracked(),
        cfg: cfg.clone(),
        unmount: Mutex::new(live.unmounter()),
        detached: Default::default(),
        verify: req
            .manage
            .verify_every
            .map(|every| super::verifier::Rolling {
                every,
                sample: req.manage.verify_sample,
            }),
        coverage: Default::default(),
        metrics_url: Mutex::new(None),
        metrics_token: Mutex::new(None),
        replicas: Default::default(),
    });
    // Control socket.
    {
        let s = shared.clone();
        control::serve(
            repo.dir(),
            Arc::new(move |req, peer, w: &mut dyn Write| {
                let r = s.handle(req, peer, w);
                // What a command run here freed goes back to the system.
                crate::util::sys::release_free_memory();
                r
            }),
        )?;
    }
    if let (Some(listener), Some(rx)) = (listener, metrics_events) {
        let status = cached_status(shared.clone());
        let metrics = super::metrics::Metrics::start(
            super::metrics::Sources {
                repo: repo.clone(),
                status: status.clone(),
                chunks: shared.views.chunks.clone(),
                verify: shared.coverage.clone(),
            },
            rx,
        )?;
        let token = super::web::token(repo.dir())?;
        let bound = super::web::serve(listener, metrics, repo.clone(), status, token.clone())?;
        tracing::info!("metrics and status page on http://{bound}/ (token in REPO/web-token)");
        *shared.metrics_url.lock() = Some(format!("http://{bound}/"));
        *shared.metrics_token.lock() = Some(token);
    }
    let hooks_thread = match hook_events {
        Some(rx) => Some(hooks.start(rx)?),
        None => None,
    };
    if let Some(r) = shared.verify {
        super::verifier::start(
            repo.clone(),
            r,
            shared.coverage.clone(),
            shared.flusher.events.clone(),
            policy.windows.clone(),
            policy.zone,
        )?;
    }
    super::sizes::start(repo.clone(), size_events)?;
    super::replicator::start(
        repo.clone(),
        replica_events,
        events.clone(),
        shared.replicas.clone(),
    )?;
    // Signals.
    {
        let s = shared.clone();
        on_first_signal(move |sig| {
            tracing::info!("signal {sig}: unmounting");
            super::notify::notify("STOPPING=1\nSTATUS=unmounting: taking the last snapshot");
            // A stop must happen: a busy mount is detached.
            if let Err(e) = s.request_unmount(true) {
                tracing::warn!("{e}");
            }
        })?;
    }
    if let Some(r) = ready {
        r.ready(repo.dir());
    }
    super::notify::notify(&format!(
        "READY=1\nSTATUS=serving {} on {}",
        paths.backing.display(),
        paths.mountpoint.display()
    ));
    // Running: the marker stays until the clean stop below.
    marker.armed = false;
    tracing::info!(
        "mounted {} on {} (repository {})",
        paths.backing.display(),
        paths.mountpoint.display(),
        paths.repo.display()
    );
    let result = live.serve();
    repo.announce_stopping();
    super::notify::notify("STOPPING=1\nSTATUS=unmounted: taking the last snapshot");
    shared.extra.unmount_all();
    // Unmounted: nothing can change any more. Take the last snapshot.
    match live.stop(policy.snapshot_on_unmount) {
        Ok(Some(rec)) => tracing::info!("snapshot {} taken at unmount", rec.id),
        Ok(None) => {}
        Err(e) => {
            tracing::error!("the snapshot at unmount failed (its changes stay in the journal): {e}")
        }
    }
    // The last events (the unmount's snapshot or its failure) get their
    // hooks run, within the hook timeout.
    events.close();
    if let Some(t) = hooks_thread {
        let deadline =
            std::time::Instant::now() + req.manage.hook_timeout + std::time::Duration::from_secs(2);
        while !t.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            tracing::warn!("hooks still running at exit are left behind");
        }
    }
    let _ = repo.dir().remove_file(control::SOCKET);
    shared.journal.flush()?;
    repo.dir().remove_file(MARKER)?;
    repo.dir().fsync()?;
    tracing::info!("unmounted {}", paths.mountpoint.display());
    result
}

/// The daemon's status for HTTP clients, computed at most once a second
/// (it walks the journal's dirty map under its shard locks, which writes
/// take too: a client polling in a loop must not slow writers down).
fn cached_status(shared: Arc<Shared>) -> Arc<dyn Fn() -> DaemonStatus + Send + Sync> {
    let cache: Mutex<Option<(std::time::Instant, DaemonStatus)>> = Mutex::new(None);
    Arc::new(move || {
        let mut c = cache.lock();
        if let Some((at, s)) = &*c {
            if at.elapsed() < std::time::Duration::from_secs(1) {
                return s.clone();
            }
        }
        let s = shared.status();
        *c = Some((std::time::Instant::now(), s.clone()));
        s
    })
}

/// Undoes a start that fails after the mount was made: removes the
/// running-mount marker again (one left by an earlier unclean stop is
/// kept: that stop still needs its check) and makes sure the mount is
/// gone (the session's own unmount can find it busy).
struct MarkerGuard<'r> {
    repo: &'r Repository,
    mountpoint: &'r Path,
    armed: bool,
    keep_marker: bool,
}

impl Drop for MarkerGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if !self.keep_marker {
            let _ = self.repo.dir().remove_file(MARKER);
            let _ = self.repo.dir().fsync();
        }
        if is_mountpoint(self.mountpoint) {
            let _ = rustix::mount::unmount(self.mountpoint, rustix::mount::UnmountFlags::DETACH);
        }
    }
}
