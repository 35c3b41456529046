//! Copy-before-write: while a snapshot is being captured, the first change
//! to a block the snapshot still needs saves the block's old content first.
//!
//! The cut (see `cut.rs`) registers, per file, which blocks the snapshot
//! will read ([`Need::Blocks`]) or that it needs every block below the
//! file's size at the cut ([`Need::All`], full snapshots). Writers call
//! [`CowSet::before_change`] before any write, truncation, hole punching
//! or range shift; the capture calls [`CowSet::read_block`], which returns
//! the saved content if a writer got there first. Both hold the file's
//! lock for the block, so a block is saved or read exactly once, and never
//! torn.
//!
//! Saved blocks live in memory up to [`MEMORY_LIMIT`], then in a spill file
//! in the repository directory (an `O_TMPFILE` file: it has no name and
//! vanishes with the capture, even after kill -9).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::journal::FileKey;
use crate::util::dirfd::Dir;

/// Saved blocks kept in memory before spilling to disk.
pub const MEMORY_LIMIT: u64 = 256 << 20;

/// Which blocks of a file the snapshot reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// Exactly these blocks.
    Blocks(BTreeSet<u64>),
    /// Every block below the file's size at the cut.
    All,
}

enum Saved {
    Mem(Vec<u8>),
    Spilled { offset: u64, len: usize },
}

struct FileCow {
    need: Need,
    /// Size at the cut (blocks at or past it are not needed). `None` for
    /// files the cut did not stat (full snapshots): set on first touch,
    /// before the change, which is then the size at the cut.
    cut_size: Option<u64>,
    /// Blocks saved by writers.
    saved: HashMap<u64, Saved>,
    /// Blocks the capture already read (no longer needed).
    read: BTreeSet<u64>,
}

impl FileCow {
    fn needed(&self, b: u64, bs: u64) -> bool {
        let Some(size) = self.cut_size else {
            return false;
        };
        if b * bs >= size || self.saved.contains_key(&b) || self.read.contains(&b) {
            return false;
        }
        match &self.need {
            Need::All => true,
            Need::Blocks(set) => set.contains(&b),
        }
    }
}

/// Files with copy-before-write state, and those a full capture is done
/// with (every block below the cut size read: nothing is saved for them
/// again, and they hold 16 bytes instead of their state: at 10^6 files
/// the states of every file were 187 MB of a first snapshot's peak).
#[derive(Default)]
struct Files {
    live: HashMap<FileKey, Arc<Mutex<FileCow>>>,
    done: HashSet<FileKey>,
}

/// The copy-before-write state of one capture.
pub struct CowSet {
    block_size: u64,
    /// Full snapshots need every block of every file, even files the cut
    /// did not register.
    all_files: bool,
    files: RwLock<Files>,
    mem_bytes: AtomicU64,
    /// Where saved blocks spill once memory is used up: an unnamed
    /// (`O_TMPFILE`) file in the repository directory.
    spill_dir: Option<Dir>,
    spill: Mutex<Option<(File, u64)>>,
    /// Objects renamed or removed since the cut.
    moved: Mutex<HashMap<FileKey, Arc<std::os::fd::OwnedFd>>>,
    /// Files a kept snapshot adds (see `track::keep`): their descriptor
    /// and real inode number (the key's may be one given in its place).
    kept: Mutex<HashMap<FileKey, (Arc<std::os::fd::OwnedFd>, u64)>>,
    /// Blocks saved by writers (for status and tests).
    pub saved_blocks: AtomicU64,
}

impl CowSet {
    pub fn new(block_size: u64, all_files: bool, spill_dir: Option<Dir>) -> CowSet {
        CowSet {
            block_size,
            all_files,
            files: RwLock::new(Files::default()),
            mem_bytes: AtomicU64::new(0),
            spill_dir,
            spill: Mutex::new(None),
            moved: Mutex::new(HashMap::new()),
            kept: Mutex::new(HashMap::new()),
            saved_blocks: AtomicU64::new(0),
        }
    }

    /// Register a file the snapshot reads (at the cut).
    pub fn register(&self, key: FileKey, need: Need, cut_size: u64) {
        let mut files = self.files.write();
        files.done.remove(&key);
        files.live.insert(
            key,
            Arc::new(Mutex::new(FileCow {
                need,
                cut_size: Some(cut_size),
                saved: HashMap::new(),
                read: BTreeSet::new(),
            })),
        );
    }

    fn entry(&self, key: &FileKey) -> Option<Arc<Mutex<FileCow>>> {
        {
            let files = self.files.read();
            if let Some(f) = files.live.get(key) {
                return Some(f.clone());
            }
            if !self.all_files || files.done.contains(key) {
                return None;
            }
        }
        let mut files = self.files.write();
        if files.done.contains(key) {
            return None;
        }
        Some(
            files
                .live
                .entry(*key)
                .or_insert_with(|| {
                    Arc::new(Mutex::new(FileCow {
                        need: Need::All,
                        cut_size: None,
                        saved: HashMap::new(),
                        read: BTreeSet::new(),
                    }))
                })
                .clone(),
        )
    }

    fn save(&self, data: Vec<u8>) -> std::io::Result<Saved> {
        let len = data.len() as u64;
        if self.mem_bytes.fetch_add(len, Ordering::Relaxed) + len <= MEMORY_LIMIT {
            return Ok(Saved::Mem(data));
        }
        self.mem_bytes.fetch_sub(len, Ordering::Relaxed);
        let mut spill = self.spill.lock();
        if spill.is_none() {
            let dir = self
                .spill_dir
                .as_ref()
                .ok_or_else(|| std::io::Error::other("no directory to spill saved blocks to"))?;
            let f = dir
                .tmpfile(0o600)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            *spill = Some((f, 0));
        }
        let Some((f, end)) = spill.as_mut() else {
            return Err(std::io::Error::other("spill file unavailable"));
        };
        let offset = *end;
        f.write_all(&data)?;
        *end += len;
        Ok(Saved::Spilled {
            offset,
            len: data.len(),
        })
    }

    /// Whether this capture reads (or read) file `key`: registered by the
    /// cut, read already, or any file of a full capture.
    pub fn wants(&self, key: &FileKey) -> bool {
        if self.all_files {
            return true;
        }
        let files = self.files.read();
        files.live.contains_key(key) || files.done.contains(key)
    }

    /// A full capture is about to read a file the cut did not register:
    /// its size now is its size at the cut (any change since went through
    /// [`CowSet::before_change`], which would have registered it).
    pub fn ensure(&self, key: &FileKey, cut_size: u64) {
        if let Some(f) = self.entry(key) {
            let mut f = f.lock();
            if f.cut_size.is_none() {
                f.cut_size = Some(cut_size);
            }
        }
    }

    /// Blocks `[first, last]` of `key` are about to change. `reader` reads
    /// the file's current (pre-change) content; `size_now` gives its size.
    pub fn before_change(
        &self,
        key: &FileKey,
        first: u64,
        last: u64,
        reader: &dyn Fn(u64, usize) -> std::io::Result<Vec<u8>>,
        size_now: &dyn Fn() -> std::io::Result<u64>,
    ) -> std::io::Result<()> {
        let Some(f) = self.entry(key) else {
            return Ok(());
        };
        let mut f = f.lock();
        if f.cut_size.is_none() {
            f.cut_size = Some(size_now()?);
        }
        let bs = self.block_size;
        let end = match f.cut_size {
            Some(s) => s.div_ceil(bs).min(last.saturating_add(1)),
            None => 0,
        };
        for b in first..end {
            if f.needed(b, bs) {
                let len = (f.cut_size.unwrap_or(0) - b * bs).min(bs) as usize;
                let data = reader(b * bs, len)?;
                let saved = self.save(data)?;
                f.saved.insert(b, saved);
                self.saved_blocks.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Read block `b` of `key` for the snapshot: the saved content if a
    /// writer saved it, else `read_now` (under the file's lock, so no write
    /// can change the block meanwhile).
    pub fn read_block(
        &self,
        key: &FileKey,
        b: u64,
        read_now: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> std::io::Result<Vec<u8>> {
        let Some(f) = self.entry(key) else {
            return read_now();
        };
        let mut f = f.lock();
        if let Some(s) = f.saved.remove(&b) {
            f.read.insert(b);
            self.maybe_done(key, &f);
            return match s {
                Saved::Mem(v) => {
                    self.mem_bytes.fetch_sub(v.len() as u64, Ordering::Relaxed);
                    Ok(v)
                }
                Saved::Spilled { offset, len } => {
                    let spill = self.spill.lock();
                    let Some((file, _)) = spill.as_ref() else {
                        return Err(std::io::Error::other("spill file missing"));
                    };
                    let mut v = vec![0u8; len];
                    file.read_exact_at(&mut v, offset)?;
                    Ok(v)
                }
            };
        }
        let v = read_now()?;
        f.read.insert(b);
        self.maybe_done(key, &f);
        Ok(v)
    }

    /// A file whose every block below its cut size was read needs no
    /// state any more (called with its lock held: a writer that took its
    /// state before finds every block read and saves nothing).
    fn maybe_done(&self, key: &FileKey, f: &FileCow) {
        let Some(size) = f.cut_size else { return };
        if f.need == Need::All
            && f.saved.is_empty()
            && f.read.len() as u64 >= size.div_ceil(self.block_size)
        {
            let mut files = self.files.write();
            files.live.remove(key);
            files.done.insert(*key);
        }
    }

    /// The capture is over: drop saved data and the spill file.
    pub fn finish(&self) {
        *self.files.write() = Files::default();
        self.moved.lock().clear();
        self.kept.lock().clear();
        *self.spill.lock() = None;
    }
}

impl CowSet {
    /// An object is about to be renamed or removed: keep a descriptor so
    /// the capture can still reach it (and, through it, what is below it).
    pub fn pin_moved(&self, key: FileKey, fd: Arc<std::os::fd::OwnedFd>) {
        self.moved.lock().entry(key).or_insert(fd);
    }

    pub fn moved(&self, key: &FileKey) -> Option<Arc<std::os::fd::OwnedFd>> {
        self.moved.lock().get(key).cloned()
    }

    /// A kept file the capture reads as `key` (its real inode `ino`).
    pub fn pin_kept(&self, key: FileKey, fd: Arc<std::os::fd::OwnedFd>, ino: u64) {
        self.kept.lock().insert(key, (fd, ino));
    }

    pub fn kept(&self, key: &FileKey) -> Option<(Arc<std::os::fd::OwnedFd>, u64)> {
        self.kept.lock().get(key).cloned()
    }
}

/// The filesystem's handle on the current capture (if any).
#[derive(Default)]
pub struct Cow {
    current: RwLock<Option<Arc<CowSet>>>,
}

impl Cow {
    pub fn get(&self) -> Option<Arc<CowSet>> {
        self.current.read().clone()
    }

    pub fn set(&self, c: Option<Arc<CowSet>>) {
        *self.current.write() = c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_once_and_hands_saved_content_to_the_capture() {
        let dir = tempfile::tempdir().unwrap();
        let c = CowSet::new(4, false, Dir::open_path(dir.path()).ok());
        let k = FileKey { dev: 1, ino: 2 };
        c.register(k, Need::Blocks([1, 2].into_iter().collect()), 10);
        let content = std::cell::RefCell::new(b"aaaabbbbcc".to_vec());
        let reader =
            |off: u64, len: usize| Ok(content.borrow()[off as usize..off as usize + len].to_vec());
        // A write to blocks 0..=1: block 1 is needed and saved, block 0 is not.
        c.before_change(&k, 0, 1, &reader, &|| Ok(10)).unwrap();
        content.borrow_mut()[0..8].copy_from_slice(b"XXXXYYYY");
        c.before_change(&k, 1, 1, &reader, &|| Ok(10)).unwrap(); // already saved
        assert_eq!(c.saved_blocks.load(Ordering::Relaxed), 1);
        assert_eq!(
            c.read_block(&k, 1, || Ok(b"new!".to_vec())).unwrap(),
            b"bbbb"
        );
        // Block 2 (short, the cut size ends inside it) is read live.
        assert_eq!(c.read_block(&k, 2, || Ok(b"cc".to_vec())).unwrap(), b"cc");
        // After the capture read it, a write does not save it again.
        c.before_change(&k, 2, 2, &reader, &|| Ok(10)).unwrap();
        assert_eq!(c.saved_blocks.load(Ordering::Relaxed), 1);
        // An unregistered file is not touched (incremental capture).
        let other = FileKey { dev: 1, ino: 3 };
        c.before_change(&other, 0, 5, &reader, &|| Ok(10)).unwrap();
        assert_eq!(c.saved_blocks.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn full_captures_save_any_file_on_first_touch() {
        let dir = tempfile::tempdir().unwrap();
        let c = CowSet::new(4, true, Dir::open_path(dir.path()).ok());
        let k = FileKey { dev: 1, ino: 9 };
        let reader = |off: u64, len: usize| Ok(vec![off as u8; len]);
        c.before_change(&k, 0, 0, &reader, &|| Ok(6)).unwrap();
        assert_eq!(c.read_block(&k, 0, || Ok(vec![])).unwrap(), vec![0u8; 4]);
        // Past the size at the cut: nothing to save.
        c.before_change(&k, 2, 3, &reader, &|| Ok(6)).unwrap();
        assert_eq!(c.saved_blocks.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_full_capture_forgets_files_it_read_whole() {
        let c = CowSet::new(4, true, None);
        let k = FileKey { dev: 1, ino: 5 };
        let reader = |off: u64, len: usize| Ok(vec![off as u8 + 1; len]);
        c.ensure(&k, 10);
        // Block 1 is saved by a writer, blocks 0 and 2 read live.
        c.before_change(&k, 1, 1, &reader, &|| Ok(10)).unwrap();
        assert_eq!(c.read_block(&k, 0, || Ok(vec![9; 4])).unwrap(), vec![9; 4]);
        assert_eq!(c.read_block(&k, 1, || Ok(vec![7; 4])).unwrap(), vec![5; 4]);
        assert_eq!(c.files.read().live.len(), 1);
        assert_eq!(c.read_block(&k, 2, || Ok(vec![8; 2])).unwrap(), vec![8; 2]);
        // Every block read: no state left, and a write saves nothing.
        assert!(c.files.read().live.is_empty());
        assert!(c.files.read().done.contains(&k));
        c.before_change(&k, 0, 2, &reader, &|| Ok(10)).unwrap();
        assert_eq!(c.saved_blocks.load(Ordering::Relaxed), 1);
        assert!(c.files.read().live.is_empty());
        // A file not read yet is still saved on first touch.
        let other = FileKey { dev: 1, ino: 6 };
        c.before_change(&other, 0, 0, &reader, &|| Ok(4)).unwrap();
        assert_eq!(c.saved_blocks.load(Ordering::Relaxed), 2);
    }
}
