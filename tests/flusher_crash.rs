//! Crash loop: kill -9 the mount daemon at random moments under a write
//! load with frequent snapshots (so kills land in writes, cuts, captures
//! and commits), remount, snapshot. Every committed snapshot verifies and
//! restores, the latest equals the backing directory, and no write whose
//! fsync was acknowledged is missing.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::live::DaemonMount;
use common::{assert_same, crash_rng, model, mount_dirs, ok, status};
use rand::{Rng, SeedableRng};

const FILES: usize = 4;
const REC: usize = 4096;

fn record(iter: u64, seq: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(REC);
    while r.len() < REC {
        r.extend_from_slice(&iter.to_le_bytes());
        r.extend_from_slice(&seq.to_le_bytes());
    }
    r
}

#[test]
fn kill_9_under_load_loses_nothing() {
    let mut rng = crash_rng();
    let (tmp, backing, mnt, repo) = mount_dirs();
    fs::create_dir_all(backing.join("small")).unwrap();
    for f in 0..FILES {
        fs::write(backing.join(format!("f{f}")), b"").unwrap();
    }
    ok(&repo, &["init", "--block-size", "64K"]);
    let r = repo.to_str().unwrap();
    let args = [
        "--repo",
        r,
        "--every",
        "300ms",
        "--differential-every",
        "1s",
        "--full-every",
        "3s",
    ];
    // Per file: records written (offset = index * REC) and acknowledged.
    let mut written = [0u64; FILES];
    let mut acked: Vec<Vec<(u64, u64)>> = vec![Vec::new(); FILES];
    let mut kills = 0;
    for iter in 1..=30u64 {
        let m = DaemonMount::start(&backing, &mnt, &args);
        let pid = status(&repo)["pid"].as_u64().unwrap();
        let stop = AtomicBool::new(false);
        let wseed: u64 = rng.gen();
        let load = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let mut wr = rand::rngs::StdRng::seed_from_u64(wseed);
                let files: Vec<_> = (0..FILES)
                    .map(|f| {
                        OpenOptions::new()
                            .write(true)
                            .open(mnt.join(format!("f{f}")))
                    })
                    .collect();
                let mut out: Vec<(usize, u64, bool)> = Vec::new(); // (file, seq, acked)
                let mut seq = written;
                let mut unacked: Vec<Vec<u64>> = vec![Vec::new(); FILES];
                while !stop.load(Ordering::Relaxed) {
                    let f = wr.gen_range(0..FILES);
                    let Ok(file) = &files[f] else { break };
                    if file
                        .write_all_at(&record(iter, seq[f]), seq[f] * REC as u64)
                        .is_err()
                    {
                        break;
                    }
                    unacked[f].push(seq[f]);
                    out.push((f, seq[f], false));
                    seq[f] += 1;
                    if wr.gen_range(0..4) == 0 {
                        if file.sync_all().is_err() {
                            break;
                        }
                        for s in unacked[f].drain(..) {
                            out.push((f, s, true));
                        }
                    }
                    if wr.gen_range(0..20) == 0 {
                        let p = mnt.join(format!("small/s{}", wr.gen_range(0..50)));
                        let _ = if wr.gen() {
                            fs::write(&p, record(iter, 0))
                        } else {
                            fs::remove_file(&p)
                        };
                    }
                }
                (out, seq)
            });
            std::thread::sleep(Duration::from_millis(rng.gen_range(100..1500)));
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
            stop.store(true, Ordering::Relaxed);
            h.join().unwrap()
        });
        kills += 1;
        let (events, seq) = load;
        for (f, s, is_ack) in events {
            if is_ack {
                acked[f].push((iter, s));
            }
        }
        written = seq;
        m.umount(); // the stale mount of the dead daemon

        // Remount, snapshot, check.
        let m = DaemonMount::start(&backing, &mnt, &args);
        ok(
            &repo,
            &["snapshot", "--label", &format!("after kill {iter}")],
        );
        m.umount();
        let out = tmp.path().join(format!("check{iter}"));
        ok(&repo, &["restore", "latest", "--to", out.to_str().unwrap()]);
        assert_same(
            &model(&backing),
            &model(&out),
            &format!("iteration {iter}: latest vs backing"),
        );
        for (f, recs) in acked.iter().enumerate() {
            let data = fs::read(out.join(format!("f{f}"))).unwrap();
            for (it, s) in recs {
                let at = *s as usize * REC;
                assert!(
                    data.len() >= at + REC && data[at..at + REC] == record(*it, *s)[..],
                    "iteration {iter}: fsynced record {s} of f{f} is missing"
                );
            }
        }
        fs::remove_dir_all(&out).unwrap();
    }
    let list: serde_json::Value =
        serde_json::from_str(&ok(&repo, &["snapshots", "--json"])).unwrap();
    let ids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    let kinds: BTreeMap<String, usize> =
        list.as_array()
            .unwrap()
            .iter()
            .fold(BTreeMap::new(), |mut m, s| {
                *m.entry(s["kind"].as_str().unwrap().to_string())
                    .or_default() += 1;
                m
            });
    eprintln!(
        "{kills} kills, {} snapshots committed: {kinds:?}",
        ids.len()
    );
    let v = ok(&repo, &["verify", "--read-data"]);
    assert!(v.starts_with("ok:"), "{v}");
    for id in ids {
        let out = tmp.path().join(format!("r{id}"));
        ok(
            &repo,
            &["restore", &id.to_string(), "--to", out.to_str().unwrap()],
        );
        fs::remove_dir_all(&out).unwrap();
    }
}
