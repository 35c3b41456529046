//! Whether this process may trust a repository directory, in the spirit
//! of ssh's StrictModes and git's safe.directory.
//!
//! rewindfs runs as root over folders other users write. A repository
//! another user can write, replace or plant things in can make root
//! create, chmod or execute what that user chose. So before a repository
//! is opened for anything that writes (and before a daemon serves it):
//!
//! - the repository directory is owned by this process's euid (or root)
//!   and not writable by group or others;
//! - every directory above it is owned by root or the euid and not
//!   writable by group or others, except a sticky directory such as
//!   `/tmp`, where the entry below it must then be owned by the euid (or
//!   root): in a sticky directory only the entry's owner (and root) can
//!   rename or remove it.
//!
//! The walk opens each component from `/` down with `O_NOFOLLOW` and
//! checks the object it opened (not a path looked up again), and it hands
//! back the descriptor of the repository directory it checked: what was
//! checked is what is used.
//!
//! Read-only commands may read a repository that fails these checks
//! (see `Repository::open_read_only`): they then write nothing to it, do
//! not talk to a socket in it, and a restore from it creates no setuid,
//! setgid or device files and keeps the restoring user as owner.

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::error::{Error, Result};
use crate::util::dirfd::Dir;

const S_ISVTX: u32 = 0o1000;
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// If `fd` is on a FUSE filesystem mounted by someone other than root or
/// `euid`, that mounter: its daemon reports owners and modes as it likes,
/// so they prove nothing.
fn foreign_fuse(fd: &OwnedFd, st: &rustix::fs::Stat, euid: u32) -> Option<u32> {
    let sfs = rustix::fs::fstatfs(fd).ok()?;
    if sfs.f_type as i64 != FUSE_SUPER_MAGIC {
        return None;
    }
    let dev = format!(
        "{}:{}",
        rustix::fs::major(st.st_dev),
        rustix::fs::minor(st.st_dev)
    );
    // Unknown mounter (not found): treat as foreign.
    let uid = crate::util::mountinfo::mounts()
        .into_iter()
        .find(|m| m.dev == dev)
        .and_then(|m| {
            m.super_options
                .split(',')
                .find_map(|o| o.strip_prefix("user_id=")?.parse::<u32>().ok())
        })
        .unwrap_or(u32::MAX);
    (!owner_ok(uid, euid)).then_some(uid)
}

/// Why a directory on the way is not trusted.
fn refuse(path: &Path, why: String) -> Error {
    Error::Untrusted {
        path: path.to_path_buf(),
        why,
    }
}

fn owner_ok(uid: u32, euid: u32) -> bool {
    uid == 0 || uid == euid
}

fn describe_owner(uid: u32) -> String {
    match users_name(uid) {
        Some(n) => format!("uid {uid} ({n})"),
        None => format!("uid {uid}"),
    }
}

/// The login name of a uid from /etc/passwd (for messages only).
fn users_name(uid: u32) -> Option<String> {
    let s = std::fs::read_to_string("/etc/passwd").ok()?;
    s.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// How a repository is to be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// It must exist.
    Existing,
    /// Create it (mode 0700) if missing; an existing one must be trusted
    /// like any other.
    CreateIfMissing,
}

/// The absolute, symlink-free path of `path` (its parent resolved when
/// it does not exist yet and `create` allows that).
fn resolve(path: &Path, create: bool) -> Result<PathBuf> {
    match path.canonicalize() {
        Ok(p) => Ok(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let name = path.file_name().ok_or_else(|| {
                Error::InvalidInput(format!("{} is not a directory name", path.display()))
            })?;
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let parent = parent.canonicalize().map_err(|_| {
                Error::InvalidInput(format!(
                    "parent directory {} does not exist",
                    parent.display()
                ))
            })?;
            Ok(parent.join(name))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotARepository {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(Error::io("resolve", path, e)),
    }
}

/// The directories of `path` as given (before its symlinks are resolved)
/// pass the same rules as the resolved path's: a symlink on the way can
/// then only have been placed by root or us. (A repository path under
/// another user's directory was refused, but the same path made a symlink
/// to root's repository was resolved first and accepted: that user chose
/// which repository root's command acted on.)
fn check_given(path: &Path, fix: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("read the current directory", "", e))?
            .join(path)
    };
    // Without a symlink on the way the resolved walk checks these very
    // directories (through descriptors, with its own messages).
    let mut prefix = PathBuf::from("/");
    let through_symlink = abs.components().any(|c| {
        prefix.push(c);
        std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink())
    });
    if !through_symlink {
        return Ok(());
    }
    let euid = rustix::process::geteuid().as_raw();
    let mut dir = PathBuf::from("/");
    for c in abs.components() {
        let name = match c {
            Component::Normal(n) => n,
            Component::ParentDir => {
                dir.pop();
                continue;
            }
            _ => continue,
        };
        let entry = dir.join(name);
        let Ok(md) = std::fs::symlink_metadata(&entry) else {
            // Missing from here on: the resolved walk decides.
            return Ok(());
        };
        let d = std::fs::metadata(&dir).map_err(|e| Error::io("stat", &dir, e))?;
        let others_write = d.mode() & 0o022 != 0;
        let sticky = d.mode() & S_ISVTX != 0;
        let ok = owner_ok(d.uid(), euid) && (!others_write || (sticky && owner_ok(md.uid(), euid)));
        if !ok {
            return Err(refuse(
                path,
                format!(
                    "{} is in {}, which {} can change (owner {}, mode {:04o}): the path could be made to lead elsewhere; {fix}",
                    entry.display(),
                    dir.display(),
                    if owner_ok(d.uid(), euid) { "another user" } else { "its owner" },
                    describe_owner(d.uid()),
                    d.mode() & 0o7777
                ),
            ));
        }
        dir = if md.file_type().is_symlink() {
            entry
                .canonicalize()
                .map_err(|e| Error::io("resolve", &entry, e))?
        } else {
            entry
        };
    }
    Ok(())
}

/// Check the directories from `/` to `path` and open the repository
/// directory itself. See the module documentation for the rules.
pub fn open_trusted(path: &Path, how: Open) -> Result<Dir> {
    let create = how == Open::CreateIfMissing;
    check_given(
        path,
        "use a repository in a directory only you can write (e.g. `--repo /var/lib/rewindfs/NAME`, created by you with mode 0700)",
    )?;
    let abs = resolve(path, create)?;
    let euid = rustix::process::geteuid().as_raw();
    let comps: Vec<&std::ffi::OsStr> = abs
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let fix = "use a repository in a directory only you can write (e.g. `--repo /var/lib/rewindfs/NAME`, created by you with mode 0700)";
    let mut cur: OwnedFd = rustix::fs::openat(
        rustix::fs::CWD,
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open", "/", e.into()))?;
    let mut cur_path = PathBuf::from("/");
    let mut cur_st = rustix::fs::fstat(&cur).map_err(|e| Error::io("stat", "/", e.into()))?;
    for (i, name) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        // The directory we are in must not let another user replace `name`.
        if !owner_ok(cur_st.st_uid, euid) {
            return Err(refuse(
                &abs,
                format!(
                    "{} is owned by {}, who could replace the repository; {fix}",
                    cur_path.display(),
                    describe_owner(cur_st.st_uid)
                ),
            ));
        }
        let writable_by_others = cur_st.st_mode & 0o022 != 0;
        let sticky = cur_st.st_mode & S_ISVTX != 0;
        if writable_by_others && !sticky {
            return Err(refuse(
                &abs,
                format!(
                    "{} is writable by {} (mode {:04o}), so another user could replace the repository; {fix}",
                    cur_path.display(),
                    if cur_st.st_mode & 0o002 != 0 { "everyone" } else { "its group" },
                    cur_st.st_mode & 0o7777
                ),
            ));
        }
        let next_path = cur_path.join(name);
        let flags = if last {
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        } else {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        };
        let next = match rustix::fs::openat(&cur, name.as_bytes(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if last && create => {
                match rustix::fs::mkdirat(&cur, name.as_bytes(), Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(Error::io("create directory", &next_path, e.into())),
                }
                rustix::fs::openat(&cur, name.as_bytes(), flags, Mode::empty())
                    .map_err(|e| Error::io("open directory", &next_path, e.into()))?
            }
            Err(rustix::io::Errno::NOENT) if last => {
                return Err(Error::NotARepository { path: abs.clone() })
            }
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return Err(refuse(
                    &abs,
                    format!(
                        "{} changed into a symlink or a file while it was checked; {fix}",
                        next_path.display()
                    ),
                ))
            }
            Err(e) => return Err(Error::io("open directory", &next_path, e.into())),
        };
        let st = rustix::fs::fstat(&next).map_err(|e| Error::io("stat", &next_path, e.into()))?;
        if let Some(uid) = foreign_fuse(&next, &st, euid) {
            return Err(refuse(
                &abs,
                format!(
                    "{} is on a FUSE filesystem mounted by uid {uid}, whose owners and modes prove nothing; {fix}",
                    next_path.display()
                ),
            ));
        }
        if writable_by_others && sticky && !owner_ok(st.st_uid, euid) {
            return Err(refuse(
                &abs,
                format!(
                    "{} is in the shared directory {} but owned by {}, not by you (uid {euid}); {fix}",
                    next_path.display(),
                    cur_path.display(),
                    describe_owner(st.st_uid)
                ),
            ));
        }
        cur = next;
        cur_path = next_path;
        cur_st = st;
    }
    // The repository directory itself.
    if !owner_ok(cur_st.st_uid, euid) {
        return Err(refuse(
            &abs,
            format!(
                "it is owned by {}, not by you (uid {euid}) or root; {fix}",
                describe_owner(cur_st.st_uid)
            ),
        ));
    }
    if cur_st.st_mode & 0o022 != 0 {
        return Err(refuse(
            &abs,
            format!(
                "it is writable by group or others (mode {:04o}); run `chmod 700 {}` if that was a mistake",
                cur_st.st_mode & 0o7777,
                abs.display()
            ),
        ));
    }
    if comps.is_empty() {
        return Err(refuse(
            &abs,
            "the root directory cannot be a repository".into(),
        ));
    }
    Ok(Dir::from_fd(cur, abs))
}

/// Check a subdirectory of a trusted repository: owned by the euid (or
/// root) and writable by nobody else.
pub fn check_subdir(d: &Dir) -> Result<()> {
    let st = d.stat()?;
    let euid = rustix::process::geteuid().as_raw();
    if !owner_ok(st.st_uid, euid) || st.st_mode & 0o022 != 0 {
        return Err(refuse(
            d.path(),
            format!(
                "it is owned by {} with mode {:04o}; every directory of a repository must be yours and writable by nobody else",
                describe_owner(st.st_uid),
                st.st_mode & 0o7777
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn private_directories_are_trusted_and_shared_ones_are_not() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("r");
        let d = open_trusted(&repo, Open::CreateIfMissing).unwrap();
        assert_eq!(d.stat().unwrap().st_mode & 0o777, 0o700);
        assert!(open_trusted(&repo, Open::Existing).is_ok());
        // Group-writable repository directory.
        chmod(&repo, 0o770);
        let e = open_trusted(&repo, Open::Existing).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
        chmod(&repo, 0o700);
        // A parent others can write (not sticky).
        chmod(t.path(), 0o777);
        let e = open_trusted(&repo, Open::Existing).unwrap_err().to_string();
        assert!(e.contains("writable by everyone"), "{e}");
        // Sticky and world-writable like /tmp: fine when the entry is ours.
        chmod(t.path(), 0o1777);
        assert!(open_trusted(&repo, Open::Existing).is_ok());
        chmod(t.path(), 0o700);
        assert!(matches!(
            open_trusted(&t.path().join("nope"), Open::Existing),
            Err(Error::NotARepository { .. })
        ));
    }

    #[test]
    fn a_symlink_in_a_directory_others_control_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        chmod(&real, 0o700);
        let shared = t.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::os::unix::fs::symlink(&real, shared.join("link")).unwrap();
        // Another user's directory (here: one anyone may write).
        chmod(&shared, 0o777);
        let e = open_trusted(&shared.join("link"), Open::Existing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("could be made to lead elsewhere"), "{e}");
        chmod(&shared, 0o755);
        assert!(open_trusted(&shared.join("link"), Open::Existing).is_ok());
    }

    #[test]
    fn a_symlinked_path_is_checked_where_it_leads() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        chmod(&real, 0o700);
        std::os::unix::fs::symlink(&real, t.path().join("link")).unwrap();
        let d = open_trusted(&t.path().join("link"), Open::Existing).unwrap();
        assert_eq!(d.path(), real.canonicalize().unwrap());
    }
}
