//! What the flusher tells the rest of the daemon: each committed snapshot
//! and each failure, broadcast to subscribers (metrics, notification
//! hooks).
//!
//! Invariant: publishing never blocks the flusher. Each subscriber has a
//! bounded queue; when it is full the event is dropped for that
//! subscriber (and counted), and a subscriber that went away is removed.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use serde::Serialize;

use crate::snapshot::SnapshotRecord;

/// One event, as hooks receive it (JSON on stdin).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A snapshot was committed.
    Snapshot {
        /// RFC 3339 UTC, when it was committed.
        time: String,
        /// What triggered it: schedule, on-close, request, unmount.
        trigger: String,
        snapshot: Box<SnapshotRecord>,
        /// How long the cut held writers.
        cut_seconds: f64,
        /// From the start of the snapshot to its commit.
        duration_seconds: f64,
        /// Bytes read from the backing directory.
        bytes_read: u64,
    },
    /// Something failed: a snapshot (its changes wait for the next one),
    /// retention, or a rolling verification that found damage.
    Error {
        time: String,
        /// snapshot, retention, verify
        during: String,
        message: String,
    },
}

/// A fan-out of events to bounded subscriber queues.
#[derive(Default)]
pub struct Broadcast {
    subs: Mutex<Vec<Sender<Event>>>,
    /// Events dropped because a subscriber's queue was full.
    pub dropped: AtomicU64,
}

impl Broadcast {
    /// A queue of at most `cap` undelivered events.
    pub fn subscribe(&self, cap: usize) -> Receiver<Event> {
        let (tx, rx) = bounded(cap.max(1));
        self.subs.lock().push(tx);
        rx
    }

    /// Drop every subscriber's sender: their queues end once drained.
    pub fn close(&self) {
        self.subs.lock().clear();
    }

    /// Hand `e` to every subscriber without waiting.
    pub fn publish(&self, e: Event) {
        self.subs.lock().retain(|s| match s.try_send(e.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    "a subscriber (hooks or metrics) is behind: event dropped ({n} so far)"
                );
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(n: u32) -> Event {
        Event::Error {
            time: String::new(),
            during: "snapshot".into(),
            message: n.to_string(),
        }
    }

    #[test]
    fn a_full_or_gone_subscriber_never_blocks_the_publisher() {
        let b = Broadcast::default();
        let slow = b.subscribe(1);
        let gone = b.subscribe(4);
        drop(gone);
        b.publish(err(1));
        b.publish(err(2));
        assert_eq!(b.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(b.subs.lock().len(), 1);
        assert!(matches!(slow.try_recv(), Ok(Event::Error { message, .. }) if message == "1"));
        let json = serde_json::to_value(err(3)).unwrap();
        assert_eq!(json["event"], "error");
    }
}
