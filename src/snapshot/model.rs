//! Snapshot records: what `snapshots/<id>.json` holds.
//!
//! A snapshot exists once its record file is durable (written, fsynced,
//! renamed into place, directory fsynced). The record names the manifest
//! parts (blobs in packs) that describe the tree.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::ChunkId;

pub const RECORD_FORMAT: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A complete manifest of the tree.
    Full,
    /// Changes since the previous snapshot.
    Incremental,
    /// Changes since the last full snapshot.
    Differential,
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
            Kind::Differential => "differential",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Kind> {
        match s {
            "full" => Ok(Kind::Full),
            "incremental" | "incr" => Ok(Kind::Incremental),
            "differential" | "diff" => Ok(Kind::Differential),
            _ => Err(Error::InvalidInput(format!(
                "unknown snapshot kind {s:?} (full, incremental or differential)"
            ))),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Regular files in the snapshot's tree.
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Sum of the sizes of the regular files in the tree.
    pub logical_bytes: u64,
    /// Bytes this snapshot added to the packs (new chunks and manifest).
    pub stored_bytes: u64,
    /// Chunks this snapshot added.
    pub new_chunks: u64,
    /// Blocks whose content differs from the base snapshot (all blocks
    /// for a full snapshot).
    pub changed_blocks: u64,
    /// Entries written in the manifest (new, changed or metadata-changed).
    pub changed_entries: u64,
    /// Entries removed relative to the base.
    pub removed_entries: u64,
    /// Files that changed while they were read (scan mode only).
    #[serde(default)]
    pub unstable_files: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub format: u32,
    pub id: u64,
    pub kind: Kind,
    /// Incremental: the previous snapshot; differential: the last full.
    pub parent: Option<u64>,
    /// The full snapshot at the root of this snapshot's chain.
    pub full: u64,
    /// RFC 3339 UTC.
    pub time: String,
    /// Nanoseconds since the Unix epoch (the cut).
    pub time_ns: i64,
    pub label: Option<String>,
    /// Unique, time-sortable directory name.
    pub name: String,
    /// What was captured (a path; informational).
    pub source: String,
    pub block_size: u32,
    /// The manifest: blake3 ids (hex) of its parts, in order.
    pub manifest: Vec<String>,
    /// Length of the encoded manifest.
    pub manifest_len: u64,
    pub stats: Stats,
}

impl SnapshotRecord {
    pub fn manifest_ids(&self) -> Result<Vec<ChunkId>> {
        self.manifest.iter().map(|h| ChunkId::from_hex(h)).collect()
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::InvalidInput(format!("encoding snapshot record: {e}")))?;
        v.push(b'\n');
        Ok(v)
    }

    pub fn from_json(bytes: &[u8]) -> Result<SnapshotRecord> {
        let r: SnapshotRecord = serde_json::from_slice(bytes)
            .map_err(|e| Error::Corrupt(format!("snapshot record does not parse: {e}")))?;
        if r.format != RECORD_FORMAT {
            return Err(Error::Corrupt(format!(
                "snapshot record {} has format {}, expected {RECORD_FORMAT}",
                r.id, r.format
            )));
        }
        Ok(r)
    }

    pub fn file_name(id: u64) -> String {
        format!("{id:010}.json")
    }

    pub fn parse_file_name(name: &str) -> Option<u64> {
        let digits = name.strip_suffix(".json")?;
        if digits.len() < 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}
