//! The manifest of a capture: what turns its base into the new tree.
//! A full snapshot lists everything; an incremental or differential one
//! lists removed paths (topmost only), new or changed entries, and files
//! as patches of the blocks that differ from the same path in the base
//! (`snapshot::tree::patch`, also used by scan capture, which builds its
//! entries as it walks).

use crate::snapshot::manifest::{Entry, Manifest, MANIFEST_FORMAT};
use crate::snapshot::Tree;

/// The manifest of `tree` (every block list full) against `base` (`None`:
/// a full snapshot), and the number of blocks it lists.
pub fn build(tree: &Tree, base: Option<&Tree>) -> (Manifest, u64) {
    let (removed, entries, changed) = match base {
        None => {
            let entries: Vec<Entry> = tree
                .entries
                .iter()
                .map(|(p, (m, n))| Entry {
                    path: p.clone(),
                    meta: m.clone(),
                    node: n.clone(),
                })
                .collect();
            let blocks = entries
                .iter()
                .map(|e| Tree::blocks_of(&e.node).len() as u64)
                .sum();
            (Vec::new(), entries, blocks)
        }
        Some(base) => tree.diff_from(base),
    };
    (
        Manifest {
            format: MANIFEST_FORMAT,
            block_size: tree.block_size,
            removed,
            entries,
        },
        changed,
    )
}
