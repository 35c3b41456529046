//! gc's list of candidates: the objects that forgets may have released
//! since the last gc (docs/format.md, "gc candidates"). An incremental gc
//! looks only at these, and asks the reference ledger whether any
//! snapshot still references each; a full gc marks everything.
//!
//! The list is trusted only while nothing else can have left garbage:
//! it is dropped (the next gc is then a full one) when a capture gives up
//! after storing, when the index is rebuilt, when a record is rewritten,
//! when the ledger loses what a forget released, and when a process that
//! held the repository for writing stopped without closing it (its
//! session marker is still there at the next open: a capture may have
//! died half-way). Dropping it is always safe; an entry too many costs a
//! lookup; only a missing entry would leave garbage behind until the
//! next full gc, never delete anything live.
//!
//! Files, under `cache/gc/`:
//! - `candidates`: magic and format, then records appended, each `count`
//!   (u64 LE), `count` ids, and the blake3 of both. Absent or damaged:
//!   not trusted.
//! - `candidates.taken`: what a gc took and has not finished with (read
//!   again by the next gc if that one died).
//! - `session`: present while a process holds the repository for
//!   writing.

use std::io::Write;

use parking_lot::Mutex;

use super::layout::{CACHE, DIR_MODE};
use super::Repository;
use crate::error::Result;
use crate::store::ChunkId;
use crate::util::dirfd::Dir;

/// The directory of gc's files, under `cache/`.
pub const GC_DIR: &str = "gc";
pub const CANDIDATES: &str = "candidates";
pub const TAKEN: &str = "candidates.taken";
pub const SESSION: &str = "session";
/// The encoding of the candidate list (docs/format.md).
pub const CANDIDATES_FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"RWGCCAN\n";
const HEAD_LEN: usize = 12;
/// A longer list is not read (not trusted: the next gc marks everything):
/// 32 million ids.
const MAX_LIST_BYTES: u64 = 1 << 30;

/// Appends, takes and drops of the list, one at a time in this process
/// (the repository lock keeps other processes out).
static LIST: Mutex<()> = Mutex::new(());

fn gc_dir(repo: &Repository) -> Option<Dir> {
    if !repo.is_writable() {
        return None;
    }
    let cache = repo.dir().ensure_dir(CACHE, DIR_MODE).ok()?;
    cache.ensure_dir(GC_DIR, DIR_MODE).ok()
}

fn head() -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&CANDIDATES_FORMAT.to_le_bytes());
    b
}

fn record(ids: &[ChunkId]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + ids.len() * 32 + 32);
    b.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for id in ids {
        b.extend_from_slice(&id.0);
    }
    let sum = blake3::hash(&b);
    b.extend_from_slice(sum.as_bytes());
    b
}

/// The ids of a list file; `None` when it is absent or does not parse.
fn read_list(dir: &Dir, name: &str) -> Option<Vec<ChunkId>> {
    let b = dir.read(name, MAX_LIST_BYTES).ok()??;
    if b.len() < HEAD_LEN || b[..HEAD_LEN] != head()[..] {
        return None;
    }
    let mut out = Vec::new();
    let mut at = HEAD_LEN;
    while at < b.len() {
        let count =
            usize::try_from(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)).ok()?;
        let end = at.checked_add(8)?.checked_add(count.checked_mul(32)?)?;
        let body = b.get(at..end)?;
        let sum = b.get(end..end + 32)?;
        if blake3::hash(body).as_bytes() != sum {
            return None;
        }
        for c in body[8..].chunks_exact(32) {
            let mut id = [0u8; 32];
            id.copy_from_slice(c);
            out.push(ChunkId(id));
        }
        at = end + 32;
    }
    Some(out)
}

fn drop_list(dir: &Dir) {
    for n in [CANDIDATES, TAKEN] {
        let _ = dir.remove_file(n);
    }
}

/// Start a trusted, empty list in a new repository at `root` (nothing in
/// it can be garbage yet: its first gc after a forget is incremental).
/// Best effort: without it the first gc marks everything.
pub(crate) fn start_at(root: &Dir) {
    let r = root
        .ensure_dir(CACHE, DIR_MODE)
        .and_then(|c| c.ensure_dir(GC_DIR, DIR_MODE))
        .and_then(|d| d.write_atomic(CANDIDATES, &head()));
    if let Err(e) = r {
        tracing::debug!("no gc candidate list at init ({e}): the first gc marks everything");
    }
}

/// Drop the list of the repository at `root` (the index is being
/// rebuilt: blobs no record names enter it again).
pub(crate) fn drop_at(root: &Dir) {
    if let Ok(d) = root.open_dir(CACHE).and_then(|c| c.open_dir(GC_DIR)) {
        let _one = LIST.lock();
        drop_list(&d);
    }
}

impl Repository {
    /// Add what a forget may have released to gc's candidates (nothing
    /// when the list is not trusted: the next gc marks everything
    /// anyway). A failed write drops the list.
    pub fn note_gc_candidates(&self, ids: &[ChunkId]) {
        if ids.is_empty() {
            return;
        }
        let Some(dir) = gc_dir(self) else { return };
        let _one = LIST.lock();
        let f = match dir.open_file(
            CANDIDATES,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::APPEND,
            0,
        ) {
            Ok(f) => f,
            Err(_) => return, // absent: not trusted
        };
        let r = (&f).write_all(&record(ids)).and_then(|()| f.sync_data());
        if let Err(e) = r {
            tracing::warn!("gc candidates not recorded ({e}): the next gc marks everything");
            drop_list(&dir);
        }
    }

    /// Stop trusting gc's candidates: the next gc marks everything.
    pub fn drop_gc_candidates(&self, why: &str) {
        let Some(dir) = gc_dir(self) else { return };
        let _one = LIST.lock();
        if dir.stat_at(CANDIDATES).is_ok() || dir.stat_at(TAKEN).is_ok() {
            tracing::debug!("gc candidates dropped: {why}");
        }
        drop_list(&dir);
    }

    /// Start a trusted, empty list (a full gc, before it marks: whatever
    /// a forget releases from then on is added to it).
    pub fn reset_gc_candidates(&self) -> Result<()> {
        let Some(dir) = gc_dir(self) else {
            return Ok(());
        };
        let _one = LIST.lock();
        let _ = dir.remove_file(TAKEN);
        dir.write_atomic(CANDIDATES, &head())
    }

    /// Take the candidates for an incremental gc: those of the list and
    /// of a gc that died before finishing, sorted and unique. The list
    /// goes on empty (forgets during the gc add to it); what is taken
    /// stays in `candidates.taken` until [`Self::finish_gc_candidates`].
    /// `None`: the list is not trusted (a full gc is needed).
    pub fn take_gc_candidates(&self) -> Option<Vec<ChunkId>> {
        let dir = gc_dir(self)?;
        let _one = LIST.lock();
        let mut ids = read_list(&dir, CANDIDATES)?;
        if dir.stat_at(TAKEN).is_ok() {
            match read_list(&dir, TAKEN) {
                Some(more) => ids.extend(more),
                None => {
                    drop_list(&dir);
                    return None;
                }
            }
        }
        ids.sort_unstable_by_key(|id| id.0);
        ids.dedup();
        let mut taken = head();
        taken.extend_from_slice(&record(&ids));
        let r = dir
            .write_atomic(TAKEN, &taken)
            .and_then(|()| dir.write_atomic(CANDIDATES, &head()));
        if let Err(e) = r {
            tracing::warn!("gc candidates cannot be taken ({e}): marking everything");
            drop_list(&dir);
            return None;
        }
        Some(ids)
    }

    /// An incremental gc is done: what it could not decide yet (`keep`)
    /// goes back on the list, and the taken list is removed.
    pub fn finish_gc_candidates(&self, keep: &[ChunkId]) {
        self.note_gc_candidates(keep);
        let Some(dir) = gc_dir(self) else { return };
        let _one = LIST.lock();
        let _ = dir.remove_file(TAKEN);
    }

    /// Whether gc's candidates are trusted now (for status and tests).
    pub fn gc_candidates_trusted(&self) -> bool {
        gc_dir(self).is_some_and(|d| read_list(&d, CANDIDATES).is_some())
    }
}

/// Present while this process holds the repository for writing; removed
/// when the repository is closed.
pub(crate) struct Session {
    dir: Dir,
}

impl Session {
    /// Called when a repository is opened for writing: a marker left
    /// behind means the previous writer stopped without closing (a
    /// capture may have stored chunks that no record names), so the
    /// candidates are dropped. Best effort: no marker, no trust.
    pub(crate) fn begin(repo: &Repository, index_rebuilt: bool) -> Option<Session> {
        let dir = gc_dir(repo)?;
        {
            let _one = LIST.lock();
            if index_rebuilt || dir.stat_at(SESSION).is_ok() {
                drop_list(&dir);
            }
        }
        let ok = dir
            .open_file(
                SESSION,
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CREATE,
                0o600,
            )
            .and_then(|f| {
                f.sync_all()
                    .map_err(|e| crate::error::Error::io("sync", dir.join(SESSION), e))
            })
            .and_then(|()| dir.fsync());
        if ok.is_err() {
            let _one = LIST.lock();
            drop_list(&dir);
            return None;
        }
        Some(Session { dir })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.dir.remove_file(SESSION);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = Dir::open_path(t.path()).unwrap();
        let ids: Vec<ChunkId> = (0..5u8).map(|i| ChunkId([i; 32])).collect();
        let mut b = head();
        b.extend_from_slice(&record(&ids[..2]));
        b.extend_from_slice(&record(&ids[2..]));
        dir.write_atomic(CANDIDATES, &b).unwrap();
        assert_eq!(read_list(&dir, CANDIDATES).unwrap(), ids);
        // A torn tail or a flipped byte: not trusted.
        dir.write_atomic(CANDIDATES, &b[..b.len() - 1]).unwrap();
        assert!(read_list(&dir, CANDIDATES).is_none());
        let mut flipped = b.clone();
        flipped[HEAD_LEN + 20] ^= 1;
        dir.write_atomic(CANDIDATES, &flipped).unwrap();
        assert!(read_list(&dir, CANDIDATES).is_none());
        dir.write_atomic(CANDIDATES, &head()).unwrap();
        assert_eq!(read_list(&dir, CANDIDATES).unwrap(), vec![]);
        assert!(read_list(&dir, TAKEN).is_none());
    }
}
