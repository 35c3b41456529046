//! `snapshot`, `snapshots`.
//!
//! These commands may run inside the daemon for a client: they write only
//! to their `Out` (printing elsewhere is a build error).
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use super::common::{human_bytes, Out, RepoArg};
use rewindfs::capture::scan::{snapshot_dir, ScanOptions};
use rewindfs::repo::Repository;
use rewindfs::snapshot::Kind;

#[derive(Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Directory to capture by scanning it. Without it, the running live
    /// mount of the repository takes the snapshot (from its change journal).
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// full: every file; incremental: changes since the previous snapshot;
    /// differential: changes since the last full. The first snapshot is always full.
    #[arg(long, default_value = "incremental", value_parser = ["full", "incremental", "differential"])]
    pub kind: String,
    /// A label to remember this snapshot by.
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0, hide = true)]
    threads: usize,
    /// With --source: record TIME (RFC 3339, e.g. 2026-11-23T10:00:00Z)
    /// as the snapshot's time instead of now (importing old data,
    /// simulations). The capture itself happens now.
    #[arg(long, value_name = "TIME", requires = "source")]
    time: Option<String>,
}

impl SnapshotArgs {
    pub fn repo(&self) -> &RepoArg {
        &self.repo
    }
}

/// Print one line about a committed snapshot.
pub fn describe(rec: &rewindfs::snapshot::SnapshotRecord) -> String {
    format!(
        "snapshot {} ({}, {}): {} files, {} logical, {} changed blocks, {} added",
        rec.id,
        rec.kind_label(),
        rec.name,
        rec.stats.files,
        human_bytes(rec.stats.logical_bytes),
        rec.stats.changed_blocks,
        human_bytes(rec.stats.stored_bytes)
    )
}

pub fn snapshot(repo: &Repository, a: SnapshotArgs, o: &mut Out) -> Result<i32> {
    let kind: Kind = a.kind.parse()?;
    let Some(source) = a.source else {
        anyhow::bail!("no --source given and no live mount holds this repository");
    };
    if !source.is_dir() {
        anyhow::bail!("source {} is not a directory", source.display());
    }
    let r = snapshot_dir(
        repo,
        &source,
        &ScanOptions {
            kind,
            label: a.label,
            threads: a.threads,
            recorded_time_ns: match &a.time {
                None => None,
                Some(t) => {
                    let (sec, nsec) = rewindfs::util::time::parse_rfc3339(t).map_err(|e| {
                        anyhow::anyhow!("bad --time {t:?}: {e} (use e.g. 2026-11-23T10:00:00Z)")
                    })?;
                    Some(
                        sec.checked_mul(1_000_000_000)
                            .and_then(|s| s.checked_add(i64::from(nsec)))
                            .ok_or_else(|| anyhow::anyhow!("--time {t:?} is out of range"))?,
                    )
                }
            },
        },
    )
    .with_context(|| format!("taking a snapshot of {}", source.display()))?;
    for w in &r.warnings {
        writeln!(o.err, "warning: {w}")?;
    }
    let rec = &r.record;
    if r.requested != rec.kind {
        writeln!(
            o.err,
            "note: took a full snapshot (asked for {}): the first snapshot of a repository, and the first after its block size changed, are full",
            r.requested.as_str()
        )?;
    }
    writeln!(o.out, "{}", describe(rec))?;
    Ok(0)
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    repo: RepoArg,
    #[command(flatten)]
    remote: super::remote_cmds::RemoteRead,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// With --remote: the snapshots of every host under the prefix.
    #[arg(long, requires = "remote", conflicts_with = "host")]
    pub all_hosts: bool,
}

#[derive(Serialize)]
struct JsonSnapshot<'a> {
    id: u64,
    kind: &'a str,
    parent: Option<u64>,
    time: &'a str,
    label: &'a Option<String>,
    name: &'a str,
    files: u64,
    logical_bytes: u64,
    stored_bytes: u64,
    changed_blocks: u64,
    /// Stored bytes only this snapshot references (what forgetting it
    /// alone frees once gc runs).
    unique_bytes: Option<u64>,
    /// Sizes of the files whose content changed, and their bytes shared
    /// with the same files' earlier versions (absent in older records).
    rewritten_bytes: Option<u64>,
    shared_bytes: Option<u64>,
    source: &'a str,
    /// A full snapshot `forget` built from manifests.
    synthetic: bool,
    /// What it was before `forget` rewrote it.
    rewritten: &'a Option<rewindfs::snapshot::model::Rewritten>,
}

impl ListArgs {
    pub fn repo(&self) -> &RepoArg {
        &self.repo
    }

    pub fn remote(&self) -> &super::remote_cmds::RemoteRead {
        &self.remote
    }
}

/// `snapshots --remote URL --all-hosts`: every host's list, one after
/// the other (JSON: `[{host, snapshots}]`).
pub fn list_all_hosts(a: ListArgs) -> Result<i32> {
    use std::io::Write;
    let Some(url) = &a.remote.remote else {
        anyhow::bail!("--all-hosts needs --remote");
    };
    let base = rewindfs::remote::config::RemoteSpec {
        url: rewindfs::remote::config::RemoteUrl::parse(url)?,
        endpoint: a.remote.endpoint.clone(),
        region: a.remote.region.clone(),
        host: String::new(),
    };
    let hosts = rewindfs::remote::read::hosts(&base)?;
    let mut json = Vec::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if hosts.is_empty() && !a.json {
        writeln!(out, "{} holds no rewindfs repository", base.url)?;
    }
    for h in hosts {
        let spec = rewindfs::remote::config::RemoteSpec {
            host: h.clone(),
            ..base.clone()
        };
        let rr = rewindfs::remote::read::open(&spec, &Default::default())?;
        let mut buf = Vec::new();
        let mut err = std::io::stderr();
        let mut o = Out {
            out: &mut buf,
            err: &mut err,
            terminal: false,
            caller_is_root: false,
        };
        let one = ListArgs {
            repo: a.repo.clone(),
            remote: a.remote.clone(),
            json: a.json,
            all_hosts: false,
        };
        list(&rr.repo, one, &mut o)?;
        if a.json {
            let v: serde_json::Value = serde_json::from_slice(&buf)?;
            json.push(serde_json::json!({"host": h, "remote": spec.describe(), "snapshots": v}));
        } else {
            writeln!(out, "== {h} ({})", spec.describe())?;
            out.write_all(&buf)?;
        }
    }
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
    }
    Ok(0)
}

/// What a snapshot's rewritten files share with their earlier versions:
/// `60.1 MiB/64.0 MiB` (shared of rewritten), `-` when unknown or none.
fn shared_column(s: &rewindfs::snapshot::Stats) -> String {
    match (s.shared_bytes, s.rewritten_bytes) {
        (Some(sh), Some(rw)) if rw > 0 => format!("{}/{}", human_bytes(sh), human_bytes(rw)),
        _ => "-".into(),
    }
}

pub fn list(repo: &Repository, a: ListArgs, o: &mut Out) -> Result<i32> {
    let all = repo.snapshots()?;
    // Unique sizes come from their cache when it matches this list, else
    // from a replay of the snapshots; a damaged one leaves the column
    // unknown rather than failing the list.
    let unique: std::collections::HashMap<u64, u64> =
        match rewindfs::retention::space::unique_bytes(repo) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("unique sizes unknown: {e}");
                Default::default()
            }
        };
    if a.json {
        let v: Vec<JsonSnapshot> = all
            .iter()
            .map(|r| JsonSnapshot {
                id: r.id,
                kind: r.kind.as_str(),
                parent: r.parent,
                time: &r.time,
                label: &r.label,
                name: &r.name,
                files: r.stats.files,
                logical_bytes: r.stats.logical_bytes,
                stored_bytes: r.stats.stored_bytes,
                changed_blocks: r.stats.changed_blocks,
                unique_bytes: unique.get(&r.id).copied(),
                rewritten_bytes: r.stats.rewritten_bytes,
                shared_bytes: r.stats.shared_bytes,
                source: &r.source,
                synthetic: r.kind_label().contains("synthetic"),
                rewritten: &r.rewritten,
            })
            .collect();
        writeln!(o.out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(0);
    }
    if all.is_empty() {
        writeln!(o.out, "no snapshots yet")?;
        return Ok(0);
    }
    writeln!(
        o.out,
        "{:>5}  {:<16}  {:>6}  {:<20}  {:>8}  {:>10}  {:>10}  {:>10}  {:>19}  LABEL",
        "ID", "KIND", "PARENT", "TIME", "FILES", "LOGICAL", "ADDED", "UNIQUE", "SHARED"
    )?;
    for r in &all {
        writeln!(
            o.out,
            "{:>5}  {:<16}  {:>6}  {:<20}  {:>8}  {:>10}  {:>10}  {:>10}  {:>19}  {}",
            r.id,
            r.kind_label(),
            r.parent.map_or("-".to_string(), |p| p.to_string()),
            r.time,
            r.stats.files,
            human_bytes(r.stats.logical_bytes),
            human_bytes(r.stats.stored_bytes),
            unique
                .get(&r.id)
                .map_or("?".to_string(), |u| human_bytes(*u)),
            shared_column(&r.stats),
            r.label.as_deref().unwrap_or("")
        )?;
    }
    if let Some(p) = repo.planned() {
        writeln!(o.out)?;
        super::common::write_planned(o.out, &p)?;
    }
    Ok(0)
}
