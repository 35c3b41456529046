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
use std::collections::{BinaryHeap, HashSet};
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
pub const LEDGER_FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"RWLEDGR\n";
/// magic, format, snapshot id, key, has-prev, prev id, prev key, files,
/// logical, entry count.
const HEADER_LEN: usize = 8 + 4 + 8 + 32 + 1 + 8 + 32 + 8 + 8 + 8;
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
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let h = self.header();
        let mut b = Vec::with_capacity(HEADER_LEN + self.entries.len() * ENTRY_LEN + TRAILER_LEN);
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
        for (id, n) in &self.entries {
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
        if body.len() as u64 != HEADER_LEN as u64 + h.count * ENTRY_LEN as u64 {
            return Err(bad("its length does not match its entry count"));
        }
        let mut entries = Vec::with_capacity(h.count as usize);
        for e in body[HEADER_LEN..].chunks_exact(ENTRY_LEN) {
            entries.push(entry(e));
        }
        check_entries(&entries)?;
        Ok(Delta {
            snap: h.snap,
            key: h.key,
            prev: h.prev,
            files: h.files,
            logical: h.logical,
            entries,
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
    })
}

/// Sort block occurrences by id and add up each id's changes.
fn fold_occurrences(mut occ: Vec<(ChunkId, i64)>) -> Vec<(ChunkId, i64)> {
    occ.sort_unstable_by_key(|a| a.0 .0);
    let mut out: Vec<(ChunkId, i64)> = Vec::new();
    for (id, n) in occ {
        match out.last_mut() {
            Some((last, m)) if *last == id => *m += n,
            _ => out.push((id, n)),
        }
    }
    out.retain(|(_, n)| *n != 0);
    out.shrink_to_fit();
    out
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

/// `rec`'s delta against `prev`, from the trees: for snapshots stored as
/// trees only the directories whose objects differ are read (the first
/// snapshot is walked one directory at a time); older formats are
/// resolved.
pub fn compute(
    repo: &Repository,
    prev: Option<&SnapshotRecord>,
    rec: &SnapshotRecord,
) -> Result<Delta> {
    let (mut files, mut logical) = (0i64, 0i64);
    let mut occ: Vec<(ChunkId, i64)> = Vec::new();
    match prev {
        Some(p) => {
            let (old, new) = repo.changed_pair(p, rec)?;
            add_tree(&old, -1, &mut files, &mut logical, &mut occ);
            add_tree(&new, 1, &mut files, &mut logical, &mut occ);
        }
        None => match repo.load_stored(rec)? {
            Stored::Tree(root) => {
                crate::snapshot::dirs::walk_files(repo, &root, &mut |size, ids| {
                    files += 1;
                    logical += size as i64;
                    occ.extend(ids.iter().map(|id| (*id, 1)));
                })?;
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
    })
}

/// `rec`'s delta against `prev` from the capture's own record of what it
/// changed: per changed path its node before (in `prev`) and after (in
/// `rec`), `None` where there was none. Nothing is read.
pub fn from_changes<'a>(
    prev: &SnapshotRecord,
    rec: &SnapshotRecord,
    changes: impl Iterator<Item = (Option<&'a Node>, Option<&'a Node>)>,
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
    }
}

/// `a` (from P to S) followed by `b` (from S to N): the delta from P to N.
pub fn merge(a: &Delta, b: &Delta) -> Delta {
    let mut entries = Vec::with_capacity(a.entries.len().max(b.entries.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.entries.len() || j < b.entries.len() {
        let take_a =
            j >= b.entries.len() || (i < a.entries.len() && a.entries[i].0 .0 <= b.entries[j].0 .0);
        let take_b =
            i >= a.entries.len() || (j < b.entries.len() && b.entries[j].0 .0 <= a.entries[i].0 .0);
        let (id, n) = match (take_a, take_b) {
            (true, true) => {
                let r = (a.entries[i].0, a.entries[i].1 + b.entries[j].1);
                i += 1;
                j += 1;
                r
            }
            (true, false) => {
                i += 1;
                a.entries[i - 1]
            }
            _ => {
                j += 1;
                b.entries[j - 1]
            }
        };
        if n != 0 {
            entries.push((id, n));
        }
    }
    Delta {
        snap: b.snap,
        key: b.key,
        prev: a.prev,
        files: a.files + b.files,
        logical: a.logical + b.logical,
        entries,
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

/// Check a delta file by reading it through (its checksum, its length),
/// without holding its entries: its header, or `None` when it is absent
/// or damaged.
fn check_file(dir: &Dir, name: &str) -> Option<Header> {
    let f = dir.open_read(name).ok()??;
    let len = f.metadata().ok()?.len();
    if len < (HEADER_LEN + TRAILER_LEN) as u64 {
        return None;
    }
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).ok()?;
    let h = decode_header(&head).ok()?;
    if len != (HEADER_LEN + TRAILER_LEN) as u64 + h.count.checked_mul(ENTRY_LEN as u64)? {
        return None;
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
    (hasher.finalize().as_bytes() == &sum).then_some(h)
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
        d = merge(&ds, &d);
        through.push(s);
    }
    Some((d, through))
}

/// Make sure every snapshot of `all` (sorted by id) has its delta: kept
/// when it fits, merged over forgotten snapshots, else computed from the
/// trees (and stored when the repository is writable). Deltas of
/// snapshots that no longer exist are removed once nothing needs them.
fn prepare(repo: &Repository, all: &[SnapshotRecord]) -> Result<Vec<Source>> {
    let dir = ledger_dir(repo);
    let writable = repo.is_writable() && dir.is_some();
    let keys: Vec<Key> = all.iter().map(key_of).collect();
    let live: HashSet<u64> = all.iter().map(|r| r.id).collect();
    let mut out = Vec::with_capacity(all.len());
    for (i, rec) in all.iter().enumerate() {
        let want = (i > 0).then(|| (all[i - 1].id, keys[i - 1]));
        let name = file_name(rec.id);
        if let Some(d) = &dir {
            if let Some(h) = check_file(d, &name) {
                if h.snap == rec.id && h.key == keys[i] {
                    if h.prev == want {
                        out.push(Source::File(name, h));
                        continue;
                    }
                    let healed = read_delta(d, rec.id).and_then(|x| heal(d, x, want, &live));
                    if let Some((m, through)) = healed {
                        tracing::debug!(
                            "ledger: snapshot {}'s delta merged over forgotten {through:?}",
                            rec.id
                        );
                        out.push(store(d, writable, m)?);
                        continue;
                    }
                }
            }
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
            remove_orphans(d, &live);
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
/// one: a snapshot committed after `live` was read keeps its delta).
fn remove_orphans(dir: &Dir, live: &HashSet<u64>) {
    let Some(max) = live.iter().max().copied() else {
        return;
    };
    let Ok(names) = dir.names() else { return };
    for n in names {
        if let Some(id) = id_of_name(&n) {
            if id < max && !live.contains(&id) {
                let _ = dir.remove_file(&file_name(id));
            }
        }
    }
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
    let sources = prepare(repo, all)?;
    let dir = ledger_dir(repo);
    let n = all.len();
    let (mut files, mut logical) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut f, mut l) = (0i64, 0i64);
    for s in &sources {
        let (df, dl) = s.files_logical();
        f += df;
        l += dl;
        if f < 0 || l < 0 {
            return Err(bad("a snapshot's file count or size goes below zero"));
        }
        files.push(f as u64);
        logical.push(l as u64);
    }
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
        presence.runs.clear();
        let (mut count, mut since) = (0i64, 0usize);
        for &(j, c) in &changes {
            let before = count;
            count += c;
            if count < 0 {
                return Err(bad("a chunk's reference count goes below zero"));
            }
            if before == 0 && count > 0 {
                since = j;
            } else if before > 0 && count == 0 {
                presence.runs.push((since, j));
            }
        }
        if count > 0 {
            presence.runs.push((since, n));
        }
        if !presence.runs.is_empty() {
            visit(&ChunkId(id), &presence)?;
        }
    }
    Ok(History { files, logical })
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
            if let Some(h) = check_file(&dir, &file_name(id)) {
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
        let b = delta(3, Some(2), &[(2, 1), (3, 2), (4, 1)]);
        let m = merge(&a, &b);
        assert_eq!(m.snap, 3);
        assert_eq!(m.prev, a.prev);
        assert_eq!(m.key, b.key);
        assert_eq!(
            m.entries,
            vec![(id(1), 1), (id(2), 1), (id(4), 2)],
            "3 cancels out"
        );
        assert_eq!(m.files, a.files + b.files);
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
