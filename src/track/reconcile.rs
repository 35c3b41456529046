//! Mount-time reconciliation: find what changed in the backing directory while
//! it was not mounted (or what an unclean stop may have lost from the
//! journal) by comparing it with the latest snapshot, and mark it dirty.
//!
//! A file is unchanged when its size, mtime, ctime and inode equal those
//! recorded in the latest snapshot (`snapshot::unchanged`, the rule
//! captures use too); anything else (including a file
//! written through the mount whose journal records were lost in a crash,
//! whose ctime is then newer than recorded) is marked entirely dirty.
//! New entries are marked created, and directories whose entries differ
//! are marked, so that removals are found too.

use std::os::fd::OwnedFd;

use super::journal::{FileKey, Journal};
use crate::error::Result;
use crate::snapshot::manifest::{mtime_of, Meta};
use crate::snapshot::unchanged::unchanged_by_stat;
use crate::snapshot::{Node, Tree};
use crate::util::display::display_path;
use crate::util::sys;
use crate::util::walk::walk_dirs;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReconcileReport {
    pub entries_checked: u64,
    pub files_marked: u64,
    pub dirs_marked: u64,
}

/// A directory's entries as the check compares them: name, metadata and
/// node, sorted by name.
pub type DirEntries = Vec<(Vec<u8>, (Meta, Node))>;

/// The latest snapshot, as the check reads it: one directory at a time.
pub trait SnapshotDirs {
    /// The root's own entry, when the snapshot recorded one.
    fn root(&mut self) -> Option<(Meta, Node)>;
    /// The entries of directory `dir`, sorted by name (none when the
    /// snapshot has no directory there). File block lists may be left
    /// out: only sizes and metadata are compared.
    fn children(&mut self, dir: &[u8]) -> Result<DirEntries>;
    /// A directory of the snapshot that the backing directory no longer
    /// holds as a directory (it is not walked).
    fn not_walked(&mut self, _dir: &[u8]) -> Result<()> {
        Ok(())
    }
}

/// A snapshot's tree held whole.
impl SnapshotDirs for &Tree {
    fn root(&mut self) -> Option<(Meta, Node)> {
        self.get(b"").cloned()
    }

    fn children(&mut self, dir: &[u8]) -> Result<DirEntries> {
        Ok(Tree::children(self, dir)
            .map(|(n, e)| (n.to_vec(), e.clone()))
            .collect())
    }
}

/// The directory being compared: its path and key, the snapshot's
/// entries of it, and which of them the backing directory still has.
struct Current {
    path: Vec<u8>,
    key: FileKey,
    base: DirEntries,
    seen: Vec<bool>,
}

fn start(snap: &mut dyn SnapshotDirs, path: &[u8], fd: &OwnedFd) -> Result<Current> {
    let st = rustix::fs::fstat(fd)
        .map_err(|e| crate::Error::io("stat", display_path(path), e.into()))?;
    let base = snap.children(path)?;
    Ok(Current {
        path: path.to_vec(),
        key: FileKey::of(&st),
        seen: vec![false; base.len()],
        base,
    })
}

/// Compare the tree under `root` with the snapshot `snap` and mark
/// differences in the journal, one directory at a time (memory follows
/// the largest directory, not the tree). `skip` is a directory not to
/// descend into (the repository).
pub fn mark_changes_since(
    root: OwnedFd,
    snap: &mut dyn SnapshotDirs,
    journal: &Journal,
    skip: Option<FileKey>,
) -> Result<ReconcileReport> {
    let mut first = ReconcileReport::default();
    let root_st = rustix::fs::fstat(&root).map_err(|e| crate::Error::io("stat", "/", e.into()))?;
    let root_key = FileKey::of(&root_st);
    // The root itself: its entries changed if its times did.
    if let Some((m, _)) = snap.root() {
        if m.mtime != mtime_of(&root_st) || m.ctime_ns != sys::ctime_ns(&root_st) {
            journal.record_all_entries(&root_key);
            first.dirs_marked += 1;
        }
    }
    // The walk visits a directory's entries together, then calls `done`
    // for it: the snapshot's entries of one directory are held at a time.
    let cur: std::cell::RefCell<Option<Current>> = std::cell::RefCell::new(None);
    let snap = std::cell::RefCell::new(snap);
    let report = std::cell::RefCell::new(first);
    walk_dirs(
        root,
        |e| {
            let st = e.stat;
            let key = FileKey::of(st);
            if Some(key) == skip {
                return Ok(false);
            }
            let mut r = report.borrow_mut();
            r.entries_checked += 1;
            let mut c = cur.borrow_mut();
            if c.is_none() {
                let parent = e
                    .path
                    .iter()
                    .rposition(|b| *b == b'/')
                    .map_or(&b""[..], |i| &e.path[..i]);
                *c = Some(start(&mut **snap.borrow_mut(), parent, e.dir)?);
            }
            let Some(c) = c.as_mut() else {
                return Ok(false);
            };
            let is_dir = sys::file_type(st.st_mode) == libc::S_IFDIR;
            let found = c
                .base
                .binary_search_by(|(n, _)| n.as_slice().cmp(e.name))
                .ok();
            match found {
                None => {
                    journal.record_created(&key);
                    journal.record_entry(&c.key, e.name);
                    if sys::file_type(st.st_mode) == libc::S_IFREG {
                        journal.record_all_from(&key, 0);
                    }
                    r.files_marked += 1;
                }
                Some(i) => {
                    c.seen[i] = true;
                    let base = &c.base[i].1;
                    let m = &base.0;
                    let same_kind = sys::file_type(m.mode) == sys::file_type(st.st_mode);
                    if matches!(base.1, Node::Dir) && !is_dir {
                        snap.borrow_mut().not_walked(e.path)?;
                    }
                    if !unchanged_by_stat(base, st) {
                        if !same_kind || m.ino != st.st_ino {
                            // Replaced by another object: the entry
                            // changed, and nothing of the object comes
                            // from the snapshot (even if it got the
                            // number of one the snapshot holds).
                            journal.record_entry(&c.key, e.name);
                            journal.record_created(&key);
                        }
                        if is_dir {
                            journal.record_all_entries(&key);
                            journal.record_meta(&key);
                            r.dirs_marked += 1;
                        } else {
                            if sys::file_type(st.st_mode) == libc::S_IFREG {
                                journal.record_all_from(&key, 0);
                            }
                            journal.record_meta(&key);
                            r.files_marked += 1;
                        }
                    }
                }
            }
            Ok(is_dir)
        },
        |path, fd| {
            // An empty directory had no entry to start it.
            let c = match cur.borrow_mut().take() {
                Some(c) if c.path == path => c,
                _ => start(&mut **snap.borrow_mut(), path, fd)?,
            };
            // A directory that lost entries: mark it (its mtime usually
            // changed too, but not if it was restored with old times).
            let mut gone = false;
            for (i, (name, (_, node))) in c.base.iter().enumerate() {
                if !c.seen[i] {
                    gone = true;
                    if matches!(node, Node::Dir) {
                        let p = if path.is_empty() {
                            name.clone()
                        } else {
                            [path, b"/", name].concat()
                        };
                        snap.borrow_mut().not_walked(&p)?;
                    }
                }
            }
            if gone {
                journal.record_all_entries(&c.key);
                report.borrow_mut().dirs_marked += 1;
            }
            Ok(())
        },
    )?;
    Ok(report.into_inner())
}
