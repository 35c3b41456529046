//! Durability primitives: fsync that is never retried. (Atomic
//! replacement and directory fsync are `dirfd::Dir::write_atomic` and
//! `Dir::fsync`: everything in a repository is reached through directory
//! descriptors.)
//!
//! The rule all of rewindfs follows: write data, fsync it, rename into
//! place, fsync the directory; only then point anything at it.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// fsync a file. A failure is reported as [`Error::FsyncFailed`] and must
/// not be retried: the kernel may already have dropped the dirty pages.
pub fn fsync_file(file: &File, path: &Path) -> Result<()> {
    file.sync_all().map_err(|source| Error::FsyncFailed {
        path: path.to_path_buf(),
        source,
    })
}
