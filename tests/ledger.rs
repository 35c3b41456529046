//! The space accounting read from the reference ledger equals the one
//! computed the slow, obvious way (every snapshot's tree resolved whole,
//! its chunk set compared with every other's) through a history of
//! changes, duplicates, removals, revived contents and every kind of
//! snapshot; after forgetting snapshots (the ledger merges the deltas
//! over them), after gc, and with ledger files damaged or deleted. And a
//! new snapshot's unique sizes are found without reading any tree but
//! the directories it changed, by updating those of the list before it
//! for the chunks whose counts rose (revived contents included).

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::Path;

use rewindfs::repo::Repository;
use rewindfs::retention::space::{space, unique_bytes};
use rewindfs::snapshot::{Kind, Node, Tree};
use rewindfs::store::{BlobKind, ChunkId};

const BS: usize = 64 << 10;

/// The figures of every snapshot, from whole trees.
#[derive(Debug, PartialEq, Eq)]
struct Naive {
    /// id -> (files, logical, chunks, stored, unique)
    per: Vec<(u64, u64, u64, u64, u64, u64)>,
    referenced_chunks: u64,
    unreferenced_chunks: u64,
}

fn naive(repo: &Repository) -> Naive {
    let mut all = repo.snapshots().unwrap();
    all.sort_by_key(|r| r.id);
    let index: HashMap<ChunkId, rewindfs::store::pack::Location> =
        repo.index().chunks().unwrap().into_iter().collect();
    let stored = |id: &ChunkId| index.get(id).map_or(0, |l| u64::from(l.stored_len));
    let mut sets = Vec::new();
    let mut per = Vec::new();
    for r in &all {
        let t = repo.resolve(r).unwrap();
        let (mut files, mut logical) = (0, 0);
        let mut set = HashSet::new();
        for (_, n) in t.entries.values() {
            if let Node::File { size, .. } = n {
                files += 1;
                logical += size;
                set.extend(Tree::blocks_of(n).iter().copied());
            }
        }
        let bytes = set.iter().map(stored).sum::<u64>();
        per.push((r.id, files, logical, set.len() as u64, bytes, 0));
        sets.push(set);
    }
    let mut count: HashMap<ChunkId, usize> = HashMap::new();
    for s in &sets {
        for id in s {
            *count.entry(*id).or_default() += 1;
        }
    }
    for (i, s) in sets.iter().enumerate() {
        per[i].5 = s.iter().filter(|id| count[*id] == 1).map(stored).sum();
    }
    let (mut referenced_chunks, mut unreferenced_chunks) = (0, 0);
    for (id, l) in &index {
        if l.kind == BlobKind::Chunk {
            if count.contains_key(id) {
                referenced_chunks += 1;
            } else {
                unreferenced_chunks += 1;
            }
        }
    }
    Naive {
        per,
        referenced_chunks,
        unreferenced_chunks,
    }
}

fn from_ledger(repo: &Repository) -> Naive {
    // The unique sizes first: from the cache of the list before, updated
    // for the snapshots appended since, when there is one.
    let unique = unique_bytes(repo).unwrap();
    let s = space(repo).unwrap();
    Naive {
        per: s
            .snapshots
            .iter()
            .map(|x| {
                assert_eq!(unique[&x.id], x.unique_bytes, "snapshot {}", x.id);
                (
                    x.id,
                    x.files,
                    x.logical_bytes,
                    x.chunks,
                    x.stored_bytes,
                    x.unique_bytes,
                )
            })
            .collect(),
        referenced_chunks: s.chunks,
        unreferenced_chunks: s.unreferenced_chunks,
    }
}

fn check(repo: &Repository, when: &str) {
    let want = naive(repo);
    let got = from_ledger(repo);
    assert_eq!(got, want, "{when}");
    // Every figure (totals, packs, ratios), brought up to date or not,
    // equals the one computed whole.
    let kept = space(repo).unwrap();
    assert_eq!(
        kept,
        rewindfs::retention::space::space_whole(repo).unwrap(),
        "{when}"
    );
}

fn scan(repo: &Repository, src: &Path, kind: Kind) -> u64 {
    common::scan_record(repo, src, kind, 0).id
}

/// Content `v` of `blocks` blocks: the same `v` gives the same chunks.
fn content(v: u64, blocks: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks * BS);
    for b in 0..blocks {
        let mut block = vec![0u8; BS];
        let seed = v.wrapping_mul(31).wrapping_add(b as u64 % 3);
        for (i, x) in block.iter_mut().enumerate() {
            *x = (seed.wrapping_mul(2654435761).wrapping_add(i as u64 * 7) >> 3) as u8;
        }
        out.extend_from_slice(&block);
    }
    out
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn the_ledger_accounts_exactly_as_whole_trees_do() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let repo_dir = tmp.path().join("repo");
    Repository::init(&repo_dir, BS as u32, 3).unwrap();
    let repo = Repository::open(&repo_dir).unwrap();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    // 240 files in 12 directories; contents drawn from 60 values, so many
    // files share chunks (and a file of three blocks repeats its first).
    let file = |d: u64, f: u64| src.join(format!("d{d:02}")).join(format!("f{f:03}"));
    for d in 0..12 {
        fs::create_dir_all(src.join(format!("d{d:02}"))).unwrap();
        for f in 0..20 {
            let v = rng.next(60);
            fs::write(file(d, f), content(v, 1 + (v % 3) as usize)).unwrap();
        }
    }
    let settle = || std::thread::sleep(std::time::Duration::from_millis(30));
    settle();
    let mut ids = vec![scan(&repo, &src, Kind::Full)];
    check(&repo, "after the first snapshot");
    for round in 0..14u64 {
        for _ in 0..(1 + rng.next(6)) {
            let (d, f) = (rng.next(12), rng.next(24));
            let dir = src.join(format!("d{d:02}"));
            if !dir.exists() {
                fs::create_dir_all(&dir).unwrap();
            }
            match rng.next(5) {
                // Remove a file (or nothing if absent).
                0 => {
                    let _ = fs::remove_file(file(d, f));
                }
                // Revive a content seen before, or a new one.
                1 => fs::write(file(d, f), content(rng.next(80), 2)).unwrap(),
                // A content only this round has.
                2 => fs::write(file(d, f), content(1000 + round, 1)).unwrap(),
                // A copy of another file.
                3 => {
                    let from = file(rng.next(12), rng.next(20));
                    if let Ok(b) = fs::read(&from) {
                        fs::write(file(d, f), b).unwrap();
                    }
                }
                // A whole directory goes (then comes back next time).
                _ => {
                    if round % 4 == 3 {
                        let _ = fs::remove_dir_all(&dir);
                    }
                }
            }
        }
        settle();
        let kind = match round {
            5 => Kind::Full,
            8 | 9 => Kind::Differential,
            _ => Kind::Incremental,
        };
        ids.push(scan(&repo, &src, kind));
        let before = rewindfs::retention::space::appended_updates();
        let updates = rewindfs::retention::space::space_updates();
        check(&repo, &format!("after round {round} ({kind:?})"));
        assert_eq!(
            rewindfs::retention::space::appended_updates(),
            before + 1,
            "round {round}: the unique sizes were updated for the new snapshot, not merged whole"
        );
        assert!(
            rewindfs::retention::space::space_updates() >= updates + 2,
            "round {round}: the space figures were brought up to date, not computed whole"
        );
    }
    // A new snapshot's unique sizes: only its delta is computed, reading
    // exactly the directories that differ from the snapshot before it
    // (what comparing the two reads), not the trees.
    fs::write(file(0, 0), content(5000, 1)).unwrap();
    settle();
    ids.push(scan(&repo, &src, Kind::Incremental));
    let pair = {
        let mut all = repo.snapshots().unwrap();
        all.sort_by_key(|r| r.id);
        let n = all.len();
        let before = Repository::dir_objects_read();
        repo.changed_pair(&all[n - 2], &all[n - 1]).unwrap();
        Repository::dir_objects_read() - before
    };
    let before = Repository::dir_objects_read();
    unique_bytes(&repo).unwrap();
    let read = Repository::dir_objects_read() - before;
    assert_eq!(read, pair, "unique sizes of a new snapshot");
    assert!(pair <= 8, "{pair} directory objects differ");
    check(&repo, "after a one-file snapshot");
    // Forget: a middle snapshot, two adjacent ones, the first.
    let forget = |set: &[u64]| {
        let t =
            rewindfs::retention::forget::Target::Ids(set.iter().copied().collect::<BTreeSet<_>>());
        rewindfs::retention::forget::forget(&repo, t, false).unwrap();
    };
    forget(&[ids[3]]);
    let before = Repository::dir_objects_read();
    space(&repo).unwrap();
    assert_eq!(
        Repository::dir_objects_read() - before,
        0,
        "forgetting an incremental merges the deltas around it, reading no tree"
    );
    check(&repo, "after forgetting a middle snapshot");
    forget(&[ids[6], ids[7]]);
    check(&repo, "after forgetting two adjacent snapshots");
    forget(&[ids[0]]);
    check(&repo, "after forgetting the first snapshot");
    // The deltas of forgotten snapshots are gone once merged.
    let (deltas, _) = rewindfs::retention::ledger::size(&repo);
    assert_eq!(deltas, repo.snapshots().unwrap().len() as u64);
    // gc: what the forgotten snapshots alone held is gone.
    rewindfs::retention::gc::gc(&repo, &Default::default()).unwrap();
    check(&repo, "after gc");
    assert_eq!(space(&repo).unwrap().unreferenced_chunks, 0);
    // Damage: a flipped byte, a truncated file, the directory deleted.
    let ledger = repo_dir.join("cache").join("ledger");
    let mut names: Vec<_> = fs::read_dir(&ledger)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut b = fs::read(&names[0]).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x40;
    fs::write(&names[0], b).unwrap();
    let b = fs::read(&names[2]).unwrap();
    fs::write(&names[2], &b[..b.len() - 5]).unwrap();
    fs::remove_file(repo_dir.join("cache").join("unique.json")).unwrap();
    check(&repo, "with two damaged deltas");
    fs::remove_dir_all(&ledger).unwrap();
    fs::remove_file(repo_dir.join("cache").join("unique.json")).unwrap();
    check(&repo, "with the ledger deleted");
    // A delta that passes its checksum but is wrong (a count that goes
    // below zero): the ledger is computed again.
    let last = names.last().unwrap();
    let mut d = rewindfs::retention::ledger::Delta::decode(&fs::read(last).unwrap()).unwrap();
    d.entries.retain(|(id, _)| id.0 != [0xff; 32]);
    d.entries.push((ChunkId([0xff; 32]), -3));
    fs::write(last, d.encode()).unwrap();
    fs::remove_file(repo_dir.join("cache").join("unique.json")).unwrap();
    check(&repo, "with a wrong delta");
}
