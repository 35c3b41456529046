//! One writer at a time on a remote repository: a lease object
//! (`lock.json`) created with a conditional PUT (If-None-Match: the
//! server decides between two creators). Pushes and remote retention
//! take it; readers do not need it (what they read is never deleted
//! before a delay, see retention::remote).
//!
//! A lease names its holder and expires after [`TTL`] unless refreshed.
//! An expired lease, or one taken on this host by a process that no
//! longer exists (kill -9), is removed and the creation tried again; a live one makes the caller wait up to [`WAIT`], then fail
//! with the holder's name. Expiry compares wall clocks across hosts:
//! the TTL is long (30 min) so that skew and a suspended holder do not
//! matter in practice.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::client::{Client, Put};
use super::config::local_host;
use crate::error::{Error, Result};
use crate::util::time;

pub const KEY: &str = "lock.json";
pub const TTL: Duration = Duration::from_secs(30 * 60);
const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Body {
    token: String,
    host: String,
    pid: u32,
    purpose: String,
    expires_ns: i64,
}

/// Tokens of the leases this process holds: a `lock.json` with this
/// host and pid whose token is not among them is one this process could
/// not release (the server was down) and may be taken back.
static HELD: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn held(token: &str) -> bool {
    HELD.lock().as_ref().is_some_and(|h| h.contains(token))
}

/// A held lease; released on drop.
pub struct Lease<'c> {
    client: &'c Client,
    body: Body,
    refreshed: Instant,
}

fn body(purpose: &str) -> Result<Body> {
    let mut t = [0u8; 16];
    crate::store::crypto::random(&mut t)?;
    Ok(Body {
        token: crate::util::bytes::to_hex(&t),
        host: local_host(),
        pid: std::process::id(),
        purpose: purpose.to_string(),
        expires_ns: time::now_ns() + TTL.as_nanos() as i64,
    })
}

/// Take the lease of the repository `client` points at.
pub fn acquire<'c>(client: &'c Client, purpose: &str) -> Result<Lease<'c>> {
    let t0 = Instant::now();
    loop {
        let b = body(purpose)?;
        let bytes = serde_json::to_vec(&b).map_err(|e| Error::InvalidInput(e.to_string()))?;
        // Held from before the PUT: another thread of this process that
        // sees the new lease must not take it for one left behind.
        HELD.lock()
            .get_or_insert_with(HashSet::new)
            .insert(b.token.clone());
        let created = client.put(KEY, Bytes::from(bytes), true);
        if !matches!(created, Ok(Put::Written)) {
            if let Some(h) = HELD.lock().as_mut() {
                h.remove(&b.token);
            }
        }
        if created? == Put::Written {
            return Ok(Lease {
                client,
                body: b,
                refreshed: Instant::now(),
            });
        }
        let held: Option<Body> = client
            .get(KEY, 64 << 10)?
            .and_then(|b| serde_json::from_slice(&b).ok());
        match held {
            // Gone meanwhile, or unreadable (not ours to trust): retry,
            // removing an unreadable one.
            None => {
                client.delete(KEY)?;
            }
            Some(h)
                if h.expires_ns < time::now_ns()
                    || held_by_the_dead(&h)
                    || ours_left_behind(&h) =>
            {
                tracing::warn!(
                    "{}: breaking the stale lease of {} pid {} ({})",
                    client.name(),
                    h.host,
                    h.pid,
                    h.purpose
                );
                client.delete(KEY)?;
            }
            Some(h) => {
                if t0.elapsed() > WAIT {
                    return Err(Error::Remote {
                        remote: client.name().to_string(),
                        op: "lock",
                        key: KEY.into(),
                        detail: format!(
                            "busy: {} by {} pid {} (until {}); try again later",
                            h.purpose,
                            h.host,
                            h.pid,
                            time::rfc3339(h.expires_ns)
                        ),
                    });
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Was the lease taken on this host by a process that is gone (killed,
/// or stopped without releasing it because the server was down)?
fn held_by_the_dead(h: &Body) -> bool {
    if h.host != local_host() || h.pid == 0 {
        return false;
    }
    let Some(pid) = rustix::process::Pid::from_raw(h.pid as i32) else {
        return false;
    };
    matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// A lease of this very process that it no longer holds (its release
/// failed, or a create whose answer was lost).
fn ours_left_behind(h: &Body) -> bool {
    h.host == local_host() && h.pid == std::process::id() && !held(&h.token)
}

impl Lease<'_> {
    /// Is `lock.json` still ours? (Another writer may have broken it
    /// after it expired.) A writer checks before anything that must not
    /// overlap with another writer (deleting packs, committing records).
    pub fn check(&self) -> Result<()> {
        let now: Option<Body> = self
            .client
            .get(KEY, 64 << 10)?
            .and_then(|b| serde_json::from_slice(&b).ok());
        match now {
            Some(b) if b.token == self.body.token => Ok(()),
            _ => Err(Error::Remote {
                remote: self.client.name().to_string(),
                op: "lock",
                key: KEY.into(),
                detail: "the lease was lost (it expired and another writer took it); stopped"
                    .into(),
            }),
        }
    }

    /// Push the expiry out again when a third of the TTL has passed,
    /// after checking the lease is still ours.
    pub fn refresh(&mut self) -> Result<()> {
        if self.refreshed.elapsed() < TTL / 3 {
            return Ok(());
        }
        self.check()?;
        self.body.expires_ns = time::now_ns() + TTL.as_nanos() as i64;
        let bytes =
            serde_json::to_vec(&self.body).map_err(|e| Error::InvalidInput(e.to_string()))?;
        self.client.put(KEY, Bytes::from(bytes), false)?;
        self.refreshed = Instant::now();
        Ok(())
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        // Only our own lease is removed.
        let ours = self
            .client
            .get(KEY, 64 << 10)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<Body>(&b).ok())
            .is_some_and(|b| b.token == self.body.token);
        let released = !ours || self.client.delete(KEY).is_ok();
        if !released {
            tracing::warn!("{}: the lease could not be released", self.client.name());
        }
        // Not held any more: if it is still there, this process may take
        // it back (ours_left_behind).
        if let Some(h) = HELD.lock().as_mut() {
            h.remove(&self.body.token);
        }
    }
}
