//! Real POSIX clients on the live mount: pjdfstest (compared with the
//! backing filesystem as the oracle) and fsx (5 seeds x 100,000 operations,
//! then a second process compares the file through the backing directory).
//!
//! Both tools are installed by `.ci/run` (`cargo install --locked pjdfstest
//! fsx`); a missing tool fails the test.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::live::{require_fuse, TestMount};
use rewindfs::fuse::MountConfig;

fn tool(name: &str) -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")));
    for d in candidates {
        let p = d.join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run `cargo install --locked {name}` (as .ci/run does)");
}

fn conf(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conformance")
        .join(name)
}

/// Run pjdfstest in `dir`; returns test name -> "ok" | "FAILED" | "skipped".
fn pjdfstest(dir: &Path) -> BTreeMap<String, String> {
    let out = Command::new(tool("pjdfstest"))
        .arg("-c")
        .arg(conf("pjdfstest.toml"))
        .arg("-p")
        .arg(dir)
        .current_dir(dir)
        .output()
        .expect("run pjdfstest");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut r = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(name), Some(res), None) = (parts.next(), parts.next(), parts.next()) {
            if name.contains("::") && matches!(res, "ok" | "FAILED" | "skipped") {
                r.insert(name.to_string(), res.to_string());
            }
        }
    }
    assert!(
        r.len() > 300,
        "pjdfstest ran only {} tests:\n{text}",
        r.len()
    );
    r
}

fn counts(r: &BTreeMap<String, String>) -> (usize, usize, usize) {
    let c = |w: &str| r.values().filter(|v| *v == w).count();
    (c("ok"), c("FAILED"), c("skipped"))
}

#[test]
fn pjdfstest_passes_on_the_mount_wherever_it_passes_on_the_backing_fs() {
    require_fuse();
    let m = TestMount::with(MountConfig {
        allow_other: true,
        ..MountConfig::default()
    });
    // The oracle: a plain directory on the same filesystem as the backing dir.
    let oracle = m.tmp.path().join("oracle");
    std::fs::create_dir(&oracle).unwrap();
    let native = pjdfstest(&oracle);
    let fuse = pjdfstest(&m.mnt);
    let (np, nf, ns) = counts(&native);
    let (fp, ff, fs) = counts(&fuse);
    eprintln!("pjdfstest backing fs: {np} passed, {nf} failed, {ns} skipped");
    eprintln!("pjdfstest live mount: {fp} passed, {ff} failed, {fs} skipped");
    let regressions: Vec<String> = native
        .iter()
        .filter(|(_, v)| *v == "ok")
        .filter(|(k, _)| fuse.get(*k).map(String::as_str) != Some("ok"))
        // FUSE cannot report LINK_MAX (pathconf answers 127, "unknown"),
        // so pjdfstest skips this one on any FUSE mount.
        .filter(|(k, _)| {
            !(k.as_str() == "link::link_count_max"
                && fuse.get(*k).map(String::as_str) == Some("skipped"))
        })
        .map(|(k, _)| {
            format!(
                "{k}: {}",
                fuse.get(k).map(String::as_str).unwrap_or("missing")
            )
        })
        .collect();
    assert!(
        regressions.is_empty(),
        "passes on the backing fs but not on the mount:\n{}",
        regressions.join("\n")
    );
    assert_eq!(ff, 0, "pjdfstest failures on the mount");
}

fn fsx(file: &Path, seed: u64, ops: u64, artifacts: &Path) -> std::process::Child {
    let fast = file.extension().is_some_and(|e| e == "pt");
    Command::new(tool("fsx"))
        .arg("-N")
        .arg(ops.to_string())
        .arg("-S")
        .arg(seed.to_string())
        .arg("-f")
        .arg(conf(if fast { "fsx-fast.toml" } else { "fsx.toml" }))
        .arg("-P")
        .arg(artifacts)
        .arg(file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fsx")
}

/// fsx on the mount, then `cmp` (a second process) of the file through the
/// mount and through the backing directory.
fn fsx_round(cfg: MountConfig, seeds: &[u64], ops: u64, ext: &str) {
    require_fuse();
    let m = TestMount::with(cfg);
    let artifacts = m.tmp.path().join("fsx-artifacts");
    std::fs::create_dir(&artifacts).unwrap();
    let children: Vec<_> = seeds
        .iter()
        .map(|s| {
            let f = m.m(&format!("fsx-{s}.{ext}"));
            (s, fsx(&f, *s, ops, &artifacts))
        })
        .collect();
    if ext == "pt" {
        // fsx keeps its file open for the whole run (no close/reopen in
        // fsx-fast.toml): wait until every one is open.
        let t0 = std::time::Instant::now();
        while m.fs.fast_path_open() < seeds.len() as u64
            && t0.elapsed() < std::time::Duration::from_secs(30)
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(
            m.fs.fast_path_open(),
            seeds.len() as u64,
            "every fsx file runs on the checkpoint fast path ({})",
            m.fs.read_mode()
        );
    }
    for (seed, c) in children {
        let out = c.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("All operations completed A-OK"),
            "fsx seed {seed} failed:\n{}",
            text.lines().rev().take(40).collect::<Vec<_>>().join("\n")
        );
        let name = format!("fsx-{seed}.{ext}");
        let st = Command::new("cmp")
            .arg(m.m(&name))
            .arg(m.b(&name))
            .status()
            .unwrap();
        assert!(
            st.success(),
            "seed {seed}: the backing file differs from the mount's view"
        );
    }
}

#[test]
fn fsx_five_seeds_of_100k_ops() {
    fsx_round(MountConfig::default(), &[1, 2, 3, 4, 5], 100_000, "dat");
}

/// fsx on checkpoint fast-path files: every write, mmap write, truncate,
/// hole punch and copy of the run goes through the one passthrough handle
/// fsx keeps open (no close/reopen in fsx-fast.toml).
#[test]
fn fsx_five_seeds_of_100k_ops_on_fast_path_files() {
    fsx_round(
        MountConfig {
            checkpoints: Some(
                rewindfs::fs::fastpath::CheckpointPatterns::new(
                    rewindfs::fs::fastpath::DEFAULT_PATTERNS,
                )
                .unwrap(),
            ),
            ..MountConfig::default()
        },
        &[21, 22, 23, 24, 25],
        100_000,
        "pt",
    );
}

#[test]
fn fsx_with_writeback_cache() {
    fsx_round(
        MountConfig {
            writeback_cache: true,
            ..MountConfig::default()
        },
        &[11],
        20_000,
        "dat",
    );
}
