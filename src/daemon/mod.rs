//! The daemons: the live mount daemon (`live.rs`), the snapshot mount
//! daemon (`views.rs`), and the control protocol both speak with the CLI
//! (`control.rs`). This file holds what they share: forking with a
//! readiness pipe, signals, the daemon log, mount table helpers, and
//! running a forwarded CLI command as the client who asked.
//!
//! Invariants: a daemon forks before it starts any thread; a command run
//! for a client acts as that client (fsuid, fsgid, groups, umask) and
//! writes only to that client's connection.

pub mod control;
pub mod discover;
pub mod holders;
pub mod hooks;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod registry;
pub mod replicator;
pub mod sizes;
pub mod verifier;
pub mod views;
pub mod web;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;

use crate::error::{Error, IoContext, Result};
use crate::fs::creds::{as_caller, Caller};
use crate::repo::layout::LOG;
use crate::repo::Repository;
use crate::util::dirfd::Dir;
use control::{FrameWriter, Peer, Response};

/// Runs a forwarded CLI command inside the daemon (provided by the binary):
/// (args, client's cwd, repository, client, stdout, stderr) -> exit code.
/// It runs on a thread acting as the client (see [`run_cli_request`]).
pub type CliHook = Arc<
    dyn Fn(&[Vec<u8>], &Path, &Repository, Caller, &mut dyn Write, &mut dyn Write) -> i32
        + Send
        + Sync,
>;

/// A command forwarded by a client (`Request::Cli`).
pub struct Forwarded<'a> {
    pub args: &'a [Vec<u8>],
    /// The client's working directory.
    pub cwd: &'a [u8],
    pub umask: Option<u32>,
}

/// Answer a `cli` request: run the command through `hook` on this thread,
/// acting as the client (its fsuid, fsgid, groups and umask), so that it
/// can do nothing the client could not do itself; stream its output.
/// With `views`, the reply waits until `.snapshots` shows what the
/// command changed.
pub fn run_cli_request(
    hook: Option<&CliHook>,
    repo: &Repository,
    views: Option<&crate::views::Views>,
    peer: Peer,
    cmd: Forwarded<'_>,
    w: &mut dyn Write,
) -> Option<Response> {
    let Forwarded { args, cwd, umask } = cmd;
    let Some(hook) = hook else {
        return Some(Response::error("this daemon does not run commands"));
    };
    let caller = Caller {
        uid: peer.uid,
        gid: peer.gid,
        pid: peer.pid,
        umask,
    };
    let _acting = match as_caller(caller) {
        Ok(g) => g,
        Err(e) => {
            return Some(Response::error(format!(
                "cannot act as uid {}: {e:?}",
                peer.uid
            )))
        }
    };
    // stdout streams as it comes (cat, ls of big trees); stderr is sent
    // after it.
    let mut err: Vec<u8> = Vec::new();
    let code = {
        let mut o = FrameWriter {
            inner: w,
            tag: b'o',
        };
        use std::os::unix::ffi::OsStrExt;
        hook(
            args,
            Path::new(std::ffi::OsStr::from_bytes(cwd)),
            repo,
            caller,
            &mut o,
            &mut err,
        )
    };
    // A command that changed the snapshot list (forget, a snapshot)
    // returns once `.snapshots` shows the change.
    if let Some(v) = views {
        v.sync_kernel();
    }
    if !err.is_empty() {
        let _ = control::write_frame(w, b'e', &err);
    }
    let _ = control::write_frame(w, b'x', &code.to_be_bytes());
    None
}

/// Refuse a mountpoint with entries in it (they would be hidden while
/// mounted), unless asked to mount over them.
pub fn check_mountpoint_empty(mountpoint: &Path, nonempty: bool) -> Result<()> {
    if nonempty {
        return Ok(());
    }
    let mut it = std::fs::read_dir(mountpoint).ctx("read directory", mountpoint)?;
    if it.next().is_some() {
        return Err(Error::InvalidInput(format!(
            "mountpoint {} is not empty (its contents would be hidden while mounted); use an empty directory, or --nonempty to mount over them",
            mountpoint.display()
        )));
    }
    Ok(())
}

/// The rewindfs repository `dir` is, or is inside, if any: a directory
/// with a `config.json` holding a rewindfs format version and a `packs`
/// directory.
pub fn repository_at_or_above(dir: &Path) -> Option<PathBuf> {
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if looks_like_repository(d) {
            return Some(d.to_path_buf());
        }
        cur = d.parent();
    }
    None
}

pub(crate) fn looks_like_repository(d: &Path) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        format_version: u32,
        repo_id: String,
    }
    let Ok(md) = std::fs::symlink_metadata(d.join(crate::repo::layout::PACKS)) else {
        return false;
    };
    if !md.is_dir() {
        return false;
    }
    let Ok(dir) = Dir::open_path(d) else {
        return false;
    };
    match dir.read(crate::repo::layout::CONFIG, 1 << 20) {
        Ok(Some(b)) => serde_json::from_slice::<Probe>(&b)
            .map(|p| p.format_version > 0 && !p.repo_id.is_empty())
            .unwrap_or(false),
        _ => false,
    }
}

/// Mount points from /proc/self/mountinfo: (mount point, fs type, source).
pub fn mounts() -> Vec<(PathBuf, String, String)> {
    crate::util::mountinfo::mounts()
        .into_iter()
        .map(|m| (m.mountpoint, m.fstype, m.source))
        .collect()
}

/// Unmount one of this daemon's mounts, as umount(8) would: a plain
/// unmount fails with EBUSY while any process has a file of it open or
/// mapped, or a directory in it as its working directory; a lazy one
/// detaches it at once (it is gone when the last of them closes). The
/// error of a busy mount names who holds it.
pub fn unmount_mount(mp: &Path, lazy: bool) -> std::result::Result<(), String> {
    use rustix::mount::UnmountFlags;
    let flags = if lazy {
        UnmountFlags::DETACH
    } else {
        UnmountFlags::empty()
    };
    let r = if rustix::process::geteuid().is_root() {
        rustix::mount::unmount(mp, flags).map_err(std::io::Error::from)
    } else {
        // An unprivileged daemon's mount is undone by the setuid helper.
        let mut c = std::process::Command::new("fusermount3");
        c.arg("-u");
        if lazy {
            c.arg("-z");
        }
        match c.arg(mp).output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) if String::from_utf8_lossy(&o.stderr).contains("busy") => {
                Err(std::io::Error::from_raw_os_error(libc::EBUSY))
            }
            Ok(o) => Err(std::io::Error::other(
                String::from_utf8_lossy(&o.stderr).trim().to_string(),
            )),
            Err(e) => Err(e),
        }
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let held = holders::holders(mp);
            let who = if held.is_empty() {
                String::from(" (by no process this daemon can see)")
            } else {
                format!(" by{}", holders::describe(&held, 8))
            };
            Err(format!(
                "{} is busy: it is in use{who}\nClose them, or unmount lazily with `rewindfs umount --lazy {}`: the mount disappears at once and the daemon finishes (its last snapshot) when the last of them is closed.",
                mp.display(),
                mp.display()
            ))
        }
        Err(e) => Err(format!("cannot unmount {}: {e}", mp.display())),
    }
}

pub fn is_mountpoint(p: &Path) -> bool {
    mounts().iter().any(|(m, _, _)| m == p)
}

/// Run `f` on a thread of its own at the first SIGTERM, SIGINT or SIGHUP.
pub fn on_first_signal(f: impl FnOnce(i32) + Send + 'static) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| Error::io("install signal handlers", "", e))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                f(sig);
            }
        })
        .map_err(|e| Error::io("start thread", "", e))?;
    Ok(())
}

/// The child's end of a forked daemon's readiness pipe.
pub struct Readiness(Mutex<Option<OwnedFd>>);

impl Readiness {
    /// Tell the waiting parent the mount is live, then point stdio at
    /// /dev/null and REPO/daemon.log.
    pub fn ready(&self, repo: &Dir) {
        if let Some(w) = self.0.lock().take() {
            let _ = std::fs::File::from(w).write_all(b"ok\n");
        }
        detach_stdio(repo);
        keep_log_bounded(repo);
    }

    /// Hand a start-up error to the parent (once; nothing after `ready`).
    fn fail(&self, e: &Error) {
        if let Some(w) = self.0.lock().take() {
            let _ = std::fs::File::from(w).write_all(format!("{e}\n").as_bytes());
        }
    }
}

/// Fork a daemon that runs `child`. The parent returns once the child
/// calls [`Readiness::ready`] (Ok) or fails (its error), or with `exited`
/// if the child dies first; the child never returns.
pub fn fork_daemon(exited: &str, child: impl FnOnce(&Readiness) -> Result<()>) -> Result<()> {
    let (rd, wr) = rustix::pipe::pipe().map_err(|e| Error::io("pipe", "", e.into()))?;
    // SAFETY: fork is called before this process has started any thread
    // (the CLI parses arguments and checks paths on the main thread only),
    // so the child is a complete copy; both sides continue with plain
    // syscalls.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::io("fork", "", std::io::Error::last_os_error()));
    }
    if pid > 0 {
        drop(wr);
        let mut msg = String::new();
        let _ = std::fs::File::from(rd).read_to_string(&mut msg);
        return match msg.strip_prefix("ok") {
            Some(_) => Ok(()),
            None if msg.is_empty() => Err(Error::InvalidInput(exited.into())),
            None => Err(Error::InvalidInput(msg.trim().to_string())),
        };
    }
    drop(rd);
    let _ = rustix::process::setsid();
    let ready = Readiness(Mutex::new(Some(wr)));
    let r = child(&ready);
    if let Err(e) = &r {
        ready.fail(e);
    }
    std::process::exit(if r.is_ok() { 0 } else { 1 });
}

/// daemon.log is rotated once it passes this size: the old one becomes
/// daemon.log.1 (replacing the one before), so the logs of a repository
/// take at most about twice this.
pub const LOG_MAX_BYTES: u64 = 16 << 20;

/// How often the log's size is checked.
const LOG_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Rotate REPO/daemon.log (our stderr) when it passes [`LOG_MAX_BYTES`],
/// on a thread of its own.
fn keep_log_bounded(repo: &Dir) {
    let Ok(dir) = repo.try_clone() else { return };
    let spawned = std::thread::Builder::new()
        .name("log-rotate".into())
        .spawn(move || loop {
            std::thread::sleep(LOG_CHECK);
            let big = rustix::fs::fstat(rustix::stdio::stderr()).is_ok_and(|st| {
                st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size as u64 > LOG_MAX_BYTES
            });
            if big {
                rotate_log(&dir);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the log rotation thread (daemon.log is not bounded): {e}");
    }
}

/// daemon.log -> daemon.log.1, and stderr to a fresh daemon.log.
fn rotate_log(dir: &Dir) {
    let old = format!("{LOG}.1");
    if dir.rename(LOG, &old).is_err() {
        return;
    }
    if let Some(log) = open_log(dir) {
        let _ = rustix::stdio::dup2_stderr(log.as_fd());
        tracing::info!("daemon.log rotated (the previous one is {old})");
    }
}

/// REPO/daemon.log for appending (through the repository's descriptor,
/// never a symlink, 0600, only a regular file of ours).
fn open_log(repo: &Dir) -> Option<std::fs::File> {
    repo.open_file(
        LOG,
        rustix::fs::OFlags::WRONLY
            | rustix::fs::OFlags::APPEND
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::NONBLOCK,
        0o600,
    )
    .ok()
    .filter(|f| {
        // Only a regular file of ours; tighten an old log's mode.
        let ok = rustix::fs::fstat(f).is_ok_and(|st| {
            st.st_mode & libc::S_IFMT == libc::S_IFREG
                && st.st_uid == rustix::process::geteuid().as_raw()
        });
        ok && rustix::fs::fchmod(f, rustix::fs::Mode::from_raw_mode(0o600)).is_ok()
    })
}

/// Point stdin/stdout at /dev/null and stderr (the log) at REPO/daemon.log
/// (opened through the repository's descriptor, never a symlink, 0600).
pub fn detach_stdio(repo: &Dir) {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null");
    let log = open_log(repo);
    if let Ok(null) = null {
        let _ = rustix::stdio::dup2_stdin(null.as_fd());
        let _ = rustix::stdio::dup2_stdout(null.as_fd());
        if log.is_none() {
            let _ = rustix::stdio::dup2_stderr(null.as_fd());
        }
    }
    if let Some(log) = log {
        let _ = rustix::stdio::dup2_stderr(log.as_fd());
    }
}
