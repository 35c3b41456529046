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
