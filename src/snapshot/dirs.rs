//! Directory objects: how manifest format 3 stores a snapshot's tree.
//!
//! Every directory of a snapshot is one content-addressed object (its
//! entries sorted by name, each with its metadata; a file entry carries
//! its whole block list, a directory entry the reference of its own
//! object). A snapshot's manifest is then a small [`Root`]: the root
//! directory's metadata and reference. A directory that did not change
//! between two snapshots encodes to the same bytes, so it has the same id
//! and is stored once: a capture stores only the directories that changed
//! and their ancestors, any snapshot's tree is read without replaying a
//! chain, and two trees are compared by skipping equal references.
//!
//! Objects are stored like manifest parts (blobs of kind `Manifest`, cut
//! into parts of at most [`MANIFEST_PART_LEN`]); a [`DirRef`] names the
//! parts of one directory and its encoded length.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::manifest::{Blocks, Manifest, Meta, Node, MANIFEST_PART_LEN};
use super::tree::Tree;
use crate::error::{Error, Result};
use crate::store::ChunkId;

/// The manifest format whose manifest is a [`Root`].
pub const TREE_MANIFEST_FORMAT: u32 = 3;
/// The encoding of a [`DirObject`] holding a file in content chunks
/// (written only then: a directory without one is written in
/// [`DIR_FORMAT_V1`], byte for byte as before, so it keeps its id).
pub const DIR_FORMAT: u32 = 2;
/// The first encoding (files in fixed blocks only), still written and read.
pub const DIR_FORMAT_V1: u32 = 1;
/// The deepest tree read (a stored tree cannot loop, content addresses
/// forbid it; this bounds what a damaged repository can make a reader do).
pub const MAX_DEPTH: usize = 2048;
/// The longest directory object read (a directory of a few million
/// entries; memory follows the bytes actually read).
pub const MAX_DIR_BYTES: u64 = 1 << 32;

/// A stored directory object: its parts, in order, and encoded length.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DirRef {
    pub parts: Vec<ChunkId>,
    pub len: u64,
    /// Entries below the directory, at every depth (for node numbers
    /// that need no other directory: a preorder position), and the sum
    /// of the sizes of the files below it (each name of a hard link
    /// counted). Checked against the tree whenever a whole tree is read.
    pub entries: u64,
    pub bytes: u64,
}

/// Manifest format 3: the snapshot's root directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    pub format: u32,
    pub block_size: u32,
    /// The root directory's own metadata (absent when the tree had none).
    pub meta: Option<Meta>,
    pub dir: DirRef,
}

/// What a directory entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DNode {
    Dir(DirRef),
    /// A file: its block ids inline, or, for a file of more than
    /// [`SEGMENT_IDS`] blocks, the ids of segments each holding up to
    /// that many block ids (a block changed in a large file rewrites one
    /// segment, not the whole list).
    ///
    /// `lens`: `None` for fixed blocks; for content chunks (format 2) each
    /// chunk's length beside `blocks`, or empty when the list is in
    /// segments, which then hold (length u32 LE, id) records.
    File {
        size: u64,
        blocks: Vec<ChunkId>,
        segments: Vec<ChunkId>,
        link: Option<u64>,
        lens: Option<Vec<u32>>,
    },
    Symlink {
        target: Vec<u8>,
    },
    Special {
        rdev: u64,
    },
}

/// Format 1 of [`DNode`], [`DirEntry`] and [`DirObject`] (no `lens`).
mod v1 {
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub enum DNode {
        Dir(DirRef),
        File {
            size: u64,
            blocks: Vec<ChunkId>,
            segments: Vec<ChunkId>,
            link: Option<u64>,
        },
        Symlink {
            target: Vec<u8>,
        },
        Special {
            rdev: u64,
        },
    }

    #[derive(Serialize, Deserialize)]
    pub struct DirEntry {
        pub name: Vec<u8>,
        pub meta: Meta,
        pub node: DNode,
    }

    #[derive(Serialize, Deserialize)]
    pub struct DirObject {
        pub format: u32,
        pub entries: Vec<DirEntry>,
    }

    impl From<DirObject> for super::DirObject {
        fn from(d: DirObject) -> Self {
            super::DirObject {
                format: d.format,
                entries: d
                    .entries
                    .into_iter()
                    .map(|e| super::DirEntry {
                        name: e.name,
                        meta: e.meta,
                        node: match e.node {
                            DNode::Dir(r) => super::DNode::Dir(r),
                            DNode::File {
                                size,
                                blocks,
                                segments,
                                link,
                            } => super::DNode::File {
                                size,
                                blocks,
                                segments,
                                link,
                                lens: None,
                            },
                            DNode::Symlink { target } => super::DNode::Symlink { target },
                            DNode::Special { rdev } => super::DNode::Special { rdev },
                        },
                    })
                    .collect(),
            }
        }
    }

    /// [`DNode`] of format 1, borrowed (for encoding without a copy).
    #[derive(Serialize)]
    enum DNodeRef<'a> {
        Dir(&'a DirRef),
        File {
            size: u64,
            blocks: &'a [ChunkId],
            segments: &'a [ChunkId],
            link: Option<u64>,
        },
        Symlink {
            target: &'a [u8],
        },
        Special {
            rdev: u64,
        },
    }

    #[derive(Serialize)]
    struct EntryRef<'a> {
        name: &'a [u8],
        meta: &'a Meta,
        node: DNodeRef<'a>,
    }

    /// The format 1 encoding of `d`, if none of its files is in content
    /// chunks (the bytes format 1 always had: same ids as before).
    pub fn encode(d: &super::DirObject) -> Option<std::result::Result<Vec<u8>, postcard::Error>> {
        let mut entries = Vec::with_capacity(d.entries.len());
        for e in &d.entries {
            let node = match &e.node {
                super::DNode::Dir(r) => DNodeRef::Dir(r),
                super::DNode::File {
                    size,
                    blocks,
                    segments,
                    link,
                    lens: None,
                } => DNodeRef::File {
                    size: *size,
                    blocks,
                    segments,
                    link: *link,
                },
                super::DNode::File { .. } => return None,
                super::DNode::Symlink { target } => DNodeRef::Symlink { target },
                super::DNode::Special { rdev } => DNodeRef::Special { rdev: *rdev },
            };
            entries.push(EntryRef {
                name: &e.name,
                meta: &e.meta,
                node,
            });
        }
        Some(postcard::to_stdvec(&(DIR_FORMAT_V1, entries)))
    }
}

/// Block ids per segment of a large file's block list.
pub const SEGMENT_IDS: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub meta: Meta,
    pub node: DNode,
}

/// One directory: its entries, sorted by name, names unique.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirObject {
    pub format: u32,
    pub entries: Vec<DirEntry>,
}

impl DirObject {
    /// Format 1 when no file is in content chunks, else format 2 (the
    /// `format` field is set by the encoding).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let bad =
            |e: postcard::Error| Error::InvalidInput(format!("encoding a directory object: {e}"));
        match v1::encode(self) {
            Some(old) => old.map_err(bad),
            None => postcard::to_stdvec(&(DIR_FORMAT, &self.entries)).map_err(bad),
        }
    }

    /// Decode and check: known format, names safe, sorted and unique,
    /// block lists that fit their sizes.
    pub fn decode(bytes: &[u8], block_size: u32) -> Result<DirObject> {
        let bad =
            |e: postcard::Error| Error::Corrupt(format!("directory object does not decode: {e}"));
        let (format, _) = postcard::take_from_bytes::<u32>(bytes).map_err(bad)?;
        let d: DirObject = match format {
            DIR_FORMAT_V1 => postcard::from_bytes::<v1::DirObject>(bytes)
                .map_err(bad)?
                .into(),
            DIR_FORMAT => postcard::from_bytes(bytes).map_err(bad)?,
            f => {
                return Err(Error::Corrupt(format!(
                    "directory object format {f} is not supported (this rewindfs reads {DIR_FORMAT_V1} and {DIR_FORMAT})"
                )))
            }
        };
        let bs = u64::from(block_size.max(1));
        let mut prev: Option<&[u8]> = None;
        for e in &d.entries {
            if e.name.is_empty()
                || e.name == b"."
                || e.name == b".."
                || e.name.contains(&b'/')
                || e.name.contains(&0)
            {
                return Err(Error::Corrupt(format!(
                    "unsafe name {:?} in a directory object",
                    String::from_utf8_lossy(&e.name)
                )));
            }
            if prev.is_some_and(|p| p >= e.name.as_slice()) {
                return Err(Error::Corrupt(
                    "directory object entries are not sorted and unique".into(),
                ));
            }
            prev = Some(&e.name);
            if let DNode::File {
                size,
                blocks,
                segments,
                lens: Some(lens),
                ..
            } = &e.node
            {
                // Content chunks: inline ids and lengths, one each, and
                // no more chunks than bytes; or segments and no lengths
                // (their records are checked when read).
                let fits = if segments.is_empty() {
                    lens.len() == blocks.len()
                        && blocks.len() <= SEGMENT_IDS
                        && blocks.len() as u64 <= *size
                        && (*size == 0) == blocks.is_empty()
                } else {
                    let most = (segments.len() as u64)
                        .saturating_mul(SEGMENT_IDS as u64)
                        .saturating_mul(u64::from(block_size.max(1)));
                    blocks.is_empty()
                        && lens.is_empty()
                        && (segments.len() as u64 - 1) * (SEGMENT_IDS as u64) < *size
                        && *size <= most
                };
                if !fits {
                    return Err(Error::Corrupt(format!(
                        "file {:?} of {size} bytes has {} chunks, {} lengths in {} segments",
                        String::from_utf8_lossy(&e.name),
                        blocks.len(),
                        lens.len(),
                        segments.len()
                    )));
                }
                if segments.is_empty() {
                    super::spans::check_lens(lens, *size, block_size.max(1))?;
                }
            } else if let DNode::File {
                size,
                blocks,
                segments,
                ..
            } = &e.node
            {
                let n = size.div_ceil(bs);
                let fits = if segments.is_empty() {
                    n == blocks.len() as u64 && blocks.len() <= SEGMENT_IDS
                } else {
                    blocks.is_empty()
                        && n > SEGMENT_IDS as u64
                        && n.div_ceil(SEGMENT_IDS as u64) == segments.len() as u64
                };
                if !fits {
                    return Err(Error::Corrupt(format!(
                        "file {:?} of {size} bytes has {} blocks in {} segments",
                        String::from_utf8_lossy(&e.name),
                        blocks.len(),
                        segments.len()
                    )));
                }
            }
        }
        Ok(d)
    }
}

impl Root {
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(self)
            .map_err(|e| Error::InvalidInput(format!("encoding a manifest root: {e}")))
    }

    pub fn decode(bytes: &[u8]) -> Result<Root> {
        let r: Root = postcard::from_bytes(bytes)
            .map_err(|e| Error::Corrupt(format!("manifest root does not decode: {e}")))?;
        if r.format != TREE_MANIFEST_FORMAT {
            return Err(Error::Corrupt(format!(
                "manifest format {} is not a tree root",
                r.format
            )));
        }
        Ok(r)
    }
}

/// A stored manifest of any supported format: the changes of format 1
/// and 2 (a full tree, or changes to its base), or the root of a tree of
/// directory objects (format 3, `snapshot::dirs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    Changes(Manifest),
    Tree(Root),
}

impl Stored {
    pub fn decode(bytes: &[u8]) -> Result<Stored> {
        let (format, _) = postcard::take_from_bytes::<u32>(bytes)
            .map_err(|e| Error::Corrupt(format!("manifest does not decode: {e}")))?;
        match format {
            TREE_MANIFEST_FORMAT => Ok(Stored::Tree(Root::decode(bytes)?)),
            super::manifest::MANIFEST_FORMAT_V1 | super::manifest::MANIFEST_FORMAT => {
                Ok(Stored::Changes(Manifest::decode(bytes)?))
            }
            f => Err(Error::Corrupt(format!(
                "manifest format {f} is not supported (this rewindfs reads 1 to {TREE_MANIFEST_FORMAT})"
            ))),
        }
    }

    pub fn block_size(&self) -> u32 {
        match self {
            Stored::Changes(m) => m.block_size,
            Stored::Tree(r) => r.block_size,
        }
    }
}

/// Where directory objects are stored and read.
pub trait Objects {
    /// Store one part (at most [`MANIFEST_PART_LEN`] bytes) unless it is
    /// there; returns its id.
    fn put(&self, bytes: &[u8]) -> Result<ChunkId>;
    /// Read one part back, checked against its id.
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>>;
    /// Read a chunk of file data (not a directory object: not counted as
    /// one).
    fn chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.get(id)
    }
}

/// Store an encoded object as parts.
pub fn put_object(store: &dyn Objects, bytes: &[u8]) -> Result<DirRef> {
    let mut parts = Vec::with_capacity(bytes.len().div_ceil(MANIFEST_PART_LEN).max(1));
    if bytes.is_empty() {
        parts.push(store.put(bytes)?);
    }
    for p in bytes.chunks(MANIFEST_PART_LEN) {
        parts.push(store.put(p)?);
    }
    Ok(DirRef {
        parts,
        len: bytes.len() as u64,
        entries: 0,
        bytes: 0,
    })
}

/// Read a directory object (memory follows the bytes read, never the
/// length the reference claims).
pub fn load_dir(store: &dyn Objects, r: &DirRef, block_size: u32) -> Result<DirObject> {
    if r.len > MAX_DIR_BYTES
        || r.parts.len() as u64 > r.len.div_ceil(MANIFEST_PART_LEN as u64).max(1)
    {
        return Err(Error::Corrupt(format!(
            "directory object of {} bytes in {} parts",
            r.len,
            r.parts.len()
        )));
    }
    let mut bytes = Vec::new();
    for id in &r.parts {
        let p = store.get(id)?;
        if p.len() > MANIFEST_PART_LEN || (bytes.len() + p.len()) as u64 > r.len {
            return Err(Error::Corrupt(
                "directory object is longer than its reference says".into(),
            ));
        }
        bytes.extend_from_slice(&p);
    }
    if bytes.len() as u64 != r.len {
        return Err(Error::Corrupt(format!(
            "directory object is {} bytes, its reference says {}",
            bytes.len(),
            r.len
        )));
    }
    DirObject::decode(&bytes, block_size)
}

/// `dir/name` (`name` alone in the root).
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
        p.extend_from_slice(dir);
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

/// A path's directory (`""`: the root) and last name.
pub fn parent_and_name(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// The references of a tree's directories as last written, by path: the
/// next tree is written re-encoding only the directories on changed
/// paths (see [`write_tree_with`]).
#[derive(Clone, Debug, Default)]
pub struct DirMemo {
    refs: HashMap<Vec<u8>, DirRef>,
    /// While noting (see [`DirMemo::note_changes`]): the parts of the
    /// directory objects a write replaced (-1) and wrote (+1).
    noted: Option<Vec<(ChunkId, i64)>>,
}

impl DirMemo {
    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// The reference of the directory at `path` as last written.
    pub fn get(&self, path: &[u8]) -> Option<&DirRef> {
        self.refs.get(path)
    }

    /// Record the reference of the directory at `path` (of a stored
    /// tree being read).
    pub fn insert(&mut self, path: Vec<u8>, r: DirRef) {
        self.refs.insert(path, r);
    }

    /// From now on, note how the next writes with dirty directories
    /// change the directory objects' parts the tree references (per
    /// path): what the reference ledger's structure needs besides the
    /// manifest and the files' segments, without reading an object.
    pub fn note_changes(&mut self) {
        self.noted = Some(Vec::new());
    }

    /// What was noted since [`DirMemo::note_changes`] (then stops).
    pub fn take_noted(&mut self) -> Option<Vec<(ChunkId, i64)>> {
        self.noted.take()
    }

    /// Directories at `dirty` paths that the new tree no longer has:
    /// forget their references and those below them, noting their parts
    /// as gone.
    fn drop_removed(&mut self, tree: &Tree, dirty: &HashSet<Vec<u8>>) {
        // Directories the memo holds that are gone (a dirty path that is
        // not a directory in the memo was a file: nothing below it).
        let removed: HashSet<&[u8]> = dirty
            .iter()
            .filter(|p| {
                !p.is_empty()
                    && self.refs.contains_key(*p)
                    && !matches!(tree.get(p), Some((_, Node::Dir)))
            })
            .map(|p| p.as_slice())
            .collect();
        if removed.is_empty() {
            return;
        }
        // One pass over the memo: a directory goes if it or a directory
        // above it was removed.
        let under_removed = |k: &[u8]| {
            let mut cur = k;
            loop {
                if removed.contains(cur) {
                    return true;
                }
                if cur.is_empty() {
                    return false;
                }
                cur = parent_and_name(cur).0;
            }
        };
        let gone: Vec<Vec<u8>> = self
            .refs
            .keys()
            .filter(|k| under_removed(k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(r) = self.refs.remove(&k) {
                if let Some(n) = self.noted.as_mut() {
                    n.extend(r.parts.iter().map(|id| (*id, -1)));
                }
            }
        }
    }
}

/// The ids of the segments a file of `blocks` is stored with (none for
/// a file of at most [`SEGMENT_IDS`] blocks), `id` giving a segment's id
/// from its bytes as the store does.
pub fn segment_ids(blocks: &Blocks, id: &dyn Fn(&[u8]) -> ChunkId) -> Vec<ChunkId> {
    segment_bytes(blocks).iter().map(|b| id(b)).collect()
}

/// The segments a file's list is stored in: none for at most
/// [`SEGMENT_IDS`] chunks; else [`SEGMENT_IDS`] ids each (32 bytes), or
/// for content chunks (length u32 LE, id) records (36 bytes).
fn segment_bytes(blocks: &Blocks) -> Vec<Vec<u8>> {
    match blocks {
        Blocks::Full(list) if list.len() > SEGMENT_IDS => list
            .chunks(SEGMENT_IDS)
            .map(|seg| seg.iter().flat_map(|id| id.0).collect())
            .collect(),
        Blocks::Sized { ids, lens } if ids.len() > SEGMENT_IDS => ids
            .chunks(SEGMENT_IDS)
            .zip(lens.chunks(SEGMENT_IDS))
            .map(|(seg, ls)| {
                let mut b = Vec::with_capacity(seg.len() * 36);
                for (id, l) in seg.iter().zip(ls) {
                    b.extend_from_slice(&l.to_le_bytes());
                    b.extend_from_slice(&id.0);
                }
                b
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Read the directory object `r` (the directory at `dir`) and add its
/// entries to `out` (file block lists complete), keeping any entry `out`
/// already has. Returns the number of entries read.
pub fn load_children(store: &dyn Objects, r: &DirRef, dir: &[u8], out: &mut Tree) -> Result<usize> {
    let d = load_dir(store, r, out.block_size)?;
    let n = d.entries.len();
    for e in d.entries {
        let p = join(dir, &e.name);
        if out.entries.contains_key(&p) {
            continue;
        }
        insert_entry(store, out.block_size, out, p, e)?;
    }
    Ok(n)
}

/// The directories a set of changed paths makes dirty: each path itself
/// (a directory that is new or replaced) and every directory above it.
pub fn dirty_dirs<'p>(changed: impl IntoIterator<Item = &'p [u8]>) -> HashSet<Vec<u8>> {
    let mut out = HashSet::new();
    for p in changed {
        let mut cur = p;
        loop {
            if !out.insert(cur.to_vec()) {
                break; // its ancestors are in already
            }
            if cur.is_empty() {
                break;
            }
            cur = parent_and_name(cur).0;
        }
    }
    out
}

/// Store `tree` as directory objects (only those not stored already are
/// written, by the store's deduplication) and return its root.
pub fn write_tree(store: &dyn Objects, tree: &Tree) -> Result<Root> {
    write_tree_with(store, tree, &mut DirMemo::default(), None)
}

/// [`write_tree`], taking the references of the directories outside
/// `dirty` from `memo` (they must be those of a tree that differs from
/// `tree` only at paths `dirty` holds, with their ancestors: see
/// [`dirty_dirs`]) instead of encoding them again, and leaving in `memo`
/// the references of `tree`. `dirty` = `None`: the memo is not trusted,
/// every directory is encoded (and the memo filled).
pub fn write_tree_with(
    store: &dyn Objects,
    tree: &Tree,
    memo: &mut DirMemo,
    dirty: Option<&HashSet<Vec<u8>>>,
) -> Result<Root> {
    if dirty.is_none() {
        memo.refs.clear();
        // What was replaced is not known: nothing to note.
        memo.noted = None;
    }
    let dir = write_dir(store, tree, memo, dirty, b"", 0)?;
    if let Some(d) = dirty {
        memo.drop_removed(tree, d);
    }
    Ok(Root {
        format: TREE_MANIFEST_FORMAT,
        block_size: tree.block_size,
        meta: tree.get(b"").map(|(m, _)| m.clone()),
        dir,
    })
}

/// The direct children of `dir` in `tree` (full paths), jumping over
/// each child's subtree: O(children x log(entries)).
fn children_of<'t>(tree: &'t Tree, dir: &[u8]) -> Vec<&'t Vec<u8>> {
    use std::ops::Bound;
    let mut prefix = dir.to_vec();
    if !prefix.is_empty() {
        prefix.push(b'/');
    }
    let mut out = Vec::new();
    let mut from: Bound<Vec<u8>> = Bound::Included(prefix.clone());
    while let Some((k, _)) = tree
        .entries
        .range::<Vec<u8>, _>((from.clone(), Bound::Unbounded))
        .next()
    {
        if !k.starts_with(&prefix) {
            break;
        }
        if k.len() == prefix.len() {
            // The root's own entry ("" under the prefix "").
            from = Bound::Excluded(k.clone());
            continue;
        }
        let rest = &k[prefix.len()..];
        match rest.iter().position(|b| *b == b'/') {
            None => {
                out.push(k);
                from = Bound::Excluded(k.clone());
            }
            Some(i) => {
                // Inside the subtree of child rest[..i]: past all of it
                // ('0' is the byte after '/').
                let mut skip = prefix.clone();
                skip.extend_from_slice(&rest[..i]);
                skip.push(b'0');
                from = Bound::Included(skip);
            }
        }
    }
    out
}

fn write_dir(
    store: &dyn Objects,
    tree: &Tree,
    memo: &mut DirMemo,
    dirty: Option<&HashSet<Vec<u8>>>,
    path: &[u8],
    depth: usize,
) -> Result<DirRef> {
    if depth > MAX_DEPTH {
        return Err(Error::InvalidInput(format!(
            "the tree is deeper than {MAX_DEPTH} directories"
        )));
    }
    if let Some(d) = dirty {
        if !d.contains(path) {
            if let Some(r) = memo.refs.get(path) {
                return Ok(r.clone());
            }
        }
    }
    let kids = children_of(tree, path);
    let mut entries = Vec::with_capacity(kids.len());
    {
        for child in kids {
            let Some((meta, node)) = tree.get(child) else {
                continue;
            };
            let (_, name) = parent_and_name(child);
            let node = match node {
                Node::Dir => DNode::Dir(write_dir(store, tree, memo, dirty, child, depth + 1)?),
                Node::File { size, blocks, link } => {
                    if let Blocks::Patch(_) = blocks {
                        return Err(Error::InvalidInput("a resolved tree holds a patch".into()));
                    }
                    file_dnode(store, *size, blocks, *link)?
                }
                Node::Symlink { target } => DNode::Symlink {
                    target: target.clone(),
                },
                Node::Special { rdev } => DNode::Special { rdev: *rdev },
            };
            entries.push(DirEntry {
                name: name.to_vec(),
                meta: meta.clone(),
                node,
            });
        }
    }
    // Path order is not name order ("a-b" < "a/c" but the names "a" and
    // "a-b" compare the other way round for their subtrees): sort.
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let r = put_dir(store, entries)?;
    if let Some(n) = memo.noted.as_mut() {
        if let Some(old) = memo.refs.get(path) {
            n.extend(old.parts.iter().map(|id| (*id, -1)));
        }
        n.extend(r.parts.iter().map(|id| (*id, 1)));
    }
    memo.refs.insert(path.to_vec(), r.clone());
    Ok(r)
}

/// A file's entry node: its block ids inline, or, past [`SEGMENT_IDS`],
/// stored as segments.
pub fn file_dnode(
    store: &dyn Objects,
    size: u64,
    list: &Blocks,
    link: Option<u64>,
) -> Result<DNode> {
    let segs = segment_bytes(list);
    let mut segments = Vec::with_capacity(segs.len());
    for b in &segs {
        segments.push(store.put(b)?);
    }
    let inline = segments.is_empty();
    let (blocks, lens) = match list {
        Blocks::Full(ids) => (if inline { ids.clone() } else { Vec::new() }, None),
        Blocks::Sized { ids, lens } if inline => (ids.clone(), Some(lens.clone())),
        Blocks::Sized { .. } => (Vec::new(), Some(Vec::new())),
        Blocks::Patch(_) => {
            return Err(Error::InvalidInput("a resolved tree holds a patch".into()))
        }
    };
    Ok(DNode::File {
        size,
        blocks,
        segments,
        link,
        lens,
    })
}

/// Store one directory (`entries` sorted by name, names unique) and
/// return its reference, with the entries and bytes below it.
pub fn put_dir(store: &dyn Objects, entries: Vec<DirEntry>) -> Result<DirRef> {
    let obj = DirObject {
        format: DIR_FORMAT,
        entries,
    };
    let (mut entries, mut bytes) = (0u64, 0u64);
    for e in &obj.entries {
        entries += 1;
        match &e.node {
            DNode::Dir(r) => {
                entries += r.entries;
                bytes += r.bytes;
            }
            DNode::File { size, .. } => bytes += size,
            _ => {}
        }
    }
    Ok(DirRef {
        entries,
        bytes,
        ..put_object(store, &obj.encode()?)?
    })
}

fn file_node(size: u64, blocks: Blocks, link: Option<u64>) -> Node {
    Node::File { size, blocks, link }
}

/// The chunk list of a file entry: inline, or read from its segments
/// (each checked to hold exactly what the file's size needs).
pub fn file_blocks(
    store: &dyn Objects,
    size: u64,
    blocks: Vec<ChunkId>,
    lens: Option<Vec<u32>>,
    segments: &[ChunkId],
    block_size: u32,
) -> Result<Blocks> {
    match lens {
        None => Ok(Blocks::Full(grid_blocks(
            store, size, blocks, segments, block_size,
        )?)),
        Some(lens) if segments.is_empty() => Ok(Blocks::Sized { ids: blocks, lens }),
        Some(_) => sized_segments(store, size, segments, block_size),
    }
}

/// A content-chunk list read from its segments: each but the last holds
/// [`SEGMENT_IDS`] records, the last at least one; the lengths are
/// checked against the size.
fn sized_segments(
    store: &dyn Objects,
    size: u64,
    segments: &[ChunkId],
    block_size: u32,
) -> Result<Blocks> {
    // (Grown as segments are read: a list claiming many segments costs
    // what it holds, not what it claims.)
    let mut ids = Vec::new();
    let mut lens = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let bytes = store.get(seg)?;
        let last = i + 1 == segments.len();
        let n = bytes.len() / 36;
        if bytes.len() % 36 != 0 || n == 0 || n > SEGMENT_IDS || (!last && n != SEGMENT_IDS) {
            return Err(Error::Corrupt(format!(
                "a chunk list segment holds {} bytes",
                bytes.len()
            )));
        }
        for r in bytes.chunks_exact(36) {
            let mut l = [0u8; 4];
            l.copy_from_slice(&r[..4]);
            lens.push(u32::from_le_bytes(l));
            let mut a = [0u8; 32];
            a.copy_from_slice(&r[4..]);
            ids.push(ChunkId(a));
        }
        if lens.len() as u64 > size {
            return Err(Error::Corrupt(format!(
                "{} chunks for a file of {size} bytes",
                lens.len()
            )));
        }
    }
    super::spans::check_lens(&lens, size, block_size.max(1))?;
    Ok(Blocks::Sized { ids, lens })
}

/// Fixed-block ids inline or from their segments.
fn grid_blocks(
    store: &dyn Objects,
    size: u64,
    blocks: Vec<ChunkId>,
    segments: &[ChunkId],
    block_size: u32,
) -> Result<Vec<ChunkId>> {
    if segments.is_empty() {
        return Ok(blocks);
    }
    let n = size.div_ceil(u64::from(block_size.max(1)));
    let mut out = Vec::with_capacity((segments.len() * SEGMENT_IDS).min(n as usize));
    for (i, seg) in segments.iter().enumerate() {
        let bytes = store.get(seg)?;
        let want = (n - (i * SEGMENT_IDS) as u64).min(SEGMENT_IDS as u64) as usize;
        if bytes.len() != want * 32 {
            return Err(Error::Corrupt(format!(
                "a block list segment holds {} bytes, {} expected",
                bytes.len(),
                want * 32
            )));
        }
        for id in bytes.chunks_exact(32) {
            let mut a = [0u8; 32];
            a.copy_from_slice(id);
            out.push(ChunkId(a));
        }
    }
    Ok(out)
}

fn insert_entry(
    store: &dyn Objects,
    block_size: u32,
    out: &mut Tree,
    path: Vec<u8>,
    e: DirEntry,
) -> Result<Option<DirRef>> {
    let (node, sub) = match e.node {
        DNode::Dir(r) => (Node::Dir, Some(r)),
        DNode::File {
            size,
            blocks,
            segments,
            link,
            lens,
        } => (
            file_node(
                size,
                file_blocks(store, size, blocks, lens, &segments, block_size)?,
                link,
            ),
            None,
        ),
        DNode::Symlink { target } => (Node::Symlink { target }, None),
        DNode::Special { rdev } => (Node::Special { rdev }, None),
    };
    out.entries.insert(path, (e.meta, node));
    Ok(sub)
}

/// The whole tree under `root`.
pub fn read_tree(store: &dyn Objects, root: &Root) -> Result<Tree> {
    read_subtree(store, root, b"", None)
}

/// The entries on the way to `path`, `path` itself and, for a directory,
/// what is below it down to `levels` levels (`None`: all, checked
/// against its reference's counts): what `ls`, `cat` or a restore of
/// `path` needs, read without the rest of the tree. A `path` the tree
/// does not have is simply not in the result.
pub fn read_subtree(
    store: &dyn Objects,
    root: &Root,
    path: &[u8],
    levels: Option<usize>,
) -> Result<Tree> {
    let bs = root.block_size;
    let mut out = Tree {
        block_size: bs,
        entries: BTreeMap::new(),
    };
    if let Some(m) = &root.meta {
        out.entries.insert(Vec::new(), (m.clone(), Node::Dir));
    }
    let mut dir = root.dir.clone();
    let mut at = Vec::new();
    if !path.is_empty() {
        let comps: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
        for name in comps {
            let d = load_dir(store, &dir, bs)?;
            let Ok(k) = d.entries.binary_search_by(|e| e.name.as_slice().cmp(name)) else {
                return Ok(out);
            };
            let Some(e) = d.entries.into_iter().nth(k) else {
                return Ok(out);
            };
            at = join(&at, name);
            match insert_entry(store, bs, &mut out, at.clone(), e)? {
                Some(r) => dir = r,
                None => return Ok(out),
            }
        }
    }
    let mut stack = vec![(at, dir.clone(), 0usize)];
    let (mut entries, mut bytes) = (0u64, 0u64);
    while let Some((path, r, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(Error::Corrupt(format!(
                "the tree is deeper than {MAX_DEPTH} directories"
            )));
        }
        let d = load_dir(store, &r, bs)?;
        for e in d.entries {
            entries += 1;
            if let DNode::File { size, .. } = &e.node {
                bytes += size;
            }
            let p = join(&path, &e.name);
            if let Some(sub) = insert_entry(store, bs, &mut out, p.clone(), e)? {
                if levels.is_none_or(|l| depth + 1 < l) {
                    stack.push((p, sub, depth + 1));
                }
            }
        }
    }
    if levels.is_none() && (entries, bytes) != (dir.entries, dir.bytes) {
        return Err(Error::Corrupt(format!(
            "the tree holds {entries} entries of {bytes} bytes, its reference says {} of {}",
            dir.entries, dir.bytes
        )));
    }
    Ok(out)
}

/// The parts of two trees that differ: every entry of `a` under a
/// directory whose object differs from `b`'s at the same path (and the
/// same for `b`), with the directories leading to them. Subtrees whose
/// references are equal are skipped without being read, so the cost
/// follows the change, not the trees. Comparing the two results (e.g.
/// with `snapshot::diff`) gives exactly the differences of the whole
/// trees.
pub fn differing(store: &dyn Objects, a: &Root, b: &Root) -> Result<(Tree, Tree)> {
    differing_impl(store, a, b, &mut |_, _| {}, false)
}

/// [`differing`] without the entries equal on both sides (same name,
/// metadata and content) of the directories read: what a diff needs (an
/// entry equal at the same path is no change, and takes part in no
/// rename), held in memory as the change, not as the directories it
/// touches (a diff of two distant snapshots of 10^6 files, 10^4 changed
/// across most directories, held both trees nearly whole: ~1 GiB).
pub fn differing_changes(store: &dyn Objects, a: &Root, b: &Root) -> Result<(Tree, Tree)> {
    differing_impl(store, a, b, &mut |_, _| {}, true)
}

/// Two directories' entries (each sorted by name) without the pairs
/// equal on both sides.
fn drop_equal(a: Vec<DirEntry>, b: Vec<DirEntry>) -> (Vec<DirEntry>, Vec<DirEntry>) {
    use std::cmp::Ordering;
    let (mut oa, mut ob) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let ord = match (i.peek(), j.peek()) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => break,
        };
        match ord {
            Ordering::Less => oa.extend(i.next()),
            Ordering::Greater => ob.extend(j.next()),
            Ordering::Equal => {
                if let (Some(x), Some(y)) = (i.next(), j.next()) {
                    if x != y {
                        oa.push(x);
                        ob.push(y);
                    }
                }
            }
        }
    }
    (oa, ob)
}

/// The objects a directory object names besides its subdirectories: its
/// own parts and its files' segments, each with `sign` (what a snapshot
/// references beyond file blocks, per directory; see
/// `retention::ledger`).
pub fn object_structure(
    r: &DirRef,
    entries: &[DirEntry],
    sign: i64,
    out: &mut dyn FnMut(ChunkId, i64),
) {
    for p in &r.parts {
        out(*p, sign);
    }
    for e in entries {
        if let DNode::File { segments, .. } = &e.node {
            for s in segments {
                out(*s, sign);
            }
        }
    }
}

/// [`differing`], also giving `structure` what the differing directory
/// objects name (see [`object_structure`]): minus for `a`'s, plus for
/// `b`'s. Summed, that is how the objects `b`'s tree references (with
/// multiplicity, one per path) differ from `a`'s.
pub fn differing_with(
    store: &dyn Objects,
    a: &Root,
    b: &Root,
    structure: &mut dyn FnMut(ChunkId, i64),
) -> Result<(Tree, Tree)> {
    differing_impl(store, a, b, structure, false)
}

fn differing_impl(
    store: &dyn Objects,
    a: &Root,
    b: &Root,
    structure: &mut dyn FnMut(ChunkId, i64),
    drop_equal_entries: bool,
) -> Result<(Tree, Tree)> {
    let mut ta = Tree {
        block_size: a.block_size,
        entries: BTreeMap::new(),
    };
    let mut tb = Tree {
        block_size: b.block_size,
        entries: BTreeMap::new(),
    };
    if let Some(m) = &a.meta {
        ta.entries.insert(Vec::new(), (m.clone(), Node::Dir));
    }
    if let Some(m) = &b.meta {
        tb.entries.insert(Vec::new(), (m.clone(), Node::Dir));
    }
    // (path, its object in a, in b, depth)
    type Pending = (Vec<u8>, Option<DirRef>, Option<DirRef>, usize);
    let mut stack: Vec<Pending> = vec![(Vec::new(), Some(a.dir.clone()), Some(b.dir.clone()), 0)];
    while let Some((path, ra, rb, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(Error::Corrupt(format!(
                "the tree is deeper than {MAX_DEPTH} directories"
            )));
        }
        if ra == rb {
            continue;
        }
        let da = match &ra {
            Some(r) => {
                let d = load_dir(store, r, a.block_size)?.entries;
                object_structure(r, &d, -1, structure);
                d
            }
            None => Vec::new(),
        };
        let db = match &rb {
            Some(r) => {
                let d = load_dir(store, r, b.block_size)?.entries;
                object_structure(r, &d, 1, structure);
                d
            }
            None => Vec::new(),
        };
        let (da, db) = if drop_equal_entries {
            drop_equal(da, db)
        } else {
            (da, db)
        };
        // Children of differing directories: both sides, with their
        // subdirectories compared in turn.
        let mut subs: BTreeMap<Vec<u8>, (Option<DirRef>, Option<DirRef>)> = BTreeMap::new();
        for e in da {
            let p = join(&path, &e.name);
            if let Some(sub) = insert_entry(store, a.block_size, &mut ta, p.clone(), e)? {
                subs.entry(p).or_default().0 = Some(sub);
            }
        }
        for e in db {
            let p = join(&path, &e.name);
            if let Some(sub) = insert_entry(store, b.block_size, &mut tb, p.clone(), e)? {
                subs.entry(p).or_default().1 = Some(sub);
            }
        }
        for (p, (x, y)) in subs {
            if x != y {
                stack.push((p, x, y, depth + 1));
            } else if x.is_some() {
                // Equal subtrees: nothing below differs. Their entries at
                // this level stay (so neither side sees them as removed).
            }
        }
    }
    // Entries equal on both sides at the levels read are harmless for a
    // diff; drop nothing else (a subtree present on one side only was read
    // whole above).
    Ok((ta, tb))
}

/// Every directory object reachable from `root` that `seen` does not hold
/// yet (added to it), with the chunk ids their files name: what a
/// snapshot references beyond what was already marked. `visit` sees each
/// new object once.
pub fn walk_new(
    store: &dyn Objects,
    root: &Root,
    seen: &mut HashSet<DirRef>,
    visit: &mut dyn FnMut(&DirRef, &DirObject),
) -> Result<()> {
    let mut stack = vec![(root.dir.clone(), 0usize)];
    while let Some((r, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(Error::Corrupt(format!(
                "the tree is deeper than {MAX_DEPTH} directories"
            )));
        }
        if seen.contains(&r) {
            continue;
        }
        let d = load_dir(store, &r, root.block_size)?;
        for e in &d.entries {
            if let DNode::Dir(sub) = &e.node {
                if !seen.contains(sub) {
                    stack.push((sub.clone(), depth + 1));
                }
            }
        }
        visit(&r, &d);
        seen.insert(r);
    }
    Ok(())
}

/// Every file entry below `root` (each name of a hard link once), with
/// its size and block ids, reading one directory at a time: what a walk
/// of a whole tree costs without holding it. The totals are checked
/// against the root's reference as [`read_tree`] checks them.
pub fn walk_files(
    store: &dyn Objects,
    root: &Root,
    visit: &mut dyn FnMut(u64, &[ChunkId]),
) -> Result<()> {
    walk_files_with(store, root, visit, &mut |_, _| {})
}

/// [`walk_files`], also giving `structure` what each directory object
/// names besides file blocks (see [`object_structure`]), with sign +1.
pub fn walk_files_with(
    store: &dyn Objects,
    root: &Root,
    visit: &mut dyn FnMut(u64, &[ChunkId]),
    structure: &mut dyn FnMut(ChunkId, i64),
) -> Result<()> {
    let bs = root.block_size;
    let mut stack = vec![(root.dir.clone(), 0usize)];
    let (mut entries, mut bytes) = (0u64, 0u64);
    while let Some((r, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(Error::Corrupt(format!(
                "the tree is deeper than {MAX_DEPTH} directories"
            )));
        }
        let d = load_dir(store, &r, bs)?;
        object_structure(&r, &d.entries, 1, structure);
        for e in d.entries {
            entries += 1;
            match e.node {
                DNode::Dir(sub) => stack.push((sub, depth + 1)),
                DNode::File {
                    size,
                    blocks,
                    segments,
                    lens,
                    ..
                } => {
                    bytes += size;
                    let list = file_blocks(store, size, blocks, lens, &segments, bs)?;
                    visit(size, list.ids());
                }
                DNode::Symlink { .. } | DNode::Special { .. } => {}
            }
        }
    }
    if (entries, bytes) != (root.dir.entries, root.dir.bytes) {
        return Err(Error::Corrupt(format!(
            "the tree holds {entries} entries of {bytes} bytes, its reference says {} of {}",
            root.dir.entries, root.dir.bytes
        )));
    }
    Ok(())
}

/// The entry at `path` below `root`, reading only the directories on the
/// way (`None`: no such entry). The root itself is `path` `""`.
pub fn lookup(
    store: &dyn Objects,
    root: &Root,
    path: &[u8],
) -> Result<Option<(Meta, Node, Option<DirRef>)>> {
    if path.is_empty() {
        return Ok(root
            .meta
            .clone()
            .map(|m| (m, Node::Dir, Some(root.dir.clone()))));
    }
    let mut dir = root.dir.clone();
    let mut comps = path.split(|b| *b == b'/').peekable();
    while let Some(name) = comps.next() {
        let d = load_dir(store, &dir, root.block_size)?;
        let Ok(i) = d.entries.binary_search_by(|e| e.name.as_slice().cmp(name)) else {
            return Ok(None);
        };
        let e = d
            .entries
            .into_iter()
            .nth(i)
            .expect("index from binary_search");
        let last = comps.peek().is_none();
        match (e.node, last) {
            (DNode::Dir(r), true) => return Ok(Some((e.meta, Node::Dir, Some(r)))),
            (DNode::Dir(r), false) => dir = r,
            (n, true) => {
                let node = match n {
                    DNode::File {
                        size,
                        blocks,
                        segments,
                        link,
                        lens,
                    } => file_node(
                        size,
                        file_blocks(store, size, blocks, lens, &segments, root.block_size)?,
                        link,
                    ),
                    DNode::Symlink { target } => Node::Symlink { target },
                    DNode::Special { rdev } => Node::Special { rdev },
                    DNode::Dir(_) => unreachable!(),
                };
                return Ok(Some((e.meta, node, None)));
            }
            (_, false) => return Ok(None),
        }
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::snapshot::manifest::Time;
    use parking_lot::Mutex;

    #[derive(Default)]
    pub(crate) struct Mem {
        objs: Mutex<HashMap<ChunkId, Vec<u8>>>,
        reads: Mutex<u64>,
        puts: Mutex<u64>,
    }

    impl Objects for Mem {
        fn put(&self, bytes: &[u8]) -> Result<ChunkId> {
            let id = ChunkId::of(bytes);
            if self.objs.lock().insert(id, bytes.to_vec()).is_none() {
                *self.puts.lock() += 1;
            }
            Ok(id)
        }
        fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
            *self.reads.lock() += 1;
            self.objs
                .lock()
                .get(id)
                .cloned()
                .ok_or_else(|| Error::MissingChunk(id.to_hex()))
        }
    }

    fn meta(mode: u32, t: i64) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: Time { sec: t, nsec: 0 },
            ctime_ns: t,
            ino: t as u64,
            xattrs: vec![],
        }
    }

    fn big_tree(dirs: usize, per: usize) -> Tree {
        let mut t = Tree {
            block_size: 4096,
            entries: BTreeMap::new(),
        };
        t.entries.insert(vec![], (meta(0o40755, 1), Node::Dir));
        for d in 0..dirs {
            let dp = format!("d{d:03}").into_bytes();
            t.entries.insert(dp.clone(), (meta(0o40755, 2), Node::Dir));
            for f in 0..per {
                let mut p = dp.clone();
                p.extend_from_slice(format!("/f{f:03}").as_bytes());
                let id = ChunkId::of(&p);
                t.entries.insert(
                    p,
                    (
                        meta(0o100644, 3),
                        file_node(4096, Blocks::Full(vec![id]), None),
                    ),
                );
            }
        }
        // Names whose path order differs from name order.
        t.entries
            .insert(b"a".to_vec(), (meta(0o40755, 4), Node::Dir));
        t.entries.insert(
            b"a/x".to_vec(),
            (meta(0o100644, 5), file_node(0, Blocks::Full(vec![]), None)),
        );
        t.entries.insert(
            b"a-b".to_vec(),
            (
                meta(0o120777, 6),
                Node::Symlink {
                    target: b"a".to_vec(),
                },
            ),
        );
        t
    }

    #[test]
    fn round_trip_and_sharing() {
        let s = Mem::default();
        let t = big_tree(20, 50);
        let r = write_tree(&s, &t).unwrap();
        assert_eq!(read_tree(&s, &r).unwrap(), t);
        // The root knows the tree's size without reading it.
        assert_eq!(r.dir.entries, t.entries.len() as u64 - 1);
        assert_eq!(r.dir.bytes, t.file_totals().1);
        let mut lie = r.clone();
        lie.dir.entries += 1;
        assert!(read_tree(&s, &lie).is_err());
        // One file changed: only its directory and the root are new.
        let mut t2 = t.clone();
        let id = ChunkId::of(b"new");
        t2.entries.insert(
            b"d007/f010".to_vec(),
            (
                meta(0o100644, 9),
                file_node(10, Blocks::Full(vec![id]), None),
            ),
        );
        let before = *s.puts.lock();
        let r2 = write_tree(&s, &t2).unwrap();
        assert_eq!(*s.puts.lock() - before, 2);
        assert_eq!(read_tree(&s, &r2).unwrap(), t2);
        // Comparing them reads the two roots and the two changed dirs.
        *s.reads.lock() = 0;
        let (a, b) = differing(&s, &r, &r2).unwrap();
        assert_eq!(*s.reads.lock(), 4);
        let d = crate::snapshot::diff::diff(&a, &b, b"");
        let full = crate::snapshot::diff::diff(&t, &t2, b"");
        assert_eq!(format!("{d:?}"), format!("{full:?}"));
        // Lookups read the directories on the way only.
        *s.reads.lock() = 0;
        let (_, n, _) = lookup(&s, &r2, b"d007/f010").unwrap().unwrap();
        assert!(matches!(n, Node::File { size: 10, .. }));
        assert_eq!(*s.reads.lock(), 2);
        assert!(lookup(&s, &r2, b"d007/nope").unwrap().is_none());
        assert!(lookup(&s, &r2, b"a-b/x").unwrap().is_none());
        // Marking: the second tree adds only what the first did not have.
        let mut seen = HashSet::new();
        let mut n = 0;
        walk_new(&s, &r, &mut seen, &mut |_, _| n += 1).unwrap();
        assert_eq!(n, 22);
        n = 0;
        walk_new(&s, &r2, &mut seen, &mut |_, _| n += 1).unwrap();
        assert_eq!(n, 2);
    }

    /// A diff's pair holds only what differs, and diffs as the whole
    /// trees do: a renamed directory, changed, removed and added files.
    #[test]
    fn the_changes_of_two_trees_diff_as_the_trees() {
        let s = Mem::default();
        let t = big_tree(20, 50);
        let mut t2 = t.clone();
        // d003 renamed to z003 (same inodes), one file in it changed.
        let moved: Vec<_> = t2
            .entries
            .range(b"d003".to_vec()..b"d004".to_vec())
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect();
        for (p, e) in moved {
            t2.entries.remove(&p);
            let mut q = b"z".to_vec();
            q.extend_from_slice(&p[1..]);
            t2.entries.insert(q, e);
        }
        t2.entries.insert(
            b"z003/f001".to_vec(),
            (
                meta(0o100644, 3),
                file_node(5, Blocks::Full(vec![ChunkId::of(b"x")]), None),
            ),
        );
        t2.entries.get_mut(b"d005/f002".as_slice()).unwrap().0.mode = 0o100600;
        t2.entries.remove(b"d006/f007".as_slice());
        t2.entries.insert(
            b"d008/new".to_vec(),
            (meta(0o100644, 77), file_node(0, Blocks::Full(vec![]), None)),
        );
        let (r, r2) = (write_tree(&s, &t).unwrap(), write_tree(&s, &t2).unwrap());
        let (a, b) = differing_changes(&s, &r, &r2).unwrap();
        let d = crate::snapshot::diff::diff(&a, &b, b"");
        assert_eq!(
            format!("{d:?}"),
            format!("{:?}", crate::snapshot::diff::diff(&t, &t2, b""))
        );
        assert!(!d.is_empty());
        // The moved directory whole on each side (51 entries), a few
        // directory entries and the changed files; not the 50 unchanged
        // files of each directory touched.
        assert!(a.entries.len() < 70, "{}", a.entries.len());
        assert!(b.entries.len() < 70, "{}", b.entries.len());
        let (fa, _) = differing(&s, &r, &r2).unwrap();
        assert!(fa.entries.len() > 200);
    }

    #[test]
    fn a_subtree_is_read_without_the_rest() {
        let s = Mem::default();
        let t = big_tree(20, 50);
        let r = write_tree(&s, &t).unwrap();
        let restrict = |sub: &[u8], levels: Option<usize>| -> Tree {
            let mut out = t.clone();
            out.entries.retain(|p, _| {
                let on_way = p.is_empty()
                    || (sub.starts_with(p) && (sub.len() == p.len() || sub[p.len()] == b'/'));
                let below = p.len() > sub.len()
                    && p.starts_with(sub)
                    && (sub.is_empty() || p[sub.len()] == b'/');
                let deep = || {
                    p[sub.len()..].iter().filter(|c| **c == b'/').count()
                        + usize::from(sub.is_empty())
                };
                on_way || (below && levels.is_none_or(|l| deep() <= l))
            });
            out
        };
        for (sub, levels) in [
            (&b"d007"[..], None),
            (b"d007", Some(1)),
            (b"d007/f010", None),
            (b"", Some(1)),
            (b"", None),
        ] {
            *s.reads.lock() = 0;
            let got = read_subtree(&s, &r, sub, levels).unwrap();
            assert_eq!(got, restrict(sub, levels), "{sub:?} {levels:?}");
            if !sub.is_empty() {
                assert_eq!(*s.reads.lock(), 2, "{sub:?} reads the root and d007");
            }
        }
        // A path the tree does not have: nothing below the root.
        assert!(read_subtree(&s, &r, b"nope/x", None)
            .unwrap()
            .get(b"nope/x")
            .is_none());
    }

    #[test]
    fn large_files_keep_their_lists_in_segments() {
        let s = Mem::default();
        let mut t = big_tree(1, 1);
        let ids: Vec<ChunkId> = (0..3000u32)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .collect();
        t.entries.insert(
            b"big".to_vec(),
            (
                meta(0o100644, 7),
                file_node(3000 * 4096 - 5, Blocks::Full(ids.clone()), None),
            ),
        );
        let r = write_tree(&s, &t).unwrap();
        assert_eq!(read_tree(&s, &r).unwrap(), t);
        // One block changed: one segment, the root directory (and nothing
        // else) are new.
        let mut t2 = t.clone();
        let mut ids2 = ids;
        ids2[2500] = ChunkId::of(b"changed");
        t2.entries.insert(
            b"big".to_vec(),
            (
                meta(0o100644, 7),
                file_node(3000 * 4096 - 5, Blocks::Full(ids2), None),
            ),
        );
        let before = *s.puts.lock();
        let r2 = write_tree(&s, &t2).unwrap();
        assert_eq!(*s.puts.lock() - before, 2);
        assert_eq!(read_tree(&s, &r2).unwrap(), t2);
        let (_, n, _) = lookup(&s, &r2, b"big").unwrap().unwrap();
        assert_eq!(Tree::blocks_of(&n)[2500], ChunkId::of(b"changed"));
    }

    /// Content chunks round-trip inline and in segments; a directory
    /// without them is written in format 1, byte for byte as before; a
    /// chunk list that does not add up is refused.
    #[test]
    fn content_chunk_lists_round_trip_and_are_checked() {
        let s = Mem::default();
        let mut t = big_tree(1, 1);
        let r1 = write_tree(&s, &t).unwrap();
        let obj = load_dir(&s, &r1.dir, t.block_size).unwrap();
        assert!(obj.encode().unwrap().starts_with(&[DIR_FORMAT_V1 as u8]));
        // Format 1 as its own types encode it: the same bytes.
        let old = v1::DirObject {
            format: DIR_FORMAT_V1,
            entries: obj
                .entries
                .iter()
                .map(|e| v1::DirEntry {
                    name: e.name.clone(),
                    meta: e.meta.clone(),
                    node: match &e.node {
                        DNode::File {
                            size,
                            blocks,
                            segments,
                            link,
                            ..
                        } => v1::DNode::File {
                            size: *size,
                            blocks: blocks.clone(),
                            segments: segments.clone(),
                            link: *link,
                        },
                        DNode::Dir(r) => v1::DNode::Dir(r.clone()),
                        DNode::Symlink { target } => v1::DNode::Symlink {
                            target: target.clone(),
                        },
                        DNode::Special { rdev } => v1::DNode::Special { rdev: *rdev },
                    },
                })
                .collect(),
        };
        assert_eq!(postcard::to_stdvec(&old).unwrap(), obj.encode().unwrap());
        for n in [3usize, 2500] {
            let ids: Vec<ChunkId> = (0..n as u32)
                .map(|i| ChunkId::of(&i.to_le_bytes()))
                .collect();
            let lens: Vec<u32> = (0..n as u32).map(|i| 1 + i % 4000).collect();
            let size = lens.iter().map(|l| *l as u64).sum();
            t.entries.insert(
                b"sized".to_vec(),
                (
                    meta(0o100644, 3),
                    file_node(size, Blocks::Sized { ids, lens }, None),
                ),
            );
            let r = write_tree(&s, &t).unwrap();
            assert_eq!(read_tree(&s, &r).unwrap(), t);
            let (_, got, _) = lookup(&s, &r, b"sized").unwrap().unwrap();
            assert_eq!(got, t.get(b"sized").unwrap().1);
            let root = load_dir(&s, &r.dir, t.block_size).unwrap();
            assert!(root.encode().unwrap().starts_with(&[DIR_FORMAT as u8]));
        }
        let bad = |lens: Vec<u32>, size: u64| {
            let ids = vec![ChunkId::of(b"x"); lens.len()];
            let o = DirObject {
                format: DIR_FORMAT,
                entries: vec![DirEntry {
                    name: b"f".to_vec(),
                    meta: meta(0o100644, 1),
                    node: DNode::File {
                        size,
                        blocks: ids,
                        segments: vec![],
                        link: None,
                        lens: Some(lens),
                    },
                }],
            };
            DirObject::decode(&o.encode().unwrap(), 4096)
        };
        assert!(bad(vec![100, 200], 300).is_ok());
        assert!(bad(vec![100, 200], 301).is_err());
        assert!(bad(vec![0, 300], 300).is_err());
        assert!(bad(vec![5000], 5000).is_err());
    }

    #[test]
    fn a_memo_writes_only_the_dirty_directories() {
        let s = Mem::default();
        let t = big_tree(30, 20);
        let mut memo = DirMemo::default();
        let r = write_tree_with(&s, &t, &mut memo, None).unwrap();
        assert_eq!(r, write_tree(&s, &t).unwrap());
        assert_eq!(memo.len(), 32); // root, d000..d029, a
                                    // A file changed, one added in a new directory, a directory gone.
        let mut t2 = t.clone();
        t2.entries.insert(
            b"d003/f001".to_vec(),
            (
                meta(0o100644, 9),
                file_node(1, Blocks::Full(vec![ChunkId::of(b"x")]), None),
            ),
        );
        t2.entries
            .insert(b"new".to_vec(), (meta(0o40755, 9), Node::Dir));
        t2.entries.insert(
            b"new/f".to_vec(),
            (meta(0o100644, 9), file_node(0, Blocks::Full(vec![]), None)),
        );
        let gone: Vec<Vec<u8>> = t2.descendants(b"d009").map(|(k, _)| k.clone()).collect();
        for k in gone {
            t2.entries.remove(&k);
        }
        t2.entries.remove(b"d009".as_slice());
        let changed: Vec<&[u8]> = vec![b"d003/f001", b"new", b"new/f", b"d009"];
        let dirty = dirty_dirs(changed);
        *s.reads.lock() = 0;
        let before = *s.puts.lock();
        let r2 = write_tree_with(&s, &t2, &mut memo, Some(&dirty)).unwrap();
        // The root, d003 and new: nothing else encoded or stored.
        assert_eq!(*s.puts.lock() - before, 3);
        assert_eq!(
            r2,
            write_tree(&s, &t2).unwrap(),
            "same root as a whole write"
        );
        assert_eq!(read_tree(&s, &r2).unwrap(), t2);
        // Children are found by jumping over subtrees, in any byte order.
        let kids: Vec<&[u8]> = children_of(&t2, b"")
            .into_iter()
            .map(|k| k.as_slice())
            .collect();
        assert!(kids.contains(&b"a".as_slice()) && kids.contains(&b"a-b".as_slice()));
        assert_eq!(kids.len(), 30 - 1 + 3);
    }

    #[test]
    fn damaged_objects_are_refused() {
        let s = Mem::default();
        let bad = |entries: Vec<DirEntry>| {
            let o = DirObject {
                format: DIR_FORMAT,
                entries,
            };
            DirObject::decode(&o.encode().unwrap(), 4096)
        };
        let e = |name: &[u8], node: DNode| DirEntry {
            name: name.to_vec(),
            meta: meta(0o100644, 1),
            node,
        };
        let f = |size| DNode::File {
            size,
            blocks: vec![],
            segments: vec![],
            link: None,
            lens: None,
        };
        assert!(bad(vec![e(b"..", f(0))]).is_err());
        assert!(bad(vec![e(b"a/b", f(0))]).is_err());
        assert!(bad(vec![e(b"b", f(0)), e(b"a", f(0))]).is_err());
        assert!(bad(vec![e(b"a", f(0)), e(b"a", f(0))]).is_err());
        assert!(bad(vec![e(b"a", f(1 << 40))]).is_err());
        assert!(bad(vec![e(b"a", f(0))]).is_ok());
        // A reference claiming more than its parts hold.
        let r = put_object(&s, b"xyz").unwrap();
        let lie = DirRef { len: 99, ..r };
        assert!(load_dir(&s, &lie, 4096).is_err());
        assert!(DirObject::decode(&[0xff; 8], 4096).is_err());
    }
}
