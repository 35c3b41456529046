//! A repository: config, lock, packs, snapshot records and the index.
//!
//! ```text
//! REPO/
//!   config.json        format version, block size, compression level
//!   lock               flock()ed by the process that holds the repository
//!   packs/*.pack       blobs (the truth)
//!   snapshots/*.json   snapshot records (the truth; a snapshot exists once
//!                      its record is durable)
//!   index/             sled index (a cache; `rebuild-index` recreates it)
//! ```

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::index::Index;
use crate::snapshot::manifest::{Manifest, MANIFEST_PART_LEN};
use crate::snapshot::{Kind, SnapshotRecord, Stats, Tree};
use crate::store::pack::{self, list_packs, scan_pack, PackReader, PackWriter};
use crate::store::{BlobKind, ChunkId};
use crate::util::{durable, time};

mod writer;

pub use writer::ChunkWriter;

pub const FORMAT_VERSION: u32 = 1;
pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;
pub const MIN_BLOCK_SIZE: u32 = 64 << 10;
pub const MAX_BLOCK_SIZE: u32 = 8 << 20;
pub const DEFAULT_COMPRESSION: i32 = 3;
pub const DEFAULT_PACK_TARGET: u64 = 64 << 20;
const INDEX_CACHE_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub format_version: u32,
    pub block_size: u32,
    /// zstd level; 0 stores everything raw.
    pub compression_level: i32,
    pub pack_target_size: u64,
    pub repo_id: String,
    pub created: String,
    /// Snapshot policy of live mounts (command-line flags win).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::flusher::policy::PolicyConfig>,
}

impl RepoConfig {
    pub fn new(block_size: u32, compression_level: i32) -> Result<RepoConfig> {
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(Error::InvalidInput(format!(
                "block size {block_size} must be a power of two from 64 KiB to 8 MiB"
            )));
        }
        if !(0..=19).contains(&compression_level) {
            return Err(Error::InvalidInput(format!(
                "compression level {compression_level} must be 0 (off) to 19"
            )));
        }
        let now = time::now_ns();
        let seed = format!(
            "{now}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        Ok(RepoConfig {
            format_version: FORMAT_VERSION,
            block_size,
            compression_level,
            pack_target_size: DEFAULT_PACK_TARGET,
            repo_id: ChunkId::of(seed.as_bytes()).to_hex()[..32].to_string(),
            created: time::rfc3339(now),
            policy: None,
        })
    }
}

pub struct Repository {
    root: PathBuf,
    pub config: RepoConfig,
    index: Index,
    packs: PackReader,
    _lock: File,
}

fn config_path(root: &Path) -> PathBuf {
    root.join("config.json")
}

fn read_config(root: &Path) -> Result<RepoConfig> {
    let p = config_path(root);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotARepository {
                path: root.to_path_buf(),
            })
        }
        Err(e) => return Err(Error::io("read", p, e)),
    };
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    let v: Version = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Corrupt(format!("{}: {e}", p.display())))?;
    if v.format_version != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            path: root.to_path_buf(),
            found: v.format_version,
            supported: FORMAT_VERSION,
        });
    }
    let c: RepoConfig = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Corrupt(format!("{}: {e}", p.display())))?;
    RepoConfig::new(c.block_size, c.compression_level)?;
    Ok(c)
}

/// Take the repository lock, or say who holds it.
fn lock(root: &Path) -> Result<File> {
    let p = root.join("lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&p)
        .ctx("open", &p)?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            let holder = match s.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            return Err(Error::Locked {
                path: root.to_path_buf(),
                holder,
            });
        }
        Err(e) => return Err(Error::io("lock", p, e.into())),
    }
    f.set_len(0).ctx("write", &p)?;
    f.rewind().ctx("write", &p)?;
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}

impl Repository {
    /// Create a repository in `root` (created, or an existing empty
    /// directory).
    pub fn init(root: &Path, block_size: u32, compression_level: i32) -> Result<RepoConfig> {
        let config = RepoConfig::new(block_size, compression_level)?;
        if config_path(root).exists() {
            return Err(Error::AlreadyExists {
                path: root.to_path_buf(),
            });
        }
        if root.exists() {
            if !root.is_dir() {
                return Err(Error::InvalidInput(format!(
                    "{} exists and is not a directory",
                    root.display()
                )));
            }
            let mut it = std::fs::read_dir(root).ctx("read directory", root)?;
            if it.next().is_some() {
                return Err(Error::InvalidInput(format!(
                    "{} is not empty; a repository needs a new or empty directory",
                    root.display()
                )));
            }
        } else {
            if let Some(parent) = root.parent() {
                if !parent.as_os_str().is_empty() && !parent.is_dir() {
                    return Err(Error::InvalidInput(format!(
                        "parent directory {} does not exist",
                        parent.display()
                    )));
                }
            }
            durable::create_private_dir(root)?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .ctx("chmod", root)?;
        let _lock = lock(root)?;
        for d in ["packs", "snapshots"] {
            durable::create_private_dir(&root.join(d))?;
        }
        let index = Index::open(&root.join("index"), INDEX_CACHE_BYTES)?;
        index.flush()?;
        drop(index);
        let bytes =
            serde_json::to_vec_pretty(&config).map_err(|e| Error::InvalidInput(e.to_string()))?;
        // The config is written last: a directory without it is not a
        // repository, so a crash during init leaves nothing half-made.
        durable::write_atomic(&config_path(root), &bytes)?;
        if let Some(parent) = root.parent() {
            if !parent.as_os_str().is_empty() {
                durable::fsync_dir(parent)?;
            }
        }
        Ok(config)
    }

    /// Open a repository, taking its lock and bringing the index up to date
    /// with the packs and snapshot records on disk.
    pub fn open(root: &Path) -> Result<Repository> {
        let config = read_config(root)?;
        let _lock = lock(root)?;
        let index_path = root.join("index");
        let index = match Index::open(&index_path, INDEX_CACHE_BYTES) {
            Ok(i) => i,
            // sled 0.34 can refuse to open after a kill. The index holds
            // nothing that the packs and records do not: keep the damaged
            // one aside for inspection and rebuild.
            Err(Error::IndexCorrupt { detail, .. }) => {
                let (index, report) = rebuild_locked(root, "index.damaged")?;
                tracing::warn!(
                    "the index was damaged ({detail}); moved it to {} and rebuilt it from {} packs and {} snapshot records",
                    report.moved_to.as_deref().unwrap_or(Path::new("?")).display(),
                    report.packs,
                    report.snapshots
                );
                index
            }
            Err(e) => return Err(e),
        };
        let repo = Repository {
            root: root.to_path_buf(),
            packs: PackReader::new(&root.join("packs")),
            config,
            index,
            _lock,
        };
        repo.reconcile()?;
        Ok(repo)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn pack_reader(&self) -> &PackReader {
        &self.packs
    }

    /// Index the blobs of packs that are not marked indexed (written by a
    /// process that stopped before marking them), and sync the snapshot
    /// list with `snapshots/`.
    fn reconcile(&self) -> Result<()> {
        let mut changed = false;
        let mut newly = Vec::new();
        for id in list_packs(&self.packs_dir())? {
            if self.index.is_pack_indexed(id)? {
                continue;
            }
            let scan = scan_pack(&self.packs_dir().join(pack::pack_file_name(id)), id)?;
            for (start, end) in &scan.damaged {
                tracing::warn!(
                    pack = %pack::pack_file_name(id),
                    "bytes {start}..{end} do not parse as blobs (torn write or damage); ignored"
                );
            }
            for b in &scan.blobs {
                self.index
                    .insert_chunk_if_absent(&b.header.id, &b.location)?;
            }
            newly.push(id);
            changed = true;
        }
        if changed {
            self.index.flush()?;
            self.index.mark_packs_indexed(&newly)?;
        }
        let on_disk = self.list_record_files()?;
        let indexed: HashMap<u64, Vec<u8>> = self.index.snapshots()?.into_iter().collect();
        for (id, path) in &on_disk {
            if !indexed.contains_key(id) {
                let bytes = std::fs::read(path).ctx("read", path)?;
                SnapshotRecord::from_json(&bytes)?;
                self.index.put_snapshot(*id, &bytes)?;
                changed = true;
            }
        }
        for id in indexed.keys() {
            if !on_disk.contains_key(id) {
                self.index.remove_snapshot(*id)?;
                changed = true;
            }
        }
        if changed {
            self.index.flush()?;
        }
        Ok(())
    }

    fn list_record_files(&self) -> Result<HashMap<u64, PathBuf>> {
        let dir = self.snapshots_dir();
        let mut out = HashMap::new();
        for e in std::fs::read_dir(&dir).ctx("read directory", &dir)? {
            let e = e.ctx("read directory", &dir)?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = SnapshotRecord::parse_file_name(name) {
                out.insert(id, e.path());
            } else if name.starts_with(".tmp.") {
                // An uncommitted record from a crashed run (we hold the lock).
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(out)
    }

    /// All snapshots, in id order.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        self.index
            .snapshots()?
            .into_iter()
            .map(|(_, json)| SnapshotRecord::from_json(&json))
            .collect()
    }

    /// Read a blob (chunk or manifest part) by id, verified.
    pub fn read_blob(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.read_blob_into(id, Vec::new())
    }

    /// [`Repository::read_blob`] into `spare`'s allocation when it is
    /// large enough.
    pub fn read_blob_into(&self, id: &ChunkId, spare: Vec<u8>) -> Result<Vec<u8>> {
        let loc = self
            .index
            .get_chunk(id)?
            .ok_or_else(|| Error::MissingChunk(id.to_hex()))?;
        self.packs.read_into(&loc, id, spare)
    }

    pub fn load_manifest(&self, rec: &SnapshotRecord) -> Result<Manifest> {
        let mut bytes = Vec::with_capacity(rec.manifest_len as usize);
        for id in rec.manifest_ids()? {
            bytes.extend_from_slice(
                &self
                    .read_blob(&id)
                    .map_err(|e| Error::Corrupt(format!("manifest of snapshot {}: {e}", rec.id)))?,
            );
        }
        if bytes.len() as u64 != rec.manifest_len {
            return Err(Error::Corrupt(format!(
                "manifest of snapshot {} is {} bytes, its record says {}",
                rec.id,
                bytes.len(),
                rec.manifest_len
            )));
        }
        Manifest::decode(&bytes)
    }

    /// The chain a snapshot needs, oldest (the full) first.
    pub fn chain(
        &self,
        rec: &SnapshotRecord,
        all: &[SnapshotRecord],
    ) -> Result<Vec<SnapshotRecord>> {
        let by_id: HashMap<u64, &SnapshotRecord> = all.iter().map(|r| (r.id, r)).collect();
        let mut chain = vec![rec.clone()];
        let mut cur = rec;
        while cur.kind != Kind::Full {
            let pid = cur.parent.ok_or_else(|| {
                Error::Corrupt(format!(
                    "snapshot {} is {} without a parent",
                    cur.id,
                    cur.kind.as_str()
                ))
            })?;
            cur = by_id.get(&pid).copied().ok_or_else(|| {
                Error::Corrupt(format!(
                    "snapshot {} needs snapshot {pid}, which is missing",
                    rec.id
                ))
            })?;
            if chain.len() > all.len() {
                return Err(Error::Corrupt(format!(
                    "snapshot {} has a parent cycle",
                    rec.id
                )));
            }
            chain.push(cur.clone());
        }
        chain.reverse();
        Ok(chain)
    }

    /// The tree a snapshot captured: its chain's manifests applied in order.
    pub fn resolve(&self, rec: &SnapshotRecord) -> Result<Tree> {
        let all = self.snapshots()?;
        let mut tree = Tree::default();
        for r in self.chain(rec, &all)? {
            let m = self.load_manifest(&r)?;
            tree.apply(&m)?;
        }
        Ok(tree)
    }

    /// A writer for one capture (it runs its own pack-writing thread).
    pub fn writer(&self) -> Result<ChunkWriter<'_>> {
        ChunkWriter::new(
            &self.index,
            PackWriter::new(&self.packs_dir(), self.config.pack_target_size)?,
            self.config.compression_level,
        )
    }

    /// Store the manifest, make everything durable, then write the record:
    /// the snapshot exists from the moment the record's rename is durable.
    pub fn commit_snapshot(
        &self,
        writer: &ChunkWriter<'_>,
        manifest: &Manifest,
        draft: SnapshotDraft,
    ) -> Result<SnapshotRecord> {
        let bytes = manifest.encode()?;
        let mut parts = Vec::new();
        for part in bytes.chunks(MANIFEST_PART_LEN) {
            let id = ChunkId::of(part);
            writer.store(BlobKind::Manifest, id, part)?;
            parts.push(id.to_hex());
        }
        writer.commit()?;
        let id = self
            .list_record_files()?
            .keys()
            .copied()
            .chain(self.index.snapshots()?.into_iter().map(|(id, _)| id))
            .max()
            .unwrap_or(0)
            + 1;
        let mut stats = draft.stats;
        stats.stored_bytes = writer.stored_bytes();
        stats.new_chunks = writer.new_chunks();
        let rec = SnapshotRecord {
            format: crate::snapshot::model::RECORD_FORMAT,
            id,
            kind: draft.kind,
            parent: draft.parent,
            full: draft.full.unwrap_or(id),
            time: time::rfc3339(draft.time_ns),
            time_ns: draft.time_ns,
            label: draft.label,
            name: time::snapshot_name(draft.time_ns, id),
            source: draft.source,
            block_size: self.config.block_size,
            manifest: parts,
            manifest_len: bytes.len() as u64,
            stats,
        };
        let json = rec.to_json()?;
        crate::util::fault::inject("manifest-commit")?;
        durable::write_atomic(
            &self.snapshots_dir().join(SnapshotRecord::file_name(id)),
            &json,
        )?;
        self.index.put_snapshot(id, &json)?;
        self.index.flush()?;
        Ok(rec)
    }
}

/// What the capture knows of a snapshot before it is committed.
pub struct SnapshotDraft {
    pub kind: Kind,
    pub parent: Option<u64>,
    /// The chain's full snapshot (`None` for a full one).
    pub full: Option<u64>,
    pub time_ns: i64,
    pub label: Option<String>,
    pub source: String,
    pub stats: Stats,
}

/// Recreate the index from `packs/` and `snapshots/`. The old index is
/// moved aside (never deleted).
pub fn rebuild_index(root: &Path) -> Result<RebuildReport> {
    read_config(root)?;
    let _lock = lock(root)?;
    rebuild_locked(root, "index.old").map(|(_, r)| r)
}

/// Rebuild with the repository lock held; the old index (if any) is
/// renamed to `<aside_prefix>-<time>`.
fn rebuild_locked(root: &Path, aside_prefix: &str) -> Result<(Index, RebuildReport)> {
    let index_path = root.join("index");
    let mut moved_to = None;
    if index_path.exists() {
        let aside = root.join(format!(
            "{aside_prefix}-{}",
            time::rfc3339_nanos(time::now_ns()).replace(':', ".")
        ));
        std::fs::rename(&index_path, &aside).ctx("move aside", &index_path)?;
        durable::fsync_dir(root)?;
        moved_to = Some(aside);
    }
    let index = Index::open(&index_path, INDEX_CACHE_BYTES)?;
    let mut report = RebuildReport {
        moved_to,
        ..Default::default()
    };
    let packs_dir = root.join("packs");
    let ids = list_packs(&packs_dir)?;
    for id in &ids {
        let scan = scan_pack(&packs_dir.join(pack::pack_file_name(*id)), *id)?;
        for (s, e) in &scan.damaged {
            report.damaged.push(format!(
                "{}: bytes {s}..{e} unreadable",
                pack::pack_file_name(*id)
            ));
        }
        for b in &scan.blobs {
            if index.insert_chunk_if_absent(&b.header.id, &b.location)? {
                report.blobs += 1;
            }
        }
        report.packs += 1;
    }
    index.flush()?;
    index.mark_packs_indexed(&ids)?;
    let snaps = root.join("snapshots");
    for e in std::fs::read_dir(&snaps).ctx("read directory", &snaps)? {
        let e = e.ctx("read directory", &snaps)?;
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(SnapshotRecord::parse_file_name) else {
            continue;
        };
        let bytes = std::fs::read(e.path()).ctx("read", e.path())?;
        match SnapshotRecord::from_json(&bytes) {
            Ok(_) => {
                index.put_snapshot(id, &bytes)?;
                report.snapshots += 1;
            }
            Err(err) => report
                .damaged
                .push(format!("{}: {err}", e.path().display())),
        }
    }
    index.flush()?;
    Ok((index, report))
}

#[derive(Debug, Default)]
pub struct RebuildReport {
    pub moved_to: Option<PathBuf>,
    pub packs: u64,
    pub blobs: u64,
    pub snapshots: u64,
    pub damaged: Vec<String>,
}
