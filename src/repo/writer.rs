//! The chunk writer of one capture: deduplicate, compress, append to packs
//! on a dedicated thread, and commit durably.
//!
//! Capture workers call [`ChunkWriter::store`] from many threads: it checks
//! the index and the chunks in flight, compresses on the calling thread
//! (so both cores compress), and hands the blob to the pack thread over a
//! bounded channel, so disk writes overlap with hashing and compression.
//! [`ChunkWriter::commit`] is the barrier: the pack thread fsyncs and
//! returns every location it appended before that point; only then does
//! the index learn about them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::index::Index;
use crate::snapshot::manifest::MANIFEST_PART_LEN;
use crate::store::blob::chunk_id;
use crate::store::crypto::Crypto;
use crate::store::pack::PackWriter;
use crate::store::{blob, BlobKind, ChunkId, EncodedBlob};

use super::appended::Appended;

/// Blobs queued for the pack thread (each up to a block).
const QUEUE: usize = 8;

type Synced = Result<(Vec<u64>, Appended)>;

enum Msg {
    Blob(EncodedBlob),
    /// fsync; reply with the packs now complete and what was appended.
    Sync(Sender<Synced>),
    /// Close the open pack, then as `Sync`.
    Close(Sender<Synced>),
    /// Everything synced so far is referenced by the index.
    Committed,
    Abort(Sender<()>),
}

pub struct ChunkWriter<'r> {
    index: &'r Index,
    /// Chunks gc is about to delete: stored again rather than reused.
    condemned: &'r RwLock<HashSet<ChunkId>>,
    level: i32,
    /// The keys of an encrypted repository (ids keyed, payloads sealed).
    crypto: Option<&'r Crypto>,
    /// Blobs carry fast sums (format 3).
    fast_sums: bool,
    tx: Option<Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
    /// Chunks claimed by this writer and not yet in the index.
    in_flight: Arc<Mutex<HashSet<ChunkId>>>,
    stored_bytes: AtomicU64,
    new_chunks: AtomicU64,
    /// The repository it writes to (for what an abort leaves behind).
    repo: Option<&'r super::Repository>,
}

fn pack_thread(mut packs: PackWriter, rx: crossbeam_channel::Receiver<Msg>) {
    // A first snapshot's list spills beside the packs (`appended.rs`).
    let mut appended = Appended::new(packs.dir().try_clone().ok());
    for msg in rx.iter() {
        match msg {
            Msg::Blob(b) => {
                // An error poisons the PackWriter; the next Sync reports it.
                if let Ok(loc) = packs.append(&b) {
                    appended.push(b.header.id, loc);
                }
            }
            Msg::Sync(reply) => {
                let r = packs.sync().map(|done| (done, take(&mut appended, &packs)));
                let _ = reply.send(r);
            }
            Msg::Close(reply) => {
                let r = packs
                    .close()
                    .map(|done| (done, take(&mut appended, &packs)));
                let _ = reply.send(r);
            }
            Msg::Committed => packs.mark_committed(),
            Msg::Abort(reply) => {
                appended.clear();
                packs.abort();
                let _ = reply.send(());
            }
        }
    }
}

/// The list so far, and a new one in its place.
fn take(appended: &mut Appended, packs: &PackWriter) -> Appended {
    std::mem::replace(appended, Appended::new(packs.dir().try_clone().ok()))
}

impl<'r> ChunkWriter<'r> {
    pub fn new(
        index: &'r Index,
        condemned: &'r RwLock<HashSet<ChunkId>>,
        packs: PackWriter,
        level: i32,
        crypto: Option<&'r Crypto>,
        fast_sums: bool,
    ) -> Result<ChunkWriter<'r>> {
        let (tx, rx) = bounded(QUEUE);
        let thread = std::thread::Builder::new()
            .name("pack-writer".into())
            .spawn(move || pack_thread(packs, rx))
            .map_err(|e| Error::Poisoned(format!("cannot start the pack writer: {e}")))?;
        Ok(ChunkWriter {
            index,
            condemned,
            crypto,
            fast_sums,
            level,
            tx: Some(tx),
            thread: Some(thread),
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            stored_bytes: AtomicU64::new(0),
            new_chunks: AtomicU64::new(0),
            repo: None,
        })
    }

    fn send(&self, m: Msg) -> Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(m).ok())
            .ok_or_else(|| Error::Poisoned("the pack writer stopped".into()))
    }

    fn roundtrip(&self, make: impl FnOnce(Sender<Synced>) -> Msg) -> Synced {
        let (rtx, rrx) = bounded(1);
        self.send(make(rtx))?;
        rrx.recv()
            .map_err(|_| Error::Poisoned("the pack writer stopped".into()))?
    }

    /// The id of `data` in this repository (keyed in an encrypted one).
    pub fn id(&self, data: &[u8]) -> ChunkId {
        chunk_id(self.crypto, data)
    }

    /// How files read whole are cut (see `chunking`): in an encrypted
    /// repository the gear table is keyed, so that where chunks end says
    /// nothing about content an attacker can guess.
    pub fn chunker(&self, block_size: u64) -> crate::chunking::Chunker {
        let seed = self.crypto.map_or(0, |c| {
            let k = chunk_id(Some(c), b"rewindfs 2026-12 content-defined chunking gear");
            let mut b = [0u8; 8];
            b.copy_from_slice(&k.0[..8]);
            u64::from_le_bytes(b) | 1
        });
        let c = crate::chunking::Chunker::new(block_size, seed);
        // For measurements against fixed blocks (scripts/bench-dedup.sh).
        if std::env::var_os("REWINDFS_FIXED_BLOCKS").is_some_and(|v| v == "1") {
            c.fixed_blocks()
        } else {
            c
        }
    }

    /// Store an encoded manifest as parts of at most
    /// [`MANIFEST_PART_LEN`]; returns their ids (hex), in order.
    pub fn store_manifest(&self, bytes: &[u8]) -> Result<Vec<String>> {
        let mut parts = Vec::new();
        for part in bytes.chunks(MANIFEST_PART_LEN) {
            let id = self.id(part);
            self.store(BlobKind::Manifest, id, part)?;
            parts.push(id.to_hex());
        }
        Ok(parts)
    }

    /// Store `data` (whose id is `id`, see [`ChunkWriter::id`]) unless it
    /// is already stored or in flight. Returns whether it was new. Safe
    /// from many threads.
    pub fn store(&self, kind: BlobKind, id: ChunkId, data: &[u8]) -> Result<bool> {
        // A condemned chunk (gc is deleting it) counts as absent: this
        // capture stores its own copy, which the index then points to.
        let reusable = self.index.contains_chunk(&id)? && !self.condemned.read().contains(&id);
        if reusable || !self.in_flight.lock().insert(id) {
            return Ok(false);
        }
        let level = match kind {
            BlobKind::Manifest => self.level.max(3),
            BlobKind::Chunk => self.level,
        };
        let encoded = blob::encode_with(kind, id, data, level, self.crypto, self.fast_sums)?;
        self.stored_bytes
            .fetch_add(encoded.encoded_len(), Ordering::Relaxed);
        self.new_chunks.fetch_add(1, Ordering::Relaxed);
        self.send(Msg::Blob(encoded))?;
        Ok(true)
    }

    fn publish(&self, (finished, mut appended): (Vec<u64>, Appended)) -> Result<()> {
        // From here on the index may point into what was synced, even if
        // the insert or the flush below fails: an abort must keep it.
        self.send(Msg::Committed)?;
        if !appended.is_empty() {
            tracing::debug!(
                "commit: indexing {} chunks{}",
                appended.len(),
                if appended.spilled() {
                    " (listed in a file)"
                } else {
                    ""
                }
            );
        }
        // In id order, one bucket at a time when the list spilled. An id
        // leaves the in-flight set once the index has it: a store() that
        // then misses it in both stores a second copy, which costs space
        // (gc's repack reclaims it), never a chunk.
        appended.drain(|batch| {
            self.index.insert_chunks(batch)?;
            let mut f = self.in_flight.lock();
            for (id, _) in batch {
                f.remove(id);
            }
            Ok(())
        })?;
        self.index.flush()?;
        // A first snapshot's set held an id per chunk (69 MB at 10^6):
        // give it back before what follows the commit.
        self.in_flight.lock().shrink_to_fit();
        if !finished.is_empty() {
            self.index.mark_packs_indexed(&finished)?;
            self.index.flush()?;
        }
        Ok(())
    }

    /// Tie the writer to its repository (an abort then tells gc).
    pub(super) fn for_repo(mut self, r: &'r super::Repository) -> Self {
        self.repo = Some(r);
        self
    }

    /// Make everything stored so far durable (packs fsynced, then indexed).
    pub fn commit(&self) -> Result<()> {
        let synced = self.roundtrip(Msg::Sync)?;
        self.publish(synced)
    }

    /// As [`commit`](Self::commit), and close the open pack: it gets no
    /// more blobs and is marked indexed.
    pub fn close(&self) -> Result<()> {
        let synced = self.roundtrip(Msg::Close)?;
        self.publish(synced)
    }

    /// After a failed capture: give back the space of what was written
    /// since the last commit (see [`PackWriter::abort`]).
    pub fn abort(&self) {
        if self.stored_bytes() > 0 {
            // What it committed part-way is named by no record: gc must
            // mark everything to find it.
            if let Some(r) = self.repo {
                r.drop_gc_candidates("a capture gave up after storing");
            }
        }
        let (rtx, rrx) = bounded(1);
        if self.send(Msg::Abort(rtx)).is_ok() {
            let _ = rrx.recv();
        }
        self.in_flight.lock().clear();
    }

    /// Bytes appended to packs by this writer (headers included).
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    pub fn new_chunks(&self) -> u64 {
        self.new_chunks.load(Ordering::Relaxed)
    }
}

impl Drop for ChunkWriter<'_> {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
