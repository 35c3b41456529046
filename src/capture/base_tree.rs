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
//!
//! Between captures the tree need not stay in memory: once committed, its
//! directories are stored objects (named, by path, in the flusher's
//! [`DirMemo`]), so [`BaseTree::unload`] keeps only the root and each
//! directory is read again when a capture first needs it
//! ([`BaseTree::load`] and the `ensure_*` calls). The invariant: the
//! entries held are the children of the *loaded* directories (and the
//! root); a loaded directory's parent is loaded; a directory the
//! capture created or emptied counts as loaded (nothing below it comes
//! from the store). The counts and the inode index always describe the
//! whole tree.

use std::collections::{BTreeMap, HashSet};

use crate::error::{Error, Result};
use crate::snapshot::dirs::{join, load_dir, parent_and_name, DNode, DirMemo, Objects, Root};
use crate::snapshot::manifest::{display_path, Blocks, Meta, Node};
use crate::snapshot::tree::entry_heap_bytes;
use crate::snapshot::Tree;
use crate::track::cut::BaseLookup;
use crate::track::reconcile::{DirEntries, SnapshotDirs};

use super::ino_index::InoIndex;

/// Where the directories of a partly loaded base are read from: the
/// repository, and the references of the base's directories.
#[derive(Clone, Copy)]
pub struct Loader<'a> {
    pub store: &'a dyn Objects,
    pub memo: &'a DirMemo,
}

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
    /// The directories whose entries `tree` holds (`None`: all of them).
    loaded: Option<HashSet<Vec<u8>>>,
    index: InoIndex,
    counts: Counts,
    /// Every entry changed at or after this time is marked racily clean
    /// (`None`: unknown, e.g. a tree read from the repository or left by
    /// an unmount capture: the next capture looks at every entry once).
    pub racy_limit: Option<i64>,
}

impl BaseTree {
    pub fn new(id: u64, tree: Tree) -> BaseTree {
        let mut counts = Counts::default();
        for (p, e) in &tree.entries {
            counts.add(p, e, 1);
        }
        let index = InoIndex::build(&tree);
        BaseTree {
            id,
            tree,
            loaded: None,
            index,
            counts,
            racy_limit: None,
        }
    }

    /// The entries held: the whole tree when [`BaseTree::is_partial`] is
    /// false, else the loaded directories' (see the module doc).
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Whether only some directories are held.
    pub fn is_partial(&self) -> bool {
        self.loaded.is_some()
    }

    /// Entries held in memory.
    pub fn held_entries(&self) -> usize {
        self.tree.entries.len()
    }

    /// The inode index (it covers the whole tree, loaded or not): its
    /// inodes and about the heap bytes it takes.
    pub fn index_memory(&self) -> (u64, u64) {
        self.index.memory()
    }

    /// Keep the inode index in an unnamed file in `dir` once it is
    /// large, and let go of the pages of it read since the last call
    /// (see [`InoIndex::spill`]).
    pub fn spill_index(&mut self, dir: &std::sync::Arc<crate::util::dirfd::Dir>) {
        self.index.spill(dir);
    }

    /// The bytes of the inode index's file (0: it is in memory).
    pub fn index_file_bytes(&self) -> u64 {
        self.index.file_bytes()
    }

    /// Keep only the root's entry: the directories are read again from
    /// the store when needed (the caller keeps the [`DirMemo`] of the
    /// snapshot `self.id` for that).
    pub fn unload(&mut self) {
        let root = self.tree.entries.remove(b"".as_slice());
        self.tree.entries.clear();
        if let Some(r) = root {
            self.tree.entries.insert(Vec::new(), r);
        }
        self.loaded = Some(HashSet::new());
    }

    fn is_loaded(&self, dir: &[u8]) -> bool {
        self.loaded.as_ref().is_none_or(|l| l.contains(dir))
    }

    fn mark_loaded(&mut self, dir: &[u8]) {
        if let Some(l) = &mut self.loaded {
            l.insert(dir.to_vec());
        }
    }

    /// Hold the entries of directory `dir` (and of its ancestors). A path
    /// that is no directory of the base holds nothing: it counts as
    /// loaded.
    pub fn load(&mut self, ld: &Loader<'_>, dir: &[u8]) -> Result<()> {
        if self.is_loaded(dir) {
            return Ok(());
        }
        // The ancestors first, top down (each read once).
        let mut chain = vec![dir];
        let mut cur = dir;
        while !cur.is_empty() {
            cur = parent_of(cur);
            if self.is_loaded(cur) {
                break;
            }
            chain.push(cur);
        }
        for d in chain.into_iter().rev() {
            // (The root is a directory even in a tree without its entry.)
            if d.is_empty() || matches!(self.tree.entries.get(d), Some((_, Node::Dir))) {
                let r = ld.memo.get(d).ok_or_else(|| {
                    Error::Corrupt(format!(
                        "the capture's base (snapshot {}) has no directory object for {}",
                        self.id,
                        display_path(d)
                    ))
                })?;
                crate::snapshot::dirs::load_children(ld.store, r, d, &mut self.tree)?;
            }
            self.mark_loaded(d);
        }
        Ok(())
    }

    /// Hold the parent directory of `path` (so its entry, if any).
    pub fn ensure_parent(&mut self, ld: &Loader<'_>, path: &[u8]) -> Result<()> {
        if path.is_empty() {
            return Ok(());
        }
        self.load(ld, parent_of(path))
    }

    /// Read now the directories a cut will look at for these changed
    /// inodes (the directories of their paths, and their own entries
    /// when they are directories), while writers go on: the cut then
    /// reads nothing while it holds them, unless something changed in
    /// between. A read that fails is left for the cut to meet.
    pub fn preload(&mut self, ld: &Loader<'_>, inos: impl IntoIterator<Item = u64>) {
        if self.loaded.is_none() {
            return;
        }
        for ino in inos {
            for p in self.paths_of(ino) {
                if self.ensure_parent(ld, &p).is_ok()
                    && matches!(self.get(&p), Some((_, Node::Dir)))
                {
                    let _ = self.load(ld, &p);
                }
            }
        }
    }

    /// Hold everything at and below `path`.
    pub fn load_subtree(&mut self, ld: &Loader<'_>, path: &[u8]) -> Result<()> {
        if self.loaded.is_none() {
            return Ok(());
        }
        self.ensure_parent(ld, path)?;
        let mut stack = vec![path.to_vec()];
        while let Some(d) = stack.pop() {
            self.load(ld, &d)?;
            stack.extend(
                self.tree
                    .children(&d)
                    .filter(|(_, (_, n))| matches!(n, Node::Dir))
                    .map(|(name, _)| join(&d, name)),
            );
        }
        Ok(())
    }

    /// Hold the whole tree.
    pub fn load_all(&mut self, ld: &Loader<'_>) -> Result<()> {
        if self.loaded.is_none() {
            return Ok(());
        }
        self.load_subtree(ld, b"")?;
        self.loaded = None;
        Ok(())
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn set_block_size(&mut self, bs: u32) {
        self.tree.block_size = bs;
    }

    /// Every path of inode `ino`, in order.
    pub fn paths_of(&self, ino: u64) -> Vec<Vec<u8>> {
        self.index.paths(ino)
    }

    /// The first path of inode `ino`.
    pub fn first_path(&self, ino: u64) -> Option<Vec<u8>> {
        self.index.first(ino)
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
                let (new_ino, new_dir) = (slot.0.ino, matches!(slot.1, Node::Dir));
                if new_dir && !matches!(old.1, Node::Dir) {
                    // A directory new at this path: nothing below it is
                    // stored.
                    self.mark_loaded(path);
                }
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
        debug_assert!(
            path.is_empty() || self.is_loaded(parent_of(path)),
            "put into a directory not loaded"
        );
        let old = self.tree.entries.remove(path);
        if let Some(o) = &old {
            self.counts.add(path, o, -1);
            self.index_remove(path, o.0.ino);
        }
        if matches!(&v, Some((_, Node::Dir))) && !matches!(&old, Some((_, Node::Dir))) {
            // A directory new at this path: nothing below it is stored.
            self.mark_loaded(path);
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

    /// Remove everything below `path` (not `path` itself), which must
    /// be loaded ([`BaseTree::load_subtree`]).
    pub fn remove_below(&mut self, edits: &mut Edits, path: &[u8]) {
        debug_assert!(self.is_loaded(path), "remove below a directory not loaded");
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
        self.index.add(ino, path);
    }

    fn index_remove(&mut self, path: &[u8], ino: u64) {
        self.index.remove(ino, path);
    }

    /// Put back what `edits` recorded: the tree as it was before them.
    pub fn undo(&mut self, edits: Edits) {
        let mut scratch = Edits::unrecorded();
        for (p, old) in edits.old {
            self.put(&mut scratch, &p, old);
        }
    }
}

/// The latest snapshot read one directory at a time for the mount-time
/// check ([`SnapshotDirs`]). As it goes it records every directory's
/// reference (the [`DirMemo`] captures read a partly loaded base
/// through), the inode index and the counts of the whole tree, so that
/// the check leaves a base holding its root instead of the tree.
/// Directories the backing directory no longer has are read too
/// ([`SnapshotDirs::not_walked`]): the index covers every entry.
pub struct StoredBase<'s> {
    store: &'s dyn Objects,
    root: Root,
    memo: DirMemo,
    index: InoIndex,
    counts: Counts,
    /// Directories whose entries were counted (each once).
    counted: HashSet<Vec<u8>>,
    /// The latest change time recorded for any entry.
    max_ctime: i64,
}

impl<'s> StoredBase<'s> {
    pub fn new(store: &'s dyn Objects, root: Root) -> StoredBase<'s> {
        let mut memo = DirMemo::default();
        memo.insert(Vec::new(), root.dir.clone());
        let mut s = StoredBase {
            store,
            memo,
            index: InoIndex::builder(),
            counts: Counts::default(),
            counted: HashSet::new(),
            max_ctime: i64::MIN,
            root,
        };
        if let Some(m) = &s.root.meta {
            s.max_ctime = m.ctime_ns;
            let e = (m.clone(), Node::Dir);
            s.index.push(m.ino, b"");
            s.counts.add(b"", &e, 1);
        }
        s
    }

    /// The entries of directory `dir` (file block lists as far as they
    /// are inline: segments are not read), counted the first time.
    fn read(&mut self, dir: &[u8]) -> Result<DirEntries> {
        let Some(r) = self.memo.get(dir).cloned() else {
            return Ok(Vec::new());
        };
        let d = load_dir(self.store, &r, self.root.block_size)?;
        let count = self.counted.insert(dir.to_vec());
        let mut out = Vec::with_capacity(d.entries.len());
        for e in d.entries {
            let path = join(dir, &e.name);
            let node = match e.node {
                DNode::Dir(sub) => {
                    self.memo.insert(path.clone(), sub);
                    Node::Dir
                }
                DNode::File {
                    size,
                    blocks,
                    link,
                    lens,
                    ..
                } => Node::File {
                    size,
                    blocks: match lens {
                        None => Blocks::Full(blocks),
                        Some(lens) => Blocks::Sized { ids: blocks, lens },
                    },
                    link,
                },
                DNode::Symlink { target } => Node::Symlink { target },
                DNode::Special { rdev } => Node::Special { rdev },
            };
            let entry = (e.meta, node);
            if count {
                self.max_ctime = self.max_ctime.max(entry.0.ctime_ns);
                self.index.push(entry.0.ino, &path);
                self.counts.add(&path, &entry, 1);
            }
            out.push((e.name, entry));
        }
        Ok(out)
    }

    /// The base the check leaves (snapshot `id`, its root held) and the
    /// references of its directories.
    pub fn finish(self, id: u64) -> (BaseTree, DirMemo) {
        let mut tree = Tree {
            block_size: self.root.block_size,
            entries: BTreeMap::new(),
        };
        if let Some(m) = self.root.meta {
            tree.entries.insert(Vec::new(), (m, Node::Dir));
        }
        let base = BaseTree {
            id,
            tree,
            loaded: Some(HashSet::new()),
            index: self.index.finish(),
            counts: self.counts,
            // Every entry changed at or after this time (none) is marked
            // racily clean: a capture need not look at every entry for
            // racy ones unless the clock went back past a recorded
            // change (then it does, see capture::live::mark_racy).
            racy_limit: Some(self.max_ctime.saturating_add(1)),
        };
        (base, self.memo)
    }
}

impl SnapshotDirs for StoredBase<'_> {
    fn root(&mut self) -> Option<(Meta, Node)> {
        self.root.meta.clone().map(|m| (m, Node::Dir))
    }

    fn children(&mut self, dir: &[u8]) -> Result<DirEntries> {
        self.read(dir)
    }

    fn not_walked(&mut self, dir: &[u8]) -> Result<()> {
        let mut stack = vec![dir.to_vec()];
        while let Some(d) = stack.pop() {
            if self.counted.contains(&d) {
                continue;
            }
            for (name, (_, n)) in self.read(&d)? {
                if matches!(n, Node::Dir) {
                    stack.push(join(&d, &name));
                }
            }
        }
        Ok(())
    }
}

/// A base as the cut's [`BaseLookup`], reading directories on demand. A
/// read that fails answers "absent" and is kept: the caller must abandon
/// the cut when [`LazyLookup::take_error`] has one.
pub struct LazyLookup<'b, 'l> {
    base: std::cell::RefCell<&'b mut BaseTree>,
    loader: Loader<'l>,
    error: std::cell::RefCell<Option<Error>>,
}

impl<'b, 'l> LazyLookup<'b, 'l> {
    pub fn new(base: &'b mut BaseTree, loader: Loader<'l>) -> Self {
        LazyLookup {
            base: std::cell::RefCell::new(base),
            loader,
            error: std::cell::RefCell::new(None),
        }
    }

    /// The first failed read, if any.
    pub fn take_error(&self) -> Option<Error> {
        self.error.borrow_mut().take()
    }

    /// `f` on the entry at `path`, its parent loaded.
    fn at<R>(&self, path: &[u8], f: impl FnOnce(Option<&Entry>) -> R) -> R {
        let mut b = self.base.borrow_mut();
        if let Err(e) = b.ensure_parent(&self.loader, path) {
            self.error.borrow_mut().get_or_insert(e);
            return f(None);
        }
        f(b.get(path))
    }
}

impl BaseLookup for LazyLookup<'_, '_> {
    fn is_empty(&self) -> bool {
        let b = self.base.borrow();
        !b.is_partial() && b.tree.entries.is_empty()
    }

    fn first_path(&self, ino: u64) -> Option<Vec<u8>> {
        self.base.borrow().first_path(ino)
    }

    fn ino_at(&self, path: &[u8]) -> Option<u64> {
        self.at(path, |e| e.map(|(m, _)| m.ino))
    }

    fn is_dir(&self, path: &[u8]) -> bool {
        self.at(path, |e| matches!(e, Some((_, Node::Dir))))
    }

    fn child_names(&self, dir: &[u8]) -> Vec<Vec<u8>> {
        let mut b = self.base.borrow_mut();
        if let Err(e) = b.load(&self.loader, dir) {
            self.error.borrow_mut().get_or_insert(e);
            return Vec::new();
        }
        b.tree.children(dir).map(|(n, _)| n.to_vec()).collect()
    }

    fn file_of(&self, ino: u64) -> Option<(Meta, u64, bool)> {
        let p = self.first_path(ino)?;
        self.at(&p, |e| match e? {
            (meta, Node::File { size, link, .. }) => Some((meta.clone(), *size, link.is_some())),
            _ => None,
        })
    }

    fn ino_is_dir(&self, ino: u64) -> bool {
        match self.first_path(ino) {
            Some(p) => self.is_dir(&p),
            None => false,
        }
    }
}

fn parent_of(path: &[u8]) -> &[u8] {
    parent_and_name(path).0
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
    fn a_partial_base_reads_directories_as_it_needs_them() {
        use crate::snapshot::dirs::{tests::Mem, write_tree, write_tree_with, DirMemo};
        let store = Mem::default();
        // Files of one 4 KiB block (what a stored tree checks).
        let file = |size: u64, ino: u64| {
            let (m, _) = file(size, ino);
            (
                m,
                Node::File {
                    size,
                    blocks: Blocks::Full(vec![crate::store::ChunkId([ino as u8; 32])]),
                    link: None,
                },
            )
        };
        let mut t = Tree {
            block_size: 4096,
            ..Tree::default()
        };
        for (p, e) in [
            ("", dir(1)),
            ("a", dir(2)),
            ("a/x", file(10, 3)),
            ("a/y", file(20, 4)),
            ("b", dir(5)),
            ("b/s", dir(6)),
            ("b/s/z", file(5, 7)),
            ("c", file(1, 8)),
        ] {
            t.entries.insert(p.as_bytes().to_vec(), e);
        }
        let mut memo = DirMemo::default();
        write_tree_with(&store, &t, &mut memo, None).unwrap();
        let mut whole = BaseTree::new(7, t.clone());
        let mut part = BaseTree::new(7, t.clone());
        part.unload();
        assert_eq!(part.held_entries(), 1);
        let ld = Loader {
            store: &store,
            memo: &memo,
        };
        // Reaching a/x reads the root and a, not b.
        part.ensure_parent(&ld, b"a/x").unwrap();
        assert_eq!(part.get(b"a/x"), t.get(b"a/x"));
        assert_eq!(part.get(b"c"), t.get(b"c"));
        assert!(part.get(b"b/s/z").is_none());
        // The same changes on both: a file changed, b removed whole, a
        // new directory with a file, c changed, then made a directory.
        let mut e1 = Edits::default();
        let mut e2 = Edits::default();
        for (b, e) in [(&mut whole, &mut e1), (&mut part, &mut e2)] {
            b.put(e, b"a/x", Some(file(11, 3)));
            b.load_subtree(&ld, b"b").unwrap();
            b.remove_below(e, b"b");
            b.put(e, b"b", None);
            b.put(e, b"d", Some(dir(20)));
            b.ensure_parent(&ld, b"d/q").unwrap();
            b.put(e, b"d/q", Some(file(1, 21)));
            b.put(e, b"c", Some(file(2, 8)));
            // A file replaced in place by a directory: nothing below it
            // is read from the store.
            b.put(e, b"c", Some(dir(30)));
            b.put(e, b"c/n", Some(file(1, 31)));
        }
        assert_eq!(e1.old, e2.old);
        assert_eq!(part.counts(), whole.counts());
        assert_eq!(part.paths_of(21), whole.paths_of(21));
        // Written with the memo from the partial tree, the same root.
        let dirty = crate::snapshot::dirs::dirty_dirs(e2.old.keys().map(|p| p.as_slice()));
        for d in &dirty {
            part.load(&ld, d).unwrap();
        }
        let mut memo2 = memo.clone();
        let r = write_tree_with(&store, part.tree(), &mut memo2, Some(&dirty)).unwrap();
        assert_eq!(r, write_tree(&store, whole.tree()).unwrap());
        // Undo on the partial tree gives back what it held.
        part.undo(e2);
        for (p, e) in &part.tree().entries {
            assert_eq!(t.get(p), Some(e));
        }
        // Everything, read on demand, is the whole tree.
        part.load_all(&ld).unwrap();
        assert!(!part.is_partial());
        assert_eq!(part.tree(), &t);
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
            assert_eq!(b.index_memory().0, again.index_memory().0);
            for (ino, v) in ino_index(b.tree()) {
                assert_eq!(b.paths_of(ino), v);
            }
        };
        fresh(&b);
        let mut edits = Edits::default();
        b.remove_below(&mut edits, b"a");
        b.put(&mut edits, b"a", None);
        b.put(&mut edits, b"c", Some(file(7, 3)));
        b.put(&mut edits, b"b", Some(file(6, 9)));
        fresh(&b);
        assert_eq!(b.paths_of(3), vec![b"c".to_vec()]);
        assert_eq!(b.counts().files, 2);
        assert_eq!(edits.old.len(), 5);
        assert_eq!(edits.old[&b"c".to_vec()], None);
        b.undo(edits);
        assert_eq!(b.tree(), &orig);
        fresh(&b);
        assert_eq!(b.paths_of(3), vec![b"a/x".to_vec(), b"b".to_vec()]);
    }
}
