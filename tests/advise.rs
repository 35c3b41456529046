//! `rewindfs advise` on a repository with a generated history: 48 hourly
//! snapshots of a 32 MiB dataset (8 files of 4 MiB of random bytes) in
//! which at hour h blocks 0 and 2 of file h mod 8 are rewritten (so each
//! block is rewritten every 8 hours). Its estimates must be the numbers a
//! hand calculation gives for that history (within 5%; manifests are a
//! few hundred bytes here):
//! - hourly captures store every version: 2 MiB an hour, 336 MiB a week;
//! - daily captures store what the day left: all 8 files were rewritten
//!   within any 24 hours, so 16 blocks, 16 MiB a day, 112 MiB a week;
//! - 15-minute captures: the history has nothing finer than an hour, so
//!   the hourly figure (flagged "at least");
//! - reads: the new blocks plus 32 MiB per real full; worst chains and
//!   recovery points follow from the intervals; the restore time is the
//!   dataset at the speed the test's own restore recorded.
//!
//! The history is stored in fixed blocks (`REWINDFS_FIXED_BLOCKS=1`), so
//! that the blocks of the hand calculation are the chunks stored (content
//! chunks would add a neighbour's bytes to each rewritten block).

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::{bytes, cli, ok};

const MIB: f64 = (1u64 << 20) as f64;

fn rfc3339(secs: i64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn within(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 0.05 * want.abs(),
        "{what}: advise says {got}, the hand calculation {want}"
    );
}

/// `rewindfs ARGS`, storing files read whole in fixed blocks.
fn ok_fixed(repo: &Path, args: &[&str]) -> String {
    common::succeeded(
        std::process::Command::new(common::bin())
            .args(args)
            .env("REWINDFS_REPO", repo)
            .env("REWINDFS_FIXED_BLOCKS", "1")
            .env_remove("RUST_LOG")
            .output()
            .expect("run rewindfs"),
        args,
    )
}

fn generate(repo: &Path, data: &Path) {
    fs::create_dir_all(data).unwrap();
    for i in 0..8u64 {
        fs::write(data.join(format!("f{i}")), bytes(i, 4 << 20)).unwrap();
    }
    let r = repo.to_str().unwrap();
    let d = data.to_str().unwrap();
    // Two days ago, then every hour.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t0 = now - 2 * 86400;
    ok_fixed(
        repo,
        &[
            "snapshot",
            "--repo",
            r,
            "--source",
            d,
            "--kind",
            "full",
            "--time",
            &rfc3339(t0),
        ],
    );
    for h in 1..48i64 {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(data.join(format!("f{}", h % 8)))
            .unwrap();
        for block in [0u64, 2] {
            f.seek(SeekFrom::Start(block << 20)).unwrap();
            f.write_all(&bytes(1000 + h as u64 * 10 + block, 1 << 20))
                .unwrap();
        }
        drop(f);
        ok_fixed(
            repo,
            &[
                "snapshot",
                "--repo",
                r,
                "--source",
                d,
                "--time",
                &rfc3339(t0 + h * 3600),
            ],
        );
    }
}

#[test]
fn advise_matches_a_hand_calculation() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let data = tmp.path().join("data");
    ok(&repo, &["init", "--repo", repo.to_str().unwrap()]);
    generate(&repo, &data);

    // No restore recorded yet: advise reads the latest snapshot's blocks
    // (its directories one at a time, up to its read budget) to measure.
    let v: serde_json::Value = serde_json::from_str(&ok(
        &repo,
        &["advise", "--json", "--rpo", "1h", "--timezone", "UTC"],
    ))
    .unwrap();
    let source = v["history"]["restore_source"].as_str().unwrap();
    assert!(
        source.starts_with("no restore recorded: measured now by reading and checking 32 MiB"),
        "{source}"
    );
    assert!(v["history"]["restore_bytes_per_second"].as_f64().unwrap() > 0.0);

    // A restore records its speed for advise.
    let out = tmp.path().join("restored");
    ok(&repo, &["restore", "latest", "--to", out.to_str().unwrap()]);
    let log = fs::read_to_string(repo.join("cache/restores.jsonl")).unwrap();
    let sample: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    let speed = sample["bytes"].as_f64().unwrap() / sample["seconds"].as_f64().unwrap();
    assert_eq!(sample["bytes"].as_u64(), Some(32 << 20));

    let v: serde_json::Value = serde_json::from_str(&ok(
        &repo,
        &["advise", "--json", "--rpo", "1h", "--timezone", "UTC"],
    ))
    .unwrap();
    let h = &v["history"];
    assert_eq!(h["snapshots"], 47);
    within(h["span_hours"].as_f64().unwrap(), 47.0, "hours covered");
    assert_eq!(h["dataset_bytes"].as_u64(), Some(32 << 20));
    within(
        h["added_per_hour"].as_f64().unwrap(),
        2.0 * MIB,
        "new bytes per hour",
    );
    within(
        h["changed_per_hour"].as_f64().unwrap(),
        2.0 * MIB,
        "changed bytes per hour",
    );
    within(
        h["restore_bytes_per_second"].as_f64().unwrap(),
        speed,
        "restore speed",
    );
    assert_eq!(h["longest_chain"], 48);

    let dataset = 32.0 * MIB;
    let hourly = 168.0 * 2.0 * MIB;
    let daily = 7.0 * 16.0 * MIB;
    // (name, stored per week, read per week, worst chain, recovery
    // point in hours, basis)
    let expect = [
        (
            "daily full",
            daily,
            daily + 7.0 * dataset,
            1,
            24.0,
            "replayed",
        ),
        (
            "weekly full + daily differential",
            daily,
            daily + dataset,
            2,
            24.0,
            "replayed",
        ),
        (
            "weekly full + hourly incremental",
            hourly,
            hourly + dataset,
            168,
            1.0,
            "replayed",
        ),
        (
            "weekly full + daily differential + hourly incremental",
            hourly,
            hourly + dataset,
            25,
            1.0,
            "replayed",
        ),
        (
            "daily synthetic full + hourly incremental",
            hourly,
            hourly,
            24,
            1.0,
            "replayed",
        ),
        (
            "daily synthetic full + 15-min incremental (the default)",
            hourly,
            hourly,
            96,
            0.25,
            "replayed, at least",
        ),
    ];
    let cands = v["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), expect.len());
    for (name, stored, read, chain, rpo_h, basis) in expect {
        let e = cands
            .iter()
            .find(|e| e["candidate"]["name"] == name)
            .unwrap_or_else(|| panic!("no candidate {name}"));
        within(
            e["stored_bytes_per_week"].as_f64().unwrap(),
            stored,
            &format!("{name}: stored per week"),
        );
        within(
            e["read_bytes_per_week"].as_f64().unwrap(),
            read,
            &format!("{name}: read per week"),
        );
        assert_eq!(e["worst_chain"], chain, "{name}");
        assert_eq!(e["data_basis"], basis, "{name}");
        assert_eq!(
            e["recovery_point_seconds"].as_f64(),
            Some(rpo_h * 3600.0),
            "{name}"
        );
        within(
            e["worst_restore_seconds"].as_f64().unwrap(),
            dataset / speed,
            &format!("{name}: restore time"),
        );
        assert_eq!(e["meets_targets"], rpo_h <= 1.0, "{name}");
    }
    // Meeting RPO 1 h at the least cost: the hourly candidates store the
    // same within 1%; synthetic fulls read least; hourly has the
    // shorter chain.
    assert_eq!(
        v["recommended"],
        "daily synthetic full + hourly incremental"
    );
    // Without targets: daily captures store a third; of those the
    // weekly full reads the dataset once a week, not seven times.
    let v: serde_json::Value =
        serde_json::from_str(&ok(&repo, &["advise", "--json", "--timezone", "UTC"])).unwrap();
    assert_eq!(v["recommended"], "weekly full + daily differential");

    // The table says the same for people.
    let table = ok(&repo, &["advise", "--rpo", "1h", "--timezone", "UTC"]);
    assert!(
        table.contains("* daily synthetic full + hourly incremental"),
        "{table}"
    );
    assert!(table.contains("x daily full"), "{table}");
    assert!(table.contains("--synthetic-fulls always"), "{table}");

    // Bad input is a clear error.
    let o = cli(&repo, &["advise", "--rpo", "soon"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--rpo"));
    let o = cli(&repo, &["advise", "--days", "0"]);
    assert!(!o.status.success());
    // A repository without history says what it needs.
    let empty = tmp.path().join("empty");
    ok(&empty, &["init", "--repo", empty.to_str().unwrap()]);
    let o = cli(&empty, &["advise"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no snapshots yet"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The lifetimes advise reads from the reference ledger are the ones a
/// replay of the trees gives, over the whole history and over windows of
/// it, with files removed, contents that come back and duplicates.
#[test]
fn lifetimes_from_the_ledger_equal_a_replay_of_the_trees() {
    use rewindfs::advise::replay::{ChunkLife, Lifetimes};
    let tmp = tempfile::tempdir().unwrap();
    let (repo_dir, data) = (tmp.path().join("repo"), tmp.path().join("data"));
    ok(&repo_dir, &["init", "--block-size", "64K"]);
    fs::create_dir_all(&data).unwrap();
    let r = repo_dir.to_str().unwrap().to_string();
    let d = data.to_str().unwrap().to_string();
    for step in 0..12u64 {
        // Four files drawn from five contents (they come back), one of
        // them a copy, one removed now and then.
        for f in 0..4u64 {
            let path = data.join(format!("f{f}"));
            if (step + f) % 5 == 4 {
                let _ = fs::remove_file(&path);
            } else {
                fs::write(&path, bytes((step * 3 + f) % 5, 192 << 10)).unwrap();
            }
        }
        fs::copy(data.join("f0"), data.join("copy")).ok();
        std::thread::sleep(std::time::Duration::from_millis(20));
        ok(&repo_dir, &["snapshot", "--repo", &r, "--source", &d]);
    }
    let repo = rewindfs::repo::Repository::open(&repo_dir).unwrap();
    let mut all = repo.snapshots().unwrap();
    all.sort_by_key(|r| r.id);
    // The replay closes a life where every path holding the chunk is
    // rewritten and opens it again at once ((1, 1), (2, 2) for (1, 2)):
    // the same snapshots, which is all a schedule's replay asks of them.
    let sorted = |l: Lifetimes| {
        let mut c: Vec<ChunkLife> = l.chunks;
        for x in &mut c {
            let mut merged: Vec<(u32, u32)> = Vec::new();
            for &(a, b) in &x.lives {
                match merged.last_mut() {
                    Some(last) if last.1 + 1 == a => last.1 = b,
                    _ => merged.push((a, b)),
                }
            }
            x.lives = merged;
        }
        c.sort_by(|a, b| (&a.lives, a.stored, a.raw).cmp(&(&b.lives, b.stored, b.raw)));
        (l.times, c)
    };
    for (a, b) in [(0, all.len()), (3, 9), (5, all.len()), (0, 2)] {
        let recs = &all[a..b];
        let ledger = sorted(Lifetimes::measure(&repo, recs).unwrap());
        let replay = sorted(Lifetimes::replay(&repo, recs).unwrap());
        assert!(
            !replay.1.is_empty() || b - a < 3,
            "window {a}..{b} has changes"
        );
        assert_eq!(ledger, replay, "window {a}..{b}");
    }
}
