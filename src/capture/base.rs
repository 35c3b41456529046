//! The base of a capture: the snapshot a capture of a kind is compared
//! with (and, for the live mount, the one its manifest is relative to).

use crate::snapshot::{Kind, SnapshotRecord};

/// The latest snapshot (incremental), the latest full (differential), or
/// none (full).
pub fn base_for(kind: Kind, all: &[SnapshotRecord]) -> Option<&SnapshotRecord> {
    match kind {
        Kind::Full => None,
        Kind::Incremental => all.iter().max_by_key(|r| r.id),
        Kind::Differential => all
            .iter()
            .filter(|r| r.kind == Kind::Full)
            .max_by_key(|r| r.id),
    }
}

/// Why a snapshot of `kind` cannot be based on the existing chain with
/// the repository's `block_size` (someone changed `block_size` in
/// config.json): a chain's manifests must share one block size. `None`
/// when it can.
pub fn block_size_break(all: &[SnapshotRecord], kind: Kind, block_size: u32) -> Option<String> {
    let base = base_for(kind, all)?;
    (base.block_size != block_size).then(|| {
        format!(
            "the repository's block size is {block_size} but snapshot {} was taken with {}",
            base.id, base.block_size
        )
    })
}

/// The kind a capture really takes: the first snapshot of a repository,
/// and any whose chain has another block size, is full.
pub fn effective_kind(all: &[SnapshotRecord], kind: Kind, block_size: u32) -> Kind {
    if all.is_empty() {
        return Kind::Full;
    }
    if kind != Kind::Full {
        if let Some(why) = block_size_break(all, kind, block_size) {
            tracing::warn!("{why}: taking a full snapshot");
            return Kind::Full;
        }
    }
    kind
}
