//! Where the space goes: per snapshot its logical size, the stored size
//! of the chunks it references, and its unique size (the stored bytes of
//! chunks no other snapshot references: about what forgetting it alone
//! would free once gc runs); for the repository the stored and logical
//! totals, deduplication and compression ratios, chunk and pack counts,
//! and chain lengths. From the index and the snapshots' trees; no chunk
//! data is read.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::error::Result;
use crate::repo::Repository;
use crate::snapshot::{Node, SnapshotRecord, Tree};
use crate::store::ChunkId;

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

/// Where one chunk is referenced, over the snapshots in id order.
#[derive(Default)]
struct Life {
    /// Occurrences in the tree of the snapshot being replayed.
    here: u32,
    /// Index of the snapshot since which it is present (while `here > 0`).
    since: u32,
    /// Snapshots it was present in, counted when it left.
    count: u32,
    /// The first snapshot (index) it was present in.
    first: u32,
}

/// Account for every snapshot of `repo`, replaying the snapshots in id
/// order: the first tree is read whole, then each snapshot only where it
/// differs from the one before (for snapshots stored as trees, the
/// directories whose objects differ), so the cost follows the change, not
/// the files times the snapshots. A chunk's unique owner is the one
/// snapshot it was present in.
pub fn space(repo: &Repository) -> Result<RepoSpace> {
    let mut all = repo.snapshots()?;
    all.sort_by_key(|r| r.id);
    let by_id: HashMap<u64, &SnapshotRecord> = all.iter().map(|r| (r.id, r)).collect();
    let index: HashMap<ChunkId, crate::store::pack::Location> =
        repo.index().chunks()?.into_iter().collect();
    let stored = |id: &ChunkId| index.get(id).map_or(0, |l| u64::from(l.stored_len));
    let mut lives: HashMap<ChunkId, Life> = HashMap::new();
    let mut out = RepoSpace::default();
    let mut per: Vec<SnapshotSpace> = Vec::with_capacity(all.len());
    // The replayed snapshot's totals.
    let (mut files, mut logical, mut chunks, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    for (i, rec) in all.iter().enumerate() {
        let i = i as u32;
        let (old, new) = if i == 0 {
            (Tree::default(), repo.resolve(rec)?)
        } else {
            repo.changed_pair(&all[i as usize - 1], rec)?
        };
        for (_, node) in old.entries.values() {
            if let Node::File { size, .. } = node {
                files -= 1;
                logical -= size;
                for id in Tree::blocks_of(node) {
                    let l = lives.entry(*id).or_default();
                    l.here = l.here.saturating_sub(1);
                    if l.here == 0 {
                        l.count += i - l.since;
                        chunks -= 1;
                        bytes -= stored(id);
                    }
                }
            }
        }
        for (_, node) in new.entries.values() {
            if let Node::File { size, .. } = node {
                files += 1;
                logical += size;
                for id in Tree::blocks_of(node) {
                    let l = lives.entry(*id).or_default();
                    if l.here == 0 {
                        if l.count == 0 {
                            l.first = i;
                        }
                        l.since = i;
                        chunks += 1;
                        bytes += stored(id);
                    }
                    l.here += 1;
                }
            }
        }
        let s = SnapshotSpace {
            id: rec.id,
            kind: rec.kind_label(),
            chain_len: chain_len(rec, &by_id),
            files,
            logical_bytes: logical,
            chunks,
            stored_bytes: bytes,
            unique_bytes: 0,
        };
        *out.snapshots_by_kind.entry(s.kind.clone()).or_default() += 1;
        out.logical_bytes += s.logical_bytes;
        out.longest_chain = out.longest_chain.max(s.chain_len);
        per.push(s);
    }
    let n = all.len() as u32;
    for (id, l) in &lives {
        let count = l.count + if l.here > 0 { n - l.since } else { 0 };
        if count == 1 {
            per[l.first as usize].unique_bytes += stored(id);
        }
    }
    let refs: HashSet<&ChunkId> = lives
        .iter()
        .filter(|(_, l)| l.count > 0 || l.here > 0)
        .map(|(id, _)| id)
        .collect();
    out.snapshots = per;
    if repo.is_writable() {
        store_unique(repo, &all, &out);
    }
    let mut packs = HashSet::new();
    for (id, l) in &index {
        packs.insert(l.pack);
        if l.kind != crate::store::BlobKind::Chunk {
            continue;
        }
        if refs.contains(id) {
            out.chunks += 1;
            out.raw_bytes += u64::from(l.raw_len);
            out.stored_bytes += u64::from(l.stored_len);
        } else {
            out.unreferenced_chunks += 1;
            out.unreferenced_bytes += u64::from(l.stored_len);
        }
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
/// snapshot list (ids and manifests) it was computed for.
pub const UNIQUE_CACHE: &str = "unique.json";

#[derive(Serialize, serde::Deserialize)]
struct UniqueCache {
    key: String,
    unique: Vec<(u64, u64)>,
}

/// What the unique sizes depend on: every record's id and manifest.
fn records_key(all: &[SnapshotRecord]) -> String {
    let mut h = blake3::Hasher::new();
    for r in all {
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

fn store_unique(repo: &Repository, all: &[SnapshotRecord], s: &RepoSpace) {
    let c = UniqueCache {
        key: records_key(all),
        unique: s.snapshots.iter().map(|x| (x.id, x.unique_bytes)).collect(),
    };
    let r = serde_json::to_vec(&c)
        .map_err(|e| crate::error::Error::InvalidInput(e.to_string()))
        .and_then(|b| cache_dir(repo)?.write_atomic(UNIQUE_CACHE, &b));
    if let Err(e) = r {
        tracing::debug!("cannot cache unique sizes: {e}");
    }
}

/// Each snapshot's unique size (see [`SnapshotSpace::unique_bytes`]):
/// from the cache when it was computed for this very snapshot list (what
/// `snapshots` shows without reading any tree), else computed by
/// [`space`] (which caches it). Read-only repositories compute it each
/// time.
pub fn unique_bytes(repo: &Repository) -> Result<HashMap<u64, u64>> {
    let all = repo.snapshots()?;
    let key = records_key(&all);
    let cached = repo
        .dir()
        .open_dir(crate::repo::layout::CACHE)
        .ok()
        .and_then(|d| d.read(UNIQUE_CACHE, 16 << 20).ok().flatten())
        .and_then(|b| serde_json::from_slice::<UniqueCache>(&b).ok());
    if let Some(c) = cached.filter(|c| c.key == key) {
        return Ok(c.unique.into_iter().collect());
    }
    let s = space(repo)?;
    Ok(s.snapshots.iter().map(|x| (x.id, x.unique_bytes)).collect())
}
