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

use std::time::{Duration, Instant};

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
        token: t.iter().map(|b| format!("{b:02x}")).collect(),
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
        if client.put(KEY, Bytes::from(bytes), true)? == Put::Written {
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
            Some(h) if h.expires_ns < time::now_ns() || held_by_the_dead(&h) => {
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

impl Lease<'_> {
    /// Push the expiry out again when a third of the TTL has passed.
    pub fn refresh(&mut self) -> Result<()> {
        if self.refreshed.elapsed() < TTL / 3 {
            return Ok(());
        }
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
        if ours {
            if let Err(e) = self.client.delete(KEY) {
                tracing::warn!("{}: releasing the lease: {e}", self.client.name());
            }
        }
    }
}
