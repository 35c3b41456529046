//! A bounded cache of verified chunks for snapshot reads, with a small
//! pool of prefetch workers.
//!
//! Chunks are read from packs, decompressed and verified (content hash) by
//! `Repository::read_blob`; the cache holds at most `capacity` bytes and
//! drops the least recently used chunks first. Concurrent requests for the
//! same chunk wait for one load.

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
        {
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
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let r = self.repo.read_blob(id);
        let mut g = self.inner.lock();
        let out = match r {
            Ok(v) => {
                let data = Arc::new(v);
                g.clock += 1;
                let used = g.clock;
                g.bytes += data.len() as u64;
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
                Slot::Ready { data, used } => Some((*used, *k, data.len() as u64)),
                Slot::Loading => None,
            })
            .collect();
        ready.sort_unstable_by_key(|r| r.0);
        let target = self.capacity - self.capacity / 8;
        for (_, k, len) in ready {
            if g.bytes <= target {
                break;
            }
            g.map.remove(&k);
            g.bytes -= len;
        }
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
