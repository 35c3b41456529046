//! What another schedule would have stored, replayed from the history.
//!
//! Chunks are deduplicated, so a schedule stores a chunk once if any of
//! its captures sees it. Walking the snapshots of the window in time
//! order gives every chunk's lifetimes (the runs of snapshots whose tree
//! holds it); a schedule capturing every P hours sees, at each capture,
//! the latest snapshot's tree, and stores the chunks whose lifetime
//! contains one of those snapshots. A block rewritten three times
//! between two daily captures is stored once by a daily schedule and
//! three times by an hourly one: this is where schedules differ in a
//! deduplicating store. The replay cannot see versions the history did
//! not capture: for schedules finer than the history it gives the
//! history's own figure (a lower bound).

use std::collections::HashMap;

use crate::error::Result;
use crate::repo::Repository;
use crate::snapshot::{Kind, Node, SnapshotRecord, Tree};
use crate::store::ChunkId;

const HOUR_NS: f64 = 3600e9;

/// Chunk lifetimes over a run of snapshots.
#[derive(Clone, Debug, Default)]
pub struct Lifetimes {
    /// Times of the snapshots replayed; index 0 is the baseline (what was
    /// stored before the window).
    pub times: Vec<i64>,
    /// Per chunk first seen in the window: its stored and raw bytes and
    /// the index ranges [a, b] of snapshots holding it.
    pub chunks: Vec<ChunkLife>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChunkLife {
    pub stored: u64,
    pub raw: u64,
    pub lives: Vec<(u32, u32)>,
}

/// What a schedule capturing every `period` hours stores and reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Replayed {
    pub stored_per_week: f64,
    /// Bytes of new blocks its captures read.
    pub read_per_week: f64,
    /// The period is shorter than the history's typical interval: the
    /// figure is the history's own (at least this much).
    pub finer_than_history: bool,
}

fn blocks(node: &Node) -> &[ChunkId] {
    Tree::blocks_of(node)
}

/// Collects the chunk changes of one transition.
#[derive(Default)]
struct Walk {
    /// How many blocks of the current tree hold each chunk; [`BASELINE`]
    /// marks chunks stored before the window (never counted; kept at a
    /// count of zero when they leave the tree).
    counts: HashMap<ChunkId, u32>,
    /// Chunk -> index in `chunks`.
    known: HashMap<ChunkId, usize>,
    /// Open lifetimes: chunk -> start index.
    open: HashMap<ChunkId, u32>,
    chunks: Vec<(ChunkId, ChunkLife)>,
}

const BASELINE: u32 = 1 << 31;

impl Walk {
    fn remove(&mut self, c: &ChunkId, i: u32) {
        if let Some(n) = self.counts.get_mut(c) {
            if *n & !BASELINE == 0 {
                return;
            }
            *n -= 1;
            if *n & !BASELINE == 0 {
                if *n == 0 {
                    self.counts.remove(c);
                }
                if let Some(start) = self.open.remove(c) {
                    if let Some(k) = self.known.get(c) {
                        self.chunks[*k].1.lives.push((start, i.saturating_sub(1)));
                    }
                }
            }
        }
    }

    fn add(&mut self, c: &ChunkId, i: u32) {
        let n = self.counts.entry(*c).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.open.insert(*c, i);
            if !self.known.contains_key(c) {
                self.known.insert(*c, self.chunks.len());
                self.chunks.push((*c, ChunkLife::default()));
            }
        }
    }
}

impl Lifetimes {
    /// The lifetimes over `recs` (in time order; the first is the
    /// baseline): from the reference ledger when `recs` are consecutive
    /// snapshots in id order (the usual case), else by replaying their
    /// trees.
    pub fn measure(repo: &Repository, recs: &[SnapshotRecord]) -> Result<Lifetimes> {
        if recs.is_empty() {
            return Ok(Lifetimes::default());
        }
        if let Some(l) = Self::from_ledger(repo, recs)? {
            return Ok(l);
        }
        Self::replay(repo, recs)
    }

    /// The lifetimes from the reference ledger, where every chunk's
    /// presence over the snapshots is its lifetimes (no tree is read, and
    /// memory follows the chunks first seen after the baseline, not the
    /// files). `None` when `recs` are not consecutive snapshots in id
    /// order (a clock that went back).
    fn from_ledger(repo: &Repository, recs: &[SnapshotRecord]) -> Result<Option<Lifetimes>> {
        let mut all = repo.snapshots()?;
        all.sort_by_key(|r| r.id);
        let Some(lo) = all.iter().position(|r| r.id == recs[0].id) else {
            return Ok(None);
        };
        let hi = lo + recs.len() - 1;
        if hi >= all.len() || all[lo..=hi].iter().zip(recs).any(|(a, b)| a.id != b.id) {
            return Ok(None);
        }
        let mut chunks: Vec<(ChunkId, ChunkLife)> = Vec::new();
        crate::retention::ledger::rebuilding_once(repo, || {
            chunks.clear();
            crate::retention::ledger::for_each_chunk(repo, &all, &mut |id, p| {
                // Chunks of the baseline were stored before the window.
                if p.at(lo) {
                    return Ok(());
                }
                let lives: Vec<(u32, u32)> = p
                    .runs
                    .iter()
                    .map(|&(a, b)| (a.max(lo + 1), b.min(hi + 1)))
                    .filter(|(a, b)| a < b)
                    .map(|(a, b)| ((a - lo) as u32, (b - 1 - lo) as u32))
                    .collect();
                if !lives.is_empty() {
                    chunks.push((
                        *id,
                        ChunkLife {
                            lives,
                            ..Default::default()
                        },
                    ));
                }
                Ok(())
            })
            .map(|_| ())
        })?;
        Ok(Some(Lifetimes {
            times: recs.iter().map(|r| r.time_ns).collect(),
            chunks: sized(repo, chunks)?,
        }))
    }

    /// The lifetimes by replaying the trees of `recs` in order (what
    /// [`Self::measure`] falls back to; tests compare the two).
    pub fn replay(repo: &Repository, recs: &[SnapshotRecord]) -> Result<Lifetimes> {
        let Some(first) = recs.first() else {
            return Ok(Lifetimes::default());
        };
        let mut tree = repo.resolve(first)?;
        let mut w = Walk::default();
        for (_, node) in tree.entries.values() {
            for c in blocks(node) {
                *w.counts.entry(*c).or_insert(BASELINE) += 1;
            }
        }
        let mut prev_id = first.id;
        for (i, r) in recs.iter().enumerate().skip(1) {
            let i = i as u32;
            let stored = repo.load_stored(r)?;
            if let crate::snapshot::Stored::Tree(_) = &stored {
                // Stored as a tree: only the directories that differ from
                // the previous snapshot are read, and only their entries
                // can differ.
                let (pa, pb) = repo.changed_pair(&recs[i as usize - 1], r)?;
                let touched: Vec<Vec<u8>> = pa
                    .entries
                    .keys()
                    .chain(pb.entries.keys())
                    .cloned()
                    .collect();
                replace(&mut tree, touched, &mut w, i, |t| {
                    for p in pa.entries.keys() {
                        if !pb.entries.contains_key(p) {
                            t.entries.remove(p);
                        }
                    }
                    t.entries.extend(pb.entries);
                    Ok(())
                })?;
            } else if let (crate::snapshot::Stored::Changes(m), Kind::Incremental, true) =
                (stored, r.kind, r.parent == Some(prev_id))
            {
                // Apply the changes in place; only touched paths differ.
                let mut touched: Vec<Vec<u8>> = Vec::new();
                for p in &m.removed {
                    touched.push(p.clone());
                    touched.extend(tree.descendants(p).map(|(k, _)| k.clone()));
                }
                for e in &m.entries {
                    touched.push(e.path.clone());
                    if !matches!(e.node, Node::Dir) {
                        touched.extend(tree.descendants(&e.path).map(|(k, _)| k.clone()));
                    }
                }
                replace(&mut tree, touched, &mut w, i, |t| t.apply(&m))?;
            } else {
                let next = repo.resolve(r)?;
                for (p, (_, n)) in &tree.entries {
                    let same = next.get(p).map(|(_, m)| blocks(m)) == Some(blocks(n));
                    if !same {
                        for c in blocks(n) {
                            w.remove(c, i);
                        }
                    }
                }
                for (p, (_, n)) in &next.entries {
                    let same = tree.get(p).map(|(_, m)| blocks(m)) == Some(blocks(n));
                    if !same {
                        for c in blocks(n) {
                            w.add(c, i);
                        }
                    }
                }
                tree = next;
            }
            prev_id = r.id;
        }
        let last = (recs.len() - 1) as u32;
        for (c, start) in std::mem::take(&mut w.open) {
            if let Some(k) = w.known.get(&c) {
                w.chunks[*k].1.lives.push((start, last));
            }
        }
        Ok(Lifetimes {
            times: recs.iter().map(|r| r.time_ns).collect(),
            chunks: sized(repo, w.chunks)?,
        })
    }

    /// A schedule capturing every `period_hours` from the baseline on:
    /// what it stores and reads per week. `None` when the history is
    /// shorter than one period.
    pub fn per_week(&self, period_hours: f64) -> Option<Replayed> {
        let (&t0, &tl) = (self.times.first()?, self.times.last()?);
        let p = (period_hours * HOUR_NS) as i64;
        if p <= 0 {
            return None;
        }
        let n = (tl - t0) / p;
        if n == 0 {
            return None;
        }
        // The snapshot each capture sees.
        let mut seen: Vec<u32> = (1..=n)
            .map(|k| {
                let at = t0 + k * p;
                (self.times.partition_point(|t| *t <= at) - 1) as u32
            })
            .collect();
        seen.dedup();
        let hit = |a: u32, b: u32| {
            let k = seen.partition_point(|j| *j < a);
            k < seen.len() && seen[k] <= b
        };
        let (mut stored, mut read) = (0u64, 0u64);
        for c in &self.chunks {
            if c.lives.iter().any(|(a, b)| hit(*a, *b)) {
                stored += c.stored;
                read += c.raw;
            }
        }
        let covered_hours = (n * p) as f64 / HOUR_NS;
        let scale = super::WEEK_HOURS / covered_hours;
        let intervals = self.times.len().saturating_sub(1).max(1) as f64;
        let typical = (tl - t0) as f64 / intervals / HOUR_NS;
        Some(Replayed {
            stored_per_week: stored as f64 * scale,
            read_per_week: read as f64 * scale,
            finer_than_history: period_hours < typical * 0.99,
        })
    }
}

/// Sizes from the index; a chunk gc has removed since counts at the
/// block size and the average compression of the others.
fn sized(repo: &Repository, mut chunks: Vec<(ChunkId, ChunkLife)>) -> Result<Vec<ChunkLife>> {
    let block = u64::from(repo.config.block_size);
    let mut missing = Vec::new();
    let (mut st, mut rw) = (0u64, 0u64);
    for (k, (c, life)) in chunks.iter_mut().enumerate() {
        match repo.index().get_chunk(c)? {
            Some(loc) => {
                life.stored = u64::from(loc.stored_len);
                life.raw = u64::from(loc.raw_len);
                st += life.stored;
                rw += life.raw;
            }
            None => missing.push(k),
        }
    }
    let ratio = if rw > 0 { st as f64 / rw as f64 } else { 1.0 };
    for k in missing {
        let life = &mut chunks[k].1;
        life.raw = block;
        life.stored = (block as f64 * ratio) as u64;
    }
    Ok(chunks.into_iter().map(|(_, l)| l).collect())
}

/// Change `tree` by `update`, which touches only the paths in `touched`:
/// the chunks those paths held leave at snapshot `i`, the ones they hold
/// after arrive.
fn replace(
    tree: &mut Tree,
    mut touched: Vec<Vec<u8>>,
    w: &mut Walk,
    i: u32,
    update: impl FnOnce(&mut Tree) -> Result<()>,
) -> Result<()> {
    touched.sort();
    touched.dedup();
    let chunks = |t: &Tree| -> Vec<ChunkId> {
        touched
            .iter()
            .filter_map(|p| t.get(p))
            .flat_map(|(_, n)| blocks(n).to_vec())
            .collect()
    };
    let old = chunks(tree);
    update(tree)?;
    for c in &old {
        w.remove(c, i);
    }
    for c in &chunks(tree) {
        w.add(c, i);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarser_schedules_store_rewritten_blocks_once() {
        let h = 3_600_000_000_000i64;
        // Snapshots every hour for 48 hours; one block rewritten every
        // hour (each version lives one snapshot), and a file written at
        // hour 5 that stays (1 MiB each).
        let times: Vec<i64> = (0..=48).map(|k| k * h).collect();
        let mut chunks: Vec<ChunkLife> = (1..=48u32)
            .map(|k| ChunkLife {
                stored: 1 << 20,
                raw: 1 << 20,
                lives: vec![(k, k)],
            })
            .collect();
        chunks.push(ChunkLife {
            stored: 1 << 20,
            raw: 1 << 20,
            lives: vec![(5, 48)],
        });
        let l = Lifetimes { times, chunks };
        let mib = (1 << 20) as f64;
        // Hourly: 48 versions and the file, in 48 hours.
        let hourly = l.per_week(1.0).unwrap();
        assert_eq!(hourly.stored_per_week, 49.0 * mib * 168.0 / 48.0);
        assert!(!hourly.finer_than_history);
        // Every 3 hours: one of each three versions.
        let three = l.per_week(3.0).unwrap();
        assert_eq!(three.stored_per_week, 17.0 * mib * 168.0 / 48.0);
        // Daily: captures at 24 h and 48 h, one version each, the file once.
        let daily = l.per_week(24.0).unwrap();
        assert_eq!(daily.stored_per_week, 3.0 * mib * 168.0 / 48.0);
        assert_eq!(daily.read_per_week, daily.stored_per_week);
        // Finer than the history: its own figure, flagged.
        let quarter = l.per_week(0.25).unwrap();
        assert_eq!(quarter.stored_per_week, hourly.stored_per_week);
        assert!(quarter.finer_than_history);
        // Longer than the history: unknown.
        assert!(l.per_week(168.0).is_none());
    }
}
