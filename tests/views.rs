//! Snapshot views: every snapshot directory equals the tree it captured;
//! snapshot paths are read-only; a damaged chunk gives EIO on its range
//! only; mount-snapshot works with and without a live mount.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::live::{DaemonMount, FlushedMount};
use common::{assert_same, bytes, model, mount_dirs, ok};
use rewindfs::snapshot::{Kind, SnapshotRecord};

const BS: u32 = 64 << 10;

fn snapdir(m: &FlushedMount, rec: &SnapshotRecord) -> PathBuf {
    m.mnt.join(".snapshots").join(&rec.name)
}

fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn every_snapshot_directory_equals_the_tree_it_captured() {
    let m = FlushedMount::with(BS, Default::default(), |b| {
        fs::create_dir_all(b.join("ckpt")).unwrap();
        fs::create_dir_all(b.join("data/sub")).unwrap();
        fs::write(b.join("ckpt/a.bin"), bytes(1, 300_000)).unwrap();
        fs::write(b.join("data/sub/x.txt"), b"hello").unwrap();
        fs::write(b.join("empty"), b"").unwrap();
        std::os::unix::fs::symlink("ckpt/a.bin", b.join("link")).unwrap();
        fs::hard_link(b.join("data/sub/x.txt"), b.join("data/hard")).unwrap();
    });
    let mut expected: Vec<(SnapshotRecord, PathBuf)> = Vec::new();
    let take = |m: &FlushedMount, kind: Kind, expected: &mut Vec<(SnapshotRecord, PathBuf)>| {
        let rec = m.snapshot(kind);
        let copy = m.tmp.path().join(format!("expected-{}", rec.id));
        copy_tree(&m.backing, &copy);
        expected.push((rec, copy));
    };
    take(&m, Kind::Full, &mut expected);
    // Modify through the mount between snapshots.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.mnt.join("ckpt/a.bin"))
        .unwrap();
    f.write_all_at(&bytes(2, 70_000), 100_000).unwrap();
    drop(f);
    fs::write(m.mnt.join("data/new.txt"), b"new").unwrap();
    take(&m, Kind::Incremental, &mut expected);
    fs::remove_file(m.mnt.join("data/sub/x.txt")).unwrap();
    fs::set_permissions(m.mnt.join("ckpt/a.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(m.mnt.join("data"), m.mnt.join("data2")).unwrap();
    take(&m, Kind::Differential, &mut expected);
    fs::write(m.mnt.join("ckpt/b.bin"), bytes(3, 200_000)).unwrap();
    let xf = fs::File::open(m.mnt.join("ckpt/b.bin")).unwrap();
    rustix::fs::fsetxattr(&xf, "user.tag", b"v3", rustix::fs::XattrFlags::empty()).unwrap();
    drop(xf);
    take(&m, Kind::Incremental, &mut expected);
    fs::OpenOptions::new()
        .write(true)
        .open(m.mnt.join("ckpt/b.bin"))
        .unwrap()
        .set_len(10)
        .unwrap();
    take(&m, Kind::Full, &mut expected);

    // .snapshots is hidden from the listing but reachable.
    let names: Vec<String> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n == ".snapshots"), "{names:?}");
    let listed: Vec<String> = fs::read_dir(m.mnt.join(".snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed.len(), expected.len() + 1, "{listed:?}");
    assert_eq!(
        fs::read_link(m.mnt.join(".snapshots/latest")).unwrap(),
        PathBuf::from(&expected.last().unwrap().0.name)
    );
    for (rec, copy) in &expected {
        let dir = snapdir(&m, rec);
        assert_same(
            &model(copy),
            &model(&dir),
            &format!("snapshot {} ({:?})", rec.id, rec.kind),
        );
        // Real clients agree: find and diff -r.
        let count = |p: &Path| {
            String::from_utf8(Command::new("find").arg(p).output().unwrap().stdout)
                .unwrap()
                .lines()
                .count()
        };
        assert_eq!(count(copy), count(&dir));
        let st = Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(copy)
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "diff -r differs for snapshot {}", rec.id);
    }
    // @TIME resolves to the newest snapshot at or before it.
    let at = format!("@{}", expected[1].0.time);
    let target = fs::read_link(m.mnt.join(".snapshots").join(&at)).unwrap();
    assert!(target.to_str().unwrap() >= expected[1].0.name.as_str());
}

#[test]
fn every_mutation_of_a_snapshot_path_fails_with_erofs() {
    let m = FlushedMount::with(BS, Default::default(), |b| {
        fs::create_dir_all(b.join("d")).unwrap();
        fs::write(b.join("d/f"), b"content").unwrap();
    });
    let rec = m.snapshot(Kind::Full);
    let s = snapdir(&m, &rec);
    let erofs = |what: &str, r: std::io::Result<()>| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(
        "open for write",
        fs::OpenOptions::new()
            .write(true)
            .open(s.join("d/f"))
            .map(|_| ()),
    );
    erofs("create", fs::File::create(s.join("d/new")).map(|_| ()));
    erofs("mkdir", fs::create_dir(s.join("d/x")));
    erofs("unlink", fs::remove_file(s.join("d/f")));
    erofs("rmdir", fs::remove_dir(s.join("d")));
    erofs("rename", fs::rename(s.join("d/f"), s.join("d/g")));
    erofs(
        "rename out",
        fs::rename(s.join("d/f"), m.mnt.join("stolen")),
    );
    erofs("link", fs::hard_link(s.join("d/f"), s.join("d/h")));
    erofs("symlink", std::os::unix::fs::symlink("f", s.join("d/l")));
    erofs(
        "chmod",
        fs::set_permissions(s.join("d/f"), fs::Permissions::from_mode(0o777)),
    );
    erofs(
        "chown",
        std::os::unix::fs::chown(s.join("d/f"), Some(1), Some(1)),
    );
    let t = Command::new("truncate")
        .args(["-s", "0"])
        .arg(s.join("d/f"))
        .output()
        .unwrap();
    assert!(
        !t.status.success() && String::from_utf8_lossy(&t.stderr).contains("Read-only"),
        "truncate"
    );
    erofs(
        "utimes",
        rustix::fs::utimensat(
            rustix::fs::CWD,
            s.join("d/f"),
            &rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                },
            },
            rustix::fs::AtFlags::empty(),
        )
        .map_err(Into::into),
    );
    erofs(
        "setxattr",
        rustix::fs::setxattr(
            s.join("d/f"),
            "user.x",
            b"1",
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(Into::into),
    );
    erofs(
        "mknod",
        rustix::fs::mknodat(
            rustix::fs::CWD,
            s.join("d/p"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .map_err(Into::into),
    );
    // Nothing changed, in the snapshot or in the live tree.
    assert_eq!(fs::read(s.join("d/f")).unwrap(), b"content");
    assert_eq!(fs::read_dir(s.join("d")).unwrap().count(), 1);
    assert!(!m.backing.join("stolen").exists());
    let again = m.files_of(rec.id);
    assert_eq!(again.len(), 1);
}

#[test]
fn a_damaged_chunk_gives_eio_on_its_range_only() {
    let m = FlushedMount::with(BS, Default::default(), |b| {
        fs::write(b.join("a.bin"), bytes(10, 3 * BS as usize)).unwrap();
        fs::write(b.join("b.bin"), bytes(11, 2 * BS as usize)).unwrap();
    });
    let rec = m.snapshot(Kind::Full);
    // Flip a byte inside chunk 1 of a.bin, in the pack.
    let tree = m.repo.resolve(&rec).unwrap();
    let (_, node) = tree.get(b"a.bin").unwrap();
    // (a.bin is in content chunks: three blocks, read whole.)
    let spans = rewindfs::snapshot::spans::Spans::of(node, BS).unwrap();
    let ((one, _), (two, _)) = (spans.span(1), spans.span(2));
    let id = rewindfs::snapshot::Tree::blocks_of(node)[1];
    let loc = m.repo.index().get_chunk(&id).unwrap().unwrap();
    let pack = m.repo.pack_reader().pack_path(loc.pack);
    let mut data = fs::read(&pack).unwrap();
    data[(loc.offset + 88 + 100) as usize] ^= 0x10;
    fs::write(&pack, data).unwrap();
    let s = snapdir(&m, &rec);
    let a = fs::File::open(s.join("a.bin")).unwrap();
    let mut buf = vec![0u8; 1000];
    a.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, bytes(10, 1000));
    let e = a.read_exact_at(&mut buf, one + 10).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // (From the first page that lies wholly past the damaged chunk: the
    // kernel reads whole pages.)
    let two = (two + 4095) & !4095;
    a.read_exact_at(&mut buf, two).unwrap();
    let two = two as usize;
    assert_eq!(buf, bytes(10, 3 * BS as usize)[two..two + 1000]);
    assert_eq!(
        fs::read(s.join("b.bin")).unwrap(),
        bytes(11, 2 * BS as usize)
    );
}

#[test]
fn mount_snapshot_with_and_without_a_live_mount() {
    let (tmp, backing, mnt, repo) = mount_dirs();
    let (s1, s2) = (tmp.path().join("s1"), tmp.path().join("s2"));
    for d in [&s1, &s2] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(backing.join("f"), b"v1").unwrap();
    ok(&repo, &["init"]);
    ok(&repo, &["snapshot", "--source", backing.to_str().unwrap()]);
    let r = repo.to_str().unwrap();
    // Without a live mount: a daemon of its own.
    ok(&repo, &["mount-snapshot", "1", s1.to_str().unwrap()]);
    assert_eq!(fs::read(s1.join("f")).unwrap(), b"v1");
    assert_eq!(
        fs::File::create(s1.join("x")).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    let opts = String::from_utf8(fs::read("/proc/self/mountinfo").unwrap()).unwrap();
    let line = opts
        .lines()
        .find(|l| l.contains(s1.to_str().unwrap()))
        .unwrap()
        .to_string();
    assert!(line.contains("ro,nosuid,nodev"), "{line}");
    assert_raised_readahead(&s1);
    // Commands still work (the snapshot daemon answers them).
    assert!(ok(&repo, &["snapshots"]).contains("full"));
    ok(&repo, &["umount", s1.to_str().unwrap()]);
    // With a live mount: its daemon serves the snapshot mount.
    let live = DaemonMount::start(
        &backing,
        &mnt,
        &["--repo", r, "--every", "off", "--full-every", "off"],
    );
    assert_raised_readahead(&mnt);
    fs::write(mnt.join("f"), b"v2").unwrap();
    ok(&repo, &["snapshot"]);
    ok(&repo, &["mount-snapshot", "--all", s2.to_str().unwrap()]);
    assert_raised_readahead(&s2);
    assert_eq!(fs::read(s2.join("latest/f")).unwrap(), b"v2");
    let names: BTreeMap<String, ()> = fs::read_dir(&s2)
        .unwrap()
        .map(|e| (e.unwrap().file_name().into_string().unwrap(), ()))
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    ok(&repo, &["umount", s2.to_str().unwrap()]);
    // The live mount is still there.
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"v2");
    assert_eq!(fs::read(mnt.join(".snapshots/latest/f")).unwrap(), b"v2");
    live.umount();
}

/// The daemon raises the kernel's readahead window of its mounts after
/// INIT (root only: others keep the 128 KiB default).
fn assert_raised_readahead(mp: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(mp).unwrap().dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    // SAFETY: geteuid has no preconditions.
    let want = if unsafe { libc::geteuid() } == 0 {
        rewindfs::fuse::readahead::READAHEAD_KIB
    } else {
        128
    };
    let mut got = 0;
    for _ in 0..100 {
        got = fs::read_to_string(&path).unwrap().trim().parse().unwrap();
        if got == want {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{path}: read_ahead_kb is {got}, expected {want}");
}

/// A file of a snapshot open in `.snapshots` while the snapshot is
/// forgotten and gc runs (through the daemon) keeps reading its own bytes
/// until it is closed; then gc gives the space back, and the forgotten
/// snapshot is no longer found.
#[test]
fn a_view_holding_a_forgotten_snapshot_open_across_gc() {
    let (tmp, backing, mnt, repo) = mount_dirs();
    let _ = &tmp;
    let r = repo.to_str().unwrap();
    ok(&repo, &["init", "--block-size", "64K"]);
    let live = DaemonMount::start(
        &backing,
        &mnt,
        &["--repo", r, "--every", "off", "--full-every", "off"],
    );
    let old = bytes(41, 3 << 20);
    fs::write(mnt.join("ckpt.bin"), &old).unwrap();
    ok(&repo, &["snapshot", "--label", "old"]);
    fs::write(mnt.join("ckpt.bin"), bytes(42, 3 << 20)).unwrap();
    ok(&repo, &["snapshot"]);
    fs::write(mnt.join("other"), b"x").unwrap();
    ok(&repo, &["snapshot"]);
    let list: serde_json::Value =
        serde_json::from_str(&ok(&repo, &["snapshots", "--json"])).unwrap();
    let first = &list.as_array().unwrap()[0];
    let path = mnt
        .join(".snapshots")
        .join(first["name"].as_str().unwrap())
        .join("ckpt.bin");
    let f = fs::File::open(&path).unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, old[..4096]);

    let id = first["id"].as_u64().unwrap().to_string();
    ok(&repo, &["forget", &id]);
    let gc1: serde_json::Value =
        serde_json::from_str(&ok(&repo, &["gc", "--repack-below", "100", "--json"])).unwrap();
    // The open file keeps reading exactly its bytes (its chunks stayed).
    let mut all = vec![0u8; old.len()];
    f.read_exact_at(&mut all, 0).unwrap();
    assert!(all == old, "an open file of a forgotten snapshot changed");
    drop(f);

    // Closed: the next gc frees what only it used.
    let gc2: serde_json::Value =
        serde_json::from_str(&ok(&repo, &["gc", "--repack-below", "100", "--json"])).unwrap();
    let freed = gc2["bytes_freed"].as_u64().unwrap();
    assert!(
        freed >= 3 << 20,
        "gc freed {freed} bytes after the reader closed (first gc: {gc1})"
    );
    // The forgotten snapshot cannot be opened again (never wrong bytes).
    std::thread::sleep(std::time::Duration::from_millis(300));
    match fs::read(&path) {
        Err(e) => assert!(
            matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESTALE)),
            "{e}"
        ),
        Ok(b) => panic!("read {} bytes of a forgotten snapshot", b.len()),
    }
    let v = ok(&repo, &["verify", "--read-data"]);
    assert!(v.starts_with("ok:"), "{v}");
    live.umount();
}

/// A loader reading the files of a directory one after another: when a
/// sequential reader nears the end of one file, the first blocks of the
/// next file (name order) are loaded ahead.
#[test]
fn reading_a_file_to_its_end_prefetches_the_next_file_of_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo, mp) = (
        tmp.path().join("src"),
        tmp.path().join("repo"),
        tmp.path().join("mnt"),
    );
    fs::create_dir_all(src.join("d")).unwrap();
    let mib = 1 << 20;
    fs::write(src.join("d/shard-0"), bytes(1, 2 * mib)).unwrap();
    fs::write(src.join("d/shard-1"), bytes(2, 3 * mib)).unwrap();
    fs::write(src.join("d/shard-2"), bytes(3, 3 * mib)).unwrap();
    ok(&repo, &["init"]);
    ok(&repo, &["snapshot", "--source", src.to_str().unwrap()]);
    let _m = common::SnapMount::start(&repo, &mp, &["--materialize-cache", "0", "1"]);
    let cached = || common::status(&repo)["chunk_cache_bytes"].as_u64().unwrap();
    assert_eq!(fs::read(mp.join("d/shard-0")).unwrap(), bytes(1, 2 * mib));
    // shard-0's 2 blocks, then shard-1's 3 (not shard-2's).
    let t = std::time::Instant::now();
    while cached() < 5 * mib as u64 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "the next file was not prefetched: {} bytes cached",
            cached()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(cached() < 7 * mib as u64, "{}", cached());
    assert_eq!(fs::read(mp.join("d/shard-1")).unwrap(), bytes(2, 3 * mib));
}

/// `latest` is kept by the kernel between changes of the list (a short
/// TTL instead of a lookup at every use), so each change must reach the
/// kernel at once: read through `latest`, snapshot, and read through it
/// again well within the TTL.
#[test]
fn latest_moves_at_once_although_the_kernel_keeps_it() {
    let (_tmp, backing, mnt, repo) = mount_dirs();
    let r = repo.to_str().unwrap();
    let live = DaemonMount::start(
        &backing,
        &mnt,
        &["--repo", r, "--every", "off", "--full-every", "off"],
    );
    let latest = mnt.join(".snapshots/latest");
    let mut before = PathBuf::new();
    // Each round follows the previous one's reads through `latest` by
    // a write and a snapshot only, well within its TTL on an idle machine
    // (on a loaded one the TTL may run out first, which only weakens the
    // check).
    for round in 0..5u8 {
        let want = vec![b'a' + round; 10 + round as usize];
        fs::write(mnt.join("f"), &want).unwrap();
        ok(&repo, &["snapshot"]);
        assert_eq!(fs::read(latest.join("f")).unwrap(), want, "round {round}");
        let target = fs::read_link(&latest).unwrap();
        assert_ne!(target, before, "round {round}: `latest` did not move");
        assert_eq!(fs::read(latest.join("f")).unwrap(), want, "round {round}");
        before = target;
    }
    live.umount();
}
