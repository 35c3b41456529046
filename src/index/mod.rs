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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Chunk locations inserted per sled batch.
const INSERT_BATCH: usize = 1000;

use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::store::pack::Location;
use crate::store::ChunkId;
use crate::util::dirfd::Dir;

pub const SCHEMA_VERSION: u32 = 1;

pub struct Index {
    /// For messages.
    path: PathBuf,
    backend: Backend,
    /// What this instance changed in `chunks` (see [`Tally`]).
    tally: parking_lot::Mutex<Tally>,
}

/// What one open index changed in its chunk locations since it was
/// opened: the file chunks it added (ids that were absent) with their
/// stored bytes, the packs anything was added to, and how many
/// other changes it made (a location moved, replaced or removed). Lets
/// the space accounting bring figures computed earlier up to date when
/// only captures wrote since (`retention::space`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Which open index this is (unique in the process).
    pub instance: u64,
    pub other_changes: u64,
    pub chunks: u64,
    pub stored_bytes: u64,
    pub packs: std::collections::BTreeSet<u64>,
}

impl Tally {
    fn new() -> Tally {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Tally {
            instance: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..Tally::default()
        }
    }

    /// `loc` was inserted for an id; `prev` is what it replaced (`Some(None)`:
    /// an entry that did not decode).
    fn inserted(&mut self, loc: &Location, prev: Option<Option<Location>>) {
        match prev {
            None => {
                self.packs.insert(loc.pack);
                if loc.kind == crate::store::BlobKind::Chunk {
                    self.chunks += 1;
                    self.stored_bytes += u64::from(loc.stored_len);
                }
            }
            Some(Some(p)) if p == *loc => {}
            Some(_) => self.other_changes += 1,
        }
    }
}

enum Backend {
    Sled {
        /// Holds the index directory open: sled reaches it as
        /// `/proc/self/fd/N`, never by a path another process could change.
        /// (An `Option` only so that `Drop` can hand it on.)
        _dir: Option<Dir>,
        db: sled::Db,
        chunks: sled::Tree,
        packs: sled::Tree,
        snapshots: sled::Tree,
    },
    /// A throw-away index in memory, for repositories this process must
    /// not (or cannot) write: read-only media, another user's repository.
    Memory {
        chunks: RwLock<HashMap<ChunkId, Location>>,
        packs: RwLock<HashSet<u64>>,
        snapshots: RwLock<BTreeMap<u64, Vec<u8>>>,
    },
}

impl Index {
    /// Open (or create) the sled index in the directory `dir` (already
    /// checked by the repository).
    pub fn open(dir: Dir, cache_bytes: u64) -> Result<Index> {
        let path = dir.path().to_path_buf();
        check_entries(&dir, 0)?;
        let map = |e: sled::Error| map_sled(&path, e);
        let db = sled::Config::new()
            .path(dir.proc_path())
            .cache_capacity(cache_bytes)
            .open()
            .map_err(map)?;
        restrict_permissions(&dir, 0);
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
                    path,
                    detail: "unknown index schema version".into(),
                })
            }
        }
        Ok(Index {
            path,
            tally: parking_lot::Mutex::new(Tally::new()),
            backend: Backend::Sled {
                _dir: Some(dir),
                db,
                chunks,
                packs,
                snapshots,
            },
        })
    }

    /// An empty index in memory (filled by the caller from the packs).
    pub fn memory(path: &Path) -> Index {
        Index {
            path: path.to_path_buf(),
            tally: parking_lot::Mutex::new(Tally::new()),
            backend: Backend::Memory {
                chunks: RwLock::new(HashMap::new()),
                packs: RwLock::new(HashSet::new()),
                snapshots: RwLock::new(BTreeMap::new()),
            },
        }
    }

    fn map(&self, e: sled::Error) -> Error {
        map_sled(&self.path, e)
    }

    pub fn get_chunk(&self, id: &ChunkId) -> Result<Option<Location>> {
        // (No collection here: this is the snapshot read path, and the
        // bursts of garbage come from captures, which insert and ask
        // `contains_chunk`.)
        match &self.backend {
            Backend::Sled { chunks, .. } => match chunks.get(id.0).map_err(|e| self.map(e))? {
                Some(v) => Ok(Some(Location::decode(&v)?)),
                None => Ok(None),
            },
            Backend::Memory { chunks, .. } => Ok(chunks.read().get(id).copied()),
        }
    }

    pub fn contains_chunk(&self, id: &ChunkId) -> Result<bool> {
        collect_garbage(1);
        match &self.backend {
            Backend::Sled { chunks, .. } => chunks.contains_key(id.0).map_err(|e| self.map(e)),
            Backend::Memory { chunks, .. } => Ok(chunks.read().contains_key(id)),
        }
    }

    /// Insert locations. Call only after the packs holding them are durable.
    /// Not atomic as a whole (see below).
    pub fn insert_chunks(&self, entries: &[(ChunkId, Location)]) -> Result<()> {
        crate::util::fault::inject("index-insert")?;
        match &self.backend {
            Backend::Sled { chunks, .. } => {
                // In sorted batches of at most INSERT_BATCH: one batch of
                // a whole first snapshot's chunks (100,000 and more) kept
                // every node sled copied alive until its end (437 MiB of
                // heap for 100,000 chunks). Each entry names a durable
                // blob, so a crash between batches loses nothing: a pack
                // not yet marked indexed is read again at open.
                // One insert at a time (sled applies a batch the same way,
                // under a lock that stops every reader): each tells what
                // it replaced, for the tally.
                let mut sorted: Vec<&(ChunkId, Location)> = entries.iter().collect();
                sorted.sort_unstable_by_key(|e| e.0);
                for part in sorted.chunks(INSERT_BATCH) {
                    for (id, loc) in part {
                        let prev = chunks
                            .insert(&id.0[..], &loc.encode()[..])
                            .map_err(|e| self.map(e))?;
                        let prev = prev.map(|p| Location::decode(&p).ok());
                        self.tally.lock().inserted(loc, prev);
                    }
                    collect_garbage(part.len() as u64);
                }
                Ok(())
            }
            Backend::Memory { chunks, .. } => {
                let mut c = chunks.write();
                for (id, loc) in entries {
                    let prev = c.insert(*id, *loc);
                    self.tally.lock().inserted(loc, prev.map(Some));
                }
                Ok(())
            }
        }
    }

    /// Insert a location unless the id is already indexed.
    pub fn insert_chunk_if_absent(&self, id: &ChunkId, loc: &Location) -> Result<bool> {
        match &self.backend {
            Backend::Sled { chunks, .. } => {
                let r = chunks
                    .compare_and_swap(id.0, None as Option<&[u8]>, Some(&loc.encode()[..]))
                    .map_err(|e| self.map(e))?;
                if r.is_ok() {
                    self.tally.lock().inserted(loc, None);
                }
                Ok(r.is_ok())
            }
            Backend::Memory { chunks, .. } => {
                let mut c = chunks.write();
                if c.contains_key(id) {
                    return Ok(false);
                }
                c.insert(*id, *loc);
                self.tally.lock().inserted(loc, None);
                Ok(true)
            }
        }
    }

    /// Point `id` at `to` if it still points at `from` (gc moved the
    /// blob). Returns whether it did.
    pub fn move_chunk(&self, id: &ChunkId, from: &Location, to: &Location) -> Result<bool> {
        self.swap_chunk(id, from, Some(to))
    }

    /// Remove `id` if it still points at `at` (gc deletes the blob; a
    /// capture that stored a fresh copy meanwhile keeps its entry).
    pub fn remove_chunk_if(&self, id: &ChunkId, at: &Location) -> Result<bool> {
        self.swap_chunk(id, at, None)
    }

    fn swap_chunk(&self, id: &ChunkId, from: &Location, to: Option<&Location>) -> Result<bool> {
        crate::util::fault::inject("index-insert")?;
        let r = self.swap_chunk_inner(id, from, to);
        if matches!(r, Ok(true)) {
            self.tally.lock().other_changes += 1;
        }
        r
    }

    /// What this open index changed in its chunk locations so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().clone()
    }

    fn swap_chunk_inner(
        &self,
        id: &ChunkId,
        from: &Location,
        to: Option<&Location>,
    ) -> Result<bool> {
        match &self.backend {
            Backend::Sled { chunks, .. } => {
                let r = chunks
                    .compare_and_swap(
                        id.0,
                        Some(&from.encode()[..]),
                        to.map(|t| t.encode().to_vec()),
                    )
                    .map_err(|e| self.map(e))?;
                Ok(r.is_ok())
            }
            Backend::Memory { chunks, .. } => {
                let mut c = chunks.write();
                if c.get(id) != Some(from) {
                    return Ok(false);
                }
                match to {
                    Some(t) => c.insert(*id, *t),
                    None => c.remove(id),
                };
                Ok(true)
            }
        }
    }

    /// The tree holding the live mount's change journal.
    pub fn journal_tree(&self) -> Result<sled::Tree> {
        match &self.backend {
            Backend::Sled { db, .. } => db.open_tree("journal").map_err(|e| self.map(e)),
            Backend::Memory { .. } => Err(Error::InvalidInput(
                "the repository is open read-only: it has no change journal".into(),
            )),
        }
    }

    pub fn chunk_count(&self) -> usize {
        match &self.backend {
            Backend::Sled { chunks, .. } => chunks.len(),
            Backend::Memory { chunks, .. } => chunks.read().len(),
        }
    }

    /// One entry of the sled chunk tree, decoded.
    fn chunk_entry(
        &self,
        r: sled::Result<(sled::IVec, sled::IVec)>,
    ) -> Result<(ChunkId, Location)> {
        let (k, v) = r.map_err(|e| self.map(e))?;
        let id: [u8; 32] = k
            .as_ref()
            .try_into()
            .map_err(|_| Error::Corrupt("index key has a bad length".into()))?;
        Ok((ChunkId(id), Location::decode(&v)?))
    }

    /// Up to `limit` indexed chunks in id order, after `after` (from the
    /// first when None): a walk through the index in bounded memory.
    pub fn chunks_after(
        &self,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<Vec<(ChunkId, Location)>> {
        use std::ops::Bound;
        let lower = match after {
            Some(a) => Bound::Excluded(a.0),
            None => Bound::Unbounded,
        };
        match &self.backend {
            Backend::Sled { chunks, .. } => chunks
                .range::<[u8; 32], _>((lower, Bound::Unbounded))
                .take(limit)
                .map(|r| self.chunk_entry(r))
                .collect(),
            Backend::Memory { chunks, .. } => {
                let mut all: Vec<(ChunkId, Location)> = chunks
                    .read()
                    .iter()
                    .filter(|(k, _)| after.is_none_or(|a| k.0 > a.0))
                    .map(|(k, v)| (*k, *v))
                    .collect();
                all.sort_unstable_by_key(|(k, _)| k.0);
                all.truncate(limit);
                Ok(all)
            }
        }
    }

    /// Every indexed chunk in id order, one at a time (an index this
    /// process keeps in memory is sorted first).
    pub fn chunk_iter(&self) -> Box<dyn Iterator<Item = Result<(ChunkId, Location)>> + '_> {
        match &self.backend {
            Backend::Sled { chunks, .. } => Box::new(chunks.iter().map(|r| self.chunk_entry(r))),
            Backend::Memory { chunks, .. } => {
                let mut all: Vec<(ChunkId, Location)> =
                    chunks.read().iter().map(|(k, v)| (*k, *v)).collect();
                all.sort_unstable_by_key(|(k, _)| k.0);
                Box::new(all.into_iter().map(Ok))
            }
        }
    }

    /// All indexed chunks.
    pub fn chunks(&self) -> Result<Vec<(ChunkId, Location)>> {
        match &self.backend {
            Backend::Sled { chunks, .. } => chunks.iter().map(|r| self.chunk_entry(r)).collect(),
            Backend::Memory { chunks, .. } => {
                Ok(chunks.read().iter().map(|(k, v)| (*k, *v)).collect())
            }
        }
    }

    pub fn mark_packs_indexed(&self, ids: &[u64]) -> Result<()> {
        match &self.backend {
            Backend::Sled { packs, .. } => {
                for id in ids {
                    packs
                        .insert(id.to_be_bytes(), &b"indexed"[..])
                        .map_err(|e| self.map(e))?;
                }
            }
            Backend::Memory { packs, .. } => packs.write().extend(ids.iter().copied()),
        }
        Ok(())
    }

    /// Forget that a pack was indexed (gc is about to remove it: if the
    /// removal does not happen, the next open scans it again).
    pub fn unmark_pack(&self, id: u64) -> Result<()> {
        match &self.backend {
            Backend::Sled { packs, .. } => {
                packs.remove(id.to_be_bytes()).map_err(|e| self.map(e))?;
            }
            Backend::Memory { packs, .. } => {
                packs.write().remove(&id);
            }
        }
        Ok(())
    }

    /// Bytes of pack `id` known to be garbage (blobs the index no longer
    /// points at), as gc last counted them: a hint for which packs to
    /// look at, never a reason to delete (0 when unknown).
    pub fn pack_garbage(&self, id: u64) -> Result<u64> {
        match &self.backend {
            Backend::Sled { packs, .. } => {
                let v = packs.get(id.to_be_bytes()).map_err(|e| self.map(e))?;
                Ok(v.and_then(|v| {
                    v.get(7..15).map(|b| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(b);
                        u64::from_le_bytes(a)
                    })
                })
                .unwrap_or(0))
            }
            Backend::Memory { .. } => Ok(0),
        }
    }

    /// Set the garbage count of an indexed pack (see
    /// [`Index::pack_garbage`]); nothing for a pack not indexed.
    pub fn set_pack_garbage(&self, id: u64, bytes: u64) -> Result<()> {
        if let Backend::Sled { packs, .. } = &self.backend {
            if packs
                .contains_key(id.to_be_bytes())
                .map_err(|e| self.map(e))?
            {
                let mut v = b"indexed".to_vec();
                v.extend_from_slice(&bytes.to_le_bytes());
                packs.insert(id.to_be_bytes(), v).map_err(|e| self.map(e))?;
            }
        }
        Ok(())
    }

    pub fn is_pack_indexed(&self, id: u64) -> Result<bool> {
        match &self.backend {
            Backend::Sled { packs, .. } => packs
                .contains_key(id.to_be_bytes())
                .map_err(|e| self.map(e)),
            Backend::Memory { packs, .. } => Ok(packs.read().contains(&id)),
        }
    }

    pub fn put_snapshot(&self, id: u64, record_json: &[u8]) -> Result<()> {
        match &self.backend {
            Backend::Sled { snapshots, .. } => {
                snapshots
                    .insert(id.to_be_bytes(), record_json)
                    .map_err(|e| self.map(e))?;
            }
            Backend::Memory { snapshots, .. } => {
                snapshots.write().insert(id, record_json.to_vec());
            }
        }
        Ok(())
    }

    pub fn remove_snapshot(&self, id: u64) -> Result<()> {
        match &self.backend {
            Backend::Sled { snapshots, .. } => {
                snapshots
                    .remove(id.to_be_bytes())
                    .map_err(|e| self.map(e))?;
            }
            Backend::Memory { snapshots, .. } => {
                snapshots.write().remove(&id);
            }
        }
        Ok(())
    }

    /// All snapshot records as (id, JSON), in id order.
    pub fn snapshots(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        match &self.backend {
            Backend::Sled { snapshots, .. } => snapshots
                .iter()
                .map(|r| {
                    let (k, v) = r.map_err(|e| self.map(e))?;
                    let b: [u8; 8] = k
                        .as_ref()
                        .try_into()
                        .map_err(|_| Error::Corrupt("snapshot key has a bad length".into()))?;
                    Ok((u64::from_be_bytes(b), v.to_vec()))
                })
                .collect(),
            Backend::Memory { snapshots, .. } => Ok(snapshots
                .read()
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect()),
        }
    }

    /// Make every change so far durable.
    pub fn flush(&self) -> Result<()> {
        crate::util::fault::inject("index-flush")?;
        if let Backend::Sled { db, .. } = &self.backend {
            db.flush().map_err(|e| self.map(e))?;
        }
        Ok(())
    }
}

/// Capture operations on the index (inserts, `contains_chunk`) between
/// two collections of sled's garbage.
const GARBAGE_EVERY: u64 = 4096;
/// Collection steps per collection (each frees up to 8 bags of 64).
const GARBAGE_STEPS: u32 = 64;

/// Drive the collection of sled's garbage every [`GARBAGE_EVERY`] capture
/// operations (`ops` more now). sled frees the nodes it replaces (an
/// insert copies a leaf, an eviction drops one) through crossbeam-epoch's
/// deferred garbage, which is freed only as threads pin and flush the
/// global epoch; a burst of inserts outruns that and leaves it queued.
/// Measured (`cargo bench --bench index_memory`: 10^6 chunk ids inserted
/// as captures publish them), the process's peak with a 64/32/16 MiB
/// cache: 388/1,145/1,964 MiB with plain sled, 249/163/124 with this
/// (docs/benchmarks.md). The collector is the process's one, so the
/// counter is too.
fn collect_garbage(ops: u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static OPS: AtomicU64 = AtomicU64::new(0);
    let before = OPS.fetch_add(ops, Ordering::Relaxed);
    if before / GARBAGE_EVERY == (before + ops) / GARBAGE_EVERY {
        return;
    }
    for _ in 0..GARBAGE_STEPS {
        crossbeam_epoch::pin().flush();
    }
}

/// sled opens the files inside the index directory by name: refuse an
/// index holding anything but plain files and directories (a symlink
/// would make it write wherever that points). Nobody but the owner can
/// put one there in a trusted repository; this is the second line. The
/// caller rebuilds such an index (the odd one is moved aside).
fn check_entries(dir: &Dir, depth: u32) -> Result<()> {
    for name in dir.names()? {
        let shown = dir.join(&String::from_utf8_lossy(&name));
        let st = dir
            .stat_at(&String::from_utf8_lossy(&name))
            .map_err(|e| Error::io("stat", &shown, e.into()))?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {}
            libc::S_IFDIR if depth < 4 => {
                let Ok(n) = std::str::from_utf8(&name) else {
                    continue;
                };
                check_entries(&dir.open_dir(n)?, depth + 1)?;
            }
            _ => {
                return Err(Error::IndexCorrupt {
                    path: shown.clone(),
                    detail: format!("{} is not a plain file or directory", shown.display()),
                })
            }
        }
    }
    Ok(())
}

/// sled creates its files with the process umask; the repository keeps
/// everything 0700/0600. Walked through descriptors, never following a
/// symlink.
fn restrict_permissions(dir: &Dir, depth: u32) {
    let _ = dir.chmod(0o700);
    if depth > 4 {
        return;
    }
    let Ok(names) = dir.names() else { return };
    for name in names {
        let Ok(name) = std::str::from_utf8(&name) else {
            continue;
        };
        let Ok(st) = dir.stat_at(name) else { continue };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                if let Ok(sub) = dir.open_dir(name) {
                    restrict_permissions(&sub, depth + 1);
                }
            }
            libc::S_IFREG if st.st_mode & 0o7777 != 0o600 => {
                if let Ok(f) = dir.open_file(name, rustix::fs::OFlags::RDONLY, 0) {
                    let _ = rustix::fs::fchmod(&f, rustix::fs::Mode::from_raw_mode(0o600));
                }
            }
            _ => {}
        }
    }
}

impl Drop for Index {
    /// Files sled created while open got the process umask: bring them to
    /// 0600 too (best effort; the directory is 0700 anyway).
    fn drop(&mut self) {
        if let Backend::Sled { _dir, db, .. } = &mut self.backend {
            let _ = db.flush();
            if let Some(dir) = _dir.take() {
                restrict_permissions(&dir, 0);
                // sled's flusher thread outlives the `Db` by up to its
                // flush period and reaches files by the path
                // `/proc/self/fd/N/...`: closing N now could let it act
                // on whatever directory the process opens next as N.
                // Keep N open a little longer.
                let _ = std::thread::Builder::new()
                    .name("index-close".into())
                    .spawn(move || {
                        std::thread::sleep(std::time::Duration::from_secs(2));
                        drop(dir);
                    });
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
        let d = Dir::open_path(dir.path()).unwrap();
        let on_disk = Index::open(d.ensure_dir("index", 0o700).unwrap(), 1 << 20).unwrap();
        for idx in [on_disk, Index::memory(dir.path())] {
            check_index(idx);
        }
    }

    fn check_index(idx: Index) {
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
        // A walk in id order, a few at a time, sees every chunk once.
        let more: Vec<(ChunkId, Location)> =
            (0..10u8).map(|i| (ChunkId::of(&[i; 3]), loc)).collect();
        idx.insert_chunks(&more).unwrap();
        let mut seen = Vec::new();
        let mut after: Option<ChunkId> = None;
        loop {
            let batch = idx.chunks_after(after.as_ref(), 4).unwrap();
            seen.extend(batch.iter().map(|(k, _)| *k));
            match batch.last() {
                Some((k, _)) if batch.len() == 4 => after = Some(*k),
                _ => break,
            }
        }
        let mut want: Vec<ChunkId> = idx.chunks().unwrap().into_iter().map(|(k, _)| k).collect();
        want.sort_unstable_by_key(|k| k.0);
        assert_eq!(seen, want);
        idx.flush().unwrap();
    }
}
