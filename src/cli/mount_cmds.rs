//! `mount`, `umount`, `status`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::common::human_bytes;
use rewindfs::daemon::control::{self, CallError, DaemonStatus, Request, Response};
use rewindfs::daemon::live::MountRequest;
use rewindfs::daemon::{self};
use rewindfs::flusher::policy::PolicyConfig;
use rewindfs::fuse::MountConfig;

fn parse_ttl(s: &str) -> std::result::Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("bad duration {s:?}: {e} (use e.g. 30s, 1m or 0)"))?;
    if d > Duration::from_secs(24 * 3600) {
        return Err(format!("{s:?} is longer than a day"));
    }
    Ok(d)
}

fn parse_period(s: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("bad duration {s:?}: {e} (use e.g. 10m, 1h)"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is shorter than a second"));
    }
    Ok(d)
}

/// The materialization cache of snapshot views (mount, mount-snapshot).
#[derive(Args)]
pub struct MaterializeArgs {
    /// Disk for verified copies of snapshot files that are opened again,
    /// which the kernel then serves by passthrough at the disk's speed
    /// (re-reads and mmap of checkpoints in .snapshots). Kept in
    /// REPO/cache/materialized; a file is copied in the background at its
    /// second open (at its first with --materialize-now). SIZE (e.g. 20G),
    /// `auto` (a tenth of the repository's filesystem, at most 64 GiB) or
    /// 0 (off). Needs root (FUSE passthrough); not for encrypted or remote
    /// repositories.
    #[arg(long, value_name = "SIZE", default_value = "auto", value_parser = parse_materialize_size)]
    materialize_cache: MaterializeSize,
    /// Copy snapshot files matching GLOB (on the path in the snapshot or
    /// the file name, e.g. '*.safetensors') at their first open.
    /// Repeatable.
    #[arg(long = "materialize-now", value_name = "GLOB", value_parser = parse_glob)]
    materialize_now: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
pub enum MaterializeSize {
    Auto,
    Bytes(u64),
}

fn parse_materialize_size(s: &str) -> std::result::Result<MaterializeSize, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(MaterializeSize::Auto);
    }
    super::common::parse_size_u64(s).map(MaterializeSize::Bytes)
}

fn parse_glob(s: &str) -> std::result::Result<String, String> {
    globset::Glob::new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("bad pattern {s:?}: {e}"))
}

impl MaterializeArgs {
    fn config(&self) -> rewindfs::fuse::session::MaterializeConfig {
        rewindfs::fuse::session::MaterializeConfig {
            capacity: match self.materialize_cache {
                MaterializeSize::Auto => None,
                MaterializeSize::Bytes(n) => Some(n),
            },
            now: self.materialize_now.clone(),
        }
    }
}

#[derive(Args)]
pub struct MountArgs {
    /// The data directory to serve and protect.
    backing: PathBuf,
    /// Where to mount it (an existing, empty directory).
    mountpoint: PathBuf,
    /// Repository (default: BACKING/.rewindfs, created on first mount and
    /// hidden from the mounted view). Put it on another disk with this.
    #[arg(long, env = "REWINDFS_REPO", value_name = "DIR")]
    repo: Option<PathBuf>,
    /// Stay in the foreground (logs on stderr) instead of daemonizing.
    #[arg(long)]
    foreground: bool,
    /// Print nothing on success (mount(8)'s helper runs with this).
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Let other users use the mount (as root; the kernel checks
    /// permissions, POSIX ACLs included).
    #[arg(long)]
    allow_other: bool,
    /// Honour setuid/setgid bits and file capabilities of programs in the
    /// mount. Off by default (the mount is `nosuid`); `.snapshots` never
    /// honours them.
    #[arg(long)]
    suid: bool,
    /// Honour device nodes in the mount. Off by default (`nodev`).
    #[arg(long)]
    dev: bool,
    /// Mount even if MOUNTPOINT has entries (they are hidden while mounted).
    #[arg(long)]
    nonempty: bool,
    /// Let the kernel cache writes (faster small writes; snapshots then
    /// first make the kernel send its dirty pages).
    #[arg(long)]
    writeback_cache: bool,
    /// Serve read-only opens with kernel FUSE passthrough, so reads run at
    /// the backing filesystem's speed (on by default; needs Linux 6.9+ and
    /// root, else reads go through the daemon and `status` says why).
    /// A file opened for writing while such reads are open is written
    /// through the daemon without the page cache.
    #[arg(long, value_name = "BOOL", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    passthrough_reads: bool,
    /// Checkpoint fast path: a file created (or truncated on open) whose
    /// name matches GLOB is written by the kernel straight to the backing
    /// file, tracked as wholly changed, and captured whole once closed; a
    /// snapshot taken while it is open for writing holds its last closed
    /// version. Repeatable; replaces the default set (*.safetensors, *.pt,
    /// *.pth, *.ckpt, *.distcp); `none` for no default patterns. The
    /// --on-close globs always count. Needs FUSE passthrough.
    #[arg(long = "checkpoint", value_name = "GLOB")]
    checkpoints: Vec<String>,
    /// How long the kernel caches names (missing ones too) and attributes.
    /// Changes made through the mount are always seen at once; this only
    /// bounds how late a change made directly in BACKING shows up.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_ttl)]
    cache_ttl: Duration,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Whether MOUNTPOINT/.snapshots is listed in the root directory (it is
    /// always reachable by name, like ZFS's .zfs).
    #[arg(long, default_value = "hidden", value_parser = ["hidden", "visible"])]
    snapdir: String,
    /// Memory for verified chunks of snapshot reads.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = super::common::parse_size_u64)]
    chunk_cache: u64,
    /// Entries of snapshot directories kept in memory per open snapshot
    /// (each about 200 bytes; directories are read again when needed).
    #[arg(long, value_name = "N", default_value_t = rewindfs::views::view_tree::DEFAULT_ENTRIES_CACHED)]
    view_entries: usize,
    /// Page cache of the chunk index (sled). sled keeps about three times
    /// this in memory once full; a smaller cache costs lookups (a capture
    /// asks the index once per block it reads).
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = super::common::parse_size_u64)]
    index_cache: u64,
    #[command(flatten)]
    materialize: MaterializeArgs,
    /// Take an incremental snapshot this often when something changed
    /// (e.g. 15m; `off` to disable). Default 15m, or the repository's policy.
    #[arg(long, value_name = "DUR")]
    every: Option<String>,
    /// Take a differential snapshot this often (default off).
    #[arg(long, value_name = "DUR")]
    differential_every: Option<String>,
    /// Take a full snapshot this often (default 24h). The first snapshot of
    /// a repository is always full.
    #[arg(long, value_name = "DUR")]
    full_every: Option<String>,
    /// Take full snapshots at the times of a cron expression in local
    /// time (minute hour day-of-month month day-of-week), e.g.
    /// "0 2 * * SUN" for Sundays at 02:00; replaces --full-every. A time
    /// missed while the host was down is taken at the next opportunity,
    /// once. `off` to disable.
    #[arg(long, value_name = "CRON", help_heading = "Schedules")]
    full_at: Option<String>,
    /// Take differential snapshots at the times of a cron expression
    /// (e.g. "0 2 * * *": every night at 02:00); replaces
    /// --differential-every.
    #[arg(long, value_name = "CRON", help_heading = "Schedules")]
    differential_at: Option<String>,
    /// Take incremental snapshots (when something changed) at the times
    /// of a cron expression (e.g. "*/15 8-20 * * MON-FRI"); replaces
    /// --every.
    #[arg(long, value_name = "CRON", help_heading = "Schedules")]
    incremental_at: Option<String>,
    /// Keep full and differential snapshots, retention's forget and gc,
    /// and rolling verification inside this daily window of local time,
    /// e.g. 01:00-05:00, or 22:00-04:00 across midnight (repeatable, or
    /// comma-separated). Work due outside it waits for the next opening;
    /// incremental snapshots are not held. The first snapshot of a new
    /// repository never waits. `off` for none.
    #[arg(long, value_name = "HH:MM-HH:MM", help_heading = "Schedules")]
    window: Vec<String>,
    /// The time zone of cron expressions and windows (an IANA name such
    /// as Europe/Berlin). Default: TZ, else the system's zone.
    #[arg(long, value_name = "ZONE", help_heading = "Schedules")]
    timezone: Option<String>,
    /// Whether a scheduled full snapshot is built from the latest
    /// snapshot's manifests and the journal's changes instead of reading
    /// the whole dataset again: auto (when under 25% of the dataset
    /// changed), always or never. Fulls taken by hand always read
    /// everything. Synthetic fulls show as "full (synthetic)".
    #[arg(long, value_name = "WHEN", value_parser = ["auto", "always", "never"], help_heading = "Schedules")]
    synthetic_fulls: Option<String>,
    /// When a file matching GLOB (relative to the mount root, or its name)
    /// is closed after writing, or renamed into a matching name, take a
    /// snapshot labelled with it once it has been quiet for --settle.
    /// Repeatable.
    #[arg(long, value_name = "GLOB")]
    on_close: Vec<String>,
    /// How long on-close files must be quiet before their snapshot (default
    /// 2s; 250ms once a checkpoint is complete: a DCP folder's .metadata or
    /// a Trainer checkpoint-N/trainer_state.json closed, a file renamed
    /// into place).
    #[arg(long, value_name = "DUR")]
    settle: Option<String>,
    /// The longest an on-close snapshot waits for its files to be quiet
    /// (default 10s): a job that saves faster than --settle still gets a
    /// snapshot per burst. `off` to wait for quiet however long it takes.
    #[arg(long, value_name = "DUR")]
    settle_max: Option<String>,
    /// Whether closing a checkpoint takes a snapshot, as an --on-close glob
    /// does (default true): a file matching the --checkpoint patterns, a
    /// DCP folder once its .metadata is written, a Trainer checkpoint-N/
    /// folder once its trainer_state.json is. A checkpoint deleted or
    /// replaced through the mount before any snapshot holds it is kept
    /// aside and captured first (see docs/semantics.md).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    checkpoint_snapshots: Option<bool>,
    /// Snapshot pending changes when unmounting (default true).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    snapshot_on_unmount: Option<bool>,
    /// Serve Prometheus metrics at /metrics and a read-only status page at
    /// / on ADDR:PORT (e.g. 127.0.0.1:9143). Off by default. Anyone who
    /// reaches the address reads mount paths and snapshot labels: keep it
    /// on loopback.
    #[arg(long, value_name = "ADDR:PORT", help_heading = "Monitoring")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Run CMD (with /bin/sh -c) after each snapshot is committed, with
    /// the event as JSON on stdin: for Slack, email or pager wiring. Hooks
    /// run one at a time beside the flusher, never holding it up.
    #[arg(long, value_name = "CMD", help_heading = "Monitoring")]
    on_snapshot: Option<String>,
    /// Run CMD (with /bin/sh -c) when a snapshot, retention or rolling
    /// verification fails, with the event as JSON on stdin.
    #[arg(long, value_name = "CMD", help_heading = "Monitoring")]
    on_error: Option<String>,
    /// Kill a hook still running after this long.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_period, help_heading = "Monitoring")]
    hook_timeout: Duration,
    /// Rolling verification: every DUR, re-read and check --verify-sample
    /// percent of the repository's chunks, rotating so that every chunk
    /// is checked within DUR x 100 / PERCENT. Off by default.
    #[arg(long, value_name = "DUR", value_parser = parse_period, help_heading = "Monitoring")]
    verify_every: Option<Duration>,
    /// Percent of the chunks each rolling verification checks.
    #[arg(long, value_name = "PERCENT", default_value_t = 5.0, value_parser = super::common::parse_percent, help_heading = "Monitoring")]
    verify_sample: f64,
    /// Retention the daemon applies after each snapshot (forget, then gc
    /// in the background), as `rewindfs forget --keep-*`. Default: the
    /// repository's policy (config.json), or nothing is removed.
    #[command(flatten, next_help_heading = "Retention")]
    keep: super::lifecycle_cmds::KeepArgs,
}

pub fn mount(a: MountArgs, hook: rewindfs::daemon::CliHook) -> Result<i32> {
    let foreground = a.foreground;
    if a.index_cache < 1 << 20 {
        bail!(
            "--index-cache must be at least 1M (got {} bytes)",
            a.index_cache
        );
    }
    let req = MountRequest {
        backing: a.backing,
        mountpoint: a.mountpoint.clone(),
        repo: a.repo,
        foreground,
        config: MountConfig {
            allow_other: a.allow_other,
            writeback_cache: a.writeback_cache,
            passthrough_reads: a.passthrough_reads,
            threads: a.threads,
            ttl: a.cache_ttl,
            snapdir_visible: a.snapdir == "visible",
            chunk_cache: a.chunk_cache,
            view_entries: a.view_entries,
            index_cache: a.index_cache,
            materialize: a.materialize.config(),
            suid: a.suid,
            dev: a.dev,
            nonempty: a.nonempty,
            ..MountConfig::default()
        },
        policy: {
            let mut p = PolicyConfig {
                every: a.every,
                differential_every: a.differential_every,
                full_every: a.full_every,
                full_at: a.full_at,
                differential_at: a.differential_at,
                incremental_at: a.incremental_at,
                window: a.window,
                timezone: a.timezone,
                synthetic_fulls: a.synthetic_fulls,
                on_close: a.on_close,
                checkpoints: (!a.checkpoints.is_empty()).then_some(a.checkpoints),
                settle: a.settle,
                settle_max: a.settle_max,
                checkpoint_snapshots: a.checkpoint_snapshots,
                snapshot_on_unmount: a.snapshot_on_unmount,
                ..PolicyConfig::default()
            };
            a.keep.to_config(&mut p);
            p
        },
        cli_hook: Some(hook),
        manage: rewindfs::daemon::live::Manage {
            metrics_listen: a.metrics_listen,
            on_snapshot: a.on_snapshot,
            on_error: a.on_error,
            hook_timeout: a.hook_timeout,
            verify_every: a.verify_every,
            verify_sample: a.verify_sample,
        },
    };
    daemon::live::mount(req)?;
    if !foreground && !a.quiet {
        println!("mounted on {}", a.mountpoint.display());
    }
    Ok(0)
}

#[derive(Args)]
pub struct MountSnapshotArgs {
    /// `SNAP MOUNTPOINT`, or `MOUNTPOINT` with --all. SNAP is an id, a
    /// name, `latest` or `@TIME`.
    #[arg(value_name = "SNAP MOUNTPOINT", num_args = 1..=2, required = true)]
    args: Vec<String>,
    /// Mount the whole .snapshots tree (every snapshot, `latest`, `@TIME`).
    #[arg(long)]
    all: bool,
    /// Repository (default: the one of the mount given with -C, or of the
    /// mount the current directory is in).
    #[arg(long, env = "REWINDFS_REPO", value_name = "DIR")]
    repo: Option<PathBuf>,
    /// Use the repository of the rewindfs mount at (or holding) MNT.
    #[arg(short = 'C', long = "mount", value_name = "MNT")]
    mount: Option<PathBuf>,
    #[command(flatten)]
    remote: super::remote_cmds::RemoteRead,
    /// Let other users read the mount.
    #[arg(long)]
    allow_other: bool,
    /// Stay in the foreground instead of daemonizing (when no live mount
    /// holds the repository).
    #[arg(long)]
    foreground: bool,
    /// Memory for verified chunks (when this command starts the daemon);
    /// with --remote, as much again for the segments read from the
    /// object store.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = super::common::parse_size_u64)]
    chunk_cache: u64,
    /// Entries of snapshot directories kept in memory per open snapshot
    /// (each about 200 bytes; directories are read again when needed).
    #[arg(long, value_name = "N", default_value_t = rewindfs::views::view_tree::DEFAULT_ENTRIES_CACHED)]
    view_entries: usize,
    #[command(flatten)]
    materialize: MaterializeArgs,
    /// Mount even if MOUNTPOINT has entries (they are hidden while mounted).
    #[arg(long)]
    nonempty: bool,
}

pub fn mount_snapshot(a: MountSnapshotArgs, hook: rewindfs::daemon::CliHook) -> Result<i32> {
    let (snap, mp) = match (a.all, a.args.as_slice()) {
        (true, [mp]) => ("latest".to_string(), PathBuf::from(mp)),
        (false, [snap, mp]) => (snap.clone(), PathBuf::from(mp)),
        (true, _) => bail!("with --all, give only the MOUNTPOINT"),
        (false, _) => bail!("give SNAP and MOUNTPOINT (or --all MOUNTPOINT)"),
    };
    let foreground = a.foreground;
    let remote = a.remote.spec()?;
    let repo = match &remote {
        Some(_) => PathBuf::new(),
        None => super::common::find_repo(a.repo.as_deref(), a.mount.as_deref())?,
    };
    rewindfs::daemon::views::mount_snapshot(
        rewindfs::daemon::views::SnapMountRequest {
            repo,
            remote,
            snap,
            mountpoint: mp.clone(),
            all: a.all,
            allow_other: a.allow_other,
            foreground,
            chunk_cache: a.chunk_cache,
            view_entries: a.view_entries,
            materialize: a.materialize.config(),
            nonempty: a.nonempty,
        },
        Some(hook),
    )?;
    if !foreground {
        println!("mounted read-only on {}", mp.display());
    }
    Ok(0)
}

#[derive(Args)]
pub struct UmountArgs {
    /// The mountpoint of a live or snapshot mount.
    mountpoint: PathBuf,
    /// Detach the mount even while files of it are open (like umount -l):
    /// it disappears at once, and the daemon takes its last snapshot and
    /// exits when the last of them is closed (`status` shows it until
    /// then). Without it a busy mount is refused, naming who holds it.
    #[arg(short = 'l', long)]
    lazy: bool,
}

pub fn umount(a: UmountArgs) -> Result<i32> {
    let mp = a
        .mountpoint
        .canonicalize()
        .unwrap_or_else(|_| a.mountpoint.clone());
    let mounts = daemon::mounts();
    let Some((_, fstype, source)) = mounts.iter().find(|(m, _, _)| *m == mp) else {
        bail!("{} is not mounted", mp.display());
    };
    if !fstype.starts_with("fuse") {
        bail!("{} is a {fstype} mount, not a rewindfs mount", mp.display());
    }
    let repo = daemon::discover::repo_of_source(source).unwrap_or_else(|| PathBuf::from(source));
    // Ours to wait for: the daemon's exit if this is its live mount (or
    // its last snapshot mount), else just this mount going away.
    let status = match control::call(&repo, &Request::Status, Duration::from_secs(10)) {
        Ok(Response::Status { status }) => Some(status),
        _ => None,
    };
    let whole_daemon = status.as_ref().is_some_and(|s| {
        s.mountpoint == mp.display().to_string() || (!s.live && s.mounts.len() <= 1)
    });
    let req = Request::Unmount {
        mountpoint: Some(mp.display().to_string()),
        lazy: a.lazy,
    };
    let asked = control::call(&repo, &req, Duration::from_secs(60));
    // A daemon that exits right after unmounting may close the connection
    // before it answers: what counts is that the mount went away.
    let asked = match asked {
        Err(control::CallError::Io(_)) if status.is_some() && !daemon::is_mountpoint(&mp) => {
            Ok(Response::Ok)
        }
        other => other,
    };
    match asked {
        Ok(_) if a.lazy && status.is_some() => {
            // Detached: the daemon finishes once the files are closed (at
            // once if none was open).
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(3) {
                if !whole_daemon || repo_lock_free(&repo) {
                    println!("unmounted {}", mp.display());
                    return Ok(0);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if whole_daemon {
                println!(
                    "detached {}; its daemon (pid {}) takes the last snapshot and exits once the files still open are closed (`rewindfs status` shows it)",
                    mp.display(),
                    status.as_ref().map_or(0, |s| s.pid)
                );
            } else {
                println!("detached {}", mp.display());
            }
            Ok(0)
        }
        Err(control::CallError::Failed(msg)) if msg.contains(" is busy: ") => {
            eprintln!("error: {msg}");
            Ok(1)
        }
        Ok(_) => {
            // Wait for the daemon to take its last snapshot, flush, and
            // let go of the repository (its lock is free once it exited).
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(600) {
                if !daemon::is_mountpoint(&mp) && (!whole_daemon || repo_lock_free(&repo)) {
                    println!("unmounted {}", mp.display());
                    return Ok(0);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            bail!(
                "the daemon did not finish unmounting {} within 10 minutes",
                mp.display()
            );
        }
        Err(_) => {
            // No daemon (it died): remove the stale mount.
            let r = rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::empty())
                .or_else(|_| rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::DETACH));
            match r {
                Ok(()) => {
                    println!("unmounted {} (its daemon was not running)", mp.display());
                    Ok(0)
                }
                Err(e) => {
                    let st = std::process::Command::new("fusermount3")
                        .arg("-u")
                        .arg(&mp)
                        .status();
                    if st.map(|s| s.success()).unwrap_or(false) {
                        println!("unmounted {}", mp.display());
                        return Ok(0);
                    }
                    bail!("cannot unmount {}: {e}", mp.display())
                }
            }
        }
    }
}

/// Can the repository's lock be taken (no process holds it)?
fn repo_lock_free(repo: &std::path::Path) -> bool {
    // Never a symlink, never blocking on a FIFO.
    let lock = rustix::fs::openat(
        rustix::fs::CWD,
        repo.join(rewindfs::repo::layout::LOCK),
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::NONBLOCK
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    );
    let Ok(f) = lock else {
        return true;
    };
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok()
}

#[derive(Args)]
pub struct StatusArgs {
    /// A rewindfs mountpoint (or a path inside one): show that mount.
    /// Without it (and without --repo): list every rewindfs mount on this
    /// machine.
    #[arg(value_name = "MNT")]
    mountpoint: Option<PathBuf>,
    /// The same as MNT (as every repository command takes it).
    #[arg(
        short = 'C',
        long = "mount",
        value_name = "MNT",
        conflicts_with = "mountpoint"
    )]
    mount: Option<PathBuf>,
    /// Show the mount of this repository.
    #[arg(long, env = "REWINDFS_REPO", value_name = "DIR")]
    repo: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Seconds since `ns` (never negative).
fn age_secs(ns: i64) -> u64 {
    let now = rewindfs::util::time::now_ns();
    u64::try_from(now.saturating_sub(ns) / 1_000_000_000).unwrap_or(0)
}

fn human_age(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
        _ => humantime::format_duration(Duration::from_secs(secs / 3600 * 3600)).to_string(),
    }
}

/// One row of `rewindfs status` without arguments.
#[derive(serde::Serialize)]
struct MountRow {
    mountpoint: String,
    /// live, snapshot, or detached (a live mount unmounted lazily whose
    /// daemon waits for its last open files)
    kind: &'static str,
    backing: Option<String>,
    repo: Option<String>,
    newest: Option<control::NewestSnapshot>,
    newest_age_seconds: Option<u64>,
    dirty_bytes: Option<u64>,
    oldest_change_age_seconds: Option<u64>,
    /// The flusher's last error, or why the daemon could not be asked.
    error: Option<String>,
}

fn list_mounts(json: bool) -> Result<i32> {
    use rewindfs::daemon::discover;
    let found = discover::rewindfs_mounts();
    // One status call per repository (a daemon serves its live mount and
    // its snapshot mounts).
    let mut asked: std::collections::HashMap<PathBuf, std::result::Result<DaemonStatus, String>> =
        Default::default();
    let mut rows = Vec::new();
    for m in &found {
        let mut row = MountRow {
            mountpoint: m.mountpoint.display().to_string(),
            kind: "snapshot",
            backing: None,
            repo: m.repo.as_ref().map(|r| r.display().to_string()),
            newest: None,
            newest_age_seconds: None,
            dirty_bytes: None,
            oldest_change_age_seconds: None,
            error: None,
        };
        let Some(repo) = &m.repo else {
            row.error = Some("repository not named in the mount table (use --repo)".into());
            rows.push(row);
            continue;
        };
        // One question per repository; whether it serves this mount is
        // decided per mount.
        let st = asked
            .entry(repo.clone())
            .or_insert_with(|| discover::ask(m, repo).map_err(|e| e.to_string()));
        let st = match st {
            Ok(s) if discover::serves(s, &m.mountpoint) => s.clone(),
            Ok(_) => {
                row.error = Some(format!(
                    "the daemon of {} does not serve it",
                    repo.display()
                ));
                rows.push(row);
                continue;
            }
            Err(e) => {
                row.error = Some(e.clone());
                rows.push(row);
                continue;
            }
        };
        let live = st.live && st.mountpoint == row.mountpoint;
        if live {
            row.kind = "live";
            row.backing = Some(st.backing.clone());
            row.dirty_bytes = Some(st.dirty_bytes);
            row.oldest_change_age_seconds = st.oldest_change_ns.map(age_secs);
            row.error = st.flusher.as_ref().and_then(|f| f.last_error.clone());
        }
        row.newest_age_seconds = st.newest.as_ref().map(|n| age_secs(n.time_ns));
        row.newest = st.newest.clone();
        rows.push(row);
    }
    // Daemons whose live mount is gone from the mount table (detached)
    // but that still run: they hold their repository until the last
    // open file of the mount is closed.
    for (pid, repo) in rewindfs::daemon::registry::registered() {
        let listed = rows
            .iter()
            .any(|r| r.repo.as_deref() == Some(&*repo.display().to_string()) && r.kind == "live");
        if listed {
            continue;
        }
        let Ok(Response::Status { status: st }) =
            control::call(&repo, &Request::Status, Duration::from_secs(10))
        else {
            continue;
        };
        if !st.live || st.pid != pid || daemon::is_mountpoint(Path::new(&st.mountpoint)) {
            continue;
        }
        rows.push(MountRow {
            mountpoint: st.mountpoint.clone(),
            kind: "detached",
            backing: Some(st.backing.clone()),
            repo: Some(st.repo.clone()),
            newest_age_seconds: st.newest.as_ref().map(|n| age_secs(n.time_ns)),
            newest: st.newest.clone(),
            dirty_bytes: Some(st.dirty_bytes),
            oldest_change_age_seconds: st.oldest_change_ns.map(age_secs),
            error: Some(format!(
                "unmounted lazily: daemon pid {pid} finishes when its {} open file(s) are closed",
                st.open_files
            )),
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no rewindfs mounts");
        return Ok(0);
    }
    let dash = || "-".to_string();
    // Paths and errors come from the mount table, where any user's FUSE
    // mount can put control characters and newlines: every cell is
    // escaped (JSON output escapes them itself).
    let table: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.mountpoint.clone(),
                r.kind.to_string(),
                r.backing.clone().unwrap_or_else(dash),
                r.repo.clone().unwrap_or_else(dash),
                r.newest
                    .as_ref()
                    .map(|n| format!("{} {}", n.id, n.kind))
                    .unwrap_or_else(dash),
                r.newest_age_seconds.map(human_age).unwrap_or_else(dash),
                r.dirty_bytes.map(human_bytes).unwrap_or_else(dash),
                r.error.clone().unwrap_or_else(|| "ok".into()),
            ]
            .map(|c| rewindfs::util::display::escape(c.as_bytes()))
        })
        .collect();
    let head = [
        "MOUNTPOINT",
        "KIND",
        "BACKING",
        "REPOSITORY",
        "NEWEST",
        "AGE",
        "UNSNAPSHOTTED",
        "STATE",
    ];
    let mut w = head.map(str::len);
    for r in &table {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", l.trim_end());
    };
    line(&head.map(String::from));
    for r in &table {
        line(r);
    }
    Ok(0)
}

pub fn status(a: StatusArgs) -> Result<i32> {
    let mountpoint = a.mountpoint.as_ref().or(a.mount.as_ref());
    let repo = match (mountpoint, &a.repo) {
        (None, None) => return list_mounts(a.json),
        (Some(mp), _) => super::common::find_repo(None, Some(mp))?,
        (None, Some(r)) => r.clone(),
    };
    let resp = match control::call(&repo, &Request::Status, Duration::from_secs(10)) {
        Ok(r) => r,
        Err(CallError::NotRunning) => {
            if a.json {
                println!("{}", serde_json::json!({"mounted": false, "repo": repo}));
            } else {
                println!("repository {}: not mounted", repo.display());
            }
            return Ok(0);
        }
        Err(e) => {
            return Err(e).with_context(|| format!("asking the daemon of {}", repo.display()))
        }
    };
    let Response::Status { status: s } = resp else {
        anyhow::bail!(
            "the daemon of {} did not answer with its status",
            repo.display()
        );
    };
    let s: DaemonStatus = *s;
    if a.json {
        let mut v = serde_json::to_value(&s)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("mounted".into(), true.into());
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    if !s.live {
        println!("repository:     {}", s.repo);
        println!("daemon:         pid {} (snapshot mounts only)", s.pid);
        println!("mounts:         {}", s.mounts.join(" "));
        print_newest(&s);
        print_materialized(&s);
        return Ok(0);
    }
    println!("mountpoint:     {}", s.mountpoint);
    println!("backing:        {}", s.backing);
    println!("repository:     {}", s.repo);
    println!(
        "daemon:         pid {}, since {}{}",
        s.pid,
        s.started,
        if s.unclean_start {
            " (after an unclean stop)"
        } else {
            ""
        }
    );
    println!("startup check:  {}", s.startup_check);
    println!(
        "changes:        {} files, {} blocks ({}) not in a snapshot yet",
        s.dirty_files,
        s.dirty_blocks,
        human_bytes(s.dirty_bytes)
    );
    println!(
        "oldest change:  {}",
        s.oldest_change.as_deref().unwrap_or("-")
    );
    println!("journal:        {} records", s.journal_records);
    if s.untracked {
        println!("tracking:       OFF (REWINDFS_BENCH_UNTRACKED=1: a benchmark run, nothing is protected)");
    }
    if !s.reads.is_empty() {
        println!("reads:          {}", s.reads);
    }
    if s.checkpoint_patterns.is_empty() {
        println!("fast path:      off");
    } else {
        println!(
            "fast path:      {} ({} open for writing)",
            s.checkpoint_patterns.join(" "),
            s.fast_path_open
        );
    }
    println!("snapshots:      {}", s.snapshots);
    print_newest(&s);
    print_materialized(&s);
    print_manage(&s);
    if !s.mounts.is_empty() {
        println!("snapshot mounts: {}", s.mounts.join(" "));
    }
    if let Some(f) = &s.flusher {
        println!(
            "last snapshot:  {}",
            match (&f.last_snapshot, &f.last_snapshot_time) {
                (Some(id), Some(t)) => format!("{id} at {t}"),
                _ => "-".into(),
            }
        );
        println!(
            "next:          {}",
            match (&f.next_kind, &f.next_scheduled) {
                (Some(k), Some(t)) => format!(" {k} at {t}"),
                _ => " -".into(),
            }
        );
        if !f.schedule.runs.is_empty() {
            let _ = super::common::write_planned(&mut std::io::stdout(), &f.schedule);
        }
        if let Some(l) = &f.pending_on_close {
            println!("on close:       waiting for {l} to settle");
        }
        if f.kept_total > 0 || f.kept_pending > 0 {
            println!(
                "kept aside:     {} checkpoint(s) deleted before a snapshot held them, {} captured; {} ({}) waiting",
                f.kept_total,
                f.kept_captured,
                f.kept_pending,
                human_bytes(f.kept_pending_bytes)
            );
        }
        let mut flusher = f.state.clone();
        if let (Some(c), Some(d), Some(tp)) = (f.last_cut_ms, f.last_duration_ms, f.last_throughput)
        {
            flusher.push_str(&format!(
                "; last snapshot: cut {c:.2} ms, {:.0} ms in all, {}/s",
                d,
                human_bytes(tp as u64)
            ));
        }
        println!("flusher:        {flusher}");
        if let Some(e) = &f.last_error {
            println!("last error:     {e}");
        }
        if f.errors > 0 {
            println!(
                "failed:         {} snapshots since the daemon started",
                f.errors
            );
        }
        if let Some(r) = &f.retention {
            println!(
                "retention:      {}: {} snapshots forgotten, {} rewritten, {} freed{}",
                r.last_run.as_deref().unwrap_or("not run yet"),
                r.forgotten,
                r.rewritten,
                human_bytes(r.bytes_freed),
                r.last_error
                    .as_ref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(0)
}

fn print_manage(s: &DaemonStatus) {
    if let Some(v) = &s.verify {
        println!(
            "verification:   {:.0}% of blobs checked within {} ({}% every {}); {} checked, {} damaged; last full rotation {}",
            v.coverage * 100.0,
            human_age(v.bound_seconds),
            v.sample_percent,
            human_age(v.every_seconds),
            v.checked_total,
            v.damaged_total,
            v.last_rotation.as_deref().unwrap_or("not yet")
        );
    }
    if let Some(u) = &s.metrics_url {
        println!(
            "metrics:        {u}metrics (token in {}; status page {})",
            s.metrics_token_file.as_deref().unwrap_or("?"),
            s.status_page.as_deref().unwrap_or(u)
        );
    }
    for r in &s.remotes {
        let state = if r.pushing {
            "pushing".to_string()
        } else if r.pending_snapshots == 0 && r.last_error.is_none() {
            "up to date".to_string()
        } else {
            format!(
                "{} snapshots ({}) behind{}",
                r.pending_snapshots,
                super::common::human_bytes(r.pending_bytes),
                r.oldest_pending_ns
                    .map(|t| format!(", oldest from {} ago", human_age(age_secs(t))))
                    .unwrap_or_default()
            )
        };
        println!(
            "remote {}:{:>w$}{} -> {}; newest replicated {}; {} uploaded since start{}",
            r.name,
            "",
            state,
            r.location,
            r.newest_replicated
                .map_or("none".to_string(), |i| i.to_string()),
            super::common::human_bytes(r.uploaded_bytes),
            r.last_error
                .as_ref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default(),
            w = 8usize.saturating_sub(r.name.len())
        );
    }
}

/// The materialization cache line of `status`.
fn print_materialized(s: &DaemonStatus) {
    match &s.materialized {
        Some(m) => println!(
            "materialized:   {} files, {} of {} (opened by passthrough {} times; {} copied, {} kept checkpoints ({}) served from the deleted file itself, {} evicted, {} rejected, {} failed)",
            m.files,
            human_bytes(m.bytes),
            human_bytes(m.capacity_bytes),
            m.passthrough_opens,
            m.promoted,
            m.kept_files,
            human_bytes(m.kept_bytes),
            m.evicted,
            m.rejected,
            m.failed
        ),
        None => println!("materialized:   off (snapshot files are served by the daemon)"),
    }
}

fn print_newest(s: &DaemonStatus) {
    match &s.newest {
        Some(n) => println!(
            "newest:         {} {} {} ({} ago){}",
            n.id,
            n.kind,
            n.time,
            human_age(age_secs(n.time_ns)),
            n.label
                .as_ref()
                .map(|l| format!(", label {l}"))
                .unwrap_or_default()
        ),
        None => println!("newest:         none yet"),
    }
}
