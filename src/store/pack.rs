//! Pack files: append-only sequences of blobs.
//!
//! A pack starts with a 16-byte header (`"RWPACK\0\0"`, format version u32
//! LE, 4 zero bytes) and is followed by blobs (see [`super::blob`]). A
//! writer never appends to a pack that an earlier process wrote: a torn
//! tail left by a crash is therefore never built upon, and scanning stops
//! (or resynchronises) at it.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::blob::{self, BlobHeader, BlobKind, Check, ChunkId, Codec, EncodedBlob, HEADER_LEN};
use super::crypto::Crypto;
use crate::error::{Error, IoContext, Result};
use crate::util::bytes::set_len_keeping;
use crate::util::dirfd::Dir;
use crate::util::durable;

pub const PACK_MAGIC: [u8; 8] = *b"RWPACK\0\0";
pub const PACK_HEADER_LEN: u64 = 16;
pub const PACK_VERSION: u32 = 1;
/// Byte ranges of the pack header (docs/format.md, "Pack files").
const HDR_MAGIC: std::ops::Range<usize> = 0..8;
const HDR_VERSION: std::ops::Range<usize> = 8..12;

/// Where a blob lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub pack: u64,
    /// Offset of the blob header in the pack.
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
    pub kind: BlobKind,
}

impl Location {
    /// Fixed 26-byte encoding used as the index value.
    pub fn encode(&self) -> [u8; 26] {
        let mut v = [0u8; 26];
        v[0..8].copy_from_slice(&self.pack.to_le_bytes());
        v[8..16].copy_from_slice(&self.offset.to_le_bytes());
        v[16..20].copy_from_slice(&self.stored_len.to_le_bytes());
        v[20..24].copy_from_slice(&self.raw_len.to_le_bytes());
        v[24] = self.codec as u8;
        v[25] = self.kind as u8;
        v
    }

    pub fn decode(v: &[u8]) -> Result<Location> {
        if v.len() != 26 {
            return Err(Error::Corrupt("index entry has a bad length".into()));
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&v[i..i + 4]);
            u32::from_le_bytes(b)
        };
        Ok(Location {
            pack: u64_at(0),
            offset: u64_at(8),
            stored_len: u32_at(16),
            raw_len: u32_at(20),
            codec: Codec::from_u8(v[24])?,
            kind: match v[25] {
                1 => BlobKind::Chunk,
                2 => BlobKind::Manifest,
                k => return Err(Error::Corrupt(format!("index entry has blob kind {k}"))),
            },
        })
    }
}

pub fn pack_file_name(id: u64) -> String {
    format!("{id:016x}.pack")
}

pub fn parse_pack_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".pack")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// All pack ids present in `dir`, sorted.
pub fn list_packs(dir: &Dir) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = dir
        .names()?
        .iter()
        .filter_map(|n| std::str::from_utf8(n).ok().and_then(parse_pack_file_name))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Hands out pack ids: every writer of a process (captures, gc's repack)
/// takes its ids here, so two never pick the same one. It starts after the
/// highest pack on disk (gc empties the highest pack rather than removing
/// it). An id can come back in a later run when the highest pack was
/// removed (a failed capture gives back a pack holding nothing
/// committed): harmless, as nothing in the index names a removed pack and
/// every blob is checked against its id.
#[derive(Clone, Debug)]
pub struct PackIds(Arc<AtomicU64>);

impl PackIds {
    /// Ids after the highest pack in `dir`.
    pub fn after_existing(dir: &Dir) -> Result<PackIds> {
        let next = list_packs(dir)?.last().map_or(1, |m| m + 1);
        Ok(PackIds(Arc::new(AtomicU64::new(next))))
    }

    fn take(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }

    /// The id the next pack will get.
    pub fn peek(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Appends blobs to pack files, rotating at a target size.
pub struct PackWriter {
    dir: Dir,
    target_size: u64,
    ids: PackIds,
    current: Option<OpenPack>,
    /// Packs created since the last directory fsync.
    dir_dirty: bool,
    /// Packs finished (rotated away) since the last [`PackWriter::sync`].
    finished: Vec<u64>,
    /// Packs this writer created: (id, length the index may point into,
    /// i.e. as of the last [`PackWriter::mark_committed`]).
    session: Vec<(u64, u64)>,
    poisoned: Option<String>,
}

struct OpenPack {
    id: u64,
    file: File,
    path: PathBuf,
    len: u64,
    synced_len: u64,
    /// Writeback has been started up to here.
    kicked: u64,
    /// Appended bytes not yet written to the file (`len` counts them):
    /// blobs are written in runs of [`WRITE_RUN`] bytes instead of two
    /// small writes each, which made the kernel zero every new page cache
    /// page a write only partly covered (11% of a first snapshot's CPU at
    /// 10^6 small files, profiled with perf).
    pending: Vec<u8>,
}

/// Bytes gathered before one write to the open pack.
const WRITE_RUN: usize = 1 << 20;

impl OpenPack {
    /// Write what is gathered to the file.
    fn write_pending(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.file.write_all(&self.pending)?;
            self.pending.clear();
            let written = self.len;
            if written - self.kicked >= WRITEBACK_STEP {
                start_writeback(&self.file, self.kicked, written);
                self.kicked = written;
            }
        }
        Ok(())
    }
}

/// Start writeback every this many bytes, so the fsync at commit finds
/// little left to do and disk writes overlap with compression.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Ask the kernel to start writing `[from, to)` of `file` to disk, without
/// waiting. Only a hint: durability still comes from fsync.
fn start_writeback(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; the fd is
    // open for the duration of the call.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

impl PackWriter {
    /// A writer that creates new packs in `dir`, starting after the
    /// highest id present.
    pub fn new(dir: Dir, target_size: u64) -> Result<PackWriter> {
        let ids = PackIds::after_existing(&dir)?;
        Ok(PackWriter::with_ids(dir, target_size, ids))
    }

    /// The packs' directory.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// A writer taking its pack ids from `ids` (shared with the other
    /// writers of the repository).
    pub fn with_ids(dir: Dir, target_size: u64, ids: PackIds) -> PackWriter {
        PackWriter {
            dir,
            target_size,
            ids,
            current: None,
            dir_dirty: false,
            finished: Vec::new(),
            session: Vec::new(),
            poisoned: None,
        }
    }

    fn check(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn poison<T>(&mut self, e: Error) -> Result<T> {
        self.poisoned = Some(e.to_string());
        Err(e)
    }

    /// Append a blob. It is not durable until [`PackWriter::sync`] returns.
    pub fn append(&mut self, b: &EncodedBlob) -> Result<Location> {
        self.check()?;
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.len >= self.target_size)
        {
            if let Err(e) = self.finish_current() {
                return self.poison(e);
            }
        }
        if self.current.is_none() {
            if let Err(e) = self.open_new() {
                return self.poison(e);
            }
        }
        let Some(cur) = self.current.as_mut() else {
            return Err(Error::Poisoned("no open pack".into()));
        };
        let offset = cur.len;
        if let Err(e) = crate::util::fault::inject("pack-write") {
            return self.poison(e);
        }
        cur.pending.extend_from_slice(&b.header.encode());
        cur.pending.extend_from_slice(&b.payload);
        cur.len += b.encoded_len();
        if cur.pending.len() >= WRITE_RUN {
            if let Err(e) = cur.write_pending() {
                let err = Error::io("write pack", cur.path.clone(), e);
                return self.poison(err);
            }
        }
        Ok(Location {
            pack: cur.id,
            offset,
            stored_len: b.header.stored_len,
            raw_len: b.header.raw_len,
            codec: b.header.codec,
            kind: b.header.kind,
        })
    }

    fn open_new(&mut self) -> Result<()> {
        let id = self.ids.take();
        let name = pack_file_name(id);
        let path = self.dir.join(&name);
        let mut file = self.dir.create_new(&name, 0o600)?;
        let mut hdr = [0u8; PACK_HEADER_LEN as usize];
        hdr[HDR_MAGIC].copy_from_slice(&PACK_MAGIC);
        hdr[HDR_VERSION].copy_from_slice(&PACK_VERSION.to_le_bytes());
        file.write_all(&hdr).ctx("write pack", &path)?;
        self.dir_dirty = true;
        self.session.push((id, 0));
        self.current = Some(OpenPack {
            id,
            file,
            path,
            len: PACK_HEADER_LEN,
            synced_len: 0,
            kicked: 0,
            pending: Vec::with_capacity(WRITE_RUN + (64 << 10)),
        });
        Ok(())
    }

    fn finish_current(&mut self) -> Result<()> {
        if let Some(mut cur) = self.current.take() {
            if cur.synced_len != cur.len {
                cur.write_pending()
                    .map_err(|e| Error::io("write pack", cur.path.clone(), e))?;
                durable::fsync_file(&cur.file, &cur.path)?;
            }
            self.finished.push(cur.id);
        }
        Ok(())
    }

    /// Make everything appended so far durable: fsync the open pack and,
    /// if packs were created, the pack directory. Returns the ids of packs
    /// that are complete (no more appends) and durable.
    pub fn sync(&mut self) -> Result<Vec<u64>> {
        self.check()?;
        if let Some(cur) = self.current.as_mut() {
            if cur.synced_len != cur.len {
                if let Err(e) = cur
                    .write_pending()
                    .map_err(|e| Error::io("write pack", cur.path.clone(), e))
                    .and_then(|_| crate::util::fault::inject("pack-fsync"))
                    .and_then(|_| durable::fsync_file(&cur.file, &cur.path))
                {
                    return self.poison(e);
                }
                cur.synced_len = cur.len;
            }
        }
        if self.dir_dirty {
            if let Err(e) = self.dir.fsync() {
                return self.poison(e);
            }
            self.dir_dirty = false;
        }
        Ok(std::mem::take(&mut self.finished))
    }

    /// Sync and close the open pack. Returns the packs now complete.
    pub fn close(&mut self) -> Result<Vec<u64>> {
        self.check()?;
        if let Err(e) = self.finish_current() {
            return self.poison(e);
        }
        self.sync()
    }

    /// Record that everything synced so far is referenced by the index:
    /// [`PackWriter::abort`] keeps it.
    pub fn mark_committed(&mut self) {
        let cur = self.current.as_ref().map(|c| (c.id, c.synced_len));
        for (id, committed) in &mut self.session {
            match cur {
                Some((cid, synced)) if cid == *id => *committed = synced,
                // Finished packs were fully synced when they were rotated.
                _ => *committed = u64::MAX,
            }
        }
    }

    /// Give back the space of blobs nobody references after a failed
    /// capture (disk full, say): packs of this writer holding nothing
    /// committed are removed, the open pack is cut back to its committed
    /// length. The writer is unusable afterwards.
    pub fn abort(&mut self) {
        self.current = None;
        for (id, committed) in std::mem::take(&mut self.session) {
            let name = pack_file_name(id);
            let r = if committed <= PACK_HEADER_LEN {
                self.dir.remove_file(&name)
            } else if committed != u64::MAX {
                self.dir
                    .open_file(&name, rustix::fs::OFlags::WRONLY, 0)
                    .and_then(|f| {
                        f.set_len(committed)
                            .and_then(|_| f.sync_all())
                            .map_err(|e| Error::io("truncate", self.dir.join(&name), e))
                    })
            } else {
                Ok(())
            };
            if let Err(e) = r {
                tracing::warn!(pack = id, "could not reclaim uncommitted pack data: {e}");
            }
        }
        let _ = self.dir.fsync();
        self.poisoned
            .get_or_insert_with(|| "capture aborted".to_string());
    }

    /// The id of the pack currently being appended to.
    pub fn current_pack(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.id)
    }
}

/// Pack bytes that are not local files: a repository read from a remote
/// (src/remote/read.rs). Blobs read through it are checked exactly as
/// local ones (header, content hash): a source only moves bytes.
pub trait PackSource: Send + Sync {
    /// Fill `buf` with the pack's bytes from offset `at`; a pack shorter
    /// than that is an error.
    fn read_exact_at(&self, pack: u64, buf: &mut [u8], at: u64) -> Result<()>;
    /// The pack's length, `None` if the source does not have it.
    fn pack_len(&self, pack: u64) -> Option<u64>;
    /// Where the pack is, for messages.
    fn describe(&self, pack: u64) -> String;
    /// Bytes `at .. at + len` of `pack` will be read soon: start getting
    /// them. A hint: it never fails and may be ignored.
    fn prefetch(&self, _pack: u64, _at: u64, _len: u64) {}
}

/// Reads blobs from packs, keeping their files open.
///
/// Blob reads ([`PackReader::read`], [`PackReader::read_into`]) of local
/// packs are direct (`O_DIRECT`, see [`super::direct`]): header and
/// payload in one read that bypasses the page cache. The first refusal
/// of direct I/O (`EINVAL`: the repository's filesystem has none) turns
/// them to buffered reads for the reader's lifetime. Other reads (gc's
/// copies, scans) stay buffered.
pub struct PackReader {
    dir: Dir,
    files: Mutex<HashMap<u64, Arc<File>>>,
    /// The same packs opened with `O_DIRECT`.
    direct: Mutex<HashMap<u64, Arc<File>>>,
    /// Direct reads are on until the filesystem refuses one.
    direct_ok: AtomicBool,
    /// Packs come from here instead of `dir` (a remote repository).
    source: Option<Arc<dyn PackSource>>,
    /// The keys of an encrypted repository.
    crypto: Option<Arc<Crypto>>,
}

impl PackReader {
    pub fn new(dir: Dir) -> PackReader {
        PackReader {
            dir,
            files: Mutex::new(HashMap::new()),
            direct: Mutex::new(HashMap::new()),
            direct_ok: AtomicBool::new(true),
            source: None,
            crypto: None,
        }
    }

    /// Decrypt (and check keyed ids) with `crypto`: an encrypted
    /// repository's reader.
    pub fn with_crypto(mut self, crypto: Option<Arc<Crypto>>) -> PackReader {
        self.crypto = crypto;
        self
    }

    pub fn crypto(&self) -> Option<&Crypto> {
        self.crypto.as_deref()
    }

    /// A reader whose packs come from `source` (`dir` stays empty).
    pub fn with_source(dir: Dir, source: Arc<dyn PackSource>) -> PackReader {
        PackReader {
            dir,
            files: Mutex::new(HashMap::new()),
            direct: Mutex::new(HashMap::new()),
            direct_ok: AtomicBool::new(false),
            source: Some(source),
            crypto: None,
        }
    }

    /// Is this reader served by a [`PackSource`] (a remote)?
    pub fn is_remote(&self) -> bool {
        self.source.is_some()
    }

    /// Read pack bytes from the file or the source; a pack that ends
    /// before `at + buf.len()` is corrupt.
    fn read_exact_at(&self, pack: u64, buf: &mut [u8], at: u64) -> Result<()> {
        if let Some(s) = &self.source {
            return s.read_exact_at(pack, buf, at);
        }
        let f = self.file(pack)?;
        f.read_exact_at(buf, at).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::Corrupt(format!(
                "pack {} ends before byte {}",
                pack_file_name(pack),
                at + buf.len() as u64
            )),
            _ => Error::io("read pack", self.pack_path(pack), e),
        })
    }

    /// A pack as messages name it: its file name, or where the source
    /// has it (a remote object).
    fn pack_name(&self, pack: u64) -> String {
        match &self.source {
            Some(s) => s.describe(pack),
            None => pack_file_name(pack),
        }
    }

    /// The pack directory.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The path of a pack, for messages.
    pub fn pack_path(&self, id: u64) -> PathBuf {
        self.dir.join(&pack_file_name(id))
    }

    /// The length of a pack, `None` if it is missing.
    pub fn pack_len(&self, id: u64) -> Option<u64> {
        if let Some(s) = &self.source {
            return s.pack_len(id);
        }
        self.dir
            .stat_at(&pack_file_name(id))
            .ok()
            .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
            .map(|st| st.st_size as u64)
    }

    fn file(&self, id: u64) -> Result<Arc<File>> {
        cached_open(&self.files, id, || self.dir.open_read(&pack_file_name(id)))?.ok_or_else(|| {
            Error::io(
                "open pack",
                self.pack_path(id),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
    }

    /// Forget the open file of a pack (gc is about to remove it).
    pub fn evict(&self, id: u64) {
        self.files.lock().remove(&id);
        self.direct.lock().remove(&id);
    }

    /// The blob at `loc` will be read soon: a remote source starts
    /// fetching it (local packs need no hint: their reads are direct).
    pub fn prefetch(&self, loc: &Location) {
        if let Some(s) = &self.source {
            s.prefetch(
                loc.pack,
                loc.offset,
                HEADER_LEN as u64 + loc.stored_len as u64,
            );
        }
    }

    /// Are blob reads direct (until the filesystem refuses one)?
    pub fn reads_direct(&self) -> bool {
        self.direct_ok.load(Ordering::Relaxed)
    }

    /// Read blob reads through the page cache from now on.
    #[cfg(test)]
    pub(crate) fn use_buffered_reads(&self) {
        self.direct_ok.store(false, Ordering::Relaxed);
    }

    /// Turn direct reads off after the filesystem refused one.
    fn refuse_direct(&self, what: &str, e: &dyn std::fmt::Display) {
        if self.direct_ok.swap(false, Ordering::Relaxed) {
            tracing::debug!(dir = %self.dir.path().display(), "pack reads go through the page cache: {what}: {e}");
        }
    }

    /// The pack opened for direct reads; `None` when it cannot be (the
    /// buffered path then reads it, or names what is wrong with it).
    fn direct_file(&self, id: u64) -> Option<Arc<File>> {
        match cached_open(&self.direct, id, || {
            self.dir.open_read_direct(&pack_file_name(id))
        }) {
            Ok(f) => f,
            Err(e) => {
                if matches!(&e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EINVAL))
                {
                    self.refuse_direct("open", &e);
                }
                None
            }
        }
    }

    /// Run `f` on the blob at `loc`: its header and stored bytes
    /// (`loc.stored_len` after the header) in one direct read. `None`
    /// when the blob cannot be read directly (not a local pack, direct
    /// I/O refused): the caller reads it buffered.
    fn with_direct_blob<T>(
        &self,
        loc: &Location,
        id: &ChunkId,
        f: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Option<Result<T>> {
        if !self.direct_ok.load(Ordering::Relaxed) {
            return None;
        }
        let file = self.direct_file(loc.pack)?;
        let len = HEADER_LEN + loc.stored_len as usize;
        let mut buf = DIRECT_BUF.with(|c| std::mem::take(&mut *c.borrow_mut()));
        let r = match super::direct::read_at(&file, &mut buf, loc.offset, len) {
            Ok(range) => Some(f(&buf[range])),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Some(Err(self.name_blob(
                loc,
                id,
                Error::Corrupt(format!(
                    "pack {} ends before byte {}",
                    pack_file_name(loc.pack),
                    loc.offset + len as u64
                )),
            ))),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.refuse_direct("read", &e);
                None
            }
            Err(e) => Some(Err(Error::io("read pack", self.pack_path(loc.pack), e))),
        };
        if buf.capacity() <= SCRATCH_KEEP + super::direct::ALIGN * 2 {
            DIRECT_BUF.with(|c| *c.borrow_mut() = buf);
        }
        r
    }

    /// The blob at `loc` as stored (header and payload, not decoded),
    /// after checking its header and the checksum of its stored bytes:
    /// what gc copies into a new pack. Damage is an error, never copied.
    pub fn read_stored(&self, loc: &Location, id: &ChunkId) -> Result<EncodedBlob> {
        let read_at = |buf: &mut [u8], at: u64| self.read_exact_at(loc.pack, buf, at);
        // The header first: it bounds the payload (the index's length is
        // only believed when the header says the same).
        let mut head = [0u8; HEADER_LEN];
        read_at(&mut head, loc.offset)?;
        let header = BlobHeader::decode(&head)?;
        if header.id != *id || header.stored_len != loc.stored_len {
            return Err(Error::Corrupt(format!(
                "chunk {id}: the blob at offset {} of pack {} is another one",
                loc.offset,
                self.pack_name(loc.pack)
            )));
        }
        let mut payload = vec![0u8; header.stored_len as usize];
        read_at(&mut payload, loc.offset + HEADER_LEN as u64)?;
        if !header.stored_sum_matches(&payload) {
            return Err(Error::Corrupt(format!(
                "chunk {id}: its stored bytes in pack {} at offset {} are damaged",
                self.pack_name(loc.pack),
                loc.offset
            )));
        }
        Ok(EncodedBlob { header, payload })
    }

    /// Read, verify and decode the blob `id` at `loc` (content hash, or
    /// a fast stored sum or an authentication tag: see [`Check::Fast`]).
    pub fn read(&self, loc: &Location, id: &ChunkId) -> Result<Vec<u8>> {
        self.read_checked(loc, id, self.read_check(), Vec::new())
    }

    /// What a read checks: stored fast sums for local packs, content
    /// hashes for a remote source (its bytes are not ours until checked).
    fn read_check(&self) -> Check {
        if self.source.is_some() {
            Check::Sealed
        } else {
            Check::Fast
        }
    }

    /// Like [`PackReader::read`], decoding into `spare`'s allocation when
    /// it is large enough (readers that recycle buffers keep the
    /// allocator from spreading them over its arenas).
    pub fn read_into(&self, loc: &Location, id: &ChunkId, spare: Vec<u8>) -> Result<Vec<u8>> {
        self.read_checked(loc, id, self.read_check(), spare)
    }

    /// Read the blob `id` at `loc`, checking its stored checksum too (for
    /// scrubs: damage is named before decoding).
    pub fn scrub(&self, loc: &Location, id: &ChunkId) -> Result<Vec<u8>> {
        self.read_checked(loc, id, Check::Full, Vec::new())
    }

    fn read_checked(
        &self,
        loc: &Location,
        id: &ChunkId,
        check: Check,
        spare: Vec<u8>,
    ) -> Result<Vec<u8>> {
        // One direct read of header and payload when the pack allows it.
        let mut spare = Some(spare);
        if let Some(r) = self.with_direct_blob(loc, id, |bytes| {
            let (head, payload) = bytes.split_at(HEADER_LEN);
            let header = self.parse_header(loc, id, head)?;
            let spare = fit_spare(spare.take().unwrap_or_default(), &header);
            self.decode_payload(loc, id, &header, payload, check, spare)
        }) {
            return r;
        }
        let spare = spare.unwrap_or_default();
        let read_at = |buf: &mut [u8], at: u64| {
            self.read_exact_at(loc.pack, buf, at)
                .map_err(|e| self.name_blob(loc, id, e))
        };
        // Header and payload into separate buffers, so that a raw payload
        // is handed back without a copy.
        let mut head = [0u8; HEADER_LEN];
        read_at(&mut head, loc.offset)?;
        let header = self.parse_header(loc, id, &head)?;
        let len = loc.stored_len as usize;
        let spare = fit_spare(spare, &header);
        let at = loc.offset + HEADER_LEN as u64;
        // Buffers are not zeroed before a read: the read overwrites all of
        // them or fails (and the result is not used).
        if header.codec == Codec::Raw || header.encrypted {
            let mut payload = spare;
            set_len_keeping(&mut payload, len);
            read_at(&mut payload, at)?;
            return blob::decode(&header, payload, id, check, self.crypto.as_deref())
                .map_err(|e| self.locate(loc, e));
        }
        // A compressed payload goes through this thread's scratch buffer.
        let mut scratch = SCRATCH.with(|c| std::mem::take(&mut *c.borrow_mut()));
        set_len_keeping(&mut scratch, len);
        let r = read_at(&mut scratch, at)
            .and_then(|()| self.decode_payload(loc, id, &header, &scratch, check, spare));
        if scratch.capacity() <= SCRATCH_KEEP {
            SCRATCH.with(|c| *c.borrow_mut() = scratch);
        }
        r
    }

    /// A blob's header, damage named with the chunk and where it is.
    fn parse_header(&self, loc: &Location, id: &ChunkId, head: &[u8]) -> Result<BlobHeader> {
        BlobHeader::decode(head).map_err(|e| {
            Error::Corrupt(format!(
                "chunk {id} in pack {} at offset {}: {e}",
                self.pack_name(loc.pack),
                loc.offset
            ))
        })
    }

    /// Decode (and check) a stored payload into `spare`'s allocation.
    fn decode_payload(
        &self,
        loc: &Location,
        id: &ChunkId,
        header: &BlobHeader,
        payload: &[u8],
        check: Check,
        spare: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let crypto = self.crypto.as_deref();
        let r = if header.codec == Codec::Raw || header.encrypted {
            // Raw content is the payload itself; an encrypted payload is
            // opened in place.
            let mut owned = spare;
            owned.clear();
            owned.extend_from_slice(payload);
            blob::decode(header, owned, id, check, crypto)
        } else {
            blob::decode_ref(header, payload, id, check, spare, crypto)
        };
        r.map_err(|e| self.locate(loc, e))
    }

    /// A decoding error, with the pack and offset of the blob.
    fn locate(&self, loc: &Location, e: Error) -> Error {
        Error::Corrupt(format!(
            "{e} (pack {} offset {})",
            self.pack_name(loc.pack),
            loc.offset
        ))
    }

    /// A read that found the pack damaged (short), named with the chunk
    /// that was read from it.
    fn name_blob(&self, loc: &Location, id: &ChunkId, e: Error) -> Error {
        match e {
            Error::Corrupt(m) => Error::Corrupt(format!(
                "chunk {id}: {m} (the blob at offset {})",
                loc.offset
            )),
            e => e,
        }
    }
}

/// The open pack `id` from `cache`, or opened by `open` and kept (at most
/// 257 per cache: past that the cache starts again). `None` when `open`
/// finds no such file.
fn cached_open(
    cache: &Mutex<HashMap<u64, Arc<File>>>,
    id: u64,
    open: impl FnOnce() -> Result<Option<File>>,
) -> Result<Option<Arc<File>>> {
    if let Some(f) = cache.lock().get(&id) {
        return Ok(Some(f.clone()));
    }
    let Some(f) = open()? else { return Ok(None) };
    let f = Arc::new(f);
    let mut files = cache.lock();
    if files.len() > 256 {
        files.clear();
    }
    files.insert(id, f.clone());
    Ok(Some(f))
}

/// `spare` when it suits a blob of `header`'s size: large enough, and not
/// much larger than the content (it would hold memory for nothing).
fn fit_spare(spare: Vec<u8>, header: &BlobHeader) -> Vec<u8> {
    let need = header.raw_len as usize;
    if spare.capacity() >= need && spare.capacity() <= 2 * need.max(4096) {
        spare
    } else {
        Vec::new()
    }
}

thread_local! {
    /// Per-thread buffer for compressed payloads on their way to the
    /// decoder.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread buffer of direct reads (aligned inside, see
    /// [`super::direct`]).
    static DIRECT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Scratch buffers larger than this are not kept (a rare 8 MiB block
/// should not pin 8 MiB in every reader thread).
const SCRATCH_KEEP: usize = 2 << 20;

/// One blob found while scanning a pack.
#[derive(Debug, Clone)]
pub struct ScannedBlob {
    pub header: BlobHeader,
    pub location: Location,
}

/// The result of scanning a pack's headers.
#[derive(Debug, Default)]
pub struct PackScan {
    pub blobs: Vec<ScannedBlob>,
    /// Byte ranges that did not parse (corruption or a torn tail).
    pub damaged: Vec<(u64, u64)>,
}

/// Scan the blob headers of pack `id` in `dir` (payloads are skipped,
/// not verified). A damaged header is reported and scanning
/// resynchronises on the next valid header, so one bad byte (or a torn
/// tail) does not hide the rest of the pack.
pub fn scan_pack(dir: &Dir, id: u64) -> Result<PackScan> {
    let name = pack_file_name(id);
    let path = dir.join(&name);
    let f = dir.open_read(&name)?.ok_or_else(|| {
        Error::io(
            "open pack",
            &path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })?;
    let len = f.metadata().ctx("stat pack", &path)?.len();
    scan_with(id, len, &|buf: &mut [u8], at: u64| {
        f.read_exact_at(buf, at).ctx("read pack", &path)
    })
}

/// [`scan_pack`] of a pack held in memory (one read for upload).
pub fn scan_pack_bytes(bytes: &[u8], id: u64) -> PackScan {
    let read = |buf: &mut [u8], at: u64| -> Result<()> {
        let at = at as usize;
        match bytes.get(at..at + buf.len()) {
            Some(b) => {
                buf.copy_from_slice(b);
                Ok(())
            }
            None => Err(Error::Corrupt("read past the end of a pack".into())),
        }
    };
    // Reads stay within `len`, so they cannot fail.
    scan_with(id, bytes.len() as u64, &read).unwrap_or_default()
}

type ReadAt<'a> = &'a dyn Fn(&mut [u8], u64) -> Result<()>;

fn scan_with(id: u64, len: u64, read_at: ReadAt<'_>) -> Result<PackScan> {
    let mut out = PackScan::default();
    let mut hdr = [0u8; PACK_HEADER_LEN as usize];
    if len < PACK_HEADER_LEN || read_at(&mut hdr, 0).is_err() || hdr[HDR_MAGIC] != PACK_MAGIC {
        out.damaged.push((0, len));
        return Ok(out);
    }
    let mut off = PACK_HEADER_LEN;
    let mut h = [0u8; HEADER_LEN];
    let mut bad_start: Option<u64> = None;
    while off + HEADER_LEN as u64 <= len {
        read_at(&mut h, off)?;
        match BlobHeader::decode(&h) {
            Ok(header) if off + HEADER_LEN as u64 + header.stored_len as u64 <= len => {
                if let Some(s) = bad_start.take() {
                    out.damaged.push((s, off));
                }
                out.blobs.push(ScannedBlob {
                    header,
                    location: Location {
                        pack: id,
                        offset: off,
                        stored_len: header.stored_len,
                        raw_len: header.raw_len,
                        codec: header.codec,
                        kind: header.kind,
                    },
                });
                off += HEADER_LEN as u64 + header.stored_len as u64;
            }
            _ => {
                bad_start.get_or_insert(off);
                off = match find_magic(read_at, off + 1, len)? {
                    Some(next) => next,
                    None => len,
                };
            }
        }
    }
    if off < len {
        bad_start.get_or_insert(off);
    }
    if let Some(s) = bad_start {
        out.damaged.push((s, len));
    }
    Ok(out)
}

fn find_magic(read_at: ReadAt<'_>, from: u64, len: u64) -> Result<Option<u64>> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = from;
    while pos < len {
        let n = ((len - pos) as usize).min(buf.len());
        read_at(&mut buf[..n], pos)?;
        if let Some(i) = buf[..n].windows(4).position(|w| w == blob::BLOB_MAGIC) {
            return Ok(Some(pos + i as u64));
        }
        if n < 4 {
            break;
        }
        pos += (n - 3) as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::blob::encode;

    #[test]
    fn write_read_scan_and_resync() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open_path(tmp.path()).unwrap();
        let mut w = PackWriter::new(dir.try_clone().unwrap(), 1 << 20).unwrap();
        let mut locs = Vec::new();
        for i in 0..5u32 {
            let data = format!("blob number {i} ").repeat(100 + i as usize);
            let id = ChunkId::of(data.as_bytes());
            let b = encode(BlobKind::Chunk, id, data.as_bytes(), 3, None).unwrap();
            locs.push((id, w.append(&b).unwrap(), data));
        }
        let done = w.close().unwrap();
        assert_eq!(done, vec![1]);
        let r = PackReader::new(dir.try_clone().unwrap());
        for (id, loc, data) in &locs {
            assert_eq!(r.read(loc, id).unwrap(), data.as_bytes());
        }
        let path = tmp.path().join(pack_file_name(1));
        let scan = scan_pack(&dir, 1).unwrap();
        assert_eq!(scan.blobs.len(), 5);
        assert!(scan.damaged.is_empty());

        // Damage the second blob's header: the others are still found.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[locs[1].1.offset as usize + 10] ^= 0xff;
        // And append a torn tail.
        bytes.extend_from_slice(&blob::BLOB_MAGIC);
        bytes.extend_from_slice(&[0u8; 20]);
        std::fs::write(&path, &bytes).unwrap();
        let scan = scan_pack(&dir, 1).unwrap();
        assert_eq!(scan.blobs.len(), 4);
        assert_eq!(scan.damaged.len(), 2);
        // The in-memory scan (push) finds exactly what the file scan does.
        let bytes = std::fs::read(tmp.path().join(pack_file_name(1))).unwrap();
        let mem = scan_pack_bytes(&bytes, 1);
        assert_eq!(
            mem.blobs.iter().map(|b| b.location).collect::<Vec<_>>(),
            scan.blobs.iter().map(|b| b.location).collect::<Vec<_>>()
        );
        assert_eq!(mem.damaged, scan.damaged);
        let r = PackReader::new(dir.try_clone().unwrap());
        assert!(r.read(&locs[1].1, &locs[1].0).is_err());
        assert_eq!(
            r.read(&locs[2].1, &locs[2].0).unwrap(),
            locs[2].2.as_bytes()
        );
    }

    /// Direct reads give exactly what buffered reads give, for every
    /// codec and at any offset, and name a short or damaged pack the same
    /// way. The pack lives beside the sources (a disk filesystem: /tmp may
    /// be a tmpfs, which refuses O_DIRECT and would test only the
    /// fallback; the test then says so).
    #[test]
    fn direct_reads_match_buffered_reads() {
        let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let dir = Dir::open_path(tmp.path()).unwrap();
        let mut w = PackWriter::new(dir.try_clone().unwrap(), 64 << 20).unwrap();
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        let floats: Vec<u8> = noise(1 << 18)
            .chunks(4)
            .flat_map(|c| (f32::from(c[0]) / 7_000.0 - 0.018).to_le_bytes())
            .collect();
        let datas = [
            b"tiny".to_vec(),
            noise(5_000),                        // raw
            "text ".repeat(30_000).into_bytes(), // zstd
            floats,                              // planes
            vec![7u8; 4096],
            noise(1 << 20),
        ];
        let mut blobs = Vec::new();
        for d in &datas {
            let id = ChunkId::of(d);
            let b = encode(BlobKind::Chunk, id, d, 3, None).unwrap();
            blobs.push((id, w.append(&b).unwrap(), b.header.codec));
        }
        w.close().unwrap();
        let mut codecs: Vec<_> = blobs.iter().map(|b| b.2).collect();
        codecs.dedup();
        for c in [Codec::Raw, Codec::Zstd, Codec::Planes] {
            assert!(codecs.contains(&c), "codecs covered: {codecs:?}");
        }
        let direct = PackReader::new(dir.try_clone().unwrap());
        let buffered = PackReader::new(dir.try_clone().unwrap());
        buffered.use_buffered_reads();
        for ((id, loc, _), d) in blobs.iter().zip(&datas) {
            assert_eq!(&direct.read(loc, id).unwrap(), d);
            assert_eq!(&buffered.read(loc, id).unwrap(), d);
            let spare = Vec::with_capacity(d.len());
            assert_eq!(&direct.read_into(loc, id, spare).unwrap(), d);
        }
        // Where the filesystem takes O_DIRECT the reads were direct; where
        // it refuses it (EINVAL) the reader fell back, and the same bytes
        // came back buffered.
        let takes_direct = match dir.open_read_direct(&pack_file_name(1)) {
            Ok(_) => true,
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => false,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(direct.reads_direct(), takes_direct);
        if !takes_direct {
            eprintln!("O_DIRECT refused here (EINVAL): the fallback was checked, not direct reads");
        }

        // Damage inside a payload: both readers refuse the blob.
        let path = tmp.path().join(pack_file_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        let (id, loc, _) = blobs[1];
        bytes[loc.offset as usize + HEADER_LEN + 1000] ^= 1;
        // And cut the last blob short.
        let (last_id, last, _) = blobs[5];
        bytes.truncate(last.offset as usize + HEADER_LEN + 100);
        std::fs::write(&path, &bytes).unwrap();
        let direct = PackReader::new(dir.try_clone().unwrap());
        let buffered = PackReader::new(dir.try_clone().unwrap());
        buffered.use_buffered_reads();
        for r in [&direct, &buffered] {
            assert!(r.read(&loc, &id).is_err());
            let e = match r.read(&last, &last_id) {
                Ok(_) => panic!("a blob cut short was read"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains("ends before byte"), "{e}");
            assert!(e.contains(&last_id.to_string()), "{e}");
            let (id0, loc0, _) = blobs[3];
            assert_eq!(r.read(&loc0, &id0).unwrap(), datas[3]);
        }
    }

    #[test]
    fn rotates_at_target_size_and_never_reuses_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open_path(tmp.path()).unwrap();
        let mut w = PackWriter::new(dir.try_clone().unwrap(), 1000).unwrap();
        for i in 0..4u8 {
            let data = vec![i; 900];
            let b = encode(BlobKind::Chunk, ChunkId::of(&data), &data, 0, None).unwrap();
            w.append(&b).unwrap();
        }
        w.close().unwrap();
        assert_eq!(list_packs(&dir).unwrap(), vec![1, 2, 3, 4]);
        let w2 = PackWriter::new(dir, 1000).unwrap();
        assert_eq!(w2.ids.peek(), 5);
    }

    #[test]
    fn location_roundtrip() {
        let l = Location {
            pack: 7,
            offset: 1234,
            stored_len: 99,
            raw_len: 100,
            codec: Codec::Zstd,
            kind: BlobKind::Manifest,
        };
        assert_eq!(Location::decode(&l.encode()).unwrap(), l);
    }
}
