//! Resolved trees: what a snapshot contains once its chain is applied.
//!
//! In a [`Tree`] every file has a complete block list (`Blocks::Full`, or
//! `Blocks::Sized` for content chunks).

use std::collections::BTreeMap;
use std::ops::Bound;

use super::manifest::{check_path, Blocks, Entry, Manifest, Meta, Node};
use crate::error::{Error, Result};
use crate::store::ChunkId;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub block_size: u32,
    pub entries: BTreeMap<Vec<u8>, (Meta, Node)>,
}

/// The children's key prefix of `path` (`""` for the root).
fn child_prefix(path: &[u8]) -> Vec<u8> {
    if path.is_empty() {
        Vec::new()
    } else {
        let mut p = path.to_vec();
        p.push(b'/');
        p
    }
}

impl Tree {
    /// About the heap bytes this tree holds: keys, entries, extended
    /// attributes, block lists and symlink targets, plus the map's own
    /// per-entry overhead (a B-tree node holds up to 11 entries).
    pub fn heap_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|(k, e)| entry_heap_bytes(k, e))
            .sum()
    }

    pub fn get(&self, path: &[u8]) -> Option<&(Meta, Node)> {
        self.entries.get(path)
    }

    /// Chunk ids of a resolved file, in order (fixed blocks or content
    /// chunks; see [`crate::snapshot::spans::Spans`] for where each lies).
    pub fn blocks_of(node: &Node) -> &[ChunkId] {
        match node {
            Node::File {
                blocks: Blocks::Full(b) | Blocks::Sized { ids: b, .. },
                ..
            } => b,
            _ => &[],
        }
    }

    /// Every entry below `path` (not `path` itself), in path order.
    pub fn descendants<'a>(
        &'a self,
        path: &[u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a (Meta, Node))> + 'a {
        let prefix = child_prefix(path);
        let root = path.is_empty();
        self.entries
            .range::<Vec<u8>, _>((Bound::Included(prefix.clone()), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter(move |(k, _)| !(root && k.is_empty()))
    }

    /// The direct children of `path`: (name, entry).
    pub fn children<'a>(
        &'a self,
        path: &[u8],
    ) -> impl Iterator<Item = (&'a [u8], &'a (Meta, Node))> + 'a {
        let skip = child_prefix(path).len();
        self.descendants(path).filter_map(move |(k, v)| {
            let rest = &k[skip..];
            (!rest.contains(&b'/')).then_some((rest, v))
        })
    }

    fn remove_subtree(&mut self, path: &[u8]) {
        let doomed: Vec<Vec<u8>> = self.descendants(path).map(|(k, _)| k.clone()).collect();
        for k in doomed {
            self.entries.remove(&k);
        }
    }

    /// Apply a manifest: removals, then new and changed entries.
    pub fn apply(&mut self, m: &Manifest) -> Result<()> {
        if self.block_size != 0 && m.block_size != self.block_size {
            return Err(Error::Corrupt(format!(
                "manifest block size {} differs from its base's {}",
                m.block_size, self.block_size
            )));
        }
        self.block_size = m.block_size;
        let bs = m.block_size as u64;
        if bs == 0 {
            return Err(Error::Corrupt("manifest has block size 0".into()));
        }
        for p in &m.removed {
            check_path(p)?;
            if p.is_empty() {
                return Err(Error::Corrupt("manifest removes the root".into()));
            }
            self.remove_subtree(p);
            self.entries.remove(p);
        }
        for Entry { path, meta, node } in &m.entries {
            check_path(path)?;
            if !matches!(node, Node::Dir) {
                self.remove_subtree(path);
            }
            let node = match node {
                Node::File {
                    size,
                    blocks: Blocks::Patch(changes),
                    link,
                } => {
                    let mut list = match self.entries.get(path) {
                        Some((
                            _,
                            Node::File {
                                blocks: Blocks::Full(b),
                                ..
                            },
                        )) => b.clone(),
                        Some((
                            _,
                            Node::File {
                                blocks: Blocks::Sized { .. },
                                ..
                            },
                        )) => {
                            return Err(Error::Corrupt(
                                "a manifest patches a file stored in content chunks".into(),
                            ))
                        }
                        _ => Vec::new(),
                    };
                    // Every block past the base's list must be given, so a
                    // size the patch cannot back is corrupt: checked before
                    // anything is allocated from it.
                    let n64 = size.div_ceil(bs);
                    if n64 > list.len() as u64 + changes.len() as u64 {
                        return Err(Error::Corrupt(format!(
                            "{}: {size} bytes, but only {} blocks known",
                            crate::snapshot::manifest::display_path(path),
                            list.len() + changes.len()
                        )));
                    }
                    let n = n64 as usize;
                    let old = list.len().min(n);
                    list.truncate(n);
                    let mut filled = vec![false; n.saturating_sub(old)];
                    list.resize(n, ChunkId([0; 32]));
                    for (i, id) in changes {
                        let i = *i as usize;
                        if i >= n {
                            return Err(Error::Corrupt(format!(
                                "manifest patches block {i} of a {n}-block file"
                            )));
                        }
                        list[i] = *id;
                        if i >= old {
                            filled[i - old] = true;
                        }
                    }
                    if filled.iter().any(|f| !f) {
                        return Err(Error::Corrupt(format!(
                            "manifest extends {:?} without giving every new block",
                            String::from_utf8_lossy(path)
                        )));
                    }
                    Node::File {
                        size: *size,
                        blocks: Blocks::Full(list),
                        link: *link,
                    }
                }
                Node::File {
                    size,
                    blocks: Blocks::Full(b),
                    ..
                } if b.len() as u64 != size.div_ceil(bs) => {
                    return Err(Error::Corrupt(format!(
                        "{:?}: {} blocks for {size} bytes",
                        String::from_utf8_lossy(path),
                        b.len()
                    )))
                }
                Node::File {
                    size,
                    blocks: Blocks::Sized { ids, lens },
                    ..
                } => {
                    if ids.len() != lens.len() {
                        return Err(Error::Corrupt(format!(
                            "{:?}: {} chunks, {} lengths",
                            String::from_utf8_lossy(path),
                            ids.len(),
                            lens.len()
                        )));
                    }
                    crate::snapshot::spans::check_lens(lens, *size, m.block_size.max(1))?;
                    node.clone()
                }
                other => other.clone(),
            };
            self.entries.insert(path.clone(), (meta.clone(), node));
        }
        Ok(())
    }

    /// The paths of this tree for which `present` is false, top most only
    /// (a removed directory stands for everything below it), in order.
    pub fn topmost_absent(&self, present: impl Fn(&Vec<u8>) -> bool) -> Vec<Vec<u8>> {
        let mut removed: Vec<Vec<u8>> = Vec::new();
        for p in self.entries.keys() {
            if present(p) {
                continue;
            }
            if removed
                .last()
                .is_some_and(|r| p.len() > r.len() && p.starts_with(r) && p[r.len()] == b'/')
            {
                continue;
            }
            removed.push(p.clone());
        }
        removed
    }

    /// Number of regular files and their total size.
    pub fn file_totals(&self) -> (u64, u64) {
        let mut n = 0;
        let mut bytes = 0;
        for (_, node) in self.entries.values() {
            if let Node::File { size, .. } = node {
                n += 1;
                bytes += size;
            }
        }
        (n, bytes)
    }
}

/// About the heap bytes one entry of a tree holds (see
/// [`Tree::heap_bytes`]).
pub fn entry_heap_bytes(path: &[u8], (m, n): &(Meta, Node)) -> u64 {
    let per = std::mem::size_of::<(Vec<u8>, (Meta, Node))>() as u64 * 12 / 11;
    let x: usize = m.xattrs.iter().map(|(a, b)| a.len() + b.len() + 48).sum();
    let body = match n {
        Node::File {
            blocks: Blocks::Full(b),
            ..
        } => b.len() * 32,
        Node::File {
            blocks: Blocks::Sized { ids, .. },
            ..
        } => ids.len() * 36,
        Node::File {
            blocks: Blocks::Patch(p),
            ..
        } => p.len() * 40,
        Node::Symlink { target } => target.len(),
        _ => 0,
    };
    per + (path.len() + m.xattrs.len() * 48 + x + body) as u64
}

/// Inode number -> every path of it in `tree` (hard links share one):
/// what tests check `capture::ino_index` against.
#[cfg(test)]
pub fn ino_index(tree: &Tree) -> std::collections::HashMap<u64, Vec<Vec<u8>>> {
    let mut m: std::collections::HashMap<u64, Vec<Vec<u8>>> = std::collections::HashMap::new();
    for (p, (meta, _)) in &tree.entries {
        m.entry(meta.ino).or_default().push(p.clone());
    }
    m
}

/// Tree-building helpers for tests here and in the manifest builder.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::snapshot::manifest::MANIFEST_FORMAT;

    pub(crate) fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: Default::default(),
            ctime_ns: 0,
            ino: 0,
            xattrs: vec![],
        }
    }

    pub(crate) fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    pub(crate) fn file(path: &str, size: u64, blocks: Blocks) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            meta: meta(0o100644),
            node: Node::File {
                size,
                blocks,
                link: None,
            },
        }
    }

    pub(crate) fn dir(path: &str) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            meta: meta(0o40755),
            node: Node::Dir,
        }
    }

    #[test]
    fn apply_patch_remove_and_children() {
        let mut t = Tree::default();
        let full = Manifest {
            format: MANIFEST_FORMAT,
            block_size: 4,
            removed: vec![],
            entries: vec![
                dir(""),
                dir("d"),
                file("d/a", 10, Blocks::Full(vec![id(1), id(2), id(3)])),
                dir("d/sub"),
                file("d/sub/x", 0, Blocks::Full(vec![])),
                file("e", 4, Blocks::Full(vec![id(9)])),
            ],
        };
        t.apply(&full).unwrap();
        let names: Vec<&[u8]> = t.children(b"").map(|(n, _)| n).collect();
        assert_eq!(names, vec![&b"d"[..], b"e"]);
        let names: Vec<&[u8]> = t.children(b"d").map(|(n, _)| n).collect();
        assert_eq!(names, vec![&b"a"[..], b"sub"]);

        let inc = Manifest {
            format: MANIFEST_FORMAT,
            block_size: 4,
            removed: vec![b"d/sub".to_vec()],
            entries: vec![
                // grow to 5 blocks: block 1 changes, 3 and 4 are new
                file(
                    "d/a",
                    20,
                    Blocks::Patch(vec![(1, id(7)), (3, id(8)), (4, id(8))]),
                ),
                // shrink
                file("e", 0, Blocks::Patch(vec![])),
            ],
        };
        t.apply(&inc).unwrap();
        assert!(t.get(b"d/sub").is_none());
        assert!(t.get(b"d/sub/x").is_none());
        assert_eq!(
            Tree::blocks_of(&t.get(b"d/a").unwrap().1),
            &[id(1), id(7), id(3), id(8), id(8)]
        );
        assert!(Tree::blocks_of(&t.get(b"e").unwrap().1).is_empty());

        // A size no patch could back is refused before allocating.
        let absurd = Manifest {
            format: MANIFEST_FORMAT,
            block_size: 4,
            removed: vec![],
            entries: vec![file("e", 1 << 62, Blocks::Patch(vec![(0, id(1))]))],
        };
        assert!(t.clone().apply(&absurd).is_err());

        // A patch that grows a file without naming the new blocks is corrupt.
        let bad = Manifest {
            format: MANIFEST_FORMAT,
            block_size: 4,
            removed: vec![],
            entries: vec![file("e", 8, Blocks::Patch(vec![(0, id(1))]))],
        };
        assert!(t.clone().apply(&bad).is_err());
    }

    #[test]
    fn file_replacing_dir_drops_children() {
        let mut t = Tree::default();
        t.apply(&Manifest {
            format: MANIFEST_FORMAT,
            block_size: 4,
            removed: vec![],
            entries: vec![dir(""), dir("x"), file("x/y", 1, Blocks::Full(vec![id(1)]))],
        })
        .unwrap();
        t.apply(&Manifest {
            format: MANIFEST_FORMAT,
            block_size: 4,
            removed: vec![],
            entries: vec![file("x", 1, Blocks::Full(vec![id(2)]))],
        })
        .unwrap();
        assert!(t.get(b"x/y").is_none());
        assert_eq!(t.entries.len(), 2);
    }
}
