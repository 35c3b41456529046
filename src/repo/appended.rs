//! What a chunk writer appended since its last commit, until the commit
//! indexes it.
//!
//! A first snapshot appends one entry per chunk of the whole dataset
//! before its single commit (10^6 and more). Held as one `Vec`, that list
//! was ~64 bytes per chunk, doubled by the vector's growth: 67 MB at 10^6
//! chunks, on the first snapshot's peak. Here the list stays in memory up
//! to [`SPILL_AT`] entries (every incremental), and past it goes to an
//! unnamed (`O_TMPFILE`) file beside the packs, in [`BUCKETS`] buckets by
//! the id's first byte. The commit then takes one bucket at a time,
//! sorted, so the index still gets one insert in id order (random inserts
//! cost sled far more: session 9's benchmarks), while the memory held is
//! a bucket's share.
//!
//! The file is only a list: after a crash it is gone with the process,
//! and the packs it described, not marked indexed, are read again when the
//! repository opens. If the file cannot be created or written (no
//! `O_TMPFILE`, disk full), the entries stay in memory: it costs memory,
//! never an entry.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::store::pack::Location;
use crate::store::ChunkId;
use crate::util::dirfd::Dir;

/// Entries held in memory before the list spills to its file.
pub const SPILL_AT: usize = 65_536;
/// Buckets by the id's first byte: a bucket holds 1/256 of the entries.
const BUCKETS: usize = 256;
/// One entry on disk: the id, then the index's encoding of the location.
const ENTRY: usize = 32 + 26;
/// Entries per block written to the file (a bucket's buffer).
const BLOCK_ENTRIES: usize = 128;
const BLOCK: usize = ENTRY * BLOCK_ENTRIES;

/// The list of appended chunks and their locations.
pub struct Appended {
    mem: Vec<(ChunkId, Location)>,
    spill_at: usize,
    /// Where a spill file goes (none: never spill).
    dir: Option<Dir>,
    spill: Option<Spill>,
    /// The spill file could not be made or written: stay in memory.
    spill_failed: bool,
}

struct Spill {
    file: File,
    end: u64,
    /// Per bucket: entries not yet written (at most a block).
    bufs: Vec<Vec<u8>>,
    /// Per bucket: offsets of its full blocks in the file.
    blocks: Vec<Vec<u64>>,
    len: usize,
}

impl Spill {
    fn new(file: File) -> Spill {
        Spill {
            file,
            end: 0,
            bufs: (0..BUCKETS).map(|_| Vec::new()).collect(),
            blocks: vec![Vec::new(); BUCKETS],
            len: 0,
        }
    }

    /// Add one entry; a bucket's full buffer is written as a block. On a
    /// write error the entry is still in its buffer, and the caller moves
    /// the buffer back to memory.
    fn push(&mut self, id: &ChunkId, loc: &Location) -> std::io::Result<()> {
        let b = usize::from(id.0[0]);
        let buf = &mut self.bufs[b];
        if buf.capacity() == 0 {
            buf.reserve_exact(BLOCK);
        }
        buf.extend_from_slice(&id.0);
        buf.extend_from_slice(&loc.encode());
        self.len += 1;
        if buf.len() == BLOCK {
            self.file.write_all_at(buf, self.end)?;
            self.blocks[b].push(self.end);
            self.end += BLOCK as u64;
            buf.clear();
        }
        Ok(())
    }

    /// Bucket `b`'s entries: its blocks read back, then its buffer.
    fn bucket(&self, b: usize, out: &mut Vec<(ChunkId, Location)>) -> Result<()> {
        let mut block = vec![0u8; BLOCK];
        for &at in &self.blocks[b] {
            self.file
                .read_exact_at(&mut block, at)
                .map_err(|e| Error::Poisoned(format!("cannot read back the appended list: {e}")))?;
            decode_into(&block, out)?;
        }
        decode_into(&self.bufs[b], out)
    }

    /// Every entry still in a buffer, decoded (to move back to memory).
    fn take_buffers(&mut self, out: &mut Vec<(ChunkId, Location)>) -> Result<()> {
        for buf in &mut self.bufs {
            let before = out.len();
            decode_into(buf, out)?;
            self.len -= out.len() - before;
            *buf = Vec::new();
        }
        Ok(())
    }
}

fn decode_into(bytes: &[u8], out: &mut Vec<(ChunkId, Location)>) -> Result<()> {
    for e in bytes.chunks_exact(ENTRY) {
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[..32]);
        out.push((ChunkId(id), Location::decode(&e[32..])?));
    }
    Ok(())
}

impl Appended {
    /// A list that spills to an unnamed file in `dir` past [`SPILL_AT`]
    /// entries (never, without a `dir`).
    pub fn new(dir: Option<Dir>) -> Appended {
        Appended::with_threshold(dir, SPILL_AT)
    }

    fn with_threshold(dir: Option<Dir>, spill_at: usize) -> Appended {
        Appended {
            mem: Vec::new(),
            spill_at,
            dir,
            spill: None,
            spill_failed: false,
        }
    }

    pub fn len(&self) -> usize {
        self.mem.len() + self.spill.as_ref().map_or(0, |s| s.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether part of the list is in its file.
    pub fn spilled(&self) -> bool {
        self.spill.as_ref().is_some_and(|s| s.len > 0)
    }

    pub fn push(&mut self, id: ChunkId, loc: Location) {
        if self.spill.is_none() && !self.spill_failed && self.mem.len() >= self.spill_at {
            self.start_spill();
        }
        match &mut self.spill {
            Some(s) if !self.spill_failed => {
                if let Err(e) = s.push(&id, &loc) {
                    tracing::warn!("the appended list stays in memory: {e}");
                    self.spill_failed = true;
                    // What the buffers hold (this entry included) comes
                    // back to memory; the blocks written stay readable.
                    if let Err(e) = s.take_buffers(&mut self.mem) {
                        // Entries encoded by this process decode; if not,
                        // keep this one at least, and say so.
                        tracing::error!("appended list: {e}");
                        self.mem.push((id, loc));
                    }
                }
            }
            _ => self.mem.push((id, loc)),
        }
    }

    fn start_spill(&mut self) {
        let Some(dir) = &self.dir else { return };
        match dir.tmpfile(0o600) {
            Ok(file) => {
                let mut s = Spill::new(file);
                let mut failed = None;
                for (id, loc) in &self.mem {
                    if let Err(e) = s.push(id, loc) {
                        failed = Some(e);
                        break;
                    }
                }
                match failed {
                    None => {
                        self.mem = Vec::new();
                        self.spill = Some(s);
                    }
                    Some(e) => {
                        tracing::warn!("the appended list stays in memory: {e}");
                        self.spill_failed = true;
                    }
                }
            }
            Err(e) => {
                tracing::warn!("the appended list stays in memory: {e}");
                self.spill_failed = true;
            }
        }
    }

    /// Forget every entry (and the file).
    pub fn clear(&mut self) {
        self.mem = Vec::new();
        self.spill = None;
        self.spill_failed = false;
    }

    /// Hand every entry to `f` in batches sorted by id, in id order
    /// overall; the list is empty afterwards. An error from `f` or from
    /// reading the file stops it (the entries not handed are dropped: the
    /// packs they name are not marked indexed, and are read again at open).
    pub fn drain(&mut self, mut f: impl FnMut(&[(ChunkId, Location)]) -> Result<()>) -> Result<()> {
        let mut mem = std::mem::take(&mut self.mem);
        let spill = self.spill.take();
        self.spill_failed = false;
        mem.sort_unstable_by_key(|e| e.0);
        let Some(spill) = spill else {
            return if mem.is_empty() { Ok(()) } else { f(&mem) };
        };
        let mut batch = Vec::new();
        let mut rest = &mem[..];
        for b in 0..BUCKETS {
            batch.clear();
            spill.bucket(b, &mut batch)?;
            let n = rest.partition_point(|e| usize::from(e.0 .0[0]) == b);
            batch.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if batch.is_empty() {
                continue;
            }
            batch.sort_unstable_by_key(|e| e.0);
            f(&batch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::blob::Codec;
    use crate::store::BlobKind;

    fn entry(i: u64) -> (ChunkId, Location) {
        let id = ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes());
        let loc = Location {
            pack: i / 1000,
            offset: i * 7,
            stored_len: (i % 4096) as u32,
            raw_len: 4096,
            codec: Codec::Zstd,
            kind: BlobKind::Chunk,
        };
        (id, loc)
    }

    /// Push the entries of `range`.
    fn fill(a: &mut Appended, range: std::ops::Range<u64>) {
        for i in range {
            let (id, loc) = entry(i);
            a.push(id, loc);
        }
    }

    fn drained(a: &mut Appended) -> (Vec<(ChunkId, Location)>, usize) {
        let mut out = Vec::new();
        let mut batches = 0;
        a.drain(|b| {
            assert!(b.windows(2).all(|w| w[0].0 < w[1].0), "a batch is sorted");
            out.extend_from_slice(b);
            batches += 1;
            Ok(())
        })
        .unwrap();
        (out, batches)
    }

    fn check(a: &mut Appended, n: u64) {
        let (out, _) = drained(a);
        let mut want: Vec<_> = (0..n).map(entry).collect();
        want.sort_unstable_by_key(|e| e.0);
        assert_eq!(out.len(), want.len());
        assert!(out.iter().zip(&want).all(|(a, b)| a.0 == b.0 && a.1 == b.1));
        assert!(a.is_empty());
    }

    #[test]
    fn small_lists_stay_in_memory_and_come_back_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appended::with_threshold(Some(Dir::open_path(dir.path()).unwrap()), 1000);
        fill(&mut a, 0..999);
        assert!(!a.spilled());
        let mut copy = Appended::with_threshold(None, 1000);
        fill(&mut copy, 0..999);
        let (_, batches) = drained(&mut copy);
        assert_eq!(batches, 1);
        check(&mut a, 999);
    }

    #[test]
    fn large_lists_spill_and_come_back_whole_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appended::with_threshold(Some(Dir::open_path(dir.path()).unwrap()), 500);
        let n = 50_000;
        fill(&mut a, 0..n);
        assert!(a.spilled());
        assert_eq!(a.len(), n as usize);
        // Memory holds nothing but the buckets' partial blocks.
        assert!(a.mem.is_empty());
        let (out, batches) = drained(&mut a);
        assert!(batches > 200, "one batch per bucket: {batches}");
        assert!(
            out.windows(2).all(|w| w[0].0 < w[1].0),
            "in id order overall"
        );
        // And the same list again, checked entry by entry.
        fill(&mut a, 0..n);
        check(&mut a, n);
    }

    #[test]
    fn without_a_place_to_spill_it_stays_in_memory() {
        let mut a = Appended::with_threshold(None, 10);
        fill(&mut a, 0..5000);
        assert!(!a.spilled());
        check(&mut a, 5000);
    }

    #[test]
    fn a_failed_write_to_the_file_keeps_every_entry_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list");
        std::fs::write(&path, b"").unwrap();
        let mut a = Appended::with_threshold(None, 10);
        fill(&mut a, 0..10);
        // A spill whose file takes no write (opened read-only): the first
        // full bucket fails to go out, and the list goes back to memory.
        let mut s = Spill::new(std::fs::File::open(&path).unwrap());
        for (id, loc) in &a.mem {
            s.push(id, loc).unwrap();
        }
        a.mem.clear();
        a.spill = Some(s);
        // (A bucket's block is 128 entries: 60,000 fill every bucket.)
        let n = 60_000;
        fill(&mut a, 10..n);
        assert!(a.spill_failed);
        assert_eq!(a.len(), n as usize);
        check(&mut a, n);
    }

    #[test]
    fn clear_forgets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appended::with_threshold(Some(Dir::open_path(dir.path()).unwrap()), 10);
        fill(&mut a, 0..5000);
        a.clear();
        assert!(a.is_empty());
        let (out, _) = drained(&mut a);
        assert!(out.is_empty());
        // The spill file had no name: the directory is still empty.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_error_from_the_consumer_stops_the_drain() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appended::with_threshold(Some(Dir::open_path(dir.path()).unwrap()), 10);
        fill(&mut a, 0..5000);
        let mut calls = 0;
        let r = a.drain(|_| {
            calls += 1;
            Err(Error::Poisoned("index full".into()))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
