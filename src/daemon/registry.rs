//! Running daemons register themselves so that `rewindfs status` also
//! finds one whose mount table entry is gone: after `umount --lazy` (or
//! `umount -l`) a daemon keeps its repository, and its last snapshot
//! waits, until the last open file of the detached mount is closed.
//!
//! Root's daemons register in /run/rewindfs (root's, 0755: nobody else
//! can add or change an entry), other users' in $XDG_RUNTIME_DIR/rewindfs.
//! An entry is a file named by the daemon's pid holding its repository's
//! path; it is removed when the daemon exits (one left by a daemon that
//! was killed names a dead pid and is skipped, then removed). The entry
//! is only a hint: the repository is then asked through its checked
//! control socket, like any mount found in the mount table.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const ROOT_DIR: &str = "/run/rewindfs";

/// Where this process registers (None: nowhere suitable).
fn own_dir() -> Option<PathBuf> {
    if rustix::process::geteuid().is_root() {
        return Some(PathBuf::from(ROOT_DIR));
    }
    let run = std::env::var_os("XDG_RUNTIME_DIR")?;
    Some(Path::new(&run).join("rewindfs"))
}

/// A directory whose entries we may believe: root's or ours, and no one
/// else may write to it.
fn trusted(dir: &Path) -> bool {
    let Ok(m) = std::fs::symlink_metadata(dir) else {
        return false;
    };
    let me = rustix::process::geteuid().as_raw();
    m.is_dir() && (m.uid() == 0 || m.uid() == me) && m.mode() & 0o022 == 0
}

/// This daemon's entry; removed when dropped.
pub struct Registration {
    path: PathBuf,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Register this process as the daemon of `repo` (absolute).
pub fn register(repo: &Path) -> Option<Registration> {
    let dir = own_dir()?;
    let mode = if rustix::process::geteuid().is_root() {
        0o755
    } else {
        0o700
    };
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(&dir);
    if !trusted(&dir) {
        tracing::info!(
            "{} is not a trusted directory: this daemon is not registered (status finds it by its mount only)",
            dir.display()
        );
        return None;
    }
    let path = dir.join(std::process::id().to_string());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .ok()?;
    f.write_all(repo.as_os_str().as_encoded_bytes()).ok()?;
    Some(Registration { path })
}

/// The registered daemons that are alive: (pid, repository).
pub fn registered() -> Vec<(u32, PathBuf)> {
    let mut dirs = vec![PathBuf::from(ROOT_DIR)];
    if let Some(d) = own_dir() {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    let mut out = Vec::new();
    for dir in dirs.into_iter().filter(|d| trusted(d)) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                // A daemon that was killed: its entry goes.
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let Ok(bytes) = std::fs::read(e.path()) else {
                continue;
            };
            let repo = PathBuf::from(String::from_utf8_lossy(&bytes).into_owned());
            if repo.is_absolute() {
                out.push((pid, repo));
            }
        }
    }
    out.sort();
    out
}
