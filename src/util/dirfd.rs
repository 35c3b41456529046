//! A directory held open by descriptor. Every entry is reached with `*at`
//! calls and `O_NOFOLLOW` (or `AT_SYMLINK_NOFOLLOW`): no path is resolved
//! again after the directory was opened, so renaming or replacing the
//! directory, or planting a symlink at a name inside it, cannot redirect
//! an operation. The repository uses nothing else.
//!
//! The path kept beside the descriptor is for messages only.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::error::{Error, Result};
use crate::util::{durable, fault};

/// How the temporary file of [`Dir::write_atomic`] is named:
/// `<TMP_PREFIX><name>.<pid>`.
pub const TMP_PREFIX: &str = ".tmp.";

#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn io(op: &'static str, path: PathBuf, e: rustix::io::Errno) -> Error {
    Error::io(op, path, e.into())
}

impl Dir {
    /// Wrap an open directory descriptor.
    pub fn from_fd(fd: OwnedFd, path: PathBuf) -> Dir {
        Dir { fd, path }
    }

    /// Open a directory by path (following symlinks in `path`: use only
    /// where the path is not under another user's control, or after
    /// checking it, see `repo::trust`).
    pub fn open_path(path: &Path) -> Result<Dir> {
        let fd = rustix::fs::openat(
            rustix::fs::CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open directory", path.to_path_buf(), e))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of an entry, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `/proc/self/fd/N`: names this directory itself (not its path) for
    /// the rare APIs that take a path (sled, `bind`). Only as long as
    /// `self` lives.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    pub fn stat(&self) -> Result<rustix::fs::Stat> {
        rustix::fs::fstat(&self.fd).map_err(|e| io("stat", self.path.clone(), e))
    }

    /// Stat an entry without following a symlink.
    pub fn stat_at(&self, name: &str) -> rustix::io::Result<rustix::fs::Stat> {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
    }

    /// Open a subdirectory (refusing a symlink).
    pub fn open_dir(&self, name: &str) -> Result<Dir> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open directory", self.join(name), e))?;
        Ok(Dir {
            fd,
            path: self.join(name),
        })
    }

    /// Create a subdirectory with `mode` unless it exists, then open it.
    pub fn ensure_dir(&self, name: &str, mode: u32) -> Result<Dir> {
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io("create directory", self.join(name), e)),
        }
        self.open_dir(name)
    }

    /// Open a file with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`); `mode`
    /// applies when it is created.
    pub fn open_file(&self, name: &str, flags: OFlags, mode: u32) -> Result<File> {
        rustix::fs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map(File::from)
        .map_err(|e| io("open", self.join(name), e))
    }

    /// Open an existing regular file for reading; `None` if it does not
    /// exist. Anything else at the name (a FIFO, which would block the
    /// open, a device, a directory) is an error.
    pub fn open_read(&self, name: &str) -> Result<Option<File>> {
        self.open_read_with(name, OFlags::empty())
    }

    /// Like [`Dir::open_read`], with `O_DIRECT`: reads bypass the page
    /// cache and need aligned offsets, lengths and buffers
    /// (`store::direct`). A filesystem without direct I/O refuses the
    /// open with `EINVAL`.
    pub fn open_read_direct(&self, name: &str) -> Result<Option<File>> {
        self.open_read_with(name, OFlags::DIRECT)
    }

    fn open_read_with(&self, name: &str, extra: OFlags) -> Result<Option<File>> {
        let fd = match rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | extra,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(io("open", self.join(name), e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io("stat", self.join(name), e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::Corrupt(format!(
                "{} is not a regular file",
                self.join(name).display()
            )));
        }
        Ok(Some(File::from(fd)))
    }

    /// Read a whole file of at most `max` bytes; `None` if it does not
    /// exist. A larger file is reported as corrupt, never read into memory.
    pub fn read(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let Some(f) = self.open_read(name)? else {
            return Ok(None);
        };
        let len = f
            .metadata()
            .map_err(|e| Error::io("stat", self.join(name), e))?
            .len();
        if len > max {
            return Err(Error::Corrupt(format!(
                "{} is {len} bytes, more than the {max} such a file can hold",
                self.join(name).display()
            )));
        }
        let mut out = Vec::with_capacity(len as usize);
        f.take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::io("read", self.join(name), e))?;
        if out.len() as u64 > max {
            return Err(Error::Corrupt(format!(
                "{} grew past {max} bytes while read",
                self.join(name).display()
            )));
        }
        Ok(Some(out))
    }

    /// Create a new file (failing if the name exists) with `mode`.
    pub fn create_new(&self, name: &str, mode: u32) -> Result<File> {
        self.open_file(name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, mode)
    }

    /// An unnamed file in this directory (`O_TMPFILE`), gone when closed.
    pub fn tmpfile(&self, mode: u32) -> Result<File> {
        rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map(File::from)
        .map_err(|e| io("create temporary file in", self.path.clone(), e))
    }

    /// Atomically replace `name` with `bytes` (mode 0600): write a
    /// temporary file beside it, fsync, rename over, fsync this directory.
    /// After a crash either the old or the new content is present.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = format!("{TMP_PREFIX}{name}.{}", std::process::id());
        let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
        let result = (|| {
            let mut f = self.create_new(&tmp, 0o600)?;
            f.write_all(bytes)
                .map_err(|e| Error::io("write", self.join(&tmp), e))?;
            durable::fsync_file(&f, &self.join(&tmp))?;
            drop(f);
            fault::inject("rename")?;
            self.rename(&tmp, name)?;
            self.fsync()
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
        }
        result
    }

    /// Rename an entry within this directory.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to)
            .map_err(|e| io("rename", self.join(to), e))
    }

    /// Remove a file; a missing one is not an error.
    pub fn remove_file(&self, name: &str) -> Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io("remove", self.join(name), e)),
        }
    }

    /// fsync this directory (entries created or renamed in it become
    /// durable).
    pub fn fsync(&self) -> Result<()> {
        fault::inject("dir-fsync")?;
        rustix::fs::fsync(&self.fd).map_err(|source| Error::FsyncFailed {
            path: self.path.clone(),
            source: source.into(),
        })
    }

    /// The names in this directory (not `.` and `..`), unsorted.
    pub fn names(&self) -> Result<Vec<Vec<u8>>> {
        // A fresh descriptor: `Dir` streams share the file offset.
        let d = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("read directory", self.path.clone(), e))?;
        let mut out = Vec::new();
        for e in rustix::fs::Dir::read_from(&d)
            .map_err(|e| io("read directory", self.path.clone(), e))?
        {
            let e = e.map_err(|e| io("read directory", self.path.clone(), e))?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                out.push(n.to_vec());
            }
        }
        Ok(out)
    }

    /// Set the mode of the directory itself.
    pub fn chmod(&self, mode: u32) -> Result<()> {
        rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(mode))
            .map_err(|e| io("chmod", self.path.clone(), e))
    }

    /// A second descriptor of the same directory.
    pub fn try_clone(&self) -> Result<Dir> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| Error::io("dup", self.path.clone(), e))?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
        })
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open_path(t.path()).unwrap();
        d.write_atomic("f", b"one").unwrap();
        d.write_atomic("f", b"two").unwrap();
        assert_eq!(d.read("f", 100).unwrap().unwrap(), b"two");
        assert_eq!(d.names().unwrap(), vec![b"f".to_vec()]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(d.read("f", 2).is_err());
        assert!(d.read("missing", 2).unwrap().is_none());
    }

    #[test]
    fn symlinks_are_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), t.path().join("f")).unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("sub")).unwrap();
        let d = Dir::open_path(t.path()).unwrap();
        assert!(d.read("f", 100).is_err());
        assert!(d.open_dir("sub").is_err());
        assert!(d.ensure_dir("sub", 0o700).is_err());
        assert!(d
            .open_file("f", OFlags::WRONLY | OFlags::CREATE, 0o600)
            .is_err());
        // Replacing through the symlink name creates nothing outside.
        d.write_atomic("f", b"mine").unwrap();
        assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"x");
        // A FIFO where a file is read fails at once instead of blocking.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            t.path().join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(d.read("fifo", 100).is_err());
    }
}
