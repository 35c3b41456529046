//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod live;
pub mod s3;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rewindfs"))
}

/// Run the CLI with `REWINDFS_REPO=repo`.
pub fn cli(repo: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("REWINDFS_REPO", repo)
        .env_remove("RUST_LOG")
        .output()
        .expect("run rewindfs")
}

/// Run the CLI and insist on success; returns stdout.
pub fn ok(repo: &Path, args: &[&str]) -> String {
    succeeded(cli(repo, args), args)
}

/// Insist that the run of `rewindfs ARGS` succeeded; returns stdout.
pub fn succeeded(o: Output, args: &[&str]) -> String {
    assert!(
        o.status.success(),
        "rewindfs {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// `rewindfs snapshot --source SRC --kind KIND` on `repo`, which must succeed.
/// A scan snapshot of `src` taken in this process (no daemon, no CLI):
/// its record.
pub fn scan_record(
    repo: &rewindfs::repo::Repository,
    src: &Path,
    kind: rewindfs::snapshot::Kind,
    threads: usize,
) -> rewindfs::snapshot::SnapshotRecord {
    rewindfs::capture::scan::snapshot_dir(
        repo,
        src,
        &rewindfs::capture::scan::ScanOptions {
            kind,
            label: None,
            threads,
            recorded_time_ns: None,
        },
    )
    .unwrap()
    .record
}

pub fn scan_snapshot(repo: &Path, src: &Path, kind: &str) -> String {
    ok(
        repo,
        &[
            "snapshot",
            "--source",
            src.to_str().unwrap(),
            "--kind",
            kind,
        ],
    )
}

/// What a restore must reproduce of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub size: u64,
    pub content: Option<[u8; 32]>,
    pub target: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For hard links: the first path (in sorted order) of the inode.
    pub link: Option<String>,
}

/// The tree under `root` (not including `root` itself), as a model.
pub fn model(root: &Path) -> BTreeMap<String, Model> {
    let mut out = BTreeMap::new();
    let mut first_path: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
            }
            all.push((p, md));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, md) in all {
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            'f'
        } else {
            's'
        };
        let content = ft
            .is_file()
            .then(|| *blake3::hash(&std::fs::read(&p).unwrap()).as_bytes());
        let target = ft.is_symlink().then(|| {
            std::fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        });
        let link = if ft.is_file() && md.nlink() > 1 {
            Some(first_path.entry(md.ino()).or_insert(rel.clone()).clone())
        } else {
            None
        };
        let xattrs = if ft.is_symlink() {
            Vec::new()
        } else {
            xattrs(&p)
        };
        out.insert(
            rel,
            Model {
                kind,
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                size: if ft.is_file() { md.len() } else { 0 },
                content,
                target,
                xattrs,
                link,
            },
        );
    }
    out
}

fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let f = match std::fs::File::open(p) {
        Ok(f) => f,
        Err(_) => return Vec::new(),
    };
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::flistxattr(&f, &mut names[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let mut v = vec![0u8; 65536];
        let len = rustix::fs::fgetxattr(&f, name, &mut v[..]).unwrap();
        v.truncate(len);
        out.push((name.to_vec(), v));
    }
    out.sort();
    out
}

/// Assert two models are equal, with a readable first difference.
pub fn assert_same(expected: &BTreeMap<String, Model>, got: &BTreeMap<String, Model>, what: &str) {
    for (k, v) in expected {
        match got.get(k) {
            None => panic!("{what}: {k} is missing"),
            Some(g) if g != v => panic!("{what}: {k} differs:\nexpected {v:?}\n     got {g:?}"),
            _ => {}
        }
    }
    for k in got.keys() {
        assert!(expected.contains_key(k), "{what}: {k} should not be there");
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A temporary directory holding `b` (a backing directory) and `m` (a
/// mountpoint), both created, and the path `r` for a repository. The
/// directory lives as long as the returned `TempDir`.
pub fn mount_dirs() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (backing, mnt, repo) = (
        tmp.path().join("b"),
        tmp.path().join("m"),
        tmp.path().join("r"),
    );
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    (tmp, backing, mnt, repo)
}

/// `rewindfs status --json` of the daemon holding `repo`.
pub fn status(repo: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(repo, &["status", "--json"])).unwrap()
}

/// The random generator of a crash test: seeded from `CRASH_SEED` or at
/// random, and the seed printed so that a failure can be replayed.
pub fn crash_rng() -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("CRASH_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// A `mount-snapshot` mount, unmounted when dropped (also on panic).
pub struct SnapMount {
    repo: PathBuf,
    mp: PathBuf,
}

impl SnapMount {
    pub fn start(repo: &Path, mp: &Path, args: &[&str]) -> SnapMount {
        std::fs::create_dir_all(mp).unwrap();
        let mut a = vec!["mount-snapshot"];
        a.extend_from_slice(args);
        a.push(mp.to_str().unwrap());
        ok(repo, &a);
        SnapMount {
            repo: repo.to_path_buf(),
            mp: mp.to_path_buf(),
        }
    }
}

impl Drop for SnapMount {
    fn drop(&mut self) {
        let o = cli(&self.repo, &["umount", self.mp.to_str().unwrap()]);
        if !o.status.success() {
            let _ = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mp)
                .status();
        }
    }
}

/// Run tests/python/SCRIPT with `args`; its stdout, or a failure showing
/// both of its outputs.
pub fn python(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let o = Command::new("python3")
        .arg(path)
        .args(args)
        .env("OPENBLAS_NUM_THREADS", "1")
        .output()
        .expect("python3 is needed");
    assert!(
        o.status.success(),
        "{script} failed (numpy and safetensors are needed: pip install numpy safetensors, as .ci/run does)\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
