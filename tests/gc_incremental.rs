//! gc after a forget looks only at what the forgotten snapshots
//! referenced: no directory object is read, the objects it looks at
//! follow the forgotten snapshots' changes (not the tree), and what it
//! deletes is exactly what no remaining snapshot references (the oracle:
//! every remaining record's references marked the slow way, the way a
//! full gc marks). When that list cannot be trusted (an unclean stop, a
//! capture that gave up, a damaged list), gc marks everything by itself.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use rewindfs::repo::candidates::{CANDIDATES, GC_DIR, SESSION};
use rewindfs::repo::layout::CACHE;
use rewindfs::repo::Repository;
use rewindfs::retention::forget::{forget, Target};
use rewindfs::retention::gc::{gc, GcOptions, GcReport};
use rewindfs::snapshot::Kind;
use rewindfs::store::ChunkId;

const BS: usize = 64 << 10;

fn scan(repo: &Repository, src: &Path, kind: Kind) -> u64 {
    common::scan_record(repo, src, kind, 0).id
}

/// Every object the snapshots reference, marked from their trees.
fn referenced(repo: &Repository) -> HashSet<ChunkId> {
    let mut seen = HashSet::new();
    let mut out = HashSet::new();
    for r in repo.snapshots().unwrap() {
        repo.references(&r, &mut seen, &mut out).unwrap();
    }
    out
}

fn indexed(repo: &Repository) -> HashSet<ChunkId> {
    repo.index()
        .chunks()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

fn run_gc(repo: &Repository, full: bool) -> GcReport {
    gc(
        repo,
        &GcOptions {
            repack_below: 0.5,
            dry_run: false,
            full,
        },
    )
    .unwrap()
}

/// Content `v`: one block, the same `v` gives the same chunk.
fn content(v: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096 + (v % 7) as usize * 100];
    let mut x = v.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for c in b.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *c = x as u8;
    }
    b
}

fn forget_ids(repo: &Repository, ids: &[u64]) {
    forget(repo, Target::Ids(ids.iter().copied().collect()), false).unwrap();
}

fn new_repo(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf, Repository) {
    let src = tmp.join("src");
    let repo_dir = tmp.join("repo");
    Repository::init(&repo_dir, BS as u32, 3).unwrap();
    let repo = Repository::open(&repo_dir).unwrap();
    (src, repo_dir, repo)
}

#[test]
fn gc_after_a_forget_reads_no_tree_and_deletes_exactly_what_it_released() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, _repo_dir, repo) = new_repo(tmp.path());
    // 2,000 files in 40 directories; then incrementals of a few changes
    // each: contents only one snapshot has, contents that come back
    // later, copies, a removed and a new directory.
    let file = |d: u64, f: u64| src.join(format!("d{d:02}")).join(format!("f{f:03}"));
    for d in 0..40 {
        fs::create_dir_all(src.join(format!("d{d:02}"))).unwrap();
        for f in 0..50 {
            fs::write(file(d, f), content(d * 1000 + f)).unwrap();
        }
    }
    let mut ids = vec![scan(&repo, &src, Kind::Full)];
    for round in 0..10u64 {
        for k in 0..4u64 {
            let (d, f) = ((round * 7 + k * 3) % 40, (round * 11 + k) % 50);
            let v = match k {
                0 => 500_000 + round,         // only this snapshot
                1 => 600_000 + round % 3,     // comes back
                2 => d * 1000 + (f + 1) % 50, // a copy of a neighbour
                _ => 700_000 + round,
            };
            fs::write(file(d, f), content(v)).unwrap();
        }
        if round == 4 {
            fs::remove_dir_all(src.join("d39")).unwrap();
        }
        if round == 6 {
            fs::create_dir_all(src.join("new")).unwrap();
            fs::write(src.join("new/x"), content(800_000)).unwrap();
        }
        ids.push(scan(&repo, &src, Kind::Incremental));
    }
    // A new repository starts with an empty, trusted list: its first gc
    // is incremental and finds nothing to do.
    assert!(repo.gc_candidates_trusted());
    let r = run_gc(&repo, false);
    assert_eq!(r.mode, "incremental", "{r:?}");
    assert_eq!(r.candidates, 0, "{r:?}");
    assert_eq!(indexed(&repo), referenced(&repo));
    let total = indexed(&repo).len() as u64;
    assert!(repo.gc_candidates_trusted());

    // Forget one snapshot in the middle, then two adjacent ones, then the
    // first (the full one): each gc is incremental, reads no directory
    // object, looks at a handful of objects, and leaves the index
    // holding exactly what the remaining snapshots reference.
    for (step, gone) in [
        vec![ids[3]],
        vec![ids[5], ids[6]],
        vec![ids[0]],
        vec![ids[1], ids[2], ids[4]],
    ]
    .into_iter()
    .enumerate()
    {
        let before = indexed(&repo);
        forget_ids(&repo, &gone);
        let want = referenced(&repo);
        let reads = Repository::dir_objects_read();
        let r = run_gc(&repo, false);
        let read = Repository::dir_objects_read() - reads;
        assert_eq!(r.mode, "incremental", "step {step}: {r:?}");
        assert_eq!(read, 0, "step {step}: gc read {read} directory objects");
        assert!(
            r.candidates <= 40 * gone.len() as u64 + 40,
            "step {step}: {} candidates for {} forgotten snapshots of ~4 changes each (of {total} objects)",
            r.candidates,
            gone.len()
        );
        let after = indexed(&repo);
        assert_eq!(after, want, "step {step}: the index after gc");
        assert_eq!(
            r.deleted_chunks,
            (before.len() - after.len()) as u64,
            "step {step}"
        );
        assert!(r.deleted_chunks > 0, "step {step}: {r:?}");
        // A full gc finds nothing more.
        let again = run_gc(&repo, true);
        assert_eq!(again.deleted_chunks, 0, "step {step}: {again:?}");
    }
    let v = rewindfs::verify::verify(&repo, true).unwrap();
    assert!(v.ok(), "{v:?}");
}

#[test]
fn gc_marks_everything_when_the_list_cannot_be_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo_dir, repo) = new_repo(tmp.path());
    fs::create_dir_all(&src).unwrap();
    let mut ids = Vec::new();
    for i in 0..6u64 {
        fs::write(src.join(format!("f{i}")), content(i)).unwrap();
        fs::write(src.join("changing"), content(100 + i)).unwrap();
        let kind = if i == 0 {
            Kind::Full
        } else {
            Kind::Incremental
        };
        ids.push(scan(&repo, &src, kind));
    }
    // A repository made before the list existed has none: its first gc
    // marks everything, and starts the list.
    let list = repo_dir.join(CACHE).join(GC_DIR).join(CANDIDATES);
    fs::remove_file(&list).unwrap();
    assert!(!repo.gc_candidates_trusted());
    assert_eq!(run_gc(&repo, false).mode, "full");
    forget_ids(&repo, &[ids[0]]);
    assert_eq!(run_gc(&repo, false).mode, "incremental");

    // A process that held the repository stopped without closing it: its
    // session marker is still there when the repository is next opened.
    drop(repo);
    let gc_dir = repo_dir.join(CACHE).join(GC_DIR);
    assert!(!gc_dir.join(SESSION).exists(), "closing removes the marker");
    fs::write(gc_dir.join(SESSION), b"").unwrap();
    let repo = Repository::open(&repo_dir).unwrap();
    assert!(!repo.gc_candidates_trusted());
    forget_ids(&repo, &[ids[1]]);
    let r = run_gc(&repo, false);
    assert_eq!(r.mode, "full", "{r:?}");
    assert_eq!(indexed(&repo), referenced(&repo));

    // A damaged list.
    forget_ids(&repo, &[ids[2]]);
    let mut b = fs::read(&list).unwrap();
    let n = b.len();
    b[n - 5] ^= 1;
    fs::write(&list, &b).unwrap();
    assert_eq!(run_gc(&repo, false).mode, "full");
    assert_eq!(indexed(&repo), referenced(&repo));

    // A capture that stored chunks, then gave up.
    forget_ids(&repo, &[ids[3]]);
    {
        let w = repo.writer().unwrap();
        w.store(
            rewindfs::store::BlobKind::Chunk,
            w.id(&content(9_999)),
            &content(9_999),
        )
        .unwrap();
        w.commit().unwrap();
        w.abort();
    }
    assert!(!repo.gc_candidates_trusted());
    let r = run_gc(&repo, false);
    assert_eq!(r.mode, "full", "{r:?}");
    assert_eq!(
        indexed(&repo),
        referenced(&repo),
        "the given-up chunk is gone"
    );

    // And back to incremental once a full gc ran.
    forget_ids(&repo, &[ids[4]]);
    let r = run_gc(&repo, false);
    assert_eq!(r.mode, "incremental", "{r:?}");
    assert_eq!(indexed(&repo), referenced(&repo));
}
