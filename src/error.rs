//! The library's error type.
//!
//! Every fallible operation in the library returns [`Result`]. The CLI adds
//! context with `anyhow` at its edge; the FUSE layer maps errors to errnos
//! with [`Error::errno`].

use std::io;
use std::path::PathBuf;

/// Errors that rewindfs reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error with the operation and path it happened on.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An fsync failed. Per the durability rules it is never retried: the
    /// operation that needed it fails and whatever it was writing is not
    /// referenced by anything.
    #[error("fsync of {} failed ({source}); the write was not committed and will not be retried", path.display())]
    FsyncFailed {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The path is not a rewindfs repository.
    #[error("{} is not a rewindfs repository (no config file); create one with `rewindfs init --repo {}`", path.display(), path.display())]
    NotARepository { path: PathBuf },

    /// The repository was written by an incompatible format version.
    #[error("repository {} has format version {found}, this rewindfs supports versions 1 to {supported}", path.display())]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// A repository another user could write or replace (see
    /// `repo::trust`).
    #[error("refusing to use repository {}: {why}", path.display())]
    Untrusted { path: PathBuf, why: String },

    /// Another process holds the repository.
    #[error("repository {} is in use by another rewindfs process{holder}", path.display())]
    Locked { path: PathBuf, holder: String },

    /// The repository already exists.
    #[error("{} already contains a rewindfs repository", path.display())]
    AlreadyExists { path: PathBuf },

    /// The sled index could not be opened or used.
    #[error("the index at {} is damaged ({detail}); the packs are intact: run `rewindfs rebuild-index` to recreate it", path.display())]
    IndexCorrupt { path: PathBuf, detail: String },

    /// Another sled error.
    #[error("index error: {0}")]
    Index(String),

    /// Stored data failed a check (hash, header, size).
    #[error("corrupt data: {0}")]
    Corrupt(String),

    /// A referenced chunk is not in the index.
    #[error("chunk {0} is not in the repository")]
    MissingChunk(String),

    /// A snapshot selector matched nothing.
    #[error("no snapshot matches {0:?}")]
    UnknownSnapshot(String),

    /// A path is not present in a snapshot.
    #[error("{path:?} does not exist in snapshot {snapshot}")]
    NotFound { snapshot: String, path: String },

    /// Bad input from the user.
    #[error("{0}")]
    InvalidInput(String),

    /// The object store of a remote refused or failed a request (after
    /// its retries).
    #[error("remote {remote}: {op} {key}: {detail}")]
    Remote {
        remote: String,
        op: &'static str,
        key: String,
        detail: String,
    },

    /// An earlier failure (such as a failed fsync) made this writer unusable.
    #[error("writer is unusable after an earlier failure: {0}")]
    Poisoned(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Build an [`Error::Io`] from an operation name and path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Corruption { .. } => Error::IndexCorrupt {
                path: PathBuf::from("index"),
                detail: e.to_string(),
            },
            other => Error::Index(other.to_string()),
        }
    }
}

/// Attach an operation and a path to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e.into()))
    }
}

/// The errno a FUSE handler answers for an error: the one mapping from
/// our errors (and the system's) to the kernel, used by every handler.
pub trait ToErrno {
    fn to_errno(&self) -> fuser::Errno;
}

impl ToErrno for io::Error {
    fn to_errno(&self) -> fuser::Errno {
        fuser::Errno::from_i32(self.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl ToErrno for rustix::io::Errno {
    fn to_errno(&self) -> fuser::Errno {
        fuser::Errno::from_i32(self.raw_os_error())
    }
}

impl ToErrno for fuser::Errno {
    fn to_errno(&self) -> fuser::Errno {
        *self
    }
}

impl ToErrno for Error {
    fn to_errno(&self) -> fuser::Errno {
        fuser::Errno::from_i32(match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::NotFound { .. } | Error::UnknownSnapshot(_) => libc::ENOENT,
            Error::InvalidInput(_) => libc::EINVAL,
            Error::Locked { .. } => libc::EBUSY,
            Error::Untrusted { .. } => libc::EPERM,
            _ => libc::EIO,
        })
    }
}

/// `result.or_errno()?` in a FUSE handler: any error as its errno.
pub trait OrErrno<T> {
    fn or_errno(self) -> Result<T, fuser::Errno>;
}

impl<T, E: ToErrno> OrErrno<T> for Result<T, E> {
    fn or_errno(self) -> Result<T, fuser::Errno> {
        self.map_err(|e| e.to_errno())
    }
}

#[cfg(test)]
mod errno_tests {
    use super::*;

    #[test]
    fn errors_map_to_the_errno_a_user_expects() {
        let e = Error::io("open", "/x", io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.to_errno(), fuser::Errno::EACCES);
        assert_eq!(
            Error::UnknownSnapshot("7".into()).to_errno(),
            fuser::Errno::ENOENT
        );
        assert_eq!(Error::Corrupt("x".into()).to_errno(), fuser::Errno::EIO);
        assert_eq!(io::Error::other("no errno").to_errno(), fuser::Errno::EIO);
        let r: Result<(), rustix::io::Errno> = Err(rustix::io::Errno::NOENT);
        assert_eq!(r.or_errno(), Err(fuser::Errno::ENOENT));
    }
}
