//! Verification: the index, every snapshot's references, and (optionally)
//! every chunk's data, or the data of a random sample of the packs
//! (`--sample`: a different sample every run, so that repeated quick
//! checks cover the whole repository over time).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::Result;
use crate::repo::Repository;
use crate::snapshot::manifest::{display_path, Node};
use crate::snapshot::Tree;
use crate::store::ChunkId;

/// How much chunk data to read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DataCheck {
    /// References only (index entries, pack lengths).
    None,
    /// Every referenced chunk.
    All,
    /// Every referenced chunk in a random PERCENT of the packs.
    Sample(f64),
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub snapshots: u64,
    pub chunks_checked: u64,
    /// Chunks whose data was read and verified.
    pub chunks_read: u64,
    /// With a sample: packs sampled, of how many.
    pub packs_sampled: Option<(u64, u64)>,
    /// Problems not tied to one snapshot.
    pub problems: Vec<String>,
    /// Damaged snapshots: id -> damaged file paths (or other reasons).
    pub damaged: BTreeMap<u64, Vec<String>>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.damaged.is_empty()
    }
}

/// Check every snapshot: its chain resolves, every referenced chunk is in
/// the index and inside its pack; with `read_data`, every chunk is read
/// and its hashes verified.
pub fn verify(repo: &Repository, read_data: bool) -> Result<VerifyReport> {
    verify_with(
        repo,
        if read_data {
            DataCheck::All
        } else {
            DataCheck::None
        },
    )
}

/// The packs a sample of `percent` reads: that share of all packs (at
/// least one), chosen at random with a key that differs every run.
fn sample_packs(repo: &Repository, percent: f64) -> Result<(HashSet<u64>, u64)> {
    use std::hash::BuildHasher;
    let mut packs: Vec<u64> = repo
        .index()
        .chunks()?
        .into_iter()
        .map(|(_, loc)| loc.pack)
        .collect::<HashSet<u64>>()
        .into_iter()
        .collect();
    let total = packs.len() as u64;
    let key = std::collections::hash_map::RandomState::new();
    packs.sort_by_key(|p| key.hash_one(p));
    let want = ((total as f64 * percent.clamp(0.0, 100.0) / 100.0).ceil() as usize)
        .max(usize::from(total > 0));
    packs.truncate(want);
    Ok((packs.into_iter().collect(), total))
}

/// [`verify`] with a choice of how much data to read.
pub fn verify_with(repo: &Repository, data: DataCheck) -> Result<VerifyReport> {
    // Not while gc moves or removes packs (in the daemon, retention may
    // run at any time): that would look like damage.
    let _no_gc = repo.lifecycle_guard();
    let mut report = VerifyReport::default();
    let sampled = match data {
        DataCheck::Sample(p) => {
            let (set, total) = sample_packs(repo, p)?;
            report.packs_sampled = Some((set.len() as u64, total));
            Some(set)
        }
        _ => None,
    };
    let read = |pack: u64| match data {
        DataCheck::None => false,
        DataCheck::All => true,
        DataCheck::Sample(_) => sampled.as_ref().is_some_and(|s| s.contains(&pack)),
    };
    let mut chunks_read = 0u64;
    // The records first: every chunk a listed record references was in
    // the index before the record was written (gc is kept out above).
    let all = repo.snapshots()?;
    // Every index entry, sorted, in one array: a chunk is looked up by a
    // binary search instead of a random read of the index (10^6 of those
    // took 9 s with a cold index cache), and what was checked is one bit
    // per entry instead of a map of every chunk.
    let mut locs = repo.index().chunks()?;
    locs.sort_unstable_by_key(|e| e.0 .0);
    // Progress over the bytes to read (each blob once).
    let pb = if data == DataCheck::None {
        indicatif::ProgressBar::hidden()
    } else {
        let total: u64 = locs
            .iter()
            .filter(|(_, l)| read(l.pack))
            .map(|(_, l)| u64::from(l.stored_len))
            .sum();
        crate::util::progress::bytes("verify", Some(total), true)
    };
    // Records that cannot be read (or changed on disk) are damaged
    // snapshots too.
    let bad_records = repo.check_record_files()?;
    for (id, why) in &bad_records {
        if !all.iter().any(|r| r.id == *id) {
            report.snapshots += 1;
        }
        report
            .damaged
            .insert(*id, vec![format!("its record is damaged: {why}")]);
    }
    // Entries checked (a bit per entry of `locs`), what was wrong with
    // those that are damaged, and the referenced chunks the index lacks.
    let mut seen = vec![0u64; locs.len().div_ceil(64)];
    let mut bad_at: HashMap<usize, String> = HashMap::new();
    let mut missing: HashMap<ChunkId, String> = HashMap::new();
    let mut pack_len: HashMap<u64, Option<u64>> = HashMap::new();
    let mut check = |id: &ChunkId| -> Option<String> {
        let Ok(i) = locs.binary_search_by(|e| e.0 .0.cmp(&id.0)) else {
            return Some(
                missing
                    .entry(*id)
                    .or_insert_with(|| format!("chunk {id} is not in the index"))
                    .clone(),
            );
        };
        if seen[i / 64] & (1 << (i % 64)) != 0 {
            return bad_at.get(&i).cloned();
        }
        seen[i / 64] |= 1 << (i % 64);
        let loc = locs[i].1;
        let len = *pack_len
            .entry(loc.pack)
            .or_insert_with(|| repo.pack_reader().pack_len(loc.pack));
        let r = match len {
            None => Some(format!("chunk {id}: its pack {} is missing", loc.pack)),
            Some(l)
                if l < loc.offset
                    + crate::store::blob::HEADER_LEN as u64
                    + loc.stored_len as u64 =>
            {
                Some(format!("chunk {id}: its pack {} is truncated", loc.pack))
            }
            Some(_) if read(loc.pack) => {
                chunks_read += 1;
                pb.inc(u64::from(loc.stored_len));
                repo.pack_reader()
                    .scrub(&loc, id)
                    .err()
                    .map(|e| e.to_string())
            }
            Some(_) => None,
        };
        if let Some(why) = &r {
            bad_at.insert(i, why.clone());
        }
        r
    };
    // Directory objects already checked (format 3): a directory shared by
    // many snapshots is checked once, with what is damaged below it.
    let mut dirs: HashMap<crate::snapshot::dirs::DirRef, Damage> = HashMap::new();
    for rec in &all {
        report.snapshots += 1;
        if bad_records.contains_key(&rec.id) {
            continue;
        }
        if let Ok(crate::snapshot::Stored::Tree(root)) = repo.load_stored(rec) {
            let mut bad: Vec<String> = rec
                .manifest_ids()
                .unwrap_or_default()
                .iter()
                .filter_map(|id| check(id).map(|why| format!("its manifest: {why}")))
                .collect();
            let found = dir_damage(repo, &root.dir, root.block_size, &mut dirs, &mut check, 0);
            bad.extend(found.iter().map(|(p, why)| {
                if p.is_empty() {
                    why.clone()
                } else {
                    format!("{}: {why}", display_path(p))
                }
            }));
            if !bad.is_empty() {
                report.damaged.insert(rec.id, bad);
            }
            continue;
        }
        let mut bad: Vec<String> = Vec::new();
        let tree = match repo.resolve(rec) {
            Ok(t) => t,
            Err(e) => {
                report
                    .damaged
                    .insert(rec.id, vec![format!("cannot resolve: {e}")]);
                continue;
            }
        };
        for (path, (_, node)) in &tree.entries {
            if let Node::File { .. } = node {
                let mut seen = HashSet::new();
                for id in Tree::blocks_of(node) {
                    if !seen.insert(*id) {
                        continue;
                    }
                    if let Some(why) = check(id) {
                        bad.push(format!("{}: {why}", display_path(path)));
                        break;
                    }
                }
            }
        }
        if !bad.is_empty() {
            report.damaged.insert(rec.id, bad);
        }
    }
    report.chunks_checked =
        seen.iter().map(|w| u64::from(w.count_ones())).sum::<u64>() + missing.len() as u64;
    pb.finish_and_clear();
    report.chunks_read = chunks_read;
    Ok(report)
}

/// What is damaged below one directory object: (path relative to it,
/// why); empty when nothing is.
type Damage = std::sync::Arc<Vec<(Vec<u8>, String)>>;

/// Check a directory object (its parts, its files' blocks and segments,
/// its subdirectories), each distinct object once (`memo`).
fn dir_damage(
    repo: &Repository,
    r: &crate::snapshot::dirs::DirRef,
    block_size: u32,
    memo: &mut HashMap<crate::snapshot::dirs::DirRef, Damage>,
    check: &mut dyn FnMut(&ChunkId) -> Option<String>,
    depth: usize,
) -> Damage {
    use crate::snapshot::dirs::{self, DNode};
    if let Some(d) = memo.get(r) {
        return d.clone();
    }
    let mut out: Vec<(Vec<u8>, String)> = Vec::new();
    for id in &r.parts {
        if let Some(why) = check(id) {
            out.push((Vec::new(), format!("directory object: {why}")));
        }
    }
    if out.is_empty() {
        match dirs::load_dir(repo, r, block_size) {
            Err(e) => out.push((Vec::new(), format!("directory object: {e}"))),
            Ok(_) if depth > dirs::MAX_DEPTH => {
                out.push((Vec::new(), "the tree is too deep".to_string()))
            }
            Ok(d) => {
                for e in d.entries {
                    match e.node {
                        DNode::Dir(sub) => {
                            let below = dir_damage(repo, &sub, block_size, memo, check, depth + 1);
                            for (p, why) in below.iter() {
                                let mut q = e.name.clone();
                                if !p.is_empty() {
                                    q.push(b'/');
                                    q.extend_from_slice(p);
                                }
                                out.push((q, why.clone()));
                            }
                        }
                        DNode::File {
                            size,
                            blocks,
                            segments,
                            lens,
                            ..
                        } => {
                            let mut why = segments.iter().find_map(&mut *check);
                            if why.is_none() {
                                match dirs::file_blocks(
                                    repo, size, blocks, lens, &segments, block_size,
                                ) {
                                    Err(err) => why = Some(err.to_string()),
                                    Ok(list) => {
                                        let mut seen = HashSet::new();
                                        why = list
                                            .ids()
                                            .iter()
                                            .filter(|id| seen.insert(**id))
                                            .find_map(&mut *check);
                                    }
                                }
                            }
                            if let Some(why) = why {
                                out.push((e.name.clone(), why));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let d: Damage = std::sync::Arc::new(out);
    memo.insert(r.clone(), d.clone());
    d
}
