//! Every object name of a remote repository, in one place (mirrors
//! docs/format.md, "Remote layout"). Keys are relative to the
//! repository's base, `PREFIX/HOST/`:
//!
//! ```text
//! keys/<16 hex>.json          an encrypted repository's wrapped keys, as local (first)
//! config.json                 the repository's config.json, as local (after the keys)
//! packs/<16 hex>.pack         a pack, the local file's bytes (immutable)
//! packs/<16 hex>.idx          the pack's blob list (after its pack; see idx.rs)
//! snapshots/<10 digits>.json  a snapshot record (after all its data)
//! lock.json                   the writer's lease (lease.rs)
//! deletions/<ns>.json         packs remote retention will delete after a delay
//! ```

use crate::snapshot::model::SnapshotRecord;
use crate::store::pack::pack_file_name;

pub const CONFIG: &str = "config.json";
pub const PACKS_DIR: &str = "packs/";
pub const SNAPSHOTS_DIR: &str = "snapshots/";
pub const KEYS_DIR: &str = "keys/";
pub const DELETIONS_DIR: &str = "deletions/";

/// A deletion schedule: the packs, and when they were found unreferenced.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Deletions {
    pub scheduled_ns: i64,
    pub packs: Vec<u64>,
}

pub fn deletions(time_ns: i64) -> String {
    format!("{DELETIONS_DIR}{time_ns:020}.json")
}

/// Every pack some deletion schedule names.
pub fn doomed_packs(
    client: &super::client::Client,
) -> crate::error::Result<std::collections::HashSet<u64>> {
    let mut out = std::collections::HashSet::new();
    for (key, _) in client.list(DELETIONS_DIR)? {
        if let Some(b) = client.get(&key, 64 << 20)? {
            match serde_json::from_slice::<Deletions>(&b) {
                Ok(d) => out.extend(d.packs),
                Err(e) => tracing::warn!("{}/{key}: {e}", client.name()),
            }
        }
    }
    Ok(out)
}

/// A key file (`name` as in the repository's keys/ directory).
pub fn key(name: &str) -> String {
    format!("{KEYS_DIR}{name}")
}

pub fn pack(id: u64) -> String {
    format!("{PACKS_DIR}{}", pack_file_name(id))
}

pub fn idx(id: u64) -> String {
    format!("{PACKS_DIR}{id:016x}.idx")
}

pub fn record(id: u64) -> String {
    format!("{SNAPSHOTS_DIR}{}", SnapshotRecord::file_name(id))
}

/// The pack id of a `packs/<16 hex>.idx` key.
pub fn parse_idx(key: &str) -> Option<u64> {
    let hex = key.strip_prefix(PACKS_DIR)?.strip_suffix(".idx")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The pack id of a `packs/<16 hex>.pack` key.
pub fn parse_pack(key: &str) -> Option<u64> {
    crate::store::pack::parse_pack_file_name(key.strip_prefix(PACKS_DIR)?)
}

/// The record id of a `snapshots/<id>.json` key.
pub fn parse_record(key: &str) -> Option<u64> {
    SnapshotRecord::parse_file_name(key.strip_prefix(SNAPSHOTS_DIR)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_idx(&idx(0x2a)), Some(0x2a));
        assert_eq!(parse_pack(&pack(7)), Some(7));
        assert_eq!(parse_record(&record(12)), Some(12));
        assert_eq!(parse_idx("packs/zz.idx"), None);
        assert_eq!(parse_pack(&idx(7)), None);
    }
}
