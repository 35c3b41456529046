//! Snapshot records: what `snapshots/<id>.json` holds.
//!
//! A snapshot exists once its record file is durable (written, fsynced,
//! renamed into place, directory fsynced). The record names the manifest
//! parts (blobs in packs) that describe the tree.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::ChunkId;

pub const RECORD_FORMAT: u32 = 1;
/// The longest label a snapshot may carry (bytes).
pub const MAX_LABEL: usize = 4096;
/// The largest record file read (a real one is about 1 KiB plus 70
/// bytes per manifest part).
pub const MAX_RECORD_BYTES: u64 = 16 << 20;

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
    /// Sizes of the files whose content changed since the snapshot this
    /// one was captured against (at the same path), and how many of
    /// those bytes are in chunks that path's earlier version already
    /// held (shared with it, stored once). Absent in records written
    /// before 2026-12-06, and for a full snapshot read from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewritten_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_bytes: Option<u64>,
}

impl Stats {
    /// Add what the files changed between `old` and `new` share with
    /// their earlier versions (see [`super::diff::version_sharing`]).
    pub fn add_sharing(&mut self, old: &super::Node, new: &super::Node, block_size: u32) {
        if let Some((size, shared)) = super::diff::version_sharing(old, new, block_size) {
            *self.rewritten_bytes.get_or_insert(0) += size;
            *self.shared_bytes.get_or_insert(0) += shared;
        }
    }
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
    /// Set when `forget` rewrote this record because a snapshot it
    /// depended on was removed: what it was before. A `full` snapshot
    /// with this set is a synthetic full (built from manifests, no data
    /// read again). Absent in records never rewritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewritten: Option<Rewritten>,
    /// A full snapshot the flusher built on schedule from the previous
    /// snapshot's tree and the journal's changes, without reading the
    /// unchanged data again (`--synthetic-fulls`). Absent: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synthetic: bool,
}

/// What a rewritten record was before `forget` rewrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewritten {
    /// RFC 3339 UTC time of the rewrite.
    pub at: String,
    /// Its kind as captured.
    pub was: Kind,
    /// Its parent as captured.
    pub was_parent: Option<u64>,
}

impl SnapshotRecord {
    /// The kind for people: `full (synthetic)` for a full snapshot built
    /// from manifests (on schedule, or by `forget` from an incremental or
    /// differential).
    pub fn kind_label(&self) -> String {
        match (&self.rewritten, self.kind) {
            (_, Kind::Full) if self.synthetic => "full (synthetic)".into(),
            (Some(r), Kind::Full) if r.was != Kind::Full => "full (synthetic)".into(),
            (_, k) => k.as_str().into(),
        }
    }

    pub fn manifest_ids(&self) -> Result<Vec<ChunkId>> {
        self.manifest.iter().map(|h| ChunkId::from_hex(h)).collect()
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::InvalidInput(format!("encoding snapshot record: {e}")))?;
        v.push(b'\n');
        Ok(v)
    }

    /// Parse and check a record (see [`SnapshotRecord::validate`]).
    pub fn from_json(bytes: &[u8]) -> Result<SnapshotRecord> {
        let r: SnapshotRecord = serde_json::from_slice(bytes)
            .map_err(|e| Error::Corrupt(format!("snapshot record does not parse: {e}")))?;
        r.validate()?;
        Ok(r)
    }

    /// Parse the record stored as `snapshots/<id>.json`: as
    /// [`SnapshotRecord::from_json`], and its id must be `id`.
    pub fn from_json_as(bytes: &[u8], id: u64) -> Result<SnapshotRecord> {
        let r = Self::from_json(bytes)?;
        if r.id != id {
            return Err(Error::Corrupt(format!(
                "the record of snapshot {id} says it is snapshot {}",
                r.id
            )));
        }
        Ok(r)
    }

    /// Everything a reader relies on: the format, the name (derived from
    /// time and id, so it is a safe directory name), the time, the chain
    /// links, the block size, and a manifest length the listed parts can
    /// hold. A record that fails is damaged; it never reaches a reader.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| {
            Err(Error::Corrupt(format!(
                "snapshot record {}: {why}",
                self.id
            )))
        };
        if self.format != RECORD_FORMAT {
            return bad(format!(
                "has format {}, expected {RECORD_FORMAT}",
                self.format
            ));
        }
        if self.id == 0 {
            return bad("has id 0".into());
        }
        if self.time != crate::util::time::rfc3339(self.time_ns) {
            return bad(format!(
                "its time {:?} does not match time_ns {}",
                self.time, self.time_ns
            ));
        }
        if self.name != crate::util::time::snapshot_name(self.time_ns, self.id) {
            return bad(format!(
                "its name {:?} is not derived from its time and id",
                crate::snapshot::manifest::escape(self.name.as_bytes())
            ));
        }
        match (self.kind, self.parent) {
            (Kind::Full, None) if self.full == self.id => {}
            (Kind::Full, _) => return bad("is full but names a parent".into()),
            (_, Some(p)) if p < self.id && self.full <= p => {}
            (_, _) => return bad("is not full and has no earlier parent".into()),
        }
        if self.synthetic && self.kind != Kind::Full {
            return bad(format!(
                "is {} and says it is a synthetic full",
                self.kind.as_str()
            ));
        }
        let bs = self.block_size as usize;
        if !bs.is_power_of_two() || !(4096..=crate::store::blob::MAX_RAW_LEN).contains(&bs) {
            return bad(format!("has block size {}", self.block_size));
        }
        let part = crate::snapshot::manifest::MANIFEST_PART_LEN as u64;
        let parts = self.manifest.len() as u64;
        if self.manifest_len > parts.saturating_mul(part)
            || self.manifest_len
                < parts.saturating_sub(1).saturating_mul(part) + u64::from(parts > 0)
        {
            return bad(format!(
                "its manifest of {} parts cannot be {} bytes long",
                parts, self.manifest_len
            ));
        }
        for h in &self.manifest {
            ChunkId::from_hex(h)?;
        }
        if self.label.as_ref().is_some_and(|l| l.len() > MAX_LABEL) || self.source.len() > 4096 {
            return bad("has an over-long label or source".into());
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::time;

    fn good() -> SnapshotRecord {
        let t = 1_700_000_000_123_456_789;
        SnapshotRecord {
            format: RECORD_FORMAT,
            id: 3,
            kind: Kind::Incremental,
            parent: Some(2),
            full: 1,
            time: time::rfc3339(t),
            time_ns: t,
            label: Some("epoch 3".into()),
            name: time::snapshot_name(t, 3),
            source: "/data".into(),
            block_size: 1 << 20,
            manifest: vec![ChunkId::of(b"m").to_hex()],
            manifest_len: 1234,
            stats: Stats::default(),
            rewritten: None,
            synthetic: false,
        }
    }

    #[test]
    fn good_records_pass_and_hostile_fields_do_not() {
        let r = good();
        let json = r.to_json().unwrap();
        assert_eq!(SnapshotRecord::from_json_as(&json, 3).unwrap(), r);
        assert!(SnapshotRecord::from_json_as(&json, 4).is_err());
        type Edit = Box<dyn Fn(&mut SnapshotRecord)>;
        let cases: Vec<Edit> = vec![
            Box::new(|r| r.name = "../../etc".into()),
            Box::new(|r| r.name = "x/y".into()),
            Box::new(|r| r.time = "yesterday".into()),
            Box::new(|r| r.manifest_len = 1_000_000_000_000_000_000),
            Box::new(|r| r.manifest_len = 0),
            Box::new(|r| r.block_size = 3),
            Box::new(|r| r.block_size = 1 << 30),
            Box::new(|r| r.parent = Some(3)),
            Box::new(|r| r.parent = None),
            Box::new(|r| r.kind = Kind::Full),
            Box::new(|r| r.manifest = vec!["zz".into()]),
            Box::new(|r| r.label = Some("x".repeat(MAX_LABEL + 1))),
            Box::new(|r| r.format = 9),
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut r = good();
            f(&mut r);
            assert!(r.validate().is_err(), "case {i} passed");
        }
        assert!(SnapshotRecord::from_json(b"{not json").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_err(b in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = SnapshotRecord::from_json(&b);
        }

        #[test]
        fn any_file_name_parses_or_not(s in "\\PC{0,20}") {
            let _ = SnapshotRecord::parse_file_name(&s);
        }
    }
}
