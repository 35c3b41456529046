//! The checkpoint fast path: files created (or truncated on open) under a
//! checkpoint pattern are written by the kernel straight to the backing
//! file (FUSE passthrough), captured whole once closed, and held back at
//! their last closed version by a cut taken while they are open.
//!
//! These tests need a kernel with FUSE passthrough (6.9+) and root; they
//! fail (never pass silently) if the fast path is not taken.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::live::{DaemonMount, FlushedMount};
use common::{bytes, mount_dirs, ok, status};
use rewindfs::fs::fastpath::{CheckpointPatterns, DEFAULT_PATTERNS};
use rewindfs::fuse::MountConfig;
use rewindfs::snapshot::Kind;

const BS: u32 = 64 * 1024;

fn fast_cfg() -> MountConfig {
    MountConfig {
        checkpoints: Some(CheckpointPatterns::new(DEFAULT_PATTERNS).unwrap()),
        ..MountConfig::default()
    }
}

fn fast_mount() -> FlushedMount {
    let m = FlushedMount::with(BS, fast_cfg(), |_| {});
    assert!(
        m.fs.passthrough_enabled(),
        "the kernel must offer FUSE passthrough for these tests (Linux 6.9+, root): {}",
        m.fs.read_mode()
    );
    m
}

/// The kernel releases a closed file shortly after close(2) returns.
fn released(m: &FlushedMount) {
    let t0 = Instant::now();
    while m.fs.fast_path_open() != 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "never released");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn write_chunked(f: &mut File, data: &[u8]) {
    for c in data.chunks(1 << 20) {
        f.write_all(c).unwrap();
    }
}

#[test]
fn a_checkpoint_written_on_the_fast_path_and_renamed_into_place_is_captured_whole() {
    let m = fast_mount();
    fs::create_dir(m.mnt.join("ckpt")).unwrap();
    let data = bytes(7, 6 << 20 | 12345);
    let tmp = m.mnt.join("ckpt/tmp-step-100.pt");
    let mut f = File::create(&tmp).unwrap();
    assert_eq!(
        m.fs.fast_path_open(),
        1,
        "the new .pt file took the fast path"
    );
    write_chunked(&mut f, &data);
    f.sync_all().unwrap();
    drop(f);
    released(&m);
    fs::rename(&tmp, m.mnt.join("ckpt/latest.pt")).unwrap();
    // The bytes reached the backing file without the daemon.
    assert_eq!(fs::read(m.backing.join("ckpt/latest.pt")).unwrap(), data);
    let s1 = m.snapshot(Kind::Incremental);
    let files = m.files_of(s1.id);
    assert_eq!(files.get("ckpt/latest.pt"), Some(&data), "captured whole");
    assert!(!files.contains_key("ckpt/tmp-step-100.pt"));

    // The same tensor bytes saved again under a new name cost (almost)
    // no space: unchanged blocks deduplicate.
    let mut f = File::create(m.mnt.join("ckpt/step-200.pt")).unwrap();
    write_chunked(&mut f, &data);
    drop(f);
    let s2 = m.snapshot(Kind::Incremental);
    assert_eq!(m.files_of(s2.id).get("ckpt/step-200.pt"), Some(&data));
    assert!(
        s2.stats.stored_bytes < 64 * 1024,
        "an identical checkpoint added {} bytes",
        s2.stats.stored_bytes
    );
    // And a full snapshot reads it whole, equal.
    let s3 = m.snapshot(Kind::Full);
    let files = m.files_of(s3.id);
    assert_eq!(files.get("ckpt/latest.pt"), Some(&data));
    assert_eq!(files.get("ckpt/step-200.pt"), Some(&data));
}

#[test]
fn a_cut_during_a_checkpoint_write_records_its_last_closed_version() {
    let m = fast_mount();
    let v1 = bytes(1, 3 << 20 | 777);
    let v2 = bytes(2, 5 << 20 | 3);
    fs::write(m.mnt.join("model.safetensors"), &v1).unwrap();
    let s1 = m.snapshot(Kind::Incremental);
    assert_eq!(m.files_of(s1.id).get("model.safetensors"), Some(&v1));

    // Rewrite it (O_TRUNC: fast path, since v1 is in a snapshot) and
    // start a brand-new checkpoint; cut while both are half written.
    let mut f = File::create(m.mnt.join("model.safetensors")).unwrap();
    f.write_all(&v2[..2 << 20]).unwrap();
    let mut g = File::create(m.mnt.join("new.ckpt")).unwrap();
    g.write_all(&v2[..1 << 20]).unwrap();
    assert_eq!(m.fs.fast_path_open(), 2);
    // Other files keep the point-in-time guarantee.
    fs::write(m.mnt.join("log.txt"), b"step 100\n").unwrap();
    let s2 = m.snapshot(Kind::Incremental);
    let files = m.files_of(s2.id);
    assert_eq!(
        files.get("model.safetensors"),
        Some(&v1),
        "a checkpoint open for writing is held at its last closed version"
    );
    assert!(
        !files.contains_key("new.ckpt"),
        "a checkpoint never closed is not in the snapshot"
    );
    assert_eq!(
        files.get("log.txt").map(|v| &v[..]),
        Some(&b"step 100\n"[..])
    );

    f.write_all(&v2[2 << 20..]).unwrap();
    g.write_all(&v2[1 << 20..]).unwrap();
    drop(f);
    drop(g);
    let s3 = m.snapshot(Kind::Incremental);
    let files = m.files_of(s3.id);
    assert_eq!(
        files.get("model.safetensors"),
        Some(&v2),
        "closed: captured"
    );
    assert_eq!(files.get("new.ckpt"), Some(&v2));

    // A full snapshot during a rewrite also holds the closed version.
    let mut f = File::create(m.mnt.join("model.safetensors")).unwrap();
    f.write_all(&v1[..1 << 20]).unwrap();
    assert_eq!(m.fs.fast_path_open(), 1);
    let s4 = m.snapshot(Kind::Full);
    assert_eq!(m.files_of(s4.id).get("model.safetensors"), Some(&v2));
    f.write_all(&v1[1 << 20..]).unwrap();
    drop(f);

    // Its last closed version (v1 again) is in no snapshot yet: a
    // rewrite now goes through the daemon (block-tracked,
    // copy-before-write) so that a cut keeps the point-in-time copy.
    let mut f = File::create(m.mnt.join("model.safetensors")).unwrap();
    assert_eq!(m.fs.fast_path_open(), 0, "dirty file: no fast path");
    f.write_all(&v2[..4096]).unwrap();
    let s5 = m.snapshot(Kind::Incremental);
    assert_eq!(
        m.files_of(s5.id).get("model.safetensors").map(|v| &v[..]),
        Some(&v2[..4096])
    );
    drop(f);
}

#[test]
fn files_outside_the_patterns_and_in_place_edits_keep_block_tracking() {
    let m = fast_mount();
    fs::write(m.mnt.join("data.db"), bytes(3, 1 << 20)).unwrap();
    fs::write(m.mnt.join("w.pt"), bytes(4, 1 << 20)).unwrap();
    let _ = m.snapshot(Kind::Incremental);
    // Not a pattern: through the daemon.
    let f = File::create(m.mnt.join("other.bin")).unwrap();
    assert_eq!(m.fs.fast_path_open(), 0);
    drop(f);
    // In-place edit of a checkpoint (no O_TRUNC): through the daemon.
    let f = OpenOptions::new()
        .write(true)
        .open(m.mnt.join("w.pt"))
        .unwrap();
    assert_eq!(m.fs.fast_path_open(), 0);
    f.write_all_at(b"patched", 100).unwrap();
    drop(f);
    // A writer joining a reader that uses passthrough must use it too
    // (the kernel's rule): its writes bypass the daemon, so the file is
    // recorded as wholly changed and a cut copies it while writers wait.
    let r = File::open(m.mnt.join("data.db")).unwrap();
    let w = OpenOptions::new()
        .write(true)
        .open(m.mnt.join("data.db"))
        .unwrap();
    w.write_all_at(b"hello", 8).unwrap();
    let mut buf = [0u8; 5];
    r.read_exact_at(&mut buf, 8).unwrap();
    assert_eq!(&buf, b"hello");
    let during = m.snapshot(Kind::Incremental);
    w.write_all_at(b"later", 8).unwrap();
    assert_eq!(&m.files_of(during.id)["data.db"][8..13], b"hello");
    w.write_all_at(b"hello", 8).unwrap();
    drop(w);
    drop(r);
    let s = m.snapshot(Kind::Incremental);
    let files = m.files_of(s.id);
    assert_eq!(&files["w.pt"][100..107], b"patched");
    assert_eq!(&files["data.db"][8..13], b"hello");
    assert_eq!(files["data.db"].len(), 1 << 20);
}

#[test]
fn a_crash_while_writing_a_checkpoint_loses_nothing_fsynced() {
    let (_tmp, backing, mnt, repo) = mount_dirs();
    ok(&repo, &["init", "--block-size", "64K"]);
    let r = repo.to_str().unwrap();
    let args = ["--repo", r, "--every", "off", "--full-every", "off"];
    let m = DaemonMount::start(&backing, &mnt, &args);
    let st = status(&repo);
    assert_eq!(st["reads"], "kernel passthrough", "status: {st}");
    let pid = st["pid"].as_u64().unwrap();
    let a = bytes(11, 4 << 20);
    let b = bytes(12, 4 << 20);
    let mut f = File::create(mnt.join("run.ckpt")).unwrap();
    f.write_all(&a).unwrap();
    f.sync_all().unwrap();
    assert_eq!(status(&repo)["fast_path_open"], 1);
    f.write_all(&b[..1 << 20]).unwrap();
    Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    // The writer may go on (its bytes go to the backing file) or fail;
    // either way what was fsynced must survive.
    let _ = f.write_all(&b[1 << 20..]);
    drop(f);
    m.umount();
    let m = DaemonMount::start(&backing, &mnt, &args);
    let out = ok(&repo, &["snapshot"]);
    assert!(out.contains("snapshot"), "{out}");
    let snap = Command::new(common::bin())
        .args(["cat", "--repo", r, "latest", "run.ckpt"])
        .output()
        .unwrap();
    assert!(snap.status.success());
    assert!(snap.stdout.len() >= a.len(), "{} bytes", snap.stdout.len());
    assert!(
        snap.stdout[..a.len()] == a[..],
        "the fsynced part of the checkpoint is in the snapshot"
    );
    assert_eq!(
        snap.stdout,
        fs::read(backing.join("run.ckpt")).unwrap(),
        "the snapshot holds the file as it is on disk"
    );
    m.umount();
}

#[test]
fn writers_beside_passthrough_readers_are_recorded_and_dirty_files_are_read_by_the_daemon() {
    use rewindfs::fs::live::OpenCounts;
    let m = fast_mount();
    let path = m.mnt.join("table.db");
    fs::write(&path, bytes(5, 1 << 20)).unwrap();
    // Written a moment ago: a reader goes through the daemon, so that a
    // writer joining it is tracked block by block.
    let r = File::open(&path).unwrap();
    assert_eq!(
        m.fs.open_modes(),
        OpenCounts {
            daemon: 1,
            ..Default::default()
        }
    );
    drop(r);
    let _ = m.snapshot(Kind::Incremental);
    // Clean: the reader uses passthrough, and a writer must join it.
    let r = File::open(&path).unwrap();
    assert_eq!(
        m.fs.open_modes(),
        OpenCounts {
            passthrough: 1,
            ..Default::default()
        }
    );
    let w = OpenOptions::new().write(true).open(&path).unwrap();
    assert_eq!(
        m.fs.open_modes(),
        OpenCounts {
            passthrough: 1,
            bypass: 1,
            ..Default::default()
        }
    );
    w.write_all_at(b"first", 4096).unwrap();
    let during = m.snapshot(Kind::Incremental);
    assert_eq!(&m.files_of(during.id)["table.db"][4096..4101], b"first");
    // Writes after that cut never reach the daemon; the next snapshot has
    // them all the same (the file stays wholly changed while open).
    w.write_all_at(b"second", 65536 * 3).unwrap();
    w.set_len(3 << 20).unwrap();
    w.write_all_at(b"third", (3 << 20) - 5).unwrap();
    drop(w);
    drop(r);
    let after = m.snapshot(Kind::Incremental);
    assert_eq!(
        m.files_of(after.id)["table.db"],
        fs::read(m.backing.join("table.db")).unwrap()
    );
}

#[test]
fn requests_on_a_passthrough_reader_that_opened_no_file_in_the_daemon_are_answered() {
    // A read-only open served by passthrough registers the inode's O_PATH
    // descriptor with the kernel (on kernels that take one) and opens no
    // file in the daemon; the requests that need one open it on demand.
    use rewindfs::fs::live::OpenCounts;
    let m = fast_mount();
    let path = m.mnt.join("data.bin");
    let content = bytes(7, 300_000);
    fs::write(&path, &content).unwrap();
    let _ = m.snapshot(Kind::Incremental);
    let r = File::open(&path).unwrap();
    assert_eq!(
        m.fs.open_modes(),
        OpenCounts {
            passthrough: 1,
            ..Default::default()
        }
    );
    let mut buf = vec![0; content.len()];
    r.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == content, "passthrough reads the file");
    // fsync, an ioctl, seeking for data and copy_file_range come to the
    // daemon with this handle.
    r.sync_all().unwrap();
    r.sync_data().unwrap();
    rustix::fs::ioctl_getflags(&r).unwrap();
    assert_eq!(
        rustix::fs::seek(&r, rustix::fs::SeekFrom::Data(1000)).unwrap(),
        1000
    );
    assert_eq!(r.metadata().unwrap().len(), content.len() as u64);
    let out = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(m.mnt.join("copy.bin"))
        .unwrap();
    let (mut from, mut to) = (0u64, 0u64);
    while (from as usize) < content.len() {
        let left = content.len() - from as usize;
        let n =
            rustix::fs::copy_file_range(&r, Some(&mut from), &out, Some(&mut to), left).unwrap();
        assert!(n > 0);
    }
    drop(out);
    assert!(fs::read(m.mnt.join("copy.bin")).unwrap() == content);
    // Another reader joins with the same backing; both close cleanly.
    let r2 = File::open(&path).unwrap();
    let mut head = [0u8; 16];
    r2.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head[..], content[..16]);
    drop(r);
    drop(r2);
    // RELEASE reaches the daemon after close(2) returned (the kernel
    // sends it in the background): wait for both.
    let t0 = Instant::now();
    while m.fs.open_modes() != OpenCounts::default() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(m.fs.open_modes(), OpenCounts::default());
    // And the snapshot has both files.
    let s = m.snapshot(Kind::Incremental);
    assert!(m.files_of(s.id)["copy.bin"] == content);
}

#[test]
fn a_running_program_is_never_truncated() {
    // FUSE_ATOMIC_O_TRUNC (which the fast path needs) leaves truncation on
    // open to the daemon, even for O_RDONLY|O_TRUNC: for a running program
    // the daemon answers ETXTBSY itself (the kernel's check after the open
    // let about 1 in 12 through) and must never truncate it. Repeated: a
    // race shows only in some runs.
    let m = fast_mount();
    let prog = m.mnt.join("prog");
    fs::copy("/bin/sleep", &prog).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
    let size = fs::metadata(&prog).unwrap().len();
    for wait in [0, 6] {
        // Soon after writing it is read through the daemon, later through
        // passthrough: both paths.
        std::thread::sleep(Duration::from_secs(wait));
        for round in 0..25 {
            let mut child = Command::new(&prog).arg("10").spawn().unwrap();
            for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
                let r = rustix::fs::open(
                    &prog,
                    rustix::fs::OFlags::from_bits_retain(flags as u32),
                    rustix::fs::Mode::empty(),
                );
                assert_eq!(
                    r.err(),
                    Some(rustix::io::Errno::TXTBSY),
                    "flags {flags:#x}, round {round}"
                );
            }
            assert_eq!(fs::metadata(&prog).unwrap().len(), size);
            let st = child.try_wait().unwrap();
            assert!(st.is_none(), "the program still runs: {st:?}");
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

/// A checkpoint open on the fast path while the repository's first
/// snapshot is taken: that snapshot's walk (which runs before its cut)
/// never keeps its half-written bytes; it is in no snapshot until closed,
/// then captured whole.
#[test]
fn the_first_snapshot_during_a_checkpoint_write_never_keeps_a_torn_file() {
    let m = FlushedMount::with(BS, fast_cfg(), |b| {
        for d in 0..4 {
            fs::create_dir(b.join(format!("d{d}"))).unwrap();
            for i in 0..50 {
                fs::write(b.join(format!("d{d}/f{i}")), bytes(d * 100 + i, 4000)).unwrap();
            }
        }
    });
    assert!(m.fs.passthrough_enabled(), "{}", m.fs.read_mode());
    let v = bytes(7, 3 << 20 | 11);
    let mut g = File::create(m.mnt.join("d2/new.ckpt")).unwrap();
    g.write_all(&v[..1 << 20]).unwrap();
    assert_eq!(
        m.fs.fast_path_open(),
        1,
        "the checkpoint is on the fast path"
    );
    let s1 = m.snapshot(Kind::Full);
    let files = m.files_of(s1.id);
    assert!(
        !files.contains_key("d2/new.ckpt"),
        "a checkpoint never closed is not in the snapshot"
    );
    assert_eq!(files.len(), 200);
    assert_eq!(files.get("d2/f7"), Some(&bytes(207, 4000)));
    g.write_all(&v[1 << 20..]).unwrap();
    drop(g);
    released(&m);
    let s2 = m.snapshot(Kind::Incremental);
    assert_eq!(m.files_of(s2.id).get("d2/new.ckpt"), Some(&v));
}
