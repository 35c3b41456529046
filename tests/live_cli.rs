//! `rewindfs mount`, `umount` and `status` end to end, through the daemon.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::live::{require_fuse, DaemonMount};
use common::{bin, ok, status};

fn mount_err(backing: &Path, mnt: &Path, extra: &[&str]) -> String {
    let o = Command::new(bin())
        .arg("mount")
        .arg(backing)
        .arg(mnt)
        .args(extra)
        .output()
        .unwrap();
    assert!(!o.status.success(), "mount should have been refused");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    err
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nonsensical_setups_are_refused() {
    require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    fs::create_dir_all(backing.join("sub")).unwrap();
    fs::create_dir(&mnt).unwrap();
    assert!(mount_err(&tmp.path().join("nope"), &mnt, &[]).contains("does not exist"));
    fs::write(tmp.path().join("file"), b"x").unwrap();
    assert!(mount_err(&tmp.path().join("file"), &mnt, &[]).contains("not a directory"));
    assert!(mount_err(&backing, &backing, &[]).contains("inside the backing directory"));
    assert!(mount_err(&backing, &backing.join("sub"), &[]).contains("inside the backing directory"));
    assert!(mount_err(&backing, &tmp.path().join("nomnt"), &[]).contains("does not exist"));
    let inside = mnt.join("repo");
    assert!(
        mount_err(&backing, &mnt, &["--repo", inside.to_str().unwrap()])
            .contains("inside the mountpoint")
    );
    assert!(mount_err(&backing, &mnt, &["--index-cache", "100K"]).contains("at least 1M"));
    // Nothing was created in the backing directory by the refusals.
    assert_eq!(fs::read_dir(&backing).unwrap().count(), 1);
}

#[test]
fn mount_status_umount_and_a_locked_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    let mnt2 = tmp.path().join("mnt2");
    fs::create_dir_all(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::create_dir(&mnt2).unwrap();
    fs::write(backing.join("a.txt"), b"hello").unwrap();
    let repo = backing.join(".rewindfs");

    let quiet = [
        "--every",
        "off",
        "--full-every",
        "off",
        "--snapshot-on-unmount",
        "false",
    ];
    let args: Vec<&str> = quiet
        .iter()
        .copied()
        .chain(["--index-cache", "8M"])
        .collect();
    let m = DaemonMount::start(&backing, &mnt, &args);
    // The index's cache is the one asked for.
    assert_eq!(
        status(&repo)["memory"]["index_cache_limit_bytes"].as_u64(),
        Some(8 << 20)
    );
    // The repository is created inside the backing dir and hidden.
    assert!(repo.join("config.json").exists());
    let names: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["a.txt".to_string()]);
    assert!(fs::metadata(mnt.join(".rewindfs")).is_err());
    assert!(fs::create_dir(mnt.join(".rewindfs")).is_err());
    // .snapshots is reserved.
    let e = fs::create_dir(mnt.join(".snapshots")).unwrap_err();
    assert!(
        matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EEXIST)),
        "{e}"
    );
    assert!(fs::write(mnt.join(".snapshots"), b"x").is_err());
    assert!(!backing.join(".snapshots").exists());

    // Writes pass through and are counted by status.
    fs::write(mnt.join("b.bin"), vec![7u8; 3 << 20]).unwrap();
    assert_eq!(fs::read(backing.join("b.bin")).unwrap().len(), 3 << 20);
    let s = status(&repo);
    assert_eq!(s["mounted"], true);
    assert!(s["dirty_files"].as_u64().unwrap() >= 1);
    assert_eq!(s["dirty_blocks"], 3);
    assert!(s["oldest_change"].is_string());
    wait_for("journal records", || {
        status(&repo)["journal_records"].as_u64().unwrap() >= 3
    });
    let text = ok(&repo, &["status"]);
    assert!(text.contains("3 blocks"), "{text}");

    // A second mount of the same repository is refused.
    let err = mount_err(&backing, &mnt2, &[]);
    assert!(err.contains("in use by another rewindfs process"), "{err}");
    // So is mounting on a busy mountpoint.
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    assert!(mount_err(
        &other,
        &mnt,
        &["--repo", tmp.path().join("r2").to_str().unwrap()]
    )
    .contains("busy"));

    m.umount();
    assert!(
        !repo.join("mounted").exists(),
        "clean shutdown marker left behind"
    );
    let s = status(&repo);
    assert_eq!(s["mounted"], false);
}

#[test]
fn sigterm_unmounts_and_flushes_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    let repo = tmp.path().join("repo");
    fs::create_dir_all(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let args = [
        "--repo",
        repo.to_str().unwrap(),
        "--every",
        "off",
        "--full-every",
        "off",
        "--snapshot-on-unmount",
        "false",
    ];
    let m = DaemonMount::start(&backing, &mnt, &args);
    fs::write(mnt.join("x"), vec![1u8; 100]).unwrap();
    let pid = status(&repo)["pid"].as_u64().unwrap();
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    wait_for("the daemon to exit", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(!rewindfs::daemon::is_mountpoint(
        &mnt.canonicalize().unwrap()
    ));
    assert!(!repo.join("mounted").exists());
    std::mem::forget(m);
    // The journal survived: the next mount still knows the change.
    let m = DaemonMount::start(&backing, &mnt, &args);
    let s = status(&repo);
    assert_eq!(s["dirty_blocks"], 1);
    assert_eq!(s["unclean_start"], false);
    m.umount();
}

#[test]
fn offline_changes_and_unclean_stops_are_found_at_mount_time() {
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    let repo = tmp.path().join("repo");
    fs::create_dir_all(backing.join("d")).unwrap();
    fs::create_dir(&mnt).unwrap();
    for i in 0..5 {
        fs::write(backing.join(format!("d/f{i}")), vec![i as u8; 5000]).unwrap();
    }
    ok(&repo, &["init"]);
    // Let the files' ctimes age past the racy window, then snapshot.
    std::thread::sleep(Duration::from_millis(1100));
    ok(&repo, &["snapshot", "--source", backing.to_str().unwrap()]);
    // Changed while not mounted: one file rewritten, one new, one removed.
    fs::write(backing.join("d/f1"), vec![9u8; 5000]).unwrap();
    fs::write(backing.join("d/new"), b"new").unwrap();
    fs::remove_file(backing.join("d/f4")).unwrap();
    let r = repo.to_str().unwrap();
    let m = DaemonMount::start(
        &backing,
        &mnt,
        &["--repo", r, "--snapshot-on-unmount", "false"],
    );
    wait_for("the startup check", || {
        status(&repo)["startup_check"]
            .as_str()
            .unwrap()
            .starts_with("done")
    });
    let s = status(&repo);
    let check = s["startup_check"].as_str().unwrap().to_string();
    assert!(check.contains("2 files"), "{check}");
    assert!(s["dirty_files"].as_u64().unwrap() >= 3, "{s}");

    // kill -9: the marker stays, the next mount says so.
    let pid = s["pid"].as_u64().unwrap();
    Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap();
    wait_for("the daemon to die", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(repo.join("mounted").exists());
    m.umount(); // removes the stale mount
    let m = DaemonMount::start(&backing, &mnt, &["--repo", r]);
    assert_eq!(status(&repo)["unclean_start"], true);
    m.umount();
}

/// A keep policy given to `mount` is applied by the daemon after each
/// snapshot: what it no longer keeps is forgotten (the chains rewritten)
/// and gc gives the space back, while the mount keeps working.
#[test]
fn the_daemon_applies_the_keep_policy_after_each_snapshot() {
    let (tmp, backing, mnt, repo) = common::mount_dirs();
    let _ = &tmp;
    let r = repo.to_str().unwrap();
    ok(&repo, &["init", "--block-size", "64K"]);
    let live = DaemonMount::start(
        &backing,
        &mnt,
        &[
            "--repo",
            r,
            "--every",
            "off",
            "--full-every",
            "off",
            "--keep-last",
            "2",
        ],
    );
    for i in 0..5u64 {
        fs::write(mnt.join("ckpt.bin"), common::bytes(i, 1 << 20)).unwrap();
        ok(&repo, &["snapshot"]);
    }
    let count = || {
        let list: serde_json::Value =
            serde_json::from_str(&ok(&repo, &["snapshots", "--json"])).unwrap();
        list.as_array().unwrap().len()
    };
    wait_for("retention to keep 2 snapshots", || count() == 2);
    wait_for("gc to free the forgotten checkpoints", || {
        let st: serde_json::Value = serde_json::from_str(&ok(&repo, &["stats", "--json"])).unwrap();
        st["unreferenced_chunks"] == 0 && st["pack_bytes"].as_u64().unwrap() < 3 << 20
    });
    let st = status(&repo);
    assert!(
        st.to_string().contains("\"forgotten\""),
        "status shows retention: {st}"
    );
    // The oldest one left is now a synthetic full, and both restore.
    let list: serde_json::Value =
        serde_json::from_str(&ok(&repo, &["snapshots", "--json"])).unwrap();
    let first = &list.as_array().unwrap()[0];
    assert_eq!(first["kind"], "full");
    for (n, s) in list.as_array().unwrap().iter().enumerate() {
        let out = tmp.path().join(format!("r{n}"));
        ok(
            &repo,
            &[
                "restore",
                &s["id"].to_string(),
                "--to",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(
            fs::read(out.join("ckpt.bin")).unwrap(),
            common::bytes(3 + n as u64, 1 << 20)
        );
    }
    live.umount();
}

#[test]
fn the_daemon_keeps_the_unique_sizes_up_to_date_after_each_snapshot() {
    let (tmp, backing, mnt, repo) = common::mount_dirs();
    let _ = &tmp;
    let r = repo.to_str().unwrap();
    ok(&repo, &["init", "--block-size", "64K"]);
    let _live = DaemonMount::start(
        &backing,
        &mnt,
        &["--repo", r, "--every", "off", "--full-every", "off"],
    );
    for i in 0..3u64 {
        fs::write(
            mnt.join(format!("f{i}.bin")),
            common::bytes(10 + i, 256 << 10),
        )
        .unwrap();
        ok(&repo, &["snapshot"]);
    }
    // No listing asked for them: the daemon caches every snapshot's
    // unique size by itself after each commit.
    let records = || {
        fs::read_dir(repo.join("snapshots"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".json")
            })
            .count()
    };
    let cached = || -> Vec<(u64, u64)> {
        fs::read(repo.join("cache").join("unique.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| serde_json::from_value(v["unique"].clone()).ok())
            .unwrap_or_default()
    };
    wait_for("the unique sizes of every snapshot cached", || {
        cached().len() == records()
    });
    let cache = cached();
    assert!(cache.len() >= 3, "{cache:?}");
    // The listing shows exactly those, and the newest snapshot alone
    // holds its new file.
    let list: serde_json::Value =
        serde_json::from_str(&ok(&repo, &["snapshots", "--json"])).unwrap();
    let shown: Vec<(u64, u64)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_u64().unwrap(),
                s["unique_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown, cache);
    assert!(cache.last().unwrap().1 >= 256 << 10, "{cache:?}");
}
