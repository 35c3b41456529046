//! Security tests: a root daemon over folders other users write, attacked
//! by an unprivileged local user (`rewindfs-test`, created if missing).
//! Every test performs the attack for real and asserts it is blocked.
//! See docs/security.md for the threat model.
//!
//! This file has its own small harness (`harness = false` in Cargo.toml):
//! the attacker roles run as separate processes of this same binary,
//! re-executed as the unprivileged user (`REWINDFS_ATTACKER=role`). Run
//! one test with `cargo test --test security -- NAME`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::live::{require_fuse, DaemonMount};

const USER: &str = "rewindfs-test";

// ---- the world the tests share ---------------------------------------

struct World {
    uid: u32,
    gid: u32,
    /// A 0755 directory with copies of the binaries every user can run.
    dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        assert!(
            rustix::process::geteuid().is_root(),
            "the security tests play a root daemon against an unprivileged user: run them as root"
        );
        require_fuse();
        let (uid, gid) = ensure_user();
        let dir = tempfile::Builder::new()
            .prefix("rewindfs-sec")
            .tempdir()
            .unwrap();
        chmod(dir.path(), 0o755);
        std::fs::copy(common::bin(), dir.path().join("rewindfs")).unwrap();
        std::fs::copy(
            std::env::current_exe().unwrap(),
            dir.path().join("attacker"),
        )
        .unwrap();
        World { uid, gid, dir }
    })
}

/// The uid and gid of the test user, creating it if missing.
fn ensure_user() -> (u32, u32) {
    let id = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, USER]).output().ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let o = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .output()
            .expect("run useradd");
        // Another test process may have created it meanwhile.
        assert!(
            o.status.success() || id("-u").is_some(),
            "cannot create the test user {USER}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    (
        id("-u").expect("uid of the test user"),
        id("-g").expect("gid of the test user"),
    )
}

fn rw() -> PathBuf {
    world().dir.path().join("rewindfs")
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_user(p: &Path) {
    let w = world();
    std::os::unix::fs::lchown(p, Some(w.uid), Some(w.gid)).unwrap();
}

/// A fresh directory every user can traverse.
fn scratch() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("rewindfs-sec")
        .tempdir()
        .unwrap();
    chmod(t.path(), 0o755);
    t
}

fn mkdir(p: &Path, mode: u32) -> PathBuf {
    std::fs::create_dir_all(p).unwrap();
    chmod(p, mode);
    p.to_path_buf()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run the CLI as root.
fn cli(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(rw())
        .args(args.iter().map(|a| a.as_ref()))
        .env_remove("REWINDFS_REPO")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn cli_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let o = cli(args);
    assert!(o.status.success(), "rewindfs failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command that runs as the test user (no supplementary groups).
fn as_user(prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let w = world();
    let mut c = Command::new(prog);
    c.uid(w.uid).gid(w.gid).current_dir("/").env("HOME", "/");
    c
}

/// `sh -c SCRIPT` as the test user.
fn user_sh(script: &str) -> Output {
    as_user("sh").arg("-c").arg(script).output().unwrap()
}

fn root_sh(script: &str) {
    let o = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(o.status.success(), "{script}: {}", text(&o));
}

/// A live mount of `t/data` on `t/mnt` (repository `t/r`) whose metrics
/// listener is on a free loopback port: (repo, address, mount).
fn mount_with_listener(t: &tempfile::TempDir) -> (PathBuf, String, DaemonMount) {
    let backing = mkdir(&t.path().join("data"), 0o755);
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let repo = t.path().join("r");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let m = mount(&backing, &mnt, &repo, &["--metrics-listen", &addr]);
    (repo, addr, m)
}

fn mount(backing: &Path, mnt: &Path, repo: &Path, extra: &[&str]) -> DaemonMount {
    let mut args = vec!["--repo", repo.to_str().unwrap(), "--every", "off"];
    args.extend_from_slice(extra);
    DaemonMount::start(backing, mnt, &args)
}

fn mount_line(mnt: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let m = mnt.to_str().unwrap();
    mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(m))
        .map(str::to_string)
}

fn is_mounted(mnt: &Path) -> bool {
    mount_line(mnt).is_some()
}

fn snapshot_live(repo: &Path) {
    cli_ok(&[&"snapshot", &"--repo", &repo]);
}

/// The names of the entries of a directory, with their mtimes (to prove
/// nothing was written to it).
fn listing(dir: &Path) -> Vec<(String, i64, u64)> {
    let mut v: Vec<(String, i64, u64)> = walkdir(dir)
        .into_iter()
        .map(|p| {
            let m = std::fs::symlink_metadata(&p).unwrap();
            (
                p.strip_prefix(dir).unwrap().display().to_string(),
                m.mtime(),
                m.size(),
            )
        })
        .collect();
    v.sort();
    v
}

fn walkdir(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![d.to_path_buf()];
    while let Some(x) = stack.pop() {
        for e in std::fs::read_dir(&x).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

// ---- 1. untrusted repositories ---------------------------------------

fn untrusted_repositories_are_refused() {
    let w = world();
    let t = scratch();
    let backing = mkdir(&t.path().join("data"), 0o755);
    chown_user(&backing);
    let mnt = mkdir(&t.path().join("mnt"), 0o755);

    // Root mounting a user's folder with the default repository in it.
    let o = cli(&[&"mount", &backing, &mnt]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--repo"), "{err}");
    assert!(!backing.join(".rewindfs").exists());
    assert!(!is_mounted(&mnt));

    // The user plants a whole repository there, with a setuid program in
    // a snapshot.
    let src = backing.join("src");
    let planted = backing.join(".rewindfs");
    let script = format!(
        "set -e; mkdir {src}; cp /usr/bin/id {src}/prog; chmod 4755 {src}/prog; \
         mkfifo {src}/fifo; {rw} init --repo {planted} --block-size 64K; \
         {rw} snapshot --source {src} --kind full --repo {planted}",
        src = src.display(),
        planted = planted.display(),
        rw = rw().display()
    );
    let o = user_sh(&script);
    assert!(o.status.success(), "{}", text(&o));
    let before = listing(&planted);

    // Nothing that writes uses it.
    for args in [
        vec![
            "mount".as_ref(),
            backing.as_os_str(),
            mnt.as_os_str(),
            "--repo".as_ref(),
            planted.as_os_str(),
        ],
        vec![
            "snapshot".as_ref(),
            "--source".as_ref(),
            "/etc/hostname".as_ref(),
            "--repo".as_ref(),
            planted.as_os_str(),
        ],
        vec![
            "rebuild-index".as_ref(),
            "--repo".as_ref(),
            planted.as_os_str(),
        ],
        vec![
            "mount-snapshot".as_ref(),
            "latest".as_ref(),
            mnt.as_os_str(),
            "--repo".as_ref(),
            planted.as_os_str(),
        ],
    ] {
        let o = Command::new(rw()).args(&args).output().unwrap();
        assert!(!o.status.success(), "{args:?} was accepted: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("refusing to use repository")
                || String::from_utf8_lossy(&o.stderr).contains("owned by"),
            "{args:?}: {}",
            text(&o)
        );
        assert!(!is_mounted(&mnt));
    }

    // Reading works, as untrusted data: no setuid, no other owner, and
    // nothing is written to the repository.
    let out = cli_ok(&[&"snapshots", &"--repo", &planted]);
    assert!(out.contains("full"), "{out}");
    let dest = t.path().join("restored");
    let o = cli(&[&"restore", &"latest", &"--to", &dest, &"--repo", &planted]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("untrusted"),
        "{}",
        text(&o)
    );
    let prog = std::fs::metadata(dest.join("prog")).unwrap();
    assert_eq!(prog.mode() & 0o7777, 0o755, "the setuid bit came back");
    assert_eq!(prog.uid(), 0);
    assert_eq!(listing(&planted), before, "reading wrote to the repository");

    // init into an empty directory another user owns.
    let theirs = mkdir(&t.path().join("theirs"), 0o700);
    chown_user(&theirs);
    let o = cli(&[&"init", &"--repo", &theirs]);
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);

    // A parent another user could write (and rename the repository away).
    let shared = mkdir(&t.path().join("shared"), 0o777);
    let o = cli(&[&"init", &"--repo", &shared.join("r")]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(!shared.join("r").exists());
    // A sticky directory like /tmp: only an entry of our own is fine.
    let sticky = mkdir(&t.path().join("sticky"), 0o1777);
    let o = user_sh(&format!("mkdir {}/r", sticky.display()));
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&[&"init", &"--repo", &sticky.join("r")]);
    assert!(!o.status.success(), "{}", text(&o));
    cli_ok(&[&"init", &"--repo", &sticky.join("mine")]);
    let _ = w;
}

fn symlinks_in_a_repository_are_never_followed() {
    let t = scratch();
    let backing = mkdir(&t.path().join("data"), 0o755);
    std::fs::write(backing.join("f"), b"data").unwrap();
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let repo = t.path().join("r");
    cli_ok(&[&"init", &"--repo", &repo]);
    let victim = t.path().join("victim");
    std::fs::write(&victim, b"secret").unwrap();
    chmod(&victim, 0o600);
    // Symlinks where the daemon opens its log and sled its database.
    std::os::unix::fs::symlink(&victim, repo.join("daemon.log")).unwrap();
    let db = repo.join("index").join("db");
    if db.exists() {
        std::fs::remove_file(&db).unwrap();
    }
    std::os::unix::fs::symlink(&victim, &db).unwrap();
    let m = mount(&backing, &mnt, &repo, &[]);
    std::fs::write(mnt.join("g"), b"more").unwrap();
    snapshot_live(&repo);
    m.umount();
    assert_eq!(std::fs::read(&victim).unwrap(), b"secret");
    let vm = std::fs::metadata(&victim).unwrap();
    assert_eq!(vm.mode() & 0o7777, 0o600);
    assert_eq!(vm.uid(), 0);
    // The odd index was moved aside and rebuilt.
    assert!(std::fs::read_dir(&repo).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("index.damaged")));
    // Every file the repository holds is private.
    for p in walkdir(&repo) {
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.file_type().is_symlink() {
            continue;
        }
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        if !p.to_string_lossy().contains("index.damaged") {
            assert_eq!(m.mode() & 0o777, want, "{}", p.display());
        }
    }
}

// ---- 2. setuid programs and devices ----------------------------------

fn setuid_and_devices_grant_nothing() {
    let w = world();
    let t = scratch();
    let backing = mkdir(&t.path().join("data"), 0o755);
    std::fs::copy("/usr/bin/id", backing.join("rootid")).unwrap();
    chmod(&backing.join("rootid"), 0o4755);
    root_sh(&format!(
        "mknod {0} c 1 3 && chmod 666 {0}",
        backing.join("null").display()
    ));
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let repo = t.path().join("r");
    let run_id = |p: &Path| -> String {
        let o = as_user(p).arg("-u").output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let me = w.uid.to_string();

    // Default: nosuid,nodev.
    let m = mount(&backing, &mnt, &repo, &["--allow-other"]);
    let line = mount_line(&mnt).unwrap();
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    assert_eq!(
        run_id(&mnt.join("rootid")),
        me,
        "setuid honoured on the live mount"
    );
    let o = user_sh(&format!("echo x > {}", mnt.join("null").display()));
    assert!(
        !o.status.success(),
        "a device node opened through the mount"
    );
    snapshot_live(&repo);
    std::fs::remove_file(mnt.join("rootid")).unwrap();
    snapshot_live(&repo);
    m.umount();

    // Opted in to suid on the live mount: the snapshots still grant nothing.
    let m = mount(&backing, &mnt, &repo, &["--allow-other", "--suid", "--dev"]);
    let line = mount_line(&mnt).unwrap();
    assert!(!line.contains("nosuid"), "{line}");
    let first = std::fs::read_dir(mnt.join(".snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("latest"))
        .min()
        .unwrap();
    let snap_prog = first.join("rootid");
    let md = std::fs::metadata(&snap_prog).unwrap();
    assert_eq!(md.mode() & 0o7000, 0, "setuid bit shown in .snapshots");
    assert_eq!(run_id(&snap_prog), me, "setuid honoured in .snapshots");
    let dev = std::fs::symlink_metadata(first.join("null")).unwrap();
    assert_eq!(dev.rdev(), 0, "a device node in .snapshots names a device");
    m.umount();

    // A standalone snapshot mount.
    let smnt = mkdir(&t.path().join("snap"), 0o755);
    let o = cli(&[
        &"mount-snapshot",
        &"1",
        &smnt,
        &"--repo",
        &repo,
        &"--allow-other",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let line = mount_line(&smnt).unwrap();
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    assert_eq!(run_id(&smnt.join("rootid")), me);
    cli_ok(&[&"umount", &smnt]);
    // The real bits are still in the repository for a root restore.
    let ls = cli_ok(&[&"ls", &"1", &"--repo", &repo]);
    assert!(ls.contains("-rwsr-xr-x"), "{ls}");
}

// ---- round 3 (issue 27): setuid and setgid bits against non-owners ----

/// A user who may write a group-writable setuid program (or setgid file)
/// opened it for reading (a passthrough read) and then rewrote it: the
/// writer joined passthrough, its writes reached the backing file with
/// the daemon's credentials, and the bits stayed (the user then ran a
/// shell as the owner). ext4 drops them on such a write; so must the
/// mount, whatever other opens of the file do, also when the bits came
/// while the readers were open.
fn setuid_bits_go_on_a_non_owners_write_beside_passthrough_readers() {
    let w = world();
    let t = scratch();
    let backing = mkdir(&t.path().join("data"), 0o755);
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let repo = t.path().join("r");
    for (name, mode) in [("prog", 0o4775), ("sgid", 0o2775), ("late", 0o775)] {
        let p = backing.join(name);
        std::fs::write(&p, "#!/bin/sh\necho original\n").unwrap();
        std::os::unix::fs::chown(&p, Some(0), Some(w.gid)).unwrap();
        chmod(&p, mode);
    }
    let m = mount(&backing, &mnt, &repo, &["--allow-other"]);
    let flags = t.path().join("flags");
    mkdir(&flags, 0o777);
    // As the user: a reader holds the file, then a writer rewrites it in
    // place (no truncation). For `late`, root makes it setuid between
    // the two (after the reader opened it).
    let script = format!(
        r#"
attack() {{
  exec 3< "{mnt}/$1"
  cat <&3 >/dev/null
  if [ "$2" = wait ]; then
    : > "{flags}/ready"
    while [ ! -e "{flags}/go" ]; do sleep 0.02; done
  fi
  printf '#!/bin/sh\necho pwned\n' | dd of="{mnt}/$1" conv=notrunc status=none || exit 1
  exec 3<&-
}}
attack prog && attack sgid && attack late wait
"#,
        mnt = mnt.display(),
        flags = flags.display()
    );
    let mut child = as_user("sh").arg("-c").arg(&script).spawn().unwrap();
    let t0 = Instant::now();
    while !flags.join("ready").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the user's reader did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    chmod(&mnt.join("late"), 0o4775);
    std::fs::write(flags.join("go"), "").unwrap();
    assert!(child.wait().unwrap().success(), "the user's writes failed");
    for name in ["prog", "sgid", "late"] {
        let p = backing.join(name);
        let mode = std::fs::metadata(&p).unwrap().mode();
        assert!(
            std::fs::read_to_string(&p).unwrap().contains("pwned"),
            "{name} was not rewritten"
        );
        assert_eq!(
            mode & 0o6000,
            0,
            "{name}: a non-owner's write kept the bits (mode {mode:o})"
        );
    }
    m.umount();
}

/// generic/375, the class of CVE-2016-7097: a file's owner who is not in
/// its group sets an ACL; the setgid bit must go (chmod drops it, and so
/// does the kernel for setfacl). The daemon applied the ACL as root,
/// which kept it.
fn setgid_goes_when_an_owner_outside_the_group_sets_an_acl() {
    let w = world();
    let t = scratch();
    let backing = mkdir(&t.path().join("data"), 0o755);
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let repo = t.path().join("r");
    let f = backing.join("f");
    std::fs::write(&f, "x").unwrap();
    // The user's file, in root's group (the user is not in it).
    std::os::unix::fs::chown(&f, Some(w.uid), Some(0)).unwrap();
    chmod(&f, 0o2775);
    // The oracle: the same on the backing filesystem itself.
    let native = backing.join("native");
    std::fs::write(&native, "x").unwrap();
    std::os::unix::fs::chown(&native, Some(w.uid), Some(0)).unwrap();
    chmod(&native, 0o2775);
    let o = user_sh(&format!("setfacl -m u:0:rwx {}", native.display()));
    assert!(o.status.success(), "{}", text(&o));
    let want = std::fs::metadata(&native).unwrap().mode() & 0o7777;
    assert_eq!(want & 0o2000, 0, "ext4 itself dropped setgid");
    let m = mount(&backing, &mnt, &repo, &["--allow-other"]);
    let o = user_sh(&format!("setfacl -m u:0:rwx {}", mnt.join("f").display()));
    assert!(o.status.success(), "{}", text(&o));
    let got = std::fs::metadata(&f).unwrap().mode() & 0o7777;
    assert_eq!(
        got, want,
        "mode after setfacl through the mount {got:o}, ext4 gives {want:o}"
    );
    m.umount();
}

/// `rewindfs status` (no arguments) printed paths from the mount table
/// raw: a FUSE mount whose path holds a newline and an escape sequence
/// forged lines and colours in root's terminal. Every cell is escaped.
fn status_escapes_paths_from_the_mount_table() {
    let t = scratch();
    let backing = mkdir(&t.path().join("data"), 0o755);
    let hostile = t.path().join("m\nFORGED ROW\x1b[31mred");
    let mnt = mkdir(&hostile, 0o755);
    let repo = t.path().join("r");
    let m = mount(&backing, &mnt, &repo, &[]);
    let out = cli_ok(&[&"status"]);
    assert!(
        !out.contains('\x1b'),
        "a raw escape code in status: {out:?}"
    );
    assert!(
        !out.lines().any(|l| l.starts_with("FORGED ROW")),
        "a forged line in status: {out}"
    );
    assert!(out.contains("m\\nFORGED ROW\\x1b[31mred"), "{out}");
    m.umount();
}

/// The metrics listener: one client sending a byte every few seconds held
/// the single listener thread (the limit was per read), so a scrape
/// waited; and an obs-fold continuation line was taken as part of the
/// Host header. A head has one deadline, connections are answered beside
/// each other, and obs-fold is refused.
fn slow_clients_do_not_hold_the_metrics_listener_and_obs_fold_is_refused() {
    let t = scratch();
    let (repo, addr, m) = mount_with_listener(&t);
    // Two slow clients, trickling a byte a second.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.write_all(b"G").unwrap();
        slow.push(c);
    }
    let trickle = std::thread::spawn(move || {
        for _ in 0..8 {
            std::thread::sleep(Duration::from_secs(1));
            for c in slow.iter_mut() {
                let _ = c.write_all(b"E");
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let get = |req: &str| -> (String, Duration) {
        let t0 = Instant::now();
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        (out, t0.elapsed())
    };
    let token = std::fs::read_to_string(repo.join("web-token")).unwrap();
    let (out, took) = get(&format!(
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n",
        token.trim()
    ));
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert!(
        took < Duration::from_secs(2),
        "a scrape waited {took:?} behind slow clients"
    );
    let (out, _) =
        get("GET /api/status HTTP/1.1\r\nX-A: b\r\n Host: 127.0.0.1\r\nHost: evil.example\r\n\r\n");
    assert!(out.starts_with("HTTP/1.0 400"), "obs-fold accepted: {out}");
    let _ = trickle.join();
    m.umount();
}

/// REWINDFS_KEY_FILE=/dev/zero read gigabytes; a key file other users can
/// read was used without a word. A key or password file must be a small
/// regular file that only its owner (and group) can read.
fn key_files_are_bounded_regular_and_private() {
    let t = scratch();
    let try_init = |key: &Path, var: &str| -> (Output, Duration) {
        let repo = t.path().join(format!("r{}", rand_suffix()));
        let t0 = Instant::now();
        let o = Command::new(rw())
            .args(["init", "--encrypt", "--repo"])
            .arg(&repo)
            .env(var, key)
            .env_remove("REWINDFS_PASSWORD")
            .output()
            .unwrap();
        (o, t0.elapsed())
    };
    let (o, took) = try_init(Path::new("/dev/zero"), "REWINDFS_KEY_FILE");
    assert!(
        !o.status.success() && took < Duration::from_secs(5),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("not a regular file"), "{}", text(&o));
    let key = t.path().join("key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    chmod(&key, 0o644);
    let (o, _) = try_init(&key, "REWINDFS_KEY_FILE");
    assert!(!o.status.success(), "a world-readable key file was used");
    assert!(text(&o).contains("other users"), "{}", text(&o));
    let big = t.path().join("big");
    std::fs::write(&big, vec![7u8; 1 << 20]).unwrap();
    chmod(&big, 0o600);
    let (o, _) = try_init(&big, "REWINDFS_KEY_FILE");
    assert!(!o.status.success(), "a 1 MiB key file was read");
    let pw = t.path().join("pw");
    std::fs::write(&pw, "correct horse battery\n").unwrap();
    chmod(&pw, 0o604);
    let (o, _) = try_init(&pw, "REWINDFS_PASSWORD_FILE");
    assert!(
        !o.status.success(),
        "a world-readable password file was used"
    );
    chmod(&key, 0o600);
    let (o, _) = try_init(&key, "REWINDFS_KEY_FILE");
    assert!(o.status.success(), "{}", text(&o));
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// `--repo` through a symlink a user controls: a repository path under a
/// user's directory is refused, but the user could make it a symlink to
/// root's repository, which was resolved first and then trusted, so the
/// user chose which repository root's `forget`/`gc` acted on.
fn a_repository_path_through_a_users_symlink_is_refused() {
    let w = world();
    let t = scratch();
    let src = mkdir(&t.path().join("src"), 0o755);
    std::fs::write(src.join("f"), "x").unwrap();
    let roots = t.path().join("roots-repo");
    cli_ok(&[&"init", &"--repo", &roots]);
    cli_ok(&[&"snapshot", &"--source", &src, &"--repo", &roots]);
    let user_dir = mkdir(&t.path().join("user"), 0o755);
    chown_user(&user_dir);
    let o = user_sh(&format!(
        "ln -s {} {}",
        roots.display(),
        user_dir.join("repo").display()
    ));
    assert!(o.status.success(), "{}", text(&o));
    for args in [
        vec!["gc"],
        vec!["forget", "--keep-last", "1"],
        vec!["snapshot", "--source"],
    ] {
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = args
            .iter()
            .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        if args[0] == "snapshot" {
            a.push(&src);
        }
        let repo = user_dir.join("repo");
        a.push(&"--repo");
        a.push(&repo);
        let o = cli(&a);
        assert!(
            !o.status.success(),
            "{args:?} acted on root's repository through the user's symlink"
        );
        assert!(
            text(&o).contains("lead elsewhere"),
            "{args:?}: {}",
            text(&o)
        );
    }
    let _ = w;
    // Through root's own symlink it works.
    let link = t.path().join("root-link");
    std::os::unix::fs::symlink(&roots, &link).unwrap();
    cli_ok(&[&"gc", &"--repo", &link]);
}

/// A hostile or intercepting object store that always answers "truncated,
/// more keys" with the same page grew the daemon by 600 MB in 20 s (the
/// OOM killer would take the mount down). Listings must advance and are
/// capped: the command fails at once with a clear error.
fn an_endless_listing_is_refused() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>bucket</Name><Prefix>p/</Prefix>\
<KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>\
<NextContinuationToken>again</NextContinuationToken><Contents><Key>p/h/snapshots/0000000001.json</Key>\
<LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>&quot;x&quot;</ETag><Size>10</Size>\
<StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>";
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let count = count.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                loop {
                    // One request head (no bodies on GET).
                    let mut any = false;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        any = true;
                    }
                    if !any {
                        return;
                    }
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if c.write_all(head.as_bytes()).is_err()
                        || c.write_all(body.as_bytes()).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let t0 = Instant::now();
    let o = Command::new(rw())
        .args([
            "snapshots",
            "--remote",
            "s3://bucket/p",
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--region",
            "us-east-1",
            "--all-hosts",
        ])
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert!(
        !o.status.success(),
        "an endless listing was taken: {}",
        text(&o)
    );
    assert!(
        took < Duration::from_secs(30),
        "took {took:?}: {}",
        text(&o)
    );
    assert!(text(&o).contains("does not advance"), "{}", text(&o));
    let pages = served.load(std::sync::atomic::Ordering::Relaxed);
    assert!(pages < 100, "{pages} pages were read");
}

/// A deduplication oracle: the listener published every snapshot's added
/// bytes (and the packs' size, which scrapes can difference) to any local
/// user; one who can trigger snapshots and write guesses of another
/// user's small file learned which guess was stored already. Only who can
/// read the repository's token file (its owner) reads the figures.
fn the_listener_answers_only_who_holds_the_repositorys_token() {
    let t = scratch();
    let (repo, addr, m) = mount_with_listener(&t);
    let token_file = repo.join("web-token");
    let mode = std::fs::metadata(&token_file).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file is readable by others");
    // The user: no token, a guessed one, and the file it cannot read.
    for path in ["/api/snapshots", "/metrics", "/api/status", "/"] {
        let o = as_user("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{addr}{path}"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "401",
            "{path}: {}",
            text(&o)
        );
        let o = as_user("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{addr}{path}?token=0000"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "401",
            "{path} with a guess"
        );
    }
    let o = user_sh(&format!("cat {}", token_file.display()));
    assert!(!o.status.success(), "the user read the token");
    // The owner (root) with the token.
    let tok = std::fs::read_to_string(&token_file).unwrap();
    let o = Command::new("curl")
        .args(["-s", "-H"])
        .arg(format!("Authorization: Bearer {}", tok.trim()))
        .arg(format!("http://{addr}/api/snapshots"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("added_bytes"),
        "{}",
        text(&o)
    );
    m.umount();
}

// ---- 3. restore through planted symlinks ------------------------------

/// Attacker role: watch DIR and swap every new entry for a symlink to
/// VICTIM the moment inotify reports it: one `renameat2(RENAME_EXCHANGE)`
/// with a symlink prepared in advance, on a busy-polled inotify queue (no
/// wake-up latency). Prints `ready`, then runs until killed; the number
/// of swaps is written to COUNT from time to time.
fn attacker_swap(args: &[String]) {
    let (dir, victim, count) = (&args[0], &args[1], &args[2]);
    use rustix::fs::inotify;
    let ino =
        inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).unwrap();
    inotify::add_watch(&ino, dir.as_str(), inotify::WatchFlags::CREATE).unwrap();
    let dfd = rustix::fs::openat(
        rustix::fs::CWD,
        dir.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let decoy = |i: u64| format!("decoy{i}");
    const POOL: u64 = 64;
    for i in 0..POOL {
        let _ = rustix::fs::symlinkat(victim.as_str(), &dfd, decoy(i).as_str());
    }
    let mut next = 0u64;
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 64 << 10];
    let mut reader = inotify::Reader::new(&ino, &mut buf);
    let mut swaps = 0u64;
    loop {
        let name = match reader.next() {
            Ok(ev) => match ev.file_name() {
                Some(n) => n.to_bytes().to_vec(),
                None => continue,
            },
            Err(_) => {
                std::hint::spin_loop();
                continue;
            }
        };
        if name.starts_with(b"decoy") {
            continue;
        }
        let d = decoy(next);
        if rustix::fs::renameat_with(
            &dfd,
            d.as_str(),
            &dfd,
            &name[..],
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .is_ok()
        {
            swaps += 1;
            // The decoy's name now holds what restore made; prepare a
            // fresh decoy for later.
            let _ = rustix::fs::symlinkat(victim.as_str(), &dfd, decoy(next + POOL).as_str());
            next += 1;
            if swaps % 64 == 1 {
                let _ = std::fs::write(count, swaps.to_string());
            }
        }
    }
}

/// An attacker process, killed when the test ends (or fails).
struct Attacker(std::process::Child);

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Restores raced by the attacker (each makes 180 entries).
const ROUNDS: usize = 150;

fn restore_into_a_users_directory_cannot_be_redirected() {
    let t = scratch();
    let src = mkdir(&t.path().join("src"), 0o755);
    for i in 0..150 {
        let p = src.join(format!("fifo{i:03}"));
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o4777),
            0,
        )
        .unwrap();
        chmod(&p, 0o4777);
        if i % 10 == 0 {
            mkdir(&src.join(format!("dir{i:03}")), 0o4777);
            std::os::unix::fs::symlink("/etc/passwd", src.join(format!("link{i:03}"))).unwrap();
        }
    }
    let repo = t.path().join("r");
    cli_ok(&[&"init", &"--repo", &repo]);
    cli_ok(&[
        &"snapshot",
        &"--source",
        &src,
        &"--kind",
        &"full",
        &"--repo",
        &repo,
    ]);
    let victim = t.path().join("victim");
    std::fs::write(&victim, b"secret").unwrap();
    chmod(&victim, 0o600);
    let target = mkdir(&t.path().join("target"), 0o755);
    chown_user(&target);
    let count = t.path().join("count");
    std::fs::write(&count, "0").unwrap();
    chown_user(&count);

    let mut attacker = Attacker(
        as_user(world().dir.path().join("attacker"))
            .env("REWINDFS_ATTACKER", "swap")
            .args([&target, &victim, &count])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    BufReader::new(attacker.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");

    let mut refused = 0;
    let backing = mkdir(&t.path().join("data"), 0o755);
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    for round in 0..ROUNDS {
        // The last rounds go through a mount's daemon.
        let daemon = (round >= ROUNDS - 10).then(|| mount(&backing, &mnt, &repo, &[]));
        let o = cli(&[
            &"restore",
            &"1",
            &"--to",
            &target,
            &"--overwrite",
            &"--repo",
            &repo,
        ]);
        if String::from_utf8_lossy(&o.stderr).contains("was replaced") {
            refused += 1;
        }
        if let Some(d) = daemon {
            d.umount();
        }
        let vm = std::fs::metadata(&victim).unwrap();
        assert_eq!(
            vm.mode() & 0o7777,
            0o600,
            "round {round}: the victim was chmod'ed"
        );
        assert_eq!(vm.uid(), 0, "round {round}: the victim was chown'ed");
    }
    drop(attacker);
    assert_eq!(std::fs::read(&victim).unwrap(), b"secret");

    // The target itself, a symlink the user planted to a root-only place.
    let rootonly = mkdir(&t.path().join("rootonly"), 0o700);
    let link = t.path().join("userlink");
    let o = user_sh(&format!(
        "ln -s {} {}",
        rootonly.display(),
        target.join("r").display()
    ));
    assert!(o.status.success(), "{}", text(&o));
    std::os::unix::fs::symlink(target.join("r"), &link).unwrap();
    let o = cli(&[
        &"restore",
        &"1",
        &"--to",
        &link.join("deeper"),
        &"--repo",
        &repo,
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("symlink"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_dir(&rootonly).unwrap().count(), 0);
    let swaps: u64 = std::fs::read_to_string(&count)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(swaps > 0, "the attacker never raced the restore");
    // How often the swap landed inside restore's window varies with the
    // scheduler; the victim above is what must hold every time.
    eprintln!("    {swaps}+ swaps; {refused} restores stopped at a swapped entry");
}

fn restore_honours_umask_and_drops_setuid_for_users() {
    let t = scratch();
    let backing = mkdir(&t.path().join("data"), 0o755);
    mkdir(&backing.join("sub"), 0o755);
    std::fs::write(backing.join("sub/tool"), b"#!/bin/sh\n").unwrap();
    chmod(&backing.join("sub/tool"), 0o4755);
    let repo = t.path().join("r");
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let m = mount(&backing, &mnt, &repo, &[]);
    snapshot_live(&repo);
    // Through the daemon, with the client's umask 077.
    let to = t.path().join("new").join("deeper");
    root_sh(&format!(
        "umask 077; {} restore latest sub --to {} --repo {}",
        rw().display(),
        to.display(),
        repo.display()
    ));
    for d in [t.path().join("new"), to.clone()] {
        assert_eq!(
            std::fs::metadata(&d).unwrap().mode() & 0o777,
            0o700,
            "{} ignores the umask",
            d.display()
        );
    }
    // Root from its own repository: the setuid bit is restored.
    assert_eq!(
        std::fs::metadata(to.join("sub/tool")).unwrap().mode() & 0o7777,
        0o4755
    );
    m.umount();

    // A user restoring their own setuid file gets it without the bit.
    let home = mkdir(&t.path().join("home"), 0o755);
    chown_user(&home);
    let o = user_sh(&format!(
        "set -e; cd {h}; mkdir src; echo x > src/f; chmod 4755 src/f; \
         {rw} init --repo {h}/r --block-size 64K; \
         {rw} snapshot --source {h}/src --kind full --repo {h}/r; \
         {rw} restore latest --to {h}/out --repo {h}/r",
        h = home.display(),
        rw = rw().display()
    ));
    assert!(o.status.success(), "{}", text(&o));
    let f = std::fs::metadata(home.join("out/f")).unwrap();
    assert_eq!(f.mode() & 0o7777, 0o755);
    assert_eq!(f.uid(), world().uid);
}

fn hard_links_restore_within_limits_and_damage_removes_every_name() {
    let t = scratch();
    let src = mkdir(&t.path().join("src"), 0o755);
    for i in 0..600 {
        let a = src.join(format!("a{i:03}"));
        std::fs::write(&a, format!("file {i}")).unwrap();
        std::fs::hard_link(&a, src.join(format!("b{i:03}"))).unwrap();
    }
    let big = src.join("big");
    std::fs::write(&big, common::bytes(7, 400_000)).unwrap();
    std::fs::hard_link(&big, src.join("big2")).unwrap();
    std::fs::hard_link(&big, src.join("big3")).unwrap();
    let repo = t.path().join("r");
    cli_ok(&[
        &"init",
        &"--repo",
        &repo,
        &"--block-size",
        &"64K",
        &"--compression",
        &"0",
    ]);
    cli_ok(&[&"snapshot", &"--source", &src, &"--repo", &repo]);
    // Far fewer descriptors than hard-linked files.
    let out = t.path().join("out");
    let o = Command::new("prlimit")
        .args(["--nofile=256:256", "--"])
        .arg(rw())
        .args(["restore", "latest", "--to"])
        .arg(&out)
        .arg("--repo")
        .arg(&repo)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let a = std::fs::metadata(out.join("a123")).unwrap();
    let b = std::fs::metadata(out.join("b123")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(std::fs::read(out.join("b599")).unwrap(), b"file 599");
    // Damage one block of the big file: it is not restored under any of
    // its names, and the restore ends (no deadlock) with an error.
    let one = common::bytes(7, 400_000)[100_000..100_064].to_vec();
    let pack = std::fs::read_dir(repo.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = bytes
        .windows(one.len())
        .position(|w| w == one.as_slice())
        .expect("the block is stored raw");
    bytes[at] ^= 0xff;
    std::fs::write(&pack, bytes).unwrap();
    let out2 = t.path().join("out2");
    let (tx, rx) = std::sync::mpsc::channel();
    let args = (out2.clone(), repo.clone());
    std::thread::spawn(move || {
        let o = cli(&[&"restore", &"latest", &"--to", &args.0, &"--repo", &args.1]);
        let _ = tx.send(o);
    });
    let o = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("a restore with a damaged hard-linked file did not finish");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    for n in ["big", "big2", "big3"] {
        assert!(!out2.join(n).exists(), "{n} was left with wrong bytes");
    }
    assert_eq!(std::fs::read(out2.join("a007")).unwrap(), b"file 7");
}

// ---- 4. the control socket --------------------------------------------

/// Attacker role: connect to SOCKET, send LINE, print what comes back.
fn attacker_connect(args: &[String]) {
    let mut s = match std::os::unix::net::UnixStream::connect(&args[0]) {
        Ok(s) => s,
        Err(e) => {
            println!("connect failed: {e}");
            return;
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = writeln!(s, "{}", args[1]);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    println!("answer: {out}");
}

fn control_socket_answers_only_root_and_its_owner() {
    let t = scratch();
    let backing = mkdir(&t.path().join("data"), 0o755);
    std::fs::write(backing.join("secret"), b"top secret bytes").unwrap();
    chmod(&backing.join("secret"), 0o600);
    let repo = t.path().join("r");
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let m = mount(&backing, &mnt, &repo, &[]);
    snapshot_live(&repo);
    let sock = repo.join("control.sock");
    let md = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o600, "socket mode");
    // Loosen the modes: the peer check alone must refuse.
    chmod(&repo, 0o755);
    chmod(&sock, 0o777);
    for line in [
        r#"{"cmd":"unmount"}"#.to_string(),
        r#"{"cmd":"status"}"#.to_string(),
        format!(
            r#"{{"cmd":"cli","args":[{:?},{:?},{:?}],"cwd":[47]}}"#,
            b"cat".to_vec(),
            b"latest".to_vec(),
            b"secret".to_vec()
        ),
    ] {
        let o = as_user(world().dir.path().join("attacker"))
            .env("REWINDFS_ATTACKER", "connect")
            .args([sock.to_str().unwrap(), &line])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("permission denied"), "{line}: {out}");
        assert!(!out.contains("top secret"), "{out}");
        assert!(!out.contains("\"pid\""), "status leaked: {out}");
    }
    // The CLI as that user gets a clear refusal too.
    let o = as_user(rw())
        .args(["cat", "latest", "secret", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("top secret"));
    assert!(
        is_mounted(&mnt),
        "a refused client unmounted the filesystem"
    );
    chmod(&repo, 0o700);
    let st = cli_ok(&[&"status", &"--repo", &repo]);
    assert!(st.contains("mountpoint"), "{st}");
    m.umount();
    let log = std::fs::read_to_string(repo.join("daemon.log")).unwrap_or_default();
    assert!(log.contains("refused a control connection"), "{log}");
}

// ---- 5. POSIX ACLs ----------------------------------------------------

fn acls_are_enforced_on_every_mount_kind() {
    let t = scratch();
    let backing = mkdir(&t.path().join("data"), 0o755);
    std::fs::write(backing.join("denied"), b"not for you").unwrap();
    std::fs::write(backing.join("open"), b"for everyone").unwrap();
    chmod(&backing.join("denied"), 0o644);
    chmod(&backing.join("open"), 0o644);
    root_sh(&format!(
        "setfacl -m u:{USER}:--- {}",
        backing.join("denied").display()
    ));
    let o = user_sh(&format!("cat {}", backing.join("denied").display()));
    assert!(
        !o.status.success(),
        "the ACL does not even hold on the backing filesystem"
    );
    let repo = t.path().join("r");
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let smnt = mkdir(&t.path().join("snap"), 0o755);
    let m = mount(&backing, &mnt, &repo, &["--allow-other"]);
    snapshot_live(&repo);
    let o = cli(&[
        &"mount-snapshot",
        &"latest",
        &smnt,
        &"--repo",
        &repo,
        &"--allow-other",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for dir in [
        mnt.clone(),
        mnt.join(".snapshots").join("latest"),
        smnt.clone(),
    ] {
        let o = user_sh(&format!("cat {}", dir.join("open").display()));
        assert!(o.status.success(), "{}: {}", dir.display(), text(&o));
        let o = user_sh(&format!("cat {}", dir.join("denied").display()));
        assert!(
            !o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("not for you"),
            "{}: the ACL was not enforced: {}",
            dir.display(),
            text(&o)
        );
    }
    cli_ok(&[&"umount", &smnt]);
    m.umount();
}

// ---- 6. denial of service by any user --------------------------------

const BAD_TIMES: [&str; 7] = [
    "@-60y",
    "@-57y",
    "@-292y",
    "@-584y",
    "@-999999999y",
    "@9999-12-31T23:59:59Z",
    "@0000-01-01T00:00:00Z",
];

fn out_of_range_times_cannot_take_a_mount_down() {
    let t = scratch();
    let backing = mkdir(&t.path().join("data"), 0o755);
    std::fs::write(backing.join("f"), b"alive").unwrap();
    chmod(&backing.join("f"), 0o644);
    let repo = t.path().join("r");
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let m = mount(&backing, &mnt, &repo, &["--allow-other"]);
    snapshot_live(&repo);
    for spec in BAD_TIMES {
        let o = user_sh(&format!("stat {}/.snapshots/{spec}", mnt.display()));
        assert!(!o.status.success(), "{spec} found something: {}", text(&o));
        let o = user_sh(&format!("cat {}/f", mnt.display()));
        assert_eq!(
            o.stdout,
            b"alive",
            "the mount died after {spec}: {}",
            text(&o)
        );
    }
    for spec in BAD_TIMES {
        let o = cli(&[&"ls", &spec, &"--repo", &repo]);
        assert!(!o.status.success(), "{spec}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("panicked") && err.contains("no snapshot"),
            "{spec}: {err}"
        );
    }
    m.umount();
    // And without a daemon.
    for spec in BAD_TIMES {
        let o = cli(&[&"cat", &spec, &"f", &"--repo", &repo]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && !err.contains("panicked"),
            "{spec}: {err}"
        );
    }
}

// ---- 7. damaged or hostile repository content -------------------------

fn edit_record(repo: &Path, id: u64, f: impl FnOnce(&mut serde_json::Value)) {
    let p = repo.join("snapshots").join(format!("{id:010}.json"));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn damaged_records_and_absurd_lengths_stay_contained() {
    let t = scratch();
    let src = mkdir(&t.path().join("src"), 0o755);
    let repo = t.path().join("r");
    cli_ok(&[&"init", &"--repo", &repo, &"--block-size", &"64K"]);
    for i in 1..=5 {
        std::fs::write(src.join(format!("f{i}")), common::bytes(i, 100_000)).unwrap();
        cli_ok(&[
            &"snapshot",
            &"--source",
            &src,
            &"--kind",
            &"full",
            &"--repo",
            &repo,
        ]);
    }
    std::fs::write(
        repo.join("snapshots/0000000002.json"),
        b"{ this is not json",
    )
    .unwrap();
    edit_record(&repo, 3, |v| {
        v["manifest_len"] = 1_000_000_000_000_000_000u64.into()
    });
    edit_record(&repo, 4, |v| v["name"] = "../../etc".into());
    let ids = |out: &str| -> Vec<u64> {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect()
    };
    // The records were damaged after they were indexed: commands keep
    // working, and verify reads the records themselves and names them.
    let out = cli_ok(&[&"snapshots", &"--json", &"--repo", &repo]);
    assert!(ids(&out).contains(&5), "{out}");
    let o = cli(&[&"verify", &"--repo", &repo]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v = String::from_utf8_lossy(&o.stdout);
    for id in [2, 3, 4] {
        assert!(v.contains(&format!("snapshot {id} is damaged")), "{v}");
    }
    let out = t.path().join("out");
    cli_ok(&[&"restore", &"5", &"--to", &out, &"--repo", &repo]);
    assert_eq!(
        std::fs::read(out.join("f5")).unwrap(),
        common::bytes(5, 100_000)
    );
    // Damaged before they were indexed (the index is gone): left out.
    std::fs::remove_dir_all(repo.join("index")).unwrap();
    let out = cli_ok(&[&"snapshots", &"--json", &"--repo", &repo]);
    assert_eq!(ids(&out), vec![1, 5], "{out}");
    let o = cli_ok(&[&"rebuild-index", &"--repo", &repo]);
    assert!(o.contains("snapshot 2") && o.contains("snapshot 3"), "{o}");
    let out2 = cli_ok(&[&"snapshots", &"--json", &"--repo", &repo]);
    assert_eq!(ids(&out2), vec![1, 5]);
    // The next snapshot does not reuse a damaged record's id.
    cli_ok(&[&"snapshot", &"--source", &src, &"--repo", &repo]);
    let out3 = cli_ok(&[&"snapshots", &"--json", &"--repo", &repo]);
    assert_eq!(ids(&out3), vec![1, 5, 6]);
    // A mount works, and shows only sound snapshots.
    let backing = mkdir(&t.path().join("data"), 0o755);
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let m = mount(&backing, &mnt, &repo, &[]);
    let names: Vec<String> = std::fs::read_dir(mnt.join(".snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("etc")), "{names:?}");
    m.umount();

    // A torn pack tail loses only what was in the torn range.
    let r2 = t.path().join("r2");
    cli_ok(&[&"init", &"--repo", &r2, &"--block-size", &"64K"]);
    let s2 = mkdir(&t.path().join("s2"), 0o755);
    std::fs::write(s2.join("old"), common::bytes(10, 300_000)).unwrap();
    cli_ok(&[&"snapshot", &"--source", &s2, &"--repo", &r2]);
    std::fs::write(s2.join("new"), common::bytes(11, 300_000)).unwrap();
    cli_ok(&[&"snapshot", &"--source", &s2, &"--repo", &r2]);
    let mut packs: Vec<PathBuf> = std::fs::read_dir(r2.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    packs.sort();
    let last = packs.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    cli_ok(&[&"rebuild-index", &"--repo", &r2]);
    let o = cli(&[&"verify", &"--read-data", &"--repo", &r2]);
    let v = String::from_utf8_lossy(&o.stdout);
    assert!(
        v.contains("snapshot 2 is damaged") && !v.contains("snapshot 1 is damaged"),
        "{v}"
    );
    let o1 = t.path().join("o1");
    cli_ok(&[&"restore", &"1", &"--to", &o1, &"--repo", &r2]);
    assert_eq!(
        std::fs::read(o1.join("old")).unwrap(),
        common::bytes(10, 300_000)
    );
}

// ---- 8. robustness ----------------------------------------------------

fn a_directory_made_outside_the_mount_is_captured() {
    let t = scratch();
    let backing = mkdir(&t.path().join("data"), 0o755);
    let repo = t.path().join("r");
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let m = mount(&backing, &mnt, &repo, &[]);
    mkdir(&backing.join("outside").join("deep"), 0o755);
    std::fs::write(backing.join("outside/deep/before"), b"b").unwrap();
    std::fs::write(mnt.join("outside/deep/through"), b"t").unwrap();
    snapshot_live(&repo);
    let s = common::status(&repo);
    assert!(s["flusher"]["last_error"].is_null(), "{s}");
    m.umount();
    cli_ok(&[&"verify", &"--repo", &repo]);
    let out = t.path().join("out");
    cli_ok(&[&"restore", &"latest", &"--to", &out, &"--repo", &repo]);
    assert_eq!(
        std::fs::read(out.join("outside/deep/through")).unwrap(),
        b"t"
    );
    assert_eq!(
        std::fs::read(out.join("outside/deep/before")).unwrap(),
        b"b"
    );
}

fn snapshot_failures_show_in_status() {
    let t = scratch();
    let backing = mkdir(&t.path().join("data"), 0o755);
    let repo = t.path().join("r");
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let m = mount(&backing, &mnt, &repo, &[]);
    // The mount's first snapshot first, so that the write below is the
    // next snapshot's to store (the first one could otherwise take it).
    let t0 = std::time::Instant::now();
    while common::status(&repo)["flusher"]["last_snapshot"].is_null() {
        assert!(t0.elapsed().as_secs() < 60, "no first snapshot");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::write(mnt.join("f"), common::bytes(1, 200_000)).unwrap();
    // Packs cannot be written (even by root): the snapshot fails.
    let packs = repo.join("packs");
    root_sh(&format!("chattr +i {}", packs.display()));
    let o = cli(&[&"snapshot", &"--repo", &repo]);
    root_sh(&format!("chattr -i {}", packs.display()));
    assert!(!o.status.success(), "{}", text(&o));
    let s = common::status(&repo);
    assert!(
        s["flusher"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "status shows no error: {s}"
    );
    snapshot_live(&repo);
    let s = common::status(&repo);
    assert!(s["flusher"]["last_error"].is_null(), "{s}");
    m.umount();
}

fn read_only_media_can_be_read() {
    let t = scratch();
    let src = mkdir(&t.path().join("src"), 0o755);
    std::fs::write(src.join("f"), b"on read-only media").unwrap();
    let repo = t.path().join("r");
    cli_ok(&[&"init", &"--repo", &repo, &"--block-size", &"64K"]);
    cli_ok(&[&"snapshot", &"--source", &src, &"--repo", &repo]);
    let ro = mkdir(&t.path().join("ro"), 0o700);
    root_sh(&format!(
        "mount --bind {0} {1} && mount -o remount,ro,bind {1}",
        repo.display(),
        ro.display()
    ));
    let result = std::panic::catch_unwind(|| {
        let before = listing(&ro);
        let out = cli_ok(&[&"snapshots", &"--repo", &ro]);
        assert!(out.contains("full"), "{out}");
        assert!(cli_ok(&[&"ls", &"latest", &"--repo", &ro]).contains(" f"));
        assert_eq!(
            cli_ok(&[&"cat", &"latest", &"f", &"--repo", &ro]),
            "on read-only media"
        );
        cli_ok(&[&"verify", &"--read-data", &"--repo", &ro]);
        let out = t.path().join("out");
        cli_ok(&[&"restore", &"latest", &"--to", &out, &"--repo", &ro]);
        assert_eq!(std::fs::read(out.join("f")).unwrap(), b"on read-only media");
        let o = cli(&[&"snapshot", &"--source", &src, &"--repo", &ro]);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
        assert_eq!(listing(&ro), before);
    });
    root_sh(&format!("umount {}", ro.display()));
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn nonsensical_mounts_are_refused() {
    let t = scratch();
    let backing = mkdir(&t.path().join("data"), 0o755);
    let repo = t.path().join("r");
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let m = mount(&backing, &mnt, &repo, &[]);
    // A repository (live or not) as the backing directory of a mount.
    let other = mkdir(&t.path().join("m2"), 0o755);
    for b in [repo.clone(), repo.join("packs")] {
        let o = cli(&[&"mount", &b, &other, &"--repo", &t.path().join("r2")]);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("repository"),
            "{}",
            text(&o)
        );
        assert!(!is_mounted(&other));
    }
    m.umount();
    // A mountpoint with entries, unless asked.
    std::fs::write(other.join("hidden"), b"x").unwrap();
    let o = cli(&[&"mount", &backing, &other, &"--repo", &repo]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not empty"),
        "{}",
        text(&o)
    );
    let m = mount(&backing, &other, &repo, &["--nonempty"]);
    m.umount();
    let smnt = mkdir(&t.path().join("s"), 0o755);
    std::fs::write(smnt.join("x"), b"x").unwrap();
    let o = cli(&[&"mount-snapshot", &"latest", &smnt, &"--repo", &repo]);
    assert!(!o.status.success(), "{}", text(&o));
}

fn a_block_size_change_takes_a_full_snapshot() {
    let t = scratch();
    let src = mkdir(&t.path().join("src"), 0o755);
    std::fs::write(src.join("a"), common::bytes(1, 500_000)).unwrap();
    let repo = t.path().join("r");
    cli_ok(&[&"init", &"--repo", &repo, &"--block-size", &"64K"]);
    cli_ok(&[&"snapshot", &"--source", &src, &"--repo", &repo]);
    let cfg = repo.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["block_size"] = (128u64 << 10).into();
    std::fs::write(&cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    std::fs::write(src.join("b"), common::bytes(2, 300_000)).unwrap();
    cli_ok(&[
        &"snapshot",
        &"--source",
        &src,
        &"--kind",
        &"incremental",
        &"--repo",
        &repo,
    ]);
    // Through a live mount too.
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let m = mount(&src, &mnt, &repo, &[]);
    std::fs::write(mnt.join("c"), common::bytes(3, 200_000)).unwrap();
    snapshot_live(&repo);
    m.umount();
    let list: serde_json::Value =
        serde_json::from_str(&cli_ok(&[&"snapshots", &"--json", &"--repo", &repo])).unwrap();
    let kinds: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[1], "full", "{kinds:?}");
    cli_ok(&[&"verify", &"--read-data", &"--repo", &repo]);
    for r in list.as_array().unwrap() {
        let id = r["id"].as_u64().unwrap().to_string();
        let out = t.path().join(format!("o{id}"));
        cli_ok(&[&"restore", &id, &"--to", &out, &"--repo", &repo]);
        assert_eq!(
            std::fs::read(out.join("a")).unwrap(),
            common::bytes(1, 500_000)
        );
    }
}

fn listings_are_safe_and_times_keep_their_range() {
    let t = scratch();
    let src = mkdir(&t.path().join("src"), 0o755);
    std::fs::write(src.join("evil\nname \x1b[31mred"), b"x").unwrap();
    std::fs::write(src.join("suid"), b"x").unwrap();
    chmod(&src.join("suid"), 0o4755);
    mkdir(&src.join("sticky"), 0o1777);
    std::fs::write(src.join("old"), b"x").unwrap();
    std::fs::write(src.join("future"), b"x").unwrap();
    std::fs::write(
        src.join(std::ffi::OsStr::from_bytes(b"bin\xff\xfe")),
        b"bytes",
    )
    .unwrap();
    root_sh(&format!(
        "touch -d 1960-01-01T00:00:00Z {} && touch -d 2300-06-01T12:00:00Z {}",
        src.join("old").display(),
        src.join("future").display()
    ));
    let future = std::fs::metadata(src.join("future")).unwrap().mtime();
    let repo = t.path().join("r");
    cli_ok(&[&"init", &"--repo", &repo, &"--block-size", &"64K"]);
    cli_ok(&[&"snapshot", &"--source", &src, &"--repo", &repo]);
    let o = cli(&[&"ls", &"latest", &"--repo", &repo]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        !out.contains('\x1b'),
        "an escape sequence reached the terminal: {out:?}"
    );
    assert_eq!(out.lines().count(), 6, "a name forged a line: {out}");
    assert!(out.contains("evil\\nname \\x1b[31mred"), "{out}");
    assert!(out.contains("-rwsr-xr-x"), "{out}");
    assert!(out.contains("drwxrwxrwt"), "{out}");
    assert!(out.contains("1960-01-01T00:00:00Z"), "{out}");
    assert!(out.contains("2300-06-01T12:00:00Z"), "{out}");
    assert!(out.contains("bin\\xff\\xfe"), "{out}");
    // Names that are not UTF-8 can be addressed, here and via a daemon.
    let raw = std::ffi::OsStr::from_bytes(b"bin\xff\xfe");
    let cat = Command::new(rw())
        .args(["cat", "latest"])
        .arg(raw)
        .arg("--repo")
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(cat.stdout, b"bytes", "{}", text(&cat));
    let out_dir = t.path().join("out");
    let o = Command::new(rw())
        .args(["restore", "latest"])
        .arg(raw)
        .arg("--to")
        .arg(&out_dir)
        .arg("--repo")
        .arg(&repo)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(out_dir.join(raw)).unwrap(), b"bytes");
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let m = mount(&src, &mnt, &repo, &[]);
    let cat = Command::new(rw())
        .args(["cat", "latest"])
        .arg(raw)
        .arg("--repo")
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(cat.stdout, b"bytes", "{}", text(&cat));
    // Times beyond 2262 survive a restore.
    let all = t.path().join("all");
    cli_ok(&[&"restore", &"latest", &"--to", &all, &"--repo", &repo]);
    m.umount();
    assert_eq!(
        std::fs::metadata(all.join("future")).unwrap().mtime(),
        future
    );
    assert_eq!(
        std::fs::metadata(all.join("old")).unwrap().mtime(),
        -315_619_200
    );
}

fn long_repository_paths_mount_and_failed_starts_leave_no_marker() {
    let t = scratch();
    let mut repo = t.path().to_path_buf();
    while repo.as_os_str().len() < 150 {
        repo.push("a-directory-with-a-long-name");
    }
    mkdir(&repo, 0o700);
    repo.push("repo");
    let backing = mkdir(&t.path().join("data"), 0o755);
    std::fs::write(backing.join("f"), b"x").unwrap();
    let mnt = mkdir(&t.path().join("mnt"), 0o755);
    let m = mount(&backing, &mnt, &repo, &[]);
    snapshot_live(&repo);
    assert!(cli_ok(&[&"status", &"--repo", &repo]).contains("mountpoint"));
    m.umount();
    assert!(!repo.join("mounted").exists());

    // A start that fails after the repository was opened (here: the
    // socket's name is taken by a directory).
    std::fs::create_dir(repo.join("control.sock")).unwrap();
    let o = cli(&[&"mount", &backing, &mnt, &"--repo", &repo]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        !repo.join("mounted").exists(),
        "a failed start left the marker"
    );
    assert!(!is_mounted(&mnt));
    std::fs::remove_dir(repo.join("control.sock")).unwrap();
    let m = mount(&backing, &mnt, &repo, &[]);
    let s = common::status(&repo);
    assert_eq!(s["unclean_start"], false, "{s}");
    m.umount();
}

// ---- the harness ------------------------------------------------------

type Test = (&'static str, fn());

const TESTS: &[Test] = &[
    (
        "untrusted_repositories_are_refused",
        untrusted_repositories_are_refused,
    ),
    (
        "symlinks_in_a_repository_are_never_followed",
        symlinks_in_a_repository_are_never_followed,
    ),
    (
        "setuid_and_devices_grant_nothing",
        setuid_and_devices_grant_nothing,
    ),
    (
        "restore_into_a_users_directory_cannot_be_redirected",
        restore_into_a_users_directory_cannot_be_redirected,
    ),
    (
        "restore_honours_umask_and_drops_setuid_for_users",
        restore_honours_umask_and_drops_setuid_for_users,
    ),
    (
        "hard_links_restore_within_limits_and_damage_removes_every_name",
        hard_links_restore_within_limits_and_damage_removes_every_name,
    ),
    (
        "control_socket_answers_only_root_and_its_owner",
        control_socket_answers_only_root_and_its_owner,
    ),
    (
        "acls_are_enforced_on_every_mount_kind",
        acls_are_enforced_on_every_mount_kind,
    ),
    (
        "out_of_range_times_cannot_take_a_mount_down",
        out_of_range_times_cannot_take_a_mount_down,
    ),
    (
        "damaged_records_and_absurd_lengths_stay_contained",
        damaged_records_and_absurd_lengths_stay_contained,
    ),
    (
        "a_directory_made_outside_the_mount_is_captured",
        a_directory_made_outside_the_mount_is_captured,
    ),
    (
        "snapshot_failures_show_in_status",
        snapshot_failures_show_in_status,
    ),
    ("read_only_media_can_be_read", read_only_media_can_be_read),
    (
        "nonsensical_mounts_are_refused",
        nonsensical_mounts_are_refused,
    ),
    (
        "a_block_size_change_takes_a_full_snapshot",
        a_block_size_change_takes_a_full_snapshot,
    ),
    (
        "listings_are_safe_and_times_keep_their_range",
        listings_are_safe_and_times_keep_their_range,
    ),
    (
        "long_repository_paths_mount_and_failed_starts_leave_no_marker",
        long_repository_paths_mount_and_failed_starts_leave_no_marker,
    ),
    (
        "setuid_bits_go_on_a_non_owners_write_beside_passthrough_readers",
        setuid_bits_go_on_a_non_owners_write_beside_passthrough_readers,
    ),
    (
        "setgid_goes_when_an_owner_outside_the_group_sets_an_acl",
        setgid_goes_when_an_owner_outside_the_group_sets_an_acl,
    ),
    (
        "status_escapes_paths_from_the_mount_table",
        status_escapes_paths_from_the_mount_table,
    ),
    (
        "slow_clients_do_not_hold_the_metrics_listener_and_obs_fold_is_refused",
        slow_clients_do_not_hold_the_metrics_listener_and_obs_fold_is_refused,
    ),
    (
        "key_files_are_bounded_regular_and_private",
        key_files_are_bounded_regular_and_private,
    ),
    (
        "a_repository_path_through_a_users_symlink_is_refused",
        a_repository_path_through_a_users_symlink_is_refused,
    ),
    (
        "an_endless_listing_is_refused",
        an_endless_listing_is_refused,
    ),
    (
        "the_listener_answers_only_who_holds_the_repositorys_token",
        the_listener_answers_only_who_holds_the_repositorys_token,
    ),
];

fn main() {
    if let Ok(role) = std::env::var("REWINDFS_ATTACKER") {
        let args: Vec<String> = std::env::args().skip(1).collect();
        match role.as_str() {
            "swap" => attacker_swap(&args),
            "connect" => attacker_connect(&args),
            r => panic!("unknown attacker role {r}"),
        }
        return;
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let chosen: Vec<&Test> = TESTS
        .iter()
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        .collect();
    println!("running {} security tests", chosen.len());
    let _ = world();
    let mut failed = Vec::new();
    for (name, f) in chosen {
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(f);
        let secs = t0.elapsed().as_secs_f64();
        match r {
            Ok(()) => println!("test {name} ... ok ({secs:.1} s)"),
            Err(_) => {
                println!("test {name} ... FAILED ({secs:.1} s)");
                failed.push(*name);
            }
        }
    }
    // The copies of the binaries (the world lives in a static).
    let _ = std::fs::remove_dir_all(world().dir.path());
    if failed.is_empty() {
        println!("\ntest result: ok. all security tests passed");
    } else {
        println!("\ntest result: FAILED. {} failed: {failed:?}", failed.len());
        std::process::exit(1);
    }
}
