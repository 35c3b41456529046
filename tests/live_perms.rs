//! Permissions and ownership through an `--allow-other` mount, checked by
//! other users (run with setpriv in a child process, so the test's own
//! FUSE threads keep their credentials).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::live::TestMount;
use rewindfs::fuse::MountConfig;

fn as_user(uid: u32, gid: u32, groups: &str, script: &str) -> std::process::Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(if groups.is_empty() {
            "--clear-groups".to_string()
        } else {
            format!("--groups={groups}")
        })
        .args(["sh", "-c", script])
        .output()
        .expect("setpriv (util-linux) is needed")
}

fn mount() -> TestMount {
    assert!(rustix::process::geteuid().is_root(), "this test needs root");
    let m = TestMount::with(MountConfig {
        allow_other: true,
        ..MountConfig::default()
    });
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o777)).unwrap();
    m
}

#[test]
fn files_are_created_with_the_callers_ids_and_groups() {
    let m = mount();
    let p = m.m("byuser");
    let o = as_user(65534, 65534, "", &format!("echo hi > {}", p.display()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = fs::metadata(m.b("byuser")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));

    // A directory writable only through a supplementary group.
    fs::create_dir(m.m("grp")).unwrap();
    std::os::unix::fs::chown(m.m("grp"), Some(0), Some(1)).unwrap();
    fs::set_permissions(m.m("grp"), fs::Permissions::from_mode(0o2770)).unwrap();
    let inside = m.m("grp/f");
    let denied = as_user(65534, 65534, "", &format!("touch {}", inside.display()));
    assert!(!denied.status.success());
    let allowed = as_user(65534, 65534, "1", &format!("touch {}", inside.display()));
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let md = fs::metadata(m.b("grp/f")).unwrap();
    // set-gid directory: the new file takes the directory's group.
    assert_eq!((md.uid(), md.gid()), (65534, 1));
}

#[test]
fn writes_by_non_owners_clear_setuid_and_setgid() {
    let m = mount();
    fs::write(m.m("suid"), b"x").unwrap();
    fs::set_permissions(m.m("suid"), fs::Permissions::from_mode(0o6777)).unwrap();
    let o = as_user(
        65534,
        65534,
        "",
        &format!("echo more >> {}", m.m("suid").display()),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mode = fs::metadata(m.b("suid")).unwrap().mode() & 0o7777;
    assert_eq!(mode & 0o6000, 0, "mode {mode:o} kept set-id bits");
}

/// With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves dropping set-id bits
/// to the daemon (which acts as root, so the backing filesystem would keep
/// them): every way a user changes a file's content must drop them as on
/// ext4, and a root writer (CAP_FSETID) keeps them.
#[test]
fn every_content_change_by_a_user_drops_set_id_bits_as_the_vfs_does() {
    let m = TestMount::with(MountConfig {
        allow_other: true,
        checkpoints: Some(
            rewindfs::fs::fastpath::CheckpointPatterns::new(
                rewindfs::fs::fastpath::DEFAULT_PATTERNS,
            )
            .unwrap(),
        ),
        ..MountConfig::default()
    });
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o777)).unwrap();
    let cases: &[(&str, u32, Option<u32>, &str, u32)] = &[
        // (file, mode, its group (root's if None), what the user runs on
        // it, mode expected after)
        ("w", 0o6777, None, "echo more >> F", 0o777),
        ("t", 0o6777, None, "truncate -s 1 F", 0o777),
        ("o", 0o6777, None, ": > F", 0o777),
        ("f", 0o6777, None, "fallocate -l 65536 F", 0o777),
        // setgid without group execute goes for a writer outside the
        // file's group (the kernel's setattr_should_drop_sgid since 6.x;
        // xfstests generic/683)...
        ("g", 0o2766, None, "echo more >> F", 0o766),
        ("gt", 0o2766, None, "truncate -s 0 F", 0o766),
        // ...and stays for one in it.
        ("gin", 0o2766, Some(65534), "echo more >> F", 0o2766),
        ("gint", 0o2766, Some(65534), "truncate -s 0 F", 0o2766),
        // A checkpoint name: set-id files never take the fast path.
        ("ck.pt", 0o6777, None, ": > F; echo new >> F", 0o777),
    ];
    for (name, mode, gid, script, want) in cases {
        fs::write(m.m(name), b"content").unwrap();
        if let Some(g) = gid {
            std::os::unix::fs::chown(m.m(name), None, Some(*g)).unwrap();
        }
        fs::set_permissions(m.m(name), fs::Permissions::from_mode(*mode)).unwrap();
        let f = m.m(name).display().to_string();
        let o = as_user(65534, 65534, "", &script.replace('F', &f));
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got = fs::metadata(m.b(name)).unwrap().mode() & 0o7777;
        assert_eq!(got, *want, "{name} after `{script}`: mode {got:o}");
        let seen = fs::metadata(m.m(name)).unwrap().mode() & 0o7777;
        assert_eq!(seen, *want, "{name}: the mount shows mode {seen:o}");
    }
    // Root (CAP_FSETID) keeps them, as on ext4.
    fs::write(m.m("root"), b"x").unwrap();
    fs::set_permissions(m.m("root"), fs::Permissions::from_mode(0o6755)).unwrap();
    let o = Command::new("sh")
        .args([
            "-c",
            &format!("echo more >> {0}; truncate -s 1 {0}", m.m("root").display()),
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(fs::metadata(m.b("root")).unwrap().mode() & 0o7777, 0o6755);
}

#[test]
fn rename_noreplace_and_exchange() {
    let m = TestMount::new();
    fs::write(m.m("a"), b"A").unwrap();
    fs::write(m.m("b"), b"B").unwrap();
    let dir = fs::File::open(&m.mnt).unwrap();
    let e = rustix::fs::renameat_with(&dir, "a", &dir, "b", rustix::fs::RenameFlags::NOREPLACE)
        .unwrap_err();
    assert_eq!(e, rustix::io::Errno::EXIST);
    rustix::fs::renameat_with(&dir, "a", &dir, "b", rustix::fs::RenameFlags::EXCHANGE).unwrap();
    assert_eq!(fs::read(m.b("a")).unwrap(), b"B");
    assert_eq!(fs::read(m.b("b")).unwrap(), b"A");
    rustix::fs::renameat_with(&dir, "a", &dir, "c", rustix::fs::RenameFlags::NOREPLACE).unwrap();
    assert_eq!(fs::read(m.m("c")).unwrap(), b"B");
}
