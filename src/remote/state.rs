//! What a remote already has, as this repository knows it: the upload
//! log `REPO/remotes/NAME.log`. A line is appended (and fsynced) only
//! after the server acknowledged what it names:
//!
//! ```text
//! C <repo_id>                  config.json is there
//! P <pack, 16 hex> <length>    the pack and its .idx are there
//! R <record id> <blake3 hex>   the snapshot record (these bytes) is there
//! ```
//!
//! A line torn by a crash (no newline) is cut off; any other line that
//! does not parse is skipped with a warning (the log is a cache of what
//! the remote holds: the first push of a process reconciles it).
//! A lost line costs at most a repeated upload: the push reconciles the
//! log with a listing of the remote before it starts (push.rs).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;

use rustix::fs::OFlags;

use super::config::{log_file, remotes_dir};
use crate::error::{Error, IoContext, Result};
use crate::util::dirfd::Dir;
use crate::util::durable::fsync_file;

const MAX_LOG_BYTES: u64 = 1 << 30;

/// The upload log of one remote, open for appending.
pub struct UploadLog {
    file: File,
    path: std::path::PathBuf,
    pub config: Option<String>,
    /// Pack id -> uploaded length.
    pub packs: BTreeMap<u64, u64>,
    /// Record id -> blake3 of the uploaded bytes.
    pub records: BTreeMap<u64, String>,
}

impl UploadLog {
    /// Open (creating) the log of remote `name` of the repository `repo`.
    pub fn open(repo: &Dir, name: &str) -> Result<UploadLog> {
        let dir = remotes_dir(repo, true)?
            .ok_or_else(|| Error::InvalidInput("no remotes directory".into()))?;
        let fname = log_file(name);
        let path = dir.join(&fname);
        let bytes = dir.read(&fname, MAX_LOG_BYTES)?.unwrap_or_default();
        let mut log = UploadLog {
            file: dir.open_file(
                &fname,
                OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND,
                0o600,
            )?,
            path,
            config: None,
            packs: BTreeMap::new(),
            records: BTreeMap::new(),
        };
        let text = String::from_utf8_lossy(&bytes);
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        if complete.len() < text.len() {
            // A torn last line: cut it off, so the next line starts clean.
            let f = dir.open_file(&fname, OFlags::WRONLY, 0o600)?;
            f.set_len(complete.len() as u64)
                .ctx("truncate", &log.path)?;
            fsync_file(&f, &log.path)?;
        }
        for (n, line) in complete.lines().enumerate() {
            // The log is a cache of what the remote holds (a push
            // reconciles it with a listing): a bad line is skipped.
            if let Err(m) = log.apply(line) {
                tracing::warn!("{} line {}: {m}; ignored", log.path.display(), n + 1);
            }
        }
        Ok(log)
    }

    fn apply(&mut self, line: &str) -> std::result::Result<(), String> {
        let mut f = line.split(' ');
        match (f.next(), f.next(), f.next(), f.next()) {
            (Some("C"), Some(id), None, None) => self.config = Some(id.to_string()),
            (Some("P"), Some(p), Some(len), None) => {
                let p = u64::from_str_radix(p, 16).map_err(|_| "bad pack id")?;
                let len = len.parse().map_err(|_| "bad length")?;
                self.packs.insert(p, len);
            }
            (Some("R"), Some(id), Some(sum), None) => {
                let id = id.parse().map_err(|_| "bad record id")?;
                self.records.insert(id, sum.to_string());
            }
            (Some("-P"), Some(p), None, None) => {
                let p = u64::from_str_radix(p, 16).map_err(|_| "bad pack id")?;
                self.packs.remove(&p);
            }
            (Some("-R"), Some(id), None, None) => {
                let id = id.parse().map_err(|_| "bad record id")?;
                self.records.remove(&id);
            }
            _ => return Err(format!("cannot parse {line:?}")),
        }
        Ok(())
    }

    /// Append lines and make them durable; on failure nothing is kept
    /// (a partial write is cut off again) and the state is unchanged.
    pub fn append(&mut self, lines: &[String]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut buf = String::new();
        for l in lines {
            buf.push_str(l);
            buf.push('\n');
        }
        let len = self.file.metadata().ctx("stat", &self.path)?.len();
        let written = self
            .file
            .write_all(buf.as_bytes())
            .ctx("append", &self.path)
            .and_then(|()| fsync_file(&self.file, &self.path));
        if let Err(e) = written {
            let _ = self.file.set_len(len);
            return Err(e);
        }
        for l in lines {
            self.apply(l)
                .map_err(|m| Error::InvalidInput(format!("upload log: {m}")))?;
        }
        Ok(())
    }

    pub fn pack_line(pack: u64, len: u64) -> String {
        format!("P {pack:016x} {len}")
    }

    pub fn record_line(id: u64, sum: &str) -> String {
        format!("R {id} {sum}")
    }

    pub fn config_line(repo_id: &str) -> String {
        format!("C {repo_id}")
    }

    /// The line saying the remote no longer has a pack (remote gc, or a
    /// listing found it missing).
    pub fn forget_pack_line(pack: u64) -> String {
        format!("-P {pack:016x}")
    }

    pub fn forget_record_line(id: u64) -> String {
        format!("-R {id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_survive_reopen_and_a_torn_tail_is_dropped() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open_path(t.path()).unwrap();
        let mut l = UploadLog::open(&d, "b").unwrap();
        l.append(&[
            UploadLog::config_line("abc"),
            UploadLog::pack_line(3, 100),
            UploadLog::pack_line(4, 50),
            UploadLog::record_line(1, "ff"),
        ])
        .unwrap();
        l.append(&[UploadLog::forget_pack_line(4)]).unwrap();
        drop(l);
        let p = t.path().join("remotes/b.log");
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"P 0000000000000009 1").unwrap();
        drop(f);
        let l = UploadLog::open(&d, "b").unwrap();
        assert_eq!(l.config.as_deref(), Some("abc"));
        assert_eq!(l.packs.into_iter().collect::<Vec<_>>(), vec![(3, 100)]);
        assert_eq!(l.records.get(&1).map(String::as_str), Some("ff"));
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.ends_with("-P 0000000000000004\n"), "{text}");
        // A damaged line is skipped, the rest kept.
        std::fs::write(&p, "garbage line\nP 0000000000000005 7\n").unwrap();
        let l = UploadLog::open(&d, "b").unwrap();
        assert_eq!(l.packs.into_iter().collect::<Vec<_>>(), vec![(5, 7)]);
    }
}
