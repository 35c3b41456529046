//! The materialization cache of snapshot views, through real
//! `mount-snapshot` mounts: a file opened again is copied (verified) into
//! REPO/cache/materialized and later opens are served by kernel
//! passthrough from the copy; a changed or damaged copy is never served;
//! a damaged pack is never copied; the cache stays within its size; a
//! forgotten snapshot's copies go with it. Needs root (passthrough).

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{bytes, ok, status, SnapMount};

const MIB: usize = 1 << 20;

fn materialized(repo: &Path) -> serde_json::Value {
    status(repo)["materialized"].clone()
}

fn count(repo: &Path, field: &str) -> u64 {
    materialized(repo)[field]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no materialized.{field}: {}", materialized(repo)))
}

/// Wait until the cache's `field` reaches `want`.
fn wait_for(repo: &Path, field: &str, want: u64) {
    let t = Instant::now();
    while count(repo, field) < want {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "materialized.{field} never reached {want}: {}\ndaemon log:\n{}",
            materialized(repo),
            log_tail(repo)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The end of the daemon's log (why a copy was not made: e.g. a disk
/// with less free space than the cache leaves).
fn log_tail(repo: &Path) -> String {
    let log = fs::read_to_string(repo.join("daemon.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// The copies on disk: (data files, record files).
fn copies(repo: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let dir = repo.join("cache/materialized");
    let mut data = Vec::new();
    let mut recs = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        match p.extension().and_then(|x| x.to_str()) {
            Some("data") => data.push(p),
            Some("rec") => recs.push(p),
            _ => {}
        }
    }
    (data, recs)
}

fn setup(files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo) = (tmp.path().join("src"), tmp.path().join("repo"));
    fs::create_dir_all(&src).unwrap();
    for (n, d) in files {
        fs::write(src.join(n), d).unwrap();
    }
    ok(&repo, &["init"]);
    ok(&repo, &["snapshot", "--source", src.to_str().unwrap()]);
    (tmp, src, repo)
}

/// Open and read `p` until the cache has copied `want` files (the opens
/// that trigger a copy depend on when the worker gets to it).
fn read_until_promoted(repo: &Path, p: &Path, expect: &[u8], want: u64) {
    let t = Instant::now();
    while count(repo, "promoted") < want {
        assert_eq!(read(p).unwrap(), expect);
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "never copied: {}\ndaemon log:\n{}",
            materialized(repo),
            log_tail(repo)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Read the whole file at `p` through a fresh open.
fn read(p: &Path) -> std::io::Result<Vec<u8>> {
    fs::read(p)
}

#[test]
fn a_file_opened_again_is_served_from_its_verified_copy_and_a_changed_copy_never() {
    let big = bytes(1, 5 * MIB + 123);
    let (tmp, _src, repo) = setup(&[("big.bin", big.clone()), ("small", b"tiny".to_vec())]);
    let mp = tmp.path().join("mnt");
    let m = SnapMount::start(&repo, &mp, &["--materialize-cache", "64M", "1"]);
    // First open: served by the daemon, nothing copied.
    assert_eq!(read(&mp.join("big.bin")).unwrap(), big);
    assert_eq!(count(&repo, "promoted"), 0);
    // Second open: copied in the background.
    assert_eq!(read(&mp.join("big.bin")).unwrap(), big);
    wait_for(&repo, "promoted", 1);
    let (data, recs) = copies(&repo);
    assert_eq!((data.len(), recs.len()), (1, 1));
    assert_eq!(
        fs::read(&data[0]).unwrap(),
        big,
        "the copy is the snapshot's file"
    );
    assert_eq!(
        fs::metadata(&data[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let dir_mode = fs::metadata(repo.join("cache/materialized"))
        .unwrap()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    // Third open: passthrough from the copy, same bytes; mmap too.
    let before = count(&repo, "passthrough_opens");
    assert_eq!(read(&mp.join("big.bin")).unwrap(), big);
    assert_eq!(count(&repo, "passthrough_opens"), before + 1);
    let f = fs::File::open(mp.join("big.bin")).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 3 * MIB as u64 + 17).unwrap();
    assert_eq!(buf, big[3 * MIB + 17..3 * MIB + 17 + 4096]);
    drop(f);
    // Small files are never copied.
    for _ in 0..3 {
        assert_eq!(read(&mp.join("small")).unwrap(), b"tiny");
    }
    assert_eq!(copies(&repo).0.len(), 1);

    // The copy is changed behind the daemon's back: the next open sees
    // it (its identity changed), deletes it, and serves the snapshot.
    let bad = fs::OpenOptions::new().write(true).open(&data[0]).unwrap();
    bad.write_all_at(b"XXXX", 100).unwrap();
    drop(bad);
    let rejected = count(&repo, "rejected");
    assert_eq!(read(&mp.join("big.bin")).unwrap(), big);
    assert_eq!(count(&repo, "rejected"), rejected + 1);
    assert!(!data[0].exists(), "a changed copy is deleted");

    // Damage that leaves the copy's identity as recorded (what bit rot
    // under the filesystem would do): after a restart the copy is read
    // back before it is trusted, and rejected.
    read_until_promoted(&repo, &mp.join("big.bin"), &big, 2);
    drop(m);
    let (data, recs) = copies(&repo);
    let bad = fs::OpenOptions::new().write(true).open(&data[0]).unwrap();
    bad.write_all_at(b"YYYY", 2 * MIB as u64).unwrap();
    drop(bad);
    let st = fs::metadata(&data[0]).unwrap();
    let mut rec: serde_json::Value = serde_json::from_slice(&fs::read(&recs[0]).unwrap()).unwrap();
    rec["identity"]["mtime_ns"] = (st.mtime() * 1_000_000_000 + st.mtime_nsec()).into();
    rec["identity"]["ctime_ns"] = (st.ctime() * 1_000_000_000 + st.ctime_nsec()).into();
    fs::write(&recs[0], serde_json::to_vec(&rec).unwrap()).unwrap();
    let _m = SnapMount::start(&repo, &mp, &["--materialize-cache", "64M", "1"]);
    assert_eq!(count(&repo, "files"), 1, "the copy is found on disk");
    for _ in 0..2 {
        assert_eq!(read(&mp.join("big.bin")).unwrap(), big);
    }
    wait_for(&repo, "rejected", 1);
    assert_eq!(
        count(&repo, "passthrough_opens"),
        0,
        "never served before it was read back"
    );
    assert!(
        !data[0].exists(),
        "a copy that does not match its chunks is deleted"
    );
    // Copied again, and then served.
    read_until_promoted(&repo, &mp.join("big.bin"), &big, 1);
    assert_eq!(read(&mp.join("big.bin")).unwrap(), big);
    assert_eq!(count(&repo, "passthrough_opens"), 1);
}

#[test]
fn a_damaged_pack_is_never_copied_and_reads_fail_with_eio() {
    let good = bytes(2, 3 * MIB);
    let hurt = bytes(3, 3 * MIB);
    let (tmp, _src, repo) = setup(&[("good.bin", good.clone()), ("hurt.bin", hurt.clone())]);
    // Flip a byte in the stored payload of the chunk of hurt.bin that
    // holds its third MiB (in content chunks: far enough from the start
    // that a read of the first page, with the kernel's read-ahead, does
    // not reach it).
    let damaged_at;
    {
        let r = rewindfs::repo::Repository::open(&repo).unwrap();
        let rec = r.snapshots().unwrap().remove(0);
        let tree = r.resolve(&rec).unwrap();
        let (_, node) = tree.get(b"hurt.bin").unwrap();
        let spans = rewindfs::snapshot::spans::Spans::of(node, MIB as u32).unwrap();
        let i = spans.find(2 * MIB as u64 + 100);
        damaged_at = spans.span(i).0;
        let id = rewindfs::snapshot::Tree::blocks_of(node)[i];
        let loc = r.index().get_chunk(&id).unwrap().unwrap();
        let pack = r.pack_reader().pack_path(loc.pack);
        let mut data = fs::read(&pack).unwrap();
        data[(loc.offset + 88 + 1000) as usize] ^= 0x40;
        fs::write(&pack, data).unwrap();
    }
    let mp = tmp.path().join("mnt");
    let _m = SnapMount::start(&repo, &mp, &["--materialize-cache", "64M", "1"]);
    for _ in 0..2 {
        let e = read(&mp.join("hurt.bin")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        assert_eq!(read(&mp.join("good.bin")).unwrap(), good);
    }
    wait_for(&repo, "failed", 1);
    wait_for(&repo, "promoted", 1);
    let (data, _) = copies(&repo);
    assert_eq!(data.len(), 1, "only the intact file is copied");
    assert_eq!(fs::read(&data[0]).unwrap(), good);
    // Later opens of the damaged file still fail, never give bytes.
    let f = fs::File::open(mp.join("hurt.bin")).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, hurt[..4096]);
    let e = f.read_exact_at(&mut buf, damaged_at + 10).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
}

#[test]
fn the_cache_stays_within_its_size_and_forgotten_snapshots_take_their_copies() {
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("f{i}.bin"), bytes(10 + i, 3 * MIB)))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo) = (tmp.path().join("src"), tmp.path().join("repo"));
    fs::create_dir_all(&src).unwrap();
    for (n, d) in &files {
        fs::write(src.join(n), d).unwrap();
    }
    ok(&repo, &["init"]);
    ok(&repo, &["snapshot", "--source", src.to_str().unwrap()]);
    // Snapshot 2: f0 changed, f1 and f2 the same.
    let f0b = bytes(99, 3 * MIB);
    fs::write(src.join("f0.bin"), &f0b).unwrap();
    ok(&repo, &["snapshot", "--source", src.to_str().unwrap()]);
    let mp = tmp.path().join("mnt");
    // 7 MiB: two copies of 3 MiB fit, not three.
    let _m = SnapMount::start(&repo, &mp, &["--materialize-cache", "7M", "--all"]);
    let name = |id: u64| -> String {
        let list: serde_json::Value =
            serde_json::from_str(&ok(&repo, &["snapshots", "--json"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (s1, s2) = (mp.join(name(1)), mp.join(name(2)));
    let mut promoted = 0;
    for (n, d) in &files {
        for _ in 0..2 {
            assert_eq!(read(&s1.join(n)).unwrap(), *d);
        }
        promoted += 1;
        wait_for(&repo, "promoted", promoted);
        // Opened again (a later last use than the copies before it).
        assert_eq!(read(&s1.join(n)).unwrap(), *d);
    }
    assert!(
        count(&repo, "bytes") <= 7 * MIB as u64,
        "{}",
        materialized(&repo)
    );
    assert_eq!(count(&repo, "evicted"), 1);
    let (data, _) = copies(&repo);
    assert_eq!(data.len(), 2);
    let on_disk: u64 = data.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert!(on_disk <= 7 * MIB as u64, "{on_disk}");
    // The least recently used copy went: f0's.
    assert!(data.iter().all(|p| fs::read(p).unwrap() != files[0].1));
    // Every file still reads right (the evicted one through the daemon).
    for (n, d) in &files {
        assert_eq!(read(&s1.join(n)).unwrap(), *d);
    }
    // f2's copy serves snapshot 2 as well (same content): its record
    // names both snapshots.
    assert_eq!(read(&s2.join("f2.bin")).unwrap(), files[2].1);
    assert_eq!(read(&s2.join("f0.bin")).unwrap(), f0b);
    let t = Instant::now();
    let f2_copy = loop {
        let (data, recs) = copies(&repo);
        let hit = recs.iter().zip(&data).find(|(r, _)| {
            let v: serde_json::Value = serde_json::from_slice(&fs::read(r).unwrap()).unwrap();
            v["snapshots"] == serde_json::json!([1, 2])
        });
        if let Some((r, d)) = hit {
            break (r.clone(), d.clone());
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no copy names snapshots 1 and 2"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(fs::read(&f2_copy.1).unwrap(), files[2].1);
    // Forget snapshot 1: copies used by it alone go, f2's stays (for 2).
    ok(&repo, &["forget", "1"]);
    let (data, recs) = copies(&repo);
    assert_eq!(data.len(), 1, "{data:?}");
    assert_eq!(recs, vec![f2_copy.0.clone()]);
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&recs[0]).unwrap()).unwrap();
    assert_eq!(v["snapshots"], serde_json::json!([2]));
    assert_eq!(read(&s2.join("f2.bin")).unwrap(), files[2].1);
}

/// `.snapshots` of a live mount: the same cache, and a copy that changes
/// while the kernel holds it open makes new opens fail with EIO (never
/// bytes that are not the snapshot's); once it is closed, the file is
/// served by the daemon again.
#[test]
fn live_snapshots_are_served_from_copies_and_a_copy_changed_while_open_fails_new_opens() {
    let (_tmp, backing, mnt, repo) = common::mount_dirs();
    let r = repo.to_str().unwrap();
    let m = common::live::DaemonMount::start(
        &backing,
        &mnt,
        &[
            "--repo",
            r,
            "--every",
            "off",
            "--full-every",
            "off",
            "--materialize-cache",
            "64M",
        ],
    );
    let big = bytes(5, 4 * MIB + 7);
    fs::write(mnt.join("big.bin"), &big).unwrap();
    ok(&repo, &["snapshot"]);
    let p = mnt.join(".snapshots/latest/big.bin");
    read_until_promoted(&repo, &p, &big, 1);
    let before = count(&repo, "passthrough_opens");
    let held = fs::File::open(&p).unwrap();
    assert_eq!(count(&repo, "passthrough_opens"), before + 1);
    let mut buf = vec![0u8; 4096];
    held.read_exact_at(&mut buf, MIB as u64).unwrap();
    assert_eq!(buf, big[MIB..MIB + 4096]);
    // The live file is unaffected by all this.
    assert_eq!(fs::read(mnt.join("big.bin")).unwrap(), big);
    let (data, _) = copies(&repo);
    let bad = fs::OpenOptions::new().write(true).open(&data[0]).unwrap();
    bad.write_all_at(b"ZZZZ", 10).unwrap();
    drop(bad);
    let e = fs::File::open(&p).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    drop(held);
    // Closed: the changed copy is dropped and the daemon serves the file.
    let t = Instant::now();
    loop {
        match read(&p) {
            Ok(v) => {
                assert_eq!(v, big);
                break;
            }
            // The RELEASE of the held descriptor may still be on its way.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                assert!(t.elapsed() < Duration::from_secs(10), "{e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(count(&repo, "rejected") >= 2, "{}", materialized(&repo));
    assert!(!data[0].exists());
    m.umount();
}
