//! The remote tier against a real S3 server (a one-node Ceph with its S3
//! gateway, tests/common/s3.rs): replication of a history of every kind,
//! disaster recovery with nothing local (snapshots, restore, verify,
//! mount-snapshot and pull from the remote alone), many hosts in one
//! bucket, kill -9 in the middle of uploads, a server that dies or fills
//! up mid-push.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::s3::{bucket_name, s3};
use common::{bytes, model, Model};

/// A repository with small packs (many objects to upload).
fn small_pack_repo(repo: &Path) {
    s3().ok(&[
        "init",
        "--repo",
        repo.to_str().unwrap(),
        "--block-size",
        "64K",
    ]);
    let cfg = repo.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&cfg).unwrap()).unwrap();
    v["pack_target_size"] = serde_json::json!(1 << 20);
    fs::write(&cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn snap(repo: &Path, src: &Path, kind: &str) {
    s3().ok(&[
        "snapshot",
        "--repo",
        repo.to_str().unwrap(),
        "--source",
        src.to_str().unwrap(),
        "--kind",
        kind,
    ]);
}

/// A history of every kind; the tree after each snapshot.
fn history(repo: &Path, src: &Path) -> Vec<BTreeMap<String, Model>> {
    fs::create_dir_all(src.join("ckpt/step1")).unwrap();
    fs::write(src.join("ckpt/step1/model.bin"), bytes(1, 3 << 20)).unwrap();
    fs::write(src.join("notes.txt"), b"first\n").unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("ckpt/step1", src.join("latest")).unwrap();
    fs::hard_link(src.join("notes.txt"), src.join("notes.link")).unwrap();
    let mut models = Vec::new();
    snap(repo, src, "full");
    models.push(model(src));
    // Incremental: a rewritten middle, a new file.
    let mut m = fs::read(src.join("ckpt/step1/model.bin")).unwrap();
    m[1 << 20..(1 << 20) + 4096].copy_from_slice(&bytes(2, 4096));
    fs::write(src.join("ckpt/step1/model.bin"), &m).unwrap();
    fs::write(src.join("data.bin"), bytes(3, 1 << 20)).unwrap();
    snap(repo, src, "incremental");
    models.push(model(src));
    // Differential: a new checkpoint, the symlink moves.
    fs::create_dir_all(src.join("ckpt/step2")).unwrap();
    fs::write(src.join("ckpt/step2/model.bin"), bytes(4, 2 << 20)).unwrap();
    fs::remove_file(src.join("latest")).unwrap();
    std::os::unix::fs::symlink("ckpt/step2", src.join("latest")).unwrap();
    snap(repo, src, "differential");
    models.push(model(src));
    // Incremental: a delete, a rename, an append.
    fs::remove_dir_all(src.join("ckpt/step1")).unwrap();
    fs::rename(src.join("data.bin"), src.join("data-v2.bin")).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(src.join("notes.txt"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"second\n"))
        .unwrap();
    snap(repo, src, "incremental");
    models.push(model(src));
    // A new full, then one more incremental.
    snap(repo, src, "full");
    models.push(model(src));
    fs::write(src.join("ckpt/step2/opt.bin"), bytes(5, 700_000)).unwrap();
    snap(repo, src, "incremental");
    models.push(model(src));
    models
}

fn assert_same(expected: &BTreeMap<String, Model>, got: &BTreeMap<String, Model>, what: &str) {
    common::assert_same(expected, got, what);
}

/// Unmounts on drop (also when an assertion fails).
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_history_of_every_kind_restores_from_the_remote_alone() {
    let _server = common::s3::shared();
    let s3 = s3();
    let bucket = s3.bucket(&bucket_name("history"));
    let url = format!("s3://{bucket}/team");
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    let r = repo.to_str().unwrap();
    small_pack_repo(&repo);
    let models = history(&repo, &src);
    s3.ok(&["remote", "add", "--repo", r, "bk", &url, "--host", "h1"]);
    let out = s3.ok(&["push", "--repo", r, "--json"]);
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rep[0]["report"]["records"], 6, "{out}");
    assert!(rep[0]["report"]["packs"].as_u64().unwrap() >= 8, "{out}");
    // Nothing left to do: nothing is sent.
    let again: serde_json::Value =
        serde_json::from_str(&s3.ok(&["push", "--repo", r, "--json"])).unwrap();
    assert_eq!(again[0]["report"]["records"], 0);
    assert_eq!(again[0]["report"]["packs"], 0);
    // A lost upload log (a crash after the server's answer, before the
    // log line): what is on the remote is adopted, not sent again.
    fs::remove_file(repo.join("remotes/bk.log")).unwrap();
    let adopted: serde_json::Value =
        serde_json::from_str(&s3.ok(&["push", "--repo", r, "--json"])).unwrap();
    assert_eq!(adopted[0]["report"]["packs"], 0, "{adopted}");
    assert_eq!(adopted[0]["report"]["records"], 0, "{adopted}");
    assert!(
        adopted[0]["report"]["adopted"].as_u64().unwrap() >= 14,
        "{adopted}"
    );
    // The objects: config, every pack with its blob list, 6 records.
    let keys = s3.keys(&bucket);
    let packs: Vec<&String> = keys.iter().filter(|k| k.ends_with(".pack")).collect();
    for p in &packs {
        assert!(
            keys.contains(&p.replace(".pack", ".idx")),
            "{p} has no .idx"
        );
        assert!(p.starts_with("team/h1/packs/"), "{p}");
    }
    assert!(keys.contains(&"team/h1/config.json".to_string()));
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with("team/h1/snapshots/"))
            .count(),
        6
    );

    // The machine is gone: nothing local.
    fs::remove_dir_all(&repo).unwrap();
    let list: serde_json::Value =
        serde_json::from_str(&s3.ok(&["snapshots", "--remote", &url, "--json"])).unwrap();
    let kinds: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "full",
            "incremental",
            "differential",
            "incremental",
            "full",
            "incremental"
        ]
    );
    s3.ok(&["verify", "--remote", &url, "--read-data"]);
    for (i, want) in models.iter().enumerate() {
        let to = tmp.path().join(format!("restore{i}"));
        let id = (i + 1).to_string();
        s3.ok(&[
            "restore",
            "--remote",
            &url,
            &id,
            "--to",
            to.to_str().unwrap(),
        ]);
        assert_same(
            want,
            &model(&to),
            &format!("restore of snapshot {id} from the remote"),
        );
    }
    // A snapshot mounted straight from the object store.
    common::live::require_fuse();
    for (id, want) in [("3", &models[2]), ("latest", &models[5])] {
        let mnt = tmp.path().join(format!("mnt-{id}"));
        fs::create_dir(&mnt).unwrap();
        s3.ok(&[
            "mount-snapshot",
            "--remote",
            &url,
            id,
            mnt.to_str().unwrap(),
        ]);
        let guard = Unmount(mnt.clone());
        assert_same(want, &model(&mnt), &format!("mount-snapshot --remote {id}"));
        s3.ok(&["umount", mnt.to_str().unwrap()]);
        std::mem::forget(guard);
    }
    // pull rebuilds a repository that verifies, restores, and pushes
    // nothing again.
    let pulled = tmp.path().join("pulled");
    let p = pulled.to_str().unwrap();
    // An unencrypted remote is pulled only when trusted explicitly.
    let o = s3.run(&["pull", "--remote", &url, "--repo", p]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--trust-remote"),
        "{o:?}"
    );
    s3.ok(&["pull", "--remote", &url, "--trust-remote", "--repo", p]);
    s3.ok(&["verify", "--repo", p, "--read-data"]);
    let to = tmp.path().join("restore-pulled");
    s3.ok(&[
        "restore",
        "--repo",
        p,
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_same(
        &models[5],
        &model(&to),
        "restore from the pulled repository",
    );
    let pushed: serde_json::Value =
        serde_json::from_str(&s3.ok(&["push", "--repo", p, "--json"])).unwrap();
    assert_eq!(pushed[0]["report"]["packs"], 0, "{pushed}");
    assert_eq!(pushed[0]["report"]["records"], 0, "{pushed}");

    // Many hosts, one bucket.
    let repo2 = tmp.path().join("repo2");
    let src2 = tmp.path().join("src2");
    fs::create_dir(&src2).unwrap();
    fs::write(src2.join("other"), b"host two").unwrap();
    s3.ok(&["init", "--repo", repo2.to_str().unwrap()]);
    snap(&repo2, &src2, "full");
    let r2 = repo2.to_str().unwrap();
    s3.ok(&["remote", "add", "--repo", r2, "bk", &url, "--host", "h2"]);
    s3.ok(&["push", "--repo", r2]);
    let all: serde_json::Value =
        serde_json::from_str(&s3.ok(&["snapshots", "--remote", &url, "--all-hosts", "--json"]))
            .unwrap();
    let hosts: Vec<(&str, usize)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap(),
                h["snapshots"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(hosts, [("h1", 6), ("h2", 1)]);
    let o = s3.run(&["snapshots", "--remote", &url]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--host"),
        "{o:?}"
    );
    let one = s3.ok(&["snapshots", "--remote", &url, "--host", "h2"]);
    assert!(one.contains("full") && one.lines().count() == 2, "{one}");
    // A second repository cannot take a host's place.
    let o = s3.run(&["remote", "add", "--repo", r2, "again", &url, "--host", "h1"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another repository"),
        "{o:?}"
    );
}

/// A repository with a history, a remote with a bandwidth limit (so that
/// a push takes seconds), and the tree of its newest snapshot.
fn slow_remote(tmp: &Path, bucket: &str, rate: &str) -> (PathBuf, String, BTreeMap<String, Model>) {
    let (repo, src) = (tmp.join("repo"), tmp.join("src"));
    small_pack_repo(&repo);
    fs::create_dir(&src).unwrap();
    for i in 0..6u64 {
        fs::write(src.join(format!("shard-{i}.bin")), bytes(10 + i, 3 << 20)).unwrap();
    }
    snap(&repo, &src, "full");
    for round in 0..3u64 {
        fs::write(
            src.join(format!("new-{round}.bin")),
            bytes(20 + round, 2 << 20),
        )
        .unwrap();
        fs::remove_file(src.join(format!("shard-{round}.bin"))).unwrap();
        snap(&repo, &src, "incremental");
    }
    let url = format!("s3://{bucket}/p");
    s3().ok(&[
        "remote",
        "add",
        "--repo",
        repo.to_str().unwrap(),
        "bk",
        &url,
        "--host",
        "h",
        "--bandwidth",
        rate,
    ]);
    (repo, url, model(&src))
}

/// What the remote lists is whole: every snapshot it lists has all its
/// data (verify --remote checks every reference against the blob lists).
fn assert_remote_whole(url: &str, what: &str) -> usize {
    let o = s3().run(&["verify", "--remote", url, "--host", "h"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    if text.contains("holds no rewindfs repository") {
        return 0; // nothing uploaded yet
    }
    assert!(
        o.status.success(),
        "{what}: the remote lists a snapshot with missing data:\n{text}"
    );
    text.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{what}: {text}"))
}

#[test]
fn kill_9_in_the_middle_of_uploads_never_exposes_a_snapshot_without_its_data() {
    use rand::Rng;
    let _server = common::s3::shared();
    let s3 = s3();
    let bucket = s3.bucket(&bucket_name("kill9"));
    let tmp = tempfile::tempdir().unwrap();
    // ~24 MiB at 4 MiB/s: about 6 s of uploads, cut 20 times.
    let (repo, url, last) = slow_remote(tmp.path(), &bucket, "4M");
    let r = repo.to_str().unwrap();
    let mut rng = common::crash_rng();
    let (mut seen, mut cut) = (0, 0);
    for i in 0..20 {
        let mut child = s3.cmd(&["push", "--repo", r]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..400)));
        let _ = child.kill();
        if !child.wait().unwrap().success() {
            cut += 1;
        }
        let n = assert_remote_whole(&url, &format!("after kill {i}"));
        assert!(n >= seen, "the remote lost snapshots ({seen} -> {n})");
        seen = n;
    }
    assert!(
        cut >= 15,
        "only {cut} of 20 pushes were killed before they finished"
    );
    // The last push completes what is left and sends only that.
    let out = s3.ok(&["push", "--repo", r, "--json"]);
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sent = rep[0]["report"]["bytes"].as_u64().unwrap();
    let stored: u64 = fs::read_dir(repo.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        sent < stored,
        "the resumed push sent everything again ({sent} of {stored} bytes): {out}"
    );
    assert_eq!(assert_remote_whole(&url, "at the end"), 4);
    let to = tmp.path().join("restored");
    s3.ok(&[
        "restore",
        "--remote",
        &url,
        "--host",
        "h",
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    common::assert_same(&last, &model(&to), "restore after the interrupted pushes");
}

#[test]
fn a_server_that_dies_or_fills_up_mid_push_loses_nothing_and_the_push_resumes() {
    let _server = common::s3::exclusive();
    let s3 = s3();
    let bucket = s3.bucket(&bucket_name("faults"));
    let tmp = tempfile::tempdir().unwrap();
    let (repo, url, last) = slow_remote(tmp.path(), &bucket, "6M");
    let r = repo.to_str().unwrap();
    // The gateway dies in the middle of a push.
    let child = s3
        .cmd(&["push", "--repo", r])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s3.stop_gateway();
    let t0 = Instant::now();
    let o = child.wait_with_output().unwrap();
    s3.start_gateway();
    assert!(!o.status.success(), "the push went on without a server");
    assert!(t0.elapsed() < Duration::from_secs(90));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pushing to bk"), "{err}");
    let n = assert_remote_whole(&url, "after the server died");
    assert!(
        n < 4,
        "everything was uploaded before the server died: make the push slower"
    );
    // The bucket fills up.
    s3.quota(&bucket, Some(6 << 20));
    let o = s3.run(&["push", "--repo", r]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("QuotaExceeded") && err.contains("bucket is full"),
        "{err}"
    );
    let m = assert_remote_whole(&url, "with a full bucket");
    assert!(m >= n);
    // Room again: the push completes.
    s3.quota(&bucket, None);
    s3.ok(&["push", "--repo", r]);
    assert_eq!(assert_remote_whole(&url, "at the end"), 4);
    let to = tmp.path().join("restored");
    s3.ok(&[
        "restore",
        "--remote",
        &url,
        "--host",
        "h",
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    common::assert_same(&last, &model(&to), "restore after the faults");
}

#[test]
fn a_live_mount_replicates_after_each_snapshot_and_shows_the_lag() {
    let _server = common::s3::shared();
    let s3 = s3();
    let bucket = s3.bucket(&bucket_name("live"));
    let url = format!("s3://{bucket}/live");
    let (tmp, backing, mnt, repo) = common::mount_dirs();
    let r = repo.to_str().unwrap();
    s3.ok(&["init", "--repo", r]);
    s3.ok(&["remote", "add", "--repo", r, "bk", &url, "--host", "h"]);
    let live = common::live::DaemonMount::start_with_env(
        &backing,
        &mnt,
        &[
            "--repo",
            r,
            "--every",
            "off",
            "--full-every",
            "off",
            "--differential-every",
            "off",
        ],
        &s3.env,
    );
    fs::write(mnt.join("weights.bin"), bytes(7, 2 << 20)).unwrap();
    s3.ok(&["snapshot", "--repo", r]);
    fs::write(mnt.join("weights.bin"), bytes(8, 2 << 20)).unwrap();
    s3.ok(&["snapshot", "--repo", r]);
    let newest = |st: &serde_json::Value| st["newest"]["id"].as_u64();
    let t0 = Instant::now();
    loop {
        let st = common::status(&repo);
        let rem = &st["remotes"][0];
        if rem["pending_snapshots"] == 0
            && rem["pushing"] == false
            && rem["newest_replicated"].as_u64() == newest(&st)
            && newest(&st).is_some()
        {
            assert!(rem["uploaded_bytes"].as_u64().unwrap() >= 4 << 20, "{rem}");
            assert!(rem["last_error"].is_null(), "{rem}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not replicated: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = s3.ok(&["status", "--repo", r]);
    assert!(
        text.contains("remote bk:") && text.contains("up to date"),
        "{text}"
    );
    // `push` through the daemon: nothing left to send.
    let out = s3.ok(&["push", "--repo", r, "--json"]);
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rep[0]["report"]["packs"], 0, "{out}");
    live.umount();
    let to = tmp.path().join("restored");
    s3.ok(&[
        "restore",
        "--remote",
        &url,
        "--host",
        "h",
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(fs::read(to.join("weights.bin")).unwrap(), bytes(8, 2 << 20));
}

#[test]
fn an_encrypted_repository_leaves_no_plaintext_and_a_flipped_byte_is_an_authentication_error() {
    let _server = common::s3::shared();
    let s3 = s3();
    let bucket = s3.bucket(&bucket_name("encrypted"));
    let url = format!("s3://{bucket}/vault");
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    let r = repo.to_str().unwrap();
    let key = tmp.path().join("key");
    fs::write(&key, bytes(99, 32)).unwrap();
    // Key files others can read are refused.
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let k = key.to_str().unwrap();
    let with_key = |args: &[&str]| -> String {
        let o = s3.cmd(args).env("REWINDFS_KEY_FILE", k).output().unwrap();
        assert!(
            o.status.success(),
            "rewindfs {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    // Markers in contents, names, a label and the source path.
    let marker = "ZEBRA-MARKER-7731";
    fs::create_dir_all(src.join(format!("dir-{marker}"))).unwrap();
    fs::write(
        src.join(format!("dir-{marker}/notes-{marker}.txt")),
        marker.repeat(5000),
    )
    .unwrap();
    let mut tensor = bytes(3, 1 << 20);
    tensor[1000..1000 + marker.len()].copy_from_slice(marker.as_bytes());
    fs::write(src.join("tensor.bin"), &tensor).unwrap();
    with_key(&["init", "--repo", r, "--encrypt", "--block-size", "64K"]);
    let s = src.to_str().unwrap();
    with_key(&[
        "snapshot", "--repo", r, "--source", s, "--kind", "full", "--label", marker,
    ]);
    fs::write(src.join("more.txt"), marker.repeat(100)).unwrap();
    with_key(&["snapshot", "--repo", r, "--source", s]);
    let want = model(&src);
    // Nothing local shows the markers (or the plain blake3 ids of the data).
    let plain_id = blake3::hash(&tensor[..64 << 10]).to_hex().to_string();
    let grep = |root: &Path| -> Vec<String> {
        let mut hits = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let b = fs::read(&p).unwrap();
                    let text = String::from_utf8_lossy(&b);
                    if b.windows(marker.len()).any(|w| w == marker.as_bytes())
                        || text.contains(&plain_id)
                    {
                        hits.push(p.display().to_string());
                    }
                }
            }
        }
        hits
    };
    for sub in ["packs", "snapshots", "keys", "config.json"] {
        let p = repo.join(sub);
        if p.is_dir() {
            assert!(grep(&p).is_empty(), "plaintext in {}", p.display());
        } else {
            assert!(!fs::read_to_string(&p).unwrap().contains(marker));
        }
    }
    // Without the key nothing opens; with the wrong one neither.
    let o = s3.run(&["snapshots", "--repo", r]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is encrypted"),
        "{o:?}"
    );
    let wrong = tmp.path().join("wrong");
    fs::write(&wrong, bytes(100, 32)).unwrap();
    fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let o = s3
        .cmd(&["snapshots", "--repo", r])
        .env("REWINDFS_KEY_FILE", &wrong)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wrong passphrase or key file"),
        "{o:?}"
    );
    // Replicated: no object on the server holds a marker.
    with_key(&["remote", "add", "--repo", r, "bk", &url, "--host", "h"]);
    with_key(&["push", "--repo", r]);
    let keys = s3.keys(&bucket);
    assert!(
        keys.iter().any(|k| k.starts_with("vault/h/keys/")),
        "{keys:?}"
    );
    for key in &keys {
        let (code, body) = s3.curl("GET", &format!("{bucket}/{key}"), None);
        assert_eq!(code, 200);
        assert!(
            !body.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{key} holds plaintext"
        );
        assert!(
            !String::from_utf8_lossy(&body).contains(&plain_id),
            "{key} shows a plain chunk id"
        );
    }
    // Disaster recovery with the key alone.
    let to = tmp.path().join("restored");
    with_key(&[
        "restore",
        "--remote",
        &url,
        "--host",
        "h",
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    common::assert_same(&want, &model(&to), "restore of the encrypted remote");
    // A flipped byte in a pack on the server: an authentication error
    // naming the object, never bytes.
    let pack = keys.iter().find(|k| k.ends_with(".pack")).unwrap().clone();
    let (_, mut body) = s3.curl("GET", &format!("{bucket}/{pack}"), None);
    let at = body.len() / 2;
    body[at] ^= 0x20;
    let f = tmp.path().join("tampered");
    fs::write(&f, &body).unwrap();
    assert_eq!(s3.curl("PUT", &format!("{bucket}/{pack}"), Some(&f)).0, 200);
    let o = s3
        .cmd(&["verify", "--remote", &url, "--host", "h", "--read-data"])
        .env("REWINDFS_KEY_FILE", k)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{out}");
    let object = pack.trim_start_matches("vault/h/");
    assert!(
        out.contains(object) && (out.contains("authentication failed") || out.contains("damaged")),
        "{out}"
    );
    let to2 = tmp.path().join("restored2");
    let o = s3
        .cmd(&[
            "restore",
            "--remote",
            &url,
            "--host",
            "h",
            "latest",
            "--to",
            to2.to_str().unwrap(),
        ])
        .env("REWINDFS_KEY_FILE", k)
        .output()
        .unwrap();
    assert!(!o.status.success(), "a tampered pack restored");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(object) && err.contains("authentication failed"),
        "{err}"
    );
    // A flipped byte in a record: that snapshot is reported, not listed.
    let rec = keys
        .iter()
        .find(|k| k.ends_with("0000000002.json"))
        .unwrap()
        .clone();
    let (_, mut body) = s3.curl("GET", &format!("{bucket}/{rec}"), None);
    let at = body.len() - 5;
    body[at] ^= 1;
    fs::write(&f, &body).unwrap();
    assert_eq!(s3.curl("PUT", &format!("{bucket}/{rec}"), Some(&f)).0, 200);
    let o = s3
        .cmd(&["verify", "--remote", &url, "--host", "h"])
        .env("REWINDFS_KEY_FILE", k)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("snapshot record 2") && out.contains("authentication failed"),
        "{out}"
    );
}

#[test]
fn remote_retention_is_chain_safe_and_deletes_packs_only_when_still_unreferenced_later() {
    let _server = common::s3::shared();
    let s3 = s3();
    let bucket = s3.bucket(&bucket_name("retention"));
    let url = format!("s3://{bucket}/r");
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    let r = repo.to_str().unwrap();
    small_pack_repo(&repo);
    fs::create_dir(&src).unwrap();
    // 1 full, 2 and 3 incremental, 4 full, 5 incremental: each adds data.
    for (i, kind) in ["full", "incremental", "incremental", "full", "incremental"]
        .iter()
        .enumerate()
    {
        fs::write(src.join(format!("f{i}.bin")), bytes(40 + i as u64, 1 << 20)).unwrap();
        snap(&repo, &src, kind);
    }
    s3.ok(&["remote", "add", "--repo", r, "bk", &url, "--host", "h"]);
    s3.ok(&["push", "--repo", r]);
    let packs = |s3: &common::s3::S3| {
        s3.keys(&bucket)
            .iter()
            .filter(|k| k.ends_with(".pack"))
            .count()
    };
    let before = packs(s3);
    // Keep the newest only: its full (4) stays for the chain.
    let dry: serde_json::Value = serde_json::from_str(&s3.ok(&[
        "remote",
        "prune",
        "--repo",
        r,
        "bk",
        "--keep-last",
        "1",
        "--dry-run",
        "--json",
    ]))
    .unwrap();
    assert_eq!(dry["removed"], serde_json::json!([1, 2, 3]), "{dry}");
    assert_eq!(dry["kept_for_chains"], serde_json::json!([4]), "{dry}");
    assert_eq!(packs(s3), before, "a dry run deleted packs");
    let one: serde_json::Value = serde_json::from_str(&s3.ok(&[
        "remote",
        "prune",
        "--repo",
        r,
        "bk",
        "--keep-last",
        "1",
        "--delay",
        "0s",
        "--json",
    ]))
    .unwrap();
    assert_eq!(one["removed"], serde_json::json!([1, 2, 3]));
    assert!(one["scheduled_packs"].as_u64().unwrap() > 0, "{one}");
    assert_eq!(one["deleted_packs"], 0, "deleted without a delay: {one}");
    let list: serde_json::Value =
        serde_json::from_str(&s3.ok(&["snapshots", "--remote", &url, "--host", "h", "--json"]))
            .unwrap();
    let ids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [4, 5]);
    // Meanwhile a new snapshot brings back the data of snapshot 1 (its
    // blobs sit in scheduled packs): the push must upload it again.
    fs::write(src.join("again.bin"), bytes(40, 1 << 20)).unwrap();
    snap(&repo, &src, "incremental");
    let want = model(&src);
    s3.ok(&["push", "--repo", r]);
    let two: serde_json::Value = serde_json::from_str(&s3.ok(&[
        "remote", "prune", "--repo", r, "bk", "--delay", "0s", "--json",
    ]))
    .unwrap();
    assert!(two["deleted_packs"].as_u64().unwrap() > 0, "{two}");
    assert!(packs(s3) < before);
    // Everything listed is whole and restores.
    s3.ok(&["verify", "--remote", &url, "--host", "h", "--read-data"]);
    let to = tmp.path().join("restored");
    s3.ok(&[
        "restore",
        "--remote",
        &url,
        "--host",
        "h",
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    common::assert_same(&want, &model(&to), "restore after remote retention");
    // The local repository is untouched.
    let local = s3.ok(&["snapshots", "--repo", r, "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&local)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        6
    );
}

#[test]
fn an_unencrypted_remote_is_untrusted_data_unless_asked() {
    use std::os::unix::fs::PermissionsExt;
    let _server = common::s3::shared();
    let s3 = s3();
    let bucket = s3.bucket(&bucket_name("trust"));
    let url = format!("s3://{bucket}/t");
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    let r = repo.to_str().unwrap();
    fs::create_dir(&src).unwrap();
    fs::write(src.join("tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    s3.ok(&["init", "--repo", r]);
    snap(&repo, &src, "full");
    s3.ok(&["remote", "add", "--repo", r, "bk", &url, "--host", "h"]);
    s3.ok(&["push", "--repo", r]);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let plain = tmp.path().join("plain");
    let o = s3.run(&[
        "restore",
        "--remote",
        &url,
        "latest",
        "--to",
        plain.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    if rustix::process::geteuid().is_root() {
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("untrusted data"),
            "{o:?}"
        );
    }
    assert_eq!(
        mode(&plain.join("tool")),
        0o755,
        "setuid restored from an untrusted remote"
    );
    let trusted = tmp.path().join("trusted");
    s3.ok(&[
        "restore",
        "--remote",
        &url,
        "--trust-remote",
        "latest",
        "--to",
        trusted.to_str().unwrap(),
    ]);
    if rustix::process::geteuid().is_root() {
        assert_eq!(mode(&trusted.join("tool")), 0o4755);
    }
}

#[test]
fn a_reused_snapshot_id_is_never_overwritten_on_the_remote() {
    let _server = common::s3::shared();
    let s3 = s3();
    let bucket = s3.bucket(&bucket_name("ids"));
    let url = format!("s3://{bucket}/i");
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    let r = repo.to_str().unwrap();
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"first").unwrap();
    s3.ok(&["init", "--repo", r]);
    snap(&repo, &src, "full");
    fs::write(src.join("a"), b"second").unwrap();
    snap(&repo, &src, "incremental");
    s3.ok(&["remote", "add", "--repo", r, "bk", &url, "--host", "h"]);
    s3.ok(&["push", "--repo", r]);
    // A rollback of the repository: snapshot 2 is gone, and the next
    // snapshot gets id 2 again with other content.
    fs::remove_file(repo.join("snapshots/0000000002.json")).unwrap();
    s3.ok(&["rebuild-index", "--repo", r]);
    fs::write(src.join("a"), b"third, after the rollback").unwrap();
    snap(&repo, &src, "incremental");
    let o = s3.run(&["push", "--repo", r]);
    assert!(
        !o.status.success(),
        "a different snapshot 2 was pushed over the remote's"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ids were reused"),
        "{o:?}"
    );
    // The remote still restores its own snapshot 2.
    let to = tmp.path().join("restored");
    s3.ok(&[
        "restore",
        "--remote",
        &url,
        "--host",
        "h",
        "2",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(fs::read(to.join("a")).unwrap(), b"second");
    // The same after the upload log is lost: the conditional create
    // refuses to overwrite.
    fs::remove_file(repo.join("remotes/bk.log")).unwrap();
    let o = s3.run(&["push", "--repo", r]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("holds another snapshot 2"),
        "{o:?}"
    );
}
