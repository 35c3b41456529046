//! The management tool end to end: finding mounts without `--repo`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::live::DaemonMount;
use common::{bin, mount_dirs};

/// Run the CLI in `cwd` with no repository in the environment.
fn run_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("REWINDFS_REPO")
        .env_remove("RUST_LOG")
        .output()
        .expect("run rewindfs")
}

fn ok_in(cwd: &Path, args: &[&str]) -> String {
    let o = run_in(cwd, args);
    assert!(
        o.status.success(),
        "rewindfs {args:?} in {} failed: {}\n{}",
        cwd.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn snapshots_json(cwd: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["snapshots", "--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok_in(cwd, &a)).unwrap()
}

#[test]
fn commands_find_the_repository_from_a_mountpoint_or_the_current_directory() {
    let (tmp, b1, m1, _) = mount_dirs();
    let (b2, m2, r2) = (
        tmp.path().join("b2"),
        tmp.path().join("m2"),
        tmp.path().join("r2"),
    );
    std::fs::create_dir_all(b1.join("sub")).unwrap();
    std::fs::create_dir_all(&b2).unwrap();
    std::fs::create_dir_all(&m2).unwrap();
    std::fs::write(b1.join("sub/one.txt"), b"first mount").unwrap();
    std::fs::write(b2.join("two.txt"), b"second mount").unwrap();
    let _a = DaemonMount::start(&b1, &m1, &["--every", "off"]);
    let _b = DaemonMount::start(
        &b2,
        &m2,
        &["--every", "off", "--repo", r2.to_str().unwrap()],
    );
    let m1 = m1.canonicalize().unwrap();
    let m2 = m2.canonicalize().unwrap();

    // `status` with no argument lists both mounts (other tests' mounts
    // may be there too).
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&ok_in(tmp.path(), &["status", "--json"])).unwrap();
    let row = |mp: &Path| {
        rows.iter()
            .find(|r| r["mountpoint"] == mp.to_str().unwrap())
            .unwrap_or_else(|| panic!("{} not listed in {rows:?}", mp.display()))
            .clone()
    };
    let (s1, s2) = (row(&m1), row(&m2));
    assert_eq!(s1["kind"], "live");
    assert_eq!(s1["backing"], b1.canonicalize().unwrap().to_str().unwrap());
    assert_eq!(
        s2["repo"],
        r2.canonicalize().unwrap().to_str().unwrap(),
        "{s2}"
    );
    assert!(s1["newest"]["id"].as_u64().is_some(), "{s1}");
    assert!(s1["error"].is_null());
    let table = ok_in(tmp.path(), &["status"]);
    assert!(table.contains(m1.to_str().unwrap()) && table.contains(m2.to_str().unwrap()));

    // From inside the first mount (a subdirectory): snapshot, list, restore.
    let inside = m1.join("sub");
    std::fs::write(inside.join("one.txt"), b"first mount, changed").unwrap();
    let out = ok_in(&inside, &["snapshot", "--label", "from-cwd"]);
    assert!(out.contains("snapshot"), "{out}");
    let list = snapshots_json(&inside, &[]);
    assert_eq!(list.last().unwrap()["label"], "from-cwd");
    let to = tmp.path().join("restored");
    ok_in(
        &inside,
        &[
            "restore",
            "latest",
            "sub/one.txt",
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(to.join("one.txt")).unwrap(),
        b"first mount, changed"
    );
    // `status MNT` shows that mount.
    let one: serde_json::Value = serde_json::from_str(&ok_in(
        tmp.path(),
        &["status", "--json", m1.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(one["mountpoint"], m1.to_str().unwrap());

    // From anywhere with -C: the second mount's repository, not the first's.
    ok_in(
        tmp.path(),
        &["snapshot", "-C", m2.to_str().unwrap(), "--label", "with-C"],
    );
    let list2 = snapshots_json(tmp.path(), &["-C", m2.to_str().unwrap()]);
    assert_eq!(list2.last().unwrap()["label"], "with-C");
    assert!(list2.iter().all(|s| s["label"] != "from-cwd"));
    let to2 = tmp.path().join("restored2");
    ok_in(
        tmp.path(),
        &[
            "restore",
            "-C",
            m2.to_str().unwrap(),
            "latest",
            "--to",
            to2.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(to2.join("two.txt")).unwrap(), b"second mount");

    // --repo wins over the current directory.
    let list3 = snapshots_json(&inside, &["--repo", r2.to_str().unwrap()]);
    assert_eq!(list3.last().unwrap()["label"], "with-C");

    // Outside any mount, without --repo: one clear error, non-zero exit.
    let o = run_in(tmp.path(), &["snapshots"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no repository given"), "{err}");
    // A directory that is not a mount, named with -C: refused.
    let o = run_in(
        tmp.path(),
        &["snapshots", "-C", tmp.path().to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not inside a rewindfs mount"));
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Every JSON document hooks left in `dir` whose name starts with `prefix`.
fn hook_events(dir: &Path, prefix: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with(prefix) || !name.ends_with(".done") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        out.push(
            serde_json::from_str(text.trim()).unwrap_or_else(|err| panic!("{name}: {err}: {text}")),
        );
    }
    out
}

#[test]
fn hooks_get_json_events_and_rolling_verification_covers_and_catches_damage() {
    let (tmp, b, m, r) = mount_dirs();
    let hooks = tmp.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    // Each run writes its stdin to a file of its own, renamed when whole.
    let hook = |kind: &str| {
        format!(
            "f='{d}/{kind}.'$$; cat > \"$f.tmp\" && mv \"$f.tmp\" \"$f.done\"",
            d = hooks.display()
        )
    };
    std::fs::write(b.join("weights.bin"), common::bytes(7, 512 << 10)).unwrap();
    let _mount = DaemonMount::start(
        &b,
        &m,
        &[
            "--every",
            "off",
            "--repo",
            r.to_str().unwrap(),
            "--on-snapshot",
            &hook("snap"),
            "--on-error",
            &hook("err"),
            "--verify-every",
            "1s",
            "--verify-sample",
            "50",
        ],
    );
    std::fs::write(m.join("step-100.txt"), b"trained").unwrap();
    ok_in(
        tmp.path(),
        &["snapshot", "-C", m.to_str().unwrap(), "--label", "step-100"],
    );
    let snaps = wait_for("the snapshot hook", 30, || {
        let v = hook_events(&hooks, "snap.");
        v.iter()
            .any(|e| e["snapshot"]["label"] == "step-100")
            .then_some(v)
    });
    let e = snaps
        .iter()
        .find(|e| e["snapshot"]["label"] == "step-100")
        .unwrap();
    assert_eq!(e["event"], "snapshot");
    assert_eq!(e["trigger"], "request");
    assert_eq!(e["snapshot"]["kind"], "incremental");
    assert!(e["duration_seconds"].as_f64().unwrap() >= 0.0);
    assert!(e["snapshot"]["id"].as_u64().unwrap() >= 2);

    // Rolling verification: 50% per 1 s round, so a whole rotation within
    // about 3 s; status shows full coverage.
    let status = |tmp: &Path| -> serde_json::Value {
        serde_json::from_str(&ok_in(tmp, &["status", "--json", m.to_str().unwrap()])).unwrap()
    };
    wait_for("a full verification rotation", 60, || {
        let s = status(tmp.path());
        let v = &s["verify"];
        (v["coverage"].as_f64() == Some(1.0)
            && v["last_rotation"].is_string()
            && v["checked_total"].as_u64() >= Some(2))
        .then_some(())
    });
    let s = status(tmp.path());
    assert!(s["verify"]["checked_total"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(s["verify"]["damaged_total"], 0);

    // Damage a stored byte in the middle of the biggest pack: the next
    // rotation finds it and the error hook says so.
    let packs = r.join("packs");
    let mut biggest: Option<(u64, std::path::PathBuf)> = None;
    for e in walk(&packs) {
        let len = std::fs::metadata(&e).unwrap().len();
        if biggest.as_ref().is_none_or(|(l, _)| len > *l) {
            biggest = Some((len, e));
        }
    }
    let (len, pack) = biggest.expect("a pack file");
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(len / 2) as usize] ^= 0x5a;
    std::fs::write(&pack, &bytes).unwrap();
    let errs = wait_for("the error hook after damage", 60, || {
        let v = hook_events(&hooks, "err.");
        v.iter().any(|e| e["during"] == "verify").then_some(v)
    });
    let e = errs.iter().find(|e| e["during"] == "verify").unwrap();
    assert_eq!(e["event"], "error");
    assert!(e["message"].as_str().unwrap().contains("blob"), "{e}");
    let s = status(tmp.path());
    assert!(s["verify"]["damaged_total"].as_u64().unwrap() >= 1, "{s}");
    // Put the byte back so the unmount's snapshot and checks are clean.
    bytes[(len / 2) as usize] ^= 0x5a;
    std::fs::write(&pack, &bytes).unwrap();
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
