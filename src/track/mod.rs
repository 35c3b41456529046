//! Change tracking: everything that lets a snapshot know what changed in
//! the live mount, and lets it describe one instant while writers go on.
//!
//! ```text
//! fs (FUSE ops) ──Recorder──▶ gate · journal · dir pins · copy-before-write · events
//!                                          ▲
//! flusher ───────Freezer────▶ cut (freeze a consistent set) · read it · give it back
//! ```
//!
//! - `journal.rs`: dirty blocks, files and directory entries per epoch
//!   (sled tree `journal`), and the [`FileKey`] that names a backing object
//! - `persister.rs`: the thread that writes journal records to sled
//! - `gate.rs`: every change holds the gate shared; the cut holds it
//!   exclusive, so a snapshot sits between whole operations
//! - `pins.rs`: descriptors of directories whose entries changed
//! - `cow.rs`: copy-before-write of blocks a capture still needs
//! - `events.rs`: change events the scheduler listens to
//! - `cut.rs`: the cut itself, and what it hands to the capture
//! - `reconcile.rs`: the mount-time comparison of the backing directory
//!   with the latest snapshot (what changed while not mounted)
//!
//! Two narrow interfaces share one [`Tracker`]: the filesystem holds a
//! [`Recorder`] (record a change, save blocks before changing them, pin,
//! emit events; it cannot freeze or drop anything), the flusher holds a
//! [`Freezer`] (cut, finish or give back a cut, subscribe to events; it
//! cannot record). Neither side imports the other: the cut reaches live
//! objects through the [`Objects`] trait the filesystem implements.
//!
//! Invariants: a change is recorded in the journal before the operation
//! that made it returns, while the gate is held shared; a cut's frozen
//! set is either committed (then dropped from the journal) or merged back
//! (then nothing is lost); a capture in progress never reads a block that
//! changed after the cut (copy-before-write saved it first).

pub mod cow;
pub mod cut;
pub mod events;
pub mod gate;
pub mod journal;
pub mod persister;
pub mod pins;
pub mod reconcile;

use std::os::fd::OwnedFd;
use std::sync::Arc;

pub use events::FsEvent;
pub use journal::{FileKey, Journal, JournalStats};

use crate::error::Result;

/// How the cut reaches the live objects the filesystem knows (so that it
/// can look at a changed object even when no path leads to it any more).
pub trait Objects: Send + Sync {
    /// The backing root: its key and an `O_PATH` descriptor.
    fn root(&self) -> std::io::Result<(FileKey, Arc<OwnedFd>)>;
    /// An `O_PATH` descriptor of a backing object the filesystem holds.
    fn find(&self, key: &FileKey) -> Option<Arc<OwnedFd>>;
}

/// The tracking state of one live mount.
struct State {
    journal: Arc<Journal>,
    gate: gate::Gate,
    pins: pins::DirPins,
    cow: cow::Cow,
    events: events::Events,
}

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
                events: events::Events::default(),
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
        self.state.journal.record_write(key, offset, len);
    }

    /// A range changed by something other than a write (copy, fallocate).
    pub fn range(&self, key: &FileKey, offset: u64, len: u64) {
        self.state.journal.record_range(key, offset, len);
    }

    /// The size changed from `old` to `new`.
    pub fn resize(&self, key: &FileKey, old: u64, new: u64) {
        self.state.journal.record_resize(key, old, new);
    }

    /// Every block from `offset` on changed.
    pub fn all_from(&self, key: &FileKey, offset: u64) {
        self.state.journal.record_all_from(key, offset);
    }

    /// Metadata (mode, owner, times, xattrs, links) changed.
    pub fn meta(&self, key: &FileKey) {
        self.state.journal.record_meta(key);
    }

    /// The object is new.
    pub fn created(&self, key: &FileKey) {
        self.state.journal.record_created(key);
    }

    /// The entry `name` of directory `dir` was created, removed or
    /// renamed; `dir_fd` keeps the directory reachable until the next cut.
    pub fn entry(&self, dir: &FileKey, name: &[u8], dir_fd: Option<Arc<OwnedFd>>) {
        self.state.journal.record_entry(dir, name);
        if let Some(fd) = dir_fd {
            self.state.pins.pin(*dir, fd);
        }
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
}

/// What the flusher may do: freeze a consistent set of changes, read it,
/// and commit or give it back.
#[derive(Clone)]
pub struct Freezer {
    state: Arc<State>,
}

impl Freezer {
    /// Take the cut (see [`cut::cut`]).
    pub fn cut(&self, req: &cut::CutRequest<'_>) -> Result<cut::CutInfo> {
        cut::cut(&self.state, req)
    }

    /// The snapshot of `info` is committed: its changes are in it.
    pub fn committed(&self, info: &cut::CutInfo) -> Result<()> {
        self.capture_over(info);
        self.state.journal.drop_through(info.epoch)
    }

    /// The snapshot of `info` failed: its changes wait for the next one.
    pub fn give_back(&self, info: cut::CutInfo) {
        self.capture_over(&info);
        self.state.journal.restore(info.frozen);
        for (k, fd) in info.pins {
            self.state.pins.pin(k, fd);
        }
    }

    fn capture_over(&self, info: &cut::CutInfo) {
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

    /// Receive the filesystem's change events (one listener).
    pub fn subscribe(&self, capacity: usize) -> crossbeam_channel::Receiver<FsEvent> {
        self.state.events.subscribe(capacity)
    }

    /// Mark what differs between the backing directory `root` and `tree`
    /// (see [`reconcile`]), and persist it.
    pub fn reconcile(
        &self,
        root: OwnedFd,
        tree: &crate::snapshot::Tree,
        skip: Option<FileKey>,
    ) -> Result<reconcile::ReconcileReport> {
        let r = reconcile::mark_changes_since(root, tree, &self.state.journal, skip)?;
        self.state.journal.flush()?;
        Ok(r)
    }
}
