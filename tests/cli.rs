//! The CLI end to end: errors, corruption, rebuild-index, restore safety.

mod common;

use std::fs;
use std::path::Path;

use common::{assert_same, bytes, cli, model, ok};
use rewindfs::repo::Repository;
use rewindfs::snapshot::manifest::normalize_user_path;
use rewindfs::snapshot::Tree;

fn dataset(root: &Path) {
    fs::create_dir_all(root.join("ckpt")).unwrap();
    fs::create_dir_all(root.join("txt")).unwrap();
    fs::write(root.join("ckpt/a.bin"), bytes(1, 3 << 20)).unwrap();
    fs::write(root.join("ckpt/b.bin"), bytes(2, (2 << 20) + 17)).unwrap();
    for i in 0..20 {
        fs::write(
            root.join(format!("txt/{i}.txt")),
            format!("line {i}\n").repeat(100),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("ckpt/a.bin", root.join("link")).unwrap();
}

/// Overwrite block `block` (1 MiB blocks) of `path` with random bytes.
fn rewrite_block(path: &Path, block: u64, seed: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(block << 20)).unwrap();
    f.write_all(&bytes(seed, 1 << 20)).unwrap();
}

/// Flip one byte inside the stored chunk of block `block` of `path` in
/// the latest snapshot (`at` bytes into its payload).
fn damage_chunk(repo_dir: &Path, path: &str, block: usize, at: u64) {
    let (pack, offset) = {
        let repo = Repository::open(repo_dir).unwrap();
        let rec = repo.snapshots().unwrap().pop().unwrap();
        let tree = repo.resolve(&rec).unwrap();
        let (_, node) = tree.get(&normalize_user_path(path).unwrap()).unwrap();
        let id = Tree::blocks_of(node)[block];
        let loc = repo.index().get_chunk(&id).unwrap().unwrap();
        (repo.pack_reader().pack_path(loc.pack), loc.offset + 88 + at)
    };
    let mut data = fs::read(&pack).unwrap();
    data[offset as usize] ^= 0x40;
    fs::write(&pack, data).unwrap();
}

fn first_line(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn bad_input_gets_one_clear_line_and_nonzero_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let o = cli(&repo, &["snapshots"]);
    assert!(!o.status.success());
    assert!(
        first_line(&o).contains("not a rewindfs repository"),
        "{}",
        first_line(&o)
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1);

    let o = cli(&repo, &["init", "--block-size", "3000"]);
    assert!(!o.status.success());
    assert!(first_line(&o).contains("power of two"));

    ok(&repo, &["init"]);
    let o = cli(&repo, &["init"]);
    assert!(!o.status.success());
    assert!(first_line(&o).contains("already contains"));

    let o = cli(&repo, &["ls", "latest"]);
    assert!(!o.status.success());
    assert!(
        first_line(&o).contains("no snapshots yet"),
        "{}",
        first_line(&o)
    );

    let src = tmp.path().join("src");
    dataset(&src);
    ok(&repo, &["snapshot", "--source", src.to_str().unwrap()]);
    let o = cli(&repo, &["ls", "42"]);
    assert!(!o.status.success());
    assert!(
        first_line(&o).contains("no snapshot matches \"42\""),
        "{}",
        first_line(&o)
    );
    let o = cli(&repo, &["cat", "1", "nope"]);
    assert!(!o.status.success());
    assert!(first_line(&o).contains("does not exist"));
    let o = cli(&repo, &["snapshot", "--source", "/nonexistent/dir"]);
    assert!(!o.status.success());
    assert!(first_line(&o).contains("not a directory"));

    // Another holder of the repository.
    {
        let _held = Repository::open(&repo).unwrap();
        let o = cli(&repo, &["snapshots"]);
        assert!(!o.status.success());
        assert!(
            first_line(&o).contains("in use by another rewindfs process"),
            "{}",
            first_line(&o)
        );
    }

    // A repository from the future.
    let cfg = repo.join("config.json");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(
        &cfg,
        text.replace("\"format_version\": 3", "\"format_version\": 99"),
    )
    .unwrap();
    let o = cli(&repo, &["snapshots"]);
    assert!(!o.status.success());
    assert!(
        first_line(&o).contains("format version 99"),
        "{}",
        first_line(&o)
    );
    fs::write(&cfg, text).unwrap();
    ok(&repo, &["verify", "--read-data"]);
}

#[test]
fn snapshots_json_lists_the_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    dataset(&src);
    ok(&repo, &["init", "--block-size", "64K"]);
    let s = src.to_str().unwrap();
    ok(&repo, &["snapshot", "--source", s, "--label", "first"]);
    fs::write(src.join("txt/new.txt"), "new").unwrap();
    ok(
        &repo,
        &["snapshot", "--source", s, "--kind", "differential"],
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&repo, &["snapshots", "--json"])).unwrap();
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["kind"], "full");
    assert_eq!(a[0]["label"], "first");
    assert_eq!(a[1]["kind"], "differential");
    assert_eq!(a[1]["parent"], 1);
    assert_eq!(a[1]["files"], 23);
    for k in ["id", "time", "name", "logical_bytes", "stored_bytes"] {
        assert!(!a[1][k].is_null(), "{k}");
    }
    assert!(a[0]["name"].as_str().unwrap() < a[1]["name"].as_str().unwrap());
    // Selection by name and by time.
    let name = a[0]["name"].as_str().unwrap();
    assert!(ok(&repo, &["ls", name, "txt"]).lines().count() == 20);
    let when = format!("@{}", a[1]["time"].as_str().unwrap());
    assert!(ok(&repo, &["ls", &when, "txt"]).contains("new.txt"));
    assert_eq!(ok(&repo, &["cat", "latest", "txt/new.txt"]), "new");

    // Everything in the repository is private to its owner.
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![repo.clone()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let want = if md.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(md.permissions().mode() & 0o777, want, "{}", p.display());
        if md.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
}

#[test]
fn corrupted_chunk_is_reported_and_only_its_file_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let src = tmp.path().join("src");
    dataset(&src);
    ok(&repo_dir, &["init"]);
    ok(&repo_dir, &["snapshot", "--source", src.to_str().unwrap()]);
    // Flip one byte of block 1 of ckpt/a.bin where it is stored.
    damage_chunk(&repo_dir, "ckpt/a.bin", 1, 1000);

    let o = cli(&repo_dir, &["verify", "--read-data"]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("snapshot 1 is damaged"), "{out}");
    assert!(out.contains("ckpt/a.bin"), "{out}");
    assert!(!out.contains("ckpt/b.bin"), "{out}");
    // Without --read-data the references are still fine.
    ok(&repo_dir, &["verify"]);

    let o = cli(&repo_dir, &["cat", "1", "ckpt/a.bin"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("ckpt/a.bin"));

    let out_dir = tmp.path().join("out");
    let o = cli(
        &repo_dir,
        &["restore", "1", "--to", out_dir.to_str().unwrap()],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ckpt/a.bin"), "{err}");
    assert!(
        !out_dir.join("ckpt/a.bin").exists(),
        "a damaged file must not be left behind"
    );
    let mut want = model(&src);
    want.remove("ckpt/a.bin");
    let mut got = model(&out_dir);
    // The directory's mtime is set after its children; a.bin's removal
    // happened before, so only compare the files.
    got.remove("ckpt");
    want.remove("ckpt");
    assert_same(&want, &got, "restore around a damaged file");
}

#[test]
fn rebuild_index_gives_the_same_snapshots_and_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    dataset(&src);
    ok(&repo, &["init", "--block-size", "64K"]);
    let s = src.to_str().unwrap();
    ok(&repo, &["snapshot", "--source", s]);
    let m1 = model(&src);
    fs::write(src.join("ckpt/a.bin"), bytes(9, 1 << 20)).unwrap();
    ok(&repo, &["snapshot", "--source", s]);
    let m2 = model(&src);
    let before = ok(&repo, &["snapshots", "--json"]);

    fs::remove_dir_all(repo.join("index")).unwrap();
    let out = ok(&repo, &["rebuild-index"]);
    assert!(out.contains("2 snapshots"), "{out}");
    assert_eq!(ok(&repo, &["snapshots", "--json"]), before);
    ok(&repo, &["verify", "--read-data"]);
    for (id, want) in [("1", &m1), ("2", &m2)] {
        let out = tmp.path().join(format!("r{id}"));
        ok(&repo, &["restore", id, "--to", out.to_str().unwrap()]);
        assert_same(want, &model(&out), id);
    }
    // Rebuilding over an existing index moves it aside, never deletes it.
    let out = ok(&repo, &["rebuild-index"]);
    assert!(out.contains("moved the old index"), "{out}");
    assert!(fs::read_dir(&repo).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("index.old-")));
    assert_eq!(ok(&repo, &["snapshots", "--json"]), before);

    // A damaged index (sled can refuse to open after a kill) is moved
    // aside and rebuilt on open, with a warning; nothing is deleted.
    let db = repo.join("index/db");
    let mut bytes = fs::read(&db).unwrap();
    for b in bytes.iter_mut().skip(100).take(4000) {
        *b = 0xff;
    }
    fs::write(&db, bytes).unwrap();
    let o = cli(&repo, &["snapshots", "--json"]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), before);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("index was damaged") && err.contains("rebuilt"),
        "{err}"
    );
    assert!(fs::read_dir(&repo).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("index.damaged-")));
    ok(&repo, &["verify", "--read-data"]);
}

#[test]
fn restore_refuses_clashes_and_never_writes_outside_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    dataset(&src);
    ok(&repo, &["init"]);
    ok(&repo, &["snapshot", "--source", src.to_str().unwrap()]);

    // A target where `ckpt` is a symlink planted to point elsewhere.
    let target = tmp.path().join("target");
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir_all(&target).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, target.join("ckpt")).unwrap();
    let t = target.to_str().unwrap();
    let o = cli(&repo, &["restore", "1", "--to", t]);
    assert!(!o.status.success());
    assert!(
        first_line(&o).contains("already exist"),
        "{}",
        first_line(&o)
    );
    assert!(
        !target.join("txt").exists(),
        "nothing is written when refusing"
    );

    ok(&repo, &["restore", "1", "--to", t, "--overwrite"]);
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "wrote through a planted symlink"
    );
    assert!(fs::symlink_metadata(target.join("ckpt")).unwrap().is_dir());
    assert_same(&model(&src), &model(&target), "restore --overwrite");

    // A single file restores as DIR/<name>.
    let one = tmp.path().join("one");
    ok(
        &repo,
        &[
            "restore",
            "latest",
            "ckpt/b.bin",
            "--to",
            one.to_str().unwrap(),
        ],
    );
    assert_eq!(
        fs::read(one.join("b.bin")).unwrap(),
        fs::read(src.join("ckpt/b.bin")).unwrap()
    );
    // A directory restores as DIR/<name>/...
    ok(
        &repo,
        &["restore", "latest", "/txt/", "--to", one.to_str().unwrap()],
    );
    assert_eq!(fs::read_dir(one.join("txt")).unwrap().count(), 20);
    let o = cli(
        &repo,
        &["restore", "latest", "txt", "--to", one.to_str().unwrap()],
    );
    assert!(
        !o.status.success(),
        "second restore of the same dir must refuse"
    );
}

#[test]
fn full_repository_disk_fails_cleanly_and_keeps_earlier_snapshots() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test mounts a small tmpfs and must run as root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    fs::create_dir(&small).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&small);
    let repo = small.join("repo");
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("small.bin"), bytes(1, 1 << 20)).unwrap();
    ok(&repo, &["init", "--block-size", "64K"]);
    ok(&repo, &["snapshot", "--source", src.to_str().unwrap()]);
    let first = model(&src);
    fs::write(src.join("big.bin"), bytes(2, 12 << 20)).unwrap();
    let o = cli(&repo, &["snapshot", "--source", src.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = first_line(&o);
    assert!(err.contains("No space left"), "{err}");
    fs::remove_file(src.join("big.bin")).unwrap();
    let list = ok(&repo, &["snapshots", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    ok(&repo, &["verify", "--read-data"]);
    let out = tmp.path().join("out");
    ok(&repo, &["restore", "1", "--to", out.to_str().unwrap()]);
    assert_same(&first, &model(&out), "snapshot 1 after a full disk");
}

#[test]
fn diff_lists_what_changed_between_two_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let repo = tmp.path().join("repo");
    dataset(&src);
    ok(&repo, &["init"]);
    let s = src.to_str().unwrap();
    ok(&repo, &["snapshot", "--source", s]);
    // One block of a checkpoint rewritten, a directory renamed, a symlink
    // removed, a file added, a mode changed.
    rewrite_block(&src.join("ckpt/a.bin"), 1, 9);
    fs::rename(src.join("txt"), src.join("text")).unwrap();
    fs::remove_file(src.join("link")).unwrap();
    fs::write(src.join("ckpt/c.bin"), bytes(3, 5000)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(src.join("ckpt/b.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    ok(&repo, &["snapshot", "--source", s]);

    let v: serde_json::Value =
        serde_json::from_str(&ok(&repo, &["diff", "1", "2", "--json"])).unwrap();
    let changes = v["changes"].as_array().unwrap();
    let find = |kind: &str, key: &str, path: &str| {
        changes
            .iter()
            .find(|c| c["change"] == kind && c[key] == path)
            .unwrap_or_else(|| panic!("no {kind} of {path} in {v:#}"))
    };
    // a.bin (3 MiB, read whole by the scan) is in content chunks: the
    // rewritten MiB and at most the chunk on each side of it are new.
    let m = find("modified", "path", "ckpt/a.bin");
    let (n, b) = (
        m["changed_blocks"].as_u64().unwrap(),
        m["changed_bytes"].as_u64().unwrap(),
    );
    assert!((1..=8).contains(&n), "{m}");
    assert!(((1 << 20)..=(3 << 20)).contains(&b), "{m}");
    assert_eq!(find("renamed", "to", "text")["from"], "txt");
    assert_eq!(find("removed", "path", "link")["kind"], "symlink");
    assert_eq!(find("added", "path", "ckpt/c.bin")["size"], 5000);
    assert_eq!(
        find("metadata", "path", "ckpt/b.bin")["fields"],
        serde_json::json!(["mode"])
    );
    // The renamed directory's unchanged files are not listed again.
    assert!(
        !changes.iter().any(|c| c.to_string().contains("txt/")),
        "{v:#}"
    );
    let sum = &v["summary"];
    assert_eq!(
        (
            &sum["added"],
            &sum["removed"],
            &sum["modified"],
            &sum["metadata_only"],
            &sum["renamed"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(1)
        ),
        "{v:#}"
    );
    // Limited to a directory, and as text.
    let text = ok(&repo, &["diff", "1", "latest", "/ckpt"]);
    assert!(text.contains("M  ckpt/a.bin"), "{text}");
    assert!(!text.contains("text"), "{text}");
    let all = ok(&repo, &["diff", "1", "2"]);
    assert!(all.contains("R  txt -> text"), "{all}");
    // A path in neither snapshot is an error.
    let o = cli(&repo, &["diff", "1", "2", "/nope"]);
    assert!(!o.status.success());
    assert!(
        first_line(&o).contains("neither snapshot"),
        "{}",
        first_line(&o)
    );
}

#[test]
fn verify_sample_reads_a_different_share_of_the_packs_each_run() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let src = tmp.path().join("src");
    dataset(&src);
    ok(&repo_dir, &["init"]);
    // Small packs, so that the data spreads over several.
    let cfg_path = repo_dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&fs::read(&cfg_path).unwrap()).unwrap();
    cfg["pack_target_size"] = serde_json::json!(1 << 20);
    fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    ok(&repo_dir, &["snapshot", "--source", src.to_str().unwrap()]);
    let packs = fs::read_dir(repo_dir.join("packs")).unwrap().count();
    assert!(packs >= 4, "{packs} packs");
    damage_chunk(&repo_dir, "ckpt/b.bin", 0, 100);

    // The whole sample is the whole repository.
    let o = cli(&repo_dir, &["verify", "--read-data", "--sample", "100"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("ckpt/b.bin"));
    // One pack a run: the damaged one is found in some runs, not in others.
    let (mut found, mut missed) = (0, 0);
    for _ in 0..60 {
        let o = cli(&repo_dir, &["verify", "--read-data", "--sample", "1"]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() {
            assert!(
                out.contains(&format!("in 1 of {packs} packs (1% sample)")),
                "{out}"
            );
            missed += 1;
        } else {
            assert!(out.contains("ckpt/b.bin"), "{out}");
            found += 1;
        }
    }
    assert!(found > 0 && missed > 0, "found {found}, missed {missed}");
    // Bad input.
    assert!(!cli(&repo_dir, &["verify", "--sample", "5"])
        .status
        .success());
    let o = cli(&repo_dir, &["verify", "--read-data", "--sample", "0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("above 0"));
}

#[test]
fn stats_show_what_each_snapshot_costs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let repo = tmp.path().join("repo");
    dataset(&src);
    ok(&repo, &["init"]);
    let s = src.to_str().unwrap();
    ok(&repo, &["snapshot", "--source", s]);
    // Block 1 of a.bin (random, so stored as is) replaced: a.bin is in
    // content chunks (read whole, more than a block), so each snapshot
    // holds the chunks over that MiB that the other does not: the MiB and
    // at most a chunk (one block) on each side.
    rewrite_block(&src.join("ckpt/a.bin"), 1, 7);
    ok(&repo, &["snapshot", "--source", s]);
    let v: serde_json::Value = serde_json::from_str(&ok(&repo, &["stats", "--json"])).unwrap();
    let snaps = v["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2, "{v:#}");
    for (s, chain) in snaps.iter().zip([1, 2]) {
        let u = s["unique_bytes"].as_u64().unwrap();
        assert!(((1 << 20)..=(3 << 20)).contains(&u), "{v:#}");
        assert_eq!(s["chain_len"], chain, "{v:#}");
        assert_eq!(s["files"], 22, "{v:#}");
    }
    assert_eq!(v["snapshots_by_kind"]["full"], 1);
    assert_eq!(v["snapshots_by_kind"]["incremental"], 1);
    assert_eq!(v["unreferenced_chunks"], 0);
    // Two snapshots of nearly the same data: 1.4x to 2x deduplication
    // (the rewritten MiB and the content chunks around it are new).
    let dedup = v["dedup_ratio"].as_f64().unwrap();
    assert!(dedup > 1.4 && dedup < 2.0, "{dedup}");
    assert!(v["pack_bytes"].as_u64().unwrap() >= v["stored_bytes"].as_u64().unwrap());
    // One snapshot, and the text form.
    let one: serde_json::Value =
        serde_json::from_str(&ok(&repo, &["stats", "1", "--json"])).unwrap();
    assert_eq!(one["snapshots"].as_array().unwrap().len(), 1);
    let text = ok(&repo, &["stats"]);
    assert!(text.contains("deduplication"), "{text}");
    assert!(text.contains("longest chain 2"), "{text}");
}

/// forget and gc: refusals are one clear line with a non-zero exit and
/// change nothing; --dry-run changes nothing; a real run says what it did;
/// --json is one object.
#[test]
fn forget_and_gc_refuse_clearly_and_dry_runs_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    dataset(&src);
    ok(&repo, &["init", "--block-size", "64K"]);
    for i in 0..4u64 {
        rewrite_block(&src.join("ckpt/a.bin"), 0, 100 + i);
        ok(&repo, &["snapshot", "--source", src.to_str().unwrap()]);
    }
    let before = ok(&repo, &["snapshots", "--json"]);
    for (args, says) in [
        (&["forget"][..], "say what to forget"),
        (&["forget", "4"][..], "is the newest"),
        (&["forget", "9"][..], "no snapshot matches"),
        (&["forget", "1", "--keep-last", "2"][..], "not both"),
        (
            &["forget", "--keep-label", "[x"][..],
            "bad --keep-label glob",
        ),
        (&["forget", "--keep-within", "soon"][..], "bad duration"),
        (
            &["gc", "--repack-below", "150"][..],
            "percentage from 0 to 100",
        ),
    ] {
        let o = cli(&repo, args);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(
            first_line(&o).contains(says),
            "{args:?}: {}",
            first_line(&o)
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stderr).lines().count(),
            1,
            "{args:?}: one line"
        );
    }
    let dry = ok(&repo, &["forget", "--keep-last", "2", "--dry-run"]);
    assert!(dry.contains("would forget 2 snapshot(s)"), "{dry}");
    assert!(
        dry.contains("last snapshot"),
        "why each kept one stays: {dry}"
    );
    let gc_dry: serde_json::Value =
        serde_json::from_str(&ok(&repo, &["gc", "--dry-run", "--json"])).unwrap();
    assert_eq!(gc_dry["dry_run"], true);
    assert_eq!(
        ok(&repo, &["snapshots", "--json"]),
        before,
        "dry runs change nothing"
    );

    let done: serde_json::Value =
        serde_json::from_str(&ok(&repo, &["forget", "1", "2", "--prune", "--json"])).unwrap();
    assert_eq!(done["forget"]["plan"]["remove"], serde_json::json!([1, 2]));
    assert!(done["gc"]["bytes_freed"].as_u64().unwrap() > 0, "{done}");
    let list = ok(&repo, &["snapshots"]);
    assert!(list.contains("full (synthetic)"), "{list}");
    assert!(list.contains("UNIQUE"), "{list}");
    ok(&repo, &["verify", "--read-data"]);
}
