//! Restore speeds as measured by real restores: `restore` appends one
//! line per completed restore to `REPO/cache/restores.jsonl`, which
//! `advise` reads. It is a cache (deleting it loses only the figures);
//! lines that do not parse are skipped, and the file is read up to
//! [`MAX_LOG_BYTES`] from its end.

use std::io::{Read, Seek, SeekFrom, Write};

use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::repo::layout;
use crate::repo::Repository;
use crate::util::time;

pub const FILE: &str = "restores.jsonl";
/// Restores smaller than this say more about start-up than about speed.
pub const MIN_BYTES: u64 = 1 << 20;
const MAX_LOG_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestoreSample {
    /// RFC 3339 UTC.
    pub time: String,
    pub snapshot: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
    pub files: u64,
    pub seconds: f64,
}

/// Remember a completed restore (best effort: a caller who may not write
/// the repository's cache, or a full disk, loses only the figure).
pub fn record(repo: &Repository, snapshot: u64, bytes: u64, files: u64, seconds: f64) {
    // Only in a repository this process may write (trusted, locked):
    // a read-only or someone else's repository is never written.
    if bytes < MIN_BYTES || !seconds.is_finite() || repo.access() != crate::repo::Access::ReadWrite
    {
        return;
    }
    let line = RestoreSample {
        time: time::rfc3339(time::now_ns()),
        snapshot,
        bytes,
        files,
        seconds,
    };
    let r = (|| -> Result<()> {
        let cache = repo.dir().ensure_dir(layout::CACHE, layout::DIR_MODE)?;
        // Non-blocking: a FIFO at the name cannot hold the open; then
        // only a regular file is written.
        let mut f = cache.open_file(
            FILE,
            OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NONBLOCK,
            layout::FILE_MODE,
        )?;
        let st = rustix::fs::fstat(&f)
            .map_err(|e| crate::error::Error::io("stat", cache.join(FILE), e.into()))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(crate::error::Error::InvalidInput(format!(
                "{} is not a regular file",
                cache.join(FILE).display()
            )));
        }
        let mut s = serde_json::to_string(&line).unwrap_or_default();
        s.push('\n');
        f.write_all(s.as_bytes())
            .map_err(|e| crate::error::Error::io("append", cache.join(FILE), e))
    })();
    if let Err(e) = r {
        tracing::debug!("restore speed not recorded: {e}");
    }
}

/// The recorded restores (oldest first), skipping damaged lines.
pub fn load(repo: &Repository) -> Vec<RestoreSample> {
    let Ok(cache) = repo.dir().open_dir(layout::CACHE) else {
        return Vec::new();
    };
    let Ok(Some(mut f)) = cache.open_read(FILE) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_LOG_BYTES && f.seek(SeekFrom::Start(len - MAX_LOG_BYTES)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if f.take(MAX_LOG_BYTES).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str::<RestoreSample>(l).ok())
        // A restore that took less than a millisecond says nothing of
        // speed (and a damaged line must not make it infinite).
        .filter(|s| s.seconds.is_finite() && s.seconds >= 1e-3)
        .collect()
}
