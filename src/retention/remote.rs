//! Retention on a remote (`rewindfs remote forget NAME --keep-...`, and
//! the daemon after each push when the remote has a policy).
//!
//! Chain-safe without rewriting anything on the remote: the keep rules
//! choose what goes, then every snapshot a kept one builds on (its
//! parents up to its full) stays too, whatever the rules said. Records
//! are deleted first (newest first), so the remote never lists a
//! snapshot whose data is gone.
//!
//! Packs are deleted in two phases, under the remote's lease: a run
//! lists the packs no remaining record references in a deletion
//! schedule (`deletions/<ns>.json`); a later run, at least `delay`
//! after, deletes those that are still unreferenced after listing every
//! record again, then the schedule. A pusher does not deduplicate
//! against a scheduled pack (it uploads a blob again rather than point
//! to it), and a pack a record references again is kept: a concurrent
//! or later upload cannot lose data, and a reader that listed the
//! snapshots before the forget has `delay` to finish.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::forget::by_policy;
use super::keep::{Decision, KeepPolicy};
use crate::error::{Error, Result};
use crate::remote::client::Client;
use crate::remote::config::RemoteSpec;
use crate::remote::layout::{self, Deletions};
use crate::remote::{lease, read};
use crate::snapshot::Kind;
use crate::util::time;

#[derive(Debug, Default, Serialize)]
pub struct RemoteForgetReport {
    /// Snapshots removed (or to be, with dry_run).
    pub removed: Vec<u64>,
    /// Snapshots the rules let go that stay because a kept one needs them.
    pub kept_for_chains: Vec<u64>,
    pub decisions: Vec<Decision>,
    /// Packs put on a deletion schedule by this run.
    pub scheduled_packs: u64,
    /// Packs deleted by this run (scheduled by an earlier one), and bytes.
    pub deleted_packs: u64,
    pub deleted_bytes: u64,
    /// Packs still waiting for their schedule's delay.
    pub waiting_packs: u64,
    pub dry_run: bool,
}

/// Apply `policy` (None: only collect packs) to the remote `spec`.
pub fn forget_and_gc(
    spec: &RemoteSpec,
    policy: Option<&KeepPolicy>,
    delay: Duration,
    dry_run: bool,
) -> Result<RemoteForgetReport> {
    let client = Client::connect(spec)?;
    let lease = if dry_run {
        None
    } else {
        Some(lease::acquire(&client, "forget and gc")?)
    };
    // Before anything is deleted: the lease is still ours (no writer
    // came in between).
    let still_ours = || lease.as_ref().map_or(Ok(()), |l| l.check());
    let rr = read::open(spec, &read::ReadOptions::default())?;
    let repo = &rr.repo;
    let all = repo.snapshots()?;
    let damaged = repo.damaged_records();
    if !damaged.is_empty() {
        return Err(Error::Corrupt(format!(
            "{}: snapshot records {:?} cannot be read; nothing is removed until they are fixed (what they reference is unknown)",
            spec.describe(),
            damaged.keys().collect::<Vec<_>>()
        )));
    }
    let mut report = RemoteForgetReport {
        dry_run,
        ..Default::default()
    };
    let mut remove: BTreeSet<u64> = BTreeSet::new();
    if let Some(p) = policy {
        if !all.is_empty() {
            let (r, decisions) = by_policy(&all, p, time::civil_local)?;
            remove = r;
            report.decisions = decisions;
        }
    }
    // Chain safety: everything a kept snapshot builds on stays.
    let by_id: HashMap<u64, &crate::snapshot::SnapshotRecord> =
        all.iter().map(|r| (r.id, r)).collect();
    let chosen: Vec<&crate::snapshot::SnapshotRecord> =
        all.iter().filter(|r| !remove.contains(&r.id)).collect();
    for r in chosen {
        let mut cur = r;
        while cur.kind != Kind::Full {
            let Some(p) = cur.parent.and_then(|p| by_id.get(&p)) else {
                break;
            };
            if remove.remove(&p.id) {
                report.kept_for_chains.push(p.id);
            }
            cur = *p;
        }
    }
    report.kept_for_chains.sort_unstable();
    report.removed = remove.iter().copied().collect();
    if dry_run {
        return Ok(report);
    }
    still_ours()?;
    for id in remove.iter().rev() {
        client.delete(&layout::record(*id))?;
    }
    // What the remaining records reference, and where it is.
    let kept: Vec<_> = all
        .iter()
        .filter(|r| !remove.contains(&r.id))
        .cloned()
        .collect();
    let mut referenced: HashSet<crate::store::ChunkId> = HashSet::new();
    let mut seen = HashSet::new();
    for r in &kept {
        repo.references(r, &mut seen, &mut referenced)?;
    }
    let mut pack_blobs: HashMap<u64, Vec<crate::store::ChunkId>> = HashMap::new();
    for (id, loc) in repo.index().chunks()? {
        pack_blobs.entry(loc.pack).or_default().push(id);
    }
    let unreferenced: BTreeSet<u64> = pack_blobs
        .iter()
        .filter(|(_, ids)| !ids.iter().any(|id| referenced.contains(id)))
        .map(|(p, _)| *p)
        .collect();
    // Phase two: schedules old enough.
    let now = time::now_ns();
    let mut scheduled: HashSet<u64> = HashSet::new();
    let sizes: HashMap<u64, u64> = client
        .list(layout::PACKS_DIR)?
        .into_iter()
        .filter_map(|(k, n)| layout::parse_pack(&k).map(|p| (p, n)))
        .collect();
    for (key, _) in client.list(layout::DELETIONS_DIR)? {
        let Some(b) = client.get(&key, 64 << 20)? else {
            continue;
        };
        let d: Deletions = serde_json::from_slice(&b)
            .map_err(|e| Error::Corrupt(format!("{}/{key}: {e}", client.name())))?;
        if now - d.scheduled_ns < delay.as_nanos() as i64 {
            report.waiting_packs += d.packs.len() as u64;
            scheduled.extend(d.packs);
            continue;
        }
        still_ours()?;
        for p in d.packs {
            if unreferenced.contains(&p) {
                // The blob list first: a pack without one is never read.
                client.delete(&layout::idx(p))?;
                client.delete(&layout::pack(p))?;
                report.deleted_packs += 1;
                report.deleted_bytes += sizes.get(&p).copied().unwrap_or(0);
                scheduled.insert(p);
            }
        }
        client.delete(&key)?;
    }
    // Phase one: schedule what is newly unreferenced.
    let new: Vec<u64> = unreferenced
        .iter()
        .filter(|p| !scheduled.contains(p))
        .copied()
        .collect();
    if !new.is_empty() {
        report.scheduled_packs = new.len() as u64;
        let d = Deletions {
            scheduled_ns: now,
            packs: new,
        };
        let b = serde_json::to_vec(&d).map_err(|e| Error::InvalidInput(e.to_string()))?;
        still_ours()?;
        client.put(&layout::deletions(now), Bytes::from(b), false)?;
    }
    Ok(report)
}
