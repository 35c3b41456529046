//! Where the space goes: per snapshot its logical size, the stored size
//! of the chunks it references, and its unique size (the stored bytes of
//! chunks no other snapshot references: about what forgetting it alone
//! would free once gc runs); for the repository the stored and logical
//! totals, deduplication and compression ratios, chunk and pack counts,
//! and chain lengths. From the index and the reference ledger (what each
//! snapshot changed); no chunk data is read, and no tree but those of
//! snapshots the ledger does not cover yet. Computed whole once (a merge
//! of the ledger joined with the index: O(chunks)), then brought up to
//! date from what changed while only captures write (O(change) lookups
//! per snapshot in the ledger): the figures a process computed are kept
//! in memory per open index, the unique sizes in `cache/unique.json`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::ledger;
use crate::error::Result;
use crate::repo::Repository;
use crate::snapshot::SnapshotRecord;
use crate::store::pack::Location;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SnapshotSpace {
    pub id: u64,
    pub kind: String,
    /// Manifests applied to read it (1 for a full).
    pub chain_len: u64,
    pub files: u64,
    pub logical_bytes: u64,
    pub chunks: u64,
    /// Stored (compressed) bytes of the chunks it references.
    pub stored_bytes: u64,
    /// Stored bytes of the chunks only it references.
    pub unique_bytes: u64,
    /// Sizes of the files whose content changed since the snapshot it was
    /// captured against, and the bytes of those that are shared with the
    /// same files' earlier versions (from its record; absent in older
    /// records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewritten_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RepoSpace {
    pub snapshots: Vec<SnapshotSpace>,
    pub snapshots_by_kind: BTreeMap<String, u64>,
    /// Chunks any snapshot references (file blocks; manifests not counted).
    pub chunks: u64,
    /// Chunks in the index that no snapshot references (gc would free them).
    pub unreferenced_chunks: u64,
    pub unreferenced_bytes: u64,
    pub packs: u64,
    /// Bytes of the pack files on disk.
    pub pack_bytes: u64,
    /// Sum of every snapshot's logical size.
    pub logical_bytes: u64,
    /// Uncompressed bytes of the referenced chunks (each once).
    pub raw_bytes: u64,
    /// Stored bytes of the referenced chunks (each once).
    pub stored_bytes: u64,
    /// logical / raw: what deduplication saves across all snapshots.
    pub dedup_ratio: f64,
    /// raw / stored: what compression saves.
    pub compression_ratio: f64,
    pub longest_chain: u64,
}

fn chain_len(rec: &SnapshotRecord, by_id: &HashMap<u64, &SnapshotRecord>) -> u64 {
    let mut n = 1;
    let mut cur = rec;
    while let Some(p) = cur.parent {
        let Some(next) = by_id.get(&p) else { break };
        n += 1;
        cur = next;
        if n > by_id.len() as u64 {
            break; // a loop would be damage; verify reports it
        }
    }
    n
}

/// Account for every snapshot of `repo` from the reference ledger
/// ([`super::ledger`]): its deltas merged by chunk id, joined with the
/// index walked in the same order. No tree is read (but for the deltas
/// the ledger lacks, computed from the directories that changed), and
/// memory follows the number of snapshots, not the chunks. A chunk's
/// unique owner is the one snapshot it is present in.
///
/// A process keeps the last figures it computed per open index
/// ([`SpaceMemo`]); when since then only captures wrote to the index and
/// the snapshot list only gained newer snapshots, the figures are brought
/// up to date from what changed ([`space_appended`]) instead of merging
/// the whole ledger with the whole index again.
pub fn space(repo: &Repository) -> Result<RepoSpace> {
    // A ledger computed again (it did not add up) is not built on.
    let mut first = true;
    ledger::rebuilding_once(repo, || {
        let trust_memo = std::mem::take(&mut first);
        let mut all = repo.snapshots()?;
        all.sort_by_key(|r| r.id);
        let tally = repo.index().tally();
        let memo = MEMO
            .lock()
            .iter()
            .find(|m| trust_memo && m.tally.instance == tally.instance)
            .cloned();
        let appended = match &memo {
            Some(m) => space_appended(repo, &all, m, &tally)?,
            None => None,
        };
        let (space, packs) = match appended {
            Some(x) => {
                SPACE_UPDATES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                x
            }
            None => space_once(repo, &all)?,
        };
        // Kept only if nothing was added to the index meanwhile (what the
        // figures would then count is not known).
        if repo.index().tally() == tally {
            let m = SpaceMemo {
                key: records_key(&all),
                ids: all.iter().map(|r| r.id).collect(),
                tally,
                space: space.clone(),
                packs,
            };
            let mut memos = MEMO.lock();
            memos.retain(|x| x.tally.instance != m.tally.instance);
            if memos.len() >= 4 {
                memos.remove(0);
            }
            memos.push(m);
        }
        Ok(space)
    })
}

/// [`space`] computed whole, whatever this process computed before
/// (tests compare the two).
pub fn space_whole(repo: &Repository) -> Result<RepoSpace> {
    ledger::rebuilding_once(repo, || {
        let mut all = repo.snapshots()?;
        all.sort_by_key(|r| r.id);
        Ok(space_once(repo, &all)?.0)
    })
}

/// The figures [`space`] computed last for one open index.
#[derive(Clone)]
struct SpaceMemo {
    /// [`records_key`] of the snapshot list, and its ids (sorted).
    key: String,
    ids: Vec<u64>,
    /// The index's tally when they were computed.
    tally: crate::index::Tally,
    space: RepoSpace,
    /// The packs any index entry was in.
    packs: BTreeSet<u64>,
}

static MEMO: parking_lot::Mutex<Vec<SpaceMemo>> = parking_lot::Mutex::new(Vec::new());

/// The figures of `sorted` from `m`, computed for a list it appends newer
/// snapshots to (or the same list) while the index only gained entries
/// (`None` otherwise, or when too much changed). Only the chunks a delta
/// of the last memo'd snapshot or of an appended one names can change
/// (see [`ledger::changed_since`]): per appended snapshot, its chunk
/// count and stored size follow from their presence before and at it;
/// unique sizes move as in [`unique_appended`]; a chunk referenced by no
/// memo'd snapshot and by an appended one moves from the unreferenced to
/// the referenced totals; entries the index gained since are
/// unreferenced until a snapshot names them.
fn space_appended(
    repo: &Repository,
    sorted: &[SnapshotRecord],
    m: &SpaceMemo,
    tally: &crate::index::Tally,
) -> Result<Option<(RepoSpace, BTreeSet<u64>)>> {
    let n = m.ids.len();
    let len = sorted.len();
    if tally.other_changes != m.tally.other_changes
        || tally.chunks < m.tally.chunks
        || n == 0
        || n > len
        || m.ids.iter().zip(sorted).any(|(id, r)| *id != r.id)
        || records_key(&sorted[..n]) != m.key
    {
        return Ok(None);
    }
    let mut out = m.space.clone();
    let mut packs = m.packs.clone();
    // (The tally's packs are those added to since the index was opened.)
    packs.extend(tally.packs.difference(&m.tally.packs).copied());
    let mut unref_chunks =
        i128::from(out.unreferenced_chunks) + i128::from(tally.chunks - m.tally.chunks);
    let mut unref_bytes = i128::from(out.unreferenced_bytes) + i128::from(tally.stored_bytes)
        - i128::from(m.tally.stored_bytes);
    if n < len {
        let Some((changed, history)) = ledger::changed_since(repo, sorted, n - 1, APPEND_LOOKUPS)?
        else {
            return Ok(None);
        };
        let by_id: HashMap<u64, &SnapshotRecord> = sorted.iter().map(|r| (r.id, r)).collect();
        let mut chunks_d = vec![0i128; len];
        let mut stored_d = vec![0i128; len];
        let mut unique: Vec<i128> = out
            .snapshots
            .iter()
            .map(|x| i128::from(x.unique_bytes))
            .collect();
        unique.resize(len, 0);
        for (id, p) in &changed {
            let loc = repo.index().get_chunk(id)?;
            let s = loc.map_or(0, |l| i128::from(l.stored_len));
            for j in n..len {
                let d = i128::from(p.at(j)) - i128::from(p.at(j - 1));
                chunks_d[j] += d;
                stored_d[j] += d * s;
            }
            move_unique(&mut unique, p, n, s);
            if p.count_among(n) == 0 && p.count() > 0 {
                if let Some(l) = loc {
                    if count_referenced(&mut out, &mut packs, &l) {
                        unref_chunks -= 1;
                        unref_bytes -= i128::from(l.stored_len);
                    }
                }
            }
        }
        let (mut chunks, mut bytes) = match out.snapshots.last() {
            Some(x) => (i128::from(x.chunks), i128::from(x.stored_bytes)),
            None => return Ok(None),
        };
        for j in n..len {
            chunks += chunks_d[j];
            bytes += stored_d[j];
            let rec = &sorted[j];
            out.snapshots.push(SnapshotSpace {
                id: rec.id,
                kind: rec.kind_label(),
                chain_len: chain_len(rec, &by_id),
                files: history.files[j],
                logical_bytes: history.logical[j],
                chunks: u64::try_from(chunks).unwrap_or(0),
                stored_bytes: u64::try_from(bytes).unwrap_or(0),
                unique_bytes: 0,
                rewritten_bytes: rec.stats.rewritten_bytes,
                shared_bytes: rec.stats.shared_bytes,
            });
            *out.snapshots_by_kind.entry(rec.kind_label()).or_default() += 1;
            out.logical_bytes += history.logical[j];
            out.longest_chain = out.longest_chain.max(out.snapshots[j].chain_len);
        }
        for (x, u) in out.snapshots.iter_mut().zip(&unique) {
            match u64::try_from(*u) {
                Ok(u) => x.unique_bytes = u,
                Err(_) => return Ok(None), // the memo did not match the ledger
            }
        }
    }
    let (Ok(uc), Ok(ub)) = (u64::try_from(unref_chunks), u64::try_from(unref_bytes)) else {
        return Ok(None);
    };
    out.unreferenced_chunks = uc;
    out.unreferenced_bytes = ub;
    finish_totals(repo, &mut out, &packs);
    Ok(Some((out, packs)))
}

/// Move a chunk's stored size `s` from the one snapshot among the first
/// `n` it was unique to (if any) to the one it is unique to among all
/// `unique.len()` (if any).
fn move_unique(unique: &mut [i128], p: &ledger::Presence, n: usize, s: i128) {
    let (before, now) = (p.only_among(n), p.only_among(unique.len()));
    if before != now {
        if let Some(k) = before {
            unique[k] -= s;
        }
        if let Some(k) = now {
            unique[k] += s;
        }
    }
}

/// Count `l`, the location of a chunk some snapshot references, in the
/// repository's totals (each chunk once); whether it is a file chunk.
fn count_referenced(out: &mut RepoSpace, packs: &mut BTreeSet<u64>, l: &Location) -> bool {
    packs.insert(l.pack);
    if l.kind != crate::store::BlobKind::Chunk {
        return false;
    }
    out.chunks += 1;
    out.raw_bytes += u64::from(l.raw_len);
    out.stored_bytes += u64::from(l.stored_len);
    true
}

/// Pack figures and ratios from the rest.
fn finish_totals(repo: &Repository, out: &mut RepoSpace, packs: &BTreeSet<u64>) {
    out.packs = packs.len() as u64;
    out.pack_bytes = packs
        .iter()
        .filter_map(|p| repo.pack_reader().pack_len(*p))
        .sum();
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    out.dedup_ratio = ratio(out.logical_bytes, out.raw_bytes);
    out.compression_ratio = ratio(out.raw_bytes, out.stored_bytes);
}

/// How many times this process brought the space figures up to date
/// from what changed instead of computing them whole (tests).
pub fn space_updates() -> u64 {
    SPACE_UPDATES.load(std::sync::atomic::Ordering::Relaxed)
}

static SPACE_UPDATES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn space_once(repo: &Repository, all: &[SnapshotRecord]) -> Result<(RepoSpace, BTreeSet<u64>)> {
    let by_id: HashMap<u64, &SnapshotRecord> = all.iter().map(|r| (r.id, r)).collect();
    let n = all.len();
    let mut out = RepoSpace::default();
    // Per snapshot: changes of its chunk count and stored bytes where a
    // chunk's presence starts and ends.
    let mut chunks_d = vec![0i64; n + 1];
    let mut stored_d = vec![0i64; n + 1];
    let mut unique = vec![0u64; n];
    let mut packs: BTreeSet<u64> = BTreeSet::new();
    let mut index = repo.index().chunk_iter().peekable();
    let unreferenced = |out: &mut RepoSpace, packs: &mut BTreeSet<u64>, l: &Location| {
        packs.insert(l.pack);
        if l.kind == crate::store::BlobKind::Chunk {
            out.unreferenced_chunks += 1;
            out.unreferenced_bytes += u64::from(l.stored_len);
        }
    };
    let history = ledger::for_each_chunk(repo, all, &mut |id, p| {
        // Index entries before this chunk: no snapshot references them.
        let mut loc = None;
        loop {
            let step = match index.peek() {
                None => break,
                Some(Err(_)) => None,
                Some(Ok((k, l))) => Some((k.0.cmp(&id.0), *l)),
            };
            match step {
                None => {
                    if let Some(Err(e)) = index.next() {
                        return Err(e);
                    }
                }
                Some((std::cmp::Ordering::Less, l)) => {
                    unreferenced(&mut out, &mut packs, &l);
                    index.next();
                }
                Some((std::cmp::Ordering::Equal, l)) => {
                    loc = Some(l);
                    index.next();
                    break;
                }
                Some((std::cmp::Ordering::Greater, _)) => break,
            }
        }
        let s = loc.map_or(0, |l| u64::from(l.stored_len));
        for &(a, b) in &p.runs {
            chunks_d[a] += 1;
            chunks_d[b] -= 1;
            stored_d[a] += s as i64;
            stored_d[b] -= s as i64;
        }
        if p.count() == 1 {
            unique[p.runs[0].0] += s;
        }
        if let Some(l) = loc {
            count_referenced(&mut out, &mut packs, &l);
        }
        Ok(())
    })?;
    for e in index {
        let (_, l) = e?;
        unreferenced(&mut out, &mut packs, &l);
    }
    let (mut chunks, mut bytes) = (0i64, 0i64);
    for (i, rec) in all.iter().enumerate() {
        chunks += chunks_d[i];
        bytes += stored_d[i];
        let s = SnapshotSpace {
            id: rec.id,
            kind: rec.kind_label(),
            chain_len: chain_len(rec, &by_id),
            files: history.files[i],
            logical_bytes: history.logical[i],
            chunks: chunks.max(0) as u64,
            stored_bytes: bytes.max(0) as u64,
            unique_bytes: unique[i],
            rewritten_bytes: rec.stats.rewritten_bytes,
            shared_bytes: rec.stats.shared_bytes,
        };
        *out.snapshots_by_kind.entry(s.kind.clone()).or_default() += 1;
        out.logical_bytes += s.logical_bytes;
        out.longest_chain = out.longest_chain.max(s.chain_len);
        out.snapshots.push(s);
    }
    if repo.is_writable() {
        let unique: Vec<u64> = out.snapshots.iter().map(|x| x.unique_bytes).collect();
        store_unique(repo, all, &unique);
    }
    finish_totals(repo, &mut out, &packs);
    Ok((out, packs))
}

/// The cache of unique sizes (`cache/unique.json`): valid for the exact
/// snapshot list (ids and manifests) it was computed for, and the start
/// of the sizes of any list that only appends newer snapshots to it.
pub const UNIQUE_CACHE: &str = "unique.json";

/// At most this many entries in the deltas of the snapshots appended
/// since the cache (and the one before them) are looked up one by one;
/// past it, the whole ledger is merged.
const APPEND_LOOKUPS: u64 = 1 << 16;

#[derive(Serialize, serde::Deserialize)]
struct UniqueCache {
    /// [`records_key`] of the list, sorted by id.
    key: String,
    /// Per snapshot, sorted by id: id and unique size.
    unique: Vec<(u64, u64)>,
}

/// What the unique sizes depend on: every record's id and manifest.
fn records_key(sorted: &[SnapshotRecord]) -> String {
    let mut h = blake3::Hasher::new();
    for r in sorted {
        h.update(&r.id.to_le_bytes());
        for p in &r.manifest {
            h.update(p.as_bytes());
        }
        h.update(b";");
    }
    h.finalize().to_hex().to_string()
}

fn cache_dir(repo: &Repository) -> Result<crate::util::dirfd::Dir> {
    repo.dir()
        .ensure_dir(crate::repo::layout::CACHE, crate::repo::layout::DIR_MODE)
}

fn store_unique(repo: &Repository, sorted: &[SnapshotRecord], unique: &[u64]) {
    let c = UniqueCache {
        key: records_key(sorted),
        unique: sorted
            .iter()
            .map(|r| r.id)
            .zip(unique.iter().copied())
            .collect(),
    };
    let r = serde_json::to_vec(&c)
        .map_err(|e| crate::error::Error::InvalidInput(e.to_string()))
        .and_then(|b| cache_dir(repo)?.write_atomic(UNIQUE_CACHE, &b));
    if let Err(e) = r {
        tracing::debug!("cannot cache unique sizes: {e}");
    }
}

fn read_unique_cache(repo: &Repository) -> Option<UniqueCache> {
    let d = repo.dir().open_dir(crate::repo::layout::CACHE).ok()?;
    let b = d.read(UNIQUE_CACHE, 64 << 20).ok()??;
    serde_json::from_slice(&b).ok()
}

static APPENDED_UPDATES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times this process found unique sizes by updating the cache
/// of an earlier list for the snapshots appended since (tests).
pub fn appended_updates() -> u64 {
    APPENDED_UPDATES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Each snapshot's unique size (see [`SnapshotSpace::unique_bytes`]),
/// as `snapshots` shows it, without resolving any tree: from the cache
/// when it was computed for this very snapshot list; updated from it when
/// the list only appended newer snapshots (the usual case: a capture
/// committed since), looking up only the chunks whose count changed in the
/// new deltas; else from a merge of the whole ledger. The result is
/// cached; read-only repositories compute it each time.
pub fn unique_bytes(repo: &Repository) -> Result<HashMap<u64, u64>> {
    let mut sorted = repo.snapshots()?;
    sorted.sort_by_key(|r| r.id);
    let cached = read_unique_cache(repo);
    if let Some(c) = &cached {
        if c.key == records_key(&sorted) && c.unique.len() == sorted.len() {
            return Ok(c.unique.iter().copied().collect());
        }
    }
    let appended = match &cached {
        Some(c) => {
            let mut first = true;
            ledger::rebuilding_once(repo, || match std::mem::take(&mut first) {
                true => unique_appended(repo, &sorted, c),
                false => Ok(None), // the ledger was computed again
            })?
        }
        None => None,
    };
    let unique = match appended {
        Some(u) => {
            APPENDED_UPDATES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            u
        }
        None => ledger::rebuilding_once(repo, || {
            // The whole ledger, looking up only the chunks a single
            // snapshot holds.
            let mut unique = vec![0u64; sorted.len()];
            ledger::for_each_chunk(repo, &sorted, &mut |id, p| {
                if p.count() == 1 {
                    if let Some(l) = repo.index().get_chunk(id)? {
                        unique[p.runs[0].0] += u64::from(l.stored_len);
                    }
                }
                Ok(())
            })?;
            Ok(unique)
        })?,
    };
    if repo.is_writable() {
        store_unique(repo, &sorted, &unique);
    }
    Ok(sorted.iter().map(|r| r.id).zip(unique).collect())
}

/// The unique sizes of `sorted` from the cache `c` of a list it appends
/// snapshots to (`None` when it does not, or when too much changed):
/// only the chunks whose count changed in the deltas of the last cached
/// snapshot and of the appended ones can change owner
/// ([`ledger::changed_since`]); each moves its stored size from the one
/// snapshot it was unique to among the cached ones (if any) to the one
/// it is unique to now (if any).
fn unique_appended(
    repo: &Repository,
    sorted: &[SnapshotRecord],
    c: &UniqueCache,
) -> Result<Option<Vec<u64>>> {
    let n = c.unique.len();
    if n == 0
        || n >= sorted.len()
        || c.unique.iter().zip(sorted).any(|((id, _), r)| *id != r.id)
        || records_key(&sorted[..n]) != c.key
    {
        return Ok(None);
    }
    let Some((changed, _)) = ledger::changed_since(repo, sorted, n - 1, APPEND_LOOKUPS)? else {
        return Ok(None);
    };
    let mut unique: Vec<i128> = c.unique.iter().map(|(_, u)| i128::from(*u)).collect();
    unique.resize(sorted.len(), 0);
    for (id, p) in &changed {
        if p.only_among(n) == p.only_among(sorted.len()) {
            continue;
        }
        let Some(l) = repo.index().get_chunk(id)? else {
            continue; // not stored: counted nowhere, before or now
        };
        move_unique(&mut unique, p, n, i128::from(l.stored_len));
    }
    if unique.iter().any(|u| *u < 0) {
        // The cache did not match the ledger: merge it whole.
        return Ok(None);
    }
    Ok(Some(unique.into_iter().map(|u| u as u64).collect()))
}
