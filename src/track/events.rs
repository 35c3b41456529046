//! Change events: what the snapshot scheduler listens to (a file written
//! and closed, a file renamed into place), for on-close snapshots.
//! Events are best effort: a full channel drops them, and nothing but
//! the schedule depends on them (the journal records every change).

use std::sync::OnceLock;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::journal::FileKey;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsEvent {
    /// A file written through this handle was closed (path relative to the
    /// mount root).
    ClosedAfterWrite { key: FileKey, path: Vec<u8> },
    /// A file was renamed to `path`.
    RenamedTo { key: FileKey, path: Vec<u8> },
}

#[derive(Default)]
pub struct Events {
    tx: OnceLock<Sender<FsEvent>>,
}

impl Events {
    /// Send an event if someone listens (`event` is only built then).
    pub fn emit(&self, event: impl FnOnce() -> Option<FsEvent>) {
        if let Some(tx) = self.tx.get() {
            if let Some(ev) = event() {
                let _ = tx.try_send(ev);
            }
        }
    }

    /// Listen (the first subscriber gets the events; a later one gets a
    /// channel that stays empty).
    pub fn subscribe(&self, capacity: usize) -> Receiver<FsEvent> {
        let (tx, rx) = bounded(capacity);
        let _ = self.tx.set(tx);
        rx
    }
}

/// A writer about to rewrite (truncate) a checkpoint whose last closed
/// content no snapshot holds yet asks for a snapshot first, and waits for
/// the answer: `true` once one holding it is committed.
pub struct CaptureAsk {
    pub key: FileKey,
    /// The checkpoint's path (for the snapshot's label).
    pub path: Vec<u8>,
    pub reply: Sender<bool>,
}

/// Where such asks go (the flusher listens).
#[derive(Default)]
pub struct Asks {
    tx: OnceLock<Sender<CaptureAsk>>,
}

impl Asks {
    /// Ask for a snapshot holding `key` and wait at most `wait`; `false`
    /// when nobody listens, it failed, or it took longer.
    pub fn capture(&self, key: FileKey, path: Vec<u8>, wait: std::time::Duration) -> bool {
        let Some(tx) = self.tx.get() else {
            return false;
        };
        let (reply, rx) = bounded(1);
        if tx.try_send(CaptureAsk { key, path, reply }).is_err() {
            return false;
        }
        rx.recv_timeout(wait).unwrap_or(false)
    }

    pub fn listen(&self, capacity: usize) -> Receiver<CaptureAsk> {
        let (tx, rx) = bounded(capacity);
        let _ = self.tx.set(tx);
        rx
    }
}
