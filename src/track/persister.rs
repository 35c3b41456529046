//! The journal persister: a thread that writes queued journal records to
//! sled every [`PERSIST_EVERY`], so the hot path never waits for the
//! index. What is lost by a crash between two batches is found again by
//! the mount-time reconciliation (ctime moved on).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::journal::Journal;
use crate::error::{Error, Result};

/// Persist journal records this often.
pub const PERSIST_EVERY: Duration = Duration::from_millis(100);

pub struct Persister {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    journal: Arc<Journal>,
}

impl Persister {
    pub fn start(journal: Arc<Journal>) -> Result<Persister> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let journal = journal.clone();
            std::thread::Builder::new()
                .name("journal".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(PERSIST_EVERY);
                        if let Err(e) = journal.persist() {
                            tracing::error!("persisting the journal: {e}");
                        }
                    }
                })
                .map_err(|e| Error::io("start thread", "", e))?
        };
        Ok(Persister {
            stop,
            thread: Some(thread),
            journal,
        })
    }

    /// Stop the thread and write (and flush) everything still queued.
    pub fn stop(mut self) -> Result<()> {
        self.halt();
        self.journal.flush()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.halt();
    }
}
