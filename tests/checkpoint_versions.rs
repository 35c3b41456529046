//! Issue 30: every checkpoint a job completes is a version by default,
//! even when the job's rotation deletes it before any snapshot was taken
//! (it is kept aside and captured first), and a reader of a snapshot
//! never sees a later write, whoever makes it.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::live::DaemonMount;
use common::{bytes, mount_dirs, ok, python, status};

/// Wait until `f` holds (at most `secs` seconds).
fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn snapshots(repo: &Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&ok(repo, &["snapshots", "--json"])).unwrap();
    v.as_array().unwrap().clone()
}

/// The flusher has nothing waiting: no kept checkpoint, no on-close
/// snapshot, no capture running.
fn settled(repo: &Path) -> bool {
    let st = status(repo);
    let f = &st["flusher"];
    f["kept_pending"] == 0 && f["pending_on_close"].is_null() && f["state"] == "idle"
}

/// A job saving a safetensors file and a DCP-like folder every 0.3 s and
/// deleting all but the last two, on a mount with default flags: every
/// step is restorable bitwise from some snapshot, and the rotated-away
/// versions are served from the deleted files themselves.
#[test]
fn a_rotating_job_keeps_every_step_under_default_flags() {
    let (tmp, backing, mnt, repo) = mount_dirs();
    let r = repo.to_str().unwrap();
    let m = DaemonMount::start(&backing, &mnt, &["--repo", r]);
    // The mount's first snapshot (a repository without one is not
    // protected yet: it is taken at once).
    wait_for("the first snapshot", 60, || !snapshots(&repo).is_empty());
    // The job: a step every 0.3 s, the last two kept.
    let job = |steps: &str, interval: &str, keep: &str, dir: &str| {
        python(
            "rotating_job.py",
            &[
                "job".as_ref(),
                mnt.as_os_str(),
                steps.as_ref(),
                interval.as_ref(),
                keep.as_ref(),
                dir.as_ref(),
            ],
        )
    };
    let out = job("12", "0.3", "2", "run");
    let mut done: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(out.trim()).unwrap();
    assert_eq!(done.len(), 36, "{out}");
    // A faster one: a step every 50 ms, each deleted as soon as the next
    // is written (before its on-close snapshot can be taken).
    let out = job("12", "0.05", "1", "fast");
    let fast: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(out.trim()).unwrap();
    assert_eq!(fast.len(), 36, "{out}");
    done.extend(fast);
    let hashes = tmp.path().join("hashes.json");
    fs::write(&hashes, serde_json::to_string(&done).unwrap()).unwrap();
    wait_for("the flusher to settle", 120, || settled(&repo));
    let check = python(
        "rotating_job.py",
        &["check".as_ref(), mnt.as_os_str(), hashes.as_os_str()],
    );
    let c: serde_json::Value = serde_json::from_str(check.trim()).unwrap();
    assert_eq!(
        c["missing"].as_array().unwrap().len(),
        0,
        "checkpoints lost to rotation: {check}"
    );
    let st = status(&repo);
    let kept = st["flusher"]["kept_total"].as_u64().unwrap();
    assert!(kept > 0, "the rotation outran the snapshots: {st}");
    assert_eq!(st["flusher"]["kept_captured"], kept, "{st}");
    // The deleted steps' snapshot versions of 1 MiB and more are served
    // from the very files the job deleted.
    let mat = &st["materialized"];
    assert!(mat["kept_files"].as_u64().unwrap() > 0, "{st}");
    // The labels say what they hold.
    let labels: Vec<String> = snapshots(&repo)
        .iter()
        .filter_map(|s| s["label"].as_str().map(str::to_string))
        .collect();
    assert!(labels.iter().any(|l| l.starts_with("kept: ")), "{labels:?}");
    assert!(labels.iter().any(|l| l.contains("run/")), "{labels:?}");
    // Nothing rotated away reappears in the live tree's latest version.
    let latest = fs::read_dir(mnt.join(".snapshots/latest/run"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(
        !latest.iter().any(|n| n == "step-0.safetensors"),
        "{latest:?}"
    );
    m.umount();
    // And the keep directory is empty once everything was captured.
    let keep: Vec<_> = fs::read_dir(repo.join("keep")).unwrap().collect();
    assert!(keep.is_empty(), "{keep:?}");
}

/// Read all of `f` with pread (from offset 0).
fn read_all(f: &fs::File, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read_at(&mut buf[got..], got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

/// A reader of a snapshot's version of a checkpoint (here one served by
/// passthrough from the kept file the job deleted) keeps reading that
/// version's bytes while the live path is rewritten in place, truncated,
/// replaced by rename, written on the fast path and changed directly in
/// BACKING, and while a descriptor opened on the deleted file before its
/// removal tries to write to it.
#[test]
fn a_snapshot_reader_never_sees_a_later_write() {
    let (_tmp, backing, mnt, repo) = mount_dirs();
    let r = repo.to_str().unwrap();
    let m = DaemonMount::start(
        &backing,
        &mnt,
        &["--repo", r, "--every", "off", "--full-every", "off"],
    );
    ok(&repo, &["snapshot", "--label", "base"]);
    fs::create_dir(mnt.join("run")).unwrap();
    let a = bytes(1, 3 << 20);
    let live = mnt.join("run/model.safetensors");
    fs::write(&live, &a).unwrap();
    // A writer holding the file open directly in BACKING, from before
    // its deletion.
    let mut direct = fs::OpenOptions::new()
        .write(true)
        .open(backing.join("run/model.safetensors"))
        .unwrap();
    // Rotated away at once (before its on-close snapshot): kept aside.
    fs::remove_file(&live).unwrap();
    wait_for("the kept snapshot", 60, || {
        snapshots(&repo)
            .iter()
            .any(|s| s["label"].as_str().is_some_and(|l| l.starts_with("kept: ")))
            && settled(&repo)
    });
    let kept = snapshots(&repo)
        .into_iter()
        .find(|s| s["label"].as_str().is_some_and(|l| l.starts_with("kept: ")))
        .unwrap();
    let name = kept["name"].as_str().unwrap().to_string();
    let snap = mnt
        .join(".snapshots")
        .join(&name)
        .join("run/model.safetensors");
    let reader = fs::File::open(&snap).unwrap();
    assert!(read_all(&reader, a.len()).unwrap() == a, "kept version");
    let st = status(&repo);
    assert_eq!(st["materialized"]["kept_files"], 1, "{st}");
    let check = |what: &str| {
        // The open reader, and a new one, see the snapshot's bytes (an
        // error would do; other bytes never).
        match read_all(&reader, a.len()) {
            Ok(got) => assert!(got == a, "{what}: the open reader saw other bytes"),
            Err(e) => eprintln!("{what}: the open reader got {e}"),
        }
        let again = fs::read(&snap).unwrap();
        assert!(again == a, "{what}: a new reader saw other bytes");
    };
    // The descriptor opened before the delete cannot change it.
    let w = direct.write(b"LATER WRITE");
    assert!(
        w.is_err(),
        "a write to the kept file was let through: {w:?}"
    );
    check("write through a descriptor from before the delete");
    // A new file at the path, rewritten in place through the mount.
    fs::write(&live, bytes(2, 3 << 20)).unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(&live).unwrap();
    f.seek(SeekFrom::Start(4096)).unwrap();
    f.write_all(&[9u8; 8192]).unwrap();
    drop(f);
    check("in-place write");
    fs::OpenOptions::new()
        .write(true)
        .open(&live)
        .unwrap()
        .set_len(100)
        .unwrap();
    check("truncation");
    fs::write(mnt.join("run/tmp"), bytes(3, 1 << 20)).unwrap();
    fs::rename(mnt.join("run/tmp"), &live).unwrap();
    check("replaced by rename");
    // The fast path: a checkpoint truncated on open is written by the
    // kernel straight to the backing file (after a snapshot holds it).
    ok(&repo, &["snapshot", "--label", "before fast path"]);
    fs::write(&live, bytes(4, 2 << 20)).unwrap();
    check("fast-path write");
    let mut b = fs::OpenOptions::new()
        .write(true)
        .open(backing.join("run/model.safetensors"))
        .unwrap();
    b.write_all(b"changed directly in BACKING").unwrap();
    drop(b);
    check("change made directly in BACKING");
    // Everything at the path since is in later snapshots, not this one.
    let mut back = Vec::new();
    fs::File::open(&snap)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == a);
    drop(reader);
    drop(direct);
    m.umount();
    // Stopped: the served kept file is mutable again (the repository can
    // be deleted like any directory).
    let copies: Vec<std::path::PathBuf> = fs::read_dir(repo.join("cache/materialized"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "data"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let immutable = |p: &Path| {
        let f = fs::File::open(p).unwrap();
        rustix::fs::ioctl_getflags(&f)
            .unwrap()
            .contains(rustix::fs::IFlags::IMMUTABLE)
    };
    assert!(!immutable(&copies[0]));
    // Mounted again: read back against its chunks (made immutable first),
    // and served again.
    let m = DaemonMount::start(
        &backing,
        &mnt,
        &["--repo", r, "--every", "off", "--full-every", "off"],
    );
    assert!(fs::read(&snap).unwrap() == a);
    wait_for("the kept copy to be immutable again", 60, || {
        immutable(&copies[0])
    });
    assert!(fs::read(&snap).unwrap() == a);
    let st = status(&repo);
    assert_eq!(st["materialized"]["kept_files"], 1, "{st}");
    assert_eq!(st["materialized"]["rejected"], 0, "{st}");
    m.umount();
}

/// A job saving under one name (Lightning's `last.ckpt`, `torch.save` of
/// `latest.pt`: truncated and written again) faster than the settle
/// time: each rewrite waits for a snapshot that holds the version it
/// replaces, so every version is in some snapshot.
#[test]
fn a_checkpoint_rewritten_under_its_name_keeps_every_version() {
    let (_tmp, backing, mnt, repo) = mount_dirs();
    let r = repo.to_str().unwrap();
    let m = DaemonMount::start(
        &backing,
        &mnt,
        &["--repo", r, "--every", "off", "--full-every", "off"],
    );
    ok(&repo, &["snapshot", "--label", "base"]);
    let versions: Vec<Vec<u8>> = (0..5).map(|i| bytes(10 + i, 1 << 20)).collect();
    for v in &versions {
        // File::create: O_TRUNC on the same name, right after the last.
        fs::write(mnt.join("last.ckpt"), v).unwrap();
    }
    wait_for("the flusher to settle", 60, || settled(&repo));
    let list = snapshots(&repo);
    for (i, v) in versions.iter().enumerate() {
        let found = list.iter().any(|s| {
            let n = s["name"].as_str().unwrap();
            fs::read(mnt.join(".snapshots").join(n).join("last.ckpt")).is_ok_and(|got| got == *v)
        });
        assert!(
            found,
            "version {i} of last.ckpt is in no snapshot: {list:?}"
        );
    }
    assert!(
        list.iter().any(|s| s["label"]
            .as_str()
            .is_some_and(|l| l.starts_with("before rewrite: last.ckpt"))),
        "{list:?}"
    );
    m.umount();
}
