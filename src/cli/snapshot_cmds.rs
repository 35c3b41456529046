//! `snapshot`, `snapshots`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use super::{human_bytes, RepoArg};
use rewindfs::snapshot::scan::{snapshot_dir, ScanOptions};
use rewindfs::snapshot::Kind;

#[derive(Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Directory to capture.
    #[arg(long, value_name = "DIR")]
    source: PathBuf,
    /// full: every file; incremental: changes since the previous snapshot;
    /// differential: changes since the last full. The first snapshot is always full.
    #[arg(long, default_value = "incremental", value_parser = ["full", "incremental", "differential"])]
    kind: String,
    /// A label to remember this snapshot by.
    #[arg(long, value_name = "TEXT")]
    label: Option<String>,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0, hide = true)]
    threads: usize,
}

pub fn snapshot(a: SnapshotArgs) -> Result<i32> {
    let repo = a.repo.open()?;
    let kind: Kind = a.kind.parse()?;
    if !a.source.is_dir() {
        anyhow::bail!("source {} is not a directory", a.source.display());
    }
    let r = snapshot_dir(
        &repo,
        &a.source,
        &ScanOptions {
            kind,
            label: a.label,
            threads: a.threads,
        },
    )
    .with_context(|| format!("taking a snapshot of {}", a.source.display()))?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    let rec = &r.record;
    if r.requested != rec.kind {
        eprintln!(
            "note: the first snapshot of a repository is full (asked for {})",
            r.requested.as_str()
        );
    }
    println!(
        "snapshot {} ({}, {}): {} files, {} logical, {} changed blocks, {} added",
        rec.id,
        rec.kind.as_str(),
        rec.name,
        rec.stats.files,
        human_bytes(rec.stats.logical_bytes),
        rec.stats.changed_blocks,
        human_bytes(rec.stats.stored_bytes)
    );
    Ok(0)
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
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
    source: &'a str,
}

pub fn list(a: ListArgs) -> Result<i32> {
    let repo = a.repo.open()?;
    let all = repo.snapshots()?;
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
                source: &r.source,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    if all.is_empty() {
        println!("no snapshots yet");
        return Ok(0);
    }
    println!(
        "{:>5}  {:<12}  {:>6}  {:<20}  {:>8}  {:>10}  {:>10}  LABEL",
        "ID", "KIND", "PARENT", "TIME", "FILES", "LOGICAL", "ADDED"
    );
    for r in &all {
        println!(
            "{:>5}  {:<12}  {:>6}  {:<20}  {:>8}  {:>10}  {:>10}  {}",
            r.id,
            r.kind.as_str(),
            r.parent.map_or("-".to_string(), |p| p.to_string()),
            r.time,
            r.stats.files,
            human_bytes(r.stats.logical_bytes),
            human_bytes(r.stats.stored_bytes),
            r.label.as_deref().unwrap_or("")
        );
    }
    Ok(0)
}
