//! A depth-first walk of a directory tree through directory descriptors
//! (`openat` with `O_NOFOLLOW`), so a concurrent rename cannot lead it
//! outside the tree. Entries that vanish while walking are skipped.

use std::os::fd::OwnedFd;

use crate::error::{Error, IoContext, Result};
use crate::util::display::display_path;
use crate::util::sys;

/// One entry met by [`walk`].
pub struct WalkEntry<'a> {
    /// The directory holding the entry.
    pub dir: &'a OwnedFd,
    pub name: &'a [u8],
    /// Path relative to the root (`a/b/c`).
    pub path: &'a [u8],
    pub stat: &'a rustix::fs::Stat,
    /// For a directory: its own descriptor (opened without following).
    pub dir_fd: Option<&'a OwnedFd>,
}

/// Walk everything below `root`, calling `visit` for each entry in name
/// order within each directory. For a directory, `visit` returns whether
/// to descend into it.
pub fn walk(root: OwnedFd, visit: impl FnMut(&WalkEntry<'_>) -> Result<bool>) -> Result<()> {
    walk_dirs(root, visit, |_, _| Ok(()))
}

/// [`walk`], calling `done` with each directory's path (`""` for the
/// root) and descriptor once all its entries were visited, before any
/// other directory's entries: a directory is seen whole, one at a time.
pub fn walk_dirs(
    root: OwnedFd,
    mut visit: impl FnMut(&WalkEntry<'_>) -> Result<bool>,
    mut done: impl FnMut(&[u8], &OwnedFd) -> Result<()>,
) -> Result<()> {
    let mut stack: Vec<(OwnedFd, Vec<u8>)> = vec![(root, Vec::new())];
    while let Some((dfd, dpath)) = stack.pop() {
        let subdirs = list_dir(&dfd, &dpath, &mut visit)?;
        done(&dpath, &dfd)?;
        // Reverse so the stack pops subdirectories in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// The names in directory `dfd` (at `dpath`, for errors), sorted,
/// without `.` and `..`.
pub fn read_names(dfd: &OwnedFd, dpath: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    let dir = rustix::fs::Dir::read_from(dfd).ctx("read directory", display_path(dpath))?;
    for e in dir {
        let e = e.ctx("read directory", display_path(dpath))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

/// Visit the entries of one directory in name order; returns the
/// subdirectories to descend into.
fn list_dir(
    dfd: &OwnedFd,
    dpath: &[u8],
    visit: &mut impl FnMut(&WalkEntry<'_>) -> Result<bool>,
) -> Result<Vec<(OwnedFd, Vec<u8>)>> {
    let names = read_names(dfd, dpath)?;
    let mut subdirs = Vec::new();
    for name in names {
        let path = if dpath.is_empty() {
            name.clone()
        } else {
            [dpath, b"/", &name[..]].concat()
        };
        let st = match sys::lstat_at(dfd, &name) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(Error::io("stat", display_path(&path), e.into())),
        };
        let sub = if sys::file_type(st.st_mode) == libc::S_IFDIR {
            match sys::open_dir_at(dfd, &name) {
                Ok(fd) => Some(fd),
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(Error::io("open directory", display_path(&path), e.into())),
            }
        } else {
            None
        };
        let descend = visit(&WalkEntry {
            dir: dfd,
            name: &name,
            path: &path,
            stat: &st,
            dir_fd: sub.as_ref(),
        })?;
        if let (Some(fd), true) = (sub, descend) {
            subdirs.push((fd, path));
        }
    }
    Ok(subdirs)
}
