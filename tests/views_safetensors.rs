//! A real client: Python safetensors (numpy) saves a checkpoint into the
//! live mount, it is snapshotted and overwritten, and the old version is
//! loaded (mmap) from .snapshots/<name>/ while the new one loads from the
//! live path. Needs `pip install numpy safetensors` (.ci/run does it).

mod common;

use std::path::Path;
use std::process::Command;

use common::live::DaemonMount;
use common::{bin, mount_dirs};

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
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/safetensors_roundtrip.py");
    let o = Command::new("python3")
        .arg(script)
        .arg(bin())
        .arg(&mnt)
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&o.stdout));
    m.umount();
}
