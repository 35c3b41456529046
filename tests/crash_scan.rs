//! kill -9 a scan snapshot at random moments, many times: the repository
//! still verifies and every snapshot committed before restores exactly.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use common::{assert_same, bin, bytes, crash_rng, model, ok, scan_snapshot, Model};
use rand::Rng;

#[test]
fn kill_9_during_snapshots_loses_nothing_committed() {
    let mut rng = crash_rng();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("small")).unwrap();
    for i in 0..6 {
        fs::write(src.join(format!("big{i}.bin")), bytes(i, 12 << 20)).unwrap();
    }
    for i in 0..300 {
        fs::write(src.join(format!("small/{i}")), bytes(1000 + i, 3000)).unwrap();
    }
    ok(&repo, &["init", "--block-size", "256K"]);
    let t0 = std::time::Instant::now();
    scan_snapshot(&repo, &src, "full");
    // Kill within the time a snapshot takes, so most kills land mid-capture.
    let mut span_ms = (t0.elapsed().as_millis() as u64).max(20);
    let mut expected: BTreeMap<u64, BTreeMap<String, Model>> = BTreeMap::new();
    expected.insert(1, model(&src));
    let mut kills = 0;
    for round in 0..36u64 {
        // Change some blocks and files.
        for _ in 0..rng.gen_range(1..6) {
            let i = rng.gen_range(0..6);
            let f = fs::OpenOptions::new()
                .write(true)
                .open(src.join(format!("big{i}.bin")))
                .unwrap();
            let off = rng.gen_range(0..(12u64 << 20) - 300_000);
            f.write_all_at(&bytes(rng.gen(), 300_000), off).unwrap();
        }
        let n = rng.gen_range(0..300);
        fs::write(src.join(format!("small/{n}")), bytes(rng.gen(), 5000)).unwrap();
        if round % 5 == 0 {
            fs::write(
                src.join(format!("new{round}.bin")),
                bytes(rng.gen(), 3 << 20),
            )
            .unwrap();
        }
        let state = model(&src);
        let kind = ["full", "incremental", "differential"][rng.gen_range(0..3)];
        let mut child = Command::new(bin())
            .args([
                "snapshot",
                "--source",
                src.to_str().unwrap(),
                "--kind",
                kind,
            ])
            .env("REWINDFS_REPO", &repo)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Every fourth round runs to completion; the others die somewhere.
        let started = std::time::Instant::now();
        if round % 4 != 3 {
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..span_ms)));
            let _ = child.kill(); // SIGKILL
            kills += 1;
            child.wait().unwrap();
        } else {
            child.wait().unwrap();
            span_ms = (started.elapsed().as_millis() as u64).max(20);
        }
        // Whatever got committed holds exactly the state it saw.
        let list: serde_json::Value =
            serde_json::from_str(&ok(&repo, &["snapshots", "--json"])).unwrap();
        for s in list.as_array().unwrap() {
            let id = s["id"].as_u64().unwrap();
            expected.entry(id).or_insert_with(|| state.clone());
        }
    }
    eprintln!("{kills} kills, {} snapshots committed", expected.len());
    assert!(kills >= 27, "at least 27 kills");
    let out = ok(&repo, &["verify", "--read-data"]);
    assert!(out.starts_with("ok:"), "{out}");
    assert!(
        expected.len() >= 10,
        "too few snapshots committed: {}",
        expected.len()
    );
    for (id, want) in &expected {
        let dir = tmp.path().join(format!("r{id}"));
        ok(
            &repo,
            &["restore", &id.to_string(), "--to", dir.to_str().unwrap()],
        );
        assert_same(want, &model(&dir), &format!("snapshot {id}"));
        fs::remove_dir_all(&dir).unwrap();
    }
    // And the next snapshot after all that still works and is exact.
    ok(&repo, &["snapshot", "--source", src.to_str().unwrap()]);
    let dir = tmp.path().join("final");
    ok(&repo, &["restore", "latest", "--to", dir.to_str().unwrap()]);
    assert_same(&model(&src), &model(&dir), "latest");
}
