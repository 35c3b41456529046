//! A capture's commit indexes every chunk it stored and no other, also
//! when the writer's list of what it appended outgrew memory and went to
//! its file (past 65,536 chunks: `repo::appended`), from several threads
//! storing at once with duplicates among them.

use std::collections::HashSet;

use rewindfs::repo::Repository;
use rewindfs::store::BlobKind;

fn content(i: u64) -> Vec<u8> {
    let mut v = format!("chunk {i} ").into_bytes();
    v.resize(64 + (i % 50) as usize, (i % 251) as u8);
    v
}

#[test]
fn a_commit_larger_than_the_in_memory_list_indexes_every_chunk_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    Repository::init(&root, 64 << 10, 1).unwrap();
    let repo = Repository::open(&root).unwrap();
    let before = repo.index().chunk_count();
    let n = 150_000u64;
    let w = repo.writer().unwrap();
    let new = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (w, new) = (&w, &new);
            s.spawn(move || {
                // Each thread stores a third, then everything again in
                // another order: every id is offered three times or more.
                for i in (t..n).step_by(3).chain((0..n).rev().step_by(7)) {
                    let d = content(i);
                    if w.store(BlobKind::Chunk, w.id(&d), &d).unwrap() {
                        new.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    w.commit().unwrap();
    assert_eq!(new.into_inner(), n, "each chunk is new exactly once");
    let ids: HashSet<_> = repo
        .index()
        .chunks()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len() - before, n as usize);
    for i in (0..n).step_by(997).chain([n - 1]) {
        let d = content(i);
        let id = repo.chunk_id(&d);
        assert!(ids.contains(&id), "chunk {i} is indexed");
        assert_eq!(repo.read_blob(&id).unwrap(), d, "chunk {i} reads back");
    }
    // Nothing is left to index: a second commit adds nothing.
    w.commit().unwrap();
    assert_eq!(repo.index().chunk_count() - before, n as usize);
    drop(w);
    // And a reopened repository sees the same.
    drop(repo);
    let repo = Repository::open(&root).unwrap();
    assert_eq!(repo.index().chunk_count() - before, n as usize);
}
