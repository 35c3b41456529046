//! The sled index: a rebuildable cache over the packs and snapshot records.
//!
//! Trees and key encodings (schema version [`SCHEMA_VERSION`]):
//! - `chunks`:    blake3 id (32 bytes) -> [`Location`] (26 bytes)
//! - `packs`:     pack id (u64 BE) -> `b"indexed"`: every blob of this pack
//!   is in `chunks` and durable; packs without this mark are scanned again
//!   when the repository is opened
//! - `snapshots`: snapshot id (u64 BE) -> the snapshot record (JSON, as in
//!   `snapshots/*.json`)
//! - `journal`:   the live mount's change journal (see `journal`)
//! - default tree: `schema_version` -> u32 LE
//!
//! Nothing in the index is the only copy of anything: `rebuild-index`
//! recreates it from `packs/` and `snapshots/`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::store::pack::Location;
use crate::store::ChunkId;

pub const SCHEMA_VERSION: u32 = 1;

pub struct Index {
    path: PathBuf,
    db: sled::Db,
    chunks: sled::Tree,
    packs: sled::Tree,
    snapshots: sled::Tree,
}

impl Index {
    /// Open (or create) the index at `path`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Index> {
        let map = |e: sled::Error| map_sled(path, e);
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(map)?;
        restrict_permissions(path);
        let chunks = db.open_tree("chunks").map_err(map)?;
        let packs = db.open_tree("packs").map_err(map)?;
        let snapshots = db.open_tree("snapshots").map_err(map)?;
        match db.get("schema_version").map_err(map)? {
            None => {
                db.insert("schema_version", &SCHEMA_VERSION.to_le_bytes())
                    .map_err(map)?;
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION.to_le_bytes() => {}
            Some(_) => {
                return Err(Error::IndexCorrupt {
                    path: path.to_path_buf(),
                    detail: "unknown index schema version".into(),
                })
            }
        }
        Ok(Index {
            path: path.to_path_buf(),
            db,
            chunks,
            packs,
            snapshots,
        })
    }

    fn map(&self, e: sled::Error) -> Error {
        map_sled(&self.path, e)
    }

    pub fn get_chunk(&self, id: &ChunkId) -> Result<Option<Location>> {
        match self.chunks.get(id.0).map_err(|e| self.map(e))? {
            Some(v) => Ok(Some(Location::decode(&v)?)),
            None => Ok(None),
        }
    }

    pub fn contains_chunk(&self, id: &ChunkId) -> Result<bool> {
        self.chunks.contains_key(id.0).map_err(|e| self.map(e))
    }

    /// Insert locations. Call only after the packs holding them are durable.
    pub fn insert_chunks(&self, entries: &[(ChunkId, Location)]) -> Result<()> {
        crate::util::fault::inject("index-insert")?;
        let mut batch = sled::Batch::default();
        for (id, loc) in entries {
            batch.insert(&id.0[..], &loc.encode()[..]);
        }
        self.chunks.apply_batch(batch).map_err(|e| self.map(e))
    }

    /// Insert a location unless the id is already indexed.
    pub fn insert_chunk_if_absent(&self, id: &ChunkId, loc: &Location) -> Result<bool> {
        let r = self
            .chunks
            .compare_and_swap(id.0, None as Option<&[u8]>, Some(&loc.encode()[..]))
            .map_err(|e| self.map(e))?;
        Ok(r.is_ok())
    }

    /// The tree holding the live mount's change journal.
    pub fn journal_tree(&self) -> Result<sled::Tree> {
        self.db.open_tree("journal").map_err(|e| self.map(e))
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Iterate over all indexed chunks.
    pub fn chunks(&self) -> impl Iterator<Item = Result<(ChunkId, Location)>> + '_ {
        self.chunks.iter().map(move |r| {
            let (k, v) = r.map_err(|e| self.map(e))?;
            let mut id = [0u8; 32];
            if k.len() != 32 {
                return Err(Error::Corrupt("index key has a bad length".into()));
            }
            id.copy_from_slice(&k);
            Ok((ChunkId(id), Location::decode(&v)?))
        })
    }

    pub fn mark_packs_indexed(&self, ids: &[u64]) -> Result<()> {
        for id in ids {
            self.packs
                .insert(id.to_be_bytes(), &b"indexed"[..])
                .map_err(|e| self.map(e))?;
        }
        Ok(())
    }

    pub fn is_pack_indexed(&self, id: u64) -> Result<bool> {
        self.packs
            .contains_key(id.to_be_bytes())
            .map_err(|e| self.map(e))
    }

    pub fn put_snapshot(&self, id: u64, record_json: &[u8]) -> Result<()> {
        self.snapshots
            .insert(id.to_be_bytes(), record_json)
            .map_err(|e| self.map(e))?;
        Ok(())
    }

    pub fn remove_snapshot(&self, id: u64) -> Result<()> {
        self.snapshots
            .remove(id.to_be_bytes())
            .map_err(|e| self.map(e))?;
        Ok(())
    }

    /// All snapshot records as (id, JSON), in id order.
    pub fn snapshots(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for r in self.snapshots.iter() {
            let (k, v) = r.map_err(|e| self.map(e))?;
            let mut b = [0u8; 8];
            if k.len() != 8 {
                return Err(Error::Corrupt("snapshot key has a bad length".into()));
            }
            b.copy_from_slice(&k);
            out.push((u64::from_be_bytes(b), v.to_vec()));
        }
        Ok(out)
    }

    /// Make every change so far durable.
    pub fn flush(&self) -> Result<()> {
        crate::util::fault::inject("index-flush")?;
        self.db.flush().map_err(|e| self.map(e))?;
        Ok(())
    }
}

/// sled creates its files with the process umask; the repository keeps
/// everything 0700/0600.
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = if md.is_dir() { 0o700 } else { 0o600 };
        if md.permissions().mode() & 0o777 != mode {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode));
        }
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
}

fn map_sled(path: &Path, e: sled::Error) -> Error {
    match e {
        sled::Error::Corruption { .. } => Error::IndexCorrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => Error::Locked {
            path: path.to_path_buf(),
            holder: String::new(),
        },
        other => Error::Index(format!("{}: {other}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BlobKind, Codec};

    #[test]
    fn chunks_packs_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index"), 1 << 20).unwrap();
        let id = ChunkId::of(b"x");
        let loc = Location {
            pack: 1,
            offset: 16,
            stored_len: 1,
            raw_len: 1,
            codec: Codec::Raw,
            kind: BlobKind::Chunk,
        };
        assert!(!idx.contains_chunk(&id).unwrap());
        idx.insert_chunks(&[(id, loc)]).unwrap();
        assert_eq!(idx.get_chunk(&id).unwrap(), Some(loc));
        assert!(!idx.insert_chunk_if_absent(&id, &loc).unwrap());
        idx.mark_packs_indexed(&[1]).unwrap();
        assert!(idx.is_pack_indexed(1).unwrap());
        assert!(!idx.is_pack_indexed(2).unwrap());
        idx.put_snapshot(3, b"{}").unwrap();
        idx.put_snapshot(1, b"{}").unwrap();
        let ids: Vec<u64> = idx.snapshots().unwrap().into_iter().map(|x| x.0).collect();
        assert_eq!(ids, vec![1, 3]);
        idx.flush().unwrap();
    }
}
