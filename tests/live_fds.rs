//! More objects than descriptors: with the daemon's open-file limit at
//! 400, a tree of 3,000 files is created, listed, stat'ed, read, renamed
//! and snapshotted through the mount (node descriptors are closed and
//! reopened from kernel file handles).

mod common;

use std::fs;
use std::process::Command;

use common::live::require_fuse;
use common::{bin, mount_dirs, ok};

#[test]
fn thousands_of_files_with_a_small_descriptor_limit() {
    require_fuse();
    let (_tmp, backing, mnt, repo) = mount_dirs();
    let script = format!(
        "ulimit -n 400 && exec {} mount {} {} --repo {} --every off --full-every off",
        bin().display(),
        backing.display(),
        mnt.display(),
        repo.display()
    );
    let st = Command::new("sh").arg("-c").arg(&script).status().unwrap();
    assert!(st.success());
    struct Guard<'a>(&'a std::path::Path);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            let ok = Command::new(bin())
                .arg("umount")
                .arg(self.0)
                .status()
                .map(|s| s.success());
            if !ok.unwrap_or(false) {
                let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
    let guard = Guard(&mnt);
    for d in 0..30 {
        fs::create_dir(mnt.join(format!("d{d}"))).unwrap();
        for i in 0..100 {
            fs::write(mnt.join(format!("d{d}/f{i}")), format!("{d}/{i}")).unwrap();
        }
    }
    // Everything is still reachable, several times over.
    for _ in 0..2 {
        let mut n = 0;
        for d in 0..30 {
            for e in fs::read_dir(mnt.join(format!("d{d}"))).unwrap() {
                let e = e.unwrap();
                let md = e.metadata().unwrap();
                assert!(md.is_file());
                let name = e.file_name().into_string().unwrap();
                assert_eq!(
                    fs::read_to_string(e.path()).unwrap(),
                    format!("{d}/{}", &name[1..])
                );
                n += 1;
            }
        }
        assert_eq!(n, 3000);
    }
    fs::rename(mnt.join("d7"), mnt.join("moved")).unwrap();
    assert_eq!(fs::read_to_string(mnt.join("moved/f42")).unwrap(), "7/42");
    ok(&repo, &["snapshot"]);
    assert_eq!(ok(&repo, &["cat", "latest", "moved/f99"]), "7/99");
    drop(guard);
    assert_eq!(fs::read_to_string(backing.join("d29/f0")).unwrap(), "29/0");
}
