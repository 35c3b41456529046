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

/// Visit the entries of one directory in name order; returns the
/// subdirectories to descend into.
fn list_dir(
    dfd: &OwnedFd,
    dpath: &[u8],
    visit: &mut impl FnMut(&WalkEntry<'_>) -> Result<bool>,
) -> Result<Vec<(OwnedFd, Vec<u8>)>> {
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

/// [`walk`] on `threads` threads sharing one stack of directories still
/// to list (a tree with few top-level directories is spread as well as
/// one with many). Each thread visits the entries of the directories it
/// takes with its own accumulator (from `init`); returns them all. Entry
/// order across directories is not defined (within one directory, name
/// order). The first error stops every thread.
pub fn walk_parallel<A: Send>(
    root: OwnedFd,
    threads: usize,
    init: impl Fn() -> A + Sync,
    visit: impl Fn(&mut A, &WalkEntry<'_>) -> Result<bool> + Sync,
) -> Result<Vec<A>> {
    use parking_lot::{Condvar, Mutex};
    struct Shared {
        /// Directories to list (a stack: the walk stays depth-first, so
        /// the descriptors held follow the depth, not the breadth).
        todo: Vec<(OwnedFd, Vec<u8>)>,
        /// Threads listing a directory now (they may add more).
        busy: usize,
        failed: Option<Error>,
    }
    let shared = Mutex::new(Shared {
        todo: vec![(root, Vec::new())],
        busy: 0,
        failed: None,
    });
    let cv = Condvar::new();
    let worker = || -> A {
        let mut acc = init();
        loop {
            let (dfd, dpath) = {
                let mut s = shared.lock();
                loop {
                    if s.failed.is_some() {
                        return acc;
                    }
                    if let Some(next) = s.todo.pop() {
                        s.busy += 1;
                        break next;
                    }
                    if s.busy == 0 {
                        return acc;
                    }
                    cv.wait(&mut s);
                }
            };
            // A panic is an error like the others: the thread still
            // leaves `busy`, so the other threads do not wait for it
            // forever.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                list_dir(&dfd, &dpath, &mut |e| visit(&mut acc, e))
            }))
            .unwrap_or_else(|p| {
                Err(Error::Poisoned(format!(
                    "the listing of {} panicked: {}",
                    display_path(&dpath),
                    crate::util::panic::message(&*p)
                )))
            });
            drop(dfd);
            let mut s = shared.lock();
            s.busy -= 1;
            match r {
                // Reversed: subdirectories are taken in name order.
                Ok(subdirs) => s.todo.extend(subdirs.into_iter().rev()),
                Err(e) => {
                    s.failed.get_or_insert(e);
                }
            }
            cv.notify_all();
        }
    };
    let accs: Vec<A> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| sc.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    match shared.into_inner().failed {
        Some(e) => Err(e),
        None => Ok(accs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(root: &std::path::Path) -> OwnedFd {
        sys::open_dir_at(sys::open_dir_path(root).unwrap(), b".").unwrap()
    }

    fn listed(root: &std::path::Path, threads: usize) -> Vec<Vec<u8>> {
        let fd = open(root);
        let accs = walk_parallel(fd, threads, Vec::new, |acc: &mut Vec<Vec<u8>>, e| {
            acc.push(e.path.to_vec());
            Ok(e.name != b"skip")
        })
        .unwrap();
        let mut all: Vec<Vec<u8>> = accs.into_iter().flatten().collect();
        all.sort();
        all
    }

    /// Every entry once, whatever the number of threads, and the same as
    /// the one-thread walk; a directory not descended into is not listed.
    #[test]
    fn a_parallel_walk_visits_what_the_walk_visits() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        for a in 0..7 {
            for b in 0..5 {
                let d = r.join(format!("d{a}/e{b}"));
                std::fs::create_dir_all(&d).unwrap();
                for f in 0..3 {
                    std::fs::write(d.join(format!("f{f}")), b"x").unwrap();
                }
            }
        }
        std::fs::create_dir_all(r.join("skip/inner")).unwrap();
        std::fs::create_dir(r.join("empty")).unwrap();
        std::os::unix::fs::symlink("d0", r.join("link")).unwrap();
        let mut want = Vec::new();
        walk(open(r), |e| {
            want.push(e.path.to_vec());
            Ok(e.name != b"skip")
        })
        .unwrap();
        want.sort();
        assert_eq!(want.len(), 7 + 35 + 105 + 3);
        for threads in [1, 2, 5] {
            assert_eq!(listed(r, threads), want, "{threads} threads");
        }
    }

    /// A panic in one thread ends the walk with an error instead of
    /// leaving the others waiting for it.
    #[test]
    fn a_panic_while_listing_is_an_error_not_a_hang() {
        let tmp = tempfile::tempdir().unwrap();
        for a in 0..20 {
            std::fs::create_dir_all(tmp.path().join(format!("d{a}/e"))).unwrap();
        }
        let r = walk_parallel(
            open(tmp.path()),
            2,
            || (),
            |_, e| {
                if e.path == b"d3/e" {
                    panic!("visit failed");
                }
                Ok(true)
            },
        );
        assert!(matches!(r, Err(Error::Poisoned(m)) if m.contains("visit failed")));
    }

    #[test]
    fn an_error_stops_the_parallel_walk() {
        let tmp = tempfile::tempdir().unwrap();
        for a in 0..20 {
            std::fs::create_dir_all(tmp.path().join(format!("d{a}/e"))).unwrap();
        }
        let fd = open(tmp.path());
        let r = walk_parallel(
            fd,
            2,
            || (),
            |_, e| {
                if e.path == b"d7/e" {
                    Err(Error::InvalidInput("stop".into()))
                } else {
                    Ok(true)
                }
            },
        );
        assert!(matches!(r, Err(Error::InvalidInput(m)) if m == "stop"));
    }
}
