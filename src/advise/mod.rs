//! `rewindfs advise`: which schedule suits this dataset, from the
//! repository's own history.
//!
//! - `history.rs`: what the history measures (size, change per hour and
//!   per day, manifest costs, restore speed)
//! - `restores.rs`: restore speeds recorded by real restores
//!
//! The model (docs/operations.md, "Choosing a schedule"), per week of
//! W = 168 hours, for a candidate with fulls every F hours (real or
//! synthetic), differentials every D hours and incrementals every I
//! hours (each optional but the full):
//!
//! - snapshots: fulls W/F; differentials W/D - W/F (a full stands in for
//!   the differential due with it); incrementals W/I minus the others.
//! - stored: chunk data plus manifests. Chunks are deduplicated, so the
//!   chunk data depends only on how often the schedule captures (P, its
//!   shortest interval): `replay.rs` replays the window's snapshots and
//!   counts the chunks a capture every P hours would have seen (a block
//!   rewritten three times between two captures is stored once), scaled
//!   to a week. When the history is shorter than P: a x W (a: new bytes
//!   per hour, measured), an upper bound. Manifests: each full one the
//!   size of the latest full's, each incremental m x I (m: incremental
//!   manifest bytes per hour of change, measured), a differential k hours
//!   after its full min(full, m x k).
//! - read from the dataset: the new blocks the captures see (replayed
//!   the same way; else c x W, c: changed bytes per hour) plus the whole
//!   dataset for each real full (a synthetic one reads only changes).
//! - worst restore chain: 1 + (1 with differentials) + (incrementals
//!   between two bigger snapshots); worst restore time: the dataset's
//!   bytes plus that chain's manifests at the measured restore speed
//!   (a restore reads each block once whatever the chain: the chain
//!   costs manifest reading, not data).
//! - recovery-point age: the shortest interval.

pub mod history;
pub mod replay;
pub mod restores;

use serde::Serialize;

pub use history::History;

pub const WEEK_HOURS: f64 = 168.0;

/// A schedule to compare.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    pub name: String,
    /// Hours between fulls.
    pub full_hours: f64,
    /// Fulls built from manifests (`--synthetic-fulls`).
    pub synthetic_fulls: bool,
    pub differential_hours: Option<f64>,
    pub incremental_hours: Option<f64>,
    /// The mount flags that set it up.
    pub flags: String,
}

/// The schedules `advise` compares.
pub fn candidates() -> Vec<Candidate> {
    let c =
        |name: &str, f: f64, syn: bool, d: Option<f64>, i: Option<f64>, flags: &str| Candidate {
            name: name.into(),
            full_hours: f,
            synthetic_fulls: syn,
            differential_hours: d,
            incremental_hours: i,
            flags: flags.into(),
        };
    let real = "--synthetic-fulls never";
    vec![
        c(
            "daily full",
            24.0,
            false,
            None,
            None,
            &format!("--full-at '0 2 * * *' --every off {real}"),
        ),
        c(
            "weekly full + daily differential",
            WEEK_HOURS,
            false,
            Some(24.0),
            None,
            &format!("--full-at '0 2 * * SUN' --differential-at '0 2 * * *' --every off {real}"),
        ),
        c(
            "weekly full + hourly incremental",
            WEEK_HOURS,
            false,
            None,
            Some(1.0),
            &format!("--full-at '0 2 * * SUN' --every 1h {real}"),
        ),
        c(
            "weekly full + daily differential + hourly incremental",
            WEEK_HOURS,
            false,
            Some(24.0),
            Some(1.0),
            &format!("--full-at '0 2 * * SUN' --differential-at '0 2 * * *' --every 1h {real}"),
        ),
        c(
            "daily synthetic full + hourly incremental",
            24.0,
            true,
            None,
            Some(1.0),
            "--full-at '0 2 * * *' --every 1h --synthetic-fulls always",
        ),
        c(
            "daily synthetic full + 15-min incremental (the default)",
            24.0,
            true,
            None,
            Some(0.25),
            "--full-every 24h --every 15m --synthetic-fulls auto",
        ),
    ]
}

/// What a candidate would cost and give, per week.
#[derive(Clone, Debug, Serialize)]
pub struct Estimate {
    pub candidate: Candidate,
    pub fulls_per_week: f64,
    pub differentials_per_week: f64,
    pub incrementals_per_week: f64,
    pub data_bytes_per_week: f64,
    /// How the chunk data was estimated: `replayed`, `replayed, at
    /// least` (a schedule finer than the history) or `extrapolated` (the
    /// history is shorter than the schedule's interval: an upper bound).
    pub data_basis: String,
    pub manifest_bytes_per_week: f64,
    pub stored_bytes_per_week: f64,
    pub read_bytes_per_week: f64,
    pub worst_chain: u64,
    /// `None` when no restore speed could be measured.
    pub worst_restore_seconds: Option<f64>,
    pub recovery_point_seconds: f64,
    /// Meets the --rpo and --rto targets given.
    pub meets_targets: bool,
    /// The one that meets them at least stored bytes (ties: fewer read).
    pub recommended: bool,
}

/// Estimate `c` from `h` (see the module's model).
pub fn estimate(h: &History, c: &Candidate) -> Estimate {
    let w = WEEK_HOURS;
    let f = c.full_hours;
    let fulls = w / f;
    let diffs = c
        .differential_hours
        .map_or(0.0, |d| (w / d - fulls).max(0.0));
    let incrs = c
        .incremental_hours
        .map_or(0.0, |i| (w / i - fulls - diffs).max(0.0));
    let m_full = h.full_manifest_bytes;
    let m = h.incremental_manifest_per_hour;
    let diff_manifest = |k: f64| (m * k).min(m_full);
    // Differentials of one full cycle, k x D hours after the full.
    let diff_cycle: f64 = c.differential_hours.map_or(0.0, |d| {
        let per_cycle = (f / d).round() as u64;
        (1..per_cycle).map(|k| diff_manifest(k as f64 * d)).sum()
    });
    let manifests =
        fulls * m_full + (w / f) * diff_cycle + c.incremental_hours.map_or(0.0, |i| incrs * m * i);
    let finest = [Some(f), c.differential_hours, c.incremental_hours]
        .into_iter()
        .flatten()
        .fold(f64::INFINITY, f64::min);
    let replayed = h.lifetimes.as_ref().and_then(|l| l.per_week(finest));
    let (data, changes_read, basis) = match replayed {
        Some(r) if r.finer_than_history => {
            (r.stored_per_week, r.read_per_week, "replayed, at least")
        }
        Some(r) => (r.stored_per_week, r.read_per_week, "replayed"),
        None => (h.added_per_hour * w, h.changed_per_hour * w, "extrapolated"),
    };
    let read = changes_read
        + if c.synthetic_fulls {
            0.0
        } else {
            fulls * h.dataset_bytes as f64
        };
    // The worst chain: a full, its last differential, and the
    // incrementals before the next bigger snapshot.
    let (chain, chain_manifests) = {
        let mut n = 1u64;
        let mut bytes = m_full;
        let mut span = f;
        if let Some(d) = c.differential_hours {
            if d < f {
                n += 1;
                bytes += diff_manifest(f - d);
                span = d;
            }
        }
        if let Some(i) = c.incremental_hours {
            let k = ((span / i).round() as u64).saturating_sub(1);
            n += k;
            bytes += k as f64 * m * i;
        }
        (n, bytes)
    };
    let speed = h.restore_bytes_per_second;
    let restore = (speed.is_finite() && speed > 0.0)
        .then(|| (h.dataset_bytes as f64 + chain_manifests) / speed);
    let rpo_hours = finest;
    Estimate {
        candidate: c.clone(),
        fulls_per_week: fulls,
        differentials_per_week: diffs,
        incrementals_per_week: incrs,
        data_bytes_per_week: data,
        data_basis: basis.into(),
        manifest_bytes_per_week: manifests,
        stored_bytes_per_week: data + manifests,
        read_bytes_per_week: read,
        worst_chain: chain,
        worst_restore_seconds: restore,
        recovery_point_seconds: rpo_hours * 3600.0,
        meets_targets: true,
        recommended: false,
    }
}

/// Compare costs, taking figures within [`TIE`] of each other as equal
/// (the model is not that precise: the next criterion decides).
fn close_cmp(a: f64, b: f64) -> std::cmp::Ordering {
    if (a - b).abs() <= TIE * a.abs().max(b.abs()) {
        std::cmp::Ordering::Equal
    } else {
        a.total_cmp(&b)
    }
}

/// Costs closer than this (relative) are a tie.
pub const TIE: f64 = 0.01;

/// Estimate every candidate, mark those meeting the targets (seconds),
/// and recommend the cheapest of them: least stored bytes per week, then
/// least read, then the shortest chain, then the fastest restore (costs
/// within 1% of each other count as equal).
pub fn advise(h: &History, rpo: Option<f64>, rto: Option<f64>) -> Vec<Estimate> {
    let mut v: Vec<Estimate> = candidates().iter().map(|c| estimate(h, c)).collect();
    for e in &mut v {
        e.meets_targets = rpo.is_none_or(|t| e.recovery_point_seconds <= t)
            && rto.is_none_or(|t| e.worst_restore_seconds.is_some_and(|s| s <= t));
    }
    let best = v
        .iter()
        .enumerate()
        .filter(|(_, e)| e.meets_targets)
        .min_by(|(_, a), (_, b)| {
            close_cmp(a.stored_bytes_per_week, b.stored_bytes_per_week)
                .then(close_cmp(a.read_bytes_per_week, b.read_bytes_per_week))
                .then(a.worst_chain.cmp(&b.worst_chain))
                .then(
                    a.worst_restore_seconds
                        .unwrap_or(f64::MAX)
                        .total_cmp(&b.worst_restore_seconds.unwrap_or(f64::MAX)),
                )
        })
        .map(|(i, _)| i);
    if let Some(i) = best {
        v[i].recommended = true;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> History {
        History {
            days: 14.0,
            snapshots: 100,
            span_hours: 100.0,
            dataset_bytes: 100 << 30,
            entries: 10_000,
            added_per_hour: (1u64 << 30) as f64,
            changed_per_hour: (2u64 << 30) as f64,
            full_manifest_bytes: 4e6,
            incremental_manifest_per_hour: 1e4,
            incremental_manifest_basis: "incrementals".into(),
            restore_bytes_per_second: 500e6,
            restore_source: "test".into(),
            longest_chain: 1,
            added_per_day: Default::default(),
            added_by_hour_of_day: vec![0; 24],
            timezone: "UTC".into(),
            lifetimes: None,
        }
    }

    #[test]
    fn the_model_by_hand() {
        let h = history();
        let all = advise(&h, None, None);
        let by = |n: &str| {
            all.iter()
                .find(|e| e.candidate.name.starts_with(n))
                .unwrap()
        };
        let gib = (1u64 << 30) as f64;
        // Daily full: 7 fulls reading 100 GiB each plus the changes.
        let d = by("daily full");
        assert_eq!(d.fulls_per_week, 7.0);
        assert_eq!(d.incrementals_per_week, 0.0);
        assert_eq!(d.stored_bytes_per_week, 168.0 * gib + 7.0 * 4e6);
        assert_eq!(d.read_bytes_per_week, 168.0 * 2.0 * gib + 700.0 * gib);
        assert_eq!((d.worst_chain, d.recovery_point_seconds), (1, 86400.0));
        // Weekly full + daily differential: six differentials, 1..6 days
        // after the full, manifests 24k x 1e4 each.
        let w = by("weekly full + daily differential");
        assert_eq!(w.differentials_per_week, 6.0);
        let diffs: f64 = (1..7).map(|k| 24.0 * k as f64 * 1e4).sum();
        assert_eq!(w.manifest_bytes_per_week, 4e6 + diffs);
        assert_eq!(w.worst_chain, 2);
        // Weekly full + hourly: 167 incrementals, chain 168, RPO 1 h.
        let i = by("weekly full + hourly");
        assert_eq!(i.incrementals_per_week, 167.0);
        assert_eq!(i.manifest_bytes_per_week, 4e6 + 167.0 * 1e4);
        assert_eq!(i.worst_chain, 168);
        assert_eq!(i.recovery_point_seconds, 3600.0);
        let restore = (100.0 * gib + 4e6 + 167.0 * 1e4) / 500e6;
        assert!((i.worst_restore_seconds.unwrap() - restore).abs() < 1e-9);
        // Full + differential + hourly: chain 1 + 1 + 23.
        assert_eq!(
            by("weekly full + daily differential + hourly").worst_chain,
            25
        );
        // Synthetic fulls read only the changes.
        let s = by("daily synthetic full + hourly");
        assert_eq!(s.read_bytes_per_week, 168.0 * 2.0 * gib);
        assert_eq!(s.worst_chain, 24);
        assert_eq!(by("daily synthetic full + 15-min").worst_chain, 96);
    }

    #[test]
    fn targets_choose_the_cheapest_that_meets_them() {
        let h = history();
        // No targets: the least stored, within 1% (here chunk data
        // dwarfs manifests: all tie), then the least read (synthetic
        // fulls), then the shortest chain (hourly rather than 15 min).
        let all = advise(&h, None, None);
        let rec: Vec<&Estimate> = all.iter().filter(|e| e.recommended).collect();
        assert_eq!(rec.len(), 1);
        let min = all
            .iter()
            .map(|e| e.stored_bytes_per_week)
            .fold(f64::INFINITY, f64::min);
        assert!(rec[0].stored_bytes_per_week <= min * (1.0 + TIE));
        assert_eq!(
            rec[0].candidate.name,
            "daily synthetic full + hourly incremental"
        );
        // When manifests matter (a million files), daily fulls cost.
        let big = History {
            full_manifest_bytes: 100e9,
            ..history()
        };
        let all = advise(&big, None, None);
        let rec = all.iter().find(|e| e.recommended).unwrap();
        assert_eq!(rec.fulls_per_week, 1.0, "{}", rec.candidate.name);
        // RPO 1 h: only schedules with hourly (or finer) snapshots.
        let all = advise(&h, Some(3600.0), None);
        let rec = all.iter().find(|e| e.recommended).unwrap();
        assert!(rec.recovery_point_seconds <= 3600.0);
        assert!(all
            .iter()
            .filter(|e| e.recovery_point_seconds > 3600.0)
            .all(|e| !e.meets_targets));
        // An RTO nobody meets: nothing recommended.
        let all = advise(&h, None, Some(1.0));
        assert!(all.iter().all(|e| !e.meets_targets && !e.recommended));
    }
}
