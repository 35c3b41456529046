//! `forget` and `gc`: removing snapshots and giving their space back.
//!
//! These commands may run inside the daemon for a client: they write only
//! to their `Out` (printing elsewhere is a build error).
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::{bail, Result};
use clap::Args;

use super::common::{human_bytes, Out, RepoArg};
use rewindfs::repo::config::PolicyConfig;
use rewindfs::repo::Repository;
use rewindfs::retention::forget::{forget, ForgetReport, Target};
use rewindfs::retention::gc::{gc, GcOptions};
use rewindfs::retention::keep::KeepPolicy;
use rewindfs::snapshot::select::select;
use rewindfs::util::time;

/// restic's keep rules. A snapshot is kept if any rule keeps it; hours,
/// days, weeks (ISO, Monday first), months and years are those of the
/// local time zone; empty periods cost nothing, and a rule that finds
/// fewer periods than it may keep also keeps the oldest snapshot (as
/// restic 0.16+). The newest snapshot is always kept (the next one is
/// built on it).
#[derive(Args, Clone, Debug, Default)]
pub struct KeepArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N newest hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// ... of each of the N newest days that have one.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// ... of each of the N newest ISO weeks that have one.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// ... of each of the N newest months that have one.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// ... of each of the N newest years that have one.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot taken within DUR (e.g. 36h, 7d) of the newest
    /// one (not of now: a repository that stopped getting snapshots
    /// keeps them).
    #[arg(long, value_name = "DUR")]
    pub keep_within: Option<String>,
    /// Keep snapshots whose label matches GLOB (e.g. 'epoch-*'; labelled
    /// checkpoints). Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub keep_label: Vec<String>,
}

impl KeepArgs {
    /// The rules as the repository config spells them.
    pub fn to_config(&self, into: &mut PolicyConfig) {
        into.keep_last = self.keep_last;
        into.keep_hourly = self.keep_hourly;
        into.keep_daily = self.keep_daily;
        into.keep_weekly = self.keep_weekly;
        into.keep_monthly = self.keep_monthly;
        into.keep_yearly = self.keep_yearly;
        into.keep_within = self.keep_within.clone();
        into.keep_label = self.keep_label.clone();
    }

    pub fn policy(&self) -> Result<KeepPolicy> {
        let mut c = PolicyConfig::default();
        self.to_config(&mut c);
        Ok(rewindfs::flusher::Policy::layered(&[&c])?.keep)
    }
}

#[derive(Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Snapshots to forget (id, name, or @TIME); or give --keep-* rules.
    #[arg(value_name = "SNAP")]
    snaps: Vec<String>,
    #[command(flatten)]
    keep: KeepArgs,
    /// Show what would be forgotten and why each kept snapshot stays;
    /// change nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Reclaim the space right after (as `rewindfs gc`).
    #[arg(long)]
    prune: bool,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

impl ForgetArgs {
    pub fn repo(&self) -> &RepoArg {
        &self.repo
    }
}

pub fn forget_cmd(repo: &Repository, a: ForgetArgs, o: &mut Out) -> Result<i32> {
    let policy = a.keep.policy()?;
    let target = match (a.snaps.is_empty(), policy.is_empty()) {
        (true, true) => bail!(
            "say what to forget: snapshot ids or names, or keep rules (--keep-last, --keep-daily, ...)"
        ),
        (false, false) => bail!("give either snapshots or keep rules, not both"),
        (true, false) => Target::Policy(&policy),
        (false, true) => {
            let all = repo.snapshots()?;
            let damaged = repo.damaged_records();
            let mut ids = BTreeSet::new();
            for s in &a.snaps {
                match s.parse::<u64>() {
                    Ok(id) if damaged.contains_key(&id) => {
                        ids.insert(id);
                    }
                    _ => {
                        ids.insert(select(&all, s, time::now_ns())?.id);
                    }
                }
            }
            Target::Ids(ids)
        }
    };
    let report = forget(repo, target, a.dry_run)?;
    let gc_report = if a.prune && !a.dry_run && !report.plan.remove.is_empty() {
        Some(gc(repo, &GcOptions::default())?)
    } else {
        None
    };
    if a.json {
        let v = serde_json::json!({ "forget": report, "gc": gc_report });
        writeln!(o.out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(0);
    }
    print_forget(repo, &report, a.prune, o)?;
    if let Some(g) = gc_report {
        writeln!(
            o.out,
            "gc: freed {} ({} packs removed, {} repacked)",
            human_bytes(g.bytes_freed),
            g.packs_deleted,
            g.packs_repacked
        )?;
    }
    Ok(0)
}

fn print_forget(repo: &Repository, r: &ForgetReport, pruning: bool, o: &mut Out) -> Result<()> {
    let all = repo.snapshots()?;
    let name = |id: u64| {
        all.iter()
            .find(|s| s.id == id)
            .map(|s| s.name.clone())
            .or_else(|| {
                r.removed
                    .iter()
                    .find(|(i, _)| *i == id)
                    .map(|(_, n)| n.clone())
            })
            .unwrap_or_default()
    };
    let (would, will) = if r.dry_run {
        ("would ", "would be ")
    } else {
        ("", "")
    };
    let out = &mut o.out;
    for d in &r.decisions {
        if d.keep {
            writeln!(
                out,
                "keep   {:>5}  {}  ({})",
                d.id,
                name(d.id),
                d.reasons.join(", ")
            )?;
        } else {
            writeln!(out, "forget {:>5}  {}", d.id, name(d.id))?;
        }
    }
    if r.decisions.is_empty() {
        for id in &r.plan.remove {
            writeln!(out, "forget {id:>5}  {}", name(*id))?;
        }
    }
    for id in &r.plan.remove_damaged {
        writeln!(out, "forget {id:>5}  (damaged record)")?;
    }
    for c in &r.plan.changes {
        let what = match (c.was, c.kind, c.new_manifest) {
            (w, k, true) if w != k => format!(
                "{} -> {}{}",
                w.as_str(),
                k.as_str(),
                if k == rewindfs::snapshot::Kind::Full {
                    " (synthetic, from manifests)"
                } else {
                    ""
                }
            ),
            (_, k, true) => format!(
                "{} re-based on {} (changes folded in)",
                k.as_str(),
                c.parent.map(|p| p.to_string()).unwrap_or_default()
            ),
            (_, _, false) => format!("now in the chain of full {}", c.full),
        };
        writeln!(out, "{will}rewritten {:>5}  {}: {what}", c.id, c.name)?;
    }
    let n = r.plan.remove.len() + r.plan.remove_damaged.len();
    let hint = if pruning && !r.dry_run {
        ""
    } else {
        "; run `rewindfs gc` to reclaim the space"
    };
    writeln!(
        out,
        "{would}forget {n} snapshot(s), {would}rewrite {}{hint}",
        r.plan.changes.len()
    )?;
    Ok(())
}

#[derive(Args)]
pub struct GcArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Repack packs whose live share is under PERCENT (0 removes only
    /// packs with nothing live; 100 repacks every pack holding garbage).
    #[arg(long, value_name = "PERCENT", default_value_t = 50.0)]
    repack_below: f64,
    /// Say what would be freed; change nothing (a dry run marks
    /// everything).
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Mark every snapshot's references. Without it, gc looks only at
    /// what the forgets since the last gc released, when that is known
    /// (it is not after a crash, a failed capture, an index rebuild or a
    /// rewritten record: gc then marks everything by itself). A full gc
    /// also reclaims what nothing else tracks, such as the chunks of a
    /// capture killed half-way before the repository was next opened.
    #[arg(long)]
    full: bool,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

impl GcArgs {
    pub fn repo(&self) -> &RepoArg {
        &self.repo
    }
}

pub fn gc_cmd(repo: &Repository, a: GcArgs, o: &mut Out) -> Result<i32> {
    if !(0.0..=100.0).contains(&a.repack_below) {
        bail!("--repack-below must be a percentage from 0 to 100");
    }
    let r = gc(
        repo,
        &GcOptions {
            repack_below: a.repack_below / 100.0,
            dry_run: a.dry_run,
            full: a.full,
        },
    )?;
    if a.json {
        writeln!(o.out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(0);
    }
    let would = if r.dry_run { "would " } else { "" };
    if r.mode == "incremental" {
        writeln!(
            o.out,
            "incremental: of {} objects the forgets since the last gc released, {} are still referenced by the {} snapshots; {would}delete {} (`gc --full` marks everything)",
            r.candidates, r.referenced_chunks, r.snapshots, r.deleted_chunks
        )?;
    } else {
        writeln!(
            o.out,
            "{} snapshots reference {} chunks; {would}delete {} unreferenced chunks",
            r.snapshots, r.referenced_chunks, r.deleted_chunks
        )?;
    }
    writeln!(
        o.out,
        "packs: {} before, {would}remove {}, {would}repack {} ({} copied into {} new)",
        r.packs_before,
        r.packs_deleted,
        r.packs_repacked,
        human_bytes(r.bytes_copied),
        r.packs_written
    )?;
    if r.packs_skipped > 0 {
        writeln!(
            o.out,
            "{} packs hold damaged blobs and were left as they are (run `rewindfs verify --read-data`)",
            r.packs_skipped
        )?;
    }
    writeln!(
        o.out,
        "{would}free {}: {} -> {} in {:.2} s",
        human_bytes(r.bytes_freed),
        human_bytes(r.bytes_before),
        human_bytes(r.bytes_after),
        r.seconds
    )?;
    Ok(if r.packs_skipped > 0 { 1 } else { 0 })
}
