//! `diff A B [PATH]`: what changed between two snapshots, from their
//! manifests alone.
//!
//! This command may run inside the daemon for a client: it writes only to
//! its `Out` (printing elsewhere is a build error).
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;

use super::common::{human_bytes, Out, RepoArg};
use rewindfs::repo::Repository;
use rewindfs::snapshot::diff::{diff, Change, Summary};
use rewindfs::snapshot::manifest::{display_path, normalize_user_path};
use rewindfs::snapshot::select::select;

#[derive(Args)]
pub struct DiffArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// The older snapshot: id, name, `latest`, or `@TIME`.
    a: String,
    /// The newer snapshot.
    b: String,
    /// Only this directory or file (any bytes).
    #[arg(default_value = "/")]
    path: std::ffi::OsString,
    /// One JSON object: the snapshots, every change and the counts.
    #[arg(long)]
    json: bool,
}

impl DiffArgs {
    pub fn repo(&self) -> &RepoArg {
        &self.repo
    }
}

fn blocks(n: u64, bytes: u64) -> String {
    format!(
        "{n} block{} ({}) changed",
        if n == 1 { "" } else { "s" },
        human_bytes(bytes)
    )
}

fn fields(f: &[&str]) -> String {
    f.join(", ")
}

/// One line per change: `+` added, `-` removed, `M` modified, `U`
/// metadata only, `T` type changed, `R` renamed.
fn line(c: &Change) -> String {
    match c {
        Change::Added { path, kind, size } => {
            let slash = if *kind == "dir" { "/" } else { "" };
            format!("+  {path}{slash}  ({})", human_bytes(*size))
        }
        Change::Removed { path, kind, size } => {
            let slash = if *kind == "dir" { "/" } else { "" };
            format!("-  {path}{slash}  ({})", human_bytes(*size))
        }
        Change::Modified {
            path,
            kind,
            old_size,
            new_size,
            changed_blocks,
            changed_bytes,
            metadata,
        } => {
            let mut s = if *kind == "file" {
                format!("M  {path}  ({}", blocks(*changed_blocks, *changed_bytes))
            } else {
                format!("M  {path}  ({kind} changed")
            };
            if old_size != new_size {
                s.push_str(&format!(
                    "; size {} -> {}",
                    human_bytes(*old_size),
                    human_bytes(*new_size)
                ));
            }
            if !metadata.is_empty() {
                s.push_str(&format!("; also {}", fields(metadata)));
            }
            s.push(')');
            s
        }
        Change::Metadata {
            path, fields: f, ..
        } => format!("U  {path}  ({})", fields(f)),
        Change::TypeChanged { path, from, to } => format!("T  {path}  ({from} -> {to})"),
        Change::Renamed {
            from,
            to,
            changed_blocks,
            changed_bytes,
            metadata,
            ..
        } => {
            let mut s = format!("R  {from} -> {to}");
            let mut what = Vec::new();
            if *changed_blocks > 0 {
                what.push(blocks(*changed_blocks, *changed_bytes));
            }
            if !metadata.is_empty() {
                what.push(fields(metadata));
            }
            if !what.is_empty() {
                s.push_str(&format!("  ({})", what.join("; ")));
            }
            s
        }
    }
}

pub fn run(repo: &Repository, a: DiffArgs, o: &mut Out) -> Result<i32> {
    let all = repo.snapshots()?;
    let now = rewindfs::util::time::now_ns();
    let ra = select(&all, &a.a, now)?.clone();
    let rb = select(&all, &a.b, now)?.clone();
    // Only what can differ is read (for snapshots stored as trees, the
    // directories whose objects differ), and only what differs is kept.
    let (ta, tb) = repo
        .changes_pair(&ra, &rb)
        .with_context(|| format!("reading snapshots {} and {}", ra.id, rb.id))?;
    let p = normalize_user_path(&a.path)?;
    let exists = |t: &rewindfs::snapshot::Tree, r| -> Result<bool> {
        Ok(t.get(&p).is_some() || repo.lookup(r, &p)?.is_some())
    };
    if !exists(&ta, &ra)? && !exists(&tb, &rb)? {
        anyhow::bail!(
            "{} exists in neither snapshot {} nor snapshot {}",
            display_path(&p),
            ra.id,
            rb.id
        );
    }
    let changes = diff(&ta, &tb, &p);
    let s = Summary::of(&changes);
    let out = &mut o.out;
    if a.json {
        let v = serde_json::json!({
            "from": {"id": ra.id, "name": ra.name, "time": ra.time},
            "to": {"id": rb.id, "name": rb.name, "time": rb.time},
            "path": display_path(&p),
            "changes": changes,
            "summary": s,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(0);
    }
    writeln!(
        out,
        "snapshot {} ({}) -> snapshot {} ({}){}",
        ra.id,
        ra.time,
        rb.id,
        rb.time,
        if p.is_empty() {
            String::new()
        } else {
            format!(", below {}", display_path(&p))
        }
    )?;
    for c in &changes {
        writeln!(out, "{}", line(c))?;
    }
    writeln!(
        out,
        "{} added ({}), {} removed ({}), {} modified, {} metadata only, {} type changed, {} renamed; {}",
        s.added,
        human_bytes(s.added_bytes),
        s.removed,
        human_bytes(s.removed_bytes),
        s.modified,
        s.metadata_only,
        s.type_changed,
        s.renamed,
        blocks(s.changed_blocks, s.changed_bytes)
    )?;
    Ok(0)
}
