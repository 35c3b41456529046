//! The capture base's inode index: inode number -> its paths in the
//! tree (several for hard links), over the whole tree.
//!
//! Kept as one sorted array of `(inode, path)` with the paths in one
//! byte arena (24 bytes per entry plus the path: about 44 bytes per
//! file for the paths of the benchmark's trees, against ~136 for a map of
//! path lists, and two allocations in all instead of two per file, so
//! the tree it sits beside can be dropped and its memory given back),
//! plus a small map of the inodes changed since the array was built.
//! The array is rebuilt when that map grows past an eighth of it.
//!
//! Past [`SPILL_MIN`] paths the array lives in a file instead of the
//! heap ([`InoIndex::spill`]): an unnamed (`O_TMPFILE`) file in the
//! repository directory, mapped read-only, so the daemon's memory does
//! not grow with the files of the backing directory (44 MB at 10^6
//! files, 4.4 GB at 10^8). A lookup is a binary search that touches
//! about log2(n) of its pages; the pages read are let go after each
//! commit ([`InoIndex::spill`] again), the kernel's page cache keeps
//! them. The file has no name and is gone when the daemon stops (kill -9
//! included); nobody else can open it. A file that cannot be made
//! (`O_TMPFILE` unsupported, disk full) leaves the array in the heap.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use crate::snapshot::Tree;
use crate::util::dirfd::Dir;

/// Paths from which the array is kept in a file. Test builds keep any
/// non-empty one in a file, so every test goes through it.
pub const SPILL_MIN: u64 = if cfg!(debug_assertions) { 1 } else { 65_536 };

/// One entry of the array in its file: inode, offset and length of the
/// path in the arena (little-endian), then the arena.
const REC: usize = 20;

/// The sorted array: in the heap, or in a mapped file.
#[derive(Debug)]
enum Array {
    Heap {
        /// Sorted by (inode, path): (inode, offset and length in `arena`).
        sorted: Vec<(u64, u64, u32)>,
        arena: Vec<u8>,
    },
    File(Mapped),
}

impl Default for Array {
    fn default() -> Self {
        Array::Heap {
            sorted: Vec::new(),
            arena: Vec::new(),
        }
    }
}

impl Array {
    fn len(&self) -> usize {
        match self {
            Array::Heap { sorted, .. } => sorted.len(),
            Array::File(m) => m.n,
        }
    }

    /// Entry `i`: its inode and path.
    fn at(&self, i: usize) -> (u64, &[u8]) {
        match self {
            Array::Heap { sorted, arena } => {
                let e = &sorted[i];
                (e.0, &arena[e.1 as usize..e.1 as usize + e.2 as usize])
            }
            Array::File(m) => m.at(i),
        }
    }

    /// The first entry whose inode is not below `ino`.
    fn lower_bound(&self, ino: u64) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.at(mid).0 < ino {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn heap_bytes(&self) -> u64 {
        match self {
            Array::Heap { sorted, arena } => (sorted.capacity() * 24 + arena.capacity()) as u64,
            Array::File(_) => 0,
        }
    }

    fn file_bytes(&self) -> u64 {
        match self {
            Array::Heap { .. } => 0,
            Array::File(m) => m.len as u64,
        }
    }
}

/// A read-only shared mapping of a whole file written by
/// [`Mapped::write`]; unmapped when dropped.
#[derive(Debug)]
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
    /// Entries (the arena follows them).
    n: usize,
    /// Held so the mapping's file stays ours for its lifetime.
    _file: std::fs::File,
}

// SAFETY: the mapping is read-only and private to this value (nothing
// writes the pages while it lives), so it can be read from any thread.
unsafe impl Send for Mapped {}
// SAFETY: as above: shared references only read immutable bytes.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Write `sorted` and `arena` to an unnamed file in `dir` and map it.
    fn write(dir: &Dir, sorted: &[(u64, u64, u32)], arena: &[u8]) -> std::io::Result<Mapped> {
        use std::os::fd::AsRawFd;
        let file = dir
            .tmpfile(0o600)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &file);
            for e in sorted {
                w.write_all(&e.0.to_le_bytes())?;
                w.write_all(&e.1.to_le_bytes())?;
                w.write_all(&e.2.to_le_bytes())?;
            }
            w.write_all(arena)?;
            w.flush()?;
        }
        let len = sorted.len() * REC + arena.len();
        if len == 0 {
            // (mmap refuses an empty length.)
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        // SAFETY: a new read-only shared mapping of `len` bytes of an open
        // file of exactly that length; no address is imposed, so no
        // existing memory is touched. The result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped {
            ptr,
            len,
            n: sorted.len(),
            _file: file,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is a live read-only mapping of `len` bytes (until
        // drop), and its file is never written after it was mapped.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    fn at(&self, i: usize) -> (u64, &[u8]) {
        let b = self.bytes();
        let r = &b[i * REC..(i + 1) * REC];
        let word = |a: usize| u64::from_le_bytes(r[a..a + 8].try_into().unwrap_or([0; 8]));
        let ino = word(0);
        let off = word(8) as usize;
        let len = u32::from_le_bytes(r[16..20].try_into().unwrap_or([0; 4])) as usize;
        let arena = &b[self.n * REC..];
        (ino, arena.get(off..off + len).unwrap_or(&[]))
    }

    /// Let go of the pages read so far (the page cache keeps them): the
    /// resident memory of the index is what the next lookups touch.
    fn release_pages(&self) {
        // SAFETY: advises the kernel about this value's own mapping; for a
        // shared file mapping MADV_DONTNEED only drops the page table
        // entries (the next read faults the page in from the file).
        unsafe {
            libc::madvise(self.ptr, self.len, libc::MADV_DONTNEED);
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value made; no slice of
        // it outlives `self` (they borrow it).
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

#[derive(Debug, Default)]
pub struct InoIndex {
    array: Array,
    /// Inodes changed since `array` was built: their whole path list
    /// (empty: the inode has no path any more).
    changed: HashMap<u64, Vec<Vec<u8>>>,
    /// Paths in all.
    len: u64,
    /// Where the array goes once it is large (see [`InoIndex::spill`]).
    spill: Option<Arc<Dir>>,
}

/// Below this many changed inodes the array is not rebuilt.
const MIN_REBUILD: usize = 4096;

impl InoIndex {
    /// The index of every entry of `tree`.
    pub fn build(tree: &Tree) -> InoIndex {
        Self::from_pairs(
            tree.entries.len(),
            tree.entries.iter().map(|(p, (m, _))| (m.ino, p.as_slice())),
        )
    }

    fn from_pairs<'p>(n: usize, pairs: impl Iterator<Item = (u64, &'p [u8])>) -> InoIndex {
        let mut ix = InoIndex::default();
        if let Array::Heap { sorted, .. } = &mut ix.array {
            sorted.reserve_exact(n);
        }
        for (ino, p) in pairs {
            ix.push(ino, p);
        }
        ix.finish()
    }

    /// An index built entry by entry ([`InoIndex::push`], then
    /// [`InoIndex::finish`]): for a tree read one directory at a time.
    pub fn builder() -> InoIndex {
        InoIndex::default()
    }

    /// Add a path while building (before [`InoIndex::finish`]).
    pub fn push(&mut self, ino: u64, p: &[u8]) {
        if let Array::Heap { sorted, arena } = &mut self.array {
            // (A path is far shorter than 4 GiB: a tree is at most
            // MAX_DEPTH directories deep.)
            let len = u32::try_from(p.len()).unwrap_or(u32::MAX);
            sorted.push((ino, arena.len() as u64, len));
            arena.extend_from_slice(&p[..len as usize]);
        }
    }

    /// Sort what was pushed.
    pub fn finish(self) -> InoIndex {
        let mut ix = self;
        if let Array::Heap { sorted, arena } = &mut ix.array {
            ix.len = sorted.len() as u64;
            let slice = |e: &(u64, u64, u32)| &arena[e.1 as usize..e.1 as usize + e.2 as usize];
            sorted.sort_unstable_by(|a, b| (a.0, slice(a)).cmp(&(b.0, slice(b))));
            sorted.shrink_to_fit();
            arena.shrink_to_fit();
        }
        ix
    }

    /// Keep the array in an unnamed file in `dir` from now on (rebuilds
    /// included) once it holds [`SPILL_MIN`] paths, and let go of the
    /// pages of it read since the last call. Stays in the heap if the
    /// file cannot be written.
    pub fn spill(&mut self, dir: &Arc<Dir>) {
        self.spill = Some(dir.clone());
        self.write_out();
        if let Array::File(m) = &self.array {
            m.release_pages();
        }
    }

    fn write_out(&mut self) {
        let Some(dir) = &self.spill else { return };
        let Array::Heap { sorted, arena } = &self.array else {
            return;
        };
        if (sorted.len() as u64) < SPILL_MIN {
            return;
        }
        match Mapped::write(dir, sorted, arena) {
            Ok(m) => self.array = Array::File(m),
            Err(e) => tracing::debug!(
                "the inode index stays in memory: cannot write it to {}: {e}",
                dir.path().display()
            ),
        }
    }

    fn stored(&self, ino: u64) -> impl Iterator<Item = &[u8]> + '_ {
        let start = self.array.lower_bound(ino);
        (start..self.array.len())
            .map(|i| self.array.at(i))
            .take_while(move |e| e.0 == ino)
            .map(|e| e.1)
    }

    /// Every path of inode `ino`, in order.
    pub fn paths(&self, ino: u64) -> Vec<Vec<u8>> {
        match self.changed.get(&ino) {
            Some(v) => v.clone(),
            None => self.stored(ino).map(<[u8]>::to_vec).collect(),
        }
    }

    /// The first path of inode `ino`.
    pub fn first(&self, ino: u64) -> Option<Vec<u8>> {
        match self.changed.get(&ino) {
            Some(v) => v.first().cloned(),
            None => self.stored(ino).next().map(<[u8]>::to_vec),
        }
    }

    fn list_mut(&mut self, ino: u64) -> &mut Vec<Vec<u8>> {
        if !self.changed.contains_key(&ino) {
            let now: Vec<Vec<u8>> = self.stored(ino).map(<[u8]>::to_vec).collect();
            self.changed.insert(ino, now);
        }
        self.changed.entry(ino).or_default()
    }

    pub fn add(&mut self, ino: u64, path: &[u8]) {
        let v = self.list_mut(ino);
        if let Err(i) = v.binary_search_by(|p| p.as_slice().cmp(path)) {
            v.insert(i, path.to_vec());
            self.len += 1;
        }
        self.maybe_rebuild();
    }

    pub fn remove(&mut self, ino: u64, path: &[u8]) {
        let v = self.list_mut(ino);
        if let Ok(i) = v.binary_search_by(|p| p.as_slice().cmp(path)) {
            v.remove(i);
            self.len = self.len.saturating_sub(1);
        }
        self.maybe_rebuild();
    }

    fn maybe_rebuild(&mut self) {
        if self.changed.len() <= MIN_REBUILD.max(self.array.len() / 8) {
            return;
        }
        let changed = std::mem::take(&mut self.changed);
        let old = std::mem::take(&mut self.array);
        let spill = self.spill.take();
        let kept = (0..old.len())
            .map(|i| old.at(i))
            .filter(|e| !changed.contains_key(&e.0));
        let new = changed
            .iter()
            .flat_map(|(ino, v)| v.iter().map(move |p| (*ino, p.as_slice())));
        *self = Self::from_pairs(old.len(), kept.chain(new));
        drop(old);
        self.spill = spill;
        self.write_out();
    }

    /// Paths indexed, and about the heap bytes the index takes.
    pub fn memory(&self) -> (u64, u64) {
        let changed: u64 = self
            .changed
            .values()
            .map(|v| 64 + v.iter().map(|p| p.len() as u64 + 40).sum::<u64>())
            .sum();
        (self.len, self.array.heap_bytes() + changed)
    }

    /// The bytes of the array's file (0: it is in the heap).
    pub fn file_bytes(&self) -> u64 {
        self.array.file_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tree::ino_index;

    #[test]
    fn follows_changes_and_rebuilds_the_same() {
        follows_changes(None);
    }

    #[test]
    fn follows_changes_and_rebuilds_the_same_in_a_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = Arc::new(Dir::open_path(d.path()).unwrap());
        follows_changes(Some(dir));
        // The unnamed files leave nothing behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    fn follows_changes(spill: Option<Arc<Dir>>) {
        let mut t = Tree::default();
        for i in 0..10_000u64 {
            let m = crate::snapshot::manifest::Meta {
                ino: i % 9_000,
                ..crate::snapshot::tree::tests::meta(libc::S_IFREG | 0o644)
            };
            t.entries.insert(
                format!("d{}/f{i}", i % 7).into_bytes(),
                (m, crate::snapshot::Node::Dir),
            );
        }
        let mut ix = InoIndex::build(&t);
        let in_file = spill.is_some() && t.entries.len() as u64 >= SPILL_MIN;
        if let Some(d) = &spill {
            ix.spill(d);
            assert_eq!(ix.file_bytes() > 0, in_file);
        }
        let check = |ix: &InoIndex, t: &Tree| {
            let want = ino_index(t);
            for (ino, v) in &want {
                assert_eq!(&ix.paths(*ino), v, "inode {ino}");
                assert_eq!(ix.first(*ino).as_ref(), v.first());
            }
            assert_eq!(ix.memory().0, t.entries.len() as u64);
        };
        check(&ix, &t);
        // Enough changes to rebuild several times.
        for i in 0..20_000u64 {
            let p = format!("n/{i}").into_bytes();
            let ino = 50_000 + i % 3;
            if i % 4 == 3 {
                let j = i % 10_000;
                let old = format!("d{}/f{j}", j % 7).into_bytes();
                if let Some((m, _)) = t.entries.remove(&old) {
                    ix.remove(m.ino, &old);
                }
            }
            let mut m = crate::snapshot::tree::tests::meta(libc::S_IFREG | 0o644);
            m.ino = ino;
            t.entries.insert(p.clone(), (m, crate::snapshot::Node::Dir));
            ix.add(ino, &p);
        }
        check(&ix, &t);
        if let (Some(d), true) = (&spill, in_file) {
            // Rebuilt (20,000 changes) into a file again; the pages read
            // let go of, the answers the same.
            assert!(ix.file_bytes() > 0 && ix.changed.len() < 20_000);
            ix.spill(d);
            check(&ix, &t);
        }
        assert!(ix.paths(123_456).is_empty());
        // Removing every path of an inode leaves none.
        for p in ix.paths(50_000) {
            ix.remove(50_000, &p);
        }
        assert!(ix.paths(50_000).is_empty() && ix.first(50_000).is_none());
    }
}
