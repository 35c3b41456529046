//! The one "unchanged by stat" rule, used wherever a capture or the
//! mount-time reconciliation decides not to read a file again: an entry is
//! unchanged when its type, inode, ctime and mtime (and, for a regular
//! file, size) equal what the snapshot recorded.
//!
//! The rule has one hole, closed here too: a file changed twice within
//! one timestamp tick keeps its stat. A file whose ctime is close to (or
//! after) the start of a capture is "racily clean"; it is recorded with
//! [`RACY_CTIME`], which never equals a real ctime, so the next capture
//! reads it again instead of trusting its stat.

use super::manifest::{mtime_of, Meta, Node};
use crate::util::sys;

/// How close to the capture's start a ctime makes an entry racily clean.
/// One second covers coarse kernel clocks and NFS.
pub const RACY_MARGIN_NS: i64 = 1_000_000_000;

/// The `ctime_ns` recorded for a racily clean entry.
pub const RACY_CTIME: i64 = -1;

/// Is the object `st` describes unchanged since the snapshot recorded
/// `base` for it?
pub fn unchanged_by_stat(base: &(Meta, Node), st: &rustix::fs::Stat) -> bool {
    let (m, node) = base;
    sys::file_type(m.mode) == sys::file_type(st.st_mode)
        && m.ino == st.st_ino
        && m.ctime_ns == sys::ctime_ns(st)
        && m.mtime == mtime_of(st)
        && match node {
            Node::File { size, .. } => *size == st.st_size as u64,
            _ => true,
        }
}

/// The ctime to record for an entry captured at `capture_start_ns`.
pub fn recorded_ctime(ctime_ns: i64, capture_start_ns: i64) -> i64 {
    if ctime_ns >= capture_start_ns - RACY_MARGIN_NS {
        RACY_CTIME
    } else {
        ctime_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::manifest::meta_of;

    #[test]
    fn racy_entries_are_never_trusted_later() {
        assert_eq!(recorded_ctime(10, 10 + RACY_MARGIN_NS * 2), 10);
        assert_eq!(recorded_ctime(10, 10 + RACY_MARGIN_NS), RACY_CTIME);
        assert_eq!(recorded_ctime(10, 5), RACY_CTIME);
    }

    #[test]
    fn a_stat_is_unchanged_only_when_every_field_matches() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let st = rustix::fs::stat(&p).unwrap();
        let meta = meta_of(&st);
        let file = |size| Node::File {
            size,
            blocks: crate::snapshot::Blocks::Full(Vec::new()),
            link: None,
        };
        assert!(unchanged_by_stat(&(meta.clone(), file(3)), &st));
        assert!(!unchanged_by_stat(&(meta.clone(), file(4)), &st));
        let mut racy = meta.clone();
        racy.ctime_ns = RACY_CTIME;
        assert!(!unchanged_by_stat(&(racy, file(3)), &st));
        // Another type of object at the same inode number is a change.
        let mut dir = meta;
        dir.mode = libc::S_IFDIR | 0o755;
        assert!(!unchanged_by_stat(&(dir, Node::Dir), &st));
    }
}
