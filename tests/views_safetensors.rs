//! A real client: Python safetensors (numpy) saves a checkpoint into the
//! live mount, it is snapshotted and overwritten, and the old version is
//! loaded (mmap) from .snapshots/<name>/ while the new one loads from the
//! live path. Needs `pip install numpy safetensors` (.ci/run does it).

mod common;

use std::path::Path;
use std::process::Command;

use common::live::DaemonMount;
use common::{bin, mount_dirs, ok, python, status, SnapMount};

#[test]
fn safetensors_loads_an_old_checkpoint_from_a_snapshot() {
    let probe = Command::new("python3")
        .args(["-c", "import numpy, safetensors"])
        .output()
        .expect("python3 is needed");
    assert!(
        probe.status.success(),
        "numpy and safetensors are not installed: pip install numpy safetensors (as .ci/run does)"
    );
    let (_tmp, backing, mnt, repo) = mount_dirs();
    let r = repo.to_str().unwrap();
    let m = DaemonMount::start(
        &backing,
        &mnt,
        &["--repo", r, "--every", "off", "--full-every", "off"],
    );
    let out = python(
        "safetensors_roundtrip.py",
        &[bin().as_os_str(), mnt.as_os_str(), repo.as_os_str()],
    );
    eprintln!("{out}");
    m.umount();
}

/// Drop the page cache (root), so the next read comes from the disk.
fn drop_caches() {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("dropping the page cache needs root");
}

fn mmap_check(dir: &Path) -> String {
    python("mmap_check.py", &["check".as_ref(), dir.as_os_str()])
}

/// safetensors' safe_open and numpy.memmap map a snapshot file: cold
/// through the daemon, then, once the files were opened again and
/// copied into the materialization cache, by passthrough from the
/// copies (cold and warm), always with the saved tensors.
#[test]
fn safe_open_and_numpy_memmap_of_a_snapshot_cold_and_after_promotion() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo, mnt) = (
        tmp.path().join("src"),
        tmp.path().join("repo"),
        tmp.path().join("mnt"),
    );
    std::fs::create_dir_all(&src).unwrap();
    python("mmap_check.py", &["gen".as_ref(), src.as_os_str()]);
    ok(&repo, &["init"]);
    ok(&repo, &["snapshot", "--source", src.to_str().unwrap()]);
    let _m = SnapMount::start(&repo, &mnt, &["--materialize-cache", "256M", "1"]);
    let m = |f: &str| status(&repo)["materialized"][f].as_u64().unwrap();
    drop_caches();
    mmap_check(&mnt);
    assert_eq!(m("passthrough_opens"), 0);
    // Opened again: both files are copied.
    mmap_check(&mnt);
    let t = std::time::Instant::now();
    while m("promoted") < 2 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "{}",
            status(&repo)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop_caches();
    mmap_check(&mnt);
    let after_cold = m("passthrough_opens");
    assert!(after_cold >= 2, "{}", status(&repo));
    mmap_check(&mnt);
    assert!(m("passthrough_opens") >= after_cold + 2);
    assert_eq!(m("rejected"), 0);
}
