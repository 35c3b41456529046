//! Read-only snapshot mounts (`rewindfs mount-snapshot`).
//!
//! Whoever holds the repository serves them: the live mount's daemon when
//! there is one (the CLI asks it over the control socket), otherwise a
//! small daemon of its own, which serves any further snapshot mounts of
//! that repository and exits when its last one is unmounted.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::control::{self, DaemonStatus, NewestSnapshot, Request, Response};
use super::CliHook;
use crate::error::{Error, IoContext, Result};
use crate::fuse::mount_views;
use crate::repo::Repository;
use crate::snapshot::select::select;
use crate::util::time;
use crate::views::{Views, SNAPDIR};

/// What to mount.
#[derive(Clone, Debug)]
pub struct SnapMountRequest {
    pub repo: PathBuf,
    /// Read the repository from this remote instead (`repo` unused).
    pub remote: Option<crate::remote::config::RemoteSpec>,
    /// Snapshot selector (ignored with `all`).
    pub snap: String,
    pub mountpoint: PathBuf,
    /// The whole `.snapshots` tree instead of one snapshot.
    pub all: bool,
    pub allow_other: bool,
    pub foreground: bool,
    pub chunk_cache: u64,
    /// Entries of snapshot directories kept per open snapshot.
    pub view_entries: usize,
    /// The views' materialization cache.
    pub materialize: crate::fuse::session::MaterializeConfig,
    /// Mount over a mountpoint that has entries.
    pub nonempty: bool,
}

/// The snapshot mounts a process serves.
#[derive(Default)]
pub struct ExtraMounts {
    mounts: Mutex<HashMap<PathBuf, Served>>,
    /// Mounts detached lazily whose sessions still serve open files.
    detached: Mutex<Vec<Served>>,
}

/// One snapshot mount: its session, and (for `--all`) its registration
/// with the views' freshness (the kernel told of new snapshots).
struct Served {
    session: fuser::BackgroundSession,
    fresh: Option<(Arc<Views>, u64)>,
}

impl Served {
    fn forget_kernel(&self) {
        if let Some((v, token)) = &self.fresh {
            v.freshness.remove(*token);
        }
    }
}

impl ExtraMounts {
    /// Mount `snap` (or all snapshots) of the views on `mountpoint`.
    pub fn mount(
        &self,
        views: &Arc<Views>,
        snap: &str,
        all: bool,
        mountpoint: &Path,
        allow_other: bool,
        nonempty: bool,
    ) -> Result<()> {
        let mp = check_mountpoint(mountpoint, nonempty)?;
        let root = if all {
            SNAPDIR
        } else {
            let list = views.repo.snapshots()?;
            let rec = select(&list, snap, time::now_ns())?;
            crate::views::VIEW_BASE + (rec.id << 32)
        };
        let repo_root = views.repo.root();
        let fsname = super::discover::mount_source(
            &repo_root
                .canonicalize()
                .unwrap_or_else(|_| repo_root.to_path_buf()),
        );
        let session = mount_views(views.clone(), root, &mp, &fsname, allow_other)
            .map_err(|e| Error::io("mount on", &mp, e))?;
        // A mount of `.snapshots` shows the list: it is kept current.
        let fresh = (root == SNAPDIR).then(|| {
            let map = crate::views::RootMap { root };
            (views.clone(), views.freshness.add(session.notifier(), map))
        });
        let bg = match session.spawn() {
            Ok(bg) => bg,
            Err(e) => {
                if let Some((v, t)) = fresh {
                    v.freshness.remove(t);
                }
                return Err(Error::io("serve", &mp, e));
            }
        };
        self.mounts.lock().insert(mp, Served { session: bg, fresh });
        Ok(())
    }

    /// Unmount one of our mounts: `Ok(false)` if it is not ours; a busy
    /// one is refused (naming who holds it) unless `lazy`, which detaches
    /// it (its session serves the open files until they are closed).
    pub fn unmount(&self, mountpoint: &Path, lazy: bool) -> std::result::Result<bool, String> {
        let mp = mountpoint
            .canonicalize()
            .unwrap_or_else(|_| mountpoint.to_path_buf());
        if !self.mounts.lock().contains_key(&mp) {
            return Ok(false);
        }
        super::unmount_mount(&mp, lazy)?;
        let Some(served) = self.mounts.lock().remove(&mp) else {
            return Ok(true);
        };
        served.forget_kernel();
        if lazy {
            self.detached.lock().push(served);
        } else {
            // Unmounted: the session ends (fuser's own unmount finds the
            // mount gone).
            let _ = served.session.umount_and_join();
        }
        Ok(true)
    }

    /// Unmount everything (the daemon stops): busy mounts are detached.
    pub fn unmount_all(&self) {
        let all: Vec<PathBuf> = self.mounts.lock().keys().cloned().collect();
        for mp in all {
            if let Err(e) = self.unmount(&mp, true) {
                tracing::warn!("{e}");
            }
        }
    }

    pub fn mountpoints(&self) -> Vec<String> {
        self.mounts
            .lock()
            .keys()
            .map(|p| p.display().to_string())
            .collect()
    }

    /// Drop mounts whose session ended (unmounted with plain umount).
    pub fn reap(&self) {
        self.mounts.lock().retain(|_, s| {
            let done = s.session.guard.is_finished();
            if done {
                s.forget_kernel();
            }
            !done
        });
        self.detached
            .lock()
            .retain(|s| !s.session.guard.is_finished());
    }

    /// No mount is served (detached ones still serving count).
    pub fn is_empty(&self) -> bool {
        self.mounts.lock().is_empty() && self.detached.lock().is_empty()
    }
}

fn check_mountpoint(mp: &Path, nonempty: bool) -> Result<PathBuf> {
    let m = std::fs::metadata(mp)
        .map_err(|_| Error::InvalidInput(format!("mountpoint {} does not exist", mp.display())))?;
    if !m.is_dir() {
        return Err(Error::InvalidInput(format!(
            "mountpoint {} is not a directory",
            mp.display()
        )));
    }
    let mp = mp.canonicalize().ctx("resolve", mp)?;
    if super::is_mountpoint(&mp) {
        return Err(Error::InvalidInput(format!(
            "mountpoint {} is busy: something is already mounted there",
            mp.display()
        )));
    }
    super::check_mountpoint_empty(&mp, nonempty)?;
    Ok(mp)
}

/// `rewindfs mount-snapshot`: through the daemon holding the repository,
/// or in a daemon of its own.
pub fn mount_snapshot(req: SnapMountRequest, cli_hook: Option<CliHook>) -> Result<()> {
    if req.remote.is_none() && control::daemon_running(&req.repo) {
        let mp = check_mountpoint(&req.mountpoint, req.nonempty)?;
        control::call(
            &req.repo,
            &Request::MountSnapshot {
                snap: req.snap.clone(),
                mountpoint: mp.display().to_string(),
                all: req.all,
                allow_other: req.allow_other,
                nonempty: req.nonempty,
            },
            Duration::from_secs(600),
        )
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
        return Ok(());
    }
    check_mountpoint(&req.mountpoint, req.nonempty)?;
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::InvalidInput(
            "/dev/fuse is missing: FUSE is not available here".into(),
        ));
    }
    if req.foreground {
        return serve(req, cli_hook, None);
    }
    super::fork_daemon(
        "the snapshot mount daemon exited before the mount was live (see REPO/daemon.log)",
        |ready| serve(req, cli_hook, Some(ready)),
    )
}

struct SnapDaemon {
    repo: Arc<Repository>,
    views: Arc<Views>,
    mounts: ExtraMounts,
    stop: AtomicBool,
    cli_hook: Option<CliHook>,
}

impl SnapDaemon {
    fn handle(
        &self,
        req: Request,
        peer: super::control::Peer,
        w: &mut dyn Write,
    ) -> Option<Response> {
        Some(match req {
            Request::Status => Response::Status {
                status: Box::new(DaemonStatus {
                    pid: std::process::id(),
                    repo: self.repo.root().display().to_string(),
                    live: false,
                    mounts: self.mounts.mountpoints(),
                    chunk_cache_bytes: self.views.chunks.bytes(),
                    materialized: self.views.materialize.as_ref().map(|m| m.status()),
                    memory: Some(super::control::MemoryStatus::with_views(&self.views)),
                    newest: self
                        .repo
                        .snapshots()
                        .ok()
                        .and_then(|l| NewestSnapshot::of(&l)),
                    ..Default::default()
                }),
            },
            Request::Unmount { mountpoint, lazy } => {
                match mountpoint {
                    Some(mp) => match self.mounts.unmount(Path::new(&mp), lazy) {
                        Ok(true) => {}
                        Ok(false) => {
                            return Some(Response::error(format!(
                                "{mp} is not served by this daemon"
                            )))
                        }
                        Err(e) => return Some(Response::error(e)),
                    },
                    None => self.mounts.unmount_all(),
                }
                if self.mounts.is_empty() {
                    self.stop.store(true, Ordering::SeqCst);
                }
                Response::Ok
            }
            Request::MountSnapshot {
                snap,
                mountpoint,
                all,
                allow_other,
                nonempty,
            } => match self.mounts.mount(&self.views, &snap, all, Path::new(&mountpoint), allow_other, nonempty) {
                Ok(()) => Response::Ok,
                Err(e) => Response::error(e.to_string()),
            },
            Request::Cli { args, cwd, umask } => {
                return super::run_cli_request(
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
            Request::Snapshot { .. } => Response::error(
                "no live mount holds this repository (only snapshot mounts): give --source DIR to snapshot by scanning",
            ),
            Request::Failpoint { .. } => Response::error("not supported by a snapshot mount"),
        })
    }
}

fn serve(
    req: SnapMountRequest,
    cli_hook: Option<CliHook>,
    ready: Option<&super::Readiness>,
) -> Result<()> {
    // A client that goes away must not kill the daemon (EPIPE instead).
    crate::util::sys::on_broken_pipe(false);
    // A remote is read through a private directory that lives as long as
    // this daemon (the runtime and its threads start here, after the fork).
    let (repo, _remote) = match &req.remote {
        Some(spec) => {
            let opts = crate::remote::read::ReadOptions {
                cache_bytes: req.chunk_cache,
                ..Default::default()
            };
            let rr = crate::remote::read::open(spec, &opts)?;
            (rr.repo.clone(), Some(rr))
        }
        None => {
            let repo = Arc::new(Repository::open(&req.repo)?);
            repo.announce_daemon();
            (repo, None)
        }
    };
    let _registered = match &req.remote {
        None => {
            super::registry::register(&req.repo.canonicalize().unwrap_or_else(|_| req.repo.clone()))
        }
        Some(_) => None,
    };
    let views = Views::new(
        repo.clone(),
        req.chunk_cache,
        crate::views::ViewOptions {
            materialize: req.materialize.options(repo.dir()),
            entries_cached: req.view_entries,
            ..Default::default()
        },
    );
    let d = Arc::new(SnapDaemon {
        repo: repo.clone(),
        views: views.clone(),
        mounts: ExtraMounts::default(),
        stop: AtomicBool::new(false),
        cli_hook,
    });
    d.mounts.mount(
        &views,
        &req.snap,
        req.all,
        &req.mountpoint,
        req.allow_other,
        req.nonempty,
    )?;
    {
        let d2 = d.clone();
        control::serve(
            repo.dir(),
            Arc::new(move |r, peer, w: &mut dyn Write| d2.handle(r, peer, w)),
        )?;
    }
    {
        let d2 = d.clone();
        super::on_first_signal(move |_| {
            d2.mounts.unmount_all();
            d2.stop.store(true, Ordering::SeqCst);
        })?;
    }
    if let Some(r) = ready {
        r.ready(repo.dir());
    }
    // Every path is resolved: keep no directory busy.
    let _ = std::env::set_current_dir("/");
    // Until the last mount is gone (rewindfs umount, plain umount, signal).
    while !d.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        d.mounts.reap();
        if d.mounts.is_empty() {
            break;
        }
    }
    repo.announce_stopping();
    d.mounts.unmount_all();
    let _ = repo.dir().remove_file(control::SOCKET);
    // Let a control connection that asked for the last unmount get its answer.
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}
