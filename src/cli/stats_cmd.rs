//! `stats [SNAP]`: where the space goes.
//!
//! This command may run inside the daemon for a client: it writes only to
//! its `Out` (printing elsewhere is a build error).
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;

use anyhow::Result;
use clap::Args;

use super::common::{human_bytes, Out, RepoArg};
use rewindfs::repo::Repository;
use rewindfs::retention::space::space;
use rewindfs::snapshot::select::select;
use rewindfs::util::time;

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Only this snapshot's line (id, name, `latest`, or `@TIME`); the
    /// repository totals are shown either way.
    snap: Option<String>,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

impl StatsArgs {
    pub fn repo(&self) -> &RepoArg {
        &self.repo
    }
}

pub fn run(repo: &Repository, a: StatsArgs, o: &mut Out) -> Result<i32> {
    let mut s = space(repo)?;
    if let Some(spec) = &a.snap {
        let all = repo.snapshots()?;
        let id = select(&all, spec, time::now_ns())?.id;
        s.snapshots.retain(|x| x.id == id);
    }
    let out = &mut o.out;
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:>5}  {:<12}  {:>5}  {:>8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}",
        "ID", "KIND", "CHAIN", "FILES", "LOGICAL", "STORED", "UNIQUE", "REWRITTEN", "SHARED"
    )?;
    for x in &s.snapshots {
        writeln!(
            out,
            "{:>5}  {:<12}  {:>5}  {:>8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}",
            x.id,
            x.kind,
            x.chain_len,
            x.files,
            human_bytes(x.logical_bytes),
            human_bytes(x.stored_bytes),
            human_bytes(x.unique_bytes),
            x.rewritten_bytes.map_or("-".into(), human_bytes),
            x.shared_bytes.map_or("-".into(), human_bytes)
        )?;
    }
    writeln!(
        out,
        "(REWRITTEN: files whose content changed since the snapshot before; SHARED: their bytes shared with those earlier versions)"
    )?;
    let kinds: Vec<String> = s
        .snapshots_by_kind
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    writeln!(
        out,
        "snapshots: {} ({}); longest chain {}",
        s.snapshots_by_kind.values().sum::<u64>(),
        kinds.join(", "),
        s.longest_chain
    )?;
    writeln!(
        out,
        "data: {} logical in all snapshots, {} once deduplicated, {} stored ({:.2}x deduplication, {:.2}x compression)",
        human_bytes(s.logical_bytes),
        human_bytes(s.raw_bytes),
        human_bytes(s.stored_bytes),
        s.dedup_ratio,
        s.compression_ratio
    )?;
    writeln!(
        out,
        "repository: {} chunks in {} packs ({} on disk); {} chunks ({}) referenced by no snapshot",
        s.chunks,
        s.packs,
        human_bytes(s.pack_bytes),
        s.unreferenced_chunks,
        human_bytes(s.unreferenced_bytes)
    )?;
    Ok(0)
}
