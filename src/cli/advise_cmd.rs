//! `advise`: candidate schedules compared on this repository's history.
//!
//! This command may run inside the daemon for a client: it writes only to
//! its `Out` (printing elsewhere is a build error).
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use super::common::{human_bytes, Out, RepoArg};
use rewindfs::advise::{self, Estimate, History};
use rewindfs::repo::Repository;
use rewindfs::util::calendar::Zone;
use rewindfs::util::time;

#[derive(Args)]
pub struct AdviseArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// How many days of history to measure (the snapshots of the last N
    /// days, and the one before them).
    #[arg(long, value_name = "N", default_value_t = 14.0)]
    days: f64,
    /// Recovery-point target: the oldest the latest snapshot may be when
    /// something goes wrong (e.g. 1h). Schedules that snapshot less often
    /// are marked as not meeting it.
    #[arg(long, value_name = "DUR", value_parser = parse_target)]
    rpo: Option<Duration>,
    /// Recovery-time target: how long a whole restore may take (e.g.
    /// 30m), at the restore speed measured in this repository.
    #[arg(long, value_name = "DUR", value_parser = parse_target)]
    rto: Option<Duration>,
    /// The zone days and hours are shown in (default: TZ or the system's).
    #[arg(long, value_name = "ZONE")]
    timezone: Option<String>,
    /// When no restore was recorded, read (and check) at most this much
    /// of the latest snapshot to measure the restore speed.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = super::common::parse_size_u64)]
    measure: u64,
    /// One JSON object: the measured history, every candidate's
    /// estimates, and the recommendation.
    #[arg(long)]
    json: bool,
}

impl AdviseArgs {
    pub fn repo(&self) -> &RepoArg {
        &self.repo
    }
}

fn parse_target(s: &str) -> std::result::Result<Duration, String> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if d > Duration::ZERO => Ok(d),
        Ok(_) => Err("the target must be longer than zero".into()),
        Err(e) => Err(format!("{e} (use e.g. 1h, 30m, 1d)")),
    }
}

#[derive(Serialize)]
struct Report<'a> {
    history: &'a History,
    rpo_seconds: Option<f64>,
    rto_seconds: Option<f64>,
    candidates: &'a [Estimate],
    recommended: Option<&'a str>,
}

fn human_secs(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

pub fn run(repo: &Repository, a: AdviseArgs, o: &mut Out) -> Result<i32> {
    if !(a.days.is_finite() && a.days > 0.0 && a.days <= 3660.0) {
        anyhow::bail!("--days must be a number of days between 0 and 3660");
    }
    let zone = Zone::or_system(a.timezone.as_deref())?;
    let now = time::now_ns();
    let h = History::measure(repo, a.days, now, zone, a.measure)
        .context("measuring the repository's history")?;
    let rpo = a.rpo.map(|d| d.as_secs_f64());
    let rto = a.rto.map(|d| d.as_secs_f64());
    let est = advise::advise(&h, rpo, rto);
    let best = est.iter().find(|e| e.recommended);
    if a.json {
        let r = Report {
            history: &h,
            rpo_seconds: rpo,
            rto_seconds: rto,
            candidates: &est,
            recommended: best.map(|e| e.candidate.name.as_str()),
        };
        writeln!(o.out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(0);
    }
    let out = &mut *o.out;
    writeln!(
        out,
        "History: {} snapshots over {:.1} hours (last {} days; times in {})",
        h.snapshots, h.span_hours, h.days, h.timezone
    )?;
    writeln!(
        out,
        "  dataset      {} in {} entries",
        human_bytes(h.dataset_bytes),
        h.entries
    )?;
    writeln!(
        out,
        "  changes      {}/h stored as new chunks, {}/h of changed blocks read by captures",
        human_bytes(h.added_per_hour as u64),
        human_bytes(h.changed_per_hour as u64)
    )?;
    let busiest = h
        .added_by_hour_of_day
        .iter()
        .enumerate()
        .max_by_key(|(i, v)| (**v, std::cmp::Reverse(*i)))
        .filter(|(_, v)| **v > 0);
    if let Some((hour, v)) = busiest {
        write!(
            out,
            "  hours        busiest {hour:02}:00-{:02}:00 ({} stored)",
            (hour + 1) % 24,
            human_bytes(*v)
        )?;
        let typical = h.span_hours / h.snapshots.max(1) as f64;
        if typical >= 6.0 {
            write!(
                out,
                "; snapshots {typical:.0} hours apart are too far apart to show the day's pattern"
            )?;
        } else if let Some((start, sum)) = h.quietest_window(4) {
            write!(
                out,
                "; quietest 4 hours {start:02}:00-{:02}:00 ({}): a candidate for --window",
                (start + 4) % 24,
                human_bytes(sum)
            )?;
        }
        writeln!(out)?;
    }
    for (day, bytes) in &h.added_per_day {
        writeln!(out, "  {day}   {}", human_bytes(*bytes))?;
    }
    writeln!(
        out,
        "  manifests    full {}, incrementals {} per hour of change (from the {})",
        human_bytes(h.full_manifest_bytes as u64),
        human_bytes(h.incremental_manifest_per_hour as u64),
        h.incremental_manifest_basis
    )?;
    writeln!(
        out,
        "  restores     {}/s ({})",
        human_bytes(h.restore_bytes_per_second as u64),
        h.restore_source
    )?;
    writeln!(
        out,
        "  chains       longest now: {} snapshots",
        h.longest_chain
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "  {:<56} {:>11} {:>11} {:>6} {:>11} {:>7}",
        "SCHEDULE (per week)", "STORED", "READ", "CHAIN", "RESTORE", "RPO"
    )?;
    for e in &est {
        let mark = if e.recommended {
            "*"
        } else if e.meets_targets {
            " "
        } else {
            "x"
        };
        let basis = match e.data_basis.as_str() {
            "replayed" => "",
            "extrapolated" => "^",
            _ => "+",
        };
        writeln!(
            out,
            "{mark} {:<56} {:>11} {:>11} {:>6} {:>11} {:>7}",
            e.candidate.name,
            format!("{basis}{}", human_bytes(e.stored_bytes_per_week as u64)),
            human_bytes(e.read_bytes_per_week as u64),
            e.worst_chain,
            e.worst_restore_seconds.map_or("?".into(), human_secs),
            humantime::format_duration(Duration::from_secs(e.recovery_point_seconds as u64))
                .to_string()
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "*: recommended; x: misses a target.\nSTORED: new chunks a capture at the schedule's shortest interval would have stored, replayed from this history (chunks are deduplicated: a block rewritten several times between two captures is stored once; +: at least, the schedule is finer than the history; ^: extrapolated from the change rate, the history is shorter than the interval), plus manifests.\nREAD: what captures read from the dataset (real fulls read all of it). CHAIN, RESTORE: the worst case, at the measured restore speed. RPO: the oldest the latest snapshot can be."
    )?;
    let targets = match (a.rpo, a.rto) {
        (None, None) => "no --rpo or --rto given".to_string(),
        (p, t) => {
            let mut v = Vec::new();
            if let Some(p) = p {
                v.push(format!("RPO {}", humantime::format_duration(p)));
            }
            if let Some(t) = t {
                v.push(format!("RTO {}", humantime::format_duration(t)));
            }
            v.join(", ")
        }
    };
    match best {
        Some(e) => writeln!(
            out,
            "* recommended ({targets}; least stored): {}\n  rewindfs mount ... {}",
            e.candidate.name, e.candidate.flags
        )?,
        None => writeln!(
            out,
            "x no candidate meets {targets}: the restore time is bound by the dataset's size and the restore speed; a shorter RPO needs more frequent incrementals (--every)"
        )?,
    }
    Ok(0)
}
