//! A repository written in manifest format 2 (before directory objects)
//! keeps working: read, diffed, restored, extended with format 3
//! snapshots, forgotten (kept snapshots rewritten into format 3), gc'd and
//! verified, with every snapshot restoring exactly what it captured.
//!
//! tests/fixtures/format2-repo.tgz was written by rewindfs at 6e66767 (the
//! last build writing format 2), without its index (rebuilt at the first
//! open), from this history (block size 64 KiB):
//! 1 full "one": big.bin (168,000 bytes of `line NNNNNN\n`), dir/a.txt
//!   ("hello\n", xattr user.tag=v1), hard.txt (a hard link to it),
//!   dir/sub/b.txt ("world\n"), link -> dir/a.txt, empty;
//! 2 incremental "two": `XXXX` written at offset 70,000 of big.bin,
//!   dir/new.txt ("new\n") added;
//! 3 differential "three" (against 1): dir/sub/b.txt removed;
//! 4 incremental "four" (against 3): dir/new.txt renamed to renamed.txt.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{model, ok};

/// What each snapshot must restore: path -> kind, content, symlink
/// target, xattrs, hard-link group (times, modes and owners are checked
/// by the other restore tests).
type Shape = BTreeMap<
    String,
    (
        char,
        Option<[u8; 32]>,
        Option<Vec<u8>>,
        Vec<(Vec<u8>, Vec<u8>)>,
        Option<String>,
    ),
>;

fn shape(root: &Path) -> Shape {
    model(root)
        .into_iter()
        .map(|(p, m)| {
            let xattrs = m
                .xattrs
                .into_iter()
                .filter(|(n, _)| n.starts_with(b"user."))
                .collect();
            (p, (m.kind, m.content, m.target, xattrs, m.link))
        })
        .collect()
}

/// The source as it was at snapshot `n`.
fn source(root: &Path, n: u32) {
    use std::fs;
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    let mut big: Vec<u8> = (0..14000)
        .flat_map(|i| format!("line {i:06}\n").into_bytes())
        .collect();
    if n >= 2 {
        big[70000..70004].copy_from_slice(b"XXXX");
    }
    fs::write(root.join("big.bin"), big).unwrap();
    fs::write(root.join("dir/a.txt"), "hello\n").unwrap();
    xattr_set(&root.join("dir/a.txt"));
    fs::hard_link(root.join("dir/a.txt"), root.join("hard.txt")).unwrap();
    if n < 3 {
        fs::write(root.join("dir/sub/b.txt"), "world\n").unwrap();
    }
    std::os::unix::fs::symlink("dir/a.txt", root.join("link")).unwrap();
    fs::write(root.join("empty"), "").unwrap();
    match n {
        2 | 3 => fs::write(root.join("dir/new.txt"), "new\n").unwrap(),
        4 => fs::write(root.join("renamed.txt"), "new\n").unwrap(),
        _ => {}
    }
}

fn xattr_set(p: &Path) {
    let st = Command::new("setfattr")
        .args(["-n", "user.tag", "-v", "v1"])
        .arg(p)
        .status()
        .expect("setfattr (package attr)");
    assert!(st.success());
}

fn restored(repo: &Path, snap: &str, to: &Path) -> Shape {
    ok(repo, &["restore", snap, "--to", to.to_str().unwrap()]);
    shape(to)
}

#[test]
fn a_format2_repository_is_read_extended_and_converted() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::set_permissions(&repo, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format2-repo.tgz");
    let st = Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(&repo)
        .status()
        .unwrap();
    assert!(st.success(), "extracting the fixture");
    let expected: Vec<Shape> = (1..=4)
        .map(|n| {
            let d = tmp.path().join(format!("src{n}"));
            source(&d, n);
            shape(&d)
        })
        .collect();
    // Read: every snapshot restores what it captured (resolved through
    // its format 2 chain).
    let list = ok(&repo, &["snapshots", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4);
    for n in 1..=4 {
        let got = restored(&repo, &n.to_string(), &tmp.path().join(format!("a{n}")));
        assert_eq!(
            got,
            expected[n as usize - 1],
            "snapshot {n} as written in format 2"
        );
    }
    let d = ok(&repo, &["diff", "2", "4"]);
    assert!(
        d.contains("dir/sub/b.txt") && d.contains("renamed.txt"),
        "{d}"
    );
    // Extended: a format 3 snapshot on top of the format 2 chain.
    let src5 = tmp.path().join("src5");
    source(&src5, 4);
    std::fs::write(src5.join("five.txt"), "five\n").unwrap();
    ok(
        &repo,
        &[
            "snapshot",
            "--source",
            src5.to_str().unwrap(),
            "--label",
            "five",
        ],
    );
    let d = ok(&repo, &["diff", "4", "5", "--json"]);
    let dv: serde_json::Value = serde_json::from_str(&d).unwrap();
    let changes: Vec<&str> = dv["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap_or(""))
        .collect();
    assert!(changes.contains(&"five.txt"), "{d}");
    // Forgotten: 1 and 2 go; 3 (a differential of 1) becomes a synthetic
    // full, rewritten in format 3; 4 follows it.
    ok(&repo, &["forget", "1", "2"]);
    ok(&repo, &["gc"]);
    let out = ok(&repo, &["verify", "--read-data"]);
    assert!(out.starts_with("ok"), "{out}");
    for n in 3..=4 {
        let got = restored(&repo, &n.to_string(), &tmp.path().join(format!("b{n}")));
        assert_eq!(
            got,
            expected[n as usize - 1],
            "snapshot {n} after forget and gc"
        );
    }
    let got = restored(&repo, "5", &tmp.path().join("b5"));
    assert_eq!(got, shape(&src5), "snapshot 5");
    // Everything left is format 3 now: forgetting 3 rewrites no manifest.
    ok(&repo, &["forget", "3"]);
    ok(&repo, &["gc"]);
    let out = ok(&repo, &["verify", "--read-data"]);
    assert!(out.starts_with("ok"), "{out}");
    let got = restored(&repo, "4", &tmp.path().join("c4"));
    assert_eq!(got, expected[3], "snapshot 4 after its base went");
}
