//! Storing file blocks: units of blocks read from a [`Source`], hashed,
//! compressed and stored through the repository's `ChunkWriter`, on the
//! one worker pool. Scan and live capture differ only in their source.

use std::sync::Arc;

use crate::error::Result;
use crate::repo::ChunkWriter;
use crate::store::{BlobKind, ChunkId};
use crate::util::pool::{self, Feeder};

/// Where a file's blocks are read from.
pub trait Source: Send + Sync {
    /// The file's size (the capture's view of it).
    fn size(&self) -> u64;
    /// Fill `buf` (already `len` bytes long) with block `b`, `len` bytes
    /// at `off`.
    fn read(&self, b: u64, off: u64, buf: &mut Vec<u8>) -> Result<()>;
    /// Called after each unit of this source; the answer is handed back
    /// with the unit's result (scan: did the file change while read,
    /// known once its last unit is done).
    fn after_unit(&self) -> Option<bool> {
        None
    }
}

/// Blocks of one file to store.
pub struct Unit<S> {
    pub source: Arc<S>,
    /// What the caller files the result under.
    pub tag: usize,
    pub blocks: Vec<u64>,
}

/// What a unit stored.
pub struct Stored {
    pub tag: usize,
    /// Block number and chunk id, in the unit's order.
    pub ids: Vec<(u64, ChunkId)>,
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
            blocks: chunk.to_vec(),
        })
    })
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
        let size = u.source.size();
        let mut ids = Vec::with_capacity(u.blocks.len());
        let mut bytes = 0;
        for &b in &u.blocks {
            let off = b * block_size;
            let len = size.saturating_sub(off).min(block_size) as usize;
            crate::util::bytes::set_len_keeping(buf, len);
            u.source.read(b, off, buf)?;
            let id = writer.id(buf);
            writer.store(BlobKind::Chunk, id, buf)?;
            bytes += buf.len() as u64;
            progress.inc(buf.len() as u64);
            ids.push((b, id));
        }
        Ok(Stored {
            tag: u.tag,
            ids,
            bytes,
            after: u.source.after_unit(),
        })
    };
    pool::run_into(
        threads,
        || Vec::with_capacity(block_size as usize),
        work,
        feed,
        sink,
    )
}
