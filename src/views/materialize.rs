//! The materialization cache: verified local copies of snapshot files,
//! which the FUSE adapters hand to the kernel (passthrough) so that
//! re-reads and `mmap` page faults are served by the host filesystem,
//! page cache and all, without the daemon.
//!
//! ```text
//! REPO/cache/materialized/        0700
//!   <key>.data                    the file's content (0600)
//!   <key>.rec                     its verification record (JSON, below)
//!   tmp.<key>.<pid>               a copy being written
//! ```
//! `key` is blake3 over the block size, the file size and the file's
//! chunk ids: one copy serves the same content in every snapshot.
//!
//! **Promotion.** A file is copied in the background (one worker) when it
//! is opened a second time while the daemon runs, or at its first open
//! when its name matches a `--materialize-now` pattern; so a file read
//! once costs no extra disk write. Files under [`MIN_SIZE`] or over half
//! the cache are never copied. The opens that trigger the copy are served
//! by the daemon; opens after it are served by passthrough.
//!
//! **Trust.** A copy is written from chunks that were verified (content
//! hash) as they were read, fsynced, renamed into place, and only then
//! is its record written (atomically). The record names the copy's
//! identity (device, inode, size, mtime and ctime in nanoseconds): every
//! open checks it with one `fstat`, so any write, truncation or metadata
//! change of the copy (which the kernel stamps with a new ctime) makes it
//! untrusted, and it is deleted. A copy found on disk when a daemon
//! starts is trusted only after it was read again in full and every
//! block matched its chunk id (in the background, at its first open);
//! until then the daemon serves the file itself.
//!
//! **Bounds.** The copies hold at most `capacity` bytes (least recently
//! opened copies go first); a forgotten snapshot's copies are deleted by
//! `forget` ([`forget_snapshots`]) unless another snapshot uses them.
//! Encrypted repositories and remote reads have no cache (a plain copy
//! would undo the encryption; a remote is read into a temporary place).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use globset::{Glob, GlobSet, GlobSetBuilder};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::chunk_cache::ChunkCache;
use crate::error::{Error, Result};
use crate::repo::layout;
use crate::store::ChunkId;
use crate::util::dirfd::Dir;

/// Files smaller than this are served by the daemon (a copy would save
/// little and cost an inode and a backing registration per open).
pub const MIN_SIZE: u64 = 1 << 20;
/// The record format.
const RECORD_VERSION: u32 = 1;
/// Records are small; anything larger is not ours.
const RECORD_MAX: u64 = 1 << 20;
/// How often the last use of a copy is written to disk (its record's
/// mtime), for the LRU order across restarts.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Copies leave at least 1/FREE_RESERVE of the repository's filesystem
/// free (the live mount and the snapshots need it more).
const FREE_RESERVE: u64 = 20;
/// ... but never more than this.
const FREE_RESERVE_MAX: u64 = 8 << 30;
/// Open counts kept for files not yet copied (then forgotten).
const MAX_COUNTED: usize = 100_000;

/// The cache's size and what is copied at first open.
#[derive(Clone, Debug, Default)]
pub struct MaterializeOptions {
    /// Bytes of copies kept; 0: no cache.
    pub capacity: u64,
    /// Files copied at their first open (globs on the path in the
    /// snapshot or the file name).
    pub now: Vec<String>,
}

impl MaterializeOptions {
    /// The default size: a tenth of the repository's filesystem, at most
    /// 64 GiB.
    pub fn default_capacity(dir: &Dir) -> u64 {
        match rustix::fs::fstatvfs(dir) {
            Ok(s) => (s.f_blocks.saturating_mul(s.f_frsize) / 10).min(64 << 30),
            Err(_) => 0,
        }
    }
}

/// What identifies one copy on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Identity {
    fn of(f: &File) -> rustix::io::Result<Identity> {
        let st = rustix::fs::fstat(f)?;
        Ok(Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: crate::util::sys::stat_ns(st.st_mtime, st.st_mtime_nsec as u64),
            ctime_ns: crate::util::sys::ctime_ns(&st),
        })
    }
}

/// `<key>.rec`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    version: u32,
    key: String,
    identity: Identity,
    /// The snapshots whose files were served from this copy.
    snapshots: BTreeSet<u64>,
    /// A checkpoint kept aside (`track::keep`) and adopted, not a copy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    kept: bool,
}

/// The content key of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key([u8; 32]);

impl Key {
    pub fn of(block_size: u32, size: u64, blocks: &[ChunkId]) -> Key {
        let mut h = blake3::Hasher::new();
        h.update(b"rewindfs materialized v1");
        h.update(&block_size.to_le_bytes());
        h.update(&size.to_le_bytes());
        for b in blocks {
            h.update(&b.0);
        }
        Key(*h.finalize().as_bytes())
    }

    fn hex(&self) -> String {
        crate::util::bytes::to_hex(&self.0)
    }
}

/// A file of a snapshot, as the cache needs it.
#[derive(Clone)]
pub struct FileRef {
    pub key: Key,
    pub snapshot: u64,
    pub block_size: u32,
    pub size: u64,
    pub blocks: Arc<Vec<ChunkId>>,
    /// Where each chunk lies.
    pub spans: Arc<crate::snapshot::spans::Spans>,
    /// Its path in the snapshot (for patterns and logs).
    pub path: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Found on disk, not yet read back by this process.
    Unverified,
    /// Being read back.
    Verifying,
    /// Written or read back by this process: served.
    Verified,
}

struct Entry {
    state: State,
    /// An adopted kept checkpoint (see [`Materializer::adopt`]).
    kept: bool,
    identity: Identity,
    snapshots: BTreeSet<u64>,
    last_used: SystemTime,
    touched: SystemTime,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Opens of files without a copy.
    opens: HashMap<Key, u32>,
    /// Copies being written.
    building: HashSet<Key>,
    /// Copies that could not be written (not tried again by this process).
    failed: HashSet<Key>,
    bytes: u64,
}

enum Job {
    Build(FileRef),
    Verify(FileRef),
    /// Add a snapshot to a copy's record.
    Note(Key, u64),
}

/// What `status` shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MaterializeStatus {
    pub capacity_bytes: u64,
    pub bytes: u64,
    pub files: u64,
    /// Copies written by this daemon.
    pub promoted: u64,
    /// Opens served by kernel passthrough from a copy.
    pub passthrough_opens: u64,
    /// Copies dropped because they changed or did not verify.
    pub rejected: u64,
    /// Copies that could not be written (e.g. a damaged chunk).
    pub failed: u64,
    pub evicted: u64,
    /// Checkpoints kept aside (deleted or replaced before a snapshot held
    /// them) whose snapshot versions are served from the very file that
    /// was deleted: how many, and their bytes (part of `bytes`).
    #[serde(default)]
    pub kept_files: u64,
    #[serde(default)]
    pub kept_bytes: u64,
    /// Kept checkpoints adopted by this daemon.
    #[serde(default)]
    pub adopted: u64,
}

pub struct Materializer {
    dir: Dir,
    chunks: Arc<ChunkCache>,
    capacity: u64,
    now: Option<GlobSet>,
    inner: Mutex<Inner>,
    jobs: Sender<Job>,
    /// Some FUSE session can serve copies (passthrough accepted at INIT
    /// and not refused since): without one, nothing is copied.
    serving: AtomicBool,
    promoted: AtomicU64,
    passthrough_opens: AtomicU64,
    rejected: AtomicU64,
    evicted: AtomicU64,
    adopted: AtomicU64,
}

fn data_name(k: &Key) -> String {
    format!("{}.data", k.hex())
}

fn record_name(k: &Key) -> String {
    format!("{}.rec", k.hex())
}

fn key_from_hex(s: &str) -> Option<Key> {
    ChunkId::from_hex(s).ok().map(|c| Key(c.0))
}

/// The cache directory, created (0700) when missing.
fn cache_dir(repo_dir: &Dir) -> Result<Dir> {
    repo_dir
        .ensure_dir(layout::CACHE, layout::DIR_MODE)?
        .ensure_dir(layout::MATERIALIZED, layout::DIR_MODE)
}

/// The cache directory if it exists.
fn existing_cache_dir(repo_dir: &Dir) -> Result<Option<Dir>> {
    let cache = match repo_dir.open_dir(layout::CACHE) {
        Ok(d) => d,
        Err(_) if repo_dir.stat_at(layout::CACHE).is_err() => return Ok(None),
        Err(e) => return Err(e),
    };
    match cache.open_dir(layout::MATERIALIZED) {
        Ok(d) => Ok(Some(d)),
        Err(_) if cache.stat_at(layout::MATERIALIZED).is_err() => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_record(dir: &Dir, name: &str) -> Option<(Record, SystemTime)> {
    let f = dir.open_read(name).ok()??;
    let mtime = f.metadata().ok()?.modified().ok()?;
    let mut bytes = Vec::new();
    f.take(RECORD_MAX).read_to_end(&mut bytes).ok()?;
    let r: Record = serde_json::from_slice(&bytes).ok()?;
    (r.version == RECORD_VERSION && format!("{}.rec", r.key) == name).then_some((r, mtime))
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

impl Drop for Materializer {
    /// Adopted kept checkpoints are immutable while a daemon serves them;
    /// made mutable again when it stops, so that the cache (and the
    /// repository) can be deleted like any directory. (A copy found on
    /// disk at the next start is read back in full before it is served,
    /// and made immutable again if it is a kept one.)
    fn drop(&mut self) {
        self.release();
    }
}

/// Delete a copy: its record first (a copy without a record is never
/// trusted), then its data (an adopted kept checkpoint is immutable:
/// made mutable first).
fn remove_copy(dir: &Dir, k: &Key) {
    let _ = dir.remove_file(&record_name(k));
    clear_immutable(dir, &data_name(k));
    let _ = dir.remove_file(&data_name(k));
}

fn clear_immutable(dir: &Dir, name: &str) {
    if let Ok(fd) = rustix::fs::openat(
        dir.fd(),
        name,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        let _ = crate::track::keep::set_immutable(&fd, false);
    }
}

impl Materializer {
    /// Open (create) the cache of `chunks`' repository. `None` when the
    /// cache is off or cannot be used for this repository.
    pub fn open(
        chunks: Arc<ChunkCache>,
        opts: &MaterializeOptions,
    ) -> Result<Option<Arc<Materializer>>> {
        let repo = chunks.repo().clone();
        if opts.capacity == 0 || repo.crypto().is_some() || repo.pack_reader().is_remote() {
            return Ok(None);
        }
        let now =
            if opts.now.is_empty() {
                None
            } else {
                let mut b = GlobSetBuilder::new();
                for p in &opts.now {
                    b.add(Glob::new(p).map_err(|e| {
                        Error::InvalidInput(format!("bad --materialize-now pattern {p:?}: {e}"))
                    })?);
                }
                Some(b.build().map_err(|e| {
                    Error::InvalidInput(format!("bad --materialize-now patterns: {e}"))
                })?)
            };
        let dir = cache_dir(repo.dir())?;
        let (tx, rx) = bounded::<Job>(64);
        let m = Arc::new(Materializer {
            dir,
            chunks,
            capacity: opts.capacity,
            now,
            inner: Mutex::new(Inner::default()),
            jobs: tx,
            serving: AtomicBool::new(false),
            promoted: AtomicU64::new(0),
            passthrough_opens: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            adopted: AtomicU64::new(0),
        });
        m.scan()?;
        let weak = Arc::downgrade(&m);
        std::thread::Builder::new()
            .name("materialize".into())
            .spawn(move || worker(weak, rx))
            .map_err(|e| Error::io("start", "the materialization worker", e))?;
        Ok(Some(m))
    }

    /// Load the records on disk; delete what is not a whole copy (a copy
    /// without a record, a record without its copy, leftovers of writers
    /// that died, copies of snapshots that no longer exist).
    fn scan(&self) -> Result<()> {
        let listed: Option<BTreeSet<u64>> = self
            .chunks
            .repo()
            .snapshots()
            .ok()
            .map(|l| l.iter().map(|r| r.id).collect());
        let names: Vec<String> = self
            .dir
            .names()?
            .into_iter()
            .filter_map(|n| String::from_utf8(n).ok())
            .collect();
        let mut g = self.inner.lock();
        let mut datas = HashSet::new();
        for n in &names {
            if let Some(rest) = n
                .strip_prefix("tmp.")
                .or_else(|| n.strip_prefix(crate::util::dirfd::TMP_PREFIX))
            {
                let pid = rest.rsplit('.').next().and_then(|p| p.parse::<i32>().ok());
                if pid.is_none_or(|p| !pid_alive(p) || p == std::process::id() as i32) {
                    let _ = self.dir.remove_file(n);
                }
            } else if let Some(k) = n.strip_suffix(".data") {
                datas.insert(k.to_string());
            }
        }
        for n in &names {
            let Some(k) = n.strip_suffix(".rec") else {
                continue;
            };
            let Some(key) = key_from_hex(k) else {
                let _ = self.dir.remove_file(n);
                continue;
            };
            let rec = read_record(&self.dir, n);
            let gone = |r: &Record| match &listed {
                Some(l) => !r.snapshots.iter().any(|s| l.contains(s)),
                None => false,
            };
            let same = |r: &Record| {
                self.dir
                    .open_read(&data_name(&key))
                    .ok()
                    .flatten()
                    .and_then(|f| Identity::of(&f).ok())
                    == Some(r.identity)
            };
            match rec {
                Some((r, mtime)) if datas.contains(k) && !gone(&r) && same(&r) => {
                    g.bytes = g.bytes.saturating_add(r.identity.size);
                    g.entries.insert(
                        key,
                        Entry {
                            state: State::Unverified,
                            kept: r.kept,
                            identity: r.identity,
                            snapshots: r.snapshots,
                            last_used: mtime,
                            touched: mtime,
                        },
                    );
                    datas.remove(k);
                }
                _ => remove_copy(&self.dir, &key),
            }
        }
        for k in datas {
            let name = format!("{k}.data");
            clear_immutable(&self.dir, &name);
            let _ = self.dir.remove_file(&name);
        }
        Ok(())
    }

    /// Whether copies can be served (a session accepted passthrough);
    /// set by the FUSE adapters.
    pub fn set_serving(&self, on: bool) {
        self.serving.store(on, Ordering::Relaxed);
    }

    /// Whether a file of `size` bytes may have a copy: large enough to
    /// be worth one, small enough for the cache, and a session can serve
    /// it. Opens of other files skip the cache entirely.
    pub fn eligible(&self, size: u64) -> bool {
        size >= MIN_SIZE && size <= self.capacity / 2 && self.serving.load(Ordering::Relaxed)
    }

    /// Count an open of `f` (an [`Materializer::eligible`] file);
    /// schedules a copy (or the read-back of one found on disk) when it
    /// is due.
    pub fn note_open(&self, f: &FileRef) {
        let job = {
            let mut g = self.inner.lock();
            if let Some(e) = g.entries.get_mut(&f.key) {
                if !e.snapshots.contains(&f.snapshot) {
                    e.snapshots.insert(f.snapshot);
                    Some(Job::Note(f.key, f.snapshot))
                } else if e.state == State::Unverified {
                    e.state = State::Verifying;
                    Some(Job::Verify(f.clone()))
                } else {
                    None
                }
            } else if g.building.contains(&f.key) || g.failed.contains(&f.key) {
                None
            } else {
                if g.opens.len() >= MAX_COUNTED {
                    g.opens.clear();
                }
                let n = g.opens.entry(f.key).or_insert(0);
                *n += 1;
                let due = *n >= 2 || self.matches_now(&f.path);
                if due {
                    g.opens.remove(&f.key);
                    g.building.insert(f.key);
                    Some(Job::Build(f.clone()))
                } else {
                    None
                }
            }
        };
        let Some(job) = job else { return };
        // An entry that needs both a note and a read-back gets the
        // read-back at its next open.
        let key = match &job {
            Job::Build(f) | Job::Verify(f) => Some(f.key),
            Job::Note(..) => None,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.jobs.try_send(job)
        {
            // Busy: forget the attempt; a later open asks again.
            if let Some(k) = key {
                let mut g = self.inner.lock();
                g.building.remove(&k);
                if let Some(e) = g.entries.get_mut(&k) {
                    if e.state == State::Verifying {
                        e.state = State::Unverified;
                    }
                }
            }
        }
    }

    fn matches_now(&self, path: &[u8]) -> bool {
        let Some(set) = &self.now else { return false };
        let p = String::from_utf8_lossy(path);
        let p = p.trim_start_matches('/');
        let name = p.rsplit('/').next().unwrap_or(p);
        set.is_match(p) || set.is_match(name)
    }

    /// The verified copy of `key`, opened for a passthrough open, if
    /// there is one. A copy that changed since it was verified is
    /// deleted, never served.
    pub fn trusted(&self, key: &Key) -> Option<File> {
        let identity = {
            let g = self.inner.lock();
            let e = g.entries.get(key)?;
            if e.state != State::Verified {
                return None;
            }
            e.identity
        };
        // Missing, or not what was verified: dropped. Any other error
        // (out of descriptors...): not served this time.
        let f = match self.dir.open_read(&data_name(key)) {
            Ok(Some(f)) => match Identity::of(&f) {
                Ok(id) if id == identity => Some(f),
                Ok(_) => None,
                Err(_) => return None,
            },
            Ok(None) => None,
            Err(Error::Corrupt(_)) => None,
            Err(_) => return None,
        };
        let mut g = self.inner.lock();
        match f {
            Some(f) => {
                let now = SystemTime::now();
                let mut touch = false;
                if let Some(e) = g.entries.get_mut(key) {
                    e.last_used = now;
                    if now.duration_since(e.touched).unwrap_or_default() >= TOUCH_EVERY {
                        e.touched = now;
                        touch = true;
                    }
                }
                drop(g);
                if touch {
                    let _ = rustix::fs::utimensat(
                        &self.dir,
                        record_name(key).as_str(),
                        &rustix::fs::Timestamps {
                            last_access: rustix::fs::Timespec {
                                tv_sec: 0,
                                tv_nsec: rustix::fs::UTIME_NOW,
                            },
                            last_modification: rustix::fs::Timespec {
                                tv_sec: 0,
                                tv_nsec: rustix::fs::UTIME_NOW,
                            },
                        },
                        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                    );
                }
                Some(f)
            }
            None => {
                // Gone (evicted or forgotten by another process) or changed.
                if let Some(e) = g.entries.remove(key) {
                    g.bytes = g.bytes.saturating_sub(e.identity.size);
                    let changed = self.dir.stat_at(&data_name(key)).is_ok();
                    drop(g);
                    if changed {
                        tracing::error!(
                            copy = %self.dir.join(&data_name(key)).display(),
                            "a materialized copy changed after it was verified: deleted (the file is served by the daemon and copied again)"
                        );
                        self.rejected.fetch_add(1, Ordering::Relaxed);
                        remove_copy(&self.dir, key);
                    }
                }
                None
            }
        }
    }

    /// Adopt a kept checkpoint (`track::keep`) as the copy of `f`: its
    /// data file `name` of `from` (on this cache's filesystem) is renamed
    /// into the cache, no byte copied, and served by passthrough from now
    /// on. The caller vouches for its content: the snapshot `f.snapshot`
    /// was captured from this very file, immutable since before the
    /// capture read it (checked here again). Returns whether the file was
    /// taken (renamed away from `from`); a file not taken is the
    /// caller's to delete.
    pub fn adopt(&self, from: &Dir, name: &str, f: &FileRef) -> bool {
        if !self.eligible(f.size) {
            tracing::debug!(
                size = f.size,
                serving = self.serving.load(Ordering::Relaxed),
                "a kept checkpoint is not adopted: not eligible"
            );
            return false;
        }
        {
            let mut g = self.inner.lock();
            if g.entries.contains_key(&f.key) || g.building.contains(&f.key) {
                // Already a copy of this content (or one being written).
                return false;
            }
            g.building.insert(f.key);
        }
        let done = |this: &Self| {
            this.inner.lock().building.remove(&f.key);
        };
        let checked = (|| {
            let fd = rustix::fs::openat(
                from.fd(),
                name,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::NONBLOCK
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok()?;
            let st = rustix::fs::fstat(&fd).ok()?;
            (crate::util::sys::file_type(st.st_mode) == libc::S_IFREG
                && st.st_size as u64 == f.size
                && crate::track::keep::is_immutable(&fd))
            .then_some((fd, st))
        })();
        let Some((fd, before)) = checked.filter(|_| self.make_room(f.size)) else {
            tracing::debug!("a kept checkpoint is not adopted: changed, or no room");
            done(self);
            return false;
        };
        // An immutable file cannot be renamed: mutable for the rename, and
        // immutable again before anything else. A write that slipped in
        // meanwhile (through a descriptor opened before the file was
        // kept) stamps a new mtime or size: then the file is not served.
        let moved = crate::track::keep::set_immutable_open(&fd, false).and_then(|()| {
            rustix::fs::renameat_with(
                from.fd(),
                name,
                self.dir.fd(),
                data_name(&f.key).as_str(),
                rustix::fs::RenameFlags::NOREPLACE,
            )
        });
        let again = crate::track::keep::set_immutable_open(&fd, true);
        if let Err(e) = moved {
            tracing::debug!("a kept checkpoint is not adopted: the rename was refused ({e})");
            done(self);
            return false;
        }
        let same = rustix::fs::fstat(&fd).is_ok_and(|st| {
            st.st_ino == before.st_ino
                && st.st_size == before.st_size
                && (st.st_mtime, st.st_mtime_nsec) == (before.st_mtime, before.st_mtime_nsec)
        });
        drop(fd);
        let result = (|| {
            if again.is_err() || !same {
                return Err(Error::Corrupt(
                    "a kept checkpoint changed while it was adopted (or could not be made immutable again)".into(),
                ));
            }
            self.dir.fsync()?;
            let file = self
                .dir
                .open_read(&data_name(&f.key))?
                .ok_or_else(|| Error::Corrupt("an adopted copy vanished".into()))?;
            let identity = Identity::of(&file)
                .map_err(|e| Error::io("stat", self.dir.join(&data_name(&f.key)), e.into()))?;
            self.write_record(&Record {
                version: RECORD_VERSION,
                key: f.key.hex(),
                identity,
                snapshots: [f.snapshot].into_iter().collect(),
                kept: true,
            })?;
            Ok::<_, Error>(identity)
        })();
        let mut g = self.inner.lock();
        g.building.remove(&f.key);
        match result {
            Ok(identity) => {
                let now = SystemTime::now();
                g.bytes = g.bytes.saturating_add(identity.size);
                g.entries.insert(
                    f.key,
                    Entry {
                        state: State::Verified,
                        kept: true,
                        identity,
                        snapshots: [f.snapshot].into_iter().collect(),
                        last_used: now,
                        touched: now,
                    },
                );
                self.adopted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                drop(g);
                tracing::warn!("adopting a kept checkpoint into the materialization cache: {e}");
                remove_copy(&self.dir, &f.key);
            }
        }
        true
    }

    /// The daemon stops: adopted kept checkpoints are made mutable again
    /// (so that the repository can be deleted like any directory), their
    /// records naming their identity since. At the next start they are
    /// made immutable again before they are read back and served.
    pub fn release(&self) {
        let kept: Vec<(Key, BTreeSet<u64>)> = self
            .inner
            .lock()
            .entries
            .iter()
            .filter(|(_, e)| e.kept)
            .map(|(k, e)| (*k, e.snapshots.clone()))
            .collect();
        for (k, snapshots) in kept {
            clear_immutable(&self.dir, &data_name(&k));
            let Ok(Some(f)) = self.dir.open_read(&data_name(&k)) else {
                continue;
            };
            let Ok(identity) = Identity::of(&f) else {
                continue;
            };
            let _ = self.write_record(&Record {
                version: RECORD_VERSION,
                key: k.hex(),
                identity,
                snapshots,
                kept: true,
            });
            if let Some(e) = self.inner.lock().entries.get_mut(&k) {
                e.identity = identity;
                e.state = State::Unverified;
            }
        }
    }

    /// An open was answered by passthrough from a fresh backing of a copy.
    pub fn served(&self) {
        self.passthrough_opens.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether `file`, a copy of `key` handed to the kernel earlier, is
    /// still as verified (`identity`), for an open that joins its
    /// passthrough opens; counts as a use of the copy.
    pub fn still_trusted(&self, key: &Key, file: &File, identity: &Identity) -> bool {
        let ok = Identity::of(file).ok().as_ref() == Some(identity);
        if ok {
            if let Some(e) = self.inner.lock().entries.get_mut(key) {
                e.last_used = SystemTime::now();
            }
            self.passthrough_opens.fetch_add(1, Ordering::Relaxed);
        } else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                copy = %self.dir.join(&data_name(key)).display(),
                "a materialized copy in use changed after it was verified: new opens of the file fail with EIO until its open descriptors are closed"
            );
        }
        ok
    }

    /// The identity of an open copy (to check it again later).
    pub fn identity_of(file: &File) -> Option<Identity> {
        Identity::of(file).ok()
    }

    pub fn status(&self) -> MaterializeStatus {
        let g = self.inner.lock();
        MaterializeStatus {
            capacity_bytes: self.capacity,
            bytes: g.bytes,
            files: g.entries.len() as u64,
            promoted: self.promoted.load(Ordering::Relaxed),
            passthrough_opens: self.passthrough_opens.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            failed: g.failed.len() as u64,
            evicted: self.evicted.load(Ordering::Relaxed),
            kept_files: g.entries.values().filter(|e| e.kept).count() as u64,
            kept_bytes: g
                .entries
                .values()
                .filter(|e| e.kept)
                .map(|e| e.identity.size)
                .sum(),
            adopted: self.adopted.load(Ordering::Relaxed),
        }
    }

    /// Delete least recently used copies until `need` more bytes fit,
    /// within the capacity and leaving 1/[`FREE_RESERVE`] of the
    /// filesystem (at most [`FREE_RESERVE_MAX`]) free. False (and nothing deleted) when they cannot.
    fn make_room(&self, need: u64) -> bool {
        let fs_room = match rustix::fs::fstatvfs(&self.dir) {
            Ok(s) => {
                let total = s.f_blocks.saturating_mul(s.f_frsize);
                let avail = s.f_bavail.saturating_mul(s.f_frsize);
                avail.saturating_sub((total / FREE_RESERVE).min(FREE_RESERVE_MAX))
            }
            Err(_) => return false,
        };
        let victims: Vec<Key> = {
            let mut g = self.inner.lock();
            let mut old: Vec<(SystemTime, Key, u64)> = g
                .entries
                .iter()
                .filter(|(_, e)| e.state != State::Verifying)
                .map(|(k, e)| (e.last_used, *k, e.identity.size))
                .collect();
            old.sort_by_key(|o| o.0);
            let mut freed = 0u64;
            let mut out = Vec::new();
            for (_, k, size) in old {
                if g.bytes.saturating_sub(freed).saturating_add(need) <= self.capacity
                    && need <= fs_room.saturating_add(freed)
                {
                    break;
                }
                freed = freed.saturating_add(size);
                out.push(k);
            }
            if g.bytes.saturating_sub(freed).saturating_add(need) > self.capacity
                || need > fs_room.saturating_add(freed)
            {
                return false;
            }
            for k in &out {
                if let Some(e) = g.entries.remove(k) {
                    g.bytes = g.bytes.saturating_sub(e.identity.size);
                }
            }
            out
        };
        for k in &victims {
            remove_copy(&self.dir, k);
        }
        self.evicted
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        true
    }

    /// Write the copy of `f`: every chunk verified as it is read, the
    /// data fsynced and renamed into place before its record is written.
    fn build(&self, f: &FileRef) -> Result<()> {
        if !self.make_room(f.size) {
            // Not a failure of the file: a later open asks again.
            self.inner.lock().building.remove(&f.key);
            return Err(Error::InvalidInput(format!(
                "no room for {} bytes in the materialization cache (--materialize-cache) or on its filesystem",
                f.size
            )));
        }
        let tmp = format!("tmp.{}.{}", f.key.hex(), std::process::id());
        let _ = self.dir.remove_file(&tmp);
        let result = (|| {
            let mut out = self.dir.create_new(&tmp, layout::FILE_MODE)?;
            let mut written = 0u64;
            for id in f.blocks.iter() {
                let data = self.chunks.get_transient(id)?;
                out.write_all(&data)
                    .map_err(|e| Error::io("write", self.dir.join(&tmp), e))?;
                written += data.len() as u64;
            }
            if written != f.size {
                return Err(Error::Corrupt(format!(
                    "the chunks of {} hold {written} bytes, the snapshot says {}",
                    String::from_utf8_lossy(&f.path),
                    f.size
                )));
            }
            crate::util::durable::fsync_file(&out, &self.dir.join(&tmp))?;
            self.dir.rename(&tmp, &data_name(&f.key))?;
            self.dir.fsync()?;
            let identity = Identity::of(&out)
                .map_err(|e| Error::io("stat", self.dir.join(&data_name(&f.key)), e.into()))?;
            let rec = Record {
                version: RECORD_VERSION,
                key: f.key.hex(),
                identity,
                snapshots: [f.snapshot].into_iter().collect(),
                kept: false,
            };
            self.write_record(&rec)?;
            Ok(identity)
        })();
        let mut g = self.inner.lock();
        g.building.remove(&f.key);
        match result {
            Ok(identity) => {
                let now = SystemTime::now();
                g.bytes = g.bytes.saturating_add(identity.size);
                g.entries.insert(
                    f.key,
                    Entry {
                        state: State::Verified,
                        kept: false,
                        identity,
                        snapshots: [f.snapshot].into_iter().collect(),
                        last_used: now,
                        touched: now,
                    },
                );
                self.promoted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // Damaged or missing data is not tried again by this
                // process; anything else (disk full...) at a later open.
                if matches!(e, Error::Corrupt(_) | Error::MissingChunk(_)) {
                    g.failed.insert(f.key);
                }
                drop(g);
                let _ = self.dir.remove_file(&tmp);
                remove_copy(&self.dir, &f.key);
                Err(e)
            }
        }
    }

    fn write_record(&self, rec: &Record) -> Result<()> {
        let bytes = serde_json::to_vec(rec).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.dir.write_atomic(&format!("{}.rec", rec.key), &bytes)
    }

    /// Read a copy found on disk back and compare every block with its
    /// chunk id; a copy that differs is deleted.
    fn verify(&self, f: &FileRef) -> Result<bool> {
        let (mut identity, kept, snapshots) = match self.inner.lock().entries.get(&f.key) {
            Some(e) => (e.identity, e.kept, e.snapshots.clone()),
            None => return Ok(false),
        };
        let mut usable = true;
        if kept {
            // An adopted kept checkpoint is immutable again before it is
            // read back: what is checked is what is served (a descriptor
            // opened on it before it was kept could write to it while it
            // was mutable).
            let again = (|| -> Option<Identity> {
                let file = self.dir.open_read(&data_name(&f.key)).ok()??;
                let before = Identity::of(&file).ok()?;
                crate::track::keep::set_immutable_open(&file, true).ok()?;
                let after = Identity::of(&file).ok()?;
                (before == identity
                    && (after.ino, after.size, after.mtime_ns)
                        == (identity.ino, identity.size, identity.mtime_ns))
                    .then_some(after)
            })();
            match again {
                Some(a) => {
                    identity = a;
                    if let Some(e) = self.inner.lock().entries.get_mut(&f.key) {
                        e.identity = a;
                    }
                    self.write_record(&Record {
                        version: RECORD_VERSION,
                        key: f.key.hex(),
                        identity: a,
                        snapshots,
                        kept: true,
                    })?;
                }
                None => usable = false,
            }
        }
        let ok = (|| -> Result<bool> {
            if !usable {
                return Ok(false);
            }
            let Some(mut file) = self.dir.open_read(&data_name(&f.key))? else {
                return Ok(false);
            };
            if Identity::of(&file).ok() != Some(identity) || identity.size != f.size {
                return Ok(false);
            }
            let crypto = self.chunks.repo().crypto();
            let mut buf = vec![0u8; f.block_size as usize];
            let mut left = f.size;
            for (i, id) in f.blocks.iter().enumerate() {
                let n = (f.spans.span(i).1.min(left) as usize).min(buf.len());
                file.read_exact(&mut buf[..n])
                    .map_err(|e| Error::io("read", self.dir.join(&data_name(&f.key)), e))?;
                if crate::store::blob::chunk_id(crypto, &buf[..n]) != *id {
                    return Ok(false);
                }
                left -= n as u64;
            }
            Ok(left == 0 && Identity::of(&file).ok() == Some(identity))
        })()?;
        let mut g = self.inner.lock();
        if ok {
            if let Some(e) = g.entries.get_mut(&f.key) {
                e.state = State::Verified;
            }
        } else {
            if let Some(e) = g.entries.remove(&f.key) {
                g.bytes = g.bytes.saturating_sub(e.identity.size);
            }
            drop(g);
            tracing::error!(
                copy = %self.dir.join(&data_name(&f.key)).display(),
                path = %String::from_utf8_lossy(&f.path),
                "a materialized copy does not match its snapshot: deleted (the file is served by the daemon and copied again)"
            );
            self.rejected.fetch_add(1, Ordering::Relaxed);
            remove_copy(&self.dir, &f.key);
        }
        Ok(ok)
    }

    fn note(&self, key: Key, snapshot: u64) {
        let Some((r, _)) = read_record(&self.dir, &record_name(&key)) else {
            return;
        };
        let mut r = r;
        if r.snapshots.insert(snapshot) {
            if let Err(e) = self.write_record(&r) {
                tracing::warn!("cannot update a materialization record: {e}");
            }
        }
    }
}

fn worker(m: Weak<Materializer>, rx: Receiver<Job>) {
    crate::util::sys::background_priority();
    for job in rx.iter() {
        let Some(m) = m.upgrade() else { break };
        match job {
            Job::Build(f) => {
                let t = std::time::Instant::now();
                match m.build(&f) {
                    Ok(()) => tracing::info!(
                        path = %String::from_utf8_lossy(&f.path),
                        bytes = f.size,
                        secs = t.elapsed().as_secs_f64(),
                        "materialized a snapshot file: later opens are served by passthrough"
                    ),
                    Err(e) => tracing::warn!(
                        path = %String::from_utf8_lossy(&f.path),
                        "cannot materialize a snapshot file (it is served by the daemon): {e}"
                    ),
                }
            }
            Job::Verify(f) => {
                if let Err(e) = m.verify(&f) {
                    tracing::warn!("cannot read back a materialized copy: {e}");
                    let mut g = m.inner.lock();
                    if let Some(e) = g.entries.get_mut(&f.key) {
                        e.state = State::Unverified;
                    }
                }
            }
            Job::Note(k, s) => m.note(k, s),
        }
    }
}

/// Remove the snapshots `ids` from the copies' records and delete the
/// copies no remaining snapshot uses (called by `forget`). Returns how
/// many copies were deleted.
pub fn forget_snapshots(repo_dir: &Dir, ids: &[u64]) -> Result<usize> {
    let Some(dir) = existing_cache_dir(repo_dir)? else {
        return Ok(0);
    };
    let mut removed = 0;
    for n in dir.names()? {
        let Ok(n) = String::from_utf8(n) else {
            continue;
        };
        let Some(k) = n.strip_suffix(".rec").and_then(key_from_hex) else {
            continue;
        };
        let Some((mut r, _)) = read_record(&dir, &n) else {
            continue;
        };
        if !ids.iter().any(|i| r.snapshots.contains(i)) {
            continue;
        }
        r.snapshots.retain(|s| !ids.contains(s));
        if r.snapshots.is_empty() {
            remove_copy(&dir, &k);
            removed += 1;
        } else {
            let bytes = serde_json::to_vec(&r).map_err(|e| Error::Corrupt(e.to_string()))?;
            dir.write_atomic(&n, &bytes)?;
        }
    }
    Ok(removed)
}
