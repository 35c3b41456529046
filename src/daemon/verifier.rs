//! Rolling verification (`--verify-every DUR --verify-sample PERCENT`):
//! every DUR the daemon re-reads PERCENT of the repository's blobs and
//! checks them (stored checksum, decompression, blake3 of the content),
//! walking the index in id order from where it stopped, so that every
//! blob is checked within one rotation: ceil(100 / PERCENT) rounds.
//!
//! Invariants: where the rotation is (`REPO/verify-state.json`) is
//! written atomically after each round, so a restart goes on from there
//! and the bound holds across restarts; each blob is checked under the
//! repository's lifecycle lock, at the location the index gives then (gc
//! may have moved or removed it since the round listed it: a removed blob
//! is skipped, never reported as damage); damage is logged, counted and
//! published as an error event (hooks, metrics); nothing is repaired or
//! changed here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::metrics::VerifyCoverage;
use crate::error::{Error, Result};
use crate::flusher::{Broadcast, Event};
use crate::repo::layout::VERIFY_STATE;
use crate::repo::Repository;
use crate::store::ChunkId;
use crate::util::calendar::{Windows, Zone};
use crate::util::time;

/// What is kept between rounds (and restarts).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// The last blob id checked in the current rotation (hex).
    pub cursor: Option<String>,
    /// Blobs checked in the current rotation.
    pub checked_in_cycle: u64,
    /// When the last complete rotation ended (ns since the epoch).
    pub last_cycle_ns: Option<i64>,
    pub checked_total: u64,
    pub damaged_total: u64,
}

/// Settings of a rolling verification.
#[derive(Clone, Copy, Debug)]
pub struct Rolling {
    pub every: Duration,
    /// Percent of the blobs per round, in (0, 100].
    pub sample: f64,
}

impl Rolling {
    /// Rounds in one rotation (at most a million: a smaller sample is
    /// rounded up to that).
    pub fn rounds(&self) -> u64 {
        (100.0 / self.sample).ceil().clamp(1.0, 1e6) as u64
    }

    /// The time within which every blob present when a rotation starts is
    /// checked (one rotation, plus the round in progress); saturates.
    pub fn bound(&self) -> Duration {
        let n = u32::try_from(self.rounds() + 1).unwrap_or(u32::MAX);
        self.every.checked_mul(n).unwrap_or(Duration::MAX)
    }
}

fn load(repo: &Repository) -> State {
    match repo.dir().read(VERIFY_STATE, 1 << 20) {
        Ok(Some(b)) => serde_json::from_slice(&b).unwrap_or_default(),
        _ => State::default(),
    }
}

fn save(repo: &Repository, s: &State) -> Result<()> {
    let b = serde_json::to_vec(s).map_err(|e| Error::InvalidInput(e.to_string()))?;
    repo.dir().write_atomic(VERIFY_STATE, &b)
}

/// One round: check the next `sample` percent of the blobs after the
/// cursor (ending the rotation at the last id). Returns the damage found
/// and the number of blobs in the repository.
pub fn round(repo: &Repository, r: Rolling, state: &mut State) -> Result<(Vec<String>, u64)> {
    let total = repo.index().chunk_count() as u64;
    let want = ((total as f64 * r.sample.clamp(1e-4, 100.0) / 100.0).ceil() as usize).max(1);
    let after = state
        .cursor
        .as_deref()
        .and_then(|h| ChunkId::from_hex(h).ok());
    // Only this round's share is held in memory.
    let batch = repo.index().chunks_after(after.as_ref(), want)?;
    let mut damage = Vec::new();
    for (id, _) in &batch {
        let _lifecycle = repo.lifecycle_guard();
        // Where it is now (gc may have moved or removed it).
        let Some(loc) = repo.index().get_chunk(id)? else {
            continue;
        };
        if let Err(e) = repo.pack_reader().scrub(&loc, id) {
            damage.push(format!("blob {} in pack {}: {e}", id.to_hex(), loc.pack));
        }
        state.checked_in_cycle += 1;
        state.checked_total += 1;
    }
    state.damaged_total += damage.len() as u64;
    match batch.last() {
        Some((last, _)) if batch.len() == want => state.cursor = Some(last.to_hex()),
        // The end of the index: the rotation is complete.
        _ => {
            state.cursor = None;
            state.checked_in_cycle = 0;
            state.last_cycle_ns = Some(time::now_ns());
        }
    }
    Ok((damage, total))
}

/// The share of blobs checked recently: all of them when a rotation
/// completed within the bound, else the current rotation's share.
pub fn coverage(r: Rolling, s: &State, total: u64, now_ns: i64) -> f64 {
    let bound = i64::try_from(r.bound().as_nanos()).unwrap_or(i64::MAX);
    if s.last_cycle_ns
        .is_some_and(|t| now_ns.saturating_sub(t) <= bound)
    {
        return 1.0;
    }
    if total == 0 {
        return 1.0;
    }
    (s.checked_in_cycle as f64 / total as f64).min(1.0)
}

/// Run rounds every `r.every` on a thread for the daemon's life.
pub fn start(
    repo: Arc<Repository>,
    r: Rolling,
    out: Arc<Mutex<VerifyCoverage>>,
    events: Arc<Broadcast>,
    windows: Windows,
    zone: Zone,
) -> Result<()> {
    let mut state = load(&repo);
    let publish = move |state: &State, out: &Mutex<VerifyCoverage>, total: u64| {
        let mut c = out.lock();
        c.ratio = coverage(r, state, total, time::now_ns());
        c.chunks_checked_total = state.checked_total;
        c.damaged_total = state.damaged_total;
        c.last_cycle_ns = state.last_cycle_ns;
    };
    let mut total = repo.index().chunk_count() as u64;
    publish(&state, &out, total);
    std::thread::Builder::new()
        .name("verifier".into())
        .spawn(move || loop {
            std::thread::sleep(r.every);
            // Rounds keep to the backup windows (when set).
            windows.wait_open(zone, |d| {
                std::thread::sleep(d);
                false
            });
            let t0 = Instant::now();
            match round(&repo, r, &mut state) {
                Ok((damage, n)) => {
                    total = n;
                    for d in &damage {
                        tracing::error!("rolling verification: {d}");
                        events.publish(Event::Error {
                            time: time::rfc3339(time::now_ns()),
                            during: "verify".into(),
                            message: d.clone(),
                        });
                    }
                    tracing::debug!("rolling verification round in {:?}", t0.elapsed());
                }
                Err(e) => tracing::warn!("rolling verification round failed: {e}"),
            }
            if let Err(e) = save(&repo, &state) {
                tracing::warn!("rolling verification: saving its place: {e}");
            }
            publish(&state, &out, total);
        })
        .map_err(|e| Error::io("start thread", "verifier", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_bound_and_coverage() {
        let r = Rolling {
            every: Duration::from_secs(60),
            sample: 30.0,
        };
        assert_eq!(r.rounds(), 4);
        assert_eq!(r.bound(), Duration::from_secs(300));
        let mut s = State {
            checked_in_cycle: 25,
            ..Default::default()
        };
        assert_eq!(coverage(r, &s, 100, 0), 0.25);
        s.last_cycle_ns = Some(1_000);
        assert_eq!(coverage(r, &s, 100, 1_000 + 299 * 1_000_000_000), 1.0);
        assert_eq!(coverage(r, &s, 100, 1_000 + 301 * 1_000_000_000), 0.25);
        // Extreme settings saturate instead of overflowing.
        let tiny = Rolling {
            every: Duration::from_secs(u64::MAX / 2),
            sample: 1e-300,
        };
        assert_eq!(tiny.rounds(), 1_000_000);
        assert_eq!(tiny.bound(), Duration::MAX);
        let _ = coverage(tiny, &s, 100, i64::MAX);
    }
}
