//! What changed between two snapshots, from their trees alone (no data is
//! read): entries added, removed, modified (with the blocks and bytes that
//! differ), changed in metadata only, changed in type, and renamed.
//!
//! A rename is what the inode shows: an entry gone from one path and new
//! at another with the same inode number and type, and evidence that it is
//! the same object, so that a new one that happens to reuse a freed inode
//! number is not taken for a rename: for a file the same mtime or a block
//! in common, for a directory the same mtime or an entry in common (same name, same
//! inode), for a
//! symlink the same target (inside a renamed directory, the same inode
//! under the same name is enough).
//! When a directory is renamed, its unchanged descendants are not listed
//! again.
//!
//! Directory mtimes (and every ctime) are not compared: a directory's
//! mtime changes whenever its entries do, and those changes are listed
//! themselves.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::manifest::{display_path, Meta, Node};
use super::tree::Tree;

/// One change between snapshot A and snapshot B.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// `size`: of a directory, everything below it.
    Added {
        path: String,
        kind: &'static str,
        size: u64,
    },
    Removed {
        path: String,
        kind: &'static str,
        size: u64,
    },
    /// Content changed (files: blocks; symlinks: target; devices: number).
    Modified {
        path: String,
        kind: &'static str,
        old_size: u64,
        new_size: u64,
        changed_blocks: u64,
        changed_bytes: u64,
        /// Metadata that changed too.
        metadata: Vec<&'static str>,
    },
    Metadata {
        path: String,
        kind: &'static str,
        fields: Vec<&'static str>,
    },
    TypeChanged {
        path: String,
        from: &'static str,
        to: &'static str,
    },
    Renamed {
        from: String,
        to: String,
        kind: &'static str,
        changed_blocks: u64,
        changed_bytes: u64,
        metadata: Vec<&'static str>,
    },
}

/// Counts over a diff.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
    pub metadata_only: u64,
    pub type_changed: u64,
    pub renamed: u64,
    pub changed_blocks: u64,
    pub changed_bytes: u64,
    pub added_bytes: u64,
    pub removed_bytes: u64,
}

impl Summary {
    pub fn of(changes: &[Change]) -> Summary {
        let mut s = Summary::default();
        for c in changes {
            match c {
                Change::Added { size, .. } => {
                    s.added += 1;
                    s.added_bytes += size;
                }
                Change::Removed { size, .. } => {
                    s.removed += 1;
                    s.removed_bytes += size;
                }
                Change::Modified {
                    changed_blocks,
                    changed_bytes,
                    ..
                } => {
                    s.modified += 1;
                    s.changed_blocks += changed_blocks;
                    s.changed_bytes += changed_bytes;
                }
                Change::Metadata { .. } => s.metadata_only += 1,
                Change::TypeChanged { .. } => s.type_changed += 1,
                Change::Renamed {
                    changed_blocks,
                    changed_bytes,
                    ..
                } => {
                    s.renamed += 1;
                    s.changed_blocks += changed_blocks;
                    s.changed_bytes += changed_bytes;
                }
            }
        }
        s
    }
}

pub fn kind_name(node: &Node) -> &'static str {
    match node {
        Node::Dir => "dir",
        Node::File { .. } => "file",
        Node::Symlink { .. } => "symlink",
        Node::Special { .. } => "special",
    }
}

/// The bytes of an entry: a file's size, a symlink's target, everything
/// below a directory.
fn total_size(t: &Tree, p: &[u8], node: &Node) -> u64 {
    match node {
        Node::Dir => t.descendants(p).map(|(_, (_, n))| size_of(n)).sum(),
        n => size_of(n),
    }
}

fn size_of(node: &Node) -> u64 {
    match node {
        Node::File { size, .. } => *size,
        Node::Symlink { target } => target.len() as u64,
        _ => 0,
    }
}

/// The metadata fields that differ (directory mtimes and ctimes left out).
fn meta_changes(a: &Meta, b: &Meta, dir: bool) -> Vec<&'static str> {
    let mut f = Vec::new();
    if a.mode != b.mode {
        f.push("mode");
    }
    if a.uid != b.uid {
        f.push("uid");
    }
    if a.gid != b.gid {
        f.push("gid");
    }
    if !dir && a.mtime != b.mtime {
        f.push("mtime");
    }
    if a.xattrs != b.xattrs {
        f.push("xattrs");
    }
    f
}

/// Blocks of B's file that differ from A's at the same index (blocks past
/// A's end count as changed), and their bytes in B.
/// (For content chunks: chunks of B's file that A's file does not hold
/// anywhere.)
fn changed_blocks(a: &Node, b: &Node, block_size: u64) -> (u64, u64) {
    let (old, new) = (Tree::blocks_of(a), Tree::blocks_of(b));
    let Some(spans) = crate::snapshot::spans::Spans::of(b, block_size as u32) else {
        return (0, 0);
    };
    let both_grid = spans.is_grid()
        && crate::snapshot::spans::Spans::of(a, block_size as u32).is_none_or(|s| s.is_grid());
    let held: std::collections::HashSet<&crate::store::ChunkId> = if both_grid {
        Default::default()
    } else {
        old.iter().collect()
    };
    let mut n = 0;
    let mut bytes = 0;
    for (i, id) in new.iter().enumerate() {
        let changed = if both_grid {
            old.get(i) != Some(id)
        } else {
            !held.contains(id)
        };
        if changed {
            n += 1;
            bytes += spans.span(i).1;
        }
    }
    (n, bytes)
}

/// A file whose content differs between `old` and `new`: its new size,
/// and the bytes of its new chunks that the old version held anywhere
/// (shared with that version, not stored again). `None` when either is
/// not a file or the content is the same.
pub fn version_sharing(old: &Node, new: &Node, block_size: u32) -> Option<(u64, u64)> {
    if !matches!(old, Node::File { .. }) || content_equal(old, new) {
        return None;
    }
    let spans = crate::snapshot::spans::Spans::of(new, block_size)?;
    let held: std::collections::HashSet<&crate::store::ChunkId> =
        Tree::blocks_of(old).iter().collect();
    let shared = Tree::blocks_of(new)
        .iter()
        .enumerate()
        .filter(|(_, id)| held.contains(id))
        .map(|(i, _)| spans.span(i).1)
        .sum();
    Some((spans.size(), shared))
}

fn content_equal(a: &Node, b: &Node) -> bool {
    match (a, b) {
        (Node::File { size: sa, .. }, Node::File { size: sb, .. }) => {
            sa == sb && Tree::blocks_of(a) == Tree::blocks_of(b)
        }
        (x, y) => x == y,
    }
}

fn under(path: &[u8], prefix: &[u8]) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.len() > prefix.len() && path.starts_with(prefix) && path[prefix.len()] == b'/')
}

fn parent(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|c| *c == b'/') {
        Some(i) => &p[..i],
        None => b"",
    }
}

fn name(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|c| *c == b'/') {
        Some(i) => &p[i + 1..],
        None => p,
    }
}

/// Could `ea` (gone from `p` in `a`) and `eb` (new at `q` in `b`) be one
/// object renamed? See the module comment.
fn same_object(
    a: &Tree,
    p: &[u8],
    ea: &(Meta, Node),
    b: &Tree,
    q: &[u8],
    eb: &(Meta, Node),
) -> bool {
    if ea.0.ino != eb.0.ino || kind_name(&ea.1) != kind_name(&eb.1) {
        return false;
    }
    match (&ea.1, &eb.1) {
        (Node::File { .. }, Node::File { .. }) => {
            let (x, y) = (Tree::blocks_of(&ea.1), Tree::blocks_of(&eb.1));
            ea.0.mtime == eb.0.mtime
                || (x.is_empty() && y.is_empty())
                || x.iter().any(|id| y.contains(id))
        }
        (Node::Dir, Node::Dir) => {
            // Renaming a directory keeps its mtime and its entries; a new
            // directory that reuses the inode number has neither.
            if ea.0.mtime == eb.0.mtime {
                return true;
            }
            let entries: HashSet<(&[u8], u64)> =
                a.children(p).map(|(n, (m, _))| (n, m.ino)).collect();
            b.children(q)
                .any(|(n, (m, _))| entries.contains(&(n, m.ino)))
        }
        (x, y) => x == y,
    }
}

/// The changes from `a` to `b` below `prefix` (`b""`: everything), in path
/// order (a rename sorts by its new path).
pub fn diff(a: &Tree, b: &Tree, prefix: &[u8]) -> Vec<Change> {
    let bs = b.block_size.max(1) as u64;
    let mut gone: Vec<&Vec<u8>> = Vec::new();
    let mut new: Vec<&Vec<u8>> = Vec::new();
    let mut out: BTreeMap<Vec<u8>, Change> = BTreeMap::new();
    for (p, (ma, na)) in a.entries.range(prefix.to_vec()..) {
        // Paths below `prefix` are among those that start with its bytes
        // (contiguous in the ordered map), but so is `prefix-x`.
        if !p.starts_with(prefix) {
            break;
        }
        if !under(p, prefix) {
            continue;
        }
        match b.entries.get(p) {
            None => gone.push(p),
            Some((mb, nb)) => {
                if let Some(c) = compare(p, ma, na, mb, nb, bs) {
                    out.insert(p.clone(), c);
                }
            }
        }
    }
    for (p, _) in b.entries.range(prefix.to_vec()..) {
        // Paths below `prefix` are among those that start with its bytes
        // (contiguous in the ordered map), but so is `prefix-x`.
        if !p.starts_with(prefix) {
            break;
        }
        if !under(p, prefix) {
            continue;
        }
        if !a.entries.contains_key(p) {
            new.push(p);
        }
    }
    // Renames: pair gone and new entries by inode.
    let mut new_by_ino: HashMap<u64, Vec<&Vec<u8>>> = HashMap::new();
    for p in &new {
        if let Some((m, _)) = b.entries.get(*p) {
            new_by_ino.entry(m.ino).or_default().push(p);
        }
    }
    let mut renamed_to: HashMap<&Vec<u8>, &Vec<u8>> = HashMap::new();
    let mut renamed_from: HashMap<&Vec<u8>, &Vec<u8>> = HashMap::new();
    for p in &gone {
        let Some(ea) = a.entries.get(*p) else {
            continue;
        };
        let Some(cands) = new_by_ino.get_mut(&ea.0.ino) else {
            continue;
        };
        // The same inode under the same name in the directory its parent
        // was renamed to is the same object, whatever happened to it.
        let parent_moved_to = renamed_to.get(&parent(p).to_vec()).map(|v| v.as_slice());
        let pick = cands.iter().position(|q| {
            b.entries.get(*q).is_some_and(|eb| {
                same_object(a, p, ea, b, q, eb)
                    || (eb.0.ino == ea.0.ino
                        && kind_name(&eb.1) == kind_name(&ea.1)
                        && name(q) == name(p)
                        && parent_moved_to == Some(parent(q)))
            })
        });
        if let Some(i) = pick {
            let q = cands.remove(i);
            renamed_to.insert(p, q);
            renamed_from.insert(q, p);
        }
    }
    // A removed (added) directory stands for everything below it.
    let gone_dirs: HashSet<&[u8]> = gone
        .iter()
        .filter(|p| !renamed_to.contains_key(*p))
        .map(|p| p.as_slice())
        .collect();
    let new_dirs: HashSet<&[u8]> = new
        .iter()
        .filter(|q| !renamed_from.contains_key(*q))
        .map(|q| q.as_slice())
        .collect();
    for p in &gone {
        if renamed_to.contains_key(*p) || gone_dirs.contains(parent(p)) {
            continue;
        }
        let (_, n) = &a.entries[*p];
        out.insert(
            (*p).clone(),
            Change::Removed {
                path: display_path(p),
                kind: kind_name(n),
                size: total_size(a, p, n),
            },
        );
    }
    for q in &new {
        let q = *q;
        let (mb, nb) = &b.entries[q];
        if let Some(p) = renamed_from.get(q) {
            let (ma, na) = &a.entries[*p];
            let (blocks, bytes) = match nb {
                Node::File { .. } => changed_blocks(na, nb, bs),
                _ => (0, 0),
            };
            let metadata = meta_changes(ma, mb, matches!(nb, Node::Dir));
            // Moved along with its renamed directory, and unchanged.
            let moved_with_parent = renamed_to
                .get(&parent(p).to_vec())
                .is_some_and(|np| np.as_slice() == parent(q))
                && name(p) == name(q);
            if moved_with_parent && content_equal(na, nb) && metadata.is_empty() {
                continue;
            }
            out.insert(
                q.clone(),
                Change::Renamed {
                    from: display_path(p),
                    to: display_path(q),
                    kind: kind_name(nb),
                    changed_blocks: blocks,
                    changed_bytes: bytes,
                    metadata,
                },
            );
            continue;
        }
        if new_dirs.contains(parent(q)) {
            continue;
        }
        out.insert(
            q.clone(),
            Change::Added {
                path: display_path(q),
                kind: kind_name(nb),
                size: total_size(b, q, nb),
            },
        );
    }
    out.into_values().collect()
}

fn compare(p: &[u8], ma: &Meta, na: &Node, mb: &Meta, nb: &Node, bs: u64) -> Option<Change> {
    let (ka, kb) = (kind_name(na), kind_name(nb));
    if ka != kb {
        return Some(Change::TypeChanged {
            path: display_path(p),
            from: ka,
            to: kb,
        });
    }
    let metadata = meta_changes(ma, mb, matches!(nb, Node::Dir));
    if !content_equal(na, nb) {
        let (changed_blocks, changed_bytes) = match nb {
            Node::File { .. } => changed_blocks(na, nb, bs),
            _ => (0, 0),
        };
        return Some(Change::Modified {
            path: display_path(p),
            kind: kb,
            old_size: size_of(na),
            new_size: size_of(nb),
            changed_blocks,
            changed_bytes,
            metadata,
        });
    }
    (!metadata.is_empty()).then(|| Change::Metadata {
        path: display_path(p),
        kind: kb,
        fields: metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::manifest::{Blocks, Entry, Manifest, Time, MANIFEST_FORMAT};
    use crate::store::ChunkId;

    fn meta(mode: u32, ino: u64, mtime: i64) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: Time {
                sec: mtime,
                nsec: 0,
            },
            ctime_ns: 0,
            ino,
            xattrs: vec![],
        }
    }

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn file(path: &str, ino: u64, mtime: i64, size: u64, ids: &[u8]) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            meta: meta(0o100644, ino, mtime),
            node: Node::File {
                size,
                blocks: Blocks::Full(ids.iter().map(|n| id(*n)).collect()),
                link: None,
            },
        }
    }

    fn dir(path: &str, ino: u64) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            meta: meta(0o40755, ino, 1),
            node: Node::Dir,
        }
    }

    fn tree(entries: Vec<Entry>) -> Tree {
        let mut t = Tree::default();
        t.apply(&Manifest {
            format: MANIFEST_FORMAT,
            block_size: 4,
            removed: vec![],
            entries,
        })
        .unwrap();
        t
    }

    fn base() -> Vec<Entry> {
        vec![
            dir("", 1),
            file("big", 2, 10, 10, &[1, 2, 3]),
            dir("gone", 3),
            file("gone/x", 4, 10, 1, &[4]),
            file("gone/y", 5, 10, 1, &[5]),
            dir("old", 6),
            file("old/same", 7, 10, 2, &[6]),
            file("old/edit", 8, 10, 4, &[7]),
            file("perm", 9, 10, 1, &[8]),
            file("mv", 10, 10, 3, &[9]),
            file("reused", 11, 10, 1, &[10]),
            dir("t", 12),
        ]
    }

    #[test]
    fn every_kind_of_change_is_listed_once() {
        let a = tree(base());
        let mut e = base();
        e.retain(|x| !x.path.starts_with(b"gone") && !x.path.starts_with(b"old"));
        e.retain(|x| !matches!(x.path.as_slice(), b"mv" | b"reused" | b"t"));
        e.push(file("big", 2, 11, 13, &[1, 9, 3, 4])); // blocks 1 and 3 differ
        e.push(dir("new", 6)); // old/ renamed to new/
        e.push(file("new/same", 7, 10, 2, &[6]));
        e.push(file("new/edit", 8, 11, 4, &[8]));
        e.push(file("perm", 9, 10, 1, &[8]));
        e.push(file("moved", 10, 10, 3, &[9])); // mv renamed
        e.push(file("fresh", 11, 99, 1, &[11])); // reuses reused's inode
        e.push(file("t", 12, 10, 0, &[])); // a directory became a file
        e.push(dir("added", 13));
        e.push(file("added/z", 14, 10, 1, &[12]));
        let mut b = tree(e);
        // chmod of perm: metadata only.
        b.entries.get_mut(b"perm".as_slice()).unwrap().0.mode = 0o100600;
        let changes = diff(&a, &b, b"");
        let got: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::Added { path, .. } => format!("+ {path}"),
                Change::Removed { path, .. } => format!("- {path}"),
                Change::Modified {
                    path,
                    changed_blocks,
                    changed_bytes,
                    ..
                } => format!("M {path} {changed_blocks} {changed_bytes}"),
                Change::Metadata { path, fields, .. } => format!("U {path} {fields:?}"),
                Change::TypeChanged { path, from, to } => format!("T {path} {from}>{to}"),
                Change::Renamed {
                    from,
                    to,
                    changed_blocks,
                    ..
                } => format!("R {from}>{to} {changed_blocks}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                "+ added",
                "M big 2 5",
                "+ fresh",
                "- gone",
                "R mv>moved 0",
                "R old>new 0",
                "R old/edit>new/edit 1",
                "U perm [\"mode\"]",
                "- reused",
                "T t dir>file",
            ],
            "{changes:#?}"
        );
        let s = Summary::of(&changes);
        assert_eq!((s.added, s.removed, s.renamed, s.modified), (2, 2, 3, 1));
        assert_eq!(s.changed_blocks, 3);
    }

    #[test]
    fn a_new_directory_that_reuses_an_inode_is_not_a_rename() {
        let a = tree(vec![dir("", 1), dir("d", 5), file("d/a", 6, 10, 1, &[1])]);
        let mut new_dir = dir("added", 5);
        new_dir.meta.mtime = Time { sec: 99, nsec: 0 };
        // Its entry even reuses the inode of the old directory's entry.
        let b = tree(vec![dir("", 1), new_dir, file("added/z", 6, 99, 1, &[2])]);
        let c = diff(&a, &b, b"");
        let paths: Vec<String> = c
            .iter()
            .map(|c| match c {
                Change::Added { path, .. } => format!("+{path}"),
                Change::Removed { path, .. } => format!("-{path}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(paths, vec!["+added", "-d"]);
    }

    #[test]
    fn a_path_limits_the_diff_to_its_subtree() {
        let a = tree(base());
        let mut e = base();
        e.push(file("big", 2, 11, 10, &[1, 2, 9]));
        e.push(file("old/edit", 8, 11, 4, &[8]));
        let b = tree(e);
        let c = diff(&a, &b, b"old");
        assert_eq!(c.len(), 1, "{c:#?}");
        // A sibling whose name extends the directory's (`old-x` sorts
        // between `old` and `old/...`) neither hides nor joins it.
        let mut e = base();
        e.push(file("old-x", 20, 10, 1, &[30]));
        let a2 = tree(e.clone());
        e.push(file("old/edit", 8, 11, 4, &[8]));
        e.push(file("old-x", 20, 11, 1, &[31]));
        let b2 = tree(e);
        let c = diff(&a2, &b2, b"old");
        assert_eq!(c.len(), 1, "{c:#?}");
        assert!(matches!(&c[0], Change::Modified { path, .. } if path == "old/edit"));
        assert!(matches!(&c[0], Change::Modified { path, .. } if path == "old/edit"));
        assert!(diff(&a, &a, b"").is_empty());
    }
}
