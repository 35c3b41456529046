//! Snapshots: the model (full, incremental, differential), manifests, chain
//! resolution into trees, selection by id/name/time, and the rule that
//! says an entry is unchanged since a snapshot (`unchanged.rs`).

pub mod diff;
pub mod dirs;
pub mod manifest;
pub mod model;
pub mod select;
pub mod spans;
pub mod tree;
pub mod unchanged;

pub use dirs::Stored;
pub use manifest::{Blocks, Entry, Manifest, Meta, Node};
pub use model::{Kind, SnapshotRecord, Stats};
pub use tree::Tree;

/// The name under which a live mount shows its snapshots at its root. It
/// is never captured, and nothing of that name can be made there.
pub const SNAPSHOTS_DIR: &str = ".snapshots";
