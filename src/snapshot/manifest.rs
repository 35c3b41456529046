//! Manifests: the tree (full) or the changes (incremental, differential)
//! a snapshot records.
//!
//! Encoding (format [`MANIFEST_FORMAT`]): the [`Manifest`] struct in
//! postcard 1.x (a documented, stable serde wire format), cut into parts of
//! at most [`MANIFEST_PART_LEN`] bytes, each stored as a `Manifest` blob.
//! Format 1 (mtime as `i64` nanoseconds, which ends in 2262) is still read;
//! format 2 keeps mtime as seconds and nanoseconds.
//!
//! Paths are byte strings relative to the captured root (`""` is the root,
//! components joined by `/`); names may be any bytes except `/` and NUL.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::ChunkId;

pub const MANIFEST_FORMAT: u32 = 2;
/// The first format, still readable.
pub const MANIFEST_FORMAT_V1: u32 = 1;
pub const MANIFEST_PART_LEN: usize = 4 << 20;

/// A file timestamp: seconds since the Unix epoch and nanoseconds, the
/// whole range a filesystem stores.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl Time {
    pub fn from_ns(ns: i64) -> Time {
        Time {
            sec: ns.div_euclid(1_000_000_000),
            nsec: ns.rem_euclid(1_000_000_000) as u32,
        }
    }
}

/// Metadata of one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// `st_mode`: file type and permission bits (including suid/sgid/sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Time,
    /// Change detection only: `ctime` and inode number at capture.
    pub ctime_ns: i64,
    pub ino: u64,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    /// Equal in everything that a restore reproduces.
    pub fn same_visible(&self, o: &Meta) -> bool {
        self.mode == o.mode
            && self.uid == o.uid
            && self.gid == o.gid
            && self.mtime == o.mtime
            && self.xattrs == o.xattrs
    }
}

/// Block list of a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Blocks {
    /// Every block, in order.
    Full(Vec<ChunkId>),
    /// Changes to the same path's block list in the base snapshot: the list
    /// is cut or extended to the new size, then these (index, id) pairs
    /// are set. Every index beyond the base's length must be present.
    Patch(Vec<(u64, ChunkId)>),
    /// Chunks of their own lengths, in order: `ids[i]` holds `lens[i]`
    /// bytes (content-defined chunks, see `chunking`). Only in trees and
    /// directory objects of format 2, never in a format 1 or 2 manifest.
    Sized { ids: Vec<ChunkId>, lens: Vec<u32> },
}

impl Blocks {
    /// A list of content chunks that is also the fixed-block list (no
    /// chunk, or one of a file of at most a block) as fixed blocks: its
    /// directory then needs no newer format.
    pub fn normalized(self, size: u64, block_size: u32) -> Blocks {
        match self {
            Blocks::Sized { ids, .. } if ids.len() <= 1 && size <= u64::from(block_size) => {
                Blocks::Full(ids)
            }
            other => other,
        }
    }

    /// The chunk ids of a complete list (a patch's changed ids).
    pub fn ids(&self) -> &[ChunkId] {
        match self {
            Blocks::Full(ids) | Blocks::Sized { ids, .. } => ids,
            Blocks::Patch(_) => &[],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    Dir,
    File {
        size: u64,
        blocks: Blocks,
        /// Hard-link group: entries of one snapshot with the same value are
        /// links to one file (the source inode number when nlink > 1).
        link: Option<u64>,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// FIFO, character or block device (type in `Meta::mode`).
    Special {
        rdev: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: Vec<u8>,
    pub meta: Meta,
    pub node: Node,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub block_size: u32,
    /// Removed paths (with everything below them), applied first.
    pub removed: Vec<Vec<u8>>,
    /// New or changed entries, sorted by path.
    pub entries: Vec<Entry>,
}

/// Format 1 of [`Meta`], [`Entry`] and [`Manifest`] (read only).
mod v1 {
    use super::*;

    #[derive(Deserialize)]
    pub struct Meta {
        mode: u32,
        uid: u32,
        gid: u32,
        mtime_ns: i64,
        ctime_ns: i64,
        ino: u64,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    }

    #[derive(Deserialize)]
    pub struct Entry {
        path: Vec<u8>,
        meta: Meta,
        node: Node,
    }

    #[derive(Deserialize)]
    pub struct Manifest {
        format: u32,
        block_size: u32,
        removed: Vec<Vec<u8>>,
        entries: Vec<Entry>,
    }

    impl From<Manifest> for super::Manifest {
        fn from(m: Manifest) -> Self {
            super::Manifest {
                format: m.format,
                block_size: m.block_size,
                removed: m.removed,
                entries: m
                    .entries
                    .into_iter()
                    .map(|e| super::Entry {
                        path: e.path,
                        meta: super::Meta {
                            mode: e.meta.mode,
                            uid: e.meta.uid,
                            gid: e.meta.gid,
                            mtime: Time::from_ns(e.meta.mtime_ns),
                            ctime_ns: e.meta.ctime_ns,
                            ino: e.meta.ino,
                            xattrs: e.meta.xattrs,
                        },
                        node: e.node,
                    })
                    .collect(),
            }
        }
    }
}

impl Manifest {
    /// Every block id the entries name (full lists and patches; ids
    /// repeat as often as they are named).
    pub fn block_ids(&self) -> impl Iterator<Item = ChunkId> + '_ {
        self.entries.iter().flat_map(|e| {
            let (full, patch): (&[ChunkId], &[(u64, ChunkId)]) = match &e.node {
                Node::File {
                    blocks: Blocks::Full(ids) | Blocks::Sized { ids, .. },
                    ..
                } => (ids, &[]),
                Node::File {
                    blocks: Blocks::Patch(p),
                    ..
                } => (&[], p),
                _ => (&[], &[]),
            };
            full.iter().copied().chain(patch.iter().map(|(_, id)| *id))
        })
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(self)
            .map_err(|e| Error::InvalidInput(format!("encoding manifest: {e}")))
    }

    /// Decode a manifest of any supported format. Lengths inside are
    /// bounded by the input (postcard never preallocates more than the
    /// bytes left can hold).
    pub fn decode(bytes: &[u8]) -> Result<Manifest> {
        let bad = |e: postcard::Error| Error::Corrupt(format!("manifest does not decode: {e}"));
        let (format, _) = postcard::take_from_bytes::<u32>(bytes).map_err(bad)?;
        let m: Manifest = match format {
            MANIFEST_FORMAT => postcard::from_bytes(bytes).map_err(bad)?,
            MANIFEST_FORMAT_V1 => postcard::from_bytes::<v1::Manifest>(bytes)
                .map_err(bad)?
                .into(),
            f => {
                return Err(Error::Corrupt(format!(
                    "manifest format {f} is not supported (expected {MANIFEST_FORMAT})"
                )))
            }
        };
        // Content chunks live only in directory objects (format 3).
        if m.entries.iter().any(|e| {
            matches!(
                e.node,
                Node::File {
                    blocks: Blocks::Sized { .. },
                    ..
                }
            )
        }) {
            return Err(Error::Corrupt(format!(
                "a manifest of format {format} holds content chunks"
            )));
        }
        Ok(m)
    }
}

/// Check that a stored path is a safe relative path: no empty, `.` or `..`
/// components, no NUL, no leading or trailing `/`.
pub fn check_path(p: &[u8]) -> Result<()> {
    if p.is_empty() {
        return Ok(());
    }
    for c in p.split(|b| *b == b'/') {
        if c.is_empty() || c == b"." || c == b".." || c.contains(&0) {
            return Err(Error::Corrupt(format!(
                "unsafe path {:?} in manifest",
                String::from_utf8_lossy(p)
            )));
        }
    }
    Ok(())
}

/// Turn a path given by a user (`/a/b/`, `./a//b`; any bytes but NUL, so
/// names that are not UTF-8 can be addressed) into the stored form.
pub fn normalize_user_path(p: impl AsRef<std::ffi::OsStr>) -> Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = p.as_ref().as_bytes();
    if p.contains(&0) {
        return Err(Error::InvalidInput("a path must not contain NUL".into()));
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in p.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(Error::InvalidInput(format!(
                    "path {} must not contain '..'",
                    escape(p)
                )))
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join(&b'/'))
}

pub use crate::util::display::{display_path, escape};

/// The mtime of a stat, at full range and precision.
pub fn mtime_of(st: &rustix::fs::Stat) -> Time {
    Time {
        sec: st.st_mtime,
        nsec: (st.st_mtime_nsec as u32).min(999_999_999),
    }
}

/// The metadata kept in manifests, from a `stat` (xattrs filled separately).
pub fn meta_of(st: &rustix::fs::Stat) -> Meta {
    Meta {
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: mtime_of(st),
        ctime_ns: crate::util::sys::ctime_ns(st),
        ino: st.st_ino,
        xattrs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize() {
        assert_eq!(normalize_user_path("/a//b/./").unwrap(), b"a/b");
        assert_eq!(normalize_user_path("/").unwrap(), b"");
        assert!(normalize_user_path("a/../b").is_err());
        assert!(normalize_user_path("a\0b").is_err());
        use std::os::unix::ffi::OsStrExt;
        let raw = std::ffi::OsStr::from_bytes(b"/d/\xff\xfe");
        assert_eq!(normalize_user_path(raw).unwrap(), b"d/\xff\xfe");
    }

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        assert_eq!(escape(b"plain name.txt"), "plain name.txt");
        assert_eq!(escape("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(escape(b"a\nb"), "a\\nb");
        assert_eq!(escape(b"\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(escape(b"\xff"), "\\xff");
        assert_eq!(escape(b"back\\slash"), "back\\\\slash");
        assert_eq!(escape("\u{202e}txt".as_bytes()), "\\xe2\\x80\\xaetxt");
    }

    #[test]
    fn check_paths() {
        assert!(check_path(b"a/b").is_ok());
        assert!(check_path(b"").is_ok());
        for bad in [&b"/a"[..], b"a/", b"a/../b", b"..", b"a//b", b"a\0b"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roundtrip() {
        let m = Manifest {
            format: MANIFEST_FORMAT,
            block_size: 1 << 20,
            removed: vec![b"gone".to_vec()],
            entries: vec![Entry {
                path: b"f".to_vec(),
                meta: Meta {
                    mode: 0o100644,
                    uid: 1,
                    gid: 2,
                    mtime: Time { sec: 3, nsec: 9 },
                    ctime_ns: 4,
                    ino: 5,
                    xattrs: vec![(b"user.a".to_vec(), b"v".to_vec())],
                },
                node: Node::File {
                    size: 10,
                    blocks: Blocks::Patch(vec![(0, ChunkId::of(b"x"))]),
                    link: None,
                },
            }],
        };
        assert_eq!(Manifest::decode(&m.encode().unwrap()).unwrap(), m);
    }

    #[test]
    fn format_1_is_still_read() {
        #[derive(Serialize)]
        struct MetaV1 {
            mode: u32,
            uid: u32,
            gid: u32,
            mtime_ns: i64,
            ctime_ns: i64,
            ino: u64,
            xattrs: Vec<(Vec<u8>, Vec<u8>)>,
        }
        #[derive(Serialize)]
        struct EntryV1 {
            path: Vec<u8>,
            meta: MetaV1,
            node: Node,
        }
        #[derive(Serialize)]
        struct ManifestV1 {
            format: u32,
            block_size: u32,
            removed: Vec<Vec<u8>>,
            entries: Vec<EntryV1>,
        }
        let old = ManifestV1 {
            format: 1,
            block_size: 4096,
            removed: vec![],
            entries: vec![EntryV1 {
                path: b"f".to_vec(),
                meta: MetaV1 {
                    mode: 0o100644,
                    uid: 1,
                    gid: 2,
                    mtime_ns: -1_500_000_000,
                    ctime_ns: 4,
                    ino: 5,
                    xattrs: vec![],
                },
                node: Node::Dir,
            }],
        };
        let m = Manifest::decode(&postcard::to_stdvec(&old).unwrap()).unwrap();
        assert_eq!(
            m.entries[0].meta.mtime,
            Time {
                sec: -2,
                nsec: 500_000_000
            }
        );
        assert_eq!(m.entries[0].meta.ino, 5);
    }

    #[test]
    fn hostile_bytes_never_panic_or_overallocate() {
        let m = Manifest {
            format: MANIFEST_FORMAT,
            block_size: 4096,
            removed: vec![],
            entries: vec![],
        };
        let mut b = m.encode().unwrap();
        // Claim 2^62 entries.
        b.truncate(b.len() - 1);
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
        assert!(Manifest::decode(&b).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_err(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = Manifest::decode(&b);
        }

        #[test]
        fn user_paths_normalize_or_err(p in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            use std::os::unix::ffi::OsStrExt;
            if let Ok(n) = normalize_user_path(std::ffi::OsStr::from_bytes(&p)) {
                proptest::prop_assert!(check_path(&n).is_ok());
            }
        }

        #[test]
        fn escaped_text_has_no_control_characters(b in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let e = escape(&b);
            proptest::prop_assert!(!e.chars().any(|c| c.is_control()));
        }
    }
}
