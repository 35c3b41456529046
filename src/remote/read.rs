//! Reading a repository straight from its remote: snapshots, restore
//! and snapshot mounts on a machine that has nothing else.
//!
//! [`open`] downloads the small things (config.json, every snapshot
//! record, every pack's `.idx`) into a private temporary directory and
//! opens a read-only [`Repository`] over them whose packs are read
//! through [`RemotePacks`]: ranged GETs of aligned segments, a bounded
//! in-memory cache of segments, and read-ahead of the next segments when
//! a pack is read in order (restore, a training job loading a
//! checkpoint). Everything read is checked exactly as local reads are.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use crossbeam_channel::{bounded, Sender};
use parking_lot::{Condvar, Mutex};

use super::client::Client;
use super::config::{local_host, RemoteSpec};
use super::idx::{PackIdx, MAX_ENTRIES};
use super::layout;
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::store::blob::ChunkId;
use crate::store::pack::{Location, PackSource};
use crate::util::dirfd::Dir;
use crate::util::pool;

/// Bytes of one ranged GET (segments are aligned to it).
pub const SEGMENT: u64 = 4 << 20;
/// Segments read ahead of a reader going through a pack in order.
const READ_AHEAD: u64 = 4;
/// Default size of the segment cache.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;
const MAX_SMALL_OBJECT: u64 = 16 << 20;

type SegKey = (u64, u64);

struct Slot {
    done: Mutex<Option<std::result::Result<Bytes, String>>>,
    cv: Condvar,
}

#[derive(Default)]
struct Cache {
    map: HashMap<SegKey, (Bytes, u64)>,
    bytes: u64,
    tick: u64,
}

/// Pack bytes read from a remote (see the module doc).
pub struct RemotePacks {
    client: Arc<Client>,
    lens: HashMap<u64, u64>,
    cap: u64,
    cache: Mutex<Cache>,
    inflight: Mutex<HashMap<SegKey, Arc<Slot>>>,
    /// The last segment read of each pack (order detection).
    last: Mutex<HashMap<u64, u64>>,
    /// Segments waiting in the read-ahead queue.
    queued: Mutex<HashSet<SegKey>>,
    ahead: Option<Sender<SegKey>>,
    fetched_bytes: AtomicU64,
    requests: AtomicU64,
    hits: AtomicU64,
}

/// Traffic counters of a [`RemotePacks`].
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ReadStats {
    pub requests: u64,
    pub fetched_bytes: u64,
    pub cache_hits: u64,
}

impl RemotePacks {
    /// `lens`: every pack's length; `cache_bytes`: the segment cache's
    /// bound; `read_ahead_threads`: 0 for none.
    pub fn new(
        client: Arc<Client>,
        lens: HashMap<u64, u64>,
        cache_bytes: u64,
        read_ahead_threads: usize,
    ) -> Arc<RemotePacks> {
        Arc::new_cyclic(|me: &Weak<RemotePacks>| {
            let ahead = (read_ahead_threads > 0).then(|| {
                let (tx, rx) = bounded::<SegKey>(64);
                for _ in 0..read_ahead_threads {
                    let rx = rx.clone();
                    let me = me.clone();
                    std::thread::Builder::new()
                        .name("remote-ahead".into())
                        .spawn(move || {
                            for key in rx {
                                let Some(p) = me.upgrade() else { return };
                                p.queued.lock().remove(&key);
                                if let Err(e) = p.segment(key) {
                                    tracing::debug!("read-ahead of {key:?}: {e}");
                                }
                            }
                        })
                        .ok();
                }
                tx
            });
            RemotePacks {
                client,
                lens,
                cap: cache_bytes.max(2 * SEGMENT),
                cache: Mutex::new(Cache::default()),
                inflight: Mutex::new(HashMap::new()),
                last: Mutex::new(HashMap::new()),
                queued: Mutex::new(HashSet::new()),
                ahead,
                fetched_bytes: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                hits: AtomicU64::new(0),
            }
        })
    }

    pub fn stats(&self) -> ReadStats {
        ReadStats {
            requests: self.requests.load(Ordering::Relaxed),
            fetched_bytes: self.fetched_bytes.load(Ordering::Relaxed),
            cache_hits: self.hits.load(Ordering::Relaxed),
        }
    }

    fn cached(&self, key: SegKey) -> Option<Bytes> {
        let mut c = self.cache.lock();
        c.tick += 1;
        let tick = c.tick;
        c.map.get_mut(&key).map(|(b, t)| {
            *t = tick;
            b.clone()
        })
    }

    fn insert(&self, key: SegKey, b: Bytes) {
        let mut c = self.cache.lock();
        c.tick += 1;
        let tick = c.tick;
        c.bytes += b.len() as u64;
        if let Some((old, _)) = c.map.insert(key, (b, tick)) {
            c.bytes -= old.len() as u64;
        }
        while c.bytes > self.cap {
            let Some(oldest) = c.map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) else {
                break;
            };
            if let Some((b, _)) = c.map.remove(&oldest) {
                c.bytes -= b.len() as u64;
            }
        }
    }

    /// One segment, from the cache, from a fetch in progress, or fetched.
    fn segment(&self, key: SegKey) -> Result<Bytes> {
        if let Some(b) = self.cached(key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        let (slot, mine) = {
            let mut f = self.inflight.lock();
            match f.get(&key) {
                Some(s) => (s.clone(), false),
                None => {
                    let s = Arc::new(Slot {
                        done: Mutex::new(None),
                        cv: Condvar::new(),
                    });
                    f.insert(key, s.clone());
                    (s, true)
                }
            }
        };
        if !mine {
            let mut d = slot.done.lock();
            while d.is_none() {
                slot.cv.wait(&mut d);
            }
            return match d.as_ref() {
                Some(Ok(b)) => Ok(b.clone()),
                Some(Err(m)) => Err(Error::Remote {
                    remote: self.client.name().to_string(),
                    op: "get",
                    key: layout::pack(key.0),
                    detail: m.clone(),
                }),
                None => unreachable!("waited until set"),
            };
        }
        // Whatever happens below (an error, a panic), the waiters are
        // answered and the slot goes away.
        struct Finish<'a> {
            packs: &'a RemotePacks,
            key: SegKey,
            slot: Arc<Slot>,
            result: Option<std::result::Result<Bytes, String>>,
        }
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                let r = self
                    .result
                    .take()
                    .unwrap_or_else(|| Err("the fetch of this segment failed".into()));
                *self.slot.done.lock() = Some(r);
                self.slot.cv.notify_all();
                self.packs.inflight.lock().remove(&self.key);
            }
        }
        let mut finish = Finish {
            packs: self,
            key,
            slot,
            result: None,
        };
        let r = self.fetch(key);
        if let Ok(b) = &r {
            self.insert(key, b.clone());
        }
        finish.result = Some(r.as_ref().map(Bytes::clone).map_err(|e| e.to_string()));
        drop(finish);
        r
    }

    fn fetch(&self, (pack, seg): SegKey) -> Result<Bytes> {
        let len = self.len_of(pack)?;
        let start = seg * SEGMENT;
        let end = (start + SEGMENT).min(len);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let b = self.client.get_range(&layout::pack(pack), start..end)?;
        self.fetched_bytes
            .fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b)
    }

    fn len_of(&self, pack: u64) -> Result<u64> {
        self.lens.get(&pack).copied().ok_or_else(|| Error::Remote {
            remote: self.client.name().to_string(),
            op: "get",
            key: layout::pack(pack),
            detail: "no such pack on the remote".into(),
        })
    }

    /// Queue read-ahead after a read of `seg` when the pack is read in order.
    fn read_ahead(&self, pack: u64, seg: u64, len: u64) {
        let Some(tx) = &self.ahead else { return };
        let in_order = {
            let mut last = self.last.lock();
            let prev = last.insert(pack, seg);
            if last.len() > 4096 {
                last.clear();
            }
            matches!(prev, Some(p) if p + 1 == seg || p == seg)
        };
        if !in_order {
            return;
        }
        let segs = len.div_ceil(SEGMENT);
        for s in seg + 1..(seg + 1 + READ_AHEAD).min(segs) {
            if !self.queue_ahead(tx, (pack, s)) {
                break;
            }
        }
    }

    /// Queue a segment for the read-ahead threads unless it is cached,
    /// being fetched or queued already. `false` when the queue is full.
    fn queue_ahead(&self, tx: &Sender<SegKey>, key: SegKey) -> bool {
        if self.cache.lock().map.contains_key(&key) || self.inflight.lock().contains_key(&key) {
            return true;
        }
        if !self.queued.lock().insert(key) {
            return true;
        }
        if tx.try_send(key).is_err() {
            self.queued.lock().remove(&key);
            return false;
        }
        true
    }
}

impl PackSource for RemotePacks {
    fn read_exact_at(&self, pack: u64, buf: &mut [u8], at: u64) -> Result<()> {
        let len = self.len_of(pack)?;
        let end = at + buf.len() as u64;
        if end > len {
            return Err(Error::Corrupt(format!(
                "{}/{} ends before byte {end}",
                self.client.name(),
                layout::pack(pack)
            )));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = at + done as u64;
            let seg = pos / SEGMENT;
            let b = self.segment((pack, seg))?;
            let off = (pos - seg * SEGMENT) as usize;
            let n = (b.len().saturating_sub(off)).min(buf.len() - done);
            if n == 0 {
                return Err(Error::Corrupt(format!(
                    "{}/{}: short segment at byte {pos}",
                    self.client.name(),
                    layout::pack(pack)
                )));
            }
            buf[done..done + n].copy_from_slice(&b[off..off + n]);
            done += n;
            self.read_ahead(pack, seg, len);
        }
        Ok(())
    }

    fn pack_len(&self, pack: u64) -> Option<u64> {
        self.lens.get(&pack).copied()
    }

    fn describe(&self, pack: u64) -> String {
        format!("{}/{}", self.client.name(), layout::pack(pack))
    }

    /// Queue the segments of the range for the read-ahead threads (those
    /// not cached or on their way). A full queue drops the rest: the
    /// reader then fetches them itself.
    fn prefetch(&self, pack: u64, at: u64, len: u64) {
        let Some(tx) = &self.ahead else { return };
        let Ok(plen) = self.len_of(pack) else { return };
        let end = (at + len).min(plen);
        if end <= at {
            return;
        }
        for seg in at / SEGMENT..=(end - 1) / SEGMENT {
            if !self.queue_ahead(tx, (pack, seg)) {
                break;
            }
        }
    }
}

/// A repository read from a remote; its private directory goes with it.
pub struct RemoteRepo {
    pub repo: Arc<Repository>,
    pub packs: Arc<RemotePacks>,
    pub spec: RemoteSpec,
    _tmp: tempfile::TempDir,
}

/// How to read a remote.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    pub cache_bytes: u64,
    /// Trust an unencrypted remote's content like a local repository of
    /// ours (owners, setuid bits, device files on a root restore). An
    /// encrypted one is trusted: authentication proves a key holder
    /// wrote it.
    pub trust_unencrypted: bool,
    /// Parallel GETs of the metadata, and read-ahead threads.
    pub concurrency: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            trust_unencrypted: false,
            concurrency: 8,
        }
    }
}

/// The hosts (repositories) under a URL's prefix.
pub fn hosts(spec: &RemoteSpec) -> Result<Vec<String>> {
    let c = Client::connect_prefix(spec)?;
    let mut out = Vec::new();
    for h in c.list_dirs()? {
        let s = RemoteSpec {
            host: h.clone(),
            ..spec.clone()
        };
        if Client::connect(&s)?.head(layout::CONFIG)?.is_some() {
            out.push(h);
        }
    }
    Ok(out)
}

/// The host to read when none was named: the only one, or this
/// machine's.
pub fn pick_host(spec: &RemoteSpec) -> Result<String> {
    let all = hosts(spec)?;
    let me = local_host();
    match all.as_slice() {
        [] => Err(Error::InvalidInput(format!(
            "{} holds no rewindfs repository",
            spec.url
        ))),
        [one] => Ok(one.clone()),
        _ if all.contains(&me) => Ok(me),
        _ => Err(Error::InvalidInput(format!(
            "{} holds the repositories of several hosts ({}); choose one with --host",
            spec.url,
            all.join(", ")
        ))),
    }
}

/// Copy an encrypted repository's key files into `dir`/keys (none for an
/// unencrypted one).
pub fn download_keys(client: &Client, dir: &Dir) -> Result<()> {
    let listed = client.list(layout::KEYS_DIR)?;
    if listed.is_empty() {
        return Ok(());
    }
    let keys = dir.ensure_dir(crate::repo::keys::KEYS_DIR, 0o700)?;
    for (key, _) in listed {
        let Some(name) = key.strip_prefix(layout::KEYS_DIR) else {
            continue;
        };
        if name.contains('/') || !name.ends_with(".json") || name.starts_with('.') {
            continue;
        }
        match client.get(&key, 64 << 10) {
            Ok(Some(b)) => keys.write_atomic(name, &b)?,
            Ok(None) => {}
            // One unreadable key object (damaged, oversized) does not hide
            // the others.
            Err(e) => tracing::warn!("{e}; skipped"),
        }
    }
    Ok(())
}

/// Open the repository `spec` names, read-only (see the module doc).
pub fn open(spec: &RemoteSpec, opts: &ReadOptions) -> Result<RemoteRepo> {
    let client = Arc::new(Client::connect(spec)?);
    let config = client
        .get(layout::CONFIG, MAX_SMALL_OBJECT)?
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "{} holds no rewindfs repository (no {}); list the hosts with `rewindfs snapshots --remote {} --all-hosts`",
                client.name(),
                layout::CONFIG,
                spec.url
            ))
        })?;
    let tmp = tempfile::Builder::new()
        .prefix("rewindfs-remote-")
        .tempdir()
        .map_err(|e| Error::io("create", std::env::temp_dir(), e))?;
    let dir = Dir::open_path(tmp.path())?;
    dir.chmod(0o700)?;
    let snaps = dir.ensure_dir(crate::repo::layout::SNAPSHOTS, 0o700)?;
    download_keys(&client, &dir)?;
    // Records before packs: a push landing between the two listings then
    // adds packs nobody needs, never a record whose packs are missing.
    let records: Vec<u64> = client
        .list(layout::SNAPSHOTS_DIR)?
        .iter()
        .filter_map(|(k, _)| layout::parse_record(k))
        .collect();
    let mut idx_keys = Vec::new();
    let mut sizes = HashMap::new();
    for (key, size) in client.list(layout::PACKS_DIR)? {
        if let Some(p) = layout::parse_pack(&key) {
            sizes.insert(p, size);
        } else if let Some(p) = layout::parse_idx(&key) {
            idx_keys.push(p);
        }
    }
    enum Got {
        Idx(Option<PackIdx>),
        Record(u64, Option<Bytes>),
    }
    let c = &client;
    let (_, got) = pool::run(
        opts.concurrency.clamp(1, 64),
        || (),
        |_, job: std::result::Result<u64, u64>| -> Result<Got> {
            match job {
                Ok(p) => {
                    let what = format!("{}/{}", c.name(), layout::idx(p));
                    let Some(b) = c.get(&layout::idx(p), (MAX_ENTRIES * 64) as u64)? else {
                        return Ok(Got::Idx(None));
                    };
                    Ok(Got::Idx(Some(PackIdx::decode(&b, p, &what)?)))
                }
                Err(r) => Ok(Got::Record(r, c.get(&layout::record(r), MAX_SMALL_OBJECT)?)),
            }
        },
        |feed| {
            for p in &idx_keys {
                feed.send(Ok(*p));
            }
            for r in &records {
                feed.send(Err(*r));
            }
        },
    );
    let mut blobs: Vec<(ChunkId, Location)> = Vec::new();
    let mut lens = HashMap::new();
    for g in got {
        match g? {
            Got::Idx(Some(i)) => {
                // A pack whose object is not the one listed (a partial
                // re-upload) is not used.
                if sizes.get(&i.pack) == Some(&i.pack_len) {
                    lens.insert(i.pack, i.pack_len);
                    blobs.extend(i.blobs);
                }
            }
            Got::Idx(None) => {}
            Got::Record(id, Some(b)) => {
                snaps.write_atomic(&crate::snapshot::model::SnapshotRecord::file_name(id), &b)?;
            }
            Got::Record(_, None) => {}
        }
    }
    // A blob in several packs (a local repack, a re-upload) is read from
    // one chosen the same way by every reader and by remote retention:
    // not scheduled for deletion, then the highest pack id (the index
    // keeps the last insert).
    let doomed = layout::doomed_packs(&client)?;
    blobs.sort_by_key(|(_, l)| (!doomed.contains(&l.pack), l.pack));
    dir.write_atomic(crate::repo::layout::CONFIG, &config)?;
    let packs = RemotePacks::new(client, lens, opts.cache_bytes, opts.concurrency.clamp(1, 8));
    let source: Arc<dyn PackSource> = packs.clone();
    let encrypted = crate::repo::config::read_config(&dir)?.encryption.is_some();
    if !encrypted && crate::repo::keys::KeySource::from_env()?.is_some() {
        tracing::warn!(
            "{} is not encrypted although a key was given: it is read as untrusted data",
            spec.describe()
        );
    }
    let trusted = encrypted || opts.trust_unencrypted;
    let repo =
        Repository::open_with_source(tmp.path(), source, blobs, trusted).map_err(|e| match e {
            Error::Corrupt(m) => Error::Corrupt(format!("{}: {m}", spec.describe())),
            e => e,
        })?;
    Ok(RemoteRepo {
        repo: Arc::new(repo),
        packs,
        spec: spec.clone(),
        _tmp: tmp,
    })
}
