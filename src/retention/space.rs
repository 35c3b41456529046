//! Where the space goes: per snapshot its logical size, the stored size
//! of the chunks it references, and its unique size (the stored bytes of
//! chunks no other snapshot references: about what forgetting it alone
//! would free once gc runs); for the repository the stored and logical
//! totals, deduplication and compression ratios, chunk and pack counts,
//! and chain lengths. From the index and the reference ledger (what each
//! snapshot changed); no chunk data is read, and no tree but those of
//! snapshots the ledger does not cover yet.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::ledger;
use crate::error::Result;
use crate::repo::Repository;
use crate::snapshot::SnapshotRecord;
use crate::store::pack::Location;

#[derive(Clone, Debug, Default, Serialize)]
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
}

#[derive(Clone, Debug, Default, Serialize)]
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
pub fn space(repo: &Repository) -> Result<RepoSpace> {
    ledger::rebuilding_once(repo, || space_once(repo))
}

fn space_once(repo: &Repository) -> Result<RepoSpace> {
    let mut all = repo.snapshots()?;
    all.sort_by_key(|r| r.id);
    let by_id: HashMap<u64, &SnapshotRecord> = all.iter().map(|r| (r.id, r)).collect();
    let n = all.len();
    let mut out = RepoSpace::default();
    // Per snapshot: changes of its chunk count and stored bytes where a
    // chunk's presence starts and ends.
    let mut chunks_d = vec![0i64; n + 1];
    let mut stored_d = vec![0i64; n + 1];
    let mut unique = vec![0u64; n];
    let mut packs: HashSet<u64> = HashSet::new();
    let mut index = repo.index().chunk_iter().peekable();
    let unreferenced = |out: &mut RepoSpace, packs: &mut HashSet<u64>, l: &Location| {
        packs.insert(l.pack);
        if l.kind == crate::store::BlobKind::Chunk {
            out.unreferenced_chunks += 1;
            out.unreferenced_bytes += u64::from(l.stored_len);
        }
    };
    let history = ledger::for_each_chunk(repo, &all, &mut |id, p| {
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
            packs.insert(l.pack);
            if l.kind == crate::store::BlobKind::Chunk {
                out.chunks += 1;
                out.raw_bytes += u64::from(l.raw_len);
                out.stored_bytes += u64::from(l.stored_len);
            }
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
        };
        *out.snapshots_by_kind.entry(s.kind.clone()).or_default() += 1;
        out.logical_bytes += s.logical_bytes;
        out.longest_chain = out.longest_chain.max(s.chain_len);
        out.snapshots.push(s);
    }
    if repo.is_writable() {
        let unique: Vec<u64> = out.snapshots.iter().map(|x| x.unique_bytes).collect();
        store_unique(repo, &all, &unique);
    }
    out.packs = packs.len() as u64;
    out.pack_bytes = packs
        .iter()
        .filter_map(|p| repo.pack_reader().pack_len(*p))
        .sum();
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    out.dedup_ratio = ratio(out.logical_bytes, out.raw_bytes);
    out.compression_ratio = ratio(out.raw_bytes, out.stored_bytes);
    Ok(out)
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
/// committed since), looking up only the chunks whose count rose in the
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
        Some(c) => ledger::rebuilding_once(repo, || unique_appended(repo, &sorted, c))?,
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
/// only the chunks whose count rose in the deltas of the last cached
/// snapshot and of the appended ones can change owner
/// ([`ledger::rising_since`]); each moves its stored size from the one
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
    let Some(rising) = ledger::rising_since(repo, sorted, n - 1, APPEND_LOOKUPS)? else {
        return Ok(None);
    };
    let mut unique: Vec<i128> = c.unique.iter().map(|(_, u)| i128::from(*u)).collect();
    unique.resize(sorted.len(), 0);
    for (id, p) in &rising {
        let before = p.only_among(n);
        let now = p.only_among(sorted.len());
        if before == now {
            continue;
        }
        let Some(l) = repo.index().get_chunk(id)? else {
            continue; // not stored: counted nowhere, before or now
        };
        let s = i128::from(l.stored_len);
        if let Some(k) = before {
            unique[k] -= s;
        }
        if let Some(k) = now {
            unique[k] += s;
        }
    }
    if unique.iter().any(|u| *u < 0) {
        // The cache did not match the ledger: merge it whole.
        return Ok(None);
    }
    Ok(Some(unique.into_iter().map(|u| u as u64).collect()))
}
