//! Keeps what `snapshots` shows up to date in the background: after each
//! snapshot the daemon commits, the snapshots' unique sizes are brought
//! up to date and cached (`retention::space::unique_bytes`), so that a
//! listing reads them from the cache instead of working them out on the
//! user's path. One update at a time: snapshots committed while one runs
//! are covered by the next. It steps aside while `forget` or gc runs
//! (they change what it reads) and tries again at the next snapshot.

use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::flusher::Event;
use crate::repo::Repository;

/// Start the thread; it ends when the event queue closes.
pub fn start(repo: Arc<Repository>, events: Receiver<Event>) -> crate::error::Result<()> {
    std::thread::Builder::new()
        .name("sizes".into())
        .spawn(move || {
            // Captures and requests come first.
            crate::util::sys::background_priority();
            while let Ok(ev) = events.recv() {
                if !matches!(ev, Event::Snapshot { .. }) {
                    continue;
                }
                // Coalesce the snapshots committed meanwhile.
                while events.try_recv().is_ok() {}
                let Some(_lifecycle) = repo.try_lifecycle_guard() else {
                    continue;
                };
                if let Err(e) = crate::retention::space::unique_bytes(&repo) {
                    tracing::debug!("unique sizes not brought up to date: {e}");
                }
            }
        })
        .map_err(|e| crate::error::Error::io("start thread", "sizes", e))?;
    Ok(())
}
