//! The capture base's inode index: inode number -> its paths in the
//! tree (several for hard links), over the whole tree.
//!
//! Kept as one sorted array of `(inode, path)` with the paths in one
//! byte arena (24 bytes per entry plus the path: about 44 bytes per
//! file for the paths of the benchmark's trees, against ~136 for a map of
//! path lists, and two allocations in all instead of two per file, so
//! the tree it sits beside can be dropped and its memory given back),
//! plus a small map of the inodes changed since the array was built.
//! The array is rebuilt when that map grows past an eighth of it.

use std::collections::HashMap;

use crate::snapshot::Tree;

#[derive(Debug, Default)]
pub struct InoIndex {
    /// Sorted by (inode, path): (inode, offset and length in `arena`).
    sorted: Vec<(u64, u64, u32)>,
    arena: Vec<u8>,
    /// Inodes changed since `sorted` was built: their whole path list
    /// (empty: the inode has no path any more).
    changed: HashMap<u64, Vec<Vec<u8>>>,
    /// Paths in all.
    len: u64,
}

fn slice<'a>(arena: &'a [u8], e: &(u64, u64, u32)) -> &'a [u8] {
    &arena[e.1 as usize..e.1 as usize + e.2 as usize]
}

/// Below this many changed inodes the array is not rebuilt.
const MIN_REBUILD: usize = 4096;

impl InoIndex {
    /// The index of every entry of `tree`.
    pub fn build(tree: &Tree) -> InoIndex {
        Self::from_pairs(
            tree.entries.len(),
            tree.entries.iter().map(|(p, (m, _))| (m.ino, p.as_slice())),
        )
    }

    fn from_pairs<'p>(n: usize, pairs: impl Iterator<Item = (u64, &'p [u8])>) -> InoIndex {
        let mut ix = InoIndex {
            sorted: Vec::with_capacity(n),
            ..Default::default()
        };
        for (ino, p) in pairs {
            ix.push(ino, p);
        }
        ix.finish()
    }

    /// An index built entry by entry ([`InoIndex::push`], then
    /// [`InoIndex::finish`]): for a tree read one directory at a time.
    pub fn builder() -> InoIndex {
        InoIndex::default()
    }

    /// Add a path while building (before [`InoIndex::finish`]).
    pub fn push(&mut self, ino: u64, p: &[u8]) {
        // (A path is far shorter than 4 GiB: a tree is at most
        // MAX_DEPTH directories deep.)
        let len = u32::try_from(p.len()).unwrap_or(u32::MAX);
        self.sorted.push((ino, self.arena.len() as u64, len));
        self.arena.extend_from_slice(&p[..len as usize]);
    }

    /// Sort what was pushed.
    pub fn finish(self) -> InoIndex {
        let mut ix = self;
        ix.len = ix.sorted.len() as u64;
        let arena = std::mem::take(&mut ix.arena);
        ix.sorted
            .sort_unstable_by(|a, b| (a.0, slice(&arena, a)).cmp(&(b.0, slice(&arena, b))));
        ix.arena = arena;
        ix.sorted.shrink_to_fit();
        ix.arena.shrink_to_fit();
        ix
    }

    fn stored(&self, ino: u64) -> impl Iterator<Item = &[u8]> + '_ {
        let start = self.sorted.partition_point(|e| e.0 < ino);
        self.sorted[start..]
            .iter()
            .take_while(move |e| e.0 == ino)
            .map(|e| slice(&self.arena, e))
    }

    /// Every path of inode `ino`, in order.
    pub fn paths(&self, ino: u64) -> Vec<Vec<u8>> {
        match self.changed.get(&ino) {
            Some(v) => v.clone(),
            None => self.stored(ino).map(<[u8]>::to_vec).collect(),
        }
    }

    /// The first path of inode `ino`.
    pub fn first(&self, ino: u64) -> Option<Vec<u8>> {
        match self.changed.get(&ino) {
            Some(v) => v.first().cloned(),
            None => self.stored(ino).next().map(<[u8]>::to_vec),
        }
    }

    fn list_mut(&mut self, ino: u64) -> &mut Vec<Vec<u8>> {
        if !self.changed.contains_key(&ino) {
            let now: Vec<Vec<u8>> = self.stored(ino).map(<[u8]>::to_vec).collect();
            self.changed.insert(ino, now);
        }
        self.changed.entry(ino).or_default()
    }

    pub fn add(&mut self, ino: u64, path: &[u8]) {
        let v = self.list_mut(ino);
        if let Err(i) = v.binary_search_by(|p| p.as_slice().cmp(path)) {
            v.insert(i, path.to_vec());
            self.len += 1;
        }
        self.maybe_rebuild();
    }

    pub fn remove(&mut self, ino: u64, path: &[u8]) {
        let v = self.list_mut(ino);
        if let Ok(i) = v.binary_search_by(|p| p.as_slice().cmp(path)) {
            v.remove(i);
            self.len = self.len.saturating_sub(1);
        }
        self.maybe_rebuild();
    }

    fn maybe_rebuild(&mut self) {
        if self.changed.len() <= MIN_REBUILD.max(self.sorted.len() / 8) {
            return;
        }
        let changed = std::mem::take(&mut self.changed);
        let old_sorted = std::mem::take(&mut self.sorted);
        let old_arena = std::mem::take(&mut self.arena);
        let kept = old_sorted
            .iter()
            .filter(|e| !changed.contains_key(&e.0))
            .map(|e| (e.0, slice(&old_arena, e)));
        let new = changed
            .iter()
            .flat_map(|(ino, v)| v.iter().map(move |p| (*ino, p.as_slice())));
        *self = Self::from_pairs(old_sorted.len(), kept.chain(new));
    }

    /// Paths indexed, and about the heap bytes the index takes.
    pub fn memory(&self) -> (u64, u64) {
        let changed: u64 = self
            .changed
            .values()
            .map(|v| 64 + v.iter().map(|p| p.len() as u64 + 40).sum::<u64>())
            .sum();
        (
            self.len,
            (self.sorted.capacity() * 24 + self.arena.capacity()) as u64 + changed,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tree::ino_index;

    #[test]
    fn follows_changes_and_rebuilds_the_same() {
        let mut t = Tree::default();
        for i in 0..10_000u64 {
            let m = crate::snapshot::manifest::Meta {
                ino: i % 9_000,
                ..crate::snapshot::tree::tests::meta(libc::S_IFREG | 0o644)
            };
            t.entries.insert(
                format!("d{}/f{i}", i % 7).into_bytes(),
                (m, crate::snapshot::Node::Dir),
            );
        }
        let mut ix = InoIndex::build(&t);
        let check = |ix: &InoIndex, t: &Tree| {
            let want = ino_index(t);
            for (ino, v) in &want {
                assert_eq!(&ix.paths(*ino), v, "inode {ino}");
                assert_eq!(ix.first(*ino).as_ref(), v.first());
            }
            assert_eq!(ix.memory().0, t.entries.len() as u64);
        };
        check(&ix, &t);
        // Enough changes to rebuild several times.
        for i in 0..20_000u64 {
            let p = format!("n/{i}").into_bytes();
            let ino = 50_000 + i % 3;
            if i % 4 == 3 {
                let j = i % 10_000;
                let old = format!("d{}/f{j}", j % 7).into_bytes();
                if let Some((m, _)) = t.entries.remove(&old) {
                    ix.remove(m.ino, &old);
                }
            }
            let mut m = crate::snapshot::tree::tests::meta(libc::S_IFREG | 0o644);
            m.ino = ino;
            t.entries.insert(p.clone(), (m, crate::snapshot::Node::Dir));
            ix.add(ino, &p);
        }
        check(&ix, &t);
        assert!(ix.paths(123_456).is_empty());
        // Removing every path of an inode leaves none.
        for p in ix.paths(50_000) {
            ix.remove(50_000, &p);
        }
        assert!(ix.paths(50_000).is_empty() && ix.first(50_000).is_none());
    }
}
