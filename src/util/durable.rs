//! Durability primitives: fsync that is never retried, atomic file
//! replacement, directory fsync.
//!
//! The rule all of rewindfs follows: write data, fsync it, rename into
//! place, fsync the directory; only then point anything at it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// fsync a file. A failure is reported as [`Error::FsyncFailed`] and must
/// not be retried: the kernel may already have dropped the dirty pages.
pub fn fsync_file(file: &File, path: &Path) -> Result<()> {
    file.sync_all().map_err(|source| Error::FsyncFailed {
        path: path.to_path_buf(),
        source,
    })
}

/// fsync a directory so that entries created or renamed in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    super::fault::inject("dir-fsync")?;
    let f = File::open(dir).ctx("open directory", dir)?;
    fsync_file(&f, dir)
}

/// Create a directory with mode 0700 (ignores "already exists").
pub fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(Error::io("create directory", path, e)),
    }
}

/// Atomically replace `path` with `bytes`: write a temporary file beside it
/// (mode 0600), fsync it, rename it over `path`, fsync the directory.
/// After a crash either the old or the new content is present, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::InvalidInput(format!("{} has no parent", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} has no file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".tmp.");
    tmp_name.push(name);
    tmp_name.push(format!(".{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .ctx("create", &tmp)?;
        f.write_all(bytes).ctx("write", &tmp)?;
        fsync_file(&f, &tmp)?;
        drop(f);
        super::fault::inject("rename")?;
        std::fs::rename(&tmp, path).ctx("rename", path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
