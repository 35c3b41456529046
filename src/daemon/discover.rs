//! Finding rewindfs mounts without flags, the way git finds its
//! repository: from the kernel's mount table.
//!
//! Every rewindfs mount (live or snapshot) is a FUSE mount (type `fuse`,
//! or `fuse.rewindfs` when mounted through fusermount) whose source is
//! `rewindfs:` and the absolute path of its repository ([`mount_source`];
//! unless that path holds a comma or whitespace, which mount options
//! cannot carry: the source is then `rewindfs` and such a mount needs
//! `--repo`). The prefix keeps the source from naming an existing
//! directory: umount(8) and findmnt take a source that is a directory for
//! a mountpoint, and suites such as xfstests unmount by source. Sources
//! of daemons started before the prefix (the bare path) are still read.
//! A FUSE mount counts as ours when its source looks like a
//! rewindfs repository (or cannot be looked into). A path (a mountpoint,
//! or anything inside a mount) leads to the innermost such mount that
//! holds it, and so to a repository.
//!
//! Invariant: the mount table is only a hint. Any user can make a FUSE
//! mount with any subtype and source, so a repository found here is used
//! only after its daemon (reached through the checked control socket)
//! confirms it serves that mountpoint, and commands still apply the
//! repository trust checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::control::{self, CallError, DaemonStatus, Request, Response};
use super::mounts;

/// The mount-table types of rewindfs mounts (direct mount by root;
/// through fusermount with our subtype).
pub const FSTYPES: [&str; 2] = ["fuse", "fuse.rewindfs"];

pub use crate::util::mountinfo::{mount_source, repo_of_source, SOURCE_PREFIX};

/// A rewindfs mount in the mount table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundMount {
    pub mountpoint: PathBuf,
    /// The repository path the mount table names (None when the mount
    /// could not carry it).
    pub repo: Option<PathBuf>,
}

/// Every rewindfs mount on this machine (in this mount namespace), in
/// mount-table order.
pub fn rewindfs_mounts() -> Vec<FoundMount> {
    let table = mounts();
    from_table(&table, |p| !under_fuse(p, &table) && maybe_repository(p))
}

/// Whether `p` lies inside a FUSE mount: looking into it could wait on a
/// userspace server forever (any user can mount one and name a path in
/// it as a fake mount's source), so it is never probed.
fn under_fuse(p: &Path, table: &[(PathBuf, String, String)]) -> bool {
    table
        .iter()
        .any(|(mp, fstype, _)| fstype.starts_with("fuse") && p.starts_with(mp))
}

/// Whether `p` is, or may be, a rewindfs repository: it looks like one,
/// or it cannot be looked into (another user's; its daemon decides).
fn maybe_repository(p: &Path) -> bool {
    if super::looks_like_repository(p) {
        return true;
    }
    matches!(
        std::fs::symlink_metadata(p.join(crate::repo::layout::CONFIG)),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied
    )
}

fn from_table(
    table: &[(PathBuf, String, String)],
    is_repo: impl Fn(&Path) -> bool,
) -> Vec<FoundMount> {
    table
        .iter()
        .filter(|(_, fstype, _)| FSTYPES.contains(&fstype.as_str()))
        .filter_map(|(mp, fstype, source)| {
            let repo = repo_of_source(source).filter(|r| is_repo(r));
            // A FUSE mount of another kind is not listed; one of ours
            // whose source could not carry the repository is.
            if repo.is_none() && !(fstype == "fuse.rewindfs" || source == "rewindfs") {
                return None;
            }
            Some(FoundMount {
                mountpoint: mp.clone(),
                repo,
            })
        })
        .collect()
}

/// The innermost rewindfs mount holding `path` (made absolute; resolved
/// when it can be, so a path through a symlink finds its mount). Only
/// that mount's source is probed.
pub fn mount_containing(path: &Path) -> Option<FoundMount> {
    let abs = absolute(path);
    let table = mounts();
    let inner = innermost(&table, &abs)?;
    from_table(std::slice::from_ref(inner), |p| {
        !under_fuse(p, &table) && maybe_repository(p)
    })
    .into_iter()
    .next()
}

fn absolute(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    // A dead mount answers ENOTCONN: fall back to the plain absolute path.
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|c| c.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// The innermost FUSE mount of a type we could be that holds `abs`.
fn innermost<'t>(
    table: &'t [(PathBuf, String, String)],
    abs: &Path,
) -> Option<&'t (PathBuf, String, String)> {
    table
        .iter()
        .filter(|(mp, t, _)| FSTYPES.contains(&t.as_str()) && abs.starts_with(mp))
        .max_by_key(|(mp, _, _)| mp.components().count())
}

/// Why a path did not lead to a repository.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("{0} is not inside a rewindfs mount (give --repo DIR or -C MOUNTPOINT)")]
    NotInMount(PathBuf),
    #[error("the rewindfs mount {0} does not name its repository in the mount table (its path has a comma or whitespace): give --repo DIR")]
    Unnamed(PathBuf),
    #[error("the daemon of the rewindfs mount {0} is not running (the mount is stale): `rewindfs umount {0}`, then mount again")]
    Stale(PathBuf),
    #[error("the daemon of {repo} does not serve {mountpoint}: the mount table's entry is not a rewindfs mount of that repository")]
    NotServed { mountpoint: PathBuf, repo: PathBuf },
    #[error("asking the daemon of {repo} about {mountpoint}: {err}")]
    Call {
        mountpoint: PathBuf,
        repo: PathBuf,
        err: CallError,
    },
}

/// The mount holding `path`, its repository and its daemon's status, once
/// that daemon confirmed it serves the mount.
pub fn find(path: &Path) -> std::result::Result<(FoundMount, PathBuf, DaemonStatus), FindError> {
    let m = mount_containing(path).ok_or_else(|| FindError::NotInMount(absolute(path)))?;
    let repo = m
        .repo
        .clone()
        .ok_or_else(|| FindError::Unnamed(m.mountpoint.clone()))?;
    let status = confirm(&m, &repo)?;
    Ok((m, repo, status))
}

/// Ask the daemon of `repo` whether it serves `m`.
pub fn confirm(m: &FoundMount, repo: &Path) -> std::result::Result<DaemonStatus, FindError> {
    let status = ask(m, repo)?;
    if serves(&status, &m.mountpoint) {
        Ok(status)
    } else {
        Err(FindError::NotServed {
            mountpoint: m.mountpoint.clone(),
            repo: repo.to_path_buf(),
        })
    }
}

/// The status of the daemon of `repo` (named as the source of `m`).
pub fn ask(m: &FoundMount, repo: &Path) -> std::result::Result<DaemonStatus, FindError> {
    match control::call(repo, &Request::Status, Duration::from_secs(10)) {
        Ok(Response::Status { status }) => Ok(*status),
        Ok(_) => Err(FindError::NotServed {
            mountpoint: m.mountpoint.clone(),
            repo: repo.to_path_buf(),
        }),
        Err(CallError::NotRunning) | Err(CallError::Stale(_)) => {
            Err(FindError::Stale(m.mountpoint.clone()))
        }
        Err(err) => Err(FindError::Call {
            mountpoint: m.mountpoint.clone(),
            repo: repo.to_path_buf(),
            err,
        }),
    }
}

/// Whether a daemon's status names `mountpoint` (its live mount or one of
/// its snapshot mounts).
pub fn serves(status: &DaemonStatus, mountpoint: &Path) -> bool {
    let mp = mountpoint.display().to_string();
    (status.live && status.mountpoint == mp) || status.mounts.contains(&mp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Vec<(PathBuf, String, String)> {
        vec![
            ("/".into(), "ext4".into(), "/dev/sda1".into()),
            (
                "/mnt/a".into(),
                "fuse".into(),
                "rewindfs:/var/lib/rewindfs/a".into(),
            ),
            (
                "/mnt/a/inner".into(),
                "fuse.rewindfs".into(),
                "/srv/b".into(),
            ),
            ("/mnt/odd".into(), "fuse".into(), "rewindfs".into()),
            ("/mnt/other".into(), "fuse.sshfs".into(), "/x".into()),
            ("/mnt/plain".into(), "fuse".into(), "/not/a/repo".into()),
            ("/mnt/host".into(), "fuse".into(), "user@host:".into()),
        ]
    }

    fn repos(p: &Path) -> bool {
        p.starts_with("/var/lib/rewindfs") || p.starts_with("/srv")
    }

    #[test]
    fn sources_name_repositories_with_a_prefix() {
        let r = Path::new("/var/lib/rewindfs/a");
        assert_eq!(mount_source(r), "rewindfs:/var/lib/rewindfs/a");
        assert_eq!(repo_of_source(&mount_source(r)).as_deref(), Some(r));
        // A daemon started before the prefix.
        assert_eq!(
            repo_of_source("/srv/b").as_deref(),
            Some(Path::new("/srv/b"))
        );
        assert_eq!(mount_source(Path::new("/a b/r")), "rewindfs");
        assert_eq!(repo_of_source("rewindfs"), None);
        assert_eq!(repo_of_source("user@host:"), None);
    }

    #[test]
    fn only_rewindfs_mounts_and_their_repositories() {
        let f = from_table(&table(), repos);
        assert_eq!(f.len(), 3, "{f:?}");
        assert_eq!(f[0].repo.as_deref(), Some(Path::new("/var/lib/rewindfs/a")));
        assert_eq!(f[2].repo, None);
    }

    #[test]
    fn sources_inside_fuse_mounts_are_never_probed() {
        let t = table();
        assert!(under_fuse(Path::new("/mnt/a/x/repo"), &t));
        assert!(under_fuse(Path::new("/mnt/other/r"), &t));
        assert!(!under_fuse(Path::new("/var/lib/rewindfs/a"), &t));
        let probed = std::cell::RefCell::new(Vec::new());
        from_table(&t, |p| {
            probed.borrow_mut().push(p.to_path_buf());
            !under_fuse(p, &t) && repos(p)
        });
        assert!(probed.borrow().iter().all(|p| p.is_absolute()));
    }

    #[test]
    fn the_innermost_mount_holds_a_path() {
        let t = table();
        let at = |p: &str| {
            innermost(&t, Path::new(p))
                .and_then(|e| {
                    from_table(std::slice::from_ref(e), repos)
                        .into_iter()
                        .next()
                })
                .map(|m| m.mountpoint)
        };
        assert_eq!(at("/mnt/a"), Some("/mnt/a".into()));
        assert_eq!(at("/mnt/a/x/y"), Some("/mnt/a".into()));
        assert_eq!(at("/mnt/a/inner/z"), Some("/mnt/a/inner".into()));
        // A sibling whose name starts the same is not inside.
        assert_eq!(at("/mnt/ab"), None);
        assert_eq!(at("/mnt/other/f"), None);
        assert_eq!(at("/"), None);
        // Inside a FUSE mount that is not ours: not in a rewindfs mount.
        assert_eq!(at("/mnt/plain/x"), None);
    }

    #[test]
    fn a_daemon_serves_its_live_and_snapshot_mounts_only() {
        let s = DaemonStatus {
            live: true,
            mountpoint: "/mnt/a".into(),
            mounts: vec!["/mnt/snap".into()],
            ..Default::default()
        };
        assert!(serves(&s, Path::new("/mnt/a")));
        assert!(serves(&s, Path::new("/mnt/snap")));
        assert!(!serves(&s, Path::new("/mnt/b")));
        let views_only = DaemonStatus {
            live: false,
            mountpoint: "/mnt/a".into(),
            ..Default::default()
        };
        assert!(!serves(&views_only, Path::new("/mnt/a")));
    }
}
