//! A repository: config, lock, packs, snapshot records and the index.
//!
//! ```text
//! REPO/                0700, owned by the user running rewindfs
//!   config.json        format version, block size, compression level
//!   lock               flock()ed by the process that holds the repository
//!   packs/*.pack       blobs (the truth)
//!   snapshots/*.json   snapshot records (the truth; a snapshot exists once
//!                      its record is durable)
//!   index/             sled index (a cache; `rebuild-index` recreates it)
//! ```
//!
//! Every file and directory is reached through the descriptor of the
//! directory holding it, with `O_NOFOLLOW` ([`Dir`]); the repository
//! directory itself is opened through [`trust::open_trusted`], which
//! refuses one another user could write or replace. Nothing here follows
//! a path that someone else can change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use rustix::fs::OFlags;

use crate::error::{Error, IoContext, Result};
use crate::index::Index;
use crate::snapshot::dirs::Stored;
use crate::snapshot::manifest::{Manifest, Meta, Node, MANIFEST_PART_LEN};
use crate::snapshot::model::MAX_RECORD_BYTES;
use crate::snapshot::{Kind, SnapshotRecord, Stats, Tree};
use crate::store::blob::chunk_id;
use crate::store::crypto::Crypto;
use crate::store::pack::{
    list_packs, scan_pack, Location, PackIds, PackReader, PackSource, PackWriter,
};
use crate::store::ChunkId;
use crate::util::dirfd::Dir;
use crate::util::time;

mod appended;
pub mod candidates;
pub mod config;
pub mod keys;
pub mod layout;
pub mod trust;
mod writer;

use config::read_config;
pub use config::RepoConfig;
use layout::{CONFIG, INDEX, INDEX_DAMAGED, INDEX_OLD, LOCK, PACKS, SNAPSHOTS};
pub use writer::ChunkWriter;

pub use config::{
    DEFAULT_BLOCK_SIZE, DEFAULT_COMPRESSION, DEFAULT_PACK_TARGET, FORMAT_VERSION, MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
};
/// The index's page cache (sled's `cache_capacity`) by default. sled
/// holds about three times this in live nodes once the cache is full
/// (measured with `cargo bench --bench index_memory`, 10^6 chunk ids:
/// 205 MiB in use for 64 MiB, 119 for 32, 80 for 16; a random lookup
/// 5.4, 8.6 and 10.3 us; docs/benchmarks.md).
pub const INDEX_CACHE_BYTES: u64 = 32 << 20;

static INDEX_CACHE: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(INDEX_CACHE_BYTES);

/// Set the index's page cache for the repositories this process opens
/// from now on (the live daemon's `--index-cache`).
pub fn set_index_cache(bytes: u64) {
    INDEX_CACHE.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// The index's page cache of the repositories this process opens.
pub fn index_cache_bytes() -> u64 {
    INDEX_CACHE.load(std::sync::atomic::Ordering::Relaxed)
}

/// How a repository was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Trusted and locked: everything may be written.
    ReadWrite,
    /// Nothing is written (read-only media, or a repository that failed
    /// the trust checks); the index lives in memory.
    ReadOnly { trusted: bool },
}

pub struct Repository {
    dir: Dir,
    snapshots_dir: Dir,
    pub config: RepoConfig,
    index: Index,
    packs: PackReader,
    /// The keys of an encrypted repository.
    crypto: Option<Arc<Crypto>>,
    access: Access,
    /// Records that could not be read or failed validation: id -> why.
    damaged: Mutex<BTreeMap<u64, String>>,
    /// Every pack writer of this process takes its ids here.
    pack_ids: PackIds,
    /// Held shared by a capture from choosing its base to committing its
    /// record (or giving up); `forget` and gc's barrier take it
    /// exclusively, so they never see a capture half-way.
    captures: RwLock<()>,
    /// One `forget` or gc at a time.
    lifecycle: Mutex<()>,
    /// Chunks gc is about to delete: no writer deduplicates against them
    /// (a capture that needs one stores a fresh copy).
    condemned: RwLock<HashSet<ChunkId>>,
    /// Bumped whenever a snapshot record is added, rewritten or removed:
    /// readers that keep a copy of the list know when it is stale.
    records_gen: std::sync::atomic::AtomicU64,
    /// Told (without waiting, from the thread that changed them) when the
    /// snapshot list changes: the views keep the kernel's caches current.
    records_watchers: Mutex<Vec<RecordsWatcher>>,
    /// Sources of chunks that readers still use although no snapshot may
    /// reference them any more (files of forgotten snapshots open in a
    /// view): gc keeps them.
    pins: Mutex<Vec<PinSource>>,
    /// What the daemon serving this repository plans next (set by its
    /// flusher; `snapshots` run through the daemon shows it).
    planned: Mutex<Option<Planned>>,
    /// gc's session marker (see [`candidates`]): dropped before the lock.
    gc_session: Option<candidates::Session>,
    _lock: Option<File>,
}

/// The next run of each scheduled kind, as the daemon's flusher sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Planned {
    pub runs: Vec<NextRunStatus>,
    /// The zone schedules are read in (IANA name).
    pub timezone: String,
    /// The windows fulls and differentials keep to (empty: any time).
    pub windows: String,
}

/// One kind's next run.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NextRunStatus {
    pub kind: String,
    /// RFC 3339 with the schedule zone's offset.
    pub at: String,
    /// Local time with the zone's abbreviation, for people.
    pub local: String,
    /// `cron "0 2 * * SUN"`, `every 15m`.
    pub rule: String,
    /// The rule's time fell outside the windows: this is the opening.
    #[serde(default)]
    pub waits_for_window: bool,
    /// Past due: taken as soon as something changes (or the snapshot in
    /// progress ends).
    #[serde(default)]
    pub overdue: bool,
}

/// What each way of opening a repository found (see `Repository::assemble`).
struct Parts {
    dir: Dir,
    snapshots_dir: Dir,
    config: RepoConfig,
    index: Index,
    packs: PackReader,
    crypto: Option<Arc<Crypto>>,
    pack_ids: PackIds,
    access: Access,
    damaged: BTreeMap<u64, String>,
    lock: Option<File>,
}

/// Lists chunks a reader still needs (see [`Repository::add_pins`]).
pub type PinSource = Arc<dyn Fn() -> Vec<ChunkId> + Send + Sync>;

/// Manifests this process read (`status` shows it: what a capture or an
/// unmount reads must not grow with the history).
static MANIFESTS_READ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn manifests_read() -> u64 {
    MANIFESTS_READ.load(std::sync::atomic::Ordering::Relaxed)
}

thread_local! {
    static UNCOUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` without counting the manifests and directory objects it reads
/// (the checks test builds add must not change what tests count).
pub fn uncounted<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            UNCOUNTED.with(|u| u.set(false));
        }
    }
    UNCOUNTED.with(|u| u.set(true));
    let _reset = Reset;
    f()
}

fn count(c: &std::sync::atomic::AtomicU64) {
    if !UNCOUNTED.with(|u| u.get()) {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Directory objects (format 3 manifests) this process read.
static DIR_OBJECTS_READ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Directory objects are read from the repository's packs.
impl crate::snapshot::dirs::Objects for Repository {
    fn put(&self, _bytes: &[u8]) -> Result<ChunkId> {
        Err(Error::InvalidInput(
            "directory objects are stored through a writer".into(),
        ))
    }

    fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
        count(&DIR_OBJECTS_READ);
        self.read_blob(id)
    }

    fn chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.read_blob(id)
    }
}

/// Directory objects stored through a capture's writer (deduplicated:
/// an object already stored is not written again), read from the
/// repository.
pub struct TreeStore<'w> {
    repo: &'w Repository,
    writer: &'w ChunkWriter<'w>,
}

impl crate::snapshot::dirs::Objects for TreeStore<'_> {
    fn put(&self, bytes: &[u8]) -> Result<ChunkId> {
        let id = self.writer.id(bytes);
        self.writer
            .store(crate::store::BlobKind::Manifest, id, bytes)?;
        Ok(id)
    }

    fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
        crate::snapshot::dirs::Objects::get(self.repo, id)
    }

    fn chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.repo.read_blob(id)
    }
}

/// Told that the snapshot list changed (see [`Repository::watch_records`]).
pub type RecordsWatcher = Arc<dyn Fn() + Send + Sync>;

/// Take the repository lock, or say who holds it.
fn lock(dir: &Dir) -> Result<File> {
    let p = dir.join(LOCK);
    let mut f = dir.open_file(LOCK, OFlags::RDWR | OFlags::CREATE, 0o600)?;
    // A lock this very process dropped can still be held for a moment by
    // a child it is forking (another thread starting a command): the
    // child shares the lock until its exec closes the descriptor. Such a
    // holder (our own pid in the file) is waited out briefly. A daemon
    // that is finishing (its mount is gone: the last snapshot, the
    // journal) is waited for, so that `umount` followed at once by `mount`
    // (fstab, systemd restarts, test suites) works: it says so in the file
    // ([`Repository::announce_stopping`]), and before it had the time to,
    // a daemon ([`Repository::announce_daemon`]) that no mount names as
    // its source any more is one.
    let start = std::time::Instant::now();
    let mut told = false;
    let repo_abs = dir.path().canonicalize().ok();
    let got = loop {
        let r = rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive);
        match r {
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let (pid, state) = holder(&f);
                let waited = start.elapsed();
                if pid == Some(std::process::id()) && waited < std::time::Duration::from_secs(2) {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                let finishing = match state {
                    HolderState::Stopping => true,
                    HolderState::Daemon => repo_abs
                        .as_deref()
                        .is_some_and(|r| !crate::util::mountinfo::serves_a_mount(r)),
                    HolderState::Other => false,
                };
                if finishing && waited < STOPPING_WAIT {
                    if !told && waited > std::time::Duration::from_secs(1) {
                        told = true;
                        tracing::warn!(
                            "waiting for the daemon (pid {}) that holds {} to finish its unmount",
                            pid.unwrap_or(0),
                            dir.path().display()
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                break r;
            }
            r => break r,
        }
    };
    match got {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let holder = match holder_pid(&f) {
                Some(pid) => format!(" (pid {pid})"),
                None => String::new(),
            };
            return Err(Error::Locked {
                path: dir.path().to_path_buf(),
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

/// How long a new holder waits for a daemon that is finishing its
/// unmount (its last snapshot reads only what changed since the one
/// before).
const STOPPING_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// The words a holder writes after its pid in the lock file: a daemon
/// (serving mounts), then one that is stopping.
const DAEMON: &str = "daemon";
const STOPPING: &str = "stopping";

/// What the lock file says of its holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HolderState {
    /// A command (or a daemon that has not said so yet).
    Other,
    Daemon,
    Stopping,
}

/// The pid the lock file names (its holder writes it).
fn holder_pid(f: &File) -> Option<u32> {
    holder(f).0
}

/// The lock file's holder: its pid and state.
fn holder(f: &File) -> (Option<u32>, HolderState) {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 64];
    let Ok(n) = f.read_at(&mut b, 0) else {
        return (None, HolderState::Other);
    };
    let text = String::from_utf8_lossy(&b[..n]);
    let mut words = text.split_whitespace();
    let pid = words.next().and_then(|w| w.parse().ok());
    let state = match words.next() {
        Some(STOPPING) => HolderState::Stopping,
        Some(DAEMON) => HolderState::Daemon,
        _ => HolderState::Other,
    };
    (pid, state)
}

/// Open a subdirectory of a trusted repository and check it.
fn trusted_subdir(dir: &Dir, name: &str) -> Result<Dir> {
    let d = dir.open_dir(name)?;
    trust::check_subdir(&d)?;
    Ok(d)
}

/// Is this error one a read-only open can get around (the repository is
/// another user's, or on read-only media, or not writable by us)?
fn calls_for_read_only(e: &Error) -> bool {
    match e {
        Error::Untrusted { .. } => true,
        Error::Io { source, .. } | Error::FsyncFailed { source, .. } => matches!(
            source.raw_os_error(),
            Some(libc::EROFS | libc::EACCES | libc::EPERM)
        ),
        Error::Index(m) => m.contains("Read-only") || m.contains("denied"),
        _ => false,
    }
}

impl Repository {
    /// Create a repository in `root` (created with mode 0700, or an
    /// existing empty directory that passes the trust checks).
    pub fn init(root: &Path, block_size: u32, compression_level: i32) -> Result<RepoConfig> {
        Repository::init_with(root, block_size, compression_level, None)
    }

    /// [`Repository::init`], encrypted with a new key wrapped under `key`
    /// when given (format 2, see keys.rs).
    pub fn init_with(
        root: &Path,
        block_size: u32,
        compression_level: i32,
        key: Option<&keys::KeySource>,
    ) -> Result<RepoConfig> {
        let mut config = RepoConfig::new(block_size, compression_level)?;
        if key.is_some() {
            config.format_version = config::ENCRYPTED_FORMAT_VERSION;
            config.encryption = Some(keys::EncryptionConfig::current());
        }
        if root.exists() && !root.is_dir() {
            return Err(Error::InvalidInput(format!(
                "{} exists and is not a directory",
                root.display()
            )));
        }
        let dir = trust::open_trusted(root, trust::Open::CreateIfMissing)?;
        if dir.stat_at(CONFIG).is_ok() {
            return Err(Error::AlreadyExists {
                path: dir.path().to_path_buf(),
            });
        }
        if !dir.names()?.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{} is not empty; a repository needs a new or empty directory",
                dir.path().display()
            )));
        }
        dir.chmod(0o700)?;
        let _lock = lock(&dir)?;
        dir.ensure_dir(PACKS, 0o700)?;
        dir.ensure_dir(SNAPSHOTS, 0o700)?;
        let index = Index::open(dir.ensure_dir(INDEX, 0o700)?, index_cache_bytes())?;
        index.flush()?;
        drop(index);
        candidates::start_at(&dir);
        if let Some(k) = key {
            keys::create(&dir, &config.repo_id, k)?;
        }
        let bytes =
            serde_json::to_vec_pretty(&config).map_err(|e| Error::InvalidInput(e.to_string()))?;
        // The config is written last: a directory without it is not a
        // repository, so a crash during init leaves nothing half-made.
        dir.write_atomic(CONFIG, &bytes)?;
        if let Some(parent) = dir.path().parent() {
            // Best effort: makes the new directory's entry durable.
            if let Ok(p) = Dir::open_path(parent) {
                let _ = p.fsync();
            }
        }
        Ok(config)
    }

    /// Open a repository for reading and writing: it must pass the trust
    /// checks; takes its lock and brings the index up to date with the
    /// packs and snapshot records on disk.
    pub fn open(root: &Path) -> Result<Repository> {
        let dir = trust::open_trusted(root, trust::Open::Existing)?;
        let config = read_config(&dir)?;
        let _lock = lock(&dir)?;
        let crypto = keys::unlock(&dir, &config)?;
        let packs_dir = trusted_subdir(&dir, PACKS)?;
        let snapshots_dir = trusted_subdir(&dir, SNAPSHOTS)?;
        let index = match dir.open_dir(INDEX) {
            Ok(d) => {
                trust::check_subdir(&d)?;
                Index::open(d, index_cache_bytes())
            }
            Err(_) => {
                // A missing index is rebuilt from the packs.
                Err(Error::IndexCorrupt {
                    path: dir.join(INDEX),
                    detail: "it is missing".into(),
                })
            }
        };
        let mut rebuilt = false;
        let index = match index {
            Ok(i) => i,
            // sled 0.34 can refuse to open after a kill. The index holds
            // nothing that the packs and records do not: keep the damaged
            // one aside for inspection and rebuild.
            Err(Error::IndexCorrupt { detail, .. }) => {
                let (index, report) = rebuild_locked(
                    &dir,
                    &packs_dir,
                    &snapshots_dir,
                    INDEX_DAMAGED,
                    crypto.as_deref(),
                )?;
                tracing::warn!(
                    "the index was damaged ({detail}); moved it to {} and rebuilt it from {} packs and {} snapshot records",
                    report.moved_to.as_deref().unwrap_or(Path::new("?")).display(),
                    report.packs,
                    report.snapshots
                );
                rebuilt = true;
                index
            }
            Err(e) => return Err(e),
        };
        let pack_ids = PackIds::after_existing(&packs_dir)?;
        let mut repo = Repository::assemble(Parts {
            packs: PackReader::new(packs_dir),
            crypto,
            snapshots_dir,
            dir,
            config,
            index,
            access: Access::ReadWrite,
            damaged: BTreeMap::new(),
            pack_ids,
            lock: Some(_lock),
        });
        repo.gc_session = candidates::Session::begin(&repo, rebuilt);
        repo.reconcile()?;
        Ok(repo)
    }

    /// Open a repository without writing anything to it: no lock file,
    /// no index (one is built in memory from the packs), nothing created.
    /// For read-only media and for repositories this process does not
    /// trust (another user's): the result says which.
    pub fn open_read_only(root: &Path) -> Result<Repository> {
        let (dir, trusted) = match trust::open_trusted(root, trust::Open::Existing) {
            Ok(d) => (d, true),
            Err(Error::Untrusted { .. }) => {
                let abs = root.canonicalize().ctx("resolve", root)?;
                (Dir::open_path(&abs)?, false)
            }
            Err(e) => return Err(e),
        };
        let config = read_config(&dir)?;
        // A shared lock where the lock file can be opened: a writer that
        // is not a daemon (a scan snapshot) is waited out by nothing, but
        // packs are append-only and records atomic, so reading is safe.
        let lock = dir.open_read(LOCK).ok().flatten().filter(|f| {
            rustix::fs::flock(f, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok()
        });
        let packs_dir = dir.open_dir(PACKS)?;
        let snapshots_dir = dir.open_dir(SNAPSHOTS)?;
        // Trusted only if nobody else can write what it reads either.
        let trusted = trusted
            && trust::check_subdir(&packs_dir).is_ok()
            && trust::check_subdir(&snapshots_dir).is_ok();
        let crypto = keys::unlock(&dir, &config)?;
        let index = Index::memory(&dir.join(INDEX));
        let report = fill_index(&index, &packs_dir, &snapshots_dir, false, crypto.as_deref())?;
        let pack_ids = PackIds::after_existing(&packs_dir)?;
        let repo = Repository::assemble(Parts {
            packs: PackReader::new(packs_dir),
            crypto,
            snapshots_dir,
            dir,
            config,
            index,
            access: Access::ReadOnly { trusted },
            damaged: report.damaged_records,
            pack_ids,
            lock,
        });
        Ok(repo)
    }

    /// Open a repository whose packs are elsewhere (a remote): `root`
    /// holds its config.json and snapshot records (a private copy), the
    /// blobs are `blobs`, read through `source`. Nothing is written; the
    /// index lives in memory. `trusted`: its content may set owners,
    /// setuid bits and device files on restore (see docs/security.md).
    pub fn open_with_source(
        root: &Path,
        source: Arc<dyn PackSource>,
        blobs: impl IntoIterator<Item = (ChunkId, Location)>,
        trusted: bool,
    ) -> Result<Repository> {
        let dir = trust::open_trusted(root, trust::Open::Existing)?;
        let config = read_config(&dir)?;
        let packs_dir = dir.ensure_dir(PACKS, 0o700)?;
        let snapshots_dir = trusted_subdir(&dir, SNAPSHOTS)?;
        let crypto = keys::unlock(&dir, &config)?;
        let index = Index::memory(&dir.join(INDEX));
        let entries: Vec<(ChunkId, Location)> = blobs.into_iter().collect();
        index.insert_chunks(&entries)?;
        let report = fill_index(&index, &packs_dir, &snapshots_dir, false, crypto.as_deref())?;
        Ok(Repository::assemble(Parts {
            packs: PackReader::with_source(packs_dir.try_clone()?, source),
            crypto,
            pack_ids: PackIds::after_existing(&packs_dir)?,
            snapshots_dir,
            dir,
            config,
            index,
            access: Access::ReadOnly { trusted },
            damaged: report.damaged_records,
            lock: None,
        }))
    }

    /// A repository from what an `open` found; the reader gets the keys
    /// and the in-process state starts empty.
    fn assemble(p: Parts) -> Repository {
        Repository {
            packs: p.packs.with_crypto(p.crypto.clone()),
            crypto: p.crypto,
            snapshots_dir: p.snapshots_dir,
            dir: p.dir,
            config: p.config,
            index: p.index,
            access: p.access,
            damaged: Mutex::new(p.damaged),
            pack_ids: p.pack_ids,
            captures: RwLock::new(()),
            lifecycle: Mutex::new(()),
            condemned: RwLock::new(HashSet::new()),
            pins: Mutex::new(Vec::new()),
            records_gen: Default::default(),
            records_watchers: Mutex::new(Vec::new()),
            planned: Mutex::new(None),
            gc_session: None,
            _lock: p.lock,
        }
    }

    /// Open for a command that only reads: read-write when possible (the
    /// persistent index is faster), read-only otherwise. Returns a note
    /// for the user when it fell back, and why.
    pub fn open_for_reading(root: &Path) -> Result<(Repository, Option<String>)> {
        match Repository::open(root) {
            Ok(r) => Ok((r, None)),
            Err(e) if calls_for_read_only(&e) => {
                let r = Repository::open_read_only(root)?;
                let how = match r.access {
                    Access::ReadOnly { trusted: false } => "reading it as untrusted data: nothing is written to it, and a restore from it creates no setuid, setgid or device files and sets no owners",
                    _ => "reading it without writing (the index is rebuilt in memory)",
                };
                Ok((r, Some(format!("{e}; {how}"))))
            }
            Err(e) => Err(e),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The repository directory.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    pub fn access(&self) -> Access {
        self.access
    }

    /// Whether what the repository holds may be trusted as much as the
    /// user running rewindfs (owners, setuid bits and device files are
    /// restored only then).
    pub fn trusted(&self) -> bool {
        self.access != Access::ReadOnly { trusted: false }
    }

    /// Whether this process may write the repository (caches included).
    pub fn is_writable(&self) -> bool {
        self.access == Access::ReadWrite
    }

    fn writable(&self) -> Result<()> {
        match self.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly { .. } => Err(Error::InvalidInput(format!(
                "repository {} is open read-only",
                self.root().display()
            ))),
        }
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn pack_reader(&self) -> &PackReader {
        &self.packs
    }

    /// The keys of an encrypted repository.
    pub fn crypto(&self) -> Option<&Crypto> {
        self.crypto.as_deref()
    }

    /// The id of `data` in this repository (keyed when it is encrypted).
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        chunk_id(self.crypto.as_deref(), data)
    }

    /// A snapshot record from its file's bytes (as the index holds them).
    pub fn decode_record(&self, bytes: &[u8], id: u64) -> Result<SnapshotRecord> {
        keys::decode_record(self.crypto.as_deref(), bytes, id)
    }

    /// Index the blobs of packs that are not marked indexed (written by a
    /// process that stopped before marking them), and sync the snapshot
    /// list with `snapshots/`. A pack that cannot be read, or a record
    /// that cannot be read or fails validation, is reported and skipped:
    /// the rest of the repository stays usable.
    fn reconcile(&self) -> Result<()> {
        let mut changed = false;
        let mut newly = Vec::new();
        let packs_dir = self.packs.dir();
        for id in list_packs(packs_dir)? {
            if self.index.is_pack_indexed(id)? {
                continue;
            }
            // A pack left by a process that stopped may not be on disk
            // yet: make it durable before anything can point into it.
            let scan = match sync_pack(packs_dir, id).and_then(|()| scan_pack(packs_dir, id)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("pack {id} cannot be read and is skipped: {e}");
                    continue;
                }
            };
            for (start, end) in &scan.damaged {
                tracing::warn!(
                    pack = id,
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
        let mut damaged = self.damaged.lock();
        // Every record is read: the files are the truth, and `forget`
        // rewrites records in place (a crash can leave the index with the
        // old copy of a rewritten one).
        for id in &on_disk {
            match read_record(&self.snapshots_dir, *id, self.crypto.as_deref()) {
                Ok((_, bytes)) if indexed.get(id) == Some(&bytes) => {}
                Ok((_, bytes)) => {
                    self.index.put_snapshot(*id, &bytes)?;
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!("snapshot {id} is damaged and left out: {e}");
                    damaged.insert(*id, e.to_string());
                }
            }
        }
        for id in indexed.keys() {
            if !on_disk.contains(id) {
                self.index.remove_snapshot(*id)?;
                changed = true;
            }
        }
        if changed {
            self.index.flush()?;
        }
        Ok(())
    }

    /// Ids of the record files in `snapshots/` (whether or not they
    /// parse). Leftover temporary files of a crashed commit are removed
    /// when we hold the lock.
    fn list_record_files(&self) -> Result<Vec<u64>> {
        self.record_file_ids(self.access == Access::ReadWrite)
    }

    /// Ids of the record files; `clean`: remove leftover temporary files
    /// (only on open: later, one may belong to a commit in progress).
    fn record_file_ids(&self, clean: bool) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for name in self.snapshots_dir.names()? {
            let Ok(name) = std::str::from_utf8(&name) else {
                continue;
            };
            if let Some(id) = SnapshotRecord::parse_file_name(name) {
                out.push(id);
            } else if name.starts_with(layout::TMP_PREFIX) && clean {
                // An uncommitted record from a crashed run (we hold the lock).
                let _ = self.snapshots_dir.remove_file(name);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Index every sound record file the index lacks (a commit whose
    /// index insert failed after its record became durable): `forget` and
    /// gc must see every snapshot that exists.
    pub fn sync_records(&self) -> Result<()> {
        self.writable()?;
        let indexed: HashSet<u64> = self
            .index
            .snapshots()?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let mut changed = false;
        for id in self.record_file_ids(false)? {
            if indexed.contains(&id) {
                continue;
            }
            match read_record(&self.snapshots_dir, id, self.crypto.as_deref()) {
                Ok((_, bytes)) => {
                    self.index.put_snapshot(id, &bytes)?;
                    changed = true;
                }
                Err(e) => {
                    self.damaged.lock().insert(id, e.to_string());
                }
            }
        }
        if changed {
            self.index.flush()?;
            self.records_changed();
        }
        Ok(())
    }

    /// All snapshots whose records are sound, in id order.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let mut out = Vec::new();
        for (id, json) in self.index.snapshots()? {
            match self.decode_record(&json, id) {
                Ok(r) => out.push(r),
                Err(e) => {
                    self.damaged
                        .lock()
                        .entry(id)
                        .or_insert_with(|| e.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Snapshots whose records are damaged (unreadable, unparsable or
    /// failing validation): id -> why. `verify` names them.
    pub fn damaged_records(&self) -> BTreeMap<u64, String> {
        self.damaged.lock().clone()
    }

    /// Read every record file and check it (for `verify`): id -> why, for
    /// records that cannot be read, fail validation, or no longer match
    /// their indexed copy (the file is the truth: `rebuild-index` then
    /// leaves such a snapshot out).
    pub fn check_record_files(&self) -> Result<BTreeMap<u64, String>> {
        let indexed: HashMap<u64, Vec<u8>> = self.index.snapshots()?.into_iter().collect();
        let mut out = self.damaged_records();
        for id in self.record_file_ids(false)? {
            match read_record(&self.snapshots_dir, id, self.crypto.as_deref()) {
                Err(e) => {
                    out.insert(id, e.to_string());
                }
                Ok((_, bytes)) => {
                    if indexed.get(&id).is_some_and(|i| *i != bytes) {
                        out.insert(
                            id,
                            "its record file changed after it was indexed (run `rewindfs rebuild-index`)"
                                .into(),
                        );
                    }
                }
            }
        }
        Ok(out)
    }

    /// Read a blob (chunk or manifest part) by id, verified.
    pub fn read_blob(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.read_blob_into(id, Vec::new())
    }

    /// The blob `id` will be read soon: when packs come from a remote,
    /// start fetching it (restore calls this as it plans, ahead of its
    /// workers). Does nothing for local packs, or an unknown id.
    pub fn prefetch_blob(&self, id: &ChunkId) {
        if !self.packs.is_remote() {
            return;
        }
        if let Ok(Some(loc)) = self.index.get_chunk(id) {
            self.packs.prefetch(&loc);
        }
    }

    /// [`Repository::read_blob`] into `spare`'s allocation when it is
    /// large enough.
    pub fn read_blob_into(&self, id: &ChunkId, spare: Vec<u8>) -> Result<Vec<u8>> {
        let loc = self
            .index
            .get_chunk(id)?
            .ok_or_else(|| Error::MissingChunk(id.to_hex()))?;
        match self.packs.read_into(&loc, id, spare) {
            Ok(v) => Ok(v),
            // gc moved the chunk (repack) between the lookup and the
            // read (its old pack removed, or emptied if it was the
            // highest): look it up again, once.
            Err(e) => match self.index.get_chunk(id)? {
                Some(now) if now != loc => self.packs.read_into(&now, id, Vec::new()),
                _ => Err(e),
            },
        }
    }

    /// The encoded manifest of a snapshot. Its length was checked against
    /// its parts when the record was read; memory grows with the bytes
    /// actually read, never with what a record claims.
    fn manifest_bytes(&self, rec: &SnapshotRecord) -> Result<Vec<u8>> {
        count(&MANIFESTS_READ);
        let ids = rec.manifest_ids()?;
        let cap = rec.manifest_len.min(64 << 20) as usize;
        let mut bytes = Vec::with_capacity(cap);
        for id in ids {
            let part = self
                .read_blob(&id)
                .map_err(|e| Error::Corrupt(format!("manifest of snapshot {}: {e}", rec.id)))?;
            if (bytes.len() + part.len()) as u64 > rec.manifest_len
                || part.len() > MANIFEST_PART_LEN
            {
                return Err(Error::Corrupt(format!(
                    "manifest of snapshot {} is longer than its record says ({} bytes)",
                    rec.id, rec.manifest_len
                )));
            }
            bytes.extend_from_slice(&part);
        }
        if bytes.len() as u64 != rec.manifest_len {
            return Err(Error::Corrupt(format!(
                "manifest of snapshot {} is {} bytes, its record says {}",
                rec.id,
                bytes.len(),
                rec.manifest_len
            )));
        }
        Ok(bytes)
    }

    /// The manifest of a snapshot, of any format.
    pub fn load_stored(&self, rec: &SnapshotRecord) -> Result<Stored> {
        let m = Stored::decode(&self.manifest_bytes(rec)?)
            .map_err(|e| Error::Corrupt(format!("manifest of snapshot {}: {e}", rec.id)))?;
        if m.block_size() != rec.block_size {
            return Err(Error::Corrupt(format!(
                "manifest of snapshot {} has block size {}, its record says {}",
                rec.id,
                m.block_size(),
                rec.block_size
            )));
        }
        Ok(m)
    }

    /// The manifest of a snapshot of format 1 or 2 (changes or a full
    /// list); a tree root (format 3) is refused: see [`Self::load_stored`].
    pub fn load_manifest(&self, rec: &SnapshotRecord) -> Result<Manifest> {
        match self.load_stored(rec)? {
            Stored::Changes(m) => Ok(m),
            Stored::Tree(_) => Err(Error::Corrupt(format!(
                "snapshot {} has a tree manifest where a list was expected",
                rec.id
            ))),
        }
    }

    /// Add to `out` every blob `rec` references: its manifest parts, the
    /// chunks its manifest names and, for a tree (format 3), the parts of
    /// its directory objects and the chunks of their files. Directory
    /// objects in `seen` are skipped (their references were added before:
    /// marking many snapshots that share most of their tree reads each
    /// shared directory once).
    pub fn references(
        &self,
        rec: &SnapshotRecord,
        seen: &mut HashSet<crate::snapshot::dirs::DirRef>,
        out: &mut HashSet<ChunkId>,
    ) -> Result<()> {
        out.extend(rec.manifest_ids()?);
        match self.load_stored(rec)? {
            Stored::Changes(m) => out.extend(m.block_ids()),
            Stored::Tree(root) => {
                let mut err = None;
                crate::snapshot::dirs::walk_new(self, &root, seen, &mut |r, d| {
                    out.extend(r.parts.iter().copied());
                    for e in &d.entries {
                        if let crate::snapshot::dirs::DNode::File {
                            size,
                            blocks,
                            segments,
                            lens,
                            ..
                        } = &e.node
                        {
                            out.extend(blocks.iter().copied());
                            out.extend(segments.iter().copied());
                            if !segments.is_empty() {
                                match crate::snapshot::dirs::file_blocks(
                                    self,
                                    *size,
                                    Vec::new(),
                                    lens.as_ref().map(|_| Vec::new()),
                                    segments,
                                    root.block_size,
                                ) {
                                    Ok(list) => out.extend(list.ids().iter().copied()),
                                    Err(e) => {
                                        err.get_or_insert(e);
                                    }
                                }
                            }
                        }
                    }
                })?;
                if let Some(e) = err {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Directory objects this process read (what `.snapshots` lookups,
    /// diffs and captures read must follow the change, not the tree).
    pub fn dir_objects_read() -> u64 {
        DIR_OBJECTS_READ.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A writer's view of the repository as a store of directory objects.
    pub fn tree_store<'w>(&'w self, writer: &'w ChunkWriter<'w>) -> TreeStore<'w> {
        TreeStore { repo: self, writer }
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
                let why = self
                    .damaged
                    .lock()
                    .get(&pid)
                    .map(|w| format!(", whose record is damaged ({w})"))
                    .unwrap_or_else(|| ", which is missing".to_string());
                Error::Corrupt(format!("snapshot {} needs snapshot {pid}{why}", rec.id))
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

    /// The tree a snapshot captured: read from its directory objects
    /// (format 3), or its chain's manifests applied in order (the nearest
    /// member stored as a tree, or the full, then the changes after it).
    pub fn resolve(&self, rec: &SnapshotRecord) -> Result<Tree> {
        let all = self.snapshots()?;
        self.resolve_in(rec, &all, &|_| None)
    }

    /// [`Self::resolve`] among `all`, starting from a tree `held` gives for
    /// a member of the chain when it has one.
    pub fn resolve_in(
        &self,
        rec: &SnapshotRecord,
        all: &[SnapshotRecord],
        held: &dyn Fn(u64) -> Option<Arc<Tree>>,
    ) -> Result<Tree> {
        if let Some(t) = held(rec.id) {
            return Ok((*t).clone());
        }
        let first = self.load_stored(rec)?;
        let first = match first {
            Stored::Tree(root) => return self.read_tree(&root),
            Stored::Changes(m) if rec.kind == Kind::Full => {
                let mut t = Tree::default();
                t.apply(&m)?;
                return Ok(t);
            }
            Stored::Changes(m) => m,
        };
        let chain = self.chain(rec, all)?;
        // Newest first: the changes to apply, until a start is found.
        let mut pending = vec![first];
        let mut start = Tree::default();
        for r in chain.iter().rev().skip(1) {
            if let Some(t) = held(r.id) {
                start = (*t).clone();
                break;
            }
            match self.load_stored(r)? {
                Stored::Tree(root) => {
                    start = self.read_tree(&root)?;
                    break;
                }
                Stored::Changes(m) => {
                    let full = r.kind == Kind::Full;
                    pending.push(m);
                    if full {
                        break;
                    }
                }
            }
        }
        for m in pending.iter().rev() {
            start.apply(m)?;
        }
        Ok(start)
    }

    /// What a snapshot holds on the way to `path` and below it, down to
    /// `levels` levels (`None`: all): for a tree (format 3) only those
    /// directories are read; earlier formats are resolved whole.
    pub fn subtree(
        &self,
        rec: &SnapshotRecord,
        path: &[u8],
        levels: Option<usize>,
    ) -> Result<Tree> {
        match self.load_stored(rec)? {
            Stored::Tree(root) => crate::snapshot::dirs::read_subtree(self, &root, path, levels),
            Stored::Changes(_) => self.resolve(rec),
        }
    }

    /// The whole tree below a format 3 root.
    pub fn read_tree(&self, root: &crate::snapshot::dirs::Root) -> Result<Tree> {
        crate::snapshot::dirs::read_tree(self, root)
    }

    /// The entries of two snapshots that can differ: for snapshots stored
    /// as trees, only the directories whose objects differ are read (a
    /// diff of the two results is the diff of the whole trees); older
    /// formats are resolved whole ([`Self::resolve_pair`]).
    pub fn changed_pair(&self, a: &SnapshotRecord, b: &SnapshotRecord) -> Result<(Tree, Tree)> {
        if let (Stored::Tree(ra), Stored::Tree(rb)) = (self.load_stored(a)?, self.load_stored(b)?) {
            return crate::snapshot::dirs::differing(self, &ra, &rb);
        }
        self.resolve_pair(a, b)
    }

    /// [`Self::changed_pair`] for a diff: for snapshots stored as trees,
    /// entries equal on both sides are left out too (memory follows the
    /// changes, not the directories they touch).
    pub fn changes_pair(&self, a: &SnapshotRecord, b: &SnapshotRecord) -> Result<(Tree, Tree)> {
        if let (Stored::Tree(ra), Stored::Tree(rb)) = (self.load_stored(a)?, self.load_stored(b)?) {
            return crate::snapshot::dirs::differing_changes(self, &ra, &rb);
        }
        self.resolve_pair(a, b)
    }

    /// The entry at `path` of a snapshot, reading only the directories on
    /// the way when it is stored as a tree.
    pub fn lookup(&self, rec: &SnapshotRecord, path: &[u8]) -> Result<Option<(Meta, Node)>> {
        match self.load_stored(rec)? {
            Stored::Tree(root) => {
                Ok(crate::snapshot::dirs::lookup(self, &root, path)?.map(|(m, n, _)| (m, n)))
            }
            Stored::Changes(_) => Ok(self.resolve(rec)?.get(path).cloned()),
        }
    }

    /// The trees of two snapshots, reading the part of their chains they
    /// share once (`diff A B` of a snapshot and its descendant decodes
    /// the full manifest once, not twice).
    pub fn resolve_pair(&self, a: &SnapshotRecord, b: &SnapshotRecord) -> Result<(Tree, Tree)> {
        let all = self.snapshots()?;
        let ta = self.resolve_in(a, &all, &|_| None)?;
        let tb = if a.id == b.id {
            ta.clone()
        } else {
            let shared = Arc::new(ta.clone());
            let aid = a.id;
            self.resolve_in(b, &all, &move |id| (id == aid).then(|| shared.clone()))?
        };
        Ok((ta, tb))
    }

    /// A writer for one capture (it runs its own pack-writing thread).
    pub fn writer(&self) -> Result<ChunkWriter<'_>> {
        self.writable()?;
        ChunkWriter::new(
            &self.index,
            &self.condemned,
            self.pack_writer()?,
            self.config.compression_level,
            self.crypto.as_deref(),
            self.config.format_version == config::FAST_SUMS_FORMAT_VERSION,
        )
        .map(|w| w.for_repo(self))
    }

    /// A pack writer taking its ids from the repository's allocator.
    pub fn pack_writer(&self) -> Result<PackWriter> {
        self.writable()?;
        Ok(PackWriter::with_ids(
            self.packs.dir().try_clone()?,
            self.config.pack_target_size,
            self.pack_ids.clone(),
        ))
    }

    /// The id the next new pack will get (packs below it existed, or were
    /// being written, when this was asked).
    pub fn next_pack_id(&self) -> u64 {
        self.pack_ids.peek()
    }

    /// Held by a capture from choosing its base until its record is
    /// committed or it gave up (see the field).
    pub fn capture_guard(&self) -> RwLockReadGuard<'_, ()> {
        self.captures.read()
    }

    /// Wait until no capture runs, and keep new ones from starting while
    /// the guard lives.
    pub fn exclude_captures(&self) -> RwLockWriteGuard<'_, ()> {
        self.captures.write()
    }

    /// One `forget` or gc at a time.
    pub fn lifecycle_guard(&self) -> MutexGuard<'_, ()> {
        self.lifecycle.lock()
    }

    /// [`Self::lifecycle_guard`] if no `forget` or gc holds it now.
    pub fn try_lifecycle_guard(&self) -> Option<MutexGuard<'_, ()>> {
        self.lifecycle.try_lock()
    }

    /// From now on no writer deduplicates against these chunks.
    pub fn condemn(&self, ids: HashSet<ChunkId>) {
        *self.condemned.write() = ids;
    }

    /// Take chunks out of the condemned set (referenced again).
    pub fn pardon(&self, ids: &[ChunkId]) {
        let mut c = self.condemned.write();
        for id in ids {
            c.remove(id);
        }
    }

    /// Whether `id` is condemned.
    pub fn is_condemned(&self, id: &ChunkId) -> bool {
        self.condemned.read().contains(id)
    }

    /// gc is done: nothing is condemned.
    pub fn clear_condemned(&self) {
        self.condemned.write().clear();
    }

    /// Changes whenever the snapshot list changes (see the field).
    pub fn records_generation(&self) -> u64 {
        self.records_gen.load(std::sync::atomic::Ordering::Acquire)
    }

    fn records_changed(&self) {
        self.records_gen
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let watchers: Vec<RecordsWatcher> = self.records_watchers.lock().clone();
        for w in watchers {
            w();
        }
    }

    /// Call `w` whenever the snapshot list changes. It runs on the
    /// thread that changed it, which may hold the repository's locks:
    /// it must only signal (never block, never call back in).
    pub fn watch_records(&self, w: RecordsWatcher) {
        self.records_watchers.lock().push(w);
    }

    /// Say in the lock file that this process is a daemon serving mounts
    /// of the repository: once no mount names it as its source, whoever
    /// wants the repository waits for it to finish.
    pub fn announce_daemon(&self) {
        self.announce(DAEMON);
    }

    /// Say in the lock file that this process (the daemon of a mount that
    /// is gone) is finishing: whoever wants the repository next waits for
    /// it instead of failing.
    pub fn announce_stopping(&self) {
        self.announce(STOPPING);
    }

    fn announce(&self, state: &str) {
        if let Some(f) = &self._lock {
            use std::os::unix::fs::FileExt;
            // Padded: the line never gets shorter than what it replaces.
            let line = format!("{:<24}\n", format!("{} {state}", std::process::id()));
            let _ = f.write_at(line.as_bytes(), 0);
        }
    }

    /// Register a source of chunks readers still use (gc keeps them).
    pub fn add_pins(&self, source: PinSource) {
        self.pins.lock().push(source);
    }

    /// Every chunk a registered reader still uses.
    /// Publish what the daemon plans next.
    pub fn set_planned(&self, p: Planned) {
        *self.planned.lock() = Some(p);
    }

    /// What the daemon serving this repository plans next (`None` when
    /// no flusher runs in this process).
    pub fn planned(&self) -> Option<Planned> {
        self.planned.lock().clone()
    }

    pub fn pinned(&self) -> Vec<ChunkId> {
        let sources: Vec<PinSource> = self.pins.lock().clone();
        sources.iter().flat_map(|s| s()).collect()
    }

    /// Write a rewritten record (same id) in place of the old one:
    /// durable before this returns. The chunks and manifest parts it names
    /// must already be durable and indexed.
    pub fn replace_record(&self, rec: &SnapshotRecord) -> Result<()> {
        self.writable()?;
        rec.validate()?;
        let json = keys::encode_record(self.crypto.as_deref(), rec)?;
        crate::util::fault::inject("record-rewrite")?;
        self.snapshots_dir
            .write_atomic(&SnapshotRecord::file_name(rec.id), &json)?;
        self.index.put_snapshot(rec.id, &json)?;
        self.records_changed();
        Ok(())
    }

    /// Remove a snapshot's record (durable before this returns). The
    /// caller makes sure no remaining record depends on it.
    pub fn remove_record(&self, id: u64) -> Result<()> {
        self.writable()?;
        crate::util::fault::inject("record-remove")?;
        match self
            .snapshots_dir
            .remove_file(&SnapshotRecord::file_name(id))
        {
            Ok(()) => {}
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.snapshots_dir.fsync()?;
        self.index.remove_snapshot(id)?;
        self.damaged.lock().remove(&id);
        self.records_changed();
        Ok(())
    }

    /// Store the manifest, make everything durable, then write the record:
    /// the snapshot exists from the moment the record's rename is durable.
    /// With a memo and a set of dirty directories, `tree` need only hold
    /// the entries of the dirty directories (the others are taken from
    /// the memo).
    pub fn commit_snapshot(
        &self,
        writer: &ChunkWriter<'_>,
        tree: &Tree,
        memo: Option<(
            &mut crate::snapshot::dirs::DirMemo,
            Option<&HashSet<Vec<u8>>>,
        )>,
        draft: SnapshotDraft,
    ) -> Result<SnapshotRecord> {
        self.writable()?;
        if draft
            .label
            .as_ref()
            .is_some_and(|l| l.len() > crate::snapshot::model::MAX_LABEL)
        {
            return Err(Error::InvalidInput(format!(
                "a label may be at most {} bytes",
                crate::snapshot::model::MAX_LABEL
            )));
        }
        // The tree as directory objects (only those not stored yet are
        // written), then its root as the manifest.
        let mut root = match memo {
            Some((memo, dirty)) => {
                let root = crate::snapshot::dirs::write_tree_with(
                    &self.tree_store(writer),
                    tree,
                    memo,
                    dirty,
                )?;
                // (The flusher's test builds read the tree written back
                // and compare it with the capture's: `tree` may hold only
                // the directories on changed paths.)
                root
            }
            None => crate::snapshot::dirs::write_tree(&self.tree_store(writer), tree)?,
        };
        if root.block_size == 0 {
            // A tree with no file (nothing set its block size).
            root.block_size = self.config.block_size;
        }
        let bytes = root.encode()?;
        let parts = writer.store_manifest(&bytes)?;
        writer.commit()?;
        let id = self
            .record_file_ids(false)?
            .into_iter()
            .chain(self.index.snapshots()?.into_iter().map(|(id, _)| id))
            .chain(self.damaged.lock().keys().copied())
            .max()
            .unwrap_or(0)
            + 1;
        let mut stats = draft.stats;
        stats.stored_bytes = writer.stored_bytes();
        stats.new_chunks = writer.new_chunks();
        let mut source = draft.source;
        if source.len() > 4096 {
            let mut cut = 4096;
            while !source.is_char_boundary(cut) {
                cut -= 1;
            }
            source.truncate(cut);
        }
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
            source,
            block_size: root.block_size,
            manifest: parts,
            manifest_len: bytes.len() as u64,
            stats,
            rewritten: None,
            synthetic: draft.synthetic,
        };
        rec.validate()?;
        let json = keys::encode_record(self.crypto.as_deref(), &rec)?;
        crate::util::fault::inject("manifest-commit")?;
        self.snapshots_dir
            .write_atomic(&SnapshotRecord::file_name(id), &json)?;
        self.index.put_snapshot(id, &json)?;
        self.records_changed();
        self.index.flush()?;
        Ok(rec)
    }
}

/// Read and validate `snapshots/<id>.json` (unsealed with `crypto`).
fn read_record(dir: &Dir, id: u64, crypto: Option<&Crypto>) -> Result<(SnapshotRecord, Vec<u8>)> {
    let bytes = dir
        .read(&SnapshotRecord::file_name(id), MAX_RECORD_BYTES)?
        .ok_or_else(|| Error::Corrupt(format!("snapshot record {id} vanished")))?;
    let rec = keys::decode_record(crypto, &bytes, id)?;
    Ok((rec, bytes))
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
    /// A full snapshot built from manifests (see `SnapshotRecord::synthetic`).
    pub synthetic: bool,
}

/// Recreate the index from `packs/` and `snapshots/`. The old index is
/// moved aside (never deleted).
pub fn rebuild_index(root: &Path) -> Result<RebuildReport> {
    let dir = trust::open_trusted(root, trust::Open::Existing)?;
    let config = read_config(&dir)?;
    let _lock = lock(&dir)?;
    let crypto = keys::unlock(&dir, &config)?;
    let packs = trusted_subdir(&dir, PACKS)?;
    let snapshots = trusted_subdir(&dir, SNAPSHOTS)?;
    rebuild_locked(&dir, &packs, &snapshots, INDEX_OLD, crypto.as_deref()).map(|(_, r)| r)
}

/// Rebuild with the repository lock held; the old index (if any) is
/// renamed to `<aside_prefix>-<time>`.
fn rebuild_locked(
    dir: &Dir,
    packs: &Dir,
    snapshots: &Dir,
    aside_prefix: &str,
    crypto: Option<&Crypto>,
) -> Result<(Index, RebuildReport)> {
    candidates::drop_at(dir);
    let mut moved_to = None;
    if dir.stat_at(INDEX).is_ok() {
        let aside = format!(
            "{aside_prefix}-{}",
            time::rfc3339_nanos(time::now_ns()).replace(':', ".")
        );
        dir.rename(INDEX, &aside)?;
        dir.fsync()?;
        moved_to = Some(dir.join(&aside));
    }
    let index = Index::open(dir.ensure_dir(INDEX, 0o700)?, index_cache_bytes())?;
    let mut report = fill_index(&index, packs, snapshots, true, crypto)?;
    report.moved_to = moved_to;
    Ok((index, report))
}

/// Make a pack durable before anything may point into it (its writer
/// may have stopped before its fsync).
fn sync_pack(packs: &Dir, id: u64) -> Result<()> {
    let name = crate::store::pack::pack_file_name(id);
    let f = packs
        .open_read(&name)?
        .ok_or_else(|| Error::Corrupt(format!("pack {id} vanished")))?;
    crate::util::durable::fsync_file(&f, &packs.join(&name))
}

/// Index every blob of every pack and every sound snapshot record
/// (fsyncing each pack first when `durable`: a persistent index must
/// never point at bytes that are not on disk). Unreadable packs and
/// damaged records are reported, not fatal.
fn fill_index(
    index: &Index,
    packs: &Dir,
    snapshots: &Dir,
    durable: bool,
    crypto: Option<&Crypto>,
) -> Result<RebuildReport> {
    let mut report = RebuildReport::default();
    let ids = list_packs(packs)?;
    let mut done = Vec::new();
    for id in &ids {
        let synced = if durable {
            sync_pack(packs, *id)
        } else {
            Ok(())
        };
        let scan = match synced.and_then(|()| scan_pack(packs, *id)) {
            Ok(s) => s,
            Err(e) => {
                report.damaged.push(format!("pack {id}: {e}"));
                continue;
            }
        };
        for (s, e) in &scan.damaged {
            report.damaged.push(format!(
                "{}: bytes {s}..{e} unreadable",
                packs
                    .join(&crate::store::pack::pack_file_name(*id))
                    .display()
            ));
        }
        for b in &scan.blobs {
            if index.insert_chunk_if_absent(&b.header.id, &b.location)? {
                report.blobs += 1;
            }
        }
        report.packs += 1;
        done.push(*id);
    }
    index.flush()?;
    index.mark_packs_indexed(&done)?;
    for name in snapshots.names()? {
        let Some(id) = std::str::from_utf8(&name)
            .ok()
            .and_then(SnapshotRecord::parse_file_name)
        else {
            continue;
        };
        match read_record(snapshots, id, crypto) {
            Ok((_, bytes)) => {
                index.put_snapshot(id, &bytes)?;
                report.snapshots += 1;
            }
            Err(err) => {
                report.damaged.push(format!("snapshot {id}: {err}"));
                report.damaged_records.insert(id, err.to_string());
            }
        }
    }
    index.flush()?;
    Ok(report)
}

#[derive(Debug, Default)]
pub struct RebuildReport {
    pub moved_to: Option<PathBuf>,
    pub packs: u64,
    pub blobs: u64,
    pub snapshots: u64,
    pub damaged: Vec<String>,
    /// Snapshot records left out: id -> why.
    pub damaged_records: BTreeMap<u64, String>,
}
