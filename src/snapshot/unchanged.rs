//! The one "unchanged by stat" rule, used wherever a capture or the
//! mount-time reconciliation decides not to read a file again: an entry is
//! unchanged when its type, inode, ctime and mtime (and, for a regular
//! file, size) equal what the snapshot recorded.
//!
//! The rule has one hole, closed here too: a file changed twice within
//! one timestamp tick keeps its stat. A file whose ctime is within one
//! tick of the start of a capture (or after it) is "racily clean": it may
//! change again after being read without its stat changing. It is
//! recorded with [`RACY_CTIME`], which never equals a real ctime, so the
//! next capture reads it again instead of trusting its stat.
//!
//! The tick is the backing filesystem's ([`racy_margin_ns`]): local
//! filesystems with nanosecond timestamps (ext4, xfs, btrfs, tmpfs, f2fs,
//! zfs, bcachefs, overlayfs) stamp changes from the kernel's coarse clock,
//! which advances every jiffy (at most 10 ms) and lags by at most one:
//! [`FINE_MARGIN_NS`] (50 ms) covers both. Other filesystems (NFS, CIFS,
//! FAT's 2-second times, anything unknown) get [`COARSE_MARGIN_NS`]. A
//! dataset written just before its first mount is then re-read at the
//! next capture only for the files changed in the last 50 ms before the
//! cut, not for every file changed in the last second (1,865 of 2,000
//! files of a freshly written dataset were before).

use super::manifest::{mtime_of, Meta, Node};
use crate::util::sys;

/// The racy margin of filesystems with fine timestamps.
pub const FINE_MARGIN_NS: i64 = 50_000_000;
/// The racy margin of other filesystems (FAT stamps to 2 s).
pub const COARSE_MARGIN_NS: i64 = 2_000_000_000;

/// How close to a capture's start a ctime makes an entry racily clean on
/// the filesystem holding `fd`.
pub fn racy_margin_ns<Fd: std::os::fd::AsFd>(fd: Fd) -> i64 {
    // statfs f_type of filesystems stamping nanoseconds from the kernel
    // clock: ext2/3/4, xfs, btrfs, tmpfs, f2fs, zfs, bcachefs, overlayfs.
    const FINE: [rustix::fs::FsWord; 8] = [
        0xEF53,
        0x5846_5342,
        0x9123_683E,
        0x0102_1994,
        0xF2F5_2010,
        0x2FC1_2FC1,
        0xCA45_1A4E,
        0x794C_7630,
    ];
    match rustix::fs::fstatfs(fd) {
        Ok(s) if FINE.contains(&s.f_type) => FINE_MARGIN_NS,
        _ => COARSE_MARGIN_NS,
    }
}

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

/// The ctime to record for an entry captured at `capture_start_ns` on a
/// filesystem whose racy margin is `margin_ns`.
pub fn recorded_ctime(ctime_ns: i64, capture_start_ns: i64, margin_ns: i64) -> i64 {
    if ctime_ns >= capture_start_ns - margin_ns {
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
        let m = FINE_MARGIN_NS;
        assert_eq!(recorded_ctime(10, 10 + m * 2, m), 10);
        assert_eq!(recorded_ctime(10, 10 + m, m), RACY_CTIME);
        assert_eq!(recorded_ctime(10, 5, m), RACY_CTIME);
        // A file changed 0.2 s before the capture is clean on ext4, racy
        // where times are coarse.
        let s = 1_000_000_000;
        assert_eq!(recorded_ctime(s, s + 200_000_000, FINE_MARGIN_NS), s);
        assert_eq!(
            recorded_ctime(s, s + 200_000_000, COARSE_MARGIN_NS),
            RACY_CTIME
        );
    }

    #[test]
    fn the_margin_follows_the_filesystem() {
        // /proc has coarse (unknown) times; the temporary directory is on
        // whatever the machine uses: one of the two margins.
        let proc = std::fs::File::open("/proc").unwrap();
        assert_eq!(racy_margin_ns(&proc), COARSE_MARGIN_NS);
        let tmp = tempfile::tempdir().unwrap();
        let d = std::fs::File::open(tmp.path()).unwrap();
        assert!([FINE_MARGIN_NS, COARSE_MARGIN_NS].contains(&racy_margin_ns(&d)));
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
