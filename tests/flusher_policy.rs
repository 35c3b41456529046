//! Cadences and events through the real daemon: `--every 1s` takes no
//! snapshot when idle and takes them when something changed; `--on-close
//! '*.safetensors'` takes one snapshot per completed checkpoint file (both
//! written in place and saved to a temporary name then renamed).
//!
//! The schedule's rules themselves (hours of idle cadences, settle times,
//! postponement while a file is still written) are tested with a fake
//! clock in `flusher::policy`; these tests only check the daemon wiring,
//! with waits of about one cadence.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::live::DaemonMount;
use common::{mount_dirs, ok, status};

fn snapshots(repo: &Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&ok(repo, &["snapshots", "--json"])).unwrap();
    v.as_array().unwrap().clone()
}

fn wait_for_count(repo: &Path, n: usize, within: Duration) -> Vec<serde_json::Value> {
    let t0 = Instant::now();
    loop {
        let s = snapshots(repo);
        if s.len() >= n {
            return s;
        }
        assert!(
            t0.elapsed() < within,
            "expected {n} snapshots, have {}",
            s.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_1s_takes_nothing_when_idle_and_snapshots_changes() {
    let (_tmp, backing, mnt, repo) = mount_dirs();
    fs::write(backing.join("data"), b"initial").unwrap();
    let r = repo.to_str().unwrap();
    let m = DaemonMount::start(&backing, &mnt, &["--repo", r, "--every", "1s"]);
    // The repository's first snapshot comes right away, and is full.
    let s = wait_for_count(&repo, 1, Duration::from_secs(10));
    assert_eq!(s[0]["kind"], "full");
    // Idle for more than one cadence: nothing new.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        snapshots(&repo).len(),
        1,
        "idle cadences must not take snapshots"
    );
    // A change: the next cadence snapshots it.
    fs::write(mnt.join("data"), b"changed").unwrap();
    let s = wait_for_count(&repo, 2, Duration::from_secs(10));
    assert_eq!(s[1]["kind"], "incremental");
    assert_eq!(ok(&repo, &["cat", "2", "data"]), "changed");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(snapshots(&repo).len(), 2);
    let st = status(&repo);
    assert_eq!(st["flusher"]["last_snapshot"], 2);
    assert!(st["flusher"]["next_scheduled"].is_string(), "{st}");
    m.umount();
    // Nothing changed since snapshot 2: unmounting adds none.
    assert_eq!(snapshots(&repo).len(), 2);
}

#[test]
fn on_close_takes_one_snapshot_per_checkpoint() {
    let (_tmp, backing, mnt, repo) = mount_dirs();
    fs::create_dir_all(backing.join("ckpt")).unwrap();
    let r = repo.to_str().unwrap();
    let m = DaemonMount::start(
        &backing,
        &mnt,
        &[
            "--repo",
            r,
            "--every",
            "off",
            "--full-every",
            "off",
            "--on-close",
            "*.safetensors",
            "--settle",
            "500ms",
        ],
    );
    ok(&repo, &["snapshot", "--kind", "full", "--label", "start"]);
    // Checkpoint 1: written in place, closed.
    fs::write(mnt.join("ckpt/model-1.safetensors"), vec![1u8; 300_000]).unwrap();
    // Other files do not trigger anything.
    fs::write(mnt.join("ckpt/notes.txt"), b"x").unwrap();
    let s = wait_for_count(&repo, 2, Duration::from_secs(10));
    assert_eq!(s[1]["label"], "ckpt/model-1.safetensors");
    // Checkpoint 2: saved to a temporary name, then renamed into place.
    fs::write(mnt.join("ckpt/.tmp-save"), vec![2u8; 300_000]).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        snapshots(&repo).len(),
        2,
        "the temporary file must not trigger a snapshot"
    );
    fs::rename(
        mnt.join("ckpt/.tmp-save"),
        mnt.join("ckpt/model-2.safetensors"),
    )
    .unwrap();
    let s = wait_for_count(&repo, 3, Duration::from_secs(10));
    assert_eq!(s[2]["label"], "ckpt/model-2.safetensors");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(snapshots(&repo).len(), 3, "one snapshot per checkpoint");
    // Each snapshot holds its complete checkpoint.
    let out = ok(&repo, &["ls", "3", "ckpt"]);
    assert!(
        out.contains("model-2.safetensors") && !out.contains(".tmp-save"),
        "{out}"
    );
    assert_eq!(
        ok(&repo, &["cat", "2", "ckpt/model-1.safetensors"]).len(),
        300_000
    );
    m.umount();
}

/// A scheduled full of a dataset that changed little is built from the
/// previous snapshot's tree and the journal (only the changed block is
/// read), restores like any full, and `status` and `snapshots` show the
/// next run of each kind. (Cron rules, windows, DST and missed windows
/// are tested with a fake clock in `flusher::policy`.)
#[test]
fn scheduled_fulls_are_synthetic_when_little_changed() {
    let (_tmp, backing, mnt, repo) = mount_dirs();
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(backing.join("data"), &big).unwrap();
    fs::write(backing.join("small"), b"small").unwrap();
    let r = repo.to_str().unwrap();
    let m = DaemonMount::start(
        &backing,
        &mnt,
        &[
            "--repo",
            r,
            "--every",
            "off",
            "--full-every",
            "3s",
            "--timezone",
            "UTC",
            "--window",
            "00:00-24:00",
        ],
    );
    let s = wait_for_count(&repo, 1, Duration::from_secs(10));
    assert_eq!(s[0]["kind"], "full");
    assert_eq!(s[0]["synthetic"], false);
    // One block of 8 changes: the next full is synthetic.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("data"))
            .unwrap();
        f.write_all_at(&[7u8; 4096], 3 << 20).unwrap();
    }
    let s = wait_for_count(&repo, 2, Duration::from_secs(15));
    assert_eq!(s[1]["kind"], "full");
    assert_eq!(s[1]["parent"], serde_json::Value::Null);
    assert_eq!(s[1]["synthetic"], true, "{:?}", s[1]);
    let st = status(&repo);
    let read = st["flusher"]["last_bytes_read"].as_u64().unwrap();
    assert!(read <= 1 << 20, "a synthetic full read {read} bytes");
    let sched = &st["flusher"]["schedule"];
    assert_eq!(sched["timezone"], "UTC");
    assert_eq!(sched["windows"], "00:00-24:00");
    assert_eq!(sched["runs"][0]["kind"], "full");
    assert_eq!(sched["runs"][0]["rule"], "every 3s");
    assert!(sched["runs"][0]["at"].as_str().unwrap().ends_with("+00:00"));
    let listing = ok(&repo, &["snapshots"]);
    assert!(listing.contains("full (synthetic)"), "{listing}");
    assert!(listing.contains("next full"), "{listing}");
    // Nothing changed since a full: the next one is skipped.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(snapshots(&repo).len(), 2);
    // A new checkpoint larger than the dataset (written by the kernel
    // through the checkpoint fast path: a whole-file change, no block
    // records): the next full is a real one.
    fs::write(mnt.join("big.safetensors"), vec![9u8; 12 << 20]).unwrap();
    let s = wait_for_count(&repo, 3, Duration::from_secs(15));
    assert_eq!(s[2]["kind"], "full");
    assert_eq!(s[2]["synthetic"], false, "{:?}", s[2]);
    m.umount();
    // It holds the whole tree by itself: forget the first one, then
    // read and verify everything.
    ok(&repo, &["forget", "1"]);
    let mut want = big.clone();
    want[3 << 20..(3 << 20) + 4096].fill(7);
    let restored = _tmp.path().join("restored");
    ok(&repo, &["restore", "2", "--to", restored.to_str().unwrap()]);
    assert_eq!(fs::read(restored.join("data")).unwrap(), want);
    assert_eq!(fs::read(restored.join("small")).unwrap(), b"small");
    ok(&repo, &["verify", "--read-data"]);
}
