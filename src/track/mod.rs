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
//! `tracker.rs` holds the [`Tracker`] and its two narrow interfaces: the filesystem holds a
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
pub mod keep;
pub mod persister;
pub mod pins;
pub mod reconcile;
pub mod tracker;

pub use cut::Objects;
pub use events::FsEvent;
pub use journal::{FileKey, Journal, JournalStats};
pub use tracker::{Freezer, Recorder, Tracker};
