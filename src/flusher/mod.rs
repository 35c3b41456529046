//! The background flusher: turns the change journal into snapshots, on a
//! schedule and on events, at a cost that grows with the bytes changed.
//!
//! - `capture::live` (the capture engine): the tree at the cut, reading
//!   only the blocks that changed
//! - `policy.rs`: cadences and on-close globs
//!
//! The cut itself (freezing a consistent set of changes) belongs to
//! change tracking: the flusher asks for it through `track::Freezer`, and
//! never sees the filesystem.
//!
//! One thread runs the scheduler and takes snapshots one at a time;
//! requests (from the control socket) and filesystem events reach it over
//! a channel. A failed snapshot gives its changes back to the journal and
//! is retried with exponential backoff; the mount is never taken down.

pub mod events;
pub mod policy;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::capture;
use crate::capture::base_tree::{BaseTree, Edits, LazyLookup, Loader, StoredBase};
use crate::error::{Error, Result};
use crate::repo::{ChunkWriter, NextRunStatus, Planned, Repository, SnapshotDraft};
use crate::snapshot::dirs::DirMemo;
use crate::snapshot::{Kind, SnapshotRecord, Tree};
use crate::track::cut;
use crate::track::events::CaptureAsk;
use crate::track::reconcile::{ReconcileReport, SnapshotDirs};
use crate::track::{FileKey, Freezer, FsEvent, Objects};
use crate::util::time;
pub use events::{Broadcast, Event};
pub use policy::Policy;

/// What `status` shows about the flusher.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FlusherStatus {
    /// idle, storing (the first snapshot before its cut), cut, capturing,
    /// committing, backoff
    pub state: String,
    pub last_snapshot: Option<u64>,
    pub last_snapshot_time: Option<String>,
    pub next_scheduled: Option<String>,
    pub next_kind: Option<String>,
    /// The next run of each scheduled kind, the zone and the windows.
    #[serde(default)]
    pub schedule: Planned,
    pub last_error: Option<String>,
    /// Of the last snapshot: how long the cut held writers, in ms.
    pub last_cut_ms: Option<f64>,
    pub last_duration_ms: Option<f64>,
    /// Bytes read per second by the last capture.
    pub last_throughput: Option<f64>,
    pub last_bytes_read: Option<u64>,
    pub snapshots_taken: u64,
    /// On-close snapshot waiting for its files to settle (label).
    pub pending_on_close: Option<String>,
    /// Checkpoints deleted or replaced before a snapshot held them, kept
    /// aside and waiting for one (`track::keep`): files and bytes.
    #[serde(default)]
    pub kept_pending: u64,
    #[serde(default)]
    pub kept_pending_bytes: u64,
    /// Checkpoints kept aside since the daemon started, and captured.
    #[serde(default)]
    pub kept_total: u64,
    #[serde(default)]
    pub kept_captured: u64,
    /// The retention policy's last automatic run (when one is set).
    #[serde(default)]
    pub retention: Option<crate::retention::auto::RetentionStatus>,
    /// The repository's first snapshot, stored one directory at a time
    /// before its cut: the most directory entries its walk held at once
    /// (memory follows this, not the number of files).
    #[serde(default)]
    pub first_walk_peak_entries: Option<u64>,
    /// Snapshots that failed since the daemon started.
    #[serde(default)]
    pub errors: u64,
    /// Bytes read from the backing directory by captures since start.
    #[serde(default)]
    pub bytes_read_total: u64,
    /// Entries of the snapshot trees the flusher keeps (the latest, and
    /// the latest full when it is another: the bases of the next
    /// captures), and about the heap bytes they take.
    #[serde(default)]
    pub tree_entries: u64,
    #[serde(default)]
    pub tree_bytes: u64,
    /// The latest tree's inode index (over the whole tree, held or not):
    /// inodes, and about the heap bytes it takes.
    #[serde(default)]
    pub index_entries: u64,
    #[serde(default)]
    pub index_bytes: u64,
    /// The bytes of the file the index is kept in once large (not
    /// memory: the kernel's page cache holds what is read of it).
    #[serde(default)]
    pub index_file_bytes: u64,
}

enum Cmd {
    Snapshot {
        kind: Option<Kind>,
        label: Option<String>,
        reply: Sender<Result<SnapshotRecord>>,
    },
    Event(FsEvent),
    /// A checkpoint is about to be rewritten (see `CaptureAsk`).
    Ask(CaptureAsk),
    Stop {
        final_snapshot: bool,
        reply: Sender<Result<Option<SnapshotRecord>>>,
    },
}

/// What the flusher works on.
pub struct FlusherCtx {
    /// Where to report the mount-time check (run first, before any
    /// snapshot, so none misses what changed while not mounted).
    pub startup: Arc<Mutex<String>>,
    pub repo: Arc<Repository>,
    /// The cut and the frozen changes.
    pub track: Freezer,
    /// The live objects (what the cut reaches changed objects through).
    pub objects: Arc<dyn Objects>,
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub hidden: Option<FileKey>,
    pub writeback_cache: bool,
    pub threads: usize,
    pub policy: Policy,
    /// Where committed snapshots and failures are published (subscribe
    /// before starting, so no event is missed).
    pub events: Arc<Broadcast>,
    /// The views' materialization cache: kept checkpoints, once captured,
    /// are served from it (see `track::keep`).
    pub materialize: Option<Arc<crate::views::materialize::Materializer>>,
}

pub struct Flusher {
    tx: Sender<Cmd>,
    pub status: Arc<Mutex<FlusherStatus>>,
    /// Committed snapshots and failures, for metrics and hooks.
    pub events: Arc<Broadcast>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Entries of the latest snapshot's tree kept in memory after a commit;
/// past that the tree is dropped and its directories are read again as
/// captures need them. Test builds drop it after every commit, so every
/// test exercises the reading on demand.
const BASE_HELD_ENTRIES: usize = if cfg!(debug_assertions) { 0 } else { 65_536 };

/// Cached trees: the latest snapshot's (the base of the next capture,
/// changed in place by it) and, once a differential needed it, the
/// latest full one's.
#[derive(Default)]
struct Trees {
    latest: Option<BaseTree>,
    full: Option<(u64, Arc<Tree>)>,
    /// The directory references of the snapshot it names, as written:
    /// an incremental on it re-encodes only the directories on its
    /// changed paths. Dropped whenever a commit fails.
    memo: Option<(u64, DirMemo)>,
    /// Where the latest tree's inode index is kept once large (the
    /// repository directory, opened once).
    spill: Option<Arc<crate::util::dirfd::Dir>>,
}

impl Flusher {
    pub fn start(ctx: FlusherCtx) -> Result<Flusher> {
        let (tx, rx) = bounded::<Cmd>(1024);
        // Close and rename events matter only to on-close snapshots (the
        // policy is fixed for the flusher's life). Without globs nobody
        // listens: the live filesystem then neither computes their paths
        // (a readlink per closed file) nor wakes this thread for each (8%
        // of the daemon's CPU in a metadata benchmark, perf). With only
        // the checkpoint patterns, the filesystem sends the closes of
        // checkpoints alone (`LiveOptions::close_events`).
        let ev_rx = if !ctx.policy.listens() {
            crossbeam_channel::never()
        } else {
            ctx.track.subscribe(4096)
        };
        // Rewrites of checkpoints no snapshot holds yet wait for one
        // (only with checkpoint versions on: a keeper is set).
        let ask_rx = if ctx.track.keeper().is_some() {
            ctx.track.listen_asks(256)
        } else {
            crossbeam_channel::never()
        };
        let status = Arc::new(Mutex::new(FlusherStatus {
            state: "idle".into(),
            ..Default::default()
        }));
        let events = ctx.events.clone();
        let out = Report {
            status: status.clone(),
            events: events.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("flusher".into())
            .spawn(move || run(ctx, rx, ev_rx, ask_rx, out))
            .map_err(|e| Error::io("start flusher", "", e))?;
        Ok(Flusher {
            tx,
            status,
            events,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Take a snapshot now and wait for it to be committed.
    pub fn snapshot(&self, kind: Option<Kind>, label: Option<String>) -> Result<SnapshotRecord> {
        let (reply, rx) = bounded(1);
        self.tx
            .send(Cmd::Snapshot { kind, label, reply })
            .map_err(|_| Error::Poisoned("the flusher stopped".into()))?;
        rx.recv()
            .map_err(|_| Error::Poisoned("the flusher stopped".into()))?
    }

    /// Stop the scheduler, taking a last snapshot of pending changes if
    /// asked (the filesystem must be unmounted: nothing can change).
    pub fn stop(&self, final_snapshot: bool) -> Result<Option<SnapshotRecord>> {
        let (reply, rx) = bounded(1);
        if self
            .tx
            .send(Cmd::Stop {
                final_snapshot,
                reply,
            })
            .is_err()
        {
            return Ok(None);
        }
        let r = rx
            .recv()
            .unwrap_or(Err(Error::Poisoned("the flusher stopped".into())));
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
        r
    }
}

/// Where the flusher reports: its status, and events for subscribers.
struct Report {
    status: Arc<Mutex<FlusherStatus>>,
    events: Arc<Broadcast>,
}

fn run(
    ctx: FlusherCtx,
    rx: Receiver<Cmd>,
    ev_rx: Receiver<FsEvent>,
    ask_rx: Receiver<CaptureAsk>,
    out: Report,
) {
    let status = &out.status;
    // What the check read of the latest snapshot is the next snapshot's
    // base: its root and directory references (or, for an older format,
    // the tree it resolved, so that a session taking one snapshot reads
    // the chain of manifests once).
    let mut trees = Trees::default();
    let msg = match startup_check(&ctx) {
        Ok(None) => "done: no snapshot yet".to_string(),
        Ok(Some((r, base, memo))) => {
            trees.memo = memo.map(|m| (base.id, m));
            trees.latest = Some(base);
            index_to_disk(&ctx.repo, &mut trees);
            note_trees(&trees, status);
            format!(
            "done: {} entries checked, {} files and {} directories changed since the latest snapshot",
            r.entries_checked, r.files_marked, r.dirs_marked
        )
        }
        Err(e) => {
            tracing::error!("mount-time check: {e}");
            format!("failed: {e}")
        }
    };
    *ctx.startup.lock() = msg;
    let mut sched = policy::Schedule::new(&ctx.policy);
    if let Ok(all) = ctx.repo.snapshots() {
        sched.load(&all);
        if let Some(l) = all.iter().max_by_key(|r| r.id) {
            let mut s = status.lock();
            s.last_snapshot = Some(l.id);
            s.last_snapshot_time = Some(l.time.clone());
        }
    }
    let mut backoff = Duration::ZERO;
    let mut retry_at: Option<Instant> = None;
    // Retention runs beside us, nudged after each snapshot.
    let retainer = if ctx.policy.keep.is_empty() {
        None
    } else {
        match crate::retention::auto::Retainer::start(
            ctx.repo.clone(),
            ctx.policy.keep.clone(),
            ctx.policy.windows.clone(),
            ctx.policy.zone,
        ) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!("retention is not applied: {e}");
                None
            }
        }
    };
    // Retention's errors become events once each.
    let mut retention_error: Option<String> = None;
    // When a failed kept snapshot is tried again.
    let mut kept_retry: (Option<Instant>, Duration) = (None, Duration::ZERO);
    loop {
        let now = sched.now();
        let due = sched.next_due(now, retry_at);
        {
            let mut s = status.lock();
            s.next_scheduled = due.map(|(t, _)| {
                time::rfc3339(time::now_ns() + t.saturating_duration_since(now).as_nanos() as i64)
            });
            s.next_kind = due.map(|(_, k)| k.as_str().to_string());
            s.pending_on_close = sched.pending_label();
            if let Some(k) = ctx.track.keeper() {
                (s.kept_pending, s.kept_pending_bytes) = k.pending_totals();
                (s.kept_total, s.kept_captured) = k.totals();
            }
            let planned = planned(&sched);
            if planned != s.schedule {
                ctx.repo.set_planned(planned.clone());
                s.schedule = planned;
            }
        }
        let timeout = due
            .map(|(t, _)| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(3600))
            .min(Duration::from_millis(250));
        let cmd = crossbeam_channel::select! {
            recv(rx) -> m => m.ok(),
            recv(ev_rx) -> e => e.ok().map(Cmd::Event),
            recv(ask_rx) -> a => a.ok().map(Cmd::Ask),
            default(timeout) => None,
        };
        match cmd {
            Some(Cmd::Snapshot { kind, label, reply }) => {
                take_kept(&ctx, &mut trees, &out, &mut kept_retry, true);
                let r = guarded_take(&ctx, &mut trees, &out, kind, label, false, "request");
                if let Ok(rec) = &r {
                    sched.taken(rec, sched.now());
                    if let Some(r) = &retainer {
                        r.nudge();
                    }
                    nudge_quiet(&retainer, &mut retention_error, &out, status);
                }
                let _ = reply.send(r);
            }
            Some(Cmd::Event(e)) => sched.event(&e, sched.now()),
            Some(Cmd::Ask(first)) => {
                // Every checkpoint waiting to be rewritten: one snapshot.
                let mut asks = vec![first];
                asks.extend(ask_rx.try_iter());
                take_kept(&ctx, &mut trees, &out, &mut kept_retry, true);
                let journal = ctx.track.journal();
                let (todo, done): (Vec<CaptureAsk>, Vec<CaptureAsk>) =
                    asks.into_iter().partition(|a| journal.is_dirty(&a.key));
                for a in done {
                    let _ = a.reply.send(true);
                }
                if !todo.is_empty() {
                    let paths: Vec<String> = todo
                        .iter()
                        .map(|a| String::from_utf8_lossy(&a.path).into_owned())
                        .collect();
                    let label = format!("before rewrite: {}", policy::label_of(&paths));
                    let r = guarded_take(
                        &ctx,
                        &mut trees,
                        &out,
                        Some(Kind::Incremental),
                        Some(label),
                        false,
                        "rewrite",
                    );
                    if let Ok(rec) = &r {
                        sched.taken(rec, sched.now());
                    }
                    for a in todo {
                        let _ = a.reply.send(r.is_ok());
                    }
                }
            }
            Some(Cmd::Stop {
                final_snapshot,
                reply,
            }) => {
                if final_snapshot {
                    take_kept(&ctx, &mut trees, &out, &mut kept_retry, true);
                }
                let r = if final_snapshot && !ctx.track.is_empty() {
                    guarded_take(
                        &ctx,
                        &mut trees,
                        &out,
                        Some(Kind::Incremental),
                        Some("unmount".into()),
                        true,
                        "unmount",
                    )
                    .map(Some)
                } else {
                    Ok(None)
                };
                let _ = reply.send(r);
                return;
            }
            None => nudge_quiet(&retainer, &mut retention_error, &out, status),
        }
        // Checkpoints kept aside before a snapshot held them are taken
        // first, whatever else is due.
        take_kept(&ctx, &mut trees, &out, &mut kept_retry, false);
        // Scheduled work.
        let Some((kind, label)) = sched.poll(&mut retry_at, ctx.track.journal()) else {
            continue;
        };
        let trigger = if label.is_some() {
            "on-close"
        } else {
            "schedule"
        };
        match guarded_take(
            &ctx,
            &mut trees,
            &out,
            Some(kind),
            label.clone(),
            false,
            trigger,
        ) {
            Ok(rec) => {
                sched.taken(&rec, sched.now());
                if let Some(r) = &retainer {
                    r.nudge();
                }
                nudge_quiet(&retainer, &mut retention_error, &out, status);
                backoff = Duration::ZERO;
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(300));
                retry_at = Some(sched.now() + backoff);
                if let Some(l) = label {
                    sched.restore_on_close(l, sched.now());
                }
                tracing::error!("snapshot failed (retrying in {backoff:?}): {e}");
                // (`guarded_take` has recorded the error.)
                status.lock().state = "backoff".into();
            }
        }
    }
}

/// The next run of each kind, for `status` and `snapshots`.
fn planned(sched: &policy::Schedule) -> Planned {
    let p = sched.policy();
    let now_ns = time::now_ns();
    Planned {
        runs: sched
            .next_runs()
            .into_iter()
            .map(|r| NextRunStatus {
                kind: r.kind.as_str().into(),
                at: p.zone.rfc3339(r.at_ns),
                local: p.zone.format(r.at_ns),
                rule: r.rule,
                waits_for_window: r.waits_for_window,
                overdue: r.at_ns < now_ns,
            })
            .collect(),
        timezone: p.zone.name().into(),
        windows: p.windows.to_string(),
    }
}

/// Copy retention's status, publishing a new error once.
fn nudge_quiet(
    retainer: &Option<crate::retention::auto::Retainer>,
    seen: &mut Option<String>,
    out: &Report,
    status: &Mutex<FlusherStatus>,
) {
    let Some(r) = retainer else { return };
    let rs = r.status.lock().clone();
    if rs.last_error.is_none() {
        // A success in between: the same error again is news again.
        *seen = None;
    } else if rs.last_error != *seen {
        seen.clone_from(&rs.last_error);
        out.events.publish(Event::Error {
            time: time::rfc3339(time::now_ns()),
            during: "retention".into(),
            message: rs.last_error.clone().unwrap_or_default(),
        });
    }
    status.lock().retention = Some(rs);
}

/// The mount-time check: compare the backing directory with the latest
/// snapshot and mark what differs in the journal (see
/// `track::reconcile`). Returns its report and the next capture's base:
/// for a snapshot stored as a tree, read one directory at a time, the
/// base holds only its root, with the references of every directory
/// (memory follows the largest directory, and the next capture reads
/// what it touches); an older format is resolved whole.
fn startup_check(ctx: &FlusherCtx) -> Result<Option<(ReconcileReport, BaseTree, Option<DirMemo>)>> {
    let all = ctx.repo.snapshots()?;
    let Some(latest) = all.iter().max_by_key(|r| r.id) else {
        return Ok(None);
    };
    let root = rustix::fs::openat(
        rustix::fs::CWD,
        &ctx.backing,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io("open", &ctx.backing, e.into()))?;
    match ctx.repo.load_stored(latest)? {
        crate::snapshot::dirs::Stored::Tree(r) => {
            let mut stored = StoredBase::new(&*ctx.repo, r);
            let report = ctx.track.reconcile(root, &mut stored, ctx.hidden)?;
            let (base, memo) = stored.finish(latest.id);
            Ok(Some((report, base, Some(memo))))
        }
        crate::snapshot::dirs::Stored::Changes(_) => {
            let tree = ctx.repo.resolve(latest)?;
            let report = ctx.track.reconcile(root, &mut &tree, ctx.hidden)?;
            Ok(Some((report, BaseTree::new(latest.id, tree), None)))
        }
    }
}

/// About how many bytes changed since the latest snapshot: the journal's
/// changed blocks, and for files changed as a whole (created, written by
/// the checkpoint fast path or through passthrough, truncated, shifted)
/// their size from the first changed offset on.
fn changed_bytes(ctx: &FlusherCtx, block_size: u64) -> u64 {
    let mut total = 0u64;
    for (key, d) in ctx.track.journal().dirty() {
        let blocks = (d.blocks.len() as u64).saturating_mul(block_size);
        let from = if d.file.created {
            Some(0)
        } else {
            d.file.truncated_to
        };
        let tail = match from {
            Some(off) => ctx
                .objects
                .find(&key)
                .and_then(|fd| rustix::fs::fstat(&*fd).ok())
                .map_or(0, |st| (st.st_size.max(0) as u64).saturating_sub(off)),
            None => 0,
        };
        total = total.saturating_add(blocks.saturating_add(tail));
    }
    total
}

/// Syncfs the mount so the kernel sends writes it buffered (writeback
/// cache) before the cut.
fn syncfs(mountpoint: &std::path::Path) {
    if let Ok(f) = std::fs::File::open(mountpoint) {
        let _ = rustix::fs::syncfs(&f);
    }
}

/// Keep the latest tree's inode index in a file once it is large, and
/// let go of the pages of it the last capture read (see
/// capture::ino_index): the daemon's memory does not grow with the files.
fn index_to_disk(repo: &Repository, trees: &mut Trees) {
    let Some(b) = trees.latest.as_mut() else {
        return;
    };
    if trees.spill.is_none() {
        trees.spill = repo.dir().try_clone().ok().map(Arc::new);
    }
    if let Some(d) = &trees.spill {
        b.spill_index(d);
    }
}

/// Record in the status what the kept trees hold.
fn note_trees(trees: &Trees, status: &Mutex<FlusherStatus>) {
    let mut entries = 0;
    let mut bytes = 0;
    let (mut index_entries, mut index_bytes, mut index_file_bytes) = (0, 0, 0);
    if let Some(b) = &trees.latest {
        entries += b.held_entries() as u64;
        bytes += b.tree().heap_bytes();
        (index_entries, index_bytes) = b.index_memory();
        index_file_bytes = b.index_file_bytes();
    }
    if let Some((_, t)) = &trees.full {
        entries += t.entries.len() as u64;
        bytes += t.heap_bytes();
    }
    let mut s = status.lock();
    s.tree_entries = entries;
    s.tree_bytes = bytes;
    s.index_entries = index_entries;
    s.index_bytes = index_bytes;
    s.index_file_bytes = index_file_bytes;
}

/// The repository's first snapshot, before its cut: store the backing
/// directory one directory at a time (`capture::stream`), committed so
/// that its directories can be read back as the cut's base. The writer
/// goes on for the capture after the cut.
fn stream_first(
    ctx: &FlusherCtx,
    unmounting: bool,
) -> Result<(capture::stream::Streamed, ChunkWriter<'_>)> {
    let repo = &ctx.repo;
    let writer = repo.writer()?;
    let root = match crate::util::sys::open_dir_path(&ctx.backing) {
        Ok(r) => r,
        Err(e) => {
            writer.abort();
            return Err(Error::io("open", &ctx.backing, e));
        }
    };
    let store = repo.tree_store(&writer);
    let held = |k: &FileKey| ctx.track.is_held(k);
    let recheck =
        |d: &FileKey, name: &[u8], fd: Arc<std::os::fd::OwnedFd>| ctx.track.recheck(d, name, fd);
    let r = capture::stream::store_first(&capture::stream::StreamRequest {
        root: &root,
        hidden: ctx.hidden,
        writer: &writer,
        objects: &store,
        block_size: repo.config.block_size,
        threads: ctx.threads,
        racy_after: (!unmounting)
            .then(|| time::now_ns() - crate::snapshot::unchanged::racy_margin_ns(&root)),
        held: &held,
        recheck: &recheck,
    })
    .and_then(|s| writer.commit().map(|()| s));
    match r {
        Ok(s) => {
            tracing::debug!(
                "first snapshot: walk stored {} bytes read, at most {} entries held, {} left to the cut",
                s.bytes_read,
                s.peak_entries,
                s.rechecked
            );
            Ok((s, writer))
        }
        Err(e) => {
            writer.abort();
            Err(e)
        }
    }
}

/// `memo` if it holds the directory references of snapshot `id`.
fn memo_of(memo: &Option<(u64, DirMemo)>, id: u64) -> Option<&DirMemo> {
    memo.as_ref().filter(|(m, _)| *m == id).map(|(_, m)| m)
}

fn tree_of(repo: &Repository, id: u64, cache: &mut Option<(u64, Arc<Tree>)>) -> Result<Arc<Tree>> {
    if let Some((cid, t)) = cache {
        if *cid == id {
            return Ok(t.clone());
        }
    }
    let all = repo.snapshots()?;
    let rec = all
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| Error::UnknownSnapshot(id.to_string()))?;
    let t = Arc::new(repo.resolve(rec)?);
    *cache = Some((id, t.clone()));
    Ok(t)
}

/// [`take`], recording any failure in the status (whoever asked for the
/// snapshot), and surviving a panic: the frozen changes it may have lost
/// are found again by re-running the mount-time comparison, and
/// copy-before-write is switched off.
fn guarded_take(
    ctx: &FlusherCtx,
    trees: &mut Trees,
    out: &Report,
    kind: Option<Kind>,
    label: Option<String>,
    unmounting: bool,
    trigger: &str,
) -> Result<SnapshotRecord> {
    let status = &*out.status;
    let t0 = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        take(ctx, trees, status, kind, label, unmounting, trigger)
    }));
    // What the capture freed (trees, lists, buffers) goes back to the
    // system: the daemon's resident memory follows what it holds.
    crate::util::sys::release_free_memory();
    let r = match r {
        Ok(r) => r,
        Err(p) => {
            ctx.track.disarm();
            *trees = Trees::default();
            let msg = crate::util::panic::message(&*p);
            tracing::error!("the snapshot panicked ({msg}); checking the backing directory again so that no change is lost");
            if let Err(e) = startup_check(ctx) {
                tracing::error!("re-checking after the panic: {e}");
            }
            Err(Error::Poisoned(format!("the snapshot panicked: {msg}")))
        }
    };
    let now = time::rfc3339(time::now_ns());
    match &r {
        Err(e) => {
            {
                let mut s = status.lock();
                s.state = "idle".into();
                s.last_error = Some(format!("{now}: {e}"));
                s.errors += 1;
            }
            out.events.publish(Event::Error {
                time: now,
                during: "snapshot".into(),
                message: e.to_string(),
            });
        }
        Ok(rec) => {
            let (cut, read) = {
                let s = status.lock();
                (
                    s.last_cut_ms.unwrap_or(0.0) / 1e3,
                    s.last_bytes_read.unwrap_or(0),
                )
            };
            out.events.publish(Event::Snapshot {
                time: now,
                trigger: trigger.to_string(),
                snapshot: Box::new(rec.clone()),
                cut_seconds: cut,
                duration_seconds: t0.elapsed().as_secs_f64(),
                bytes_read: read,
            });
        }
    }
    r
}

/// Take one snapshot of the live filesystem.
/// The trigger of a kept snapshot (see `track::keep`).
const KEPT_TRIGGER: &str = "kept";

/// How long a failed kept snapshot waits before it is tried again.
const KEPT_RETRY: Duration = Duration::from_secs(5);

/// Take a kept snapshot if checkpoints kept aside wait for one (see
/// `track::keep`) and the repository has a snapshot to add them to; a
/// failed one is tried again after [`KEPT_RETRY`] (or at once, `now`).
fn take_kept(
    ctx: &FlusherCtx,
    trees: &mut Trees,
    out: &Report,
    retry: &mut (Option<Instant>, Duration),
    now: bool,
) {
    let Some(k) = ctx.track.keeper() else {
        return;
    };
    if !k.has_pending()
        || (!now && retry.0.is_some_and(|r| Instant::now() < r))
        || out.status.lock().last_snapshot.is_none()
    {
        return;
    }
    let paths: Vec<String> = k
        .pending()
        .iter()
        .map(|p| String::from_utf8_lossy(&p.rec.path).into_owned())
        .collect();
    let label = format!("kept: {}", policy::label_of(&paths));
    match guarded_take(
        ctx,
        trees,
        out,
        Some(Kind::Incremental),
        Some(label),
        false,
        KEPT_TRIGGER,
    ) {
        Ok(rec) => {
            *retry = (None, Duration::ZERO);
            tracing::info!(
                "snapshot {}: {} checkpoint(s) removed before a snapshot held them",
                rec.id,
                paths.len()
            );
        }
        Err(e) => {
            // Backing off: 5 s, then twice as long each time, at most 5 min.
            let backoff = (retry.1 * 2).clamp(KEPT_RETRY, Duration::from_secs(300));
            *retry = (Some(Instant::now() + backoff), backoff);
            tracing::warn!("capturing checkpoints kept aside (tried again in {backoff:?}): {e}");
        }
    }
}

/// After a kept snapshot committed: the next cut looks at each path it
/// added again (gone from the live tree, they leave the snapshots after
/// this one), and each kept file is handed to the materialization cache
/// or deleted.
fn kept_captured(ctx: &FlusherCtx, tree: &Tree, ids: &[u64], tops: &[Vec<u8>], snapshot: u64) {
    let Some(keeper) = ctx.track.keeper() else {
        return;
    };
    let Ok((root, root_fd)) = ctx.objects.root() else {
        return;
    };
    for top in tops {
        let (dir, name) = match top.iter().rposition(|b| *b == b'/') {
            Some(i) => (&top[..i], &top[i + 1..]),
            None => (&top[..0], &top[..]),
        };
        let (key, fd) = if dir.is_empty() {
            (root, Some(root_fd.clone()))
        } else {
            match tree.get(dir) {
                Some((m, crate::snapshot::manifest::Node::Dir)) => {
                    let key = FileKey {
                        dev: root.dev,
                        ino: m.ino,
                    };
                    (key, ctx.objects.find(&key))
                }
                _ => continue,
            }
        };
        ctx.track.recheck_entry(&key, name, fd);
    }
    let block_size = tree.block_size;
    for id in ids {
        let Some(k) = keeper.captured(*id) else {
            continue;
        };
        let name = crate::track::keep::data_name(*id);
        let adopted = match (&ctx.materialize, tree.get(&k.rec.path)) {
            (Some(m), Some((_, node @ crate::snapshot::manifest::Node::File { size, .. })))
                if k.immutable =>
            {
                let blocks = Tree::blocks_of(node).to_vec();
                let f = crate::views::materialize::FileRef {
                    key: crate::views::materialize::Key::of(block_size, *size, &blocks),
                    snapshot,
                    block_size,
                    size: *size,
                    blocks: Arc::new(blocks),
                    spans: Arc::new(
                        crate::snapshot::spans::Spans::of(node, block_size)
                            .unwrap_or(crate::snapshot::spans::Spans::Ends(Vec::new())),
                    ),
                    path: k.rec.path.clone(),
                };
                m.adopt(keeper.dir(), &name, &f)
            }
            _ => false,
        };
        tracing::debug!(
            path = %crate::snapshot::manifest::display_path(&k.rec.path),
            adopted,
            immutable = k.immutable,
            "a kept checkpoint is in snapshot {snapshot}"
        );
        if adopted {
            keeper.forget(*id);
        } else {
            keeper.discard(*id);
        }
    }
}

fn take(
    ctx: &FlusherCtx,
    trees: &mut Trees,
    status: &Mutex<FlusherStatus>,
    kind: Option<Kind>,
    label: Option<String>,
    unmounting: bool,
    trigger: &str,
) -> Result<SnapshotRecord> {
    let t0 = Instant::now();
    let scheduled = trigger == "schedule";
    let repo = &ctx.repo;
    // From choosing the base to committing: forget and gc wait for us.
    let _capture = repo.capture_guard();
    let all = repo.snapshots()?;
    let latest = all.iter().max_by_key(|r| r.id).cloned();
    let asked = kind.unwrap_or(Kind::Incremental);
    let kind = capture::base::effective_kind(&all, asked, repo.config.block_size);
    // A kept snapshot: the latest snapshot with the checkpoints kept
    // aside added (see `track::keep`).
    let kept = if trigger == KEPT_TRIGGER {
        let k = ctx.track.keeper().map(|k| k.pending()).unwrap_or_default();
        if k.is_empty() || latest.is_none() || kind != Kind::Incremental {
            return Err(Error::InvalidInput(
                "no kept checkpoint to capture, or no snapshot to add them to".into(),
            ));
        }
        Some(k)
    } else {
        None
    };
    // A scheduled full of a dataset that changed little is built from
    // the latest snapshot's tree and the journal's changes: only what
    // changed is read. (One asked for by hand re-reads everything.)
    let synthetic = scheduled
        && asked == Kind::Full
        && latest.as_ref().is_some_and(|l| {
            let changed = changed_bytes(ctx, repo.config.block_size as u64);
            l.block_size == repo.config.block_size
                && ctx
                    .policy
                    .synthetic_fulls
                    .applies(changed, l.stats.logical_bytes)
        });
    // The base: the latest snapshot's tree as the last capture left it
    // (this one changes it in place), or read; for the repository's first
    // snapshot, the listing.
    let cached = trees.latest.take();
    // The directory references of the cached base (a partly loaded base
    // reads its directories through them; without them it is read again).
    let mut memo = trees.memo.take();
    // The repository's first snapshot: what the walk stored, and the
    // writer that stored it (the capture after the cut goes on with it).
    let mut streamed: Option<(capture::stream::Streamed, ChunkWriter<'_>)> = None;
    let mut base = match &latest {
        Some(r) => match cached {
            Some(b) if b.id == r.id && (!b.is_partial() || memo_of(&memo, r.id).is_some()) => b,
            _ => BaseTree::new(r.id, repo.resolve(r)?),
        },
        // The first snapshot: store the tree now, one directory at a
        // time, while writers go on; the cut then corrects what changed
        // meanwhile, as it does for an incremental.
        None => {
            status.lock().state = "storing".into();
            let (s, writer) = stream_first(ctx, unmounting)?;
            let mut sb = StoredBase::new(&**repo, s.root.clone());
            let (b, m) = match sb.not_walked(b"") {
                Ok(()) => sb.finish(0),
                Err(e) => {
                    writer.abort();
                    return Err(e);
                }
            };
            memo = Some((0, m));
            status.lock().first_walk_peak_entries = Some(s.peak_entries as u64);
            streamed = Some((s, writer));
            b
        }
    };
    let no_memo = DirMemo::default();
    let loader = Loader {
        store: &**repo,
        memo: memo_of(&memo, base.id).unwrap_or(&no_memo),
    };
    // Only an incremental on the latest snapshot (or the first one, on
    // what its walk stored), with its directory references, re-encodes
    // just the directories on changed paths; anything else needs the
    // whole tree.
    let partial_ok =
        (kind == Kind::Incremental || streamed.is_some()) && memo_of(&memo, base.id).is_some();
    if !partial_ok {
        // (On failure the base is read again next time.)
        base.load_all(&loader)?;
    }
    if ctx.writeback_cache && !unmounting {
        syncfs(&ctx.mountpoint);
    }
    base.preload(
        &loader,
        ctx.track.journal().dirty_keys().into_iter().map(|k| k.ino),
    );
    status.lock().state = "cut".into();
    // Whether every file is read again (a first snapshot's walk read
    // them: the cut reads what changed since).
    let full = kind == Kind::Full && !synthetic && streamed.is_none();
    let (cut, lookup_err, kept_tops) = {
        let lookup = LazyLookup::new(&mut base, loader);
        let (cut, tops) = match &kept {
            Some(k) => match ctx.objects.root() {
                Ok((root, _)) => match ctx.track.kept_cut(k, &lookup, root.dev) {
                    Ok((c, tops)) => (Ok(c), tops),
                    Err(e) => (Err(e), Vec::new()),
                },
                Err(e) => (Err(Error::io("open", &ctx.backing, e)), Vec::new()),
            },
            None => (
                ctx.track.cut(&cut::CutRequest {
                    objects: &*ctx.objects,
                    backing: &ctx.backing,
                    base: &lookup,
                    full,
                    spill_dir: repo.dir().try_clone().ok(),
                    hidden: ctx.hidden,
                }),
                Vec::new(),
            ),
        };
        (cut, lookup.take_error(), tops)
    };
    let info = match cut {
        Ok(info) => info,
        Err(e) => {
            // Unchanged: still the next capture's base.
            if latest.is_some() {
                trees.latest = Some(base);
                trees.memo = memo;
            }
            if let Some((_, w)) = streamed {
                w.abort();
            }
            return Err(e);
        }
    };
    if let Some(e) = lookup_err {
        // The cut went on without a directory of the base it could not
        // read: its changes go back to the journal for the next one.
        ctx.track.give_back(info);
        if latest.is_some() {
            trees.latest = Some(base);
            trees.memo = memo;
        }
        if let Some((_, w)) = streamed {
            w.abort();
        }
        return Err(e);
    }
    let cut_ms = info.held.as_secs_f64() * 1e3;
    status.lock().state = "capturing".into();
    let (streamed, stream_writer) = match streamed {
        Some((s, w)) => (Some(s), Some(w)),
        None => (None, None),
    };
    let opened = match stream_writer {
        Some(w) => Ok(w),
        None => repo.writer(),
    }
    .and_then(|w| match crate::util::sys::open_dir_path(&ctx.backing) {
        Ok(root) => Ok((w, root)),
        Err(e) => {
            w.abort();
            Err(Error::io("open", &ctx.backing, e))
        }
    });
    let (writer, root) = match opened {
        Ok(x) => x,
        Err(e) => {
            if latest.is_some() {
                trees.latest = Some(base);
                trees.memo = memo;
            }
            ctx.track.give_back(info);
            return Err(e);
        }
    };
    let root_dev = rustix::fs::fstat(&root).map(|s| s.st_dev).unwrap_or(0);
    // A full capture changes every file: its old entries are not kept.
    let mut edits = if full {
        Edits::unrecorded()
    } else {
        Edits::default()
    };
    let racy_before = base.racy_limit;
    // The directory objects' parts the write replaced and wrote (see
    // `DirMemo::note_changes`), for the ledger's structure.
    let mut noted: Option<Vec<(crate::store::ChunkId, i64)>> = None;
    let result = (|| -> Result<(SnapshotRecord, u64)> {
        if info.kept.is_some() {
            crate::util::fault::inject("keep-capture")?;
        }
        let ld = Loader {
            store: &**repo,
            memo: memo_of(&memo, base.id).unwrap_or(&no_memo),
        };
        let captured = capture::live::capture(
            &capture::live::CaptureRequest {
                root: &root,
                root_dev,
                cut: &info,
                full,
                writer: &writer,
                block_size: repo.config.block_size as u64,
                threads: ctx.threads,
                racy_after: (!unmounting)
                    .then(|| info.time_ns - crate::snapshot::unchanged::racy_margin_ns(&root)),
                loader: ld,
            },
            &mut base,
            &mut edits,
        )?;
        status.lock().state = "committing".into();
        // The manifest is relative to the base of its kind (the latest
        // snapshot, the latest full, or none).
        let base_rec = capture::base::base_for(kind, &all);
        if kind != Kind::Full && base_rec.is_none() {
            return Err(Error::Corrupt(format!(
                "no snapshot for a {} snapshot to be based on",
                kind.as_str()
            )));
        }
        // What the manifest of its kind records: for a full, every entry
        // (only counted: the tree itself is what is stored).
        let (manifest, changed) = match (base_rec, &streamed) {
            // A first snapshot on what its walk stored: the changes since
            // (they name the directories to write again), and the counts
            // of the whole tree.
            (None, Some(s)) => {
                let (m, _) = capture::manifest::from_edits(base.tree(), &edits);
                let mut blocks = s.blocks as i64;
                for (p, old) in &edits.old {
                    let n = |e: Option<&capture::base_tree::Entry>| {
                        e.map_or(0, |(_, n)| crate::snapshot::Tree::blocks_of(n).len() as i64)
                    };
                    blocks += n(base.tree().entries.get(p)) - n(old.as_ref());
                }
                (m, (base.counts().entries, blocks.max(0) as u64))
            }
            (None, None) => {
                let (entries, blocks) = capture::manifest::counts_of_full(base.tree());
                #[cfg(debug_assertions)]
                {
                    let (m, c) = capture::manifest::build(base.tree(), None);
                    assert_eq!((entries, blocks), (m.entries.len() as u64, c));
                }
                (
                    crate::snapshot::manifest::Manifest {
                        format: crate::snapshot::manifest::MANIFEST_FORMAT,
                        block_size: base.tree().block_size,
                        removed: Vec::new(),
                        entries: Vec::new(),
                    },
                    (entries, blocks),
                )
            }
            (Some(r), _) => {
                let (m, blocks) = if Some(r.id) == latest.as_ref().map(|l| l.id) {
                    capture::manifest::from_edits(base.tree(), &edits)
                } else {
                    let full_tree = tree_of(repo, r.id, &mut trees.full)?;
                    capture::manifest::build(base.tree(), Some(&*full_tree))
                };
                let n = m.entries.len() as u64;
                (m, (n, blocks))
            }
        };
        let (parent, full_id) = match (kind, base_rec) {
            (Kind::Incremental, Some(b)) => (Some(b.id), Some(b.full)),
            (Kind::Differential, Some(b)) => (Some(b.id), Some(b.id)),
            _ => (None, None),
        };
        let mut stats = captured.stats.clone();
        // What the files changed since the latest snapshot share with
        // their version there.
        if edits.recording && latest.is_some() {
            let bs = base.tree().block_size;
            for (p, old) in &edits.old {
                if let (Some((_, old)), Some((_, new))) = (old, base.tree().entries.get(p)) {
                    stats.add_sharing(old, new, bs);
                }
            }
            if stats.rewritten_bytes.is_none() {
                stats.rewritten_bytes = Some(0);
                stats.shared_bytes = Some(0);
            }
        }
        stats.changed_entries = changed.0;
        stats.changed_blocks = changed.1;
        // (A full removes nothing: it has no base.)
        stats.removed_entries = if base_rec.is_some() {
            manifest.removed.len() as u64
        } else {
            0
        };
        // An incremental on the snapshot whose directories were written
        // last: only the directories on its changed paths are encoded.
        let latest_id = latest.as_ref().map(|l| l.id);
        let dirty = (streamed.is_some()
            || (kind == Kind::Incremental
                && base_rec.map(|b| b.id) == latest_id
                && memo.as_ref().map(|(id, _)| *id) == latest_id))
            .then(|| {
                crate::snapshot::dirs::dirty_dirs(
                    manifest
                        .entries
                        .iter()
                        .map(|e| e.path.as_slice())
                        .chain(manifest.removed.iter().map(|p| p.as_slice())),
                )
            });
        // Every directory re-encoded must be held whole (a directory
        // whose own entry changed may not have been read).
        if let Some(d) = &dirty {
            for p in d {
                base.load(&ld, p)?;
            }
        } else if base.is_partial() {
            return Err(Error::Corrupt(
                "a partly loaded base without its directory references".into(),
            ));
        }
        // Test builds check the manifest made from the edits against the
        // whole trees read back from the repository, below.
        #[cfg(debug_assertions)]
        let manifest_check = (base_rec.map(|b| b.id) == latest_id).then(|| manifest.clone());
        drop(manifest);
        let mut m = memo.take().map(|(_, m)| m).unwrap_or_default();
        if dirty.is_some() {
            m.note_changes();
        }
        let rec = repo.commit_snapshot(
            &writer,
            base.tree(),
            Some((&mut m, dirty.as_ref())),
            SnapshotDraft {
                kind,
                parent,
                full: full_id,
                time_ns: info.time_ns,
                label: label.clone(),
                source: ctx.backing.display().to_string(),
                stats,
                synthetic,
            },
        )?;
        #[cfg(debug_assertions)]
        crate::repo::uncounted(|| -> Result<()> {
            let written = repo.resolve(&rec)?;
            for (p, e) in &base.tree().entries {
                assert_eq!(
                    written.get(p),
                    Some(e),
                    "the snapshot written differs from the capture's tree at {}",
                    crate::snapshot::manifest::display_path(p)
                );
            }
            assert_eq!(written.entries.len() as u64, base.counts().entries);
            if streamed.is_some() {
                // The first snapshot's counts, from the walk and the
                // edits after it, are the whole tree's.
                assert_eq!(
                    (rec.stats.changed_entries, rec.stats.changed_blocks),
                    capture::manifest::counts_of_full(&written),
                    "the first snapshot's counts"
                );
            }
            if let (Some(m), Some(l)) = (manifest_check, &latest) {
                let prev = repo.resolve(l)?;
                assert_eq!(
                    m,
                    capture::manifest::build(&written, Some(&prev)).0,
                    "the manifest from the edits differs from the trees' comparison"
                );
            }
            Ok(())
        })?;
        writer.close()?;
        noted = m.take_noted();
        trees.memo = Some((rec.id, m));
        Ok((
            rec,
            captured.bytes_read + streamed.as_ref().map_or(0, |s| s.bytes_read),
        ))
    })();
    match result {
        Ok((rec, bytes)) => {
            // Committed: the frozen changes are in it.
            if let Err(e) = ctx.track.committed(&info) {
                tracing::warn!("clearing the journal after snapshot {}: {e}", rec.id);
            }
            if let Some(ids) = &info.kept {
                kept_captured(ctx, base.tree(), ids, &kept_tops, rec.id);
            }
            // What this snapshot changed in the references, from the
            // capture's record of the entries it replaced (a full records
            // none: the ledger then reads what differs).
            // The other objects it references (directory objects,
            // segments, manifest) are compared by reading the
            // directories that differ.
            let delta = match (&latest, noted.take()) {
                (Some(l), Some(dirs)) if edits.recording => {
                    let changes = || {
                        edits.old.iter().map(|(p, old)| {
                            (
                                old.as_ref().map(|e| &e.1),
                                base.tree().entries.get(p).map(|e| &e.1),
                            )
                        })
                    };
                    let id = |b: &[u8]| writer.id(b);
                    crate::retention::ledger::structure_from_changes(l, &rec, dirs, changes(), &id)
                        .map(|structure| {
                            crate::retention::ledger::from_changes(l, &rec, changes(), structure)
                        })
                        .map_err(|e| {
                            tracing::debug!("ledger: structure of snapshot {}: {e}", rec.id)
                        })
                        .ok()
                }
                _ => None,
            };
            // Test builds check it against the trees' comparison.
            #[cfg(debug_assertions)]
            if let (Some(d), Some(l)) = (&delta, &latest) {
                let want = crate::repo::uncounted(|| {
                    crate::retention::ledger::compute(repo, Some(l), &rec)
                });
                if let Ok(w) = want {
                    assert_eq!(
                        d, &w,
                        "the ledger delta from the edits differs from the trees'"
                    );
                }
            }
            drop(edits);
            base.id = rec.id;
            if base.held_entries() > BASE_HELD_ENTRIES {
                // Read again, directory by directory, as the next
                // captures need them.
                base.unload();
            }
            trees.latest = Some(base);
            if rec.kind == Kind::Full {
                // A differential's base from now on: read when needed.
                trees.full = None;
            }
            index_to_disk(repo, trees);
            note_trees(trees, status);
            let secs = t0.elapsed().as_secs_f64();
            let mut s = status.lock();
            s.state = "idle".into();
            s.last_snapshot = Some(rec.id);
            s.last_snapshot_time = Some(rec.time.clone());
            s.last_cut_ms = Some(cut_ms);
            s.last_duration_ms = Some(secs * 1e3);
            s.last_bytes_read = Some(bytes);
            s.bytes_read_total += bytes;
            s.last_throughput = Some(bytes as f64 / secs.max(1e-9));
            s.snapshots_taken += 1;
            s.last_error = None;
            tracing::info!(
                "snapshot {} ({}): cut held writers {cut_ms:.2} ms, {bytes} bytes read in {secs:.2} s",
                rec.id,
                rec.kind_label()
            );
            drop(s);
            // For the space accounting (`snapshots`, `stats`, metrics).
            crate::retention::ledger::note_commit(repo, latest.as_ref(), &rec, delta);
            Ok(rec)
        }
        Err(e) => {
            writer.abort();
            // The base as it was, for the next attempt (a full capture
            // recorded nothing to undo: its base is read again).
            if latest.is_some() && edits.recording {
                base.undo(edits);
                base.racy_limit = racy_before;
                trees.latest = Some(base);
                trees.memo = memo;
            }
            // The changes wait for the next snapshot.
            ctx.track.give_back(info);
            status.lock().state = "idle".into();
            Err(e)
        }
    }
}
