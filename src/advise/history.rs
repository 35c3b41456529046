//! What the repository's own history says about the dataset: its size,
//! how much it changes per hour and per day (the journal's changed
//! blocks and the new bytes each snapshot stored), what manifests cost,
//! the restore chains it has now, and how fast restores run.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use super::restores;
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::snapshot::{Kind, SnapshotRecord};
use crate::util::calendar::Zone;

const HOUR_NS: f64 = 3600e9;

/// Measured inputs of the estimates.
#[derive(Clone, Debug, Serialize)]
pub struct History {
    /// The window asked for (days before now).
    pub days: f64,
    /// Snapshots whose changes were counted (those in the window with
    /// an earlier snapshot to compare with).
    pub snapshots: usize,
    /// Hours those snapshots' changes cover (from the snapshot before the
    /// first one to the last one).
    pub span_hours: f64,
    /// The latest snapshot: logical size and entries.
    pub dataset_bytes: u64,
    pub entries: u64,
    /// New bytes stored per hour (chunk data after deduplication and
    /// compression, manifests excluded).
    pub added_per_hour: f64,
    /// Changed bytes per hour (changed blocks x block size) as the
    /// incremental snapshots saw them: what a capture reads.
    pub changed_per_hour: f64,
    /// Stored size of a full manifest (the latest full's).
    pub full_manifest_bytes: f64,
    /// Stored manifest bytes of incremental snapshots per hour of change.
    pub incremental_manifest_per_hour: f64,
    /// Where that figure comes from: `incrementals`, `differentials`
    /// (their manifests per hour since their full) or `full manifest`
    /// (its size times the share of the dataset changed per hour).
    pub incremental_manifest_basis: String,
    /// Restore speed (bytes of files per second) and where it comes from.
    pub restore_bytes_per_second: f64,
    pub restore_source: String,
    /// The longest restore chain among the repository's snapshots now.
    pub longest_chain: usize,
    /// New bytes stored per local day (`YYYY-MM-DD`) and per local hour
    /// of the day (0-23), over the window.
    pub added_per_day: BTreeMap<String, u64>,
    pub added_by_hour_of_day: Vec<u64>,
    pub timezone: String,
    /// Chunk lifetimes over the window, to replay other schedules.
    #[serde(skip)]
    pub lifetimes: Option<super::replay::Lifetimes>,
}

/// Attribute `bytes` that changed between `from` and `to` to the local
/// days and hours of that interval, evenly (a snapshot's changes happened
/// at some time since the previous one, not at its own time).
fn spread(
    bytes: u64,
    from: i64,
    to: i64,
    zone: Zone,
    per_day: &mut BTreeMap<String, u64>,
    by_hour: &mut [u64],
) {
    let hour = HOUR_NS as i64;
    let len = to - from;
    // Intervals longer than a month go to their end (a gap in the history).
    if len <= 0 || len > 31 * 24 * hour {
        let local = zone.rfc3339(to);
        *per_day.entry(local[..10].to_string()).or_default() += bytes;
        by_hour[local[11..13].parse::<usize>().unwrap_or(0).min(23)] += bytes;
        return;
    }
    let mut t = from;
    let mut left = bytes;
    while t < to && left > 0 {
        let end = (t + hour).min(to);
        let share = if end == to {
            left
        } else {
            ((bytes as f64 * (end - t) as f64 / len as f64) as u64).min(left)
        };
        left -= share;
        let local = zone.rfc3339(t + (end - t) / 2);
        *per_day.entry(local[..10].to_string()).or_default() += share;
        by_hour[local[11..13].parse::<usize>().unwrap_or(0).min(23)] += share;
        t = end;
    }
}

/// Stored bytes of a snapshot's manifest (its parts, as indexed).
fn manifest_stored(repo: &Repository, rec: &SnapshotRecord) -> Result<u64> {
    let mut n = 0u64;
    for id in rec.manifest_ids()? {
        if let Some(loc) = repo.index().get_chunk(&id)? {
            n += u64::from(loc.stored_len);
        }
    }
    Ok(n)
}

impl History {
    /// Measure over the `days` before `now_ns`. `read_budget` bounds the
    /// bytes read to measure restore speed when no restore was recorded.
    pub fn measure(
        repo: &Repository,
        days: f64,
        now_ns: i64,
        zone: Zone,
        read_budget: u64,
    ) -> Result<History> {
        let mut all = repo.snapshots()?;
        all.sort_by_key(|r| (r.time_ns, r.id));
        let Some(latest) = all.last().cloned() else {
            return Err(Error::InvalidInput(
                "the repository has no snapshots yet: advise needs its history (a day of snapshots at least)"
                    .into(),
            ));
        };
        if all.len() < 2 {
            return Err(Error::InvalidInput(
                "the repository has one snapshot: advise needs a history of several (a day of a live mount's snapshots at least)"
                    .into(),
            ));
        }
        let from = now_ns.saturating_sub((days * 24.0 * HOUR_NS) as i64);
        // Each counted snapshot with the one before it (its interval).
        let counted: Vec<(&SnapshotRecord, &SnapshotRecord)> = all
            .windows(2)
            .filter(|w| w[1].time_ns > from && w[1].time_ns <= now_ns)
            .map(|w| (&w[0], &w[1]))
            .collect();
        let (Some(first), Some(last)) = (counted.first(), counted.last()) else {
            return Err(Error::InvalidInput(format!(
                "no snapshot in the last {days} days has an earlier one to compare with: advise needs a history of several snapshots (try a larger --days)"
            )));
        };
        let span_ns = (last.1.time_ns - first.0.time_ns).max(1) as f64;
        let span_hours = span_ns / HOUR_NS;
        if span_hours < 1.0 {
            return Err(Error::InvalidInput(format!(
                "the history covers only {:.0} minutes: advise needs at least an hour of snapshots (a day or a week shows daily patterns)",
                span_hours * 60.0
            )));
        }
        let block = f64::from(repo.config.block_size);

        let mut added = 0f64;
        let mut incr_changed = 0f64;
        let mut incr_hours = 0f64;
        let mut incr_manifests = 0f64;
        // Differentials: manifest bytes and hours since their full.
        let (mut diff_manifests, mut diff_hours) = (0f64, 0f64);
        let time_of: std::collections::HashMap<u64, i64> =
            all.iter().map(|r| (r.id, r.time_ns)).collect();
        let mut per_day: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_hour = vec![0u64; 24];
        for (prev, r) in &counted {
            let m = manifest_stored(repo, r)?;
            let data = r.stats.stored_bytes.saturating_sub(m);
            added += data as f64;
            spread(
                data,
                prev.time_ns,
                r.time_ns,
                zone,
                &mut per_day,
                &mut by_hour,
            );
            if r.kind == Kind::Differential {
                if let Some(t) = time_of.get(&r.full) {
                    diff_manifests += m as f64;
                    diff_hours += (r.time_ns - t).max(0) as f64 / HOUR_NS;
                }
            }
            if r.kind == Kind::Incremental && !r.synthetic {
                let h = (r.time_ns - prev.time_ns).max(0) as f64 / HOUR_NS;
                incr_changed += r.stats.changed_blocks as f64 * block;
                incr_hours += h;
                incr_manifests += m as f64;
            }
        }
        let added_per_hour = added / span_hours;
        let changed_per_hour = if incr_hours > 0.0 {
            incr_changed / incr_hours
        } else {
            // No incrementals: what was stored, at the compression the
            // first full shows.
            let first = &all[0];
            let ratio = if first.stats.stored_bytes > 0 && first.stats.logical_bytes > 0 {
                first.stats.logical_bytes as f64 / first.stats.stored_bytes as f64
            } else {
                1.0
            };
            added_per_hour * ratio
        };
        let full = all.iter().rev().find(|r| r.kind == Kind::Full);
        let full_manifest_bytes = match full {
            Some(f) => manifest_stored(repo, f)? as f64,
            None => 0.0,
        };
        let (incremental_manifest_per_hour, incremental_manifest_basis) = if incr_hours > 0.0 {
            (incr_manifests / incr_hours, "incrementals")
        } else if diff_hours > 0.0 {
            (diff_manifests / diff_hours, "differentials")
        } else {
            let share = if latest.stats.logical_bytes > 0 {
                (changed_per_hour / latest.stats.logical_bytes as f64).min(1.0)
            } else {
                1.0
            };
            (full_manifest_bytes * share, "full manifest")
        };
        let mut longest_chain = 0;
        for r in &all {
            longest_chain = longest_chain.max(repo.chain(r, &all).map(|c| c.len()).unwrap_or(0));
        }
        let (restore_bytes_per_second, restore_source) = restore_speed(repo, &latest, read_budget)?;
        let replayed: Vec<SnapshotRecord> = std::iter::once(first.0.clone())
            .chain(counted.iter().map(|(_, r)| (*r).clone()))
            .collect();
        let lifetimes = super::replay::Lifetimes::measure(repo, &replayed)?;
        Ok(History {
            days,
            snapshots: counted.len(),
            span_hours,
            dataset_bytes: latest.stats.logical_bytes,
            entries: latest.stats.files + latest.stats.dirs + latest.stats.symlinks,
            added_per_hour,
            changed_per_hour,
            full_manifest_bytes,
            incremental_manifest_per_hour,
            incremental_manifest_basis: incremental_manifest_basis.into(),
            restore_bytes_per_second,
            restore_source,
            longest_chain,
            added_per_day: per_day,
            added_by_hour_of_day: by_hour,
            timezone: zone.name().into(),
            lifetimes: Some(lifetimes),
        })
    }

    /// The `hours`-hour daily window with the fewest changes (local
    /// time): where fulls and differentials disturb least.
    pub fn quietest_window(&self, hours: usize) -> Option<(usize, u64)> {
        let v = &self.added_by_hour_of_day;
        if v.len() != 24 || hours == 0 || hours >= 24 || v.iter().all(|x| *x == 0) {
            return None;
        }
        (0..24)
            .map(|s| (s, (0..hours).map(|i| v[(s + i) % 24]).sum::<u64>()))
            .min_by_key(|(s, sum)| (*sum, *s))
    }
}

/// Block ids of `latest`, up to `budget` bytes of blocks: its directories
/// read one at a time, depth first, until the budget is met (a tree
/// stored in directory objects); an older format is resolved whole.
fn sample_blocks(
    repo: &Repository,
    latest: &SnapshotRecord,
    budget: u64,
) -> Result<Vec<crate::store::ChunkId>> {
    use crate::snapshot::dirs::{self, DNode};
    let block = u64::from(latest.block_size.max(1));
    let mut ids = Vec::new();
    let mut want = 0u64;
    match repo.load_stored(latest)? {
        crate::snapshot::Stored::Tree(root) => {
            let mut stack = vec![root.dir];
            while let Some(r) = stack.pop() {
                let d = dirs::load_dir(repo, &r, latest.block_size)?;
                for e in d.entries.into_iter().rev() {
                    match e.node {
                        DNode::Dir(sub) => stack.push(sub),
                        DNode::File {
                            size,
                            blocks,
                            segments,
                            lens,
                            ..
                        } => {
                            let all = dirs::file_blocks(
                                repo,
                                size,
                                blocks,
                                lens,
                                &segments,
                                latest.block_size,
                            )?;
                            for id in all.ids().iter().copied() {
                                if want >= budget {
                                    return Ok(ids);
                                }
                                ids.push(id);
                                want += block;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        crate::snapshot::Stored::Changes(_) => {
            let tree = repo.resolve(latest)?;
            'files: for (_, node) in tree.entries.values() {
                for id in crate::snapshot::Tree::blocks_of(node) {
                    if want >= budget {
                        break 'files;
                    }
                    ids.push(*id);
                    want += block;
                }
            }
        }
    }
    Ok(ids)
}

/// The restore speed: the median of the restores recorded in this
/// repository (whole files written), else measured now by reading and
/// checking up to `budget` bytes of the latest snapshot's blocks (no
/// writing: an optimistic figure, said so).
fn restore_speed(repo: &Repository, latest: &SnapshotRecord, budget: u64) -> Result<(f64, String)> {
    let mut speeds: Vec<f64> = restores::load(repo)
        .iter()
        .filter(|s| s.bytes >= restores::MIN_BYTES && s.seconds > 0.0)
        .map(|s| s.bytes as f64 / s.seconds)
        .collect();
    if !speeds.is_empty() {
        speeds.sort_by(|a, b| a.total_cmp(b));
        let n = speeds.len();
        let median = if n % 2 == 1 {
            speeds[n / 2]
        } else {
            (speeds[n / 2 - 1] + speeds[n / 2]) / 2.0
        };
        return Ok((
            median,
            format!("median of {n} restores recorded in this repository"),
        ));
    }
    let ids = sample_blocks(repo, latest, budget)?;
    let t0 = Instant::now();
    let mut bytes = 0u64;
    let mut spare = Vec::new();
    for id in &ids {
        let b = repo.read_blob_into(id, std::mem::take(&mut spare))?;
        bytes += b.len() as u64;
        spare = b;
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-6);
    if bytes == 0 {
        return Ok((
            0.0,
            "unknown: no restore recorded and the latest snapshot holds no data".into(),
        ));
    }
    Ok((
        bytes as f64 / secs,
        format!(
            "no restore recorded: measured now by reading and checking {:.0} MiB of the latest snapshot (files not written: optimistic)",
            bytes as f64 / (1 << 20) as f64
        ),
    ))
}
