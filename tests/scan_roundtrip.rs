//! Property test: random trees, random rounds of modifications, a snapshot
//! of a random kind after each round; restoring every snapshot must give
//! exactly the tree as it was at that round (content and metadata).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use rewindfs::capture::scan::{snapshot_dir, ScanOptions};
use rewindfs::repo::Repository;
use rewindfs::restore::{restore, RestoreOptions};
use rewindfs::snapshot::Kind;

use common::{assert_same, bytes, model, Model};

const BS: u64 = 64 << 10;

#[derive(Clone, Debug)]
enum Op {
    /// Overwrite a span of a file in place.
    Write {
        file: usize,
        at: u32,
        len: u32,
        seed: u64,
    },
    Append {
        file: usize,
        len: u32,
        seed: u64,
    },
    Truncate {
        file: usize,
        to: u32,
    },
    Rename {
        file: usize,
        dir: usize,
    },
    Delete {
        file: usize,
    },
    NewFile {
        dir: usize,
        size: u32,
        seed: u64,
    },
    Chmod {
        file: usize,
        mode: u32,
    },
    Mkdir {
        dir: usize,
    },
    RemoveDir {
        dir: usize,
    },
    Symlink {
        file: usize,
        dir: usize,
    },
    HardLink {
        file: usize,
        dir: usize,
    },
    SetXattr {
        file: usize,
        seed: u64,
    },
}

fn size() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(BS as u32),
        Just(2 * BS as u32),
        Just(3 * BS as u32 + 1),
        1u32..(4 * BS as u32),
        1u32..2000,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<usize>(), any::<u32>(), 1u32..(2 * BS as u32), any::<u64>())
            .prop_map(|(file, at, len, seed)| Op::Write { file, at, len, seed }),
        2 => (any::<usize>(), 1u32..(BS as u32 + 10), any::<u64>())
            .prop_map(|(file, len, seed)| Op::Append { file, len, seed }),
        2 => (any::<usize>(), size()).prop_map(|(file, to)| Op::Truncate { file, to }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(file, dir)| Op::Rename { file, dir }),
        1 => any::<usize>().prop_map(|file| Op::Delete { file }),
        2 => (any::<usize>(), size(), any::<u64>())
            .prop_map(|(dir, size, seed)| Op::NewFile { dir, size, seed }),
        1 => (any::<usize>(), prop_oneof![Just(0o600u32), Just(0o755), Just(0o4750), Just(0o444)])
            .prop_map(|(file, mode)| Op::Chmod { file, mode }),
        1 => any::<usize>().prop_map(|dir| Op::Mkdir { dir }),
        1 => any::<usize>().prop_map(|dir| Op::RemoveDir { dir }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(file, dir)| Op::Symlink { file, dir }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(file, dir)| Op::HardLink { file, dir }),
        1 => (any::<usize>(), any::<u64>()).prop_map(|(file, seed)| Op::SetXattr { file, seed }),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Full),
        Just(Kind::Incremental),
        Just(Kind::Differential)
    ]
}

/// Regular files and directories under `root` (relative, sorted).
fn listing(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let m = model(root);
    let files = m
        .iter()
        .filter(|(_, v)| v.kind == 'f')
        .map(|(k, _)| PathBuf::from(k))
        .collect();
    let mut dirs: Vec<PathBuf> = vec![PathBuf::new()];
    dirs.extend(
        m.iter()
            .filter(|(_, v)| v.kind == 'd')
            .map(|(k, _)| PathBuf::from(k)),
    );
    (files, dirs)
}

fn pick<T: Clone>(v: &[T], i: usize) -> Option<T> {
    (!v.is_empty()).then(|| v[i % v.len()].clone())
}

fn apply(root: &Path, op: &Op, counter: &mut u64) {
    *counter += 1;
    let n = *counter;
    let (files, dirs) = listing(root);
    match op {
        Op::Write {
            file,
            at,
            len,
            seed,
        } => {
            if let Some(f) = pick(&files, *file) {
                let p = root.join(f);
                let size = fs::metadata(&p).unwrap().len();
                let at = if size == 0 {
                    0
                } else {
                    *at as u64 % (size + 1)
                };
                let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
                use std::os::unix::fs::FileExt;
                f.write_all_at(&bytes(*seed, *len as usize), at).unwrap();
            }
        }
        Op::Append { file, len, seed } => {
            if let Some(f) = pick(&files, *file) {
                use std::io::Write;
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .open(root.join(f))
                    .unwrap();
                f.write_all(&bytes(*seed, *len as usize)).unwrap();
            }
        }
        Op::Truncate { file, to } => {
            if let Some(f) = pick(&files, *file) {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(root.join(f))
                    .unwrap();
                f.set_len(*to as u64).unwrap();
            }
        }
        Op::Rename { file, dir } => {
            if let (Some(f), Some(d)) = (pick(&files, *file), pick(&dirs, *dir)) {
                let _ = fs::rename(root.join(&f), root.join(d).join(format!("r{n}")));
            }
        }
        Op::Delete { file } => {
            if let Some(f) = pick(&files, *file) {
                fs::remove_file(root.join(f)).unwrap();
            }
        }
        Op::NewFile { dir, size, seed } => {
            if let Some(d) = pick(&dirs, *dir) {
                // Every third new file repeats content (dedup across files).
                let seed = if n.is_multiple_of(3) { 7 } else { *seed };
                fs::write(
                    root.join(d).join(format!("f{n}")),
                    bytes(seed, *size as usize),
                )
                .unwrap();
            }
        }
        Op::Chmod { file, mode } => {
            if let Some(f) = pick(&files, *file) {
                fs::set_permissions(root.join(f), fs::Permissions::from_mode(*mode)).unwrap();
            }
        }
        Op::Mkdir { dir } => {
            if let Some(d) = pick(&dirs, *dir) {
                fs::create_dir(root.join(d).join(format!("d{n}"))).unwrap();
            }
        }
        Op::RemoveDir { dir } => {
            if let Some(d) = pick(&dirs[1..], *dir) {
                fs::remove_dir_all(root.join(d)).unwrap();
            }
        }
        Op::Symlink { file, dir } => {
            if let (Some(f), Some(d)) = (pick(&files, *file), pick(&dirs, *dir)) {
                std::os::unix::fs::symlink(&f, root.join(d).join(format!("s{n}"))).unwrap();
            }
        }
        Op::HardLink { file, dir } => {
            if let (Some(f), Some(d)) = (pick(&files, *file), pick(&dirs, *dir)) {
                fs::hard_link(root.join(f), root.join(d).join(format!("h{n}"))).unwrap();
            }
        }
        Op::SetXattr { file, seed } => {
            if let Some(f) = pick(&files, *file) {
                let fh = fs::File::open(root.join(f)).unwrap();
                rustix::fs::fsetxattr(
                    &fh,
                    "user.test",
                    &bytes(*seed, 10),
                    rustix::fs::XattrFlags::empty(),
                )
                .unwrap();
            }
        }
    }
}

fn run_case(initial: Vec<(usize, u32, u64)>, rounds: Vec<(Vec<Op>, Kind)>) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let repo_dir = tmp.path().join("repo");
    fs::create_dir(&src).unwrap();
    for d in ["a", "a/b", "c"] {
        fs::create_dir(src.join(d)).unwrap();
    }
    let dirs = ["", "a", "a/b", "c"];
    for (i, (d, size, seed)) in initial.iter().enumerate() {
        fs::write(
            src.join(dirs[d % dirs.len()]).join(format!("i{i}")),
            bytes(*seed, *size as usize),
        )
        .unwrap();
    }
    Repository::init(&repo_dir, BS as u32, 3).unwrap();
    let repo = Repository::open(&repo_dir).unwrap();
    let mut expected: Vec<(u64, BTreeMap<String, Model>)> = Vec::new();
    let mut counter = 0;
    let first = snapshot_dir(
        &repo,
        &src,
        &ScanOptions {
            kind: Kind::Incremental,
            label: None,
            threads: 2,
            recorded_time_ns: None,
        },
    )
    .unwrap();
    assert_eq!(first.record.kind, Kind::Full, "the first snapshot is full");
    expected.push((first.record.id, model(&src)));
    for (ops, kind) in &rounds {
        for op in ops {
            apply(&src, op, &mut counter);
        }
        let r = snapshot_dir(
            &repo,
            &src,
            &ScanOptions {
                kind: *kind,
                label: None,
                threads: 2,
                recorded_time_ns: None,
            },
        )
        .unwrap();
        assert_eq!(r.record.kind, *kind);
        expected.push((r.record.id, model(&src)));
    }
    let all = repo.snapshots().unwrap();
    for (id, want) in &expected {
        let rec = all.iter().find(|r| r.id == *id).unwrap();
        let tree = repo.resolve(rec).unwrap();
        let out = tmp.path().join(format!("restore-{id}"));
        let rep = restore(
            &repo,
            &tree,
            b"",
            &out,
            &RestoreOptions {
                threads: 2,
                // Root restoring from its own repository: owners and
                // setuid bits come back too.
                owners: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(rep.failed.is_empty(), "{:?}", rep.failed);
        assert_same(
            want,
            &model(&out),
            &format!("snapshot {id} ({:?})", rec.kind),
        );
    }
    let v = rewindfs::verify::verify(&repo, true).unwrap();
    assert!(v.ok(), "{v:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn every_snapshot_restores_its_round(
        initial in prop::collection::vec((any::<usize>(), size(), any::<u64>()), 1..12),
        rounds in prop::collection::vec((prop::collection::vec(op(), 1..8), kind()), 1..6),
    ) {
        run_case(initial, rounds);
    }
}
