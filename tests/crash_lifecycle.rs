//! kill -9 `forget` (chain rewriting included) and `gc` at random moments,
//! many times: the repository verifies with --read-data after each, and
//! every snapshot not forgotten restores exactly as captured. (The fault
//! tests crash at each named step of forget and gc too.)

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_same, bin, bytes, crash_rng, model, ok, scan_snapshot, Model};
use rand::Rng;

fn snapshot_ids(repo: &Path) -> Vec<u64> {
    let list: serde_json::Value =
        serde_json::from_str(&ok(repo, &["snapshots", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect()
}

fn change(src: &Path, rng: &mut impl Rng, round: u64) {
    for _ in 0..rng.gen_range(1..4) {
        let i = rng.gen_range(0..4);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(src.join(format!("big{i}.bin")))
            .unwrap();
        let off = rng.gen_range(0..(8u64 << 20) - 600_000);
        f.write_all_at(&bytes(rng.gen(), 600_000), off).unwrap();
    }
    let n = rng.gen_range(0..50);
    fs::write(src.join(format!("small/{n}")), bytes(rng.gen(), 4000)).unwrap();
    if round.is_multiple_of(3) {
        fs::write(
            src.join(format!("ckpt{round}.bin")),
            bytes(rng.gen(), 2 << 20),
        )
        .unwrap();
    }
    if round % 4 == 1 {
        let old = round.saturating_sub(3);
        let _ = fs::remove_file(src.join(format!("ckpt{old}.bin")));
    }
}

#[test]
fn kill_9_during_forget_and_gc_loses_no_kept_snapshot() {
    let mut rng = crash_rng();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("small")).unwrap();
    for i in 0..4 {
        fs::write(src.join(format!("big{i}.bin")), bytes(i, 8 << 20)).unwrap();
    }
    for i in 0..50 {
        fs::write(src.join(format!("small/{i}")), bytes(1000 + i, 3000)).unwrap();
    }
    ok(&repo, &["init", "--block-size", "256K"]);
    let mut expected: BTreeMap<u64, BTreeMap<String, Model>> = BTreeMap::new();
    let snap = |expected: &mut BTreeMap<u64, BTreeMap<String, Model>>, kind: &str| {
        scan_snapshot(&repo, &src, kind);
        let id = *snapshot_ids(&repo).last().unwrap();
        expected.insert(id, model(&src));
    };
    snap(&mut expected, "full");
    for round in 0..10u64 {
        change(&src, &mut rng, round);
        let kind = ["full", "incremental", "incremental", "differential"][rng.gen_range(0..4)];
        snap(&mut expected, kind);
    }
    let mut span_ms = 50u64;
    let mut kills = 0;
    for round in 0..40u64 {
        if round.is_multiple_of(2) {
            change(&src, &mut rng, 100 + round);
            let kind = ["full", "incremental", "incremental", "differential"][rng.gen_range(0..4)];
            snap(&mut expected, kind);
        }
        let ids = snapshot_ids(&repo);
        let newest = *ids.last().unwrap();
        let mut args: Vec<String> = match rng.gen_range(0..4) {
            0 => vec!["gc".into(), "--repack-below".into(), "100".into()],
            1 => vec![
                "forget".into(),
                "--keep-last".into(),
                rng.gen_range(5..10).to_string(),
                "--prune".into(),
            ],
            _ => {
                let mut a = vec!["forget".to_string()];
                for id in &ids {
                    if *id != newest && rng.gen_bool(0.3) {
                        a.push(id.to_string());
                    }
                }
                if a.len() == 1 {
                    a.push(ids[0].to_string());
                    if ids[0] == newest {
                        a = vec!["gc".into()];
                    }
                }
                a
            }
        };
        if args[0] == "forget" && rng.gen_bool(0.5) && !args.contains(&"--prune".to_string()) {
            args.push("--prune".into());
        }
        let mut child = Command::new(bin())
            .args(&args)
            .env("REWINDFS_REPO", &repo)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        if round % 4 != 3 {
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..span_ms)));
            let _ = child.kill();
            kills += 1;
            child.wait().unwrap();
        } else {
            let st = child.wait().unwrap();
            assert!(st.success(), "rewindfs {args:?} failed");
            span_ms = (started.elapsed().as_millis() as u64).max(20);
        }
        // What is left restores exactly as captured; what is gone was asked
        // to go.
        let now: Vec<u64> = snapshot_ids(&repo);
        for id in expected.keys().copied().collect::<Vec<_>>() {
            if !now.contains(&id) {
                assert!(
                    args.contains(&id.to_string()) || args[1] == "--keep-last",
                    "snapshot {id} vanished during {args:?}"
                );
                expected.remove(&id);
            }
        }
        let out = ok(&repo, &["verify", "--read-data"]);
        assert!(out.starts_with("ok:"), "after {args:?}: {out}");
        // Restore two of them each round (all of them at the end).
        for id in now.iter().filter(|_| rng.gen_bool(0.2)).take(2) {
            let dir = tmp.path().join(format!("r{id}"));
            ok(
                &repo,
                &["restore", &id.to_string(), "--to", dir.to_str().unwrap()],
            );
            assert_same(&expected[id], &model(&dir), &format!("snapshot {id}"));
            fs::remove_dir_all(&dir).unwrap();
        }
    }
    eprintln!("{kills} kills, {} snapshots left", expected.len());
    assert!(kills >= 30, "at least 30 kills");
    // A last complete gc, then everything.
    ok(&repo, &["gc", "--repack-below", "100"]);
    let out = ok(&repo, &["verify", "--read-data"]);
    assert!(out.starts_with("ok:"), "{out}");
    let stats: serde_json::Value = serde_json::from_str(&ok(&repo, &["stats", "--json"])).unwrap();
    assert_eq!(stats["unreferenced_chunks"], 0, "{stats}");
    for (id, want) in &expected {
        let dir = tmp.path().join(format!("r{id}"));
        ok(
            &repo,
            &["restore", &id.to_string(), "--to", dir.to_str().unwrap()],
        );
        assert_same(want, &model(&dir), &format!("snapshot {id}"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
