//! Storing file blocks: units of blocks read from a [`Source`], hashed,
//! compressed and stored through the repository's `ChunkWriter`, on the
//! one worker pool. Scan and live capture differ only in their source.

use std::sync::Arc;

use crate::chunking::Chunker;
use crate::error::{Error, Result};
use crate::repo::ChunkWriter;
use crate::snapshot::Blocks;
use crate::store::{BlobKind, ChunkId};
use crate::util::pool::{self, Feeder};

/// Where a file's blocks are read from.
pub trait Source: Send + Sync {
    /// The file's size (the capture's view of it).
    fn size(&self) -> u64;
    /// Fill `buf` (already `len` bytes long) with block `b`, `len` bytes
    /// at `off`.
    fn read(&self, b: u64, off: u64, buf: &mut Vec<u8>) -> Result<()>;
    /// Called after each unit of blocks of this source; the answer is
    /// handed back with the unit's result (scan: did the file change
    /// while read, known once its last unit is done).
    fn after_unit(&self) -> Option<bool> {
        None
    }
    /// Called once a whole file was read in order on the feeding thread
    /// ([`feed_whole`]); the answer goes with its last unit.
    fn finished(&self) -> Option<bool> {
        None
    }
    /// The open file behind the source, if any: for hints and read-ahead.
    fn file(&self) -> Option<&std::fs::File> {
        None
    }
    /// `len` bytes at `off` for chunking hints only (never stored; read
    /// from the file as it is now, bypassing copy-before-write). `None`:
    /// no hints.
    fn peek(&self, off: u64, len: usize) -> Option<Vec<u8>> {
        crate::util::bytes::read_full(self.file()?, off, len).ok()
    }
    /// The reader will soon read `len` bytes at `off` (read-ahead).
    fn will_need(&self, off: u64, len: u64) {
        if let Some(f) = self.file() {
            let _ = rustix::fs::fadvise(
                f,
                off,
                std::num::NonZeroU64::new(len),
                rustix::fs::Advice::WillNeed,
            );
        }
    }
}

/// How far ahead of a file read whole on the feeding thread its bytes
/// are asked for (one reader thread: without it, a cold file came in at
/// the kernel's default read-ahead, 0.81x the speed of the workers
/// reading blocks side by side).
const READ_AHEAD: u64 = 32 << 20;

/// What a unit stores.
pub enum Work {
    /// These blocks, read by the worker.
    Blocks(Vec<u64>),
    /// These pieces (offset, bytes), read and cut on the feeding thread;
    /// `after` is handed back with the result.
    Pieces {
        pieces: Vec<(u64, Vec<u8>)>,
        after: Option<bool>,
    },
}

/// Blocks or pieces of one file to store.
pub struct Unit<S> {
    pub source: Arc<S>,
    /// What the caller files the result under.
    pub tag: usize,
    pub work: Work,
}

/// What a unit stored.
pub struct Stored {
    pub tag: usize,
    /// Offset, length and chunk id of each block or piece, in the unit's
    /// order (a block's index is its offset divided by the block size).
    pub ids: Vec<(u64, u32, ChunkId)>,
    /// Bytes read.
    pub bytes: u64,
    /// The source's answer after this unit.
    pub after: Option<bool>,
}

/// Queue the units of `blocks` of `source` (consecutive runs of at most
/// `UNIT_BLOCKS`). False if the workers are gone.
pub fn feed_blocks<S>(
    feed: &Feeder<'_, Unit<S>>,
    source: &Arc<S>,
    tag: usize,
    blocks: &[u64],
) -> bool {
    blocks.chunks(pool::UNIT_BLOCKS as usize).all(|chunk| {
        feed.send(Unit {
            source: source.clone(),
            tag,
            work: Work::Blocks(chunk.to_vec()),
        })
    })
}

/// Pieces gathered on the feeding thread and queued in units of about
/// two blocks (units carry their bytes: the queue of `4 x threads` units
/// holds at most that many times two blocks).
pub struct PieceFeed<'f, 'a, S> {
    feed: &'f Feeder<'a, Unit<S>>,
    source: Arc<S>,
    tag: usize,
    batch: Vec<(u64, Vec<u8>)>,
    bytes: u64,
    target: u64,
}

impl<'f, 'a, S> PieceFeed<'f, 'a, S> {
    pub fn new(feed: &'f Feeder<'a, Unit<S>>, source: &Arc<S>, tag: usize, bs: u64) -> Self {
        PieceFeed {
            feed,
            source: source.clone(),
            tag,
            batch: Vec::new(),
            bytes: 0,
            target: 2 * bs,
        }
    }

    /// Add a piece (queued once a unit's worth is gathered).
    pub fn add(&mut self, off: u64, data: Vec<u8>) {
        self.bytes += data.len() as u64;
        self.batch.push((off, data));
    }

    /// Queue what is gathered if it makes a unit (or `last`). False if
    /// the workers are gone.
    pub fn flush(&mut self, last: bool, after: Option<bool>) -> bool {
        // (The last flush sends even nothing, when it has an answer to
        // carry.)
        if (self.batch.is_empty() && !(last && after.is_some()))
            || (!last && self.bytes < self.target)
        {
            return true;
        }
        self.bytes = 0;
        self.feed.send(Unit {
            source: self.source.clone(),
            tag: self.tag,
            work: Work::Pieces {
                pieces: std::mem::take(&mut self.batch),
                after,
            },
        })
    }
}

/// Read `source` whole, in order, on this (the feeding) thread: each
/// block once, through [`Source::read`]; cut by `chunker` (tensor starts
/// or content, see `chunking`) and queue the pieces. The last unit
/// carries [`Source::finished`].
pub fn feed_whole<S: Source>(
    feed: &Feeder<'_, Unit<S>>,
    source: &Arc<S>,
    tag: usize,
    chunker: &Chunker,
    bs: u64,
) -> Result<()> {
    let gone = || Error::Poisoned("capture workers stopped".into());
    let size = source.size();
    let peek = |off: u64, len: usize| source.peek(off, len);
    let mut cutter = chunker.whole(size, &peek);
    let mut out = PieceFeed::new(feed, source, tag, bs);
    let mut buf = Vec::with_capacity(bs as usize);
    let mut asked = 0u64;
    for b in 0..size.div_ceil(bs) {
        let off = b * bs;
        // Keep READ_AHEAD asked for, in steps of a quarter of it.
        if asked < size && asked < off + READ_AHEAD / 4 * 3 {
            let upto = (off + READ_AHEAD).min(size);
            source.will_need(asked, upto - asked);
            asked = upto;
        }
        crate::util::bytes::set_len_keeping(&mut buf, (size - off).min(bs) as usize);
        source.read(b, off, &mut buf)?;
        cutter.push(&buf, &mut |o, v| out.add(o, v));
        if !out.flush(false, None) {
            return Err(gone());
        }
    }
    cutter.finish(&mut |o, v| out.add(o, v));
    if !out.flush(true, source.finished()) {
        return Err(gone());
    }
    Ok(())
}

/// A file's list being completed as its units come back: fixed blocks
/// by index, or content pieces by offset.
pub struct Assembly {
    size: u64,
    bs: u64,
    /// Fixed blocks: by index (zero id: not stored yet).
    grid: Option<Vec<ChunkId>>,
    pieces: Vec<(u64, u32, ChunkId)>,
    got: u64,
}

impl Assembly {
    /// Every block of a `size`-byte file, or (`content`) its pieces.
    pub fn new(size: u64, bs: u64, content: bool) -> Assembly {
        Assembly {
            size,
            bs,
            grid: (!content).then(|| vec![ChunkId([0; 32]); size.div_ceil(bs) as usize]),
            pieces: Vec::new(),
            got: 0,
        }
    }

    pub fn add(&mut self, ids: &[(u64, u32, ChunkId)]) {
        for &(off, len, id) in ids {
            match &mut self.grid {
                Some(g) => {
                    if let Some(slot) = g.get_mut((off / self.bs) as usize) {
                        *slot = id;
                        self.got += u64::from(len);
                    }
                }
                None => {
                    self.pieces.push((off, len, id));
                    self.got += u64::from(len);
                }
            }
        }
    }

    /// Is every byte stored?
    pub fn done(&self) -> bool {
        self.got >= self.size
    }

    /// Chunks stored.
    pub fn count(&self) -> usize {
        self.grid.as_ref().map_or(self.pieces.len(), Vec::len)
    }

    /// The complete list (an error if pieces are missing or overlap).
    pub fn finish(self) -> Result<Blocks> {
        match self.grid {
            Some(g) => Ok(Blocks::Full(g)),
            None => pieces_list(self.pieces, self.size),
        }
    }
}

/// The content-chunk list of pieces that must tile `[0, size)`.
pub fn pieces_list(mut pieces: Vec<(u64, u32, ChunkId)>, size: u64) -> Result<Blocks> {
    pieces.sort_unstable_by_key(|p| p.0);
    let mut at = 0;
    let mut ids = Vec::with_capacity(pieces.len());
    let mut lens = Vec::with_capacity(pieces.len());
    for (off, len, id) in pieces {
        if off != at {
            return Err(Error::Corrupt(format!(
                "capture pieces do not tile the file: {off} where {at} was expected"
            )));
        }
        at += u64::from(len);
        ids.push(id);
        lens.push(len);
    }
    if at != size {
        return Err(Error::Corrupt(format!(
            "capture pieces cover {at} bytes of {size}"
        )));
    }
    Ok(Blocks::Sized { ids, lens })
}

/// Store every unit `feed` queues, on `threads` workers (`feed` runs on
/// this thread). Returns what `feed` returned and each unit's result.
pub fn store<S: Source, Out>(
    writer: &ChunkWriter<'_>,
    threads: usize,
    block_size: u64,
    progress: &indicatif::ProgressBar,
    feed: impl FnOnce(&Feeder<'_, Unit<S>>) -> Out,
) -> (Out, Vec<Result<Stored>>) {
    let mut results = Vec::new();
    let (out, _) = store_into(writer, threads, block_size, progress, feed, |r| {
        results.push(r)
    });
    (out, results)
}

/// [`store`], handing each unit's result to `sink` as it is stored
/// (see [`pool::run_into`]) instead of collecting them.
pub fn store_into<S: Source, Out, K: FnMut(Result<Stored>) + Send>(
    writer: &ChunkWriter<'_>,
    threads: usize,
    block_size: u64,
    progress: &indicatif::ProgressBar,
    feed: impl FnOnce(&Feeder<'_, Unit<S>>) -> Out,
    sink: K,
) -> (Out, K) {
    let work = |buf: &mut Vec<u8>, u: Unit<S>| -> Result<Stored> {
        let mut bytes = 0;
        let mut put = |data: &[u8], off: u64, ids: &mut Vec<(u64, u32, ChunkId)>| -> Result<()> {
            let id = writer.id(data);
            writer.store(BlobKind::Chunk, id, data)?;
            bytes += data.len() as u64;
            progress.inc(data.len() as u64);
            ids.push((off, data.len() as u32, id));
            Ok(())
        };
        match u.work {
            Work::Blocks(list) => {
                let size = u.source.size();
                let mut ids = Vec::with_capacity(list.len());
                for &b in &list {
                    let off = b * block_size;
                    let len = size.saturating_sub(off).min(block_size) as usize;
                    crate::util::bytes::set_len_keeping(buf, len);
                    u.source.read(b, off, buf)?;
                    put(buf, off, &mut ids)?;
                }
                Ok(Stored {
                    tag: u.tag,
                    ids,
                    bytes,
                    after: u.source.after_unit(),
                })
            }
            Work::Pieces { pieces, after } => {
                let mut ids = Vec::with_capacity(pieces.len());
                for (off, data) in &pieces {
                    put(data, *off, &mut ids)?;
                }
                Ok(Stored {
                    tag: u.tag,
                    ids,
                    bytes,
                    after,
                })
            }
        }
    };
    pool::run_into(
        threads,
        || Vec::with_capacity(block_size as usize),
        work,
        feed,
        sink,
    )
}
