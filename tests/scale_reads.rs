//! Costs that follow the change, not the tree (counted in objects, not
//! timed): in a tree of 100,000 files, snapshots that change 3 files
//! store a bounded number of new directory objects; comparing adjacent
//! snapshots, looking up a path and listing the snapshots' unique sizes
//! (once cached) read a bounded number of them; a first `ls -l` of a
//! directory in `.snapshots` (old or new snapshot) reads the directories
//! on its way; verify reads each shared directory once.
//!
//! One test in this file: the counters are per process.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use rewindfs::repo::Repository;
use rewindfs::snapshot::{diff::diff, Kind, SnapshotRecord};

const FILES: usize = 100_000;
const PER_DIR: usize = 100;

fn path(i: usize) -> String {
    let d = i / PER_DIR;
    format!("t{:02}/d{:04}/f{:06}", d / 100, d, i)
}

fn scan(repo: &Repository, src: &Path, kind: Kind) -> SnapshotRecord {
    common::scan_record(repo, src, kind, 0)
}

#[test]
fn small_changes_in_a_large_tree_cost_little() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for i in 0..FILES {
        let p = src.join(path(i));
        if i % PER_DIR == 0 {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
        }
        fs::write(&p, format!("file {i}\n")).unwrap();
    }
    // Files changed within the filesystem's timestamp tick of a capture
    // are recorded as racily clean and compared again by the next one:
    // let the tick pass so that only the real changes count.
    let settle = || std::thread::sleep(std::time::Duration::from_millis(200));
    settle();
    let repo_dir = tmp.path().join("repo");
    Repository::init(&repo_dir, 64 << 10, 3).unwrap();
    let repo = Arc::new(Repository::open(&repo_dir).unwrap());
    let full = scan(&repo, &src, Kind::Full);
    assert_eq!(full.stats.files, FILES as u64);
    let mut recs = vec![full];
    for round in 0..5usize {
        // Three files in three different directories.
        for k in 0..3 {
            let i = (round * 7919 + k * 33_331) % FILES;
            fs::write(src.join(path(i)), format!("changed {round} {k}\n")).unwrap();
        }
        settle();
        let rec = scan(&repo, &src, Kind::Incremental);
        assert_eq!(rec.stats.changed_entries, 3, "round {round}");
        // 3 data chunks, and per changed file its directory and the two
        // above it, the root once, plus the root manifest: at most 13
        // new blobs whatever the size of the tree.
        assert!(
            rec.stats.new_chunks <= 3 + 3 * 2 + 1 + 1 + 2,
            "round {round}: {} new blobs",
            rec.stats.new_chunks
        );
        recs.push(rec);
    }
    // Adjacent diff: the changed directories and their ancestors on both
    // sides (2 x (3 x 2 + 1) objects), not the 1,000 directories.
    let (a, b) = (&recs[4], &recs[5]);
    let before = Repository::dir_objects_read();
    let (ta, tb) = repo.changed_pair(a, b).unwrap();
    let read = Repository::dir_objects_read() - before;
    assert!(read <= 14, "adjacent diff read {read} directory objects");
    let changes = diff(&ta, &tb, b"");
    assert_eq!(changes.len(), 3, "{changes:?}");
    // The same changes as comparing the whole trees.
    let (fa, fb) = (repo.resolve(a).unwrap(), repo.resolve(b).unwrap());
    assert_eq!(diff(&fa, &fb, b""), changes);
    // Distant diff: still only what differs (5 rounds of 3 files).
    let before = Repository::dir_objects_read();
    let (ta, tb) = repo.changed_pair(&recs[0], &recs[5]).unwrap();
    let read = Repository::dir_objects_read() - before;
    assert!(read <= 2 * (15 * 2 + 1), "distant diff read {read}");
    assert_eq!(
        diff(&ta, &tb, b""),
        diff(&repo.resolve(&recs[0]).unwrap(), &fb, b"")
    );
    // Looking up one path reads the directories on its way.
    let before = Repository::dir_objects_read();
    let hit = repo.lookup(b, path(12_345).as_bytes()).unwrap();
    assert!(hit.is_some());
    assert_eq!(Repository::dir_objects_read() - before, 3);
    // `.snapshots`: opening a snapshot and listing one directory with
    // attributes (what a first `ls -l` asks) reads the directories on the
    // way to it, in the newest snapshot and in the oldest one alike; the
    // node numbers stay the same once the directories are dropped.
    let views = rewindfs::views::Views::new(repo.clone(), 1 << 20, Default::default());
    let mut first_listing = Vec::new();
    for rec in [b, &recs[0]] {
        let before = Repository::dir_objects_read();
        let (root, _) = views
            .lookup(rewindfs::views::SNAPDIR, OsStr::new(&rec.name))
            .unwrap();
        let comps = ["t01", "d0123"];
        let mut node = root.ino.0;
        for c in comps {
            node = views.lookup(node, OsStr::new(c)).unwrap().0.ino.0;
        }
        let listing = views.readdir(node, root.ino.0).unwrap();
        assert_eq!(listing.len(), 2 + PER_DIR);
        for (n, _, name) in &listing[2..] {
            let (attr, _) = views.getattr(*n).unwrap();
            assert_eq!(attr.ino.0, *n, "{}", String::from_utf8_lossy(name));
        }
        let read = Repository::dir_objects_read() - before;
        assert!(
            read <= 3,
            "first ls -l in snapshot {} read {read} directory objects",
            rec.id
        );
        first_listing.push(listing);
    }
    assert_eq!(first_listing[0].len(), first_listing[1].len());
    // Unique sizes: computed once for this list, then read from the cache.
    let first = rewindfs::retention::space::unique_bytes(&repo).unwrap();
    let before = Repository::dir_objects_read();
    let again = rewindfs::retention::space::unique_bytes(&repo).unwrap();
    assert_eq!(Repository::dir_objects_read() - before, 0);
    assert_eq!(first, again);
    // And they are right: the full snapshot alone holds the old chunks of
    // the 15 files changed later; the chunks an incremental wrote stay in
    // every later snapshot (nothing changed them again), so only the last
    // one has chunks of its own.
    let space = rewindfs::retention::space::space(&repo).unwrap();
    for s in &space.snapshots {
        assert_eq!(first[&s.id], s.unique_bytes);
    }
    // verify checks each distinct directory object once (1,011 in the
    // full's tree, at most 7 new per incremental), not once per snapshot
    // (6 x 1,011), and finds nothing wrong.
    let before = Repository::dir_objects_read();
    let report = rewindfs::verify::verify(&repo, false).unwrap();
    let read = Repository::dir_objects_read() - before;
    assert!(report.ok(), "{:?}", report.damaged);
    assert!(read <= 1011 + 5 * 7, "verify read {read} directory objects");
    assert!(first[&recs[0].id] > 0);
    assert_eq!(first[&recs[2].id], 0);
    assert!(first[&recs[5].id] > 0);
    assert_eq!(space.snapshots[0].files, FILES as u64);
}
