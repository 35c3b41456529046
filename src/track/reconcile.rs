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

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;

use super::journal::{FileKey, Journal};
use crate::error::Result;
use crate::snapshot::manifest::mtime_of;
use crate::snapshot::unchanged::unchanged_by_stat;
use crate::snapshot::Tree;
use crate::util::sys;
use crate::util::walk::walk;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReconcileReport {
    pub entries_checked: u64,
    pub files_marked: u64,
    pub dirs_marked: u64,
}

/// Compare the tree under `root` with `tree` and mark differences in the
/// journal. `skip` is a directory not to descend into (the repository).
pub fn mark_changes_since(
    root: OwnedFd,
    tree: &Tree,
    journal: &Journal,
    skip: Option<FileKey>,
) -> Result<ReconcileReport> {
    let mut r = ReconcileReport::default();
    let root_st = rustix::fs::fstat(&root).map_err(|e| crate::Error::io("stat", "/", e.into()))?;
    let root_key = FileKey::of(&root_st);
    // The root itself: its entries changed if its times did.
    if let Some((m, _)) = tree.get(b"") {
        if m.mtime != mtime_of(&root_st) || m.ctime_ns != sys::ctime_ns(&root_st) {
            journal.record_all_entries(&root_key);
            r.dirs_marked += 1;
        }
    }
    // Directories by path (to find an entry's parent).
    let mut dir_key_of: HashMap<Vec<u8>, FileKey> = HashMap::new();
    dir_key_of.insert(Vec::new(), root_key);
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut dir_keys: Vec<(Vec<u8>, FileKey)> = vec![(Vec::new(), root_key)];
    walk(root, |e| {
        let st = e.stat;
        let key = FileKey::of(st);
        if Some(key) == skip {
            return Ok(false);
        }
        r.entries_checked += 1;
        seen.insert(e.path.to_vec());
        let is_dir = sys::file_type(st.st_mode) == libc::S_IFDIR;
        let parent = e
            .path
            .iter()
            .rposition(|c| *c == b'/')
            .map_or(Vec::new(), |i| e.path[..i].to_vec());
        match tree.get(e.path) {
            None => {
                journal.record_created(&key);
                if let Some(pk) = dir_key_of.get(&parent) {
                    journal.record_entry(pk, e.name);
                }
                if sys::file_type(st.st_mode) == libc::S_IFREG {
                    journal.record_all_from(&key, 0);
                }
                r.files_marked += 1;
            }
            Some(base @ (m, _)) => {
                let same_kind = sys::file_type(m.mode) == sys::file_type(st.st_mode);
                if !unchanged_by_stat(base, st) {
                    if !same_kind || m.ino != st.st_ino {
                        // Replaced by another object: the entry changed.
                        if let Some(pk) = dir_key_of.get(&parent) {
                            journal.record_entry(pk, e.name);
                        }
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
        if is_dir {
            dir_keys.push((e.path.to_vec(), key));
            dir_key_of.insert(e.path.to_vec(), key);
        }
        Ok(is_dir)
    })?;
    // A directory that lost entries: mark it (its mtime usually changed
    // too, but not if it was restored with old times).
    for (path, key) in dir_keys {
        let gone = tree.children(&path).any(|(name, _)| {
            let child = if path.is_empty() {
                name.to_vec()
            } else {
                [&path[..], b"/", name].concat()
            };
            !seen.contains(&child)
        });
        if gone {
            journal.record_all_entries(&key);
            r.dirs_marked += 1;
        }
    }
    Ok(r)
}
