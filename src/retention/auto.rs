//! Retention applied by the daemon: after each snapshot, a background
//! thread forgets what the policy no longer keeps and, when that removed
//! something, runs gc. Writers never wait for it. The flusher's next
//! snapshot waits while `forget` runs (it holds the capture lock from
//! planning to the last record: resolving the trees it rewrites and
//! storing their manifests, typically well under a second) and during
//! gc's barrier, never while gc marks, repacks or deletes.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender, TrySendError};
use parking_lot::Mutex;
use serde::Serialize;

use super::forget::{forget, Target};
use super::gc::{gc, GcOptions};
use super::keep::KeepPolicy;
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::util::calendar::{Windows, Zone};
use crate::util::time;

/// What the last automatic run did (for `status`).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct RetentionStatus {
    pub last_run: Option<String>,
    pub forgotten: u64,
    pub rewritten: u64,
    pub bytes_freed: u64,
    pub last_error: Option<String>,
}

pub struct Retainer {
    tx: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub status: Arc<Mutex<RetentionStatus>>,
}

impl Retainer {
    /// Start the worker for `policy` (which must have a rule).
    /// Runs (forget, then gc) keep to `windows` in `zone` (a nudge
    /// outside them waits for the next opening).
    pub fn start(
        repo: Arc<Repository>,
        policy: KeepPolicy,
        windows: Windows,
        zone: Zone,
    ) -> Result<Retainer> {
        let (tx, rx) = bounded::<()>(1);
        let status = Arc::new(Mutex::new(RetentionStatus::default()));
        let st = status.clone();
        let thread = std::thread::Builder::new()
            .name("retention".into())
            .spawn(move || {
                for () in rx.iter() {
                    let stopping = |d| {
                        matches!(
                            rx.recv_timeout(d),
                            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
                        )
                    };
                    if !windows.wait_open(zone, stopping) {
                        break;
                    }
                    let r = apply(&repo, &policy);
                    let mut s = st.lock();
                    s.last_run = Some(time::rfc3339(time::now_ns()));
                    match r {
                        Ok((forgotten, rewritten, freed)) => {
                            s.forgotten += forgotten;
                            s.rewritten += rewritten;
                            s.bytes_freed += freed;
                            s.last_error = None;
                        }
                        Err(e) => {
                            tracing::error!("retention: {e}");
                            s.last_error = Some(e.to_string());
                        }
                    }
                }
            })
            .map_err(|e| Error::io("start retention", "", e))?;
        Ok(Retainer {
            tx: Some(tx),
            thread: Some(thread),
            status,
        })
    }

    /// A snapshot was committed: apply the policy soon (several nudges
    /// while a run is going make one more run).
    pub fn nudge(&self) {
        if let Some(tx) = &self.tx {
            match tx.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {}
            }
        }
    }

    /// Finish the run in progress (if any) and stop.
    pub fn stop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Retainer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Forget by `policy`, then gc if anything went. Returns (snapshots
/// forgotten, records rewritten, bytes freed).
pub fn apply(repo: &Repository, policy: &KeepPolicy) -> Result<(u64, u64, u64)> {
    let f = forget(repo, Target::Policy(policy), false)?;
    let gone = (f.plan.remove.len() + f.plan.remove_damaged.len()) as u64;
    if gone == 0 {
        return Ok((0, 0, 0));
    }
    let g = gc(repo, &GcOptions::default())?;
    tracing::info!(
        "retention: forgot {gone} snapshots, rewrote {}, gc freed {} bytes in {:.2} s",
        f.plan.changes.len(),
        g.bytes_freed,
        g.seconds
    );
    Ok((gone, f.plan.changes.len() as u64, g.bytes_freed))
}
