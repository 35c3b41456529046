//! A snapshot's tree as the views see it: directories are read when first
//! used, and only a bounded number of their entries are kept.
//!
//! Node numbers need no table: an entry's number is its preorder position
//! in the snapshot's tree (the root is 0; a directory's entries follow it
//! in name order, each directory's subtree right after the directory).
//! Each directory reference carries its subtree's entry count (manifest
//! format 3), so the position of any child is known from its directory
//! alone, and the entry at a position is found by descending from the
//! root through the directories on its path: the numbers stay the same
//! however often a directory is dropped from memory and read again, and
//! the kernel may keep them as long as it likes. Snapshots of earlier
//! formats are resolved once and held as directory objects in memory, so
//! every snapshot is served the same way.
//!
//! Hard links of a snapshot share one node (the first name in preorder,
//! with the group's link count); the groups are found by one walk of the
//! tree, done only when a hard-linked file is first met. Directories show
//! a link count of 1 ("not counted", as btrfs and many FUSE filesystems
//! do, and as `find` and `fts` understand): counting their subdirectories
//! would read every subdirectory an `ls -l` lists.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::snapshot::dirs::{
    self, join, DNode, DirObject, DirRef, Objects, Root, Stored, MAX_DEPTH,
};
use crate::snapshot::manifest::{Blocks, Meta};
use crate::snapshot::SnapshotRecord;
use crate::store::ChunkId;

/// Entries of loaded directories kept per snapshot tree by default.
pub const DEFAULT_ENTRIES_CACHED: usize = 1 << 16;

/// Directories used within this many cache accesses are never dropped.
const RECENT_TICKS: u64 = 64;

/// A directory's entries with their node numbers.
pub struct VDir {
    pub idx: u32,
    pub path: Vec<u8>,
    /// Node number of the directory holding it (0 for the root).
    pub parent: u32,
    /// In name order, so in node number order too.
    pub children: Vec<Child>,
}

pub struct Child {
    pub name: Vec<u8>,
    /// Its preorder position.
    pub pos: u32,
    pub meta: Meta,
    pub node: DNode,
}

/// What a node is.
/// (A file's block ids are read at open: [`ViewTree::file_blocks`].)
pub enum VKind {
    Dir,
    File { size: u64 },
    Symlink(Vec<u8>),
    Special(u64),
}

/// One entry of the tree, as a node.
pub struct VNode {
    pub idx: u32,
    pub path: Vec<u8>,
    pub parent: u32,
    pub meta: Meta,
    pub kind: VKind,
    pub nlink: u32,
}

/// Where the directory objects come from.
enum Source {
    Repo(Arc<Repository>),
    /// A snapshot of manifest format 1 or 2, written as objects here.
    Mem(MemObjects),
}

impl Source {
    fn objects(&self) -> &dyn Objects {
        match self {
            Source::Repo(r) => &**r,
            Source::Mem(m) => m,
        }
    }
}

#[derive(Default)]
struct MemObjects {
    objs: Mutex<HashMap<ChunkId, Arc<Vec<u8>>>>,
}

impl Objects for MemObjects {
    fn put(&self, bytes: &[u8]) -> Result<ChunkId> {
        let id = ChunkId::of(bytes);
        self.objs
            .lock()
            .entry(id)
            .or_insert_with(|| Arc::new(bytes.to_vec()));
        Ok(id)
    }

    fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.objs
            .lock()
            .get(id)
            .map(|b| b.to_vec())
            .ok_or_else(|| Error::MissingChunk(id.to_hex()))
    }
}

impl MemObjects {
    fn bytes(&self) -> u64 {
        self.objs.lock().values().map(|b| b.len() as u64 + 64).sum()
    }
}

/// Loaded directories by node number, the least recently used dropped
/// first once their entries pass the budget (the root always stays).
#[derive(Default)]
struct DirCache {
    dirs: HashMap<u32, (Arc<VDir>, u64)>,
    entries: usize,
    bytes: u64,
    tick: u64,
}

fn dir_bytes(d: &VDir) -> u64 {
    let per = std::mem::size_of::<Child>() as u64;
    d.children
        .iter()
        .map(|c| {
            let body = match &c.node {
                DNode::File {
                    blocks, segments, ..
                } => (blocks.len() + segments.len()) as u64 * 32,
                DNode::Symlink { target } => target.len() as u64,
                DNode::Dir(r) => r.parts.len() as u64 * 32,
                DNode::Special { .. } => 0,
            };
            let x: u64 = c
                .meta
                .xattrs
                .iter()
                .map(|(a, b)| (a.len() + b.len() + 48) as u64)
                .sum();
            per + c.name.len() as u64 + body + x
        })
        .sum::<u64>()
        + d.path.len() as u64
        + 64
}

/// Hard link groups: link id -> (first node, names).
type LinkGroups = HashMap<u64, (u32, u32)>;

/// A snapshot's tree for the views.
pub struct ViewTree {
    pub record: SnapshotRecord,
    root: Root,
    source: Source,
    cache: Mutex<DirCache>,
    budget: usize,
    /// Hard link groups: link id -> (first node, names), once needed (or
    /// why they could not be found).
    links: Mutex<Option<std::result::Result<Arc<LinkGroups>, String>>>,
}

fn too_large(rec: &SnapshotRecord) -> Error {
    Error::InvalidInput(format!(
        "snapshot {} has more than {} entries: too many to show as a view",
        rec.id,
        u32::MAX - 1
    ))
}

impl ViewTree {
    /// Open a snapshot's tree: its root only (format 3), or its whole
    /// tree resolved once (earlier formats). `entries_cached` bounds the
    /// entries of loaded directories kept.
    pub fn open(
        repo: &Arc<Repository>,
        record: SnapshotRecord,
        entries_cached: usize,
    ) -> Result<ViewTree> {
        let (root, source) = match repo.load_stored(&record)? {
            Stored::Tree(root) => (root, Source::Repo(repo.clone())),
            Stored::Changes(_) => {
                let tree = repo.resolve(&record)?;
                let mem = MemObjects::default();
                let root = dirs::write_tree(&mem, &tree)?;
                (root, Source::Mem(mem))
            }
        };
        if root.dir.entries >= u64::from(u32::MAX) {
            return Err(too_large(&record));
        }
        Ok(ViewTree {
            record,
            root,
            source,
            cache: Mutex::new(DirCache::default()),
            budget: entries_cached.max(1),
            links: Mutex::new(None),
        })
    }

    /// Entries of the loaded directories, and about the heap bytes they
    /// (and, for an earlier format, the objects held in memory) take.
    pub fn memory(&self) -> (u64, u64) {
        let c = self.cache.lock();
        let held = match &self.source {
            Source::Mem(m) => m.bytes(),
            Source::Repo(_) => 0,
        };
        (c.entries as u64, c.bytes + held)
    }

    fn load(&self, idx: u32, r: &DirRef, path: Vec<u8>, parent: u32) -> Result<Arc<VDir>> {
        {
            let mut c = self.cache.lock();
            c.tick += 1;
            let tick = c.tick;
            if let Some((d, t)) = c.dirs.get_mut(&idx) {
                *t = tick;
                return Ok(d.clone());
            }
        }
        let obj: DirObject = dirs::load_dir(self.source.objects(), r, self.root.block_size)?;
        // Positions: each child after the previous one's subtree; they
        // must add up to the count the reference gives.
        let mut pos = u64::from(idx) + 1;
        let mut children = Vec::with_capacity(obj.entries.len());
        for e in obj.entries {
            let span = match &e.node {
                DNode::Dir(sub) => sub.entries.saturating_add(1),
                _ => 1,
            };
            if pos >= u64::from(u32::MAX) {
                return Err(too_large(&self.record));
            }
            children.push(Child {
                name: e.name,
                pos: pos as u32,
                meta: e.meta,
                node: e.node,
            });
            pos = pos.saturating_add(span);
        }
        if pos - u64::from(idx) - 1 != r.entries {
            return Err(Error::Corrupt(format!(
                "directory {} of snapshot {} holds {} entries, its reference says {}",
                crate::snapshot::manifest::display_path(&path),
                self.record.id,
                pos - u64::from(idx) - 1,
                r.entries
            )));
        }
        let d = Arc::new(VDir {
            idx,
            path,
            parent,
            children,
        });
        let mut c = self.cache.lock();
        c.tick += 1;
        let tick = c.tick;
        if c.dirs.insert(idx, (d.clone(), tick)).is_none() {
            c.entries += d.children.len();
            c.bytes += dir_bytes(&d);
        }
        if c.entries > self.budget {
            // Drop the least recently used until half the budget is left,
            // never those used by the last few lookups (the directories
            // on the way to what is being looked up: a directory larger
            // than the budget must not make its ancestors be read again
            // at every lookup).
            let recent = tick.saturating_sub(RECENT_TICKS);
            let mut by_age: Vec<(u64, u32)> = c
                .dirs
                .iter()
                .filter(|(i, (_, t))| **i != 0 && **i != idx && *t < recent)
                .map(|(i, (_, t))| (*t, *i))
                .collect();
            by_age.sort_unstable();
            for (_, i) in by_age {
                if c.entries <= self.budget / 2 {
                    break;
                }
                if let Some((gone, _)) = c.dirs.remove(&i) {
                    c.entries -= gone.children.len();
                    c.bytes = c.bytes.saturating_sub(dir_bytes(&gone));
                }
            }
        }
        Ok(d)
    }

    fn root_dir(&self) -> Result<Arc<VDir>> {
        self.load(0, &self.root.dir, Vec::new(), 0)
    }

    /// The directory holding entry `idx` (not the root) and its index
    /// there.
    fn locate(&self, idx: u32) -> Result<Option<(Arc<VDir>, usize)>> {
        let mut dir = self.root_dir()?;
        for _ in 0..=MAX_DEPTH {
            let i = dir.children.partition_point(|c| c.pos <= idx);
            let Some(c) = i.checked_sub(1).and_then(|i| dir.children.get(i)) else {
                return Ok(None);
            };
            if c.pos == idx {
                return Ok(Some((dir, i - 1)));
            }
            match &c.node {
                DNode::Dir(r) if u64::from(idx) <= u64::from(c.pos) + r.entries => {
                    let next = self.load(c.pos, r, join(&dir.path, &c.name), dir.idx)?;
                    dir = next;
                }
                _ => return Ok(None),
            }
        }
        Err(Error::Corrupt(format!(
            "snapshot {} is deeper than {MAX_DEPTH} directories",
            self.record.id
        )))
    }

    /// The node numbered `idx` (`None`: no such entry).
    pub fn node(&self, idx: u32) -> Result<Option<VNode>> {
        if idx == 0 {
            return Ok(Some(VNode {
                idx: 0,
                path: Vec::new(),
                parent: 0,
                meta: self.root.meta.clone().unwrap_or_else(|| Meta {
                    mode: libc::S_IFDIR | 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: Default::default(),
                    ctime_ns: 0,
                    ino: 0,
                    xattrs: Vec::new(),
                }),
                kind: VKind::Dir,
                nlink: 1,
            }));
        }
        match self.locate(idx)? {
            Some((dir, i)) => self.node_of(&dir, i).map(Some),
            None => Ok(None),
        }
    }

    fn node_of(&self, dir: &VDir, i: usize) -> Result<VNode> {
        let c = &dir.children[i];
        let (idx, nlink) = self.shown(c)?;
        let kind = match &c.node {
            DNode::Dir(_) => VKind::Dir,
            DNode::File { size, .. } => VKind::File { size: *size },
            DNode::Symlink { target } => VKind::Symlink(target.clone()),
            DNode::Special { rdev } => VKind::Special(*rdev),
        };
        Ok(VNode {
            idx,
            path: join(&dir.path, &c.name),
            parent: dir.idx,
            meta: c.meta.clone(),
            kind,
            nlink,
        })
    }

    /// The node a child is shown as, and its link count: a hard link is
    /// the first name of its group.
    pub fn shown(&self, c: &Child) -> Result<(u32, u32)> {
        match &c.node {
            DNode::File { link: Some(l), .. } => {
                let groups = self.links()?;
                Ok(groups.get(l).copied().unwrap_or((c.pos, 1)))
            }
            _ => Ok((c.pos, 1)),
        }
    }

    /// The entries of directory node `idx` (`None`: not a directory).
    pub fn dir(&self, idx: u32) -> Result<Option<Arc<VDir>>> {
        if idx == 0 {
            return self.root_dir().map(Some);
        }
        let Some((parent, i)) = self.locate(idx)? else {
            return Ok(None);
        };
        let c = &parent.children[i];
        match &c.node {
            DNode::Dir(r) => self
                .load(c.pos, r, join(&parent.path, &c.name), parent.idx)
                .map(Some),
            _ => Ok(None),
        }
    }

    /// The child `name` of directory node `idx`: `Err(ENOTDIR)`-like
    /// `None` outer when `idx` is no directory.
    pub fn child(&self, idx: u32, name: &[u8]) -> Result<Option<Option<VNode>>> {
        let Some(d) = self.dir(idx)? else {
            return Ok(None);
        };
        match d.children.binary_search_by(|c| c.name.as_slice().cmp(name)) {
            Ok(i) => self.node_of(&d, i).map(|n| Some(Some(n))),
            Err(_) => Ok(Some(None)),
        }
    }

    /// A file child's block ids (read from its segments for a large
    /// file); `None` for anything else.
    fn blocks_of(&self, c: &Child) -> Option<Result<Blocks>> {
        match &c.node {
            DNode::File {
                size,
                blocks,
                segments,
                lens,
                ..
            } => Some(dirs::file_blocks(
                self.source.objects(),
                *size,
                blocks.clone(),
                lens.clone(),
                segments,
                self.root.block_size,
            )),
            _ => None,
        }
    }

    /// The chunk list of file node `idx` (`None`: no such file).
    pub fn file_blocks(&self, idx: u32) -> Result<Option<Blocks>> {
        match self.locate(idx)? {
            Some((dir, i)) => self.blocks_of(&dir.children[i]).transpose(),
            None => Ok(None),
        }
    }

    /// The blocks of the file after node `idx` in its directory (name
    /// order), skipping anything that is not a file.
    pub fn next_file(&self, idx: u32) -> Option<Vec<ChunkId>> {
        let (dir, i) = self.locate(idx).ok()??;
        dir.children[i + 1..]
            .iter()
            .find_map(|c| self.blocks_of(c)?.ok())
            .map(|b| match b {
                Blocks::Full(ids) | Blocks::Sized { ids, .. } => ids,
                Blocks::Patch(_) => Vec::new(),
            })
    }

    /// The hard link groups, found by one walk of the whole tree.
    fn links(&self) -> Result<Arc<LinkGroups>> {
        let mut slot = self.links.lock();
        if let Some(l) = &*slot {
            return l.clone().map_err(Error::Corrupt);
        }
        let found = self.walk_links();
        *slot = Some(found.as_ref().map(|l| l.clone()).map_err(|e| e.to_string()));
        found
    }

    fn walk_links(&self) -> Result<Arc<LinkGroups>> {
        let mut groups = LinkGroups::new();
        let mut seen = 0u64;
        let objects = self.source.objects();
        let mut stack = vec![(0u64, self.root.dir.clone(), 0usize)];
        while let Some((idx, r, depth)) = stack.pop() {
            if depth > MAX_DEPTH {
                return Err(Error::Corrupt(format!(
                    "snapshot {} is deeper than {MAX_DEPTH} directories",
                    self.record.id
                )));
            }
            let obj = dirs::load_dir(objects, &r, self.root.block_size)?;
            seen += obj.entries.len() as u64;
            if seen > self.root.dir.entries {
                return Err(Error::Corrupt(format!(
                    "snapshot {} holds more entries than its root says",
                    self.record.id
                )));
            }
            let mut pos = idx + 1;
            for e in obj.entries {
                match e.node {
                    DNode::Dir(sub) => {
                        let span = sub.entries.saturating_add(1);
                        stack.push((pos, sub, depth + 1));
                        pos = pos.saturating_add(span);
                    }
                    DNode::File { link: Some(l), .. } => {
                        let p = pos.min(u64::from(u32::MAX)) as u32;
                        let g = groups.entry(l).or_insert((p, 0));
                        g.0 = g.0.min(p);
                        g.1 += 1;
                        pos += 1;
                    }
                    _ => pos += 1,
                }
            }
        }
        Ok(Arc::new(groups))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::manifest::{Blocks, Node};
    use crate::snapshot::Tree;

    fn meta(mode: u32, ino: u64) -> Meta {
        Meta {
            ino,
            ..crate::snapshot::tree::tests::meta(mode)
        }
    }

    fn tree() -> Tree {
        let mut t = Tree {
            block_size: 4096,
            entries: Default::default(),
        };
        let dir = |t: &mut Tree, p: &str, ino| {
            t.entries.insert(
                p.as_bytes().to_vec(),
                (meta(libc::S_IFDIR | 0o755, ino), Node::Dir),
            );
        };
        let file = |t: &mut Tree, p: &str, ino, link: Option<u64>| {
            t.entries.insert(
                p.as_bytes().to_vec(),
                (
                    meta(libc::S_IFREG | 0o644, ino),
                    Node::File {
                        size: 0,
                        blocks: Blocks::Full(Vec::new()),
                        link,
                    },
                ),
            );
        };
        dir(&mut t, "", 1);
        dir(&mut t, "a", 2);
        file(&mut t, "a/x", 3, None);
        dir(&mut t, "a/y", 4);
        file(&mut t, "a/y/z", 5, Some(5));
        dir(&mut t, "a-b", 6);
        file(&mut t, "b", 5, Some(5));
        file(&mut t, "c", 7, None);
        t
    }

    fn view(t: &Tree, budget: usize) -> ViewTree {
        let mem = MemObjects::default();
        let root = dirs::write_tree(&mem, t).unwrap();
        ViewTree {
            record: serde_json::from_value(serde_json::json!({
                "format": 1, "id": 1, "kind": "full", "parent": null, "full": 1,
                "time": "", "time_ns": 0, "label": null, "name": "s", "source": "",
                "block_size": 4096, "manifest": [], "manifest_len": 0,
                "stats": serde_json::to_value(crate::snapshot::Stats::default()).unwrap()
            }))
            .unwrap(),
            root,
            source: Source::Mem(mem),
            cache: Mutex::new(DirCache::default()),
            budget,
            links: Mutex::new(None),
        }
    }

    #[test]
    fn preorder_numbers_reach_every_entry_and_survive_eviction() {
        let t = tree();
        // Preorder by name: a(1) a/x(2) a/y(3) a/y/z(4) a-b(5) b(6) c(7).
        let want = ["", "a", "a/x", "a/y", "a/y/z", "a-b", "b", "c"];
        for budget in [1, 100] {
            let v = view(&t, budget);
            for _ in 0..2 {
                for (i, p) in want.iter().enumerate() {
                    let n = v.node(i as u32).unwrap().unwrap();
                    assert_eq!(n.path, p.as_bytes(), "node {i}, budget {budget}");
                }
                assert!(v.node(8).unwrap().is_none());
            }
            // Lookups by name give the same numbers; hard links share the
            // first name's node with the group's count.
            let a = v.child(0, b"a").unwrap().unwrap().unwrap();
            assert_eq!(a.idx, 1);
            let y = v.child(a.idx, b"y").unwrap().unwrap().unwrap();
            let z = v.child(y.idx, b"z").unwrap().unwrap().unwrap();
            let b = v.child(0, b"b").unwrap().unwrap().unwrap();
            assert_eq!((z.idx, z.nlink), (4, 2));
            assert_eq!((b.idx, b.nlink), (4, 2));
            assert!(v.child(0, b"nope").unwrap().unwrap().is_none());
            assert!(v.child(7, b"x").unwrap().is_none(), "c is no directory");
            assert_eq!(v.node(3).unwrap().unwrap().parent, 1);
        }
    }

    #[test]
    fn a_wrong_entry_count_is_refused() {
        let t = tree();
        let mut v = view(&t, 100);
        v.root.dir.entries += 1;
        assert!(matches!(v.node(1), Err(Error::Corrupt(_))));
    }
}
