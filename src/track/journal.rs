//! The change journal: which blocks of which files changed since the last
//! snapshot, with first and last write times.
//!
//! Files are identified by their backing inode ([`FileKey`], device and
//! inode number), so identity survives renames and hard links. Each write
//! records the blocks it touched; truncation records the lowest size the
//! file went down to (every block from there on is dirty); namespace and
//! metadata operations mark the file or directory.
//!
//! The hot path takes one lock out of [`SHARDS`], chosen by the file, so
//! writers to different files do not serialize on a global lock. New or
//! updated records are queued and a persister thread writes them to the
//! sled tree `journal` in batches ([`Journal::persist`]); there is at most
//! one record per dirty block and one per dirty file.
//!
//! Key encoding (tree `journal`, all integers big-endian):
//! - `B` epoch u64, dev u64, ino u64, block u64 -> first_ns i64, last_ns i64
//! - `F` epoch u64, dev u64, ino u64 -> [`FileRecord`] (see `encode`)
//! - `N` epoch u64, dev u64, ino u64, name -> empty: a directory entry that
//!   was created, removed or renamed
//!
//! Epochs let a snapshot freeze the current set ([`Journal::take_epoch`])
//! while new changes go to the next epoch; the frozen epoch's records are
//! deleted once the snapshot is committed ([`Journal::drop_through`]) or
//! merged back if it fails ([`Journal::restore`]). On open, every epoch
//! found is merged.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::util::time;

pub const SHARDS: usize = 64;

/// A backing file's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

impl FileKey {
    pub fn of(st: &rustix::fs::Stat) -> FileKey {
        FileKey {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// Write times of one dirty block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockTimes {
    pub first_ns: i64,
    pub last_ns: i64,
}

/// What changed about a file other than block writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileRecord {
    pub first_ns: i64,
    pub last_ns: i64,
    /// The lowest size the file was cut to (every block from
    /// `truncated_to / block_size` on is dirty); `Some(0)` marks the whole
    /// file dirty.
    pub truncated_to: Option<u64>,
    /// Metadata changed (mode, owner, times, xattrs, size).
    pub meta: bool,
    /// Directory entries were added, removed or renamed (directories).
    pub entries: bool,
    /// Created since the last snapshot.
    pub created: bool,
    /// Directory entries changed but their names are unknown (found by the
    /// mount-time check): the whole directory must be listed.
    pub all_names: bool,
}

impl FileRecord {
    fn encode(&self) -> [u8; 25] {
        let mut v = [0u8; 25];
        v[0..8].copy_from_slice(&self.first_ns.to_be_bytes());
        v[8..16].copy_from_slice(&self.last_ns.to_be_bytes());
        v[16..24].copy_from_slice(&self.truncated_to.unwrap_or(u64::MAX).to_be_bytes());
        v[24] = self.meta as u8
            | (self.entries as u8) << 1
            | (self.created as u8) << 2
            | (self.all_names as u8) << 3;
        v
    }

    fn decode(v: &[u8]) -> Result<FileRecord> {
        if v.len() != 25 {
            return Err(Error::Corrupt(
                "journal file record has a bad length".into(),
            ));
        }
        let t = u64::from_be_bytes(v[16..24].try_into().unwrap_or([0xff; 8]));
        Ok(FileRecord {
            first_ns: i64::from_be_bytes(v[0..8].try_into().unwrap_or_default()),
            last_ns: i64::from_be_bytes(v[8..16].try_into().unwrap_or_default()),
            truncated_to: (t != u64::MAX).then_some(t),
            meta: v[24] & 1 != 0,
            entries: v[24] & 2 != 0,
            created: v[24] & 4 != 0,
            all_names: v[24] & 8 != 0,
        })
    }

    fn touch(&mut self, t: i64) {
        if self.first_ns == 0 {
            self.first_ns = t;
        }
        self.last_ns = t;
    }
}

/// Everything dirty about one file in the current epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileDirty {
    pub file: FileRecord,
    pub blocks: BTreeMap<u64, BlockTimes>,
    /// Directories: names of entries created, removed or renamed.
    pub names: std::collections::BTreeSet<Vec<u8>>,
}

impl FileDirty {
    /// Merge another record of the same file (an older epoch).
    pub fn merge(&mut self, o: &FileDirty) {
        merge_file(&mut self.file, &o.file);
        for (b, t) in &o.blocks {
            let e = self.blocks.entry(*b).or_insert(*t);
            e.first_ns = e.first_ns.min(t.first_ns);
            e.last_ns = e.last_ns.max(t.last_ns);
        }
        self.names.extend(o.names.iter().cloned());
    }
}

/// What is queued for persistence: a block, the file record, or a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Rec {
    Block(u64),
    File,
    Name(Vec<u8>),
}

#[derive(Default)]
struct Shard {
    files: HashMap<FileKey, FileDirty>,
    /// Records to persist. A record is queued at most once until persisted.
    queue: Vec<(FileKey, Rec)>,
    queued: std::collections::HashSet<(FileKey, Rec)>,
}

pub struct Journal {
    tree: sled::Tree,
    block_size: u64,
    epoch: AtomicU64,
    shards: Vec<Mutex<Shard>>,
}

fn shard_of(key: &FileKey) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

fn block_key(epoch: u64, key: &FileKey, block: u64) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = b'B';
    k[1..9].copy_from_slice(&epoch.to_be_bytes());
    k[9..17].copy_from_slice(&key.dev.to_be_bytes());
    k[17..25].copy_from_slice(&key.ino.to_be_bytes());
    k[25..33].copy_from_slice(&block.to_be_bytes());
    k
}

fn file_key(epoch: u64, key: &FileKey) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = b'F';
    k[1..9].copy_from_slice(&epoch.to_be_bytes());
    k[9..17].copy_from_slice(&key.dev.to_be_bytes());
    k[17..25].copy_from_slice(&key.ino.to_be_bytes());
    k
}

fn name_key(epoch: u64, key: &FileKey, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(25 + name.len());
    k.push(b'N');
    k.extend_from_slice(&epoch.to_be_bytes());
    k.extend_from_slice(&key.dev.to_be_bytes());
    k.extend_from_slice(&key.ino.to_be_bytes());
    k.extend_from_slice(name);
    k
}

fn be64(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[..8]);
    u64::from_be_bytes(b)
}

impl Journal {
    /// Open the journal in `tree`, loading what an earlier mount left.
    pub fn open(tree: sled::Tree, block_size: u32) -> Result<Journal> {
        let j = Journal {
            tree,
            block_size: block_size as u64,
            epoch: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        };
        let mut max_epoch = 0;
        for r in j.tree.iter() {
            let (k, v) = r.map_err(|e| Error::Index(e.to_string()))?;
            if k.len() < 25 {
                continue;
            }
            let epoch = be64(&k[1..9]);
            max_epoch = max_epoch.max(epoch);
            let key = FileKey {
                dev: be64(&k[9..17]),
                ino: be64(&k[17..25]),
            };
            let mut shard = j.shards[shard_of(&key)].lock();
            let fd = shard.files.entry(key).or_default();
            match (k[0], k.len()) {
                (b'B', 33) if v.len() == 16 => {
                    let t = BlockTimes {
                        first_ns: be64(&v[0..8]) as i64,
                        last_ns: be64(&v[8..16]) as i64,
                    };
                    fd.blocks.insert(be64(&k[25..33]), t);
                }
                (b'F', 25) => {
                    let r = FileRecord::decode(&v)?;
                    merge_file(&mut fd.file, &r);
                }
                (b'N', n) if n > 25 => {
                    fd.names.insert(k[25..].to_vec());
                }
                _ => {}
            }
        }
        // New changes go to a fresh epoch: everything loaded is older.
        j.epoch.store(max_epoch + 1, Ordering::SeqCst);
        Ok(j)
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn with_file<R>(&self, key: &FileKey, f: impl FnOnce(&mut FileDirty, &mut Vec<Rec>) -> R) -> R {
        let mut shard = self.shards[shard_of(key)].lock();
        let shard = &mut *shard;
        let fd = shard.files.entry(*key).or_default();
        let mut touched = Vec::new();
        let r = f(fd, &mut touched);
        for t in touched {
            if shard.queued.insert((*key, t.clone())) {
                shard.queue.push((*key, t));
            }
        }
        r
    }

    /// A write of `len` bytes at `offset` returned.
    pub fn record_write(&self, key: &FileKey, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let t = time::now_ns();
        let first = offset / self.block_size;
        let last = (offset + len - 1) / self.block_size;
        self.with_file(key, |fd, touched| {
            for b in first..=last {
                let e = fd.blocks.entry(b).or_insert(BlockTimes {
                    first_ns: t,
                    last_ns: t,
                });
                e.last_ns = t;
                touched.push(Rec::Block(b));
            }
        });
    }

    /// Blocks `[offset, offset+len)` changed without a write (hole
    /// punching, zeroing, copy_file_range into the file).
    pub fn record_range(&self, key: &FileKey, offset: u64, len: u64) {
        self.record_write(key, offset, len)
    }

    /// The file's size changed from `old` to `new`.
    pub fn record_resize(&self, key: &FileKey, old: u64, new: u64) {
        let t = time::now_ns();
        let bs = self.block_size;
        self.with_file(key, |fd, touched| {
            fd.file.touch(t);
            fd.file.meta = true;
            if new < old {
                fd.file.truncated_to = Some(fd.file.truncated_to.map_or(new, |x| x.min(new)));
            } else if new > old && !old.is_multiple_of(bs) {
                // The old last block grows (with zeros).
                let b = old / bs;
                let e = fd.blocks.entry(b).or_insert(BlockTimes {
                    first_ns: t,
                    last_ns: t,
                });
                e.last_ns = t;
                touched.push(Rec::Block(b));
            }
            touched.push(Rec::File);
        });
    }

    /// Every block of the file from `offset` on changed (shifted by
    /// collapse/insert range, or unknown).
    pub fn record_all_from(&self, key: &FileKey, offset: u64) {
        let t = time::now_ns();
        self.with_file(key, |fd, touched| {
            fd.file.touch(t);
            fd.file.truncated_to = Some(fd.file.truncated_to.map_or(offset, |x| x.min(offset)));
            touched.push(Rec::File);
        });
    }

    /// Metadata (mode, owner, times, xattrs) changed.
    pub fn record_meta(&self, key: &FileKey) {
        let t = time::now_ns();
        self.with_file(key, |fd, touched| {
            fd.file.touch(t);
            fd.file.meta = true;
            touched.push(Rec::File);
        });
    }

    /// The entry `name` of a directory was created, removed or renamed.
    pub fn record_entry(&self, dir: &FileKey, name: &[u8]) {
        let t = time::now_ns();
        self.with_file(dir, |fd, touched| {
            fd.file.touch(t);
            fd.file.entries = true;
            if fd.names.insert(name.to_vec()) {
                touched.push(Rec::Name(name.to_vec()));
            }
            touched.push(Rec::File);
        });
    }

    /// A directory's entries changed in ways not known by name.
    pub fn record_all_entries(&self, dir: &FileKey) {
        let t = time::now_ns();
        self.with_file(dir, |fd, touched| {
            fd.file.touch(t);
            fd.file.entries = true;
            fd.file.all_names = true;
            touched.push(Rec::File);
        });
    }

    /// A file was created.
    pub fn record_created(&self, key: &FileKey) {
        let t = time::now_ns();
        self.with_file(key, |fd, touched| {
            fd.file.touch(t);
            fd.file.created = true;
            touched.push(Rec::File);
        });
    }

    /// Write queued records to sled (not flushed; see [`Journal::flush`]).
    /// Returns how many records were written.
    pub fn persist(&self) -> Result<usize> {
        let epoch = self.epoch();
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for s in &self.shards {
            let mut shard = s.lock();
            if shard.queue.is_empty() {
                continue;
            }
            let queue = std::mem::take(&mut shard.queue);
            shard.queued.clear();
            for (key, what) in queue {
                let Some(fd) = shard.files.get(&key) else {
                    continue;
                };
                match what {
                    Rec::Block(b) => {
                        if let Some(t) = fd.blocks.get(&b) {
                            let mut v = [0u8; 16];
                            v[0..8].copy_from_slice(&t.first_ns.to_be_bytes());
                            v[8..16].copy_from_slice(&t.last_ns.to_be_bytes());
                            batch.insert(&block_key(epoch, &key, b)[..], &v[..]);
                            n += 1;
                        }
                    }
                    Rec::File => {
                        batch.insert(&file_key(epoch, &key)[..], &fd.file.encode()[..]);
                        n += 1;
                    }
                    Rec::Name(name) => {
                        batch.insert(name_key(epoch, &key, &name), &[][..]);
                        n += 1;
                    }
                }
            }
        }
        if n > 0 {
            self.tree
                .apply_batch(batch)
                .map_err(|e| Error::Index(e.to_string()))?;
        }
        Ok(n)
    }

    /// Persist and make durable.
    pub fn flush(&self) -> Result<()> {
        self.persist()?;
        self.tree.flush().map_err(|e| Error::Index(e.to_string()))?;
        Ok(())
    }

    /// Freeze the current epoch: persist what is queued, hand over every
    /// dirty file's state, and start a new epoch. The caller must make sure
    /// no change is being recorded at the same time (the filesystem's cut
    /// gate), so the frozen set is exactly the changes made before.
    pub fn take_epoch(&self) -> Result<(u64, HashMap<FileKey, FileDirty>)> {
        self.persist()?;
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst);
        let mut out = HashMap::new();
        for s in &self.shards {
            let mut shard = s.lock();
            out.extend(shard.files.drain());
            shard.queue.clear();
            shard.queued.clear();
        }
        Ok((epoch, out))
    }

    /// A snapshot of a frozen set failed: merge it back into the current
    /// epoch so the changes wait for the next snapshot. (Its persisted
    /// records stay under their old epoch until a snapshot succeeds.)
    pub fn restore(&self, frozen: HashMap<FileKey, FileDirty>) {
        for (key, fd) in frozen {
            let mut shard = self.shards[shard_of(&key)].lock();
            shard.files.entry(key).or_default().merge(&fd);
        }
    }

    /// Changes a cut leaves for the next snapshot (files it held back):
    /// merge them into the current epoch and persist them again, so that
    /// dropping the cut's epoch once its snapshot commits loses nothing.
    pub fn carry(&self, items: HashMap<FileKey, FileDirty>) {
        for (key, d) in items {
            self.with_file(&key, |fd, touched| {
                fd.merge(&d);
                touched.push(Rec::File);
                touched.extend(d.blocks.keys().map(|b| Rec::Block(*b)));
                touched.extend(d.names.iter().map(|n| Rec::Name(n.clone())));
            });
        }
    }

    /// When the file last changed, if it has changes not yet in a
    /// snapshot (in the current epoch).
    pub fn last_change_ns(&self, key: &FileKey) -> Option<i64> {
        let shard = self.shards[shard_of(key)].lock();
        let d = shard.files.get(key)?;
        Some(
            d.blocks
                .values()
                .map(|b| b.last_ns)
                .fold(d.file.last_ns, i64::max),
        )
    }

    /// Has the file changes not yet in a snapshot (in the current epoch)?
    pub fn is_dirty(&self, key: &FileKey) -> bool {
        self.shards[shard_of(key)].lock().files.contains_key(key)
    }

    /// A snapshot including every change up to epoch `epoch` is committed:
    /// delete the persisted records of that epoch and older ones.
    pub fn drop_through(&self, epoch: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        for r in self.tree.iter() {
            let (k, _) = r.map_err(|e| Error::Index(e.to_string()))?;
            if k.len() >= 9 && be64(&k[1..9]) <= epoch {
                batch.remove(k);
            }
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| Error::Index(e.to_string()))?;
        self.tree.flush().map_err(|e| Error::Index(e.to_string()))?;
        Ok(())
    }

    /// Is anything recorded in the current epoch?
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.lock().files.is_empty())
    }

    /// The objects with changes in the current epoch (cheaper than
    /// [`Journal::dirty`]: their states are not copied).
    pub fn dirty_keys(&self) -> Vec<FileKey> {
        let mut out = Vec::new();
        for s in &self.shards {
            out.extend(s.lock().files.keys().copied());
        }
        out
    }

    /// A copy of every dirty file's state.
    pub fn dirty(&self) -> BTreeMap<FileKey, FileDirty> {
        let mut out = BTreeMap::new();
        for s in &self.shards {
            for (k, v) in &s.lock().files {
                out.insert(*k, v.clone());
            }
        }
        out
    }

    /// Summary numbers for `status`.
    pub fn stats(&self) -> JournalStats {
        let mut st = JournalStats::default();
        for s in &self.shards {
            let shard = s.lock();
            for fd in shard.files.values() {
                st.dirty_files += 1;
                st.dirty_blocks += fd.blocks.len() as u64;
                let firsts = fd
                    .blocks
                    .values()
                    .map(|b| b.first_ns)
                    .chain((fd.file.first_ns != 0).then_some(fd.file.first_ns));
                for f in firsts {
                    st.oldest_change_ns = Some(st.oldest_change_ns.map_or(f, |o: i64| o.min(f)));
                }
            }
        }
        st.records = self.tree.len() as u64;
        st
    }
}

pub(crate) fn merge_file(into: &mut FileRecord, r: &FileRecord) {
    if into.first_ns == 0 || (r.first_ns != 0 && r.first_ns < into.first_ns) {
        into.first_ns = r.first_ns;
    }
    into.last_ns = into.last_ns.max(r.last_ns);
    into.truncated_to = match (into.truncated_to, r.truncated_to) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    into.meta |= r.meta;
    into.entries |= r.entries;
    into.created |= r.created;
    into.all_names |= r.all_names;
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JournalStats {
    pub dirty_files: u64,
    pub dirty_blocks: u64,
    pub oldest_change_ns: Option<i64>,
    /// Records in the persisted journal.
    pub records: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(dir: &std::path::Path) -> (sled::Db, Journal) {
        // sled's flusher thread can hold the database's lock for a moment
        // after the previous handle was dropped: wait for it (bounded).
        let mut tries = 0;
        let db = loop {
            match sled::open(dir) {
                Ok(db) => break db,
                Err(e) if tries < 100 && e.to_string().contains("could not acquire lock") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("open sled: {e}"),
            }
        };
        let j = Journal::open(db.open_tree("journal").unwrap(), 4096).unwrap();
        (db, j)
    }

    #[test]
    fn records_blocks_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let k = FileKey { dev: 1, ino: 42 };
        {
            let (_db, j) = journal(dir.path());
            j.record_write(&k, 4095, 2); // blocks 0 and 1
            j.record_write(&k, 4096, 10); // block 1 again
            j.record_write(&k, 3 * 4096, 4096); // block 3 exactly
            let d = j.dirty();
            assert_eq!(
                d[&k].blocks.keys().copied().collect::<Vec<_>>(),
                vec![0, 1, 3]
            );
            assert!(d[&k].blocks[&1].last_ns >= d[&k].blocks[&1].first_ns);
            j.record_resize(&k, 5 * 4096 + 1, 100);
            j.record_resize(&k, 100, 300);
            j.flush().unwrap();
            let st = j.stats();
            assert_eq!((st.dirty_files, st.dirty_blocks), (1, 3));
            // 3 blocks + block 0 again (no new record) + file record = 4 records
            assert_eq!(st.records, 4);
        }
        let (_db, j) = journal(dir.path());
        let d = j.dirty();
        assert_eq!(
            d[&k].blocks.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 3]
        );
        assert_eq!(d[&k].file.truncated_to, Some(100));
        assert!(d[&k].file.meta);
    }
}
