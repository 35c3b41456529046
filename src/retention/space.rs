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

/// Account for every snapshot of `repo`.
pub fn space(repo: &Repository) -> Result<RepoSpace> {
    let all = repo.snapshots()?;
    let by_id: HashMap<u64, &SnapshotRecord> = all.iter().map(|r| (r.id, r)).collect();
    let index: HashMap<ChunkId, crate::store::pack::Location> =
        repo.index().chunks()?.into_iter().collect();
    let mut refs: HashMap<ChunkId, u32> = HashMap::new();
    let mut per: Vec<(SnapshotSpace, HashSet<ChunkId>)> = Vec::new();
    let mut out = RepoSpace::default();
    for rec in &all {
        let tree = repo.resolve(rec)?;
        let mut s = SnapshotSpace {
            id: rec.id,
            kind: rec.kind_label(),
            chain_len: chain_len(rec, &by_id),
            ..Default::default()
        };
        let mut set = HashSet::new();
        for (_, node) in tree.entries.values() {
            if let Node::File { size, .. } = node {
                s.files += 1;
                s.logical_bytes += size;
                set.extend(Tree::blocks_of(node).iter().copied());
            }
        }
        for id in &set {
            *refs.entry(*id).or_default() += 1;
            if let Some(l) = index.get(id) {
                s.stored_bytes += u64::from(l.stored_len);
            }
        }
        s.chunks = set.len() as u64;
        *out.snapshots_by_kind.entry(s.kind.clone()).or_default() += 1;
        out.logical_bytes += s.logical_bytes;
        out.longest_chain = out.longest_chain.max(s.chain_len);
        per.push((s, set));
    }
    for (s, set) in &mut per {
        s.unique_bytes = set
            .iter()
            .filter(|id| refs.get(*id) == Some(&1))
            .filter_map(|id| index.get(id))
            .map(|l| u64::from(l.stored_len))
            .sum();
    }
    out.snapshots = per.into_iter().map(|(s, _)| s).collect();
    let mut packs = HashSet::new();
    for (id, l) in &index {
        packs.insert(l.pack);
        if l.kind != crate::store::BlobKind::Chunk {
            continue;
        }
        if refs.contains_key(id) {
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
