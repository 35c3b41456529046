//! Manifests: the tree (full) or the changes (incremental, differential)
//! a snapshot records.
//!
//! Encoding (format [`MANIFEST_FORMAT`]): the [`Manifest`] struct in
//! postcard 1.x (a documented, stable serde wire format), cut into parts of
//! at most [`MANIFEST_PART_LEN`] bytes, each stored as a `Manifest` blob.
//!
//! Paths are byte strings relative to the captured root (`""` is the root,
//! components joined by `/`); names may be any bytes except `/` and NUL.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::ChunkId;

pub const MANIFEST_FORMAT: u32 = 1;
pub const MANIFEST_PART_LEN: usize = 4 << 20;

/// Metadata of one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// `st_mode`: file type and permission bits (including suid/sgid/sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
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
            && self.mtime_ns == o.mtime_ns
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

impl Manifest {
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(self)
            .map_err(|e| Error::InvalidInput(format!("encoding manifest: {e}")))
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest> {
        let m: Manifest = postcard::from_bytes(bytes)
            .map_err(|e| Error::Corrupt(format!("manifest does not decode: {e}")))?;
        if m.format != MANIFEST_FORMAT {
            return Err(Error::Corrupt(format!(
                "manifest format {} is not supported (expected {MANIFEST_FORMAT})",
                m.format
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

/// Turn a path given by a user (`/a/b/`, `./a//b`) into the stored form.
pub fn normalize_user_path(p: &str) -> Result<Vec<u8>> {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(Error::InvalidInput(format!(
                    "path {p:?} must not contain '..'"
                )))
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/").into_bytes())
}

pub fn display_path(p: &[u8]) -> String {
    if p.is_empty() {
        "/".to_string()
    } else {
        String::from_utf8_lossy(p).into_owned()
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
                    mtime_ns: 3,
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
}
