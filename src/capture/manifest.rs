//! The one manifest builder: what turns a capture's base into its new
//! tree. A full snapshot lists everything; an incremental or differential
//! one lists removed paths (topmost only), new or changed entries, and
//! files as patches of the blocks that differ from the same path in the
//! base.
//!
//! Both captures use [`Builder`]: the live capture hands it its whole tree
//! ([`build`], entries equal to the base's are left out); scan capture
//! hands it, while walking, the entries it found new or changed (it must
//! decide that anyway, to skip reading unchanged files).

use crate::snapshot::manifest::{Blocks, Entry, Manifest, Meta, Node, MANIFEST_FORMAT};
use crate::snapshot::Tree;
use crate::store::ChunkId;

/// A manifest being assembled against a base (`None`: a full snapshot).
pub struct Builder<'b> {
    base: Option<&'b Tree>,
    entries: Vec<Entry>,
    removed: Vec<Vec<u8>>,
    blocks: u64,
    /// The trees' block size (content chunks are counted in blocks).
    block_size: u32,
}

impl<'b> Builder<'b> {
    pub fn new(base: Option<&'b Tree>) -> Builder<'b> {
        Builder {
            base,
            entries: Vec::new(),
            removed: Vec::new(),
            blocks: 0,
            block_size: base.map_or(0, |t| t.block_size),
        }
    }

    /// The block size, when there is no base to take it from.
    pub fn block_size(mut self, block_size: u32) -> Self {
        self.block_size = block_size;
        self
    }

    /// A new or changed entry. A file (with its full block list) is
    /// recorded as a patch against the base's file at the same path, if
    /// there is one; `count` adds its recorded blocks to the total (a hard
    /// link's second name shares its first name's blocks: not counted).
    pub fn changed(&mut self, path: Vec<u8>, meta: Meta, node: Node, count: bool) {
        let old = self.base.and_then(|t| t.get(&path));
        self.changed_from(old, path, meta, node, count);
    }

    /// [`Self::changed`] with the base's entry at `path` given.
    fn changed_from(
        &mut self,
        old: Option<&(Meta, Node)>,
        path: Vec<u8>,
        meta: Meta,
        node: Node,
        count: bool,
    ) {
        let (node, n) = match (old, node) {
            (
                Some((
                    _,
                    old_node @ Node::File {
                        blocks: Blocks::Full(_),
                        ..
                    },
                )),
                Node::File {
                    size,
                    blocks: Blocks::Full(list),
                    link,
                },
            ) => {
                let (blocks, n) = patch(&list, Tree::blocks_of(old_node));
                (Node::File { size, blocks, link }, n)
            }
            // Content chunks (or a change between the two layouts): the
            // whole list; the chunks the old file did not hold are new.
            // (Content chunks count as the blocks their bytes fill.)
            (Some((_, old_node @ Node::File { .. })), n @ Node::File { .. }) => {
                let held: std::collections::HashSet<&ChunkId> =
                    Tree::blocks_of(old_node).iter().collect();
                let bs = self.block_size.max(1);
                let k = match crate::snapshot::spans::Spans::of(&n, bs) {
                    Some(s) if !s.is_grid() => Tree::blocks_of(&n)
                        .iter()
                        .enumerate()
                        .filter(|(_, id)| !held.contains(id))
                        .map(|(i, _)| s.span(i).1)
                        .sum::<u64>()
                        .div_ceil(u64::from(bs)),
                    _ => Tree::blocks_of(&n)
                        .iter()
                        .filter(|id| !held.contains(id))
                        .count() as u64,
                };
                (n, k)
            }
            (_, n) => {
                let k = Tree::blocks_of(&n).len() as u64;
                (n, k)
            }
        };
        if count {
            self.blocks += n;
        }
        self.entries.push(Entry { path, meta, node });
    }

    /// Every entry of `tree` that is not in the base exactly as it is.
    pub fn changed_in(&mut self, tree: &Tree) {
        for (p, (meta, node)) in &tree.entries {
            let old = self.base.and_then(|t| t.entries.get(p));
            if old.is_some_and(|(m, n)| m == meta && n == node) {
                continue;
            }
            self.changed(p.clone(), meta.clone(), node.clone(), true);
        }
    }

    /// Paths of the base that `present` says are gone (topmost only).
    pub fn removed_unless(&mut self, present: impl Fn(&[u8]) -> bool) {
        if let Some(base) = self.base {
            self.removed = base.topmost_absent(|p| present(p));
        }
    }

    /// The manifest (entries in path order) and the blocks it records.
    pub fn finish(mut self, block_size: u32) -> (Manifest, u64) {
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
        (
            Manifest {
                format: MANIFEST_FORMAT,
                block_size,
                removed: self.removed,
                entries: self.entries,
            },
            self.blocks,
        )
    }
}

/// The blocks that differ from the base's list, as a patch, and how many.
fn patch(ids: &[ChunkId], old: &[ChunkId]) -> (Blocks, u64) {
    let changes: Vec<(u64, ChunkId)> = ids
        .iter()
        .enumerate()
        .filter(|(i, id)| old.get(*i) != Some(id))
        .map(|(i, id)| (i as u64, *id))
        .collect();
    let n = changes.len() as u64;
    (Blocks::Patch(changes), n)
}

/// The manifest of `tree` against the base it was made from in place
/// (`capture::base_tree`): `edits` holds what each changed path of that
/// base held. The same manifest as [`build`] with the base, reading only
/// the changed paths.
pub fn from_edits(tree: &Tree, edits: &super::base_tree::Edits) -> (Manifest, u64) {
    let mut b = Builder::new(None).block_size(tree.block_size);
    let mut last_removed: Option<&[u8]> = None;
    for (p, old) in &edits.old {
        match (old, tree.entries.get(p)) {
            (Some(o), Some(n)) if o == n => {}
            (old, Some((meta, node))) => {
                b.changed_from(old.as_ref(), p.clone(), meta.clone(), node.clone(), true)
            }
            (Some(_), None) => {
                // Topmost only: a removed directory stands for its entries.
                let below = last_removed
                    .is_some_and(|r| p.len() > r.len() && p.starts_with(r) && p[r.len()] == b'/');
                if !below {
                    b.removed.push(p.clone());
                    last_removed = Some(p);
                }
            }
            (None, None) => {}
        }
    }
    b.finish(tree.block_size)
}

/// What the full manifest of `tree` ([`build`] with no base) records:
/// its entries and blocks, counted without building it.
pub fn counts_of_full(tree: &Tree) -> (u64, u64) {
    let blocks = tree
        .entries
        .values()
        .map(|(_, n)| Tree::blocks_of(n).len() as u64)
        .sum();
    (tree.entries.len() as u64, blocks)
}

/// The manifest of `tree` (every block list full) against `base`, and the
/// number of blocks it records.
pub fn build(tree: &Tree, base: Option<&Tree>) -> (Manifest, u64) {
    let mut b = Builder::new(base).block_size(tree.block_size);
    b.removed_unless(|p| tree.entries.contains_key(p));
    b.changed_in(tree);
    b.finish(tree.block_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tree::tests::{dir, file, id, meta};

    #[test]
    fn diff_then_apply_gives_the_new_tree() {
        let mut a = Tree::default();
        a.apply(&Manifest {
            format: MANIFEST_FORMAT,
            block_size: 4,
            removed: vec![],
            entries: vec![
                dir(""),
                dir("d"),
                file("d/a", 10, Blocks::Full(vec![id(1), id(2), id(3)])),
                dir("d/sub"),
                file("d/sub/x", 1, Blocks::Full(vec![id(4)])),
                file("e", 4, Blocks::Full(vec![id(9)])),
            ],
        })
        .unwrap();
        let mut b = a.clone();
        b.entries.remove(b"d/sub/x".as_slice());
        b.entries.remove(b"d/sub".as_slice());
        b.entries.insert(
            b"d/a".to_vec(),
            (
                meta(0o100644),
                Node::File {
                    size: 13,
                    blocks: Blocks::Full(vec![id(1), id(7), id(3), id(8)]),
                    link: None,
                },
            ),
        );
        b.entries.insert(
            b"n".to_vec(),
            (
                meta(0o100644),
                Node::File {
                    size: 1,
                    blocks: Blocks::Full(vec![id(5)]),
                    link: None,
                },
            ),
        );
        let (m, blocks) = build(&b, Some(&a));
        assert_eq!(m.removed, vec![b"d/sub".to_vec()]);
        assert_eq!(m.entries.len(), 2);
        assert_eq!(blocks, 3);
        let mut c = a.clone();
        c.apply(&m).unwrap();
        assert_eq!(c, b);
    }

    #[test]
    fn a_full_manifest_lists_everything_and_counts_every_block() {
        let mut t = Tree::default();
        t.apply(&Manifest {
            format: MANIFEST_FORMAT,
            block_size: 4,
            removed: vec![],
            entries: vec![dir(""), file("a", 5, Blocks::Full(vec![id(1), id(2)]))],
        })
        .unwrap();
        let (m, blocks) = build(&t, None);
        assert_eq!(m.entries.len(), 2);
        assert!(m.removed.is_empty());
        assert_eq!(blocks, 2);
        assert!(matches!(
            &m.entries[1].node,
            Node::File {
                blocks: Blocks::Full(_),
                ..
            }
        ));
    }

    #[test]
    fn a_second_name_of_a_hard_link_is_recorded_but_not_counted() {
        let mut b = Builder::new(None);
        let node = || Node::File {
            size: 4,
            blocks: Blocks::Full(vec![id(3)]),
            link: Some(9),
        };
        b.changed(b"x".to_vec(), meta(0o100644), node(), true);
        b.changed(b"y".to_vec(), meta(0o100644), node(), false);
        let (m, blocks) = b.finish(4);
        assert_eq!((m.entries.len(), blocks), (2, 1));
    }
}
