//! The reference ledger: for every snapshot, how the chunks its files
//! reference changed against the snapshot before it in id order (a
//! multiset delta: chunk id and the change in how many times the
//! snapshot's files name it), with the change in its file count and
//! logical size. The first snapshot's delta lists everything it holds;
//! each later one only what its capture changed (read from the
//! directories whose objects differ), so the ledger grows with the
//! changes, not with files times snapshots.
//!
//! Summing a chunk's deltas in id order gives, at every snapshot, how
//! many times it is referenced there; a merge of all deltas by chunk id
//! ([`for_each_chunk`]) gives every chunk's presence over the history in
//! memory that follows the number of snapshots. That is what the space
//! accounting (`stats`, the unique sizes of `snapshots`, metrics) reads
//! instead of replaying the trees.
//!
//! The ledger is a cache (`cache/ledger/<id>.delta`, docs/format.md):
//! each delta names its snapshot's record and its predecessor's by a key
//! over id and manifest, so a delta that no longer fits (a snapshot
//! forgotten or rewritten before it) is never used. When a snapshot is
//! forgotten, the delta after it is merged with its own (no tree read);
//! anything missing or damaged is computed again from the trees. Deleting
//! the directory loses nothing.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io::{BufReader, Read};

use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::snapshot::dirs::Stored;
use crate::snapshot::{Node, SnapshotRecord, Tree};
use crate::store::ChunkId;
use crate::util::dirfd::Dir;

/// The ledger's directory, under the repository's `cache/`.
pub const LEDGER_DIR: &str = "ledger";
/// The encoding of a delta file (docs/format.md, "Reference ledger").
pub const LEDGER_FORMAT: u32 = 2;
const MAGIC: &[u8; 8] = b"RWLEDGR\n";
/// magic, format, snapshot id, key, has-prev, prev id, prev key, files,
/// logical, entry count, structure entry count, complete flag.
const HEADER_LEN: usize = 8 + 4 + 8 + 32 + 1 + 8 + 32 + 8 + 8 + 8 + 8 + 1;
/// Chunk id and the change in its reference count (i64 LE).
const ENTRY_LEN: usize = 32 + 8;
/// The blake3 of everything before it.
const TRAILER_LEN: usize = 32;
/// Deltas of at most this many entries are read whole for a merge.
const SMALL_ENTRIES: u64 = 16 << 10;
/// What every error of a ledger that does not add up starts with.
const BAD: &str = "reference ledger delta";

/// What a delta was computed for: a record's id and manifest.
pub type Key = [u8; 32];

/// The key of a record: its id and the manifest it names (a record
/// rewritten by a synthetic full or a conversion gets a new key).
pub fn key_of(r: &SnapshotRecord) -> Key {
    let mut h = blake3::Hasher::new();
    h.update(&r.id.to_le_bytes());
    for p in &r.manifest {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    *h.finalize().as_bytes()
}

/// One snapshot's change against the snapshot before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub snap: u64,
    pub key: Key,
    /// The snapshot it is a change from (none for the first).
    pub prev: Option<(u64, Key)>,
    /// Change in the number of files (each name of a hard link counts).
    pub files: i64,
    /// Change in the sum of the files' sizes.
    pub logical: i64,
    /// Sorted by chunk id, unique, no zero.
    pub entries: Vec<(ChunkId, i64)>,
    /// The same for the other objects the snapshot references (format
    /// 2): its manifest's parts, its directory objects' parts and its
    /// files' segments, one per path.
    pub structure: Vec<(ChunkId, i64)>,
    /// `structure` is the whole change (both snapshots are stored as
    /// trees): gc may decide from the ledger what a forget released.
    pub complete: bool,
}

/// The header of a delta file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    snap: u64,
    key: Key,
    prev: Option<(u64, Key)>,
    files: i64,
    logical: i64,
    count: u64,
    scount: u64,
    complete: bool,
}

fn file_name(id: u64) -> String {
    format!("{id:016x}.delta")
}

fn id_of_name(name: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(name).ok()?.strip_suffix(".delta")?;
    (s.len() == 16).then(|| u64::from_str_radix(s, 16).ok())?
}

impl Delta {
    fn header(&self) -> Header {
        Header {
            snap: self.snap,
            key: self.key,
            prev: self.prev,
            files: self.files,
            logical: self.logical,
            count: self.entries.len() as u64,
            scount: self.structure.len() as u64,
            complete: self.complete,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let h = self.header();
        let mut b = Vec::with_capacity(
            HEADER_LEN + (self.entries.len() + self.structure.len()) * ENTRY_LEN + TRAILER_LEN,
        );
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&LEDGER_FORMAT.to_le_bytes());
        b.extend_from_slice(&h.snap.to_le_bytes());
        b.extend_from_slice(&h.key);
        let (p, pk) = h.prev.unwrap_or((0, [0; 32]));
        b.push(u8::from(h.prev.is_some()));
        b.extend_from_slice(&p.to_le_bytes());
        b.extend_from_slice(&pk);
        b.extend_from_slice(&h.files.to_le_bytes());
        b.extend_from_slice(&h.logical.to_le_bytes());
        b.extend_from_slice(&h.count.to_le_bytes());
        b.extend_from_slice(&h.scount.to_le_bytes());
        b.push(u8::from(h.complete));
        for (id, n) in self.entries.iter().chain(&self.structure) {
            b.extend_from_slice(&id.0);
            b.extend_from_slice(&n.to_le_bytes());
        }
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        b
    }

    /// Decode and check a whole delta file.
    pub fn decode(b: &[u8]) -> Result<Delta> {
        if b.len() < HEADER_LEN + TRAILER_LEN {
            return Err(bad("shorter than its header"));
        }
        let (body, sum) = b.split_at(b.len() - TRAILER_LEN);
        if blake3::hash(body).as_bytes() != sum {
            return Err(bad("its checksum does not match"));
        }
        let h = decode_header(body)?;
        if Some(body.len() as u64) != h.body_len() {
            return Err(bad("its length does not match its entry count"));
        }
        let all: Vec<(ChunkId, i64)> = body[HEADER_LEN..]
            .chunks_exact(ENTRY_LEN)
            .map(entry)
            .collect();
        let (entries, structure) = all.split_at(h.count as usize);
        check_entries(entries)?;
        check_entries(structure)?;
        Ok(Delta {
            snap: h.snap,
            key: h.key,
            prev: h.prev,
            files: h.files,
            logical: h.logical,
            entries: entries.to_vec(),
            structure: structure.to_vec(),
            complete: h.complete,
        })
    }
}

fn bad(why: &str) -> Error {
    Error::Corrupt(format!("{BAD}: {why}"))
}

/// Run `f` over the ledger; if the ledger does not add up (a delta that
/// passed its checksum but is wrong, or one replaced while read), delete
/// it and run `f` once more over deltas computed again from the trees.
pub fn rebuilding_once<T>(repo: &Repository, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    match f() {
        Err(Error::Corrupt(m)) if m.starts_with(BAD) && repo.is_writable() => {
            tracing::warn!("{m}: computing the reference ledger again");
            repo.drop_gc_candidates("the reference ledger is computed again");
            if let Some(dir) = ledger_dir(repo) {
                if let Ok(names) = dir.names() {
                    for n in names {
                        if let Some(id) = id_of_name(&n) {
                            let _ = dir.remove_file(&file_name(id));
                        }
                    }
                }
            }
            f()
        }
        r => r,
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn key_at(b: &[u8], at: usize) -> Key {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[at..at + 32]);
    a
}

fn entry(e: &[u8]) -> (ChunkId, i64) {
    (ChunkId(key_at(e, 0)), u64_at(e, 32) as i64)
}

fn check_entries(entries: &[(ChunkId, i64)]) -> Result<()> {
    for w in entries.windows(2) {
        if w[0].0 .0 >= w[1].0 .0 {
            return Err(bad("its entries are not sorted"));
        }
    }
    if entries.iter().any(|(_, n)| *n == 0) {
        return Err(bad("it holds a zero change"));
    }
    Ok(())
}

fn decode_header(b: &[u8]) -> Result<Header> {
    if b.len() < HEADER_LEN || &b[..8] != MAGIC {
        return Err(bad("not a delta file"));
    }
    let format = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if format != LEDGER_FORMAT {
        return Err(bad(&format!(
            "format {format} (this version reads {LEDGER_FORMAT})"
        )));
    }
    let prev = match b[52] {
        0 => None,
        1 => Some((u64_at(b, 53), key_at(b, 61))),
        _ => return Err(bad("bad predecessor flag")),
    };
    Ok(Header {
        snap: u64_at(b, 12),
        key: key_at(b, 20),
        prev,
        files: u64_at(b, 93) as i64,
        logical: u64_at(b, 101) as i64,
        count: u64_at(b, 109),
        scount: u64_at(b, 117),
        complete: match b[125] {
            0 => false,
            1 => true,
            _ => return Err(bad("bad completeness flag")),
        },
    })
}

impl Header {
    /// The length of the file without its trailer (`None`: absurd counts).
    fn body_len(&self) -> Option<u64> {
        let n = self.count.checked_add(self.scount)?;
        n.checked_mul(ENTRY_LEN as u64)?
            .checked_add(HEADER_LEN as u64)
    }
}

/// Sort block occurrences by id and add up each id's changes, in place (a
/// first snapshot's occurrences are one per block: a second list beside
/// them doubled the ledger's part of its peak).
fn fold_occurrences(mut occ: Vec<(ChunkId, i64)>) -> Vec<(ChunkId, i64)> {
    occ.sort_unstable_by_key(|a| a.0 .0);
    let mut w = 0usize;
    for r in 0..occ.len() {
        if w > 0 && occ[w - 1].0 == occ[r].0 {
            occ[w - 1].1 += occ[r].1;
        } else {
            occ[w] = occ[r];
            w += 1;
        }
    }
    occ.truncate(w);
    occ.retain(|(_, n)| *n != 0);
    occ.shrink_to_fit();
    occ
}

fn add_tree(
    t: &Tree,
    sign: i64,
    files: &mut i64,
    logical: &mut i64,
    occ: &mut Vec<(ChunkId, i64)>,
) {
    for (_, node) in t.entries.values() {
        if let Node::File { size, .. } = node {
            *files += sign;
            *logical += sign * (*size as i64);
            occ.extend(Tree::blocks_of(node).iter().map(|id| (*id, sign)));
        }
    }
}

/// The manifest parts of `rec` with `sign`.
fn manifest_structure(
    rec: &SnapshotRecord,
    sign: i64,
    socc: &mut Vec<(ChunkId, i64)>,
) -> Result<()> {
    socc.extend(rec.manifest_ids()?.into_iter().map(|id| (id, sign)));
    Ok(())
}

/// `rec`'s delta against `prev`, from the trees: for snapshots stored as
/// trees only the directories whose objects differ are read (the first
/// snapshot is walked one directory at a time); older formats are
/// resolved (and their structure is left incomplete).
pub fn compute(
    repo: &Repository,
    prev: Option<&SnapshotRecord>,
    rec: &SnapshotRecord,
) -> Result<Delta> {
    let (mut files, mut logical) = (0i64, 0i64);
    let mut occ: Vec<(ChunkId, i64)> = Vec::new();
    let mut socc: Vec<(ChunkId, i64)> = Vec::new();
    let mut complete = false;
    manifest_structure(rec, 1, &mut socc)?;
    match prev {
        Some(p) => {
            manifest_structure(p, -1, &mut socc)?;
            let (old, new) = match (repo.load_stored(p)?, repo.load_stored(rec)?) {
                (Stored::Tree(ra), Stored::Tree(rb)) => {
                    complete = true;
                    crate::snapshot::dirs::differing_with(repo, &ra, &rb, &mut |id, n| {
                        socc.push((id, n))
                    })?
                }
                _ => repo.resolve_pair(p, rec)?,
            };
            add_tree(&old, -1, &mut files, &mut logical, &mut occ);
            add_tree(&new, 1, &mut files, &mut logical, &mut occ);
        }
        None => match repo.load_stored(rec)? {
            Stored::Tree(root) => {
                complete = true;
                crate::snapshot::dirs::walk_files_with(
                    repo,
                    &root,
                    &mut |size, ids| {
                        files += 1;
                        logical += size as i64;
                        occ.extend(ids.iter().map(|id| (*id, 1)));
                    },
                    &mut |id, n| socc.push((id, n)),
                )?;
            }
            Stored::Changes(_) => {
                let t = repo.resolve(rec)?;
                add_tree(&t, 1, &mut files, &mut logical, &mut occ);
            }
        },
    }
    Ok(Delta {
        snap: rec.id,
        key: key_of(rec),
        prev: prev.map(|p| (p.id, key_of(p))),
        files,
        logical,
        entries: fold_occurrences(occ),
        structure: fold_occurrences(socc),
        complete,
    })
}

/// The structure change of a capture from what it knows without reading
/// anything: the manifests of both records, the directory objects' parts
/// its write replaced and wrote (`dirs`, from `DirMemo::note_changes`),
/// and per changed path the segments of the file before and after (`id`
/// gives a segment's id from its bytes, as the store does).
pub fn structure_from_changes<'a>(
    prev: &SnapshotRecord,
    rec: &SnapshotRecord,
    dirs: Vec<(ChunkId, i64)>,
    changes: impl Iterator<Item = (Option<&'a Node>, Option<&'a Node>)>,
    id: &dyn Fn(&[u8]) -> ChunkId,
) -> Result<(Vec<(ChunkId, i64)>, bool)> {
    let mut socc = dirs;
    manifest_structure(rec, 1, &mut socc)?;
    manifest_structure(prev, -1, &mut socc)?;
    for (old, new) in changes {
        for (node, sign) in [(old, -1i64), (new, 1)] {
            if let Some(Node::File { blocks, .. }) = node {
                let segs = crate::snapshot::dirs::segment_ids(blocks, id);
                socc.extend(segs.into_iter().map(|s| (s, sign)));
            }
        }
    }
    Ok((fold_occurrences(socc), true))
}

/// `rec`'s delta against `prev` from the capture's own record of what it
/// changed: per changed path its node before (in `prev`) and after (in
/// `rec`), `None` where there was none; `structure` from
/// [`structure_from_changes`].
pub fn from_changes<'a>(
    prev: &SnapshotRecord,
    rec: &SnapshotRecord,
    changes: impl Iterator<Item = (Option<&'a Node>, Option<&'a Node>)>,
    structure: (Vec<(ChunkId, i64)>, bool),
) -> Delta {
    let (mut files, mut logical) = (0i64, 0i64);
    let mut occ: Vec<(ChunkId, i64)> = Vec::new();
    for (old, new) in changes {
        for (node, sign) in [(old, -1i64), (new, 1)] {
            if let Some(node @ Node::File { size, .. }) = node {
                files += sign;
                logical += sign * (*size as i64);
                occ.extend(Tree::blocks_of(node).iter().map(|id| (*id, sign)));
            }
        }
    }
    Delta {
        snap: rec.id,
        key: key_of(rec),
        prev: Some((prev.id, key_of(prev))),
        files,
        logical,
        entries: fold_occurrences(occ),
        structure: structure.0,
        complete: structure.1,
    }
}

/// Two sorted lists of changes added up; ids that cancel out go to
/// `cancelled`.
fn merge_lists(
    a: &[(ChunkId, i64)],
    b: &[(ChunkId, i64)],
    cancelled: &mut Vec<ChunkId>,
) -> Vec<(ChunkId, i64)> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let (id, n) = if j >= b.len() || (i < a.len() && a[i].0 .0 < b[j].0 .0) {
            i += 1;
            a[i - 1]
        } else if i >= a.len() || b[j].0 .0 < a[i].0 .0 {
            j += 1;
            b[j - 1]
        } else {
            i += 1;
            j += 1;
            (a[i - 1].0, a[i - 1].1 + b[j - 1].1)
        };
        if n != 0 {
            out.push((id, n));
        } else {
            cancelled.push(id);
        }
    }
    out
}

/// `a` (from P to S) followed by `b` (from S to N): the delta from P to N.
pub fn merge(a: &Delta, b: &Delta) -> Delta {
    merge_noting(a, b, &mut Vec::new())
}

/// [`merge`], giving the ids that no longer appear (referenced by S and
/// neither P nor N, or the other way round): what forgetting S may have
/// released.
pub fn merge_noting(a: &Delta, b: &Delta, cancelled: &mut Vec<ChunkId>) -> Delta {
    Delta {
        snap: b.snap,
        key: b.key,
        prev: a.prev,
        files: a.files + b.files,
        logical: a.logical + b.logical,
        entries: merge_lists(&a.entries, &b.entries, cancelled),
        structure: merge_lists(&a.structure, &b.structure, cancelled),
        complete: a.complete && b.complete,
    }
}

/// Where one snapshot's delta is read from.
enum Source {
    /// A checked file of the ledger.
    File(String, Header),
    /// Computed here and not stored (a repository this process may not
    /// write).
    Mem(Delta),
}

impl Source {
    fn files_logical(&self) -> (i64, i64) {
        match self {
            Source::File(_, h) => (h.files, h.logical),
            Source::Mem(d) => (d.files, d.logical),
        }
    }
}

/// The ledger directory: created when the repository is writable.
fn ledger_dir(repo: &Repository) -> Option<Dir> {
    let cache = if repo.is_writable() {
        repo.dir()
            .ensure_dir(crate::repo::layout::CACHE, crate::repo::layout::DIR_MODE)
            .ok()?
    } else {
        repo.dir().open_dir(crate::repo::layout::CACHE).ok()?
    };
    if repo.is_writable() {
        cache
            .ensure_dir(LEDGER_DIR, crate::repo::layout::DIR_MODE)
            .ok()
    } else {
        cache.open_dir(LEDGER_DIR).ok()
    }
}

/// A delta file as this process last verified it: device, inode, size,
/// mtime and ctime (ns).
type FileIdentity = (u64, u64, u64, i64, i64);

/// Deltas whose checksum this process verified, by device and inode:
/// the rest of their identity and their header. A daemon reads every
/// delta at every listing and after every snapshot (the first
/// snapshot's is 40 MB at 10^6 files), and hashing them each time would
/// cost more than the rest. Files are replaced whole (written aside and
/// renamed), so a changed delta is a new file; its header is still read
/// and compared each time. At most [`VERIFIED_MAX`] files (then it
/// starts again).
static VERIFIED: parking_lot::Mutex<Option<Verified>> = parking_lot::Mutex::new(None);
type Verified = HashMap<(u64, u64), (FileIdentity, Header)>;
const VERIFIED_MAX: usize = 1 << 16;

fn identity(m: &std::fs::Metadata) -> FileIdentity {
    use std::os::unix::fs::MetadataExt;
    (
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.ctime() * 1_000_000_000 + m.ctime_nsec(),
    )
}

/// Check a delta file by reading it through (its checksum, its length),
/// without holding its entries: its header, or `None` when it is absent
/// or damaged. With `memo`, a delta this process verified before and
/// that is still the same file is not hashed again (what the space
/// accounting reads); gc and forget, which decide what to delete from
/// the ledger, always hash.
fn check_file(dir: &Dir, name: &str, memo: bool) -> Option<Header> {
    let f = dir.open_read(name).ok()??;
    let meta = f.metadata().ok()?;
    let len = meta.len();
    if len < (HEADER_LEN + TRAILER_LEN) as u64 {
        return None;
    }
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).ok()?;
    let h = decode_header(&head).ok()?;
    if Some(len) != h.body_len()?.checked_add(TRAILER_LEN as u64) {
        return None;
    }
    let id = identity(&meta);
    if memo {
        let v = VERIFIED.lock();
        if v.as_ref().and_then(|v| v.get(&(id.0, id.1))) == Some(&(id, h.clone())) {
            return Some(h);
        }
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(&head);
    let mut rest = (&mut r).take(len - (HEADER_LEN + TRAILER_LEN) as u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = rest.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mut sum = [0u8; TRAILER_LEN];
    r.read_exact(&mut sum).ok()?;
    if hasher.finalize().as_bytes() != &sum {
        return None;
    }
    let mut v = VERIFIED.lock();
    let v = v.get_or_insert_with(HashMap::new);
    if v.len() >= VERIFIED_MAX {
        v.clear();
    }
    v.insert((id.0, id.1), (id, h.clone()));
    Some(h)
}

fn read_delta(dir: &Dir, id: u64) -> Option<Delta> {
    let b = dir.read(&file_name(id), u64::MAX >> 1).ok()??;
    Delta::decode(&b).ok()
}

/// Follow `d`'s predecessors through the deltas of forgotten snapshots
/// (ids not in `live`) until it starts where `want` says: the merged
/// delta and the forgotten snapshots it went through, or `None` when the
/// chain is broken.
fn heal(
    dir: &Dir,
    mut d: Delta,
    want: Option<(u64, Key)>,
    live: &HashSet<u64>,
    cancelled: &mut Vec<ChunkId>,
) -> Option<(Delta, Vec<u64>)> {
    let mut through = Vec::new();
    while d.prev != want {
        let (s, ks) = d.prev?;
        if live.contains(&s) || through.len() > live.len() + 4096 {
            return None;
        }
        let ds = read_delta(dir, s)?;
        if ds.key != ks || ds.snap != s {
            return None;
        }
        d = merge_noting(&ds, &d, cancelled);
        through.push(s);
    }
    Some((d, through))
}

/// Make sure every snapshot of `all` (sorted by id) has its delta: kept
/// when it fits, merged over forgotten snapshots, else computed from the
/// trees (and stored when the repository is writable). Deltas of
/// snapshots that no longer exist are removed once nothing needs them.
/// What the forgotten snapshots referenced alone goes on gc's candidates
/// (see `repo::candidates`); when that cannot be told (a delta lost or
/// not fitting), the candidates are dropped.
fn prepare(repo: &Repository, all: &[SnapshotRecord]) -> Result<Vec<Source>> {
    prepare_forgetting(repo, all, &HashSet::new(), false)
}

/// [`prepare`] for the space accounting: deltas this process verified
/// before are not hashed again (see [`check_file`]).
fn prepare_to_count(repo: &Repository, all: &[SnapshotRecord]) -> Result<Vec<Source>> {
    prepare_forgetting(repo, all, &HashSet::new(), true)
}

/// [`prepare`], also settling the deltas of `forgotten` (snapshots just
/// forgotten, whatever their ids: the newest one too).
fn prepare_forgetting(
    repo: &Repository,
    all: &[SnapshotRecord],
    forgotten: &HashSet<u64>,
    memo: bool,
) -> Result<Vec<Source>> {
    let dir = ledger_dir(repo);
    let writable = repo.is_writable() && dir.is_some();
    let keys: Vec<Key> = all.iter().map(key_of).collect();
    let live: HashSet<u64> = all.iter().map(|r| r.id).collect();
    let mut merged: HashSet<u64> = HashSet::new();
    let mut out = Vec::with_capacity(all.len());
    for (i, rec) in all.iter().enumerate() {
        let want = (i > 0).then(|| (all[i - 1].id, keys[i - 1]));
        let name = file_name(rec.id);
        let mut had_file = false;
        if let Some(d) = &dir {
            had_file = d.stat_at(&name).is_ok();
            if let Some(h) = check_file(d, &name, memo) {
                if h.snap == rec.id && h.key == keys[i] {
                    if h.prev == want {
                        out.push(Source::File(name, h));
                        continue;
                    }
                    let mut cancelled = Vec::new();
                    let healed =
                        read_delta(d, rec.id).and_then(|x| heal(d, x, want, &live, &mut cancelled));
                    if let Some((m, through)) = healed {
                        tracing::debug!(
                            "ledger: snapshot {}'s delta merged over forgotten {through:?}",
                            rec.id
                        );
                        if writable {
                            // Before the merged delta replaces the
                            // forgotten ones: a kill in between merges
                            // (and notes) again.
                            repo.note_gc_candidates(&cancelled);
                        }
                        merged.extend(through);
                        out.push(store(d, writable, m)?);
                        continue;
                    }
                }
            }
        }
        if writable && had_file {
            // Its delta did not fit (a rewritten record, a damaged file,
            // a chain through a forgotten snapshot whose delta is gone):
            // what a forgotten snapshot before it released is unknown. (A
            // record that never had a delta was in no forget: `forget`
            // makes sure of every delta first.)
            repo.drop_gc_candidates(&format!(
                "snapshot {}'s reference delta is computed from the trees",
                rec.id
            ));
        }
        let prev = i.checked_sub(1).map(|j| &all[j]);
        let delta = compute(repo, prev, rec)?;
        out.push(match &dir {
            Some(d) => store(d, writable, delta)?,
            None => Source::Mem(delta),
        });
    }
    if writable {
        if let Some(d) = &dir {
            remove_orphans(repo, d, &live, &merged, forgotten);
        }
    }
    Ok(out)
}

/// Store a delta (when allowed), as the source to read it from.
fn store(dir: &Dir, writable: bool, d: Delta) -> Result<Source> {
    if !writable {
        return Ok(Source::Mem(d));
    }
    let name = file_name(d.snap);
    match dir.write_atomic(&name, &d.encode()) {
        Ok(()) => Ok(Source::File(name, d.header())),
        Err(e) => {
            tracing::debug!("ledger: cannot store {name}: {e}");
            Ok(Source::Mem(d))
        }
    }
}

/// Remove the deltas of snapshots that no longer exist (below the newest
/// one, or known to be forgotten: a snapshot committed after `live` was
/// read keeps its delta). One that was not merged into a successor's
/// gives gc all its ids as candidates first.
fn remove_orphans(
    repo: &Repository,
    dir: &Dir,
    live: &HashSet<u64>,
    merged: &HashSet<u64>,
    forgotten: &HashSet<u64>,
) {
    let max = live.iter().max().copied().unwrap_or(0);
    let Ok(names) = dir.names() else { return };
    for n in names {
        if let Some(id) = id_of_name(&n) {
            if live.contains(&id) || (id >= max && !forgotten.contains(&id)) {
                continue;
            }
            if !merged.contains(&id) {
                match read_delta(dir, id) {
                    Some(d) => {
                        let ids: Vec<ChunkId> = d
                            .entries
                            .iter()
                            .chain(&d.structure)
                            .map(|(c, _)| *c)
                            .collect();
                        repo.note_gc_candidates(&ids);
                    }
                    None => repo.drop_gc_candidates(&format!(
                        "the reference delta of forgotten snapshot {id} cannot be read"
                    )),
                }
            }
            let _ = dir.remove_file(&file_name(id));
        }
    }
}

/// Before `forget` removes records: make sure every snapshot has its
/// delta, so that what the forgotten ones referenced can be told after.
pub fn before_forget(repo: &Repository) -> Result<()> {
    let all = repo.snapshots()?;
    prepare(repo, &all).map(|_| ())
}

/// After `forget` removed the records of `forgotten`: settle the ledger
/// now (merge their deltas into their successors', give gc what they
/// alone referenced).
pub fn forgotten(repo: &Repository, forgotten: &HashSet<u64>) -> Result<()> {
    let all = repo.snapshots()?;
    prepare_forgetting(repo, &all, forgotten, false).map(|_| ())
}

/// Record the delta of a snapshot just committed after `prev`: `known`
/// when the capture could tell it, else computed from the trees (best
/// effort: whatever fails here is computed again when the ledger is next
/// read).
pub fn note_commit(
    repo: &Repository,
    prev: Option<&SnapshotRecord>,
    rec: &SnapshotRecord,
    known: Option<Delta>,
) {
    if !repo.is_writable() {
        return;
    }
    let Some(dir) = ledger_dir(repo) else { return };
    let d = match known {
        Some(d) => Ok(d),
        None => compute(repo, prev, rec),
    };
    let r = d.and_then(|d| store(&dir, true, d).map(|_| ()));
    if let Err(e) = r {
        tracing::debug!("ledger: snapshot {}'s delta not recorded: {e}", rec.id);
    }
}

/// A stream of one delta's entries in id order.
enum Entries {
    File {
        r: BufReader<std::fs::File>,
        left: u64,
    },
    Mem {
        d: Delta,
        at: usize,
    },
}

impl Entries {
    fn open(dir: Option<&Dir>, s: Source) -> Result<Entries> {
        match s {
            Source::Mem(d) => Ok(Entries::Mem { d, at: 0 }),
            Source::File(name, h) => {
                let dir = dir.ok_or_else(|| bad("the ledger directory went away"))?;
                // A small delta (an incremental's) is read whole: the
                // merge keeps no descriptor open for it (thousands of
                // snapshots, one large delta or a few).
                if h.count <= SMALL_ENTRIES {
                    let d = read_delta(dir, h.snap)
                        .filter(|d| d.header() == h)
                        .ok_or_else(|| bad(&format!("{name} changed while read")))?;
                    return Ok(Entries::Mem { d, at: 0 });
                }
                let f = dir
                    .open_read(&name)?
                    .ok_or_else(|| bad(&format!("{name} went away")))?;
                let mut r = BufReader::with_capacity(64 << 10, f);
                let mut head = [0u8; HEADER_LEN];
                r.read_exact(&mut head)
                    .map_err(|e| Error::io("read", name.clone(), e))?;
                if decode_header(&head)? != h {
                    return Err(bad(&format!("{name} changed while read")));
                }
                Ok(Entries::File { r, left: h.count })
            }
        }
    }

    fn next(&mut self) -> Result<Option<(ChunkId, i64)>> {
        match self {
            Entries::Mem { d, at } => {
                let e = d.entries.get(*at).copied();
                *at += 1;
                Ok(e)
            }
            Entries::File { r, left } => {
                if *left == 0 {
                    return Ok(None);
                }
                *left -= 1;
                let mut e = [0u8; ENTRY_LEN];
                r.read_exact(&mut e)
                    .map_err(|e| Error::io("read", "reference ledger", e))?;
                Ok(Some(entry(&e)))
            }
        }
    }
}

/// One chunk's presence over the snapshots (indices into the sorted
/// record list): the runs `[start, end)` of snapshots that reference it.
#[derive(Debug, Default)]
pub struct Presence {
    pub runs: Vec<(usize, usize)>,
}

impl Presence {
    /// Snapshots it is present in.
    pub fn count(&self) -> usize {
        self.runs.iter().map(|(a, b)| b - a).sum()
    }

    /// Whether snapshot `i` references it.
    pub fn at(&self, i: usize) -> bool {
        self.runs.iter().any(|&(a, b)| a <= i && i < b)
    }

    /// How many of the first `n` snapshots reference it.
    pub fn count_among(&self, n: usize) -> usize {
        self.runs.iter().map(|&(a, b)| b.min(n) - a.min(n)).sum()
    }

    /// The one snapshot among the first `n` that references it, if
    /// exactly one does.
    pub fn only_among(&self, n: usize) -> Option<usize> {
        let mut one = None;
        for &(a, b) in &self.runs {
            match b.min(n) - a.min(n) {
                0 => {}
                1 if one.is_none() => one = Some(a),
                _ => return None,
            }
        }
        one
    }
}

/// A chunk's presence over `n` snapshots from its changes (snapshot
/// index and change, in index order), into `p`.
fn runs_of(changes: &[(usize, i64)], n: usize, p: &mut Presence) -> Result<()> {
    p.runs.clear();
    let (mut count, mut since) = (0i64, 0usize);
    for &(j, c) in changes {
        let before = count;
        count += c;
        if count < 0 {
            return Err(bad("a chunk's reference count goes below zero"));
        }
        if before == 0 && count > 0 {
            since = j;
        } else if before > 0 && count == 0 {
            p.runs.push((since, j));
        }
    }
    if count > 0 {
        p.runs.push((since, n));
    }
    Ok(())
}

/// The history the ledger describes: per snapshot (sorted by id) the
/// file count and logical size.
pub struct History {
    pub files: Vec<u64>,
    pub logical: Vec<u64>,
}

/// Read the ledger of `all` (sorted by id; every delta made sure of
/// first) and call `visit` once per chunk any snapshot references, in
/// chunk id order, with its presence. Memory follows the number of
/// snapshots: the deltas are merged as streams.
pub fn for_each_chunk(
    repo: &Repository,
    all: &[SnapshotRecord],
    visit: &mut dyn FnMut(&ChunkId, &Presence) -> Result<()>,
) -> Result<History> {
    let sources = prepare_to_count(repo, all)?;
    let dir = ledger_dir(repo);
    let n = all.len();
    let history = history_of(&sources)?;
    let mut streams = Vec::with_capacity(n);
    for s in sources {
        streams.push(Entries::open(dir.as_ref(), s)?);
    }
    // (id, snapshot index, change), smallest id first, then index.
    let mut heap: BinaryHeap<Reverse<([u8; 32], usize, i64)>> = BinaryHeap::with_capacity(n);
    for (i, s) in streams.iter_mut().enumerate() {
        if let Some((id, c)) = s.next()? {
            heap.push(Reverse((id.0, i, c)));
        }
    }
    let mut presence = Presence::default();
    let mut changes: Vec<(usize, i64)> = Vec::new();
    while let Some(Reverse((id, i, c))) = heap.pop() {
        changes.clear();
        changes.push((i, c));
        if let Some((nid, nc)) = streams[i].next()? {
            heap.push(Reverse((nid.0, i, nc)));
        }
        while let Some(Reverse((next, ..))) = heap.peek() {
            if *next != id {
                break;
            }
            let Some(Reverse((_, j, c))) = heap.pop() else {
                break;
            };
            changes.push((j, c));
            if let Some((nid, nc)) = streams[j].next()? {
                heap.push(Reverse((nid.0, j, nc)));
            }
        }
        changes.sort_unstable_by_key(|(j, _)| *j);
        runs_of(&changes, n, &mut presence)?;
        if !presence.runs.is_empty() {
            visit(&ChunkId(id), &presence)?;
        }
    }
    Ok(history)
}

/// Per snapshot, its file count and logical size: the deltas' changes
/// added up.
fn history_of(sources: &[Source]) -> Result<History> {
    let n = sources.len();
    let (mut files, mut logical) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut f, mut l) = (0i64, 0i64);
    for s in sources {
        let (df, dl) = s.files_logical();
        f += df;
        l += dl;
        if f < 0 || l < 0 {
            return Err(bad("a snapshot's file count or size goes below zero"));
        }
        files.push(f as u64);
        logical.push(l as u64);
    }
    Ok(History { files, logical })
}

/// Which of `ids` (sorted, unique) a snapshot of `all` references: those
/// that appear in a delta (a reference count starts at zero and never
/// goes below it, so an id a delta changes is referenced before or
/// after that change). With whether every delta's structure is complete:
/// if not, the answer covers file blocks only and gc must mark instead.
pub fn referenced_among(
    repo: &Repository,
    all: &[SnapshotRecord],
    ids: &[ChunkId],
) -> Result<(HashSet<ChunkId>, bool)> {
    let sources = prepare(repo, all)?;
    let dir = ledger_dir(repo);
    let mut found = HashSet::new();
    let mut complete = true;
    for s in &sources {
        complete &= match s {
            Source::Mem(d) => d.complete,
            Source::File(_, h) => h.complete,
        };
        let left: Vec<ChunkId> = ids
            .iter()
            .filter(|c| !found.contains(*c))
            .copied()
            .collect();
        if left.is_empty() {
            continue;
        }
        look_up(dir.as_ref(), s, &left, true, &mut |k, _| {
            found.insert(left[k]);
        })?;
    }
    Ok((found, complete))
}

/// What [`changed_since`] finds: the chunks and their presence, and the
/// history of the whole list.
pub type Changed = (Vec<(ChunkId, Presence)>, History);

/// Every chunk whose reference count changes in the delta of one of
/// `all[from..]` (sorted by id), with its presence over `all`, in id
/// order, and the history; `None` when those deltas hold more than `max`
/// entries (then a full merge costs no more). This is every chunk whose
/// figures can change when `all[from + 1..]` are appended to
/// `all[..=from]`: a chunk present in an appended snapshot and not in the
/// one before it changes in that snapshot's delta, and one that was
/// unique to `all[from]` was absent before it, so it changed in its
/// delta; a chunk no appended delta names has the same count in every
/// appended snapshot as in `all[from]`. The deltas of `all[from..]` are
/// read whole; the ids are looked up in every other (files of a large
/// delta by binary search).
pub fn changed_since(
    repo: &Repository,
    all: &[SnapshotRecord],
    from: usize,
    max: u64,
) -> Result<Option<Changed>> {
    let sources = prepare_to_count(repo, all)?;
    let dir = ledger_dir(repo);
    let tail = sources.get(from..).unwrap_or_default();
    let size: u64 = tail
        .iter()
        .map(|s| match s {
            Source::Mem(d) => d.entries.len() as u64,
            Source::File(_, h) => h.count,
        })
        .sum();
    if size > max {
        return Ok(None);
    }
    let mut ids = Vec::new();
    for s in tail {
        let owned;
        let d = match s {
            Source::Mem(d) => d,
            Source::File(name, h) => {
                let dir = dir
                    .as_ref()
                    .ok_or_else(|| bad("the ledger directory went away"))?;
                owned = read_delta(dir, h.snap)
                    .filter(|d| d.header() == *h)
                    .ok_or_else(|| bad(&format!("{name} changed while read")))?;
                &owned
            }
        };
        ids.extend(d.entries.iter().map(|(id, _)| *id));
    }
    ids.sort_unstable_by_key(|c| c.0);
    ids.dedup();
    let mut changes: Vec<Vec<(usize, i64)>> = vec![Vec::new(); ids.len()];
    for (i, s) in sources.iter().enumerate() {
        look_up(dir.as_ref(), s, &ids, false, &mut |k, c| {
            changes[k].push((i, c))
        })?;
    }
    let mut out = Vec::with_capacity(ids.len());
    for (id, ch) in ids.into_iter().zip(changes) {
        let mut p = Presence::default();
        runs_of(&ch, all.len(), &mut p)?;
        out.push((id, p));
    }
    Ok(Some((out, history_of(&sources)?)))
}

/// Look `ids` (sorted, unique) up in one delta's entries (and its
/// structure when `structure`): `hit(k, change)` for each `ids[k]` found
/// (once per list it is in). A small delta is read whole, a large one
/// searched in its file.
fn look_up(
    dir: Option<&Dir>,
    s: &Source,
    ids: &[ChunkId],
    structure: bool,
    hit: &mut dyn FnMut(usize, i64),
) -> Result<()> {
    let in_lists = |d: &Delta, hit: &mut dyn FnMut(usize, i64)| {
        let lists: &[&[(ChunkId, i64)]] = if structure {
            &[&d.entries, &d.structure]
        } else {
            &[&d.entries]
        };
        for l in lists {
            for (k, c) in ids.iter().enumerate() {
                if let Ok(at) = l.binary_search_by(|e| e.0 .0.cmp(&c.0)) {
                    hit(k, l[at].1);
                }
            }
        }
    };
    let (name, h) = match s {
        Source::Mem(d) => {
            in_lists(d, hit);
            return Ok(());
        }
        Source::File(name, h) => (name, h),
    };
    let dir = dir.ok_or_else(|| bad("the ledger directory went away"))?;
    if h.count + h.scount <= SMALL_ENTRIES {
        let d = read_delta(dir, h.snap)
            .filter(|d| d.header() == *h)
            .ok_or_else(|| bad(&format!("{name} changed while read")))?;
        in_lists(&d, hit);
        return Ok(());
    }
    let f = dir
        .open_read(name)?
        .ok_or_else(|| bad(&format!("{name} went away")))?;
    let mut head = [0u8; HEADER_LEN];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0)
        .map_err(|e| Error::io("read", name.clone(), e))?;
    if decode_header(&head)? != *h {
        return Err(bad(&format!("{name} changed while read")));
    }
    let structure_at = HEADER_LEN as u64 + h.count * ENTRY_LEN as u64;
    let mut lists = vec![(HEADER_LEN as u64, h.count)];
    if structure {
        lists.push((structure_at, h.scount));
    }
    for (at, n) in lists {
        for (k, c) in ids.iter().enumerate() {
            if let Some(change) = search_file(&f, at, n, c)? {
                hit(k, change);
            }
        }
    }
    Ok(())
}

/// Binary search for `c` among the `n` sorted entries at `at` in `f`:
/// its change, if there.
fn search_file(f: &std::fs::File, at: u64, n: u64, c: &ChunkId) -> Result<Option<i64>> {
    let (mut lo, mut hi) = (0u64, n);
    let mut e = [0u8; ENTRY_LEN];
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        std::os::unix::fs::FileExt::read_exact_at(f, &mut e, at + mid * ENTRY_LEN as u64)
            .map_err(|x| Error::io("read", "reference ledger", x))?;
        match e[..32].cmp(&c.0[..]) {
            std::cmp::Ordering::Equal => return Ok(Some(entry(&e).1)),
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
        }
    }
    Ok(None)
}

/// The ledger's files, for `status`-like reports and tests: how many
/// deltas and entries it holds.
pub fn size(repo: &Repository) -> (u64, u64) {
    let Some(dir) = ledger_dir(repo) else {
        return (0, 0);
    };
    let Ok(names) = dir.names() else {
        return (0, 0);
    };
    let (mut files, mut entries) = (0, 0);
    for n in names {
        if let Some(id) = id_of_name(&n) {
            if let Some(h) = check_file(&dir, &file_name(id), true) {
                files += 1;
                entries += h.count;
            }
        }
    }
    (files, entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn delta(snap: u64, prev: Option<u64>, e: &[(u8, i64)]) -> Delta {
        Delta {
            snap,
            key: [snap as u8; 32],
            prev: prev.map(|p| (p, [p as u8; 32])),
            files: e.len() as i64,
            logical: 10,
            entries: e.iter().map(|(i, n)| (id(*i), *n)).collect(),
            structure: vec![(id(200), 1), (id(201 + snap as u8), -1)],
            complete: snap.is_multiple_of(2),
        }
    }

    #[test]
    fn encodes_and_decodes() {
        let d = delta(7, Some(3), &[(1, 2), (5, -1), (9, 4)]);
        let b = d.encode();
        assert_eq!(Delta::decode(&b).unwrap(), d);
        let mut bad = b.clone();
        bad[HEADER_LEN + 3] ^= 1;
        assert!(Delta::decode(&bad).is_err());
        assert!(Delta::decode(&b[..b.len() - 1]).is_err());
        let first = delta(1, None, &[]);
        assert_eq!(Delta::decode(&first.encode()).unwrap(), first);
    }

    #[test]
    fn merging_adds_and_drops_zeros() {
        let a = delta(2, Some(1), &[(1, 1), (3, -2), (4, 1)]);
        let mut b = delta(3, Some(2), &[(2, 1), (3, 2), (4, 1)]);
        b.structure = vec![(id(200), -1), (id(250), 1)];
        let mut cancelled = Vec::new();
        let m = merge_noting(&a, &b, &mut cancelled);
        assert_eq!(m.snap, 3);
        assert_eq!(m.prev, a.prev);
        assert_eq!(m.key, b.key);
        assert_eq!(
            m.entries,
            vec![(id(1), 1), (id(2), 1), (id(4), 2)],
            "3 cancels out"
        );
        assert_eq!(m.structure, vec![(id(203), -1), (id(250), 1)]);
        assert_eq!(cancelled, vec![id(3), id(200)]);
        assert!(!m.complete, "complete only if both are");
        assert_eq!(m.files, a.files + b.files);
    }

    #[test]
    fn a_delta_is_hashed_once_unless_replaced_or_deciding() {
        let t = tempfile::tempdir().unwrap();
        let dir = Dir::open_path(t.path()).unwrap();
        let mut d = delta(9, Some(8), &[]);
        d.entries = (0..SMALL_ENTRIES + 10)
            .map(|i| {
                let mut c = [0u8; 32];
                c[..8].copy_from_slice(&i.to_be_bytes());
                (ChunkId(c), 1)
            })
            .collect();
        let name = file_name(9);
        dir.write_atomic(&name, &d.encode()).unwrap();
        assert_eq!(check_file(&dir, &name, true), Some(d.header()));
        assert_eq!(check_file(&dir, &name, true), Some(d.header()));
        // The same header over a damaged body, as a new file: hashed
        // again (a new inode), found damaged, memo or not.
        let mut bad = d.encode();
        bad[HEADER_LEN + 5 * ENTRY_LEN] ^= 1;
        dir.write_atomic(&name, &bad).unwrap();
        assert_eq!(check_file(&dir, &name, true), None);
        assert_eq!(check_file(&dir, &name, false), None);
        // Damage in place that keeps the file's identity (a disk that
        // rots): gc and forget, which never use the memo, still see it.
        dir.write_atomic(&name, &d.encode()).unwrap();
        assert_eq!(check_file(&dir, &name, true), Some(d.header()));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(t.path().join(&name))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0xee], (HEADER_LEN + 7) as u64).unwrap();
        assert_eq!(check_file(&dir, &name, false), None);
    }

    #[test]
    fn occurrences_fold_by_id() {
        let occ = vec![(id(3), 1), (id(1), 1), (id(3), 1), (id(2), 1), (id(2), -1)];
        assert_eq!(fold_occurrences(occ), vec![(id(1), 1), (id(3), 2)]);
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(id_of_name(file_name(42).as_bytes()), Some(42));
        assert_eq!(id_of_name(b"42.delta"), None);
        assert_eq!(id_of_name(b".tmp.x.delta.12"), None);
    }
}
