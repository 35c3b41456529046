//! Forget and gc, driven through the library:
//! - property test: random histories of snapshots of every kind with
//!   random changes, then rounds of random forgets (named snapshots or a
//!   keep-last policy) and gc, some with a capture racing gc; after every
//!   round each remaining snapshot restores exactly as it was captured,
//!   no indexed chunk is left that no snapshot references, and the packs
//!   shrank by at least the bytes only the forgotten snapshots used;
//! - a capture that needs a chunk gc has condemned stores a fresh copy;
//! - forgetting the newest snapshot is refused.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use rewindfs::repo::Repository;
use rewindfs::restore::{restore, RestoreOptions};
use rewindfs::retention::forget::{forget, Target};
use rewindfs::retention::gc::{gc, GcOptions};
use rewindfs::retention::keep::KeepPolicy;
use rewindfs::snapshot::{Kind, Node, Tree};
use rewindfs::store::blob::HEADER_LEN;
use rewindfs::store::pack::PACK_HEADER_LEN;
use rewindfs::store::ChunkId;

use common::{assert_same, model, Model};

const BS: usize = 64 << 10;
const FILES: usize = 6;

/// Block `seed` of the test data: few seeds, so blocks repeat across
/// files and snapshots (deduplication, and chunks that come back).
fn block(seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; BS];
    let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    v
}

#[derive(Clone, Debug)]
enum Op {
    /// Write file `f` as these blocks (plus a short tail of `tail` bytes).
    Write {
        f: usize,
        seeds: Vec<u8>,
        tail: u16,
    },
    Delete {
        f: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..FILES, prop::collection::vec(0u8..10, 0..4), 0u16..3000)
            .prop_map(|(f, seeds, tail)| Op::Write { f, seeds, tail }),
        1 => (0..FILES).prop_map(|f| Op::Delete { f }),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        1 => Just(Kind::Full),
        3 => Just(Kind::Incremental),
        2 => Just(Kind::Differential)
    ]
}

#[derive(Clone, Debug)]
enum Forget {
    /// Bit i set: forget the i-th snapshot (by id order) if it may go.
    Mask(u32),
    KeepLast(u32),
}

fn forget_op() -> impl Strategy<Value = Forget> {
    prop_oneof![
        3 => any::<u32>().prop_map(Forget::Mask),
        1 => (1u32..4).prop_map(Forget::KeepLast),
    ]
}

#[derive(Clone, Debug)]
struct Round {
    forget: Forget,
    /// Changes and a capture running while gc runs.
    race: Option<Vec<Op>>,
    /// Repack threshold in percent.
    repack: u8,
    /// A full gc (else incremental when gc's candidates are trusted).
    full: bool,
}

fn round() -> impl Strategy<Value = Round> {
    (
        forget_op(),
        prop::option::of(prop::collection::vec(op(), 1..4)),
        prop_oneof![Just(0u8), Just(50), Just(100)],
        any::<bool>(),
    )
        .prop_map(|(forget, race, repack, full)| Round {
            forget,
            race,
            repack,
            full,
        })
}

fn apply(src: &Path, op: &Op) {
    match op {
        Op::Write { f, seeds, tail } => {
            let mut data: Vec<u8> = seeds.iter().flat_map(|s| block(*s)).collect();
            data.extend(block(200)[..*tail as usize].iter());
            fs::write(src.join(format!("f{f}")), data).unwrap();
        }
        Op::Delete { f } => {
            let _ = fs::remove_file(src.join(format!("f{f}")));
        }
    }
}

fn scan(repo: &Repository, src: &Path, kind: Kind) -> u64 {
    common::scan_record(repo, src, kind, 2).id
}

/// What a snapshot references: its manifest parts and its tree's blocks.
fn refs(repo: &Repository, id: u64) -> HashSet<ChunkId> {
    let all = repo.snapshots().unwrap();
    let rec = all.iter().find(|r| r.id == id).unwrap();
    // What gc marks for it: manifest parts, directory objects (format 3)
    // and the chunks they name ...
    let mut out: HashSet<ChunkId> = HashSet::new();
    repo.references(rec, &mut HashSet::new(), &mut out).unwrap();
    // ... which must hold every block of its resolved tree.
    let tree = repo.resolve(rec).unwrap();
    for (p, (_, node)) in &tree.entries {
        if let Node::File { .. } = node {
            for id in Tree::blocks_of(node) {
                assert!(out.contains(id), "a block of {p:?} is not marked");
            }
        }
    }
    out
}

fn pack_bytes(repo_dir: &Path) -> u64 {
    fs::read_dir(repo_dir.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Every remaining snapshot restores as captured; the index holds only
/// referenced chunks (after gc).
fn check(
    repo: &Repository,
    tmp: &Path,
    expected: &BTreeMap<u64, BTreeMap<String, Model>>,
    after_gc: bool,
) {
    let all = repo.snapshots().unwrap();
    let ids: BTreeSet<u64> = all.iter().map(|r| r.id).collect();
    let want_ids: BTreeSet<u64> = expected.keys().copied().collect();
    assert_eq!(
        ids, want_ids,
        "the snapshots left are the ones not forgotten"
    );
    let mut referenced = HashSet::new();
    for rec in &all {
        referenced.extend(refs(repo, rec.id));
        // The chain still holds together and gives the same tree.
        let tree = repo.resolve(rec).unwrap();
        let out = tmp.join(format!("restore-{}", rec.id));
        let _ = fs::remove_dir_all(&out);
        let rep = restore(
            repo,
            &tree,
            b"",
            &out,
            &RestoreOptions {
                threads: 2,
                owners: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(rep.failed.is_empty(), "{:?}", rep.failed);
        assert_same(
            &expected[&rec.id],
            &model(&out),
            &format!("snapshot {} ({})", rec.id, rec.kind_label()),
        );
        fs::remove_dir_all(&out).unwrap();
    }
    // Two snapshots resolved together (sharing their chains' common part)
    // give the same trees as each resolved alone.
    for (a, b) in all.iter().zip(all.iter().rev()) {
        let (ta, tb) = repo.resolve_pair(a, b).unwrap();
        assert_eq!(ta, repo.resolve(a).unwrap(), "{} with {}", a.id, b.id);
        assert_eq!(tb, repo.resolve(b).unwrap(), "{} with {}", b.id, a.id);
    }
    if !after_gc {
        return;
    }
    for (id, _) in repo.index().chunks().unwrap() {
        assert!(
            referenced.contains(&id),
            "chunk {id} is indexed but no snapshot references it"
        );
    }
}

/// A temporary directory with an empty `src` and a new repository.
fn new_repo() -> (tempfile::TempDir, PathBuf, PathBuf, Repository) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let repo_dir = tmp.path().join("repo");
    fs::create_dir(&src).unwrap();
    Repository::init(&repo_dir, BS as u32, 3).unwrap();
    let repo = Repository::open(&repo_dir).unwrap();
    (tmp, src, repo_dir, repo)
}

fn run_case(history: Vec<(Vec<Op>, Kind)>, rounds: Vec<Round>) {
    let (tmp, src, repo_dir, repo) = new_repo();
    let repo = Arc::new(repo);
    let mut expected: BTreeMap<u64, BTreeMap<String, Model>> = BTreeMap::new();
    for (ops, kind) in &history {
        for op in ops {
            apply(&src, op);
        }
        let id = scan(&repo, &src, *kind);
        expected.insert(id, model(&src));
    }
    for round in &rounds {
        let all = repo.snapshots().unwrap();
        let newest = all.iter().map(|r| r.id).max().unwrap();
        let remove: BTreeSet<u64> = match &round.forget {
            Forget::Mask(m) => all
                .iter()
                .enumerate()
                .filter(|(i, r)| m & (1 << (i % 32)) != 0 && r.id != newest)
                .map(|(_, r)| r.id)
                .collect(),
            Forget::KeepLast(n) => all.iter().rev().skip(*n as usize).map(|r| r.id).collect(),
        };
        // What the forgotten snapshots use (their trees and manifests).
        let mut gone_refs = HashSet::new();
        for r in &all {
            if remove.contains(&r.id) {
                gone_refs.extend(refs(&repo, r.id));
            }
        }
        let index: BTreeMap<ChunkId, _> = repo.index().chunks().unwrap().into_iter().collect();

        let report = match &round.forget {
            Forget::Mask(_) => forget(&repo, Target::Ids(remove.clone()), false).unwrap(),
            Forget::KeepLast(n) => forget(
                &repo,
                Target::Policy(&KeepPolicy {
                    last: *n,
                    ..KeepPolicy::default()
                }),
                false,
            )
            .unwrap(),
        };
        assert_eq!(
            report
                .plan
                .remove
                .iter()
                .copied()
                .collect::<BTreeSet<u64>>(),
            remove
        );
        for id in &remove {
            expected.remove(id);
        }
        // Rewritten records keep their identity and say what they were.
        for rec in repo.snapshots().unwrap() {
            let before = all.iter().find(|r| r.id == rec.id).unwrap();
            assert_eq!(
                (&rec.name, rec.time_ns, &rec.label),
                (&before.name, before.time_ns, &before.label)
            );
            if report.plan.changes.iter().any(|c| c.id == rec.id) {
                assert_eq!(rec.rewritten.as_ref().unwrap().was, before.kind);
            }
        }
        check(&repo, tmp.path(), &expected, false);
        // The bytes only they used: what no remaining snapshot references
        // (a rewritten snapshot may share a manifest with a forgotten one).
        let mut kept_refs = HashSet::new();
        for r in repo.snapshots().unwrap() {
            kept_refs.extend(refs(&repo, r.id));
        }
        let only_gone: u64 = gone_refs
            .difference(&kept_refs)
            .map(|id| HEADER_LEN as u64 + u64::from(index[id].stored_len))
            .sum();

        let mid = pack_bytes(&repo_dir);
        let opts = GcOptions {
            repack_below: f64::from(round.repack) / 100.0,
            dry_run: false,
            full: round.full,
        };
        match &round.race {
            None => {
                let rep = gc(&repo, &opts).unwrap();
                let after = pack_bytes(&repo_dir);
                // A second gc finds nothing left to do.
                let again = gc(&repo, &opts).unwrap();
                assert_eq!(
                    (
                        again.deleted_chunks,
                        again.packs_deleted,
                        again.packs_repacked
                    ),
                    (0, 0, 0),
                    "{again:?}"
                );
                if round.repack == 100 {
                    // (Less the header of each pack the repack wrote.)
                    let headers = PACK_HEADER_LEN * rep.packs_written;
                    assert!(
                        mid + headers >= after + only_gone,
                        "gc went from {mid} to {after} bytes; the forgotten snapshots alone used {only_gone}"
                    );
                }
            }
            Some(ops) => {
                for op in ops {
                    apply(&src, op);
                }
                let r2 = repo.clone();
                let s2 = src.clone();
                let capture = std::thread::spawn(move || scan(&r2, &s2, Kind::Incremental));
                gc(&repo, &opts).unwrap();
                let id = capture.join().unwrap();
                expected.insert(id, model(&src));
                // What the capture reused must have survived gc (a
                // second gc then finds nothing of it to delete).
                gc(&repo, &opts).unwrap();
            }
        }
        check(&repo, tmp.path(), &expected, true);
    }
    let v = rewindfs::verify::verify(&repo, true).unwrap();
    assert!(v.ok(), "{v:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn forget_and_gc_keep_every_remaining_snapshot(
        history in prop::collection::vec((prop::collection::vec(op(), 1..5), kind()), 2..9),
        rounds in prop::collection::vec(round(), 1..4),
    ) {
        run_case(history, rounds);
    }
}

/// The classic race, made to happen every time: gc condemns a chunk
/// (its only snapshot was forgotten), then a capture needs the same
/// content. The capture must store a fresh copy; gc must not delete it.
#[test]
fn a_capture_needing_a_condemned_chunk_stores_it_again() {
    let (_tmp, src, _, repo) = new_repo();
    fs::write(src.join("a"), block(1)).unwrap();
    let first = scan(&repo, &src, Kind::Full);
    fs::write(src.join("a"), block(2)).unwrap();
    let second = scan(&repo, &src, Kind::Incremental);
    forget(&repo, Target::Ids([first].into_iter().collect()), false).unwrap();
    let doomed = ChunkId::of(&block(1));
    assert!(repo.index().contains_chunk(&doomed).unwrap());
    // What gc does in its condemn step, then a capture runs.
    repo.condemn([doomed].into_iter().collect());
    fs::write(src.join("b"), block(1)).unwrap();
    let third = scan(&repo, &src, Kind::Incremental);
    assert!(repo.is_condemned(&doomed));
    repo.clear_condemned();
    let rep = gc(
        &repo,
        &GcOptions {
            repack_below: 1.0,
            dry_run: false,
            full: true,
        },
    )
    .unwrap();
    assert!(rep.packs_deleted + rep.packs_repacked > 0, "{rep:?}");
    for id in [second, third] {
        let rec = repo
            .snapshots()
            .unwrap()
            .into_iter()
            .find(|r| r.id == id)
            .unwrap();
        let tree = repo.resolve(&rec).unwrap();
        for (_, node) in tree.entries.values() {
            for b in Tree::blocks_of(node) {
                repo.read_blob(b).unwrap();
            }
        }
    }
    assert!(rewindfs::verify::verify(&repo, true).unwrap().ok());
}

#[test]
fn the_newest_snapshot_cannot_be_forgotten() {
    let (_tmp, src, _, repo) = new_repo();
    fs::write(src.join("a"), b"x").unwrap();
    let id = scan(&repo, &src, Kind::Full);
    let e = forget(&repo, Target::Ids([id].into_iter().collect()), false).unwrap_err();
    assert!(e.to_string().contains("newest"), "{e}");
    assert_eq!(repo.snapshots().unwrap().len(), 1);
}
