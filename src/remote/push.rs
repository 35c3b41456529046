//! Replication: make the remote hold every snapshot of the repository.
//!
//! For each snapshot record the remote lacks, in id order (a parent
//! before its children): the packs holding the blobs its manifests
//! reference that the remote lacks are uploaded whole, each followed by
//! its blob list (`.idx`); only when every blob is there is the record
//! uploaded. The remote therefore never lists a snapshot whose data is
//! missing, whatever moment a push stops at.
//!
//! Every acknowledged upload is appended to the upload log (state.rs)
//! at once. The first push of a [`Pusher`] reconciles the log with a
//! listing of the remote: an object the log lacks but the remote holds
//! whole (a crash between the server's answer and the log line) is
//! adopted, not uploaded again; one the log names but the remote lacks
//! is uploaded again when needed.
//!
//! Packs are read whole and every blob's stored checksum is checked
//! before upload: local damage is reported, never replicated (a damaged
//! blob is left out of the `.idx`). gc may remove or rewrite a pack
//! between planning and reading: the record is planned again (three
//! times at most).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;

use super::client::{Client, Put};
use super::config::RemoteConfig;
use super::idx::PackIdx;
use super::layout;
use super::lease;
use super::state::UploadLog;
use super::throttle::Throttle;
use crate::error::{Error, Result};
use crate::repo::keys;
use crate::repo::Repository;
use crate::snapshot::model::SnapshotRecord;
use crate::store::blob::{ChunkId, HEADER_LEN};
use crate::store::pack::{pack_file_name, scan_pack_bytes};
use crate::util::pool;

/// The largest object one S3 PUT may carry.
const MAX_PUT: u64 = 5 << 30;

/// Largest `config.json` or record read back from a remote.
const MAX_SMALL_OBJECT: u64 = 16 << 20;

/// What one push did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PushReport {
    /// Snapshot records uploaded.
    pub records: u64,
    /// Packs uploaded, and their bytes.
    pub packs: u64,
    pub bytes: u64,
    /// Objects found on the remote that the log lacked (not uploaded again).
    pub adopted: u64,
    /// Blobs left out of an upload because their stored bytes are damaged.
    pub damaged_blobs: u64,
    pub seconds: f64,
}

/// How far the remote is behind the repository.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Lag {
    /// Snapshots not replicated yet.
    pub records: u64,
    /// The oldest of them (id, time): the remote's recovery point.
    pub oldest_pending: Option<(u64, i64)>,
    /// Stored bytes those snapshots added (an upper bound of what is left
    /// to upload).
    pub bytes: u64,
    /// The newest replicated snapshot.
    pub newest_replicated: Option<u64>,
}

/// Replicates one repository to one remote; keeps what it learnt of the
/// remote between pushes (the daemon holds one for its lifetime).
pub struct Pusher {
    client: Arc<Client>,
    config: RemoteConfig,
    throttle: Throttle,
    log: Mutex<UploadLog>,
    /// Blobs the remote holds in packs the log names, and a pack of each.
    remote_chunks: HashMap<ChunkId, u64>,
    /// Packs remote retention scheduled for deletion: not deduplicated
    /// against (a record needing one of their blobs uploads it again).
    doomed: HashSet<u64>,
    /// Packs whose blob lists are in `remote_chunks`.
    known_packs: HashSet<u64>,
    reconciled: bool,
}

/// One push at a time in a process: the daemon's replicator and a
/// `rewindfs push` it runs for a client share the upload log.
static PUSHING: Mutex<()> = Mutex::new(());

impl Pusher {
    pub fn new(repo: &Repository, config: &RemoteConfig) -> Result<Pusher> {
        let client = Client::connect(&config.spec)?;
        Pusher::with_client(repo, config, client)
    }

    pub fn with_client(repo: &Repository, config: &RemoteConfig, client: Client) -> Result<Pusher> {
        Ok(Pusher {
            client: Arc::new(client),
            throttle: Throttle::new(config.bandwidth),
            // Opening the log may cut a torn tail: not while another
            // pusher of this process appends.
            log: Mutex::new({
                let _one = PUSHING.lock();
                UploadLog::open(repo.dir(), &config.name)?
            }),
            config: config.clone(),
            remote_chunks: HashMap::new(),
            doomed: HashSet::new(),
            known_packs: HashSet::new(),
            reconciled: false,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Connect again (credentials may have been renewed), keeping what
    /// this pusher knows of the remote (checked again at the next push).
    pub fn reconnect(&mut self) -> Result<()> {
        self.client = Arc::new(Client::connect(&self.config.spec)?);
        Ok(())
    }

    /// Replicate every snapshot the remote lacks. `on_bytes` is told of
    /// every uploaded byte (progress).
    pub fn push(
        &mut self,
        repo: &Repository,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<PushReport> {
        let _one = PUSHING.lock();
        let t0 = Instant::now();
        let mut report = PushReport::default();
        // One writer at a time on the remote (another host's push cannot
        // share the prefix; remote retention deletes only under it).
        let client = self.client.clone();
        let mut lease = lease::acquire(&client, "push")?;
        if self.reconciled && !self.still_there()? {
            // Remote retention deleted packs since: learn the remote again.
            self.remote_chunks.clear();
            self.known_packs.clear();
            self.reconciled = false;
        }
        if !self.reconciled {
            report.adopted = self.reconcile(repo)?;
            self.reconciled = true;
        } else {
            self.refresh(repo)?;
        }
        self.doomed = super::layout::doomed_packs(&self.client)?;
        let records: BTreeMap<u64, Vec<u8>> = repo.index().snapshots()?.into_iter().collect();
        // Records the remote has that changed here since: a `forget`
        // rewrite of the same snapshot is fine (remembered, so it is not
        // fetched again); anything else means the id now names another
        // snapshot.
        let changed: Vec<u64> = {
            let log = self.log.lock();
            log.records
                .iter()
                .filter(|(id, sum)| {
                    records
                        .get(id)
                        .is_some_and(|b| blake3::hash(b).to_hex().as_str() != sum.as_str())
                })
                .map(|(id, _)| *id)
                .collect()
        };
        for id in changed {
            let bytes = &records[&id];
            let ours = repo.decode_record(bytes, id)?;
            if let Some(theirs) = self.client.get(&layout::record(id), MAX_SMALL_OBJECT)? {
                if !same_snapshot(&ours, &repo.decode_record(&theirs, id)?) {
                    return Err(Error::InvalidInput(format!(
                        "snapshot {id} is not the one replicated to {} under that id (this repository's ids were reused, e.g. after a rollback); nothing was pushed",
                        self.client.name()
                    )));
                }
            }
            let sum = blake3::hash(bytes).to_hex().to_string();
            self.log
                .lock()
                .append(&[UploadLog::record_line(id, &sum)])?;
        }
        let todo: Vec<u64> = {
            let log = self.log.lock();
            records
                .keys()
                .filter(|id| !log.records.contains_key(id))
                .copied()
                .collect()
        };
        for id in todo {
            let bytes = &records[&id];
            let rec = repo.decode_record(bytes, id)?;
            self.push_record(repo, &rec, bytes, &mut report, on_bytes, &mut lease)?;
        }
        report.seconds = t0.elapsed().as_secs_f64();
        Ok(report)
    }

    fn push_record(
        &mut self,
        repo: &Repository,
        rec: &SnapshotRecord,
        bytes: &[u8],
        report: &mut PushReport,
        on_bytes: &(dyn Fn(u64) + Sync),
        lease: &mut lease::Lease<'_>,
    ) -> Result<()> {
        let mut needed: HashSet<ChunkId> = HashSet::new();
        repo.references(rec, &mut HashSet::new(), &mut needed)?;
        for attempt in 0..3 {
            let missing: Vec<ChunkId> = needed
                .iter()
                .filter(|id| !self.on_remote(id))
                .copied()
                .collect();
            if missing.is_empty() {
                break;
            }
            let mut packs = HashSet::new();
            for id in &missing {
                match repo.index().get_chunk(id)? {
                    Some(loc) => {
                        packs.insert(loc.pack);
                    }
                    None => {
                        return Err(Error::MissingChunk(format!(
                            "{id} (needed by snapshot {}; it cannot be replicated)",
                            rec.id
                        )))
                    }
                }
            }
            let mut packs: Vec<u64> = packs.into_iter().collect();
            packs.sort_unstable();
            // In batches, refreshing the lease between them: a first push
            // can take hours, the lease lasts 30 minutes.
            let batch = self.config.concurrency.clamp(1, 64) * 4;
            let mut results = Vec::with_capacity(packs.len());
            for part in packs.chunks(batch) {
                lease.refresh()?;
                results.extend(self.upload_packs(repo, part.to_vec(), on_bytes));
            }
            let mut first_err = None;
            for r in results {
                match r {
                    Ok((idx, sent, damaged)) => {
                        report.packs += 1;
                        report.bytes += sent;
                        report.damaged_blobs += damaged;
                        self.learn(&idx);
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_err {
                // A pack that vanished (gc) is planned again; anything
                // else stops the push.
                let vanished = matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
                if !vanished || attempt == 2 {
                    return Err(e);
                }
            }
        }
        if let Some(id) = needed.iter().find(|id| !self.on_remote(id)) {
            return Err(Error::Corrupt(format!(
                "snapshot {} cannot be replicated: its chunk {id} is damaged or missing locally (run `rewindfs verify --read-data`)",
                rec.id
            )));
        }
        // No other writer may have deleted what this record needs since
        // it was uploaded: the lease is still ours.
        lease.check()?;
        let key = layout::record(rec.id);
        if self.client.put(&key, Bytes::copy_from_slice(bytes), true)? == Put::AlreadyExists {
            let theirs = self.client.get(&key, MAX_SMALL_OBJECT)?.unwrap_or_default();
            // Ours already (an upload whose answer was lost), or the
            // version before a local `forget` rewrote it (the same
            // snapshot: same time, name, source and label): kept.
            // Anything else is another snapshot with this id.
            let same = theirs[..] == bytes[..]
                || repo
                    .decode_record(&theirs, rec.id)
                    .is_ok_and(|t| same_snapshot(rec, &t));
            if !same {
                return Err(Error::InvalidInput(format!(
                    "{}/{key} holds another snapshot {} than this repository's (another machine writes to this place, or this repository's ids were reused, e.g. after a rollback); nothing was overwritten",
                    self.client.name(),
                    rec.id
                )));
            }
        }
        let sum = blake3::hash(bytes).to_hex().to_string();
        self.log
            .lock()
            .append(&[UploadLog::record_line(rec.id, &sum)])?;
        report.records += 1;
        Ok(())
    }

    /// Upload packs on `concurrency` threads; each result is logged as
    /// soon as the server acknowledged it.
    fn upload_packs(
        &self,
        repo: &Repository,
        packs: Vec<u64>,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Vec<Result<(PackIdx, u64, u64)>> {
        let n = self.config.concurrency.clamp(1, 64).min(packs.len().max(1));
        let (_, results) = pool::run(
            n,
            || (),
            |_, pack: u64| self.upload_pack(repo, pack, on_bytes),
            |feed| {
                for p in packs {
                    if !feed.send(p) {
                        break;
                    }
                }
            },
        );
        results
    }

    /// Read, check and upload one pack and its blob list.
    fn upload_pack(
        &self,
        repo: &Repository,
        pack: u64,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<(PackIdx, u64, u64)> {
        let dir = repo.pack_reader().dir();
        let name = pack_file_name(pack);
        if let Ok(st) = dir.stat_at(&name) {
            if st.st_size as u64 > MAX_PUT {
                return Err(Error::InvalidInput(format!(
                    "pack {} is {} bytes: larger than one S3 PUT (5 GiB); lower pack_target_size in config.json (new packs follow it)",
                    dir.join(&name).display(),
                    st.st_size
                )));
            }
        }
        let data = dir.read(&name, 1 << 36)?.ok_or_else(|| {
            Error::io(
                "read pack",
                dir.join(&name),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })?;
        let scan = scan_pack_bytes(&data, pack);
        let mut blobs = Vec::with_capacity(scan.blobs.len());
        let mut damaged = 0u64;
        for b in &scan.blobs {
            let start = (b.location.offset + HEADER_LEN as u64) as usize;
            let payload = &data[start..start + b.location.stored_len as usize];
            if b.header.stored_sum_matches(payload) {
                blobs.push((b.header.id, b.location));
            } else {
                damaged += 1;
                tracing::warn!(
                    "chunk {} in {} is damaged and is not replicated",
                    b.header.id,
                    dir.join(&name).display()
                );
            }
        }
        let idx = PackIdx {
            pack,
            pack_len: data.len() as u64,
            blobs,
        };
        let idx_bytes = idx.encode();
        let sent = data.len() as u64 + idx_bytes.len() as u64;
        self.throttle.take(sent);
        let len = data.len() as u64;
        // Overwrite, not create: a pack id names one content forever,
        // and a retry after a crash sends the same bytes.
        self.client
            .put(&layout::pack(pack), Bytes::from(data), false)?;
        on_bytes(len);
        self.client
            .put(&layout::idx(pack), Bytes::from(idx_bytes), false)?;
        self.log.lock().append(&[UploadLog::pack_line(pack, len)])?;
        Ok((idx, sent, damaged))
    }

    /// Bring the log in line with the remote (see the module doc), and
    /// learn which blobs the remote holds. Returns how many objects were
    /// adopted.
    fn reconcile(&mut self, repo: &Repository) -> Result<u64> {
        let ours = &repo.config.repo_id;
        match self.client.get(layout::CONFIG, MAX_SMALL_OBJECT)? {
            Some(b) => {
                let theirs = remote_repo_id(&b).ok_or_else(|| {
                    Error::Corrupt(format!(
                        "{}/{}: not a rewindfs config",
                        self.client.name(),
                        layout::CONFIG
                    ))
                })?;
                if &theirs != ours {
                    return Err(Error::InvalidInput(format!(
                        "{} already holds another repository (id {theirs}); give this one its own place with --host or another prefix",
                        self.client.name()
                    )));
                }
                self.upload_keys(repo)?;
            }
            None => {
                let mut log = self.log.lock();
                if log.config.is_some() {
                    tracing::warn!(
                        "{} was emptied since the last push: everything is uploaded again",
                        self.client.name()
                    );
                    let mut lines: Vec<String> = log
                        .packs
                        .keys()
                        .map(|p| UploadLog::forget_pack_line(*p))
                        .collect();
                    lines.extend(
                        log.records
                            .keys()
                            .map(|r| UploadLog::forget_record_line(*r)),
                    );
                    log.append(&lines)?;
                }
                // The wrapped keys of an encrypted repository first: a
                // remote repository is readable (with the passphrase) once
                // it has a config.
                self.upload_keys(repo)?;
                // The local snapshot policy stays local: it can name paths
                // (globs), and a pulled repository must not inherit rules
                // a bucket writer chose.
                let mut cfg = repo.config.clone();
                cfg.policy = None;
                let cfg = serde_json::to_vec_pretty(&cfg)
                    .map_err(|e| Error::InvalidInput(e.to_string()))?;
                if self.client.put(layout::CONFIG, Bytes::from(cfg), true)? == Put::AlreadyExists {
                    return Err(Error::InvalidInput(format!(
                        "{}: another repository was registered there at the same moment",
                        self.client.name()
                    )));
                }
            }
        }
        let mut log = self.log.lock();
        if log.config.as_deref() != Some(ours.as_str()) {
            log.append(&[UploadLog::config_line(ours)])?;
        }
        // Packs: whole on the remote (pack and .idx) or not at all.
        let mut pack_sizes = HashMap::new();
        let mut idxs = HashSet::new();
        for (key, size) in self.client.list(layout::PACKS_DIR)? {
            if let Some(p) = layout::parse_pack(&key) {
                pack_sizes.insert(p, size);
            } else if let Some(p) = layout::parse_idx(&key) {
                idxs.insert(p);
            }
        }
        let mut lines = Vec::new();
        for (p, len) in &log.packs {
            if pack_sizes.get(p) != Some(len) || !idxs.contains(p) {
                lines.push(UploadLog::forget_pack_line(*p));
            }
        }
        log.append(&lines)?;
        let to_read: Vec<(u64, u64, bool)> = pack_sizes
            .iter()
            .filter(|(p, _)| idxs.contains(p))
            .map(|(p, size)| (*p, *size, !log.packs.contains_key(p)))
            .collect();
        drop(log);
        let client = &self.client;
        let (_, got) = pool::run(
            self.config.concurrency.clamp(1, 64),
            || (),
            |_, (p, size, adopt): (u64, u64, bool)| {
                let b = client.get(&layout::idx(p), (super::idx::MAX_ENTRIES * 64) as u64)?;
                let Some(b) = b else { return Ok(None) };
                let what = format!("{}/{}", client.name(), layout::idx(p));
                match PackIdx::decode(&b, p, &what) {
                    Ok(i) if i.pack_len == size => Ok(Some((i, adopt))),
                    Ok(_) => Ok(None),
                    Err(e) => {
                        tracing::warn!("{e}; the pack is uploaded again if needed");
                        Ok(None)
                    }
                }
            },
            |feed| {
                for t in to_read {
                    feed.send(t);
                }
            },
        );
        let mut adopted = 0;
        let mut lines = Vec::new();
        for r in got {
            let r: Result<Option<(PackIdx, bool)>> = r;
            if let Some((i, adopt)) = r? {
                if adopt {
                    lines.push(UploadLog::pack_line(i.pack, i.pack_len));
                    adopted += 1;
                }
                self.learn(&i);
            }
        }
        // Records the remote has but the log lacks: adopted when they are
        // this repository's bytes.
        let local: HashMap<u64, Vec<u8>> = repo.index().snapshots()?.into_iter().collect();
        let mut log = self.log.lock();
        for (key, _) in self.client.list(layout::SNAPSHOTS_DIR)? {
            let Some(id) = layout::parse_record(&key) else {
                continue;
            };
            if log.records.contains_key(&id) {
                continue;
            }
            let Some(mine) = local.get(&id) else { continue };
            if let Some(b) = self.client.get(&key, MAX_SMALL_OBJECT)? {
                if b[..] == mine[..] {
                    lines.push(UploadLog::record_line(
                        id,
                        blake3::hash(mine).to_hex().as_str(),
                    ));
                    adopted += 1;
                }
            }
        }
        log.append(&lines)?;
        Ok(adopted)
    }

    /// Take in a pack the remote holds.
    fn learn(&mut self, idx: &PackIdx) {
        for (id, _) in &idx.blobs {
            self.remote_chunks.insert(*id, idx.pack);
        }
        self.known_packs.insert(idx.pack);
        self.doomed.remove(&idx.pack);
    }

    /// Is the blob on the remote, in a pack that is not going away?
    fn on_remote(&self, id: &ChunkId) -> bool {
        self.remote_chunks
            .get(id)
            .is_some_and(|p| !self.doomed.contains(p))
    }

    /// Are all the packs this pusher knows still on the remote?
    fn still_there(&self) -> Result<bool> {
        let listed: HashSet<u64> = self
            .client
            .list(layout::PACKS_DIR)?
            .iter()
            .filter_map(|(k, _)| layout::parse_idx(k))
            .collect();
        Ok(self.known_packs.iter().all(|p| listed.contains(p)))
    }

    /// Upload the key files the remote lacks (they never change; a new
    /// one is a new name).
    fn upload_keys(&self, repo: &Repository) -> Result<()> {
        let names = keys::key_files(repo.dir())?;
        if names.is_empty() {
            return Ok(());
        }
        let have: HashSet<String> = self
            .client
            .list(layout::KEYS_DIR)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let dir = repo.dir().open_dir(keys::KEYS_DIR)?;
        for n in names {
            if have.contains(&layout::key(&n)) {
                continue;
            }
            let b = dir
                .read(&n, MAX_SMALL_OBJECT)?
                .ok_or_else(|| Error::Corrupt(format!("key file {n} vanished")))?;
            self.client.put(&layout::key(&n), Bytes::from(b), false)?;
        }
        Ok(())
    }

    /// Take in what another pusher of this repository logged since (the
    /// blob lists of packs it uploaded).
    fn refresh(&mut self, repo: &Repository) -> Result<()> {
        let fresh = UploadLog::open(repo.dir(), &self.config.name)?;
        let new: Vec<(u64, u64)> = fresh
            .packs
            .iter()
            .filter(|(p, _)| !self.known_packs.contains(p))
            .map(|(p, len)| (*p, *len))
            .collect();
        *self.log.lock() = fresh;
        for (p, len) in new {
            let what = format!("{}/{}", self.client.name(), layout::idx(p));
            if let Some(b) = self
                .client
                .get(&layout::idx(p), (super::idx::MAX_ENTRIES * 64) as u64)?
            {
                match PackIdx::decode(&b, p, &what) {
                    Ok(i) if i.pack_len == len => self.learn(&i),
                    Ok(_) => tracing::warn!("{what}: it does not match the logged pack; the pack is uploaded again if needed"),
                    Err(e) => tracing::warn!("{e}; the pack is uploaded again if needed"),
                }
            }
        }
        Ok(())
    }

    /// How far behind the remote is (from the log; no request).
    pub fn lag(&self, repo: &Repository) -> Result<Lag> {
        let log = self.log.lock();
        let mut lag = Lag::default();
        for rec in repo.snapshots()? {
            if log.records.contains_key(&rec.id) {
                lag.newest_replicated = Some(rec.id);
            } else {
                lag.records += 1;
                lag.bytes += rec.stats.stored_bytes;
                lag.oldest_pending.get_or_insert((rec.id, rec.time_ns));
            }
        }
        Ok(lag)
    }
}

/// Are two records the same snapshot (one may be a `forget` rewrite of
/// the other: those keep the id, time, name, source and label)?
fn same_snapshot(a: &SnapshotRecord, b: &SnapshotRecord) -> bool {
    a.id == b.id
        && a.time_ns == b.time_ns
        && a.name == b.name
        && a.source == b.source
        && a.label == b.label
}

/// The `repo_id` of a config.json's bytes.
pub fn remote_repo_id(b: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        repo_id: String,
    }
    serde_json::from_slice::<Id>(b).ok().map(|i| i.repo_id)
}
