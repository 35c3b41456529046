//! The keep rules, with restic's documented meaning:
//!
//! - `last N`: the N newest snapshots
//! - `hourly/daily/weekly/monthly/yearly N`: for the N newest hours (days,
//!   ISO weeks, months, years) that have snapshots, the newest snapshot of
//!   each; when fewer than N periods have snapshots, the oldest snapshot
//!   is kept too (restic 0.16 and later)
//! - `within D`: every snapshot taken within D of the newest snapshot (not
//!   of now: a repository that stopped receiving snapshots keeps them)
//! - `label GLOB`: every snapshot whose label matches
//!
//! A snapshot is kept if any rule keeps it; each kept snapshot carries
//! the reasons. Buckets are calendar periods in a time zone (the local one
//! for users; tests pass UTC).

use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::util::time::Civil;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    pub within: Option<Duration>,
    /// Globs over snapshot labels.
    pub labels: Vec<String>,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none()
            && self.labels.is_empty()
    }
}

/// What the rules look at of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: u64,
    pub time_ns: i64,
    pub label: Option<String>,
}

/// The verdict on one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: u64,
    pub keep: bool,
    /// Why it stays (empty when it goes).
    pub reasons: Vec<String>,
}

/// Apply `policy` to `snapshots` (any order), with `civil` giving the
/// calendar buckets of a time. Returns one decision per snapshot, newest
/// first. A policy without rules is refused: it would remove everything.
pub fn decide(
    policy: &KeepPolicy,
    snapshots: &[Candidate],
    civil: impl Fn(i64) -> Civil,
) -> Result<Vec<Decision>> {
    if policy.is_empty() {
        return Err(Error::InvalidInput(
            "no keep rule given: that would remove every snapshot (use --keep-last, --keep-daily, ..., or name the snapshots to forget)".into(),
        ));
    }
    let globs = policy
        .labels
        .iter()
        .map(|g| {
            globset::Glob::new(g)
                .map(|g| (g.glob().to_string(), g.compile_matcher()))
                .map_err(|e| Error::InvalidInput(format!("bad --keep-label glob {g:?}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut order: Vec<&Candidate> = snapshots.iter().collect();
    order.sort_by_key(|c| std::cmp::Reverse((c.time_ns, c.id)));
    let newest = order.first().map(|c| c.time_ns);

    type Bucket = fn(&Civil) -> (i64, u32, u32, u32);
    let rules: [(&str, u32, Bucket); 5] = [
        ("hourly", policy.hourly, |c| {
            (c.year, c.month, c.day, c.hour)
        }),
        ("daily", policy.daily, |c| (c.year, c.month, c.day, 0)),
        ("weekly", policy.weekly, |c| (c.iso_year, c.iso_week, 0, 0)),
        ("monthly", policy.monthly, |c| (c.year, c.month, 0, 0)),
        ("yearly", policy.yearly, |c| (c.year, 0, 0, 0)),
    ];
    let mut left: Vec<u32> = rules.iter().map(|r| r.1).collect();
    let mut last_bucket: Vec<Option<(i64, u32, u32, u32)>> = vec![None; rules.len()];
    let mut out = Vec::with_capacity(order.len());
    for (n, c) in order.iter().enumerate() {
        let mut reasons = Vec::new();
        if (n as u64) < u64::from(policy.last) {
            reasons.push("last snapshot".to_string());
        }
        let cv = civil(c.time_ns);
        for (i, (name, _, bucket)) in rules.iter().enumerate() {
            if left[i] == 0 {
                continue;
            }
            let b = bucket(&cv);
            if last_bucket[i] != Some(b) {
                last_bucket[i] = Some(b);
                left[i] -= 1;
                reasons.push(format!("{name} snapshot"));
            }
        }
        if let (Some(w), Some(newest)) = (policy.within, newest) {
            let w_ns = i64::try_from(w.as_nanos()).unwrap_or(i64::MAX);
            if c.time_ns >= newest.saturating_sub(w_ns) {
                reasons.push(format!(
                    "within {} of the newest",
                    humantime::format_duration(w)
                ));
            }
        }
        if let Some(l) = &c.label {
            for (g, m) in &globs {
                if m.is_match(l) {
                    reasons.push(format!("label matches {g}"));
                }
            }
        }
        out.push(Decision {
            id: c.id,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    // restic (0.16 and later): a calendar rule that found fewer periods
    // than it may keep also keeps the oldest snapshot.
    if let Some(oldest) = out.last_mut() {
        for (i, (name, count, _)) in rules.iter().enumerate() {
            let own = format!("{name} snapshot");
            if *count > 0 && left[i] > 0 && !oldest.reasons.contains(&own) {
                oldest.reasons.push(format!("oldest {name} snapshot"));
                oldest.keep = true;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::time::{civil_at, parse_rfc3339};

    fn at(s: &str) -> i64 {
        let (sec, nsec) = parse_rfc3339(s).unwrap();
        sec * 1_000_000_000 + i64::from(nsec)
    }

    fn snaps(times: &[&str]) -> Vec<Candidate> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate {
                id: i as u64 + 1,
                time_ns: at(t),
                label: None,
            })
            .collect()
    }

    fn kept(p: &KeepPolicy, s: &[Candidate]) -> Vec<u64> {
        let mut k: Vec<u64> = decide(p, s, |ns| civil_at(ns, 0))
            .unwrap()
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect();
        k.sort();
        k
    }

    /// Hand-computed cases (UTC): snapshot times → kept ids.
    #[test]
    fn the_rules_keep_what_restic_documents() {
        let s = snaps(&[
            "2026-11-01T10:00:00Z", // 1  Sun, ISO week 44
            "2026-11-02T09:00:00Z", // 2  Mon, week 45
            "2026-11-02T09:30:00Z", // 3  same hour as 2
            "2026-11-02T17:00:00Z", // 4
            "2026-11-03T08:00:00Z", // 5  Tue
            "2026-11-30T23:00:00Z", // 6  Mon, week 49
            "2026-12-01T00:10:00Z", // 7  Tue, December
            "2026-12-01T00:50:00Z", // 8  same hour as 7
            "2027-01-01T12:00:00Z", // 9  Fri, 2026-W53
        ]);
        let p = |f: fn(&mut KeepPolicy)| {
            let mut k = KeepPolicy::default();
            f(&mut k);
            k
        };
        let cases: Vec<(&str, KeepPolicy, Vec<u64>)> = vec![
            ("last 3", p(|k| k.last = 3), vec![7, 8, 9]),
            // Newest of each of the 4 newest hours that have snapshots.
            ("hourly 4", p(|k| k.hourly = 4), vec![5, 6, 8, 9]),
            (
                "hourly 100",
                p(|k| k.hourly = 100),
                vec![1, 3, 4, 5, 6, 8, 9],
            ),
            ("daily 3", p(|k| k.daily = 3), vec![6, 8, 9]),
            ("daily 6", p(|k| k.daily = 6), vec![1, 4, 5, 6, 8, 9]),
            // ISO weeks: 9 (2026-W53), 8 (W49: 6, 7, 8), 5 (W45: 2-5).
            ("weekly 3", p(|k| k.weekly = 3), vec![5, 8, 9]),
            ("monthly 2", p(|k| k.monthly = 2), vec![8, 9]),
            ("monthly 3", p(|k| k.monthly = 3), vec![6, 8, 9]),
            // Two years have snapshots, 5 may be kept: the oldest stays too.
            ("yearly 5", p(|k| k.yearly = 5), vec![1, 8, 9]),
            // Within 2 days of the newest (9): nothing else.
            (
                "within 2d",
                p(|k| k.within = Some(Duration::from_secs(2 * 86_400))),
                vec![9],
            ),
            // Within 32 days of the newest: 6 (2026-11-30T23:00 is 31.5 days earlier), 7, 8, 9.
            (
                "within 32d",
                p(|k| k.within = Some(Duration::from_secs(32 * 86_400))),
                vec![6, 7, 8, 9],
            ),
            // Rules combine: kept if any keeps it.
            (
                "last 1 + daily 2 + monthly 3",
                p(|k| {
                    k.last = 1;
                    k.daily = 2;
                    k.monthly = 3;
                }),
                vec![6, 8, 9],
            ),
            (
                "last 2 + weekly 2",
                p(|k| {
                    k.last = 2;
                    k.weekly = 2;
                }),
                vec![8, 9],
            ),
        ];
        for (name, policy, want) in cases {
            assert_eq!(kept(&policy, &s), want, "{name}");
        }
    }

    #[test]
    fn labels_protect_and_every_kept_snapshot_says_why() {
        let mut s = snaps(&[
            "2026-11-01T10:00:00Z",
            "2026-11-02T10:00:00Z",
            "2026-11-03T10:00:00Z",
        ]);
        s[0].label = Some("ckpt/epoch-1.safetensors".into());
        let p = KeepPolicy {
            last: 1,
            labels: vec!["*.safetensors".into()],
            ..Default::default()
        };
        let d = decide(&p, &s, |ns| civil_at(ns, 0)).unwrap();
        assert_eq!(d.iter().map(|d| d.id).collect::<Vec<_>>(), vec![3, 2, 1]);
        assert_eq!(d[0].reasons, vec!["last snapshot"]);
        assert!(!d[1].keep && d[1].reasons.is_empty());
        assert_eq!(d[2].reasons, vec!["label matches *.safetensors"]);
    }

    #[test]
    fn a_policy_without_rules_is_refused() {
        let s = snaps(&["2026-11-01T10:00:00Z"]);
        assert!(decide(&KeepPolicy::default(), &s, |ns| civil_at(ns, 0)).is_err());
        let bad = KeepPolicy {
            labels: vec!["[".into()],
            ..Default::default()
        };
        assert!(decide(&bad, &s, |ns| civil_at(ns, 0)).is_err());
    }

    #[test]
    fn buckets_follow_the_time_zone() {
        // 23:30 and 00:30 UTC fall on two days in UTC, but at +01:00
        // they are 00:30 and 01:30 of the same day.
        let s = snaps(&["2026-11-02T23:30:00Z", "2026-11-03T00:30:00Z"]);
        let daily = KeepPolicy {
            daily: 5,
            ..Default::default()
        };
        let why = |offset: i64| -> Vec<(u64, Vec<String>)> {
            decide(&daily, &s, |ns| civil_at(ns, offset))
                .unwrap()
                .into_iter()
                .map(|d| (d.id, d.reasons))
                .collect()
        };
        let day = || vec!["daily snapshot".to_string()];
        // UTC: two days, one snapshot each.
        assert_eq!(why(0), vec![(2, day()), (1, day())]);
        // +01:00: one day, whose newest is 2; 1 stays only as the oldest
        // (fewer days than the 5 the rule may keep).
        assert_eq!(
            why(3600),
            vec![(2, day()), (1, vec!["oldest daily snapshot".to_string()])]
        );
    }

    /// restic's example (forum "Help with forget policy"): four snapshots
    /// of one month and `--keep-monthly 4` keep the newest and the oldest.
    #[test]
    fn a_rule_with_periods_to_spare_keeps_the_oldest_too() {
        let s = snaps(&[
            "2024-01-02T13:42:44Z",
            "2024-01-03T01:04:38Z",
            "2024-01-04T20:09:54Z",
            "2024-01-04T20:20:32Z",
        ]);
        let monthly = KeepPolicy {
            monthly: 4,
            ..Default::default()
        };
        assert_eq!(kept(&monthly, &s), vec![1, 4]);
        // With no period to spare, only the newest of each.
        let one = KeepPolicy {
            monthly: 1,
            ..Default::default()
        };
        assert_eq!(kept(&one, &s), vec![4]);
    }
}
