//! Fault injection at each durability step (build with `--features
//! failpoints`; scripts/test.sh does): an error, or a crash (abort, like
//! kill -9), at the pack write, pack fsync, rename, directory fsync, index
//! insert, index flush or manifest commit of a live snapshot leaves every
//! committed snapshot intact, and the next snapshot succeeds.
#![cfg(feature = "failpoints")]

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::live::DaemonMount;
use common::{assert_same, cli, model, mount_dirs, ok, status};
use rewindfs::daemon::control::{self, Request};

const POINTS: [&str; 7] = [
    "pack-write",
    "pack-fsync",
    "rename",
    "dir-fsync",
    "index-insert",
    "index-flush",
    "manifest-commit",
];

fn case(point: &str, mode: &str) {
    eprintln!("fault injection: {point} {mode}");
    let (tmp, backing, mnt, repo) = mount_dirs();
    fs::write(backing.join("a"), vec![1u8; 200_000]).unwrap();
    ok(&repo, &["init", "--block-size", "64K"]);
    ok(&repo, &["snapshot", "--source", backing.to_str().unwrap()]);
    let first = model(&backing);
    let r = repo.to_str().unwrap();
    let args = [
        "--repo",
        r,
        "--every",
        "off",
        "--full-every",
        "off",
        "--snapshot-on-unmount",
        "false",
    ];
    let m = DaemonMount::start(&backing, &mnt, &args);
    fs::write(mnt.join("a"), vec![2u8; 300_000]).unwrap();
    fs::write(mnt.join("b"), b"new file").unwrap();
    let pid = status(&repo)["pid"].as_u64().unwrap();
    control::call(
        &repo,
        &Request::Failpoint {
            name: point.into(),
            actions: format!("1*return({mode})"),
        },
        Duration::from_secs(5),
    )
    .unwrap();
    let o = cli(&repo, &["snapshot", "--label", "faulty"]);
    assert!(
        !o.status.success(),
        "{point}/{mode}: the snapshot should have failed"
    );
    if mode == "crash" {
        let t0 = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{point}: the daemon did not crash"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m.umount();
        let m2 = DaemonMount::start(&backing, &mnt, &args);
        ok(&repo, &["snapshot", "--label", "after"]);
        m2.umount();
    } else {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("fail point {point}")),
            "{point}: {err}"
        );
        // The mount is still up and the next snapshot works.
        ok(&repo, &["snapshot", "--label", "after"]);
        m.umount();
    }
    let v = ok(&repo, &["verify", "--read-data"]);
    assert!(v.starts_with("ok:"), "{point}/{mode}: {v}");
    let list: serde_json::Value =
        serde_json::from_str(&ok(&repo, &["snapshots", "--json"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.last().unwrap()["label"], "after", "{point}/{mode}");
    assert!(
        list.iter().all(|s| s["label"] != "faulty"),
        "{point}/{mode}: a failed snapshot was committed"
    );
    let out1 = tmp.path().join("r1");
    ok(&repo, &["restore", "1", "--to", out1.to_str().unwrap()]);
    assert_same(
        &first,
        &model(&out1),
        &format!("{point}/{mode}: snapshot 1"),
    );
    let out2 = tmp.path().join("r2");
    ok(
        &repo,
        &["restore", "latest", "--to", out2.to_str().unwrap()],
    );
    assert_same(
        &model(&backing),
        &model(&out2),
        &format!("{point}/{mode}: latest"),
    );
}

#[test]
fn an_error_at_any_durability_step_keeps_the_repository_intact() {
    for p in POINTS {
        case(p, "error");
    }
}

#[test]
fn a_crash_at_any_durability_step_keeps_the_repository_intact() {
    for p in POINTS {
        case(p, "crash");
    }
}
