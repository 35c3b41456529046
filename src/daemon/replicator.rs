//! Background replication of a live mount's repository to its remotes
//! (`rewindfs remote add`): a push after every snapshot, and at start
//! for whatever an earlier run left behind. A failed push is retried
//! with backoff (30 s doubling to 10 min) and reported as an error
//! event (hooks, metrics); pushes resume where they stopped (see
//! remote::push). The remotes are re-read before each round, so one
//! added while the mount runs is picked up at the next snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::flusher::{Broadcast, Event};
use crate::remote::config::{self, RemoteConfig};
use crate::remote::push::Pusher;
use crate::repo::Repository;
use crate::util::time;

/// One remote in `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RemoteStatus {
    pub name: String,
    /// `s3://bucket/prefix/host`.
    pub location: String,
    /// A push is running.
    pub pushing: bool,
    /// When the last push ended, and its error if it failed.
    pub last_push: Option<String>,
    pub last_error: Option<String>,
    /// Snapshots not on the remote yet, and the stored bytes they added.
    pub pending_snapshots: u64,
    pub pending_bytes: u64,
    /// Cut time (Unix ns) of the oldest snapshot not on the remote.
    pub oldest_pending_ns: Option<i64>,
    pub newest_replicated: Option<u64>,
    /// Bytes this daemon uploaded.
    pub uploaded_bytes: u64,
}

pub type Replicas = Arc<Mutex<Vec<RemoteStatus>>>;

const FIRST_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(600);

/// Start the replicator thread; `rx` brings the flusher's events (it
/// ends when they are closed at unmount).
pub fn start(
    repo: Arc<Repository>,
    rx: Receiver<Event>,
    events: Arc<Broadcast>,
    out: Replicas,
) -> Result<()> {
    std::thread::Builder::new()
        .name("replicator".into())
        .spawn(move || {
            let mut pushers: HashMap<String, (RemoteConfig, Pusher)> = HashMap::new();
            let mut retry: Option<Duration> = None;
            loop {
                // A panic in a round (a bug) fails the round, not the
                // replication: the next snapshot tries again.
                let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    round(&repo, &mut pushers, &events, &out)
                }))
                .unwrap_or_else(|_| {
                    tracing::error!("replication round panicked; retrying later");
                    pushers.clear();
                    for s in out.lock().iter_mut() {
                        s.pushing = false;
                    }
                    true
                });
                retry = failed.then(|| retry.map_or(FIRST_RETRY, |r| (r * 2).min(MAX_RETRY)));
                // Wait for the next snapshot (or the retry time).
                let got = match retry {
                    Some(d) => rx.recv_timeout(d),
                    None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                };
                match got {
                    Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                // A burst of snapshots is one round.
                while rx.try_recv().is_ok() {}
            }
        })
        .map_err(|e| crate::error::Error::io("spawn", "replicator", e))?;
    Ok(())
}

/// Push to every remote; true if one failed.
fn round(
    repo: &Repository,
    pushers: &mut HashMap<String, (RemoteConfig, Pusher)>,
    events: &Broadcast,
    out: &Replicas,
) -> bool {
    let remotes = match config::list(repo.dir()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("replication: reading the remotes: {e}");
            return true;
        }
    };
    pushers.retain(|name, (c, _)| remotes.iter().any(|r| r.name == *name && r == c));
    out.lock()
        .retain(|s| remotes.iter().any(|r| r.name == s.name));
    let mut failed = false;
    for rc in remotes {
        set(out, &rc, |s| s.pushing = true);
        let r = match pushers.entry(rc.name.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => {
                Pusher::new(repo, &rc).map(|p| v.insert((rc.clone(), p)))
            }
        }
        .and_then(|(_, p)| {
            let sent = std::sync::atomic::AtomicU64::new(0);
            let r = p.push(repo, &|n| {
                sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            });
            let sent = sent.into_inner();
            set(out, &rc, |s| s.uploaded_bytes += sent);
            r.map(|rep| (rep, p.lag(repo)))
        });
        let now = time::rfc3339(time::now_ns());
        match r {
            Ok((rep, lag)) => {
                if rep.records > 0 {
                    tracing::info!(
                        "replicated {} snapshots ({} packs, {} bytes) to {} in {:.1} s",
                        rep.records,
                        rep.packs,
                        rep.bytes,
                        rc.name,
                        rep.seconds
                    );
                }
                let lag = lag.unwrap_or_default();
                if rep.records > 0 {
                    if let Err(e) = remote_retention(&rc) {
                        let msg = format!("retention on {} ({}): {e}", rc.name, rc.spec.describe());
                        tracing::warn!("{msg}");
                        events.publish(Event::Error {
                            time: now.clone(),
                            during: "retention".into(),
                            message: msg,
                        });
                    }
                }
                set(out, &rc, |s| {
                    s.last_error = None;
                    s.pending_snapshots = lag.records;
                    s.pending_bytes = lag.bytes;
                    s.oldest_pending_ns = lag.oldest_pending.map(|(_, t)| t);
                    s.newest_replicated = lag.newest_replicated;
                });
            }
            Err(e) => {
                failed = true;
                let msg = format!("replication to {} ({}): {e}", rc.name, rc.spec.describe());
                tracing::warn!("{msg}; retrying later");
                events.publish(Event::Error {
                    time: now.clone(),
                    during: "replicate".into(),
                    message: msg.clone(),
                });
                // The lag from the log, without the server.
                let lag = pushers.get(&rc.name).and_then(|(_, p)| p.lag(repo).ok());
                // The next round connects again (credentials may have been
                // renewed, a session token expired), keeping what the
                // pusher knows of the remote.
                if let Some((_, p)) = pushers.get_mut(&rc.name) {
                    if p.reconnect().is_err() {
                        pushers.remove(&rc.name);
                    }
                }
                set(out, &rc, |s| {
                    s.last_error = Some(msg);
                    if let Some(l) = &lag {
                        s.pending_snapshots = l.records;
                        s.pending_bytes = l.bytes;
                        s.oldest_pending_ns = l.oldest_pending.map(|(_, t)| t);
                        s.newest_replicated = l.newest_replicated;
                    }
                });
            }
        }
        set(out, &rc, |s| {
            s.pushing = false;
            s.last_push = Some(now.clone());
        });
    }
    failed
}

/// The remote's keep rules, if it has any (after a push that added
/// snapshots).
fn remote_retention(rc: &RemoteConfig) -> Result<()> {
    let Some(k) = &rc.keep else {
        return Ok(());
    };
    let policy = crate::flusher::Policy::layered(&[k])?.keep;
    if policy.is_empty() {
        return Ok(());
    }
    let r = crate::retention::remote::forget_and_gc(&rc.spec, Some(&policy), PACK_DELAY, false)?;
    if !r.removed.is_empty() || r.deleted_packs > 0 {
        tracing::info!(
            "retention on {}: removed snapshots {:?}, deleted {} packs ({} bytes)",
            rc.name,
            r.removed,
            r.deleted_packs,
            r.deleted_bytes
        );
    }
    Ok(())
}

/// How long an unreferenced pack stays on a remote before deletion.
const PACK_DELAY: Duration = Duration::from_secs(3600);

fn set(out: &Replicas, rc: &RemoteConfig, f: impl FnOnce(&mut RemoteStatus)) {
    let mut v = out.lock();
    let i = match v.iter().position(|s| s.name == rc.name) {
        Some(i) => i,
        None => {
            v.push(RemoteStatus {
                name: rc.name.clone(),
                location: rc.spec.describe(),
                ..Default::default()
            });
            v.len() - 1
        }
    };
    f(&mut v[i]);
}
