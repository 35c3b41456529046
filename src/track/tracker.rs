//! The tracking state of one live mount and the two interfaces over it:
//! [`Recorder`] for the filesystem (record, save before changing, pin,
//! emit) and [`Freezer`] for the flusher (cut, commit or give back,
//! subscribe, reconcile). Each side gets only its half.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::cut::{self, CutInfo, CutRequest};
use super::events::{Events, FsEvent};
use super::journal::{FileKey, Journal};
use super::{cow, gate, pins, reconcile};
use crate::error::Result;

/// The tracking state of one live mount.
struct State {
    journal: Arc<Journal>,
    gate: gate::Gate,
    pins: pins::DirPins,
    cow: cow::Cow,
    events: Events,
    /// Asks for a snapshot before a checkpoint is rewritten.
    asks: super::events::Asks,
    /// Files open for writing on the checkpoint fast path (their writes
    /// bypass the daemon): key -> number of such opens.
    held: cut::OpenCount,
    /// Held files whose close has begun (their release follows at once).
    closing: cut::OpenCount,
    /// Other files open for writing through kernel passthrough (a writer
    /// of a file that has passthrough readers: the kernel allows no other
    /// mode): key -> number of such opens.
    bypass: cut::OpenCount,
    /// Where checkpoints deleted before a snapshot held them are kept
    /// (set once by the daemon; absent: nothing is kept).
    keeper: std::sync::OnceLock<Arc<super::keep::Keeper>>,
    /// Benchmarks only (`REWINDFS_BENCH_UNTRACKED=1`): nothing is
    /// recorded and no snapshot can be cut, to measure what recording
    /// costs.
    untracked: bool,
}

/// How long a cut waits for held files being closed to be released.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn dec(m: &cut::OpenCount, key: &FileKey) {
    let mut h = m.lock();
    if let Some(n) = h.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            h.remove(key);
        }
    }
}

/// The environment variable that turns recording off (benchmarks only).
pub const UNTRACKED_ENV: &str = "REWINDFS_BENCH_UNTRACKED";

/// The tracking state of one live mount; hands out the two interfaces.
#[derive(Clone)]
pub struct Tracker {
    state: Arc<State>,
}

impl Tracker {
    pub fn new(journal: Arc<Journal>) -> Tracker {
        Tracker {
            state: Arc::new(State {
                journal,
                gate: gate::Gate::default(),
                pins: pins::DirPins::default(),
                cow: cow::Cow::default(),
                events: Events::default(),
                asks: Default::default(),
                held: Default::default(),
                closing: Default::default(),
                bypass: Default::default(),
                keeper: std::sync::OnceLock::new(),
                untracked: {
                    let off = std::env::var(UNTRACKED_ENV).is_ok_and(|v| v == "1");
                    if off {
                        tracing::warn!("{UNTRACKED_ENV}=1: changes are NOT recorded and no snapshot can be taken (benchmarks only)");
                    }
                    off
                },
            }),
        }
    }

    /// The filesystem's side.
    pub fn recorder(&self) -> Recorder {
        Recorder {
            state: self.state.clone(),
        }
    }

    /// The flusher's side.
    pub fn freezer(&self) -> Freezer {
        Freezer {
            state: self.state.clone(),
        }
    }

    pub fn journal(&self) -> &Arc<Journal> {
        &self.state.journal
    }

    /// Recording is off (benchmarks only, see [`UNTRACKED_ENV`]).
    pub fn untracked(&self) -> bool {
        self.state.untracked
    }

    /// Keep checkpoints deleted before a snapshot held them (see
    /// [`super::keep`]).
    pub fn set_keeper(&self, k: Arc<super::keep::Keeper>) {
        let _ = self.state.keeper.set(k);
    }

    pub fn keeper(&self) -> Option<&Arc<super::keep::Keeper>> {
        self.state.keeper.get()
    }
}

/// What the filesystem may do: record changes as they happen.
#[derive(Clone)]
pub struct Recorder {
    state: Arc<State>,
}

impl Recorder {
    /// Enter a change: held for the whole operation (a cut waits for it,
    /// and no cut starts while it is held).
    pub fn change(&self) -> gate::Change<'_> {
        self.state.gate.change()
    }

    pub fn block_size(&self) -> u64 {
        self.state.journal.block_size()
    }

    /// `len` bytes written at `offset`.
    pub fn write(&self, key: &FileKey, offset: u64, len: u64) {
        if self.state.untracked {
            return;
        }
        self.state.journal.record_write(key, offset, len);
    }

    /// A range changed by something other than a write (copy, fallocate).
    pub fn range(&self, key: &FileKey, offset: u64, len: u64) {
        if self.state.untracked {
            return;
        }
        self.state.journal.record_range(key, offset, len);
    }

    /// The size changed from `old` to `new`.
    pub fn resize(&self, key: &FileKey, old: u64, new: u64) {
        if self.state.untracked {
            return;
        }
        self.state.journal.record_resize(key, old, new);
    }

    /// Every block from `offset` on changed.
    pub fn all_from(&self, key: &FileKey, offset: u64) {
        if self.state.untracked {
            return;
        }
        self.state.journal.record_all_from(key, offset);
    }

    /// Metadata (mode, owner, times, xattrs, links) changed.
    pub fn meta(&self, key: &FileKey) {
        if self.state.untracked {
            return;
        }
        self.state.journal.record_meta(key);
    }

    /// The object is new.
    pub fn created(&self, key: &FileKey) {
        if self.state.untracked {
            return;
        }
        self.state.journal.record_created(key);
    }

    /// The entry `name` of directory `dir` was created, removed or
    /// renamed; `dir_fd` keeps the directory reachable until the next cut.
    pub fn entry(&self, dir: &FileKey, name: &[u8], dir_fd: Option<Arc<OwnedFd>>) {
        if self.state.untracked {
            return;
        }
        self.state.journal.record_entry(dir, name);
        if let Some(fd) = dir_fd {
            self.state.pins.pin(*dir, fd);
        }
    }

    /// A file is opened for writing on the checkpoint fast path: its
    /// bytes will not pass through the daemon, so it is recorded as
    /// wholly changed, and until [`Recorder::unhold`] a cut keeps its last
    /// closed version. Call with the change gate held.
    pub fn hold(&self, key: &FileKey) {
        self.state.journal.record_all_from(key, 0);
        *self.state.held.lock().entry(*key).or_insert(0) += 1;
    }

    /// A fast-path open of the file is closed: recorded as changed again
    /// (its last write is now), and no longer held once its last such
    /// open is closed. Call with the change gate held.
    pub fn unhold(&self, key: &FileKey, was_closing: bool) {
        if was_closing {
            dec(&self.state.closing, key);
        }
        self.state.journal.record_all_from(key, 0);
        let mut h = self.state.held.lock();
        if let Some(n) = h.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                h.remove(key);
            }
        }
    }

    /// A held file's close has begun: its release (and unhold) follows.
    pub fn closing(&self, key: &FileKey) {
        *self.state.closing.lock().entry(*key).or_insert(0) += 1;
    }

    /// A file is opened for writing through kernel passthrough outside the
    /// checkpoint fast path: its writes bypass the daemon, so it is
    /// recorded as wholly changed and a cut copies it whole while writers
    /// are held (keeping the point-in-time guarantee), until
    /// [`Recorder::unbypass`]. Call with the change gate held.
    pub fn bypass(&self, key: &FileKey) {
        self.state.journal.record_all_from(key, 0);
        *self.state.bypass.lock().entry(*key).or_insert(0) += 1;
    }

    /// A bypassing writer is closed (see [`Recorder::bypass`]).
    pub fn unbypass(&self, key: &FileKey) {
        self.state.journal.record_all_from(key, 0);
        let mut h = self.state.bypass.lock();
        if let Some(n) = h.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                h.remove(key);
            }
        }
    }

    /// Did the file change within `window` (a change not yet in a
    /// snapshot)?
    pub fn changed_within(&self, key: &FileKey, window: std::time::Duration) -> bool {
        self.state
            .journal
            .last_change_ns(key)
            .is_some_and(|t| crate::util::time::now_ns() - t < window.as_nanos() as i64)
    }

    /// Has the file changes that no snapshot holds yet (not counting a
    /// capture in progress)?
    pub fn is_dirty(&self, key: &FileKey) -> bool {
        self.state.journal.is_dirty(key)
    }

    /// Is the file's last change in no committed snapshot yet: changed
    /// since the last cut, or read by the capture running now (which may
    /// still fail, or be cut short by kill -9)?
    pub fn unsaved(&self, key: &FileKey) -> bool {
        self.state.journal.is_dirty(key) || self.state.cow.get().is_some_and(|c| c.wants(key))
    }

    /// Is a capture running (copy-before-write armed)?
    pub fn capturing(&self) -> bool {
        self.state.cow.get().is_some()
    }

    /// Blocks `[first, last]` of a regular file are about to change: save
    /// those the running capture still needs. `reader` reads the current
    /// content, `size_now` gives the current size.
    pub fn before_change(
        &self,
        key: &FileKey,
        first: u64,
        last: u64,
        reader: &dyn Fn(u64, usize) -> std::io::Result<Vec<u8>>,
        size_now: &dyn Fn() -> std::io::Result<u64>,
    ) -> std::io::Result<()> {
        match self.state.cow.get() {
            Some(c) => c.before_change(key, first, last, reader, size_now),
            None => Ok(()),
        }
    }

    /// An object is about to be renamed or removed: while a capture runs,
    /// keep it reachable for the capture.
    pub fn before_move(&self, object: impl FnOnce() -> Option<(FileKey, Arc<OwnedFd>)>) {
        if let Some(c) = self.state.cow.get() {
            if let Some((key, fd)) = object() {
                c.pin_moved(key, fd);
            }
        }
    }

    /// Send an event to the scheduler, if one listens (the event is built
    /// only then).
    pub fn emit(&self, event: impl FnOnce() -> Option<FsEvent>) {
        self.state.events.emit(event);
    }

    /// Where checkpoints are kept aside, if anywhere.
    pub fn keeper(&self) -> Option<&Arc<super::keep::Keeper>> {
        self.state.keeper.get()
    }

    /// Ask the flusher for a snapshot holding the file `key` (a
    /// checkpoint about to be rewritten) and wait at most `wait` for it;
    /// whether one was committed. Call it without being in a change (the
    /// cut waits for changes).
    pub fn capture_before_rewrite(
        &self,
        key: FileKey,
        path: Vec<u8>,
        wait: std::time::Duration,
    ) -> bool {
        self.state.asks.capture(key, path, wait)
    }

    /// Is the file open on the checkpoint fast path now?
    pub fn is_held(&self, key: &FileKey) -> bool {
        self.state.held.lock().contains_key(key)
    }
}

/// What the flusher may do: freeze a consistent set of changes, read it,
/// and commit or give it back.
#[derive(Clone)]
pub struct Freezer {
    state: Arc<State>,
}

impl Freezer {
    /// Take the cut (see [`super::cut`]).
    pub fn cut(&self, req: &CutRequest<'_>) -> Result<CutInfo> {
        let s = &self.state;
        // A checkpoint whose close(2) already returned is released by the
        // kernel a moment later: wait for that (bounded), so a snapshot
        // asked for right after the close holds it.
        let t0 = std::time::Instant::now();
        while !s.closing.lock().is_empty() && t0.elapsed() < CLOSE_WAIT {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if s.untracked {
            return Err(crate::error::Error::InvalidInput(format!(
                "change tracking is off ({UNTRACKED_ENV}=1, benchmarks only): no snapshot"
            )));
        }
        cut::cut(
            &s.journal,
            &s.gate,
            &s.pins,
            &s.cow,
            (&s.held, &s.bypass),
            req,
        )
    }

    /// The snapshot of `info` is committed: its changes are in it.
    pub fn committed(&self, info: &CutInfo) -> Result<()> {
        self.capture_over(info);
        if info.kept.is_some() {
            // A kept snapshot took nothing from the journal.
            return Ok(());
        }
        self.state.journal.drop_through(info.epoch)
    }

    /// The snapshot of `info` failed: its changes wait for the next one.
    pub fn give_back(&self, info: CutInfo) {
        self.capture_over(&info);
        if info.kept.is_some() {
            return;
        }
        self.state.journal.restore(info.frozen);
        for (k, fd) in info.pins {
            self.state.pins.pin(k, fd);
        }
    }

    fn capture_over(&self, info: &CutInfo) {
        self.state.cow.set(None);
        info.cow.finish();
    }

    /// Disarm copy-before-write (after a capture panicked).
    pub fn disarm(&self) {
        self.state.cow.set(None);
    }

    /// Nothing changed since the last committed cut.
    pub fn is_empty(&self) -> bool {
        self.state.journal.is_empty()
    }

    pub fn journal(&self) -> &Journal {
        &self.state.journal
    }

    /// Whether a file is open on the checkpoint fast path now (its bytes
    /// may be half written: a capture outside the cut must not keep them).
    pub fn is_held(&self, key: &FileKey) -> bool {
        self.state.held.lock().contains_key(key)
    }

    /// Where checkpoints are kept aside, if anywhere.
    pub fn keeper(&self) -> Option<&Arc<super::keep::Keeper>> {
        self.state.keeper.get()
    }

    /// The cut of a kept snapshot (see [`cut::kept_cut`]).
    pub fn kept_cut(
        &self,
        kept: &[super::keep::Kept],
        base: &dyn cut::BaseLookup,
        dev: u64,
    ) -> Result<(CutInfo, Vec<Vec<u8>>)> {
        if self.state.untracked {
            return Err(crate::error::Error::InvalidInput(format!(
                "change tracking is off ({UNTRACKED_ENV}=1, benchmarks only): no snapshot"
            )));
        }
        cut::kept_cut(kept, base, dev, self.state.journal.block_size())
    }

    /// Have the next cut look at entry `name` of directory `dir`, with
    /// `dir_fd` (when there is one) keeping the directory reachable.
    pub fn recheck_entry(&self, dir: &FileKey, name: &[u8], dir_fd: Option<Arc<OwnedFd>>) {
        self.state.journal.record_entry(dir, name);
        if let Some(fd) = dir_fd {
            self.state.pins.pin(*dir, fd);
        }
    }

    /// Have the next cut look at entry `name` of directory `dir` (a
    /// capture outside the cut left it out); `dir_fd` keeps the
    /// directory reachable until then.
    pub fn recheck(&self, dir: &FileKey, name: &[u8], dir_fd: Arc<OwnedFd>) {
        self.state.journal.record_entry(dir, name);
        self.state.pins.pin(*dir, dir_fd);
    }

    /// Receive the filesystem's change events (one listener).
    pub fn subscribe(&self, capacity: usize) -> crossbeam_channel::Receiver<FsEvent> {
        self.state.events.subscribe(capacity)
    }

    /// Receive the asks for a snapshot before a checkpoint is rewritten
    /// (one listener).
    pub fn listen_asks(
        &self,
        capacity: usize,
    ) -> crossbeam_channel::Receiver<super::events::CaptureAsk> {
        self.state.asks.listen(capacity)
    }

    /// Mark what differs between the backing directory `root` and `tree`
    /// (see [`reconcile`]), and persist it.
    pub fn reconcile(
        &self,
        root: OwnedFd,
        snap: &mut dyn reconcile::SnapshotDirs,
        skip: Option<FileKey>,
    ) -> Result<reconcile::ReconcileReport> {
        let r = reconcile::mark_changes_since(root, snap, &self.state.journal, skip)?;
        self.state.journal.flush()?;
        Ok(r)
    }
}
