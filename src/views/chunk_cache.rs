//! A bounded cache of verified chunks for snapshot reads, with a small
//! pool of prefetch workers.
//!
//! Chunks are read from packs, decompressed and verified (content hash) by
//! `Repository::read_blob`; the cache holds at most `capacity` bytes and
//! drops the least recently used chunks first. Concurrent requests for the
//! same chunk wait for one load. Evicted buffers are recycled for the next
//! loads: with a fresh allocation per chunk, glibc spread them over its
//! per-thread arenas and the daemon's RSS drifted ~100 MiB above the
//! cache size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Sender, TrySendError};
use parking_lot::{Condvar, Mutex};

use crate::error::Result;
use crate::repo::Repository;
use crate::store::ChunkId;

enum Slot {
    Ready { data: Arc<Vec<u8>>, used: u64 },
    Loading,
}

struct Inner {
    map: HashMap<ChunkId, Slot>,
    bytes: u64,
    clock: u64,
    /// Buffers of evicted chunks, for the next loads (at most one
    /// eviction pass worth: cache + spare stay within the capacity).
    spare: Vec<Vec<u8>>,
    spare_bytes: u64,
}

pub struct ChunkCache {
    repo: Arc<Repository>,
    capacity: u64,
    inner: Mutex<Inner>,
    loaded: Condvar,
    prefetch: Mutex<Option<Sender<ChunkId>>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl ChunkCache {
    pub fn new(repo: Arc<Repository>, capacity: u64, prefetchers: usize) -> Arc<ChunkCache> {
        let c = Arc::new(ChunkCache {
            repo,
            capacity,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                bytes: 0,
                clock: 0,
                spare: Vec::new(),
                spare_bytes: 0,
            }),
            loaded: Condvar::new(),
            prefetch: Mutex::new(None),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        });
        if prefetchers > 0 {
            let (tx, rx) = bounded::<ChunkId>(256);
            for i in 0..prefetchers {
                let rx = rx.clone();
                let weak = Arc::downgrade(&c);
                let _ = std::thread::Builder::new()
                    .name(format!("prefetch-{i}"))
                    .spawn(move || {
                        for id in rx.iter() {
                            let Some(c) = weak.upgrade() else { break };
                            let _ = c.get(&id);
                        }
                    });
            }
            *c.prefetch.lock() = Some(tx);
        }
        c
    }

    /// A verified chunk, from the cache or the repository.
    pub fn get(&self, id: &ChunkId) -> Result<Arc<Vec<u8>>> {
        let spare = {
            let mut g = self.inner.lock();
            loop {
                g.clock += 1;
                let now = g.clock;
                match g.map.get_mut(id) {
                    Some(Slot::Ready { data, used }) => {
                        *used = now;
                        self.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(data.clone());
                    }
                    Some(Slot::Loading) => self.loaded.wait(&mut g),
                    None => {
                        g.map.insert(*id, Slot::Loading);
                        break;
                    }
                }
            }
            match g.spare.pop() {
                Some(b) => {
                    g.spare_bytes -= b.capacity() as u64;
                    b
                }
                None => Vec::new(),
            }
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        let r = self.repo.read_blob_into(id, spare);
        let mut g = self.inner.lock();
        let out = match r {
            Ok(v) => {
                let data = Arc::new(v);
                g.clock += 1;
                let used = g.clock;
                g.bytes += data.capacity() as u64;
                g.map.insert(
                    *id,
                    Slot::Ready {
                        data: data.clone(),
                        used,
                    },
                );
                self.evict(&mut g);
                Ok(data)
            }
            Err(e) => {
                g.map.remove(id);
                Err(e)
            }
        };
        drop(g);
        self.loaded.notify_all();
        out
    }

    fn evict(&self, g: &mut Inner) {
        if g.bytes <= self.capacity {
            return;
        }
        // Drop the oldest quarter of what is over, in one pass.
        let mut ready: Vec<(u64, ChunkId, u64)> = g
            .map
            .iter()
            .filter_map(|(k, s)| match s {
                Slot::Ready { data, used } => Some((*used, *k, data.capacity() as u64)),
                Slot::Loading => None,
            })
            .collect();
        ready.sort_unstable_by_key(|r| r.0);
        let target = self.capacity - self.capacity / 8;
        for (_, k, len) in ready {
            if g.bytes <= target {
                break;
            }
            if let Some(Slot::Ready { data, .. }) = g.map.remove(&k) {
                // Still in use by a reply: dropped by its last holder.
                if let Ok(buf) = Arc::try_unwrap(data) {
                    if g.spare_bytes + len <= self.capacity / 8 {
                        g.spare_bytes += len;
                        g.spare.push(buf);
                    }
                }
            }
            g.bytes -= len;
        }
    }

    /// The repository the chunks come from.
    pub fn repo(&self) -> &Arc<Repository> {
        &self.repo
    }

    /// A verified chunk for a one-time reader (the materialization
    /// worker): from the cache if it is there, otherwise read from the
    /// repository without entering the cache (a whole-file copy would
    /// push out what the readers use).
    pub fn get_transient(&self, id: &ChunkId) -> Result<Arc<Vec<u8>>> {
        if let Some(Slot::Ready { data, .. }) = self.inner.lock().map.get(id) {
            return Ok(data.clone());
        }
        self.repo.read_blob_into(id, Vec::new()).map(Arc::new)
    }

    /// Ask the prefetch workers to load `id` (dropped if they are busy).
    pub fn prefetch(&self, id: ChunkId) {
        if self.inner.lock().map.contains_key(&id) {
            return;
        }
        if let Some(tx) = self.prefetch.lock().as_ref() {
            match tx.try_send(id) {
                Ok(()) | Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    pub fn bytes(&self) -> u64 {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::scan::{snapshot_dir, ScanOptions};
    use crate::snapshot::manifest::Node;
    use crate::snapshot::{Kind, Tree};

    /// Blocks of three kinds (raw noise, zstd text, byte-plane floats) and
    /// small files, read in a shuffled order many times through a cache
    /// far smaller than the data: every read returns the right bytes while
    /// buffers are recycled across sizes and codecs, and the cache plus its
    /// spare buffers stay within the capacity.
    #[test]
    fn recycled_buffers_give_the_right_bytes_within_the_capacity() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, root) = (tmp.path().join("src"), tmp.path().join("repo"));
        std::fs::create_dir_all(&src).unwrap();
        // Blocks of 128 KiB: the smallest the byte-plane encoder considers.
        let bs = 128 << 10;
        let mut x: u64 = 7;
        let mut noise = vec![0u8; 5 * bs + 100];
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let floats: Vec<u8> = (0..bs)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02).to_le_bytes()
            })
            .collect();
        std::fs::write(src.join("noise"), &noise).unwrap();
        std::fs::write(src.join("text"), b"checkpoint step ".repeat(20_000)).unwrap();
        std::fs::write(src.join("floats"), &floats).unwrap();
        for i in 0..20 {
            std::fs::write(src.join(format!("small{i}")), format!("{i}\n")).unwrap();
        }
        Repository::init(&root, bs as u32, 3).unwrap();
        let repo = Arc::new(Repository::open(&root).unwrap());
        let opts = ScanOptions {
            kind: Kind::Full,
            label: None,
            threads: 1,
            recorded_time_ns: None,
        };
        let rec = snapshot_dir(&repo, &src, &opts).unwrap().record;
        let tree = repo.resolve(&rec).unwrap();
        let mut codecs = std::collections::BTreeSet::new();
        let packs = crate::util::dirfd::Dir::open_path(&root.join("packs")).unwrap();
        for pack in crate::store::pack::list_packs(&packs).unwrap() {
            for b in crate::store::pack::scan_pack(&packs, pack).unwrap().blobs {
                codecs.insert(b.header.codec as u8);
            }
        }
        assert_eq!(
            codecs.into_iter().collect::<Vec<_>>(),
            [0, 1, 2],
            "raw, zstd, planes"
        );
        let mut blocks: Vec<(ChunkId, Vec<u8>)> = Vec::new();
        for (path, (_, node)) in &tree.entries {
            if !matches!(node, Node::File { .. }) {
                continue;
            }
            let name = std::str::from_utf8(path).unwrap().trim_start_matches('/');
            let data = std::fs::read(src.join(name)).unwrap();
            let spans = crate::snapshot::spans::Spans::of(node, bs as u32).unwrap();
            for (i, id) in Tree::blocks_of(node).iter().enumerate() {
                let (off, len) = spans.span(i);
                let (off, len) = (off as usize, len as usize);
                blocks.push((*id, data[off..off + len].to_vec()));
            }
        }
        assert!(blocks.len() > 30, "{}", blocks.len());
        let capacity = 4 * bs as u64;
        let cache = ChunkCache::new(repo.clone(), capacity, 0);
        for round in 0..20u64 {
            for k in 0..blocks.len() {
                let (id, want) = &blocks[(k * 7 + round as usize * 3) % blocks.len()];
                assert_eq!(cache.get(id).unwrap().as_slice(), &want[..]);
                let g = cache.inner.lock();
                assert!(
                    g.bytes + g.spare_bytes <= capacity + 2 * bs as u64,
                    "cache {} + spare {} over {capacity}",
                    g.bytes,
                    g.spare_bytes
                );
            }
        }
        assert!(cache.misses.load(Ordering::Relaxed) > blocks.len() as u64);
    }
}
