//! The live capture's base, changed in place.
//!
//! The flusher keeps the latest snapshot's tree as the base of the next
//! capture. A capture used to copy that tree, change the copy at the
//! paths the cut names, then compare the copy with the base to find what
//! changed, and build an inode index of both: five passes over every
//! entry for a change of a few files (250 ms at 100,000 files). Here the
//! capture changes the base itself, through [`BaseTree::put`], which
//!
//! - records in an [`Edits`] what each path held first (so a capture that
//!   fails is undone, and what changed is known without comparing trees),
//! - keeps the inode index (inode -> its paths, sorted) and the counts a
//!   snapshot's statistics need (entries by kind, file bytes, about the
//!   heap bytes held) up to date.
//!
//! Its cost follows the entries changed, not the tree.

use std::collections::{BTreeMap, HashMap};

use crate::snapshot::manifest::{Meta, Node};
use crate::snapshot::tree::entry_heap_bytes;
use crate::snapshot::Tree;
use crate::track::cut::BaseIndex;

/// An entry of a tree: its metadata and node.
pub type Entry = (Meta, Node);

/// The first value each changed path held (`None`: it was absent), in
/// path order.
#[derive(Debug)]
pub struct Edits {
    pub old: BTreeMap<Vec<u8>, Option<Entry>>,
    /// False: nothing is recorded (a full capture, which changes every
    /// file: keeping the old entries would hold the tree twice; it cannot
    /// be undone, its base is dropped if it fails).
    pub recording: bool,
}

impl Default for Edits {
    fn default() -> Self {
        Edits {
            old: BTreeMap::new(),
            recording: true,
        }
    }
}

impl Edits {
    /// Edits that record nothing (see [`Edits::recording`]).
    pub fn unrecorded() -> Edits {
        Edits {
            old: BTreeMap::new(),
            recording: false,
        }
    }
}

/// Entry counts of a tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub entries: u64,
    pub logical_bytes: u64,
    pub heap_bytes: u64,
}

impl Counts {
    fn add(&mut self, path: &[u8], e: &Entry, sign: i8) {
        let f = |x: &mut u64, v: u64| {
            *x = if sign > 0 {
                x.saturating_add(v)
            } else {
                x.saturating_sub(v)
            }
        };
        f(&mut self.entries, 1);
        // The entry, and its path again in the inode index (a slot of
        // the map and of its list).
        f(
            &mut self.heap_bytes,
            entry_heap_bytes(path, e) + path.len() as u64 + 56,
        );
        match &e.1 {
            Node::Dir => f(&mut self.dirs, 1),
            Node::File { size, .. } => {
                f(&mut self.files, 1);
                f(&mut self.logical_bytes, *size);
            }
            Node::Symlink { .. } => f(&mut self.symlinks, 1),
            Node::Special { .. } => {}
        }
    }
}

/// A snapshot's tree with its inode index and counts.
pub struct BaseTree {
    /// The snapshot it is the tree of (0: none yet, a listing).
    pub id: u64,
    tree: Tree,
    by_ino: HashMap<u64, Vec<Vec<u8>>>,
    counts: Counts,
    /// Every entry changed at or after this time is marked racily clean
    /// (`None`: unknown, e.g. a tree read from the repository or left by
    /// an unmount capture: the next capture looks at every entry once).
    pub racy_limit: Option<i64>,
}

impl BaseTree {
    pub fn new(id: u64, tree: Tree) -> BaseTree {
        let mut by_ino: HashMap<u64, Vec<Vec<u8>>> = HashMap::with_capacity(tree.entries.len());
        let mut counts = Counts::default();
        for (p, e) in &tree.entries {
            // Path order: each list comes out sorted.
            by_ino.entry(e.0.ino).or_default().push(p.clone());
            counts.add(p, e, 1);
        }
        BaseTree {
            id,
            tree,
            by_ino,
            counts,
            racy_limit: None,
        }
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn set_block_size(&mut self, bs: u32) {
        self.tree.block_size = bs;
    }

    /// What the cut needs to know about this tree.
    pub fn index(&self) -> BaseIndex<'_> {
        BaseIndex::borrowed(&self.tree, &self.by_ino)
    }

    /// Every path of inode `ino`, in order.
    pub fn paths_of(&self, ino: u64) -> &[Vec<u8>] {
        self.by_ino.get(&ino).map_or(&[], |v| v.as_slice())
    }

    pub fn get(&self, path: &[u8]) -> Option<&Entry> {
        self.tree.entries.get(path)
    }

    /// Set (`Some`) or remove (`None`) the entry at `path`, recording
    /// what it held first.
    pub fn put(&mut self, edits: &mut Edits, path: &[u8], v: Option<Entry>) {
        // A path that stays: its value replaced in place (a full capture
        // puts every file again: new keys and index paths for all of
        // them were 130 MB of churn at 10^6 files).
        let v = match (v, self.tree.entries.get_mut(path)) {
            (Some(e), Some(slot)) => {
                self.counts.add(path, slot, -1);
                self.counts.add(path, &e, 1);
                let old = std::mem::replace(slot, e);
                let new_ino = slot.0.ino;
                if old.0.ino != new_ino {
                    self.index_remove(path, old.0.ino);
                    self.index_add(path, new_ino);
                }
                if edits.recording {
                    edits.old.entry(path.to_vec()).or_insert(Some(old));
                }
                return;
            }
            (v, _) => v,
        };
        let old = self.tree.entries.remove(path);
        if let Some(o) = &old {
            self.counts.add(path, o, -1);
            self.index_remove(path, o.0.ino);
        }
        if let Some(e) = v {
            self.counts.add(path, &e, 1);
            self.index_add(path, e.0.ino);
            self.tree.entries.insert(path.to_vec(), e);
        }
        if edits.recording {
            edits.old.entry(path.to_vec()).or_insert(old);
        }
    }

    /// Remove everything below `path` (not `path` itself).
    pub fn remove_below(&mut self, edits: &mut Edits, path: &[u8]) {
        let doomed: Vec<Vec<u8>> = self
            .tree
            .descendants(path)
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.put(edits, &k, None);
        }
    }

    fn index_add(&mut self, path: &[u8], ino: u64) {
        let v = self.by_ino.entry(ino).or_default();
        if let Err(i) = v.binary_search_by(|p| p.as_slice().cmp(path)) {
            v.insert(i, path.to_vec());
        }
    }

    fn index_remove(&mut self, path: &[u8], ino: u64) {
        if let Some(v) = self.by_ino.get_mut(&ino) {
            if let Ok(i) = v.binary_search_by(|p| p.as_slice().cmp(path)) {
                v.remove(i);
            }
            if v.is_empty() {
                self.by_ino.remove(&ino);
            }
        }
    }

    /// Put back what `edits` recorded: the tree as it was before them.
    pub fn undo(&mut self, edits: Edits) {
        let mut scratch = Edits::unrecorded();
        for (p, old) in edits.old {
            self.put(&mut scratch, &p, old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::manifest::Blocks;
    use crate::snapshot::tree::ino_index;

    fn meta(ino: u64) -> Meta {
        Meta {
            ino,
            ..crate::snapshot::tree::tests::meta(libc::S_IFREG | 0o644)
        }
    }

    fn file(size: u64, ino: u64) -> Entry {
        (
            meta(ino),
            Node::File {
                size,
                blocks: Blocks::Full(Vec::new()),
                link: None,
            },
        )
    }

    fn dir(ino: u64) -> Entry {
        let mut m = meta(ino);
        m.mode = libc::S_IFDIR | 0o755;
        (m, Node::Dir)
    }

    #[test]
    fn index_counts_and_undo_follow_in_place_changes() {
        let mut t = Tree::default();
        for (p, e) in [
            ("", dir(1)),
            ("a", dir(2)),
            ("a/x", file(10, 3)),
            ("a/y", file(20, 4)),
            ("b", file(5, 3)),
        ] {
            t.entries.insert(p.as_bytes().to_vec(), e);
        }
        let orig = t.clone();
        let mut b = BaseTree::new(7, t);
        let fresh = |b: &BaseTree| {
            let again = BaseTree::new(0, b.tree().clone());
            assert_eq!(b.counts(), again.counts());
            assert_eq!(b.by_ino, ino_index(b.tree()));
        };
        fresh(&b);
        let mut edits = Edits::default();
        b.remove_below(&mut edits, b"a");
        b.put(&mut edits, b"a", None);
        b.put(&mut edits, b"c", Some(file(7, 3)));
        b.put(&mut edits, b"b", Some(file(6, 9)));
        fresh(&b);
        assert_eq!(b.paths_of(3), &[b"c".to_vec()]);
        assert_eq!(b.counts().files, 2);
        assert_eq!(edits.old.len(), 5);
        assert_eq!(edits.old[&b"c".to_vec()], None);
        b.undo(edits);
        assert_eq!(b.tree(), &orig);
        fresh(&b);
        assert_eq!(b.paths_of(3), &[b"a/x".to_vec(), b"b".to_vec()]);
    }
}
