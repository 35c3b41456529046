//! Forgetting snapshots without breaking the chains that depend on them.
//!
//! Removing a snapshot other snapshots are built on rewrites those
//! snapshots' records, from manifests alone (no file data is read, no
//! block hashed again):
//! - an incremental whose parent goes is re-based on its nearest kept
//!   ancestor: its manifest becomes the changes since that one (the
//!   removed snapshots' changes fold into it);
//! - when a full goes, the oldest kept snapshot built on it becomes a
//!   **synthetic full** (its whole tree as a full manifest, referencing
//!   the chunks already stored); the differentials of the removed full
//!   become differentials of that one;
//! - every other kept snapshot of the chain keeps its manifest; only the
//!   `full` its record names may change.
//!
//! A rewritten snapshot keeps its id, name, time, label and source,
//! resolves to exactly the same tree, and its record says what it was
//! (`rewritten`: kind and parent as captured).
//!
//! Commit order, safe against kill -9 at any line: the new manifests are
//! stored and made durable first; then the rewritten records replace the
//! old ones, oldest first (each one atomically; a rewritten record only
//! names kept snapshots, which resolve to the same trees rewritten or
//! not); then the removed records are deleted, newest first, so no
//! remaining record ever names a missing one. A crash leaves every kept
//! snapshot restorable and, at worst, some snapshots that were to go
//! still present: running the same `forget` again finishes the job.
//!
//! The newest snapshot is never removed: the live mount's next snapshot
//! is built on it (its change journal holds only what changed since).

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use super::keep::{self, Candidate, Decision, KeepPolicy};
use crate::capture::manifest::build;
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::snapshot::model::Rewritten;
use crate::snapshot::{Kind, SnapshotRecord, Tree};
use crate::util::time::{self, Civil};

/// What happens to one kept snapshot whose chain loses a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub id: u64,
    pub name: String,
    pub was: Kind,
    pub was_parent: Option<u64>,
    pub kind: Kind,
    pub parent: Option<u64>,
    /// The chain's full snapshot after the change.
    pub full: u64,
    /// Whether a new manifest is built (false: only the record's `full`
    /// changes).
    pub new_manifest: bool,
}

/// What `forget` will do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Snapshots to remove, ascending.
    pub remove: Vec<u64>,
    /// Damaged records to remove (they cannot be read, so nothing can be
    /// built on them).
    pub remove_damaged: Vec<u64>,
    /// Kept snapshots whose records are rewritten, ascending.
    pub changes: Vec<Change>,
}

/// Decide how the kept snapshots of `all` are rewritten when `remove`
/// goes. Pure: reads nothing.
pub fn plan(all: &[SnapshotRecord], remove: &BTreeSet<u64>) -> Result<Plan> {
    let by_id: HashMap<u64, &SnapshotRecord> = all.iter().map(|r| (r.id, r)).collect();
    for id in remove {
        if !by_id.contains_key(id) {
            return Err(Error::UnknownSnapshot(id.to_string()));
        }
    }
    if let Some(newest) = all.iter().map(|r| r.id).max() {
        if remove.contains(&newest) {
            return Err(Error::InvalidInput(format!(
                "snapshot {newest} is the newest: the next snapshot is built on it, so it stays until a newer one exists"
            )));
        }
    }
    let mut sorted: Vec<&SnapshotRecord> = all.iter().collect();
    sorted.sort_by_key(|r| r.id);
    // New (kind, parent, full) of every kept snapshot seen so far.
    let mut form: HashMap<u64, (Kind, Option<u64>, u64)> = HashMap::new();
    // A removed full -> the synthetic full that replaces it.
    let mut replaced: HashMap<u64, u64> = HashMap::new();
    let mut out = Plan {
        remove: remove.iter().copied().collect(),
        ..Plan::default()
    };
    let broken = |r: &SnapshotRecord, p: u64| {
        Error::Corrupt(format!(
            "snapshot {} needs snapshot {p}, which is missing or damaged: forget cannot rewrite its chain (run `rewindfs verify`)",
            r.id
        ))
    };
    for r in sorted {
        if remove.contains(&r.id) {
            continue;
        }
        let (new, rebuild) = match (r.kind, r.parent) {
            (Kind::Full, _) => ((Kind::Full, None, r.id), false),
            (_, None) => return Err(broken(r, 0)),
            (Kind::Differential, Some(p)) => {
                if !by_id.contains_key(&p) {
                    return Err(broken(r, p));
                }
                if !remove.contains(&p) {
                    ((Kind::Differential, Some(p), p), false)
                } else if let Some(&nf) = replaced.get(&p) {
                    ((Kind::Differential, Some(nf), nf), true)
                } else {
                    replaced.insert(p, r.id);
                    ((Kind::Full, None, r.id), true)
                }
            }
            (Kind::Incremental, Some(p)) => {
                // The nearest kept ancestor along the captured chain.
                let mut a = Some(p);
                while let Some(x) = a {
                    if !remove.contains(&x) {
                        break;
                    }
                    a = by_id.get(&x).ok_or_else(|| broken(r, x))?.parent;
                }
                match a {
                    Some(x) => {
                        let full = form.get(&x).ok_or_else(|| broken(r, x))?.2;
                        ((Kind::Incremental, Some(x), full), x != p)
                    }
                    None => {
                        replaced.entry(r.full).or_insert(r.id);
                        ((Kind::Full, None, r.id), true)
                    }
                }
            }
        };
        form.insert(r.id, new);
        if rebuild || (r.kind, r.parent, r.full) != new {
            out.changes.push(Change {
                id: r.id,
                name: r.name.clone(),
                was: r.kind,
                was_parent: r.parent,
                kind: new.0,
                parent: new.1,
                full: new.2,
                new_manifest: rebuild,
            });
        }
    }
    Ok(out)
}

/// What `forget` did (or, dry, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ForgetReport {
    pub dry_run: bool,
    /// The policy's verdict on every snapshot, newest first (empty when
    /// snapshots were named).
    pub decisions: Vec<Decision>,
    pub plan: Plan,
    /// Names of the snapshots removed (or to be).
    pub removed: Vec<(u64, String)>,
    /// Bytes of the new manifests written.
    pub manifest_bytes: u64,
}

/// The snapshots a policy removes (the newest always stays).
pub fn by_policy(
    all: &[SnapshotRecord],
    policy: &KeepPolicy,
    civil: impl Fn(i64) -> Civil,
) -> Result<(BTreeSet<u64>, Vec<Decision>)> {
    let cands: Vec<Candidate> = all
        .iter()
        .map(|r| Candidate {
            id: r.id,
            time_ns: r.time_ns,
            label: r.label.clone(),
        })
        .collect();
    let mut decisions = keep::decide(policy, &cands, civil)?;
    let newest = all.iter().map(|r| r.id).max();
    for d in &mut decisions {
        if Some(d.id) == newest && !d.keep {
            d.keep = true;
            d.reasons
                .push("newest (the next snapshot is built on it)".into());
        }
    }
    let remove = decisions.iter().filter(|d| !d.keep).map(|d| d.id).collect();
    Ok((remove, decisions))
}

/// What to forget.
pub enum Target<'p> {
    Policy(&'p KeepPolicy),
    /// Snapshot ids (valid or damaged records).
    Ids(BTreeSet<u64>),
}

/// Forget snapshots of `repo` (see the module doc). With `dry_run`
/// nothing is written. Waits for a running capture to commit first.
pub fn forget(repo: &Repository, target: Target<'_>, dry_run: bool) -> Result<ForgetReport> {
    let _one = repo.lifecycle_guard();
    let _no_capture = repo.exclude_captures();
    if !dry_run {
        repo.sync_records()?;
    }
    let all = repo.snapshots()?;
    let damaged = repo.damaged_records();
    let (mut remove, decisions) = match target {
        Target::Policy(p) => by_policy(&all, p, time::civil_local)?,
        Target::Ids(ids) => (ids, Vec::new()),
    };
    let remove_damaged: Vec<u64> = remove
        .iter()
        .copied()
        .filter(|id| damaged.contains_key(id) && !all.iter().any(|r| r.id == *id))
        .collect();
    for id in &remove_damaged {
        remove.remove(id);
    }
    let mut plan = plan(&all, &remove)?;
    plan.remove_damaged = remove_damaged;
    let removed = plan
        .remove
        .iter()
        .map(|id| {
            let name = all.iter().find(|r| r.id == *id).map(|r| r.name.clone());
            (*id, name.unwrap_or_default())
        })
        .collect();
    let mut report = ForgetReport {
        dry_run,
        decisions,
        plan,
        removed,
        manifest_bytes: 0,
    };
    if dry_run || (report.plan.remove.is_empty() && report.plan.remove_damaged.is_empty()) {
        return Ok(report);
    }
    let by_id: HashMap<u64, &SnapshotRecord> = all.iter().map(|r| (r.id, r)).collect();
    // 1. New manifests, durable and indexed before any record names them.
    let mut trees = TreeCache::new(&all);
    let mut records = Vec::with_capacity(report.plan.changes.len());
    let writer = repo.writer()?;
    let built = (|| -> Result<()> {
        for ch in &report.plan.changes {
            let old = by_id[&ch.id];
            let mut rec = old.clone();
            rec.kind = ch.kind;
            rec.parent = ch.parent;
            rec.full = ch.full;
            rec.rewritten = Some(old.rewritten.clone().unwrap_or(Rewritten {
                at: time::rfc3339(time::now_ns()),
                was: old.kind,
                was_parent: old.parent,
            }));
            if ch.new_manifest {
                let parent = ch.parent.map(|p| by_id[&p]);
                if let crate::snapshot::Stored::Tree(root) = repo.load_stored(old)? {
                    // Stored as a whole tree already: the manifest stays;
                    // only the change counts are now against the new
                    // parent (from the directories that differ).
                    match parent {
                        Some(p) => {
                            // (Entries equal on both sides change no
                            // count: only what differs is held.)
                            let (b, t) = repo.changes_pair(p, old)?;
                            let (m, blocks) = build(&t, Some(&b));
                            #[cfg(debug_assertions)]
                            {
                                let (b2, t2) = repo.changed_pair(p, old)?;
                                let (m2, blocks2) = build(&t2, Some(&b2));
                                assert_eq!(
                                    (m.entries.len(), m.removed.len(), blocks),
                                    (m2.entries.len(), m2.removed.len(), blocks2),
                                    "the counts from the differing entries alone"
                                );
                            }
                            rec.stats.changed_blocks = blocks;
                            rec.stats.changed_entries = m.entries.len() as u64;
                            rec.stats.removed_entries = m.removed.len() as u64;
                        }
                        None => {
                            // A full now: everything, counted one
                            // directory at a time (not the tree in memory).
                            let mut blocks = 0u64;
                            crate::snapshot::dirs::walk_files(repo, &root, &mut |_, ids| {
                                blocks += ids.len() as u64
                            })?;
                            let entries = root.dir.entries + u64::from(root.meta.is_some());
                            #[cfg(debug_assertions)]
                            assert_eq!(
                                (entries, blocks),
                                crate::capture::manifest::counts_of_full(&*trees.get(repo, ch.id)?),
                                "a synthetic full's counts from its directories"
                            );
                            rec.stats.changed_blocks = blocks;
                            rec.stats.changed_entries = entries;
                            rec.stats.removed_entries = 0;
                        }
                    }
                } else {
                    // An older format: stored again as a tree of its own
                    // (format 3), so it no longer depends on the chain.
                    let tree = trees.get(repo, ch.id)?;
                    let base = match ch.parent {
                        Some(p) => Some(trees.get(repo, p)?),
                        None => None,
                    };
                    let (m, blocks) = build(&tree, base.as_deref());
                    let root = crate::snapshot::dirs::write_tree(&repo.tree_store(&writer), &tree)?;
                    let bytes = root.encode()?;
                    let parts = writer.store_manifest(&bytes)?;
                    report.manifest_bytes += bytes.len() as u64;
                    rec.manifest = parts;
                    rec.manifest_len = bytes.len() as u64;
                    rec.stats.changed_blocks = blocks;
                    rec.stats.changed_entries = m.entries.len() as u64;
                    rec.stats.removed_entries = m.removed.len() as u64;
                }
            }
            records.push(rec);
        }
        writer.close()
    })();
    if let Err(e) = built {
        writer.abort();
        return Err(e);
    }
    drop(writer);
    // 2. Rewritten records, oldest first.
    for rec in &records {
        repo.replace_record(rec)?;
    }
    repo.index().flush()?;
    // Every snapshot's reference delta exists before any goes (see
    // below).
    if let Err(e) = super::ledger::before_forget(repo) {
        tracing::warn!("the reference ledger before forget: {e}");
        repo.drop_gc_candidates("the reference ledger could not be prepared for forget");
    }
    // 3. Removed records, newest first.
    for id in report
        .plan
        .remove
        .iter()
        .chain(report.plan.remove_damaged.iter())
        .rev()
    {
        repo.remove_record(*id)?;
    }
    repo.index().flush()?;
    // What they referenced alone goes on gc's candidates (the ledger's
    // deltas merged now; the old manifest of a record stored again is
    // not tracked: the next gc marks everything).
    if records.iter().any(|r| {
        by_id
            .get(&r.id)
            .is_some_and(|old| old.manifest != r.manifest)
    }) {
        repo.drop_gc_candidates("forget stored snapshots of an older format again");
    }
    if !report.plan.remove_damaged.is_empty() {
        // What a damaged record referenced cannot be told.
        repo.drop_gc_candidates("forget removed damaged snapshot records");
    }
    let gone: Vec<u64> = report
        .plan
        .remove
        .iter()
        .chain(report.plan.remove_damaged.iter())
        .copied()
        .collect();
    if let Err(e) = super::ledger::forgotten(repo, &gone.iter().copied().collect()) {
        tracing::warn!("the reference ledger after forget: {e}");
        repo.drop_gc_candidates("the reference ledger could not be settled after forget");
    }
    // 4. Their materialized copies (a cache: a failure costs disk only,
    // and the next mount's scan deletes copies of missing snapshots).
    match crate::views::materialize::forget_snapshots(repo.dir(), &gone) {
        Ok(0) => {}
        Ok(n) => tracing::info!("deleted {n} materialized copies of forgotten snapshots"),
        Err(e) => {
            tracing::warn!("cannot delete the materialized copies of forgotten snapshots: {e}")
        }
    }
    Ok(report)
}

/// Resolved trees of the snapshots being rewritten, each built from the
/// nearest tree held of its captured chain (`Repository::chain`) plus the
/// manifests after it, with only a few kept in memory.
struct TreeCache<'a> {
    all: &'a [SnapshotRecord],
    trees: Vec<(u64, std::sync::Arc<Tree>)>,
}

const TREES_KEPT: usize = 6;

impl<'a> TreeCache<'a> {
    fn new(all: &'a [SnapshotRecord]) -> TreeCache<'a> {
        TreeCache {
            all,
            trees: Vec::new(),
        }
    }

    fn get(&mut self, repo: &Repository, id: u64) -> Result<std::sync::Arc<Tree>> {
        if let Some((_, t)) = self.trees.iter().find(|(i, _)| *i == id) {
            return Ok(t.clone());
        }
        let rec = self
            .all
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| Error::UnknownSnapshot(id.to_string()))?;
        let trees = &self.trees;
        let tree = repo.resolve_in(rec, self.all, &|id| {
            trees.iter().find(|(t, _)| *t == id).map(|(_, t)| t.clone())
        })?;
        let t = std::sync::Arc::new(tree);
        if self.trees.len() >= TREES_KEPT {
            self.trees.remove(0);
        }
        self.trees.push((id, t.clone()));
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Stats;

    fn rec(id: u64, kind: Kind, parent: Option<u64>, full: u64) -> SnapshotRecord {
        let t = 1_800_000_000_000_000_000 + id as i64;
        SnapshotRecord {
            format: crate::snapshot::model::RECORD_FORMAT,
            id,
            kind,
            parent,
            full,
            time: time::rfc3339(t),
            time_ns: t,
            label: None,
            name: time::snapshot_name(t, id),
            source: String::new(),
            block_size: 4096,
            manifest: vec![],
            manifest_len: 0,
            stats: Stats::default(),
            rewritten: None,
            synthetic: false,
        }
    }

    fn shape(p: &Plan) -> Vec<(u64, Kind, Option<u64>, u64, bool)> {
        p.changes
            .iter()
            .map(|c| (c.id, c.kind, c.parent, c.full, c.new_manifest))
            .collect()
    }

    use Kind::{Differential as D, Full as F, Incremental as I};

    #[test]
    fn chains_are_rewritten_not_broken() {
        // 1F 2I 3I 4D(1) 5I(4) 6F 7I
        let all = vec![
            rec(1, F, None, 1),
            rec(2, I, Some(1), 1),
            rec(3, I, Some(2), 1),
            rec(4, D, Some(1), 1),
            rec(5, I, Some(4), 1),
            rec(6, F, None, 6),
            rec(7, I, Some(6), 6),
        ];
        let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
        // An incremental in the middle folds into its child.
        let p = plan(&all, &set(&[2])).unwrap();
        assert_eq!(shape(&p), vec![(3, I, Some(1), 1, true)]);
        // The full goes: the oldest kept of its chain becomes a synthetic
        // full; the next incremental keeps its manifest (only `full`
        // changes); the differential is re-based on the synthetic full,
        // and what is built on it follows.
        let p = plan(&all, &set(&[1])).unwrap();
        assert_eq!(
            shape(&p),
            vec![
                (2, F, None, 2, true),
                (3, I, Some(2), 2, false),
                (4, D, Some(2), 2, true),
                (5, I, Some(4), 2, false),
            ]
        );
        // The full and the first incremental go: 3 is the oldest left.
        let p = plan(&all, &set(&[1, 2])).unwrap();
        assert_eq!(
            shape(&p),
            vec![
                (3, F, None, 3, true),
                (4, D, Some(3), 3, true),
                (5, I, Some(4), 3, false)
            ]
        );
        // A differential whose child stays: the child folds onto the full.
        let p = plan(&all, &set(&[4])).unwrap();
        assert_eq!(shape(&p), vec![(5, I, Some(1), 1, true)]);
        // Nothing depends on it: nothing to rewrite.
        let p = plan(&all, &set(&[3, 5])).unwrap();
        assert!(p.changes.is_empty());
        // Everything of the first chain.
        let p = plan(&all, &set(&[1, 2, 3, 4, 5])).unwrap();
        assert!(p.changes.is_empty());
        // The newest stays; unknown ids are refused.
        assert!(plan(&all, &set(&[7])).is_err());
        assert!(plan(&all, &set(&[99])).is_err());
    }

    #[test]
    fn a_policy_always_keeps_the_newest() {
        let all: Vec<SnapshotRecord> = (1..=3).map(|i| rec(i, F, None, i)).collect();
        let p = KeepPolicy {
            labels: vec!["keep-*".into()],
            ..KeepPolicy::default()
        };
        let (remove, decisions) = by_policy(&all, &p, |ns| time::civil_at(ns, 0)).unwrap();
        assert_eq!(remove, [1, 2].into_iter().collect());
        assert!(decisions[0].reasons[0].starts_with("newest"));
    }
}
