//! The views as seen from one mount: a standalone mount shows a view node
//! (a snapshot's root, or `.snapshots`) as its root (node 1), and the live
//! mount shows `.snapshots` below its own root. [`Mapped`] translates node
//! ids both ways and offers each operation the FUSE adapters answer, as a
//! plain `Result`, so it can be driven without a kernel mount.

use std::ffi::OsStr;
use std::time::Duration;

use fuser::{Errno, FileAttr, FileType, INodeNo};

use super::snapshot_fs::{ReadData, VResult, Views, SNAPDIR};

/// Mapping between the kernel's node ids and view node ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootMap {
    /// The view node shown as the mount's root (`ROOT`: none, the views
    /// sit below a live root).
    pub root: u64,
}

impl RootMap {
    /// The views below the live mount's root (no node is remapped).
    pub const BELOW_LIVE_ROOT: RootMap = RootMap { root: 0 };

    pub fn inn(&self, ino: u64) -> u64 {
        if ino == INodeNo::ROOT.0 && self.root != 0 {
            self.root
        } else {
            ino
        }
    }

    pub fn out(&self, node: u64) -> u64 {
        if node == self.root {
            INodeNo::ROOT.0
        } else {
            node
        }
    }

    fn attr(&self, mut a: FileAttr) -> FileAttr {
        a.ino = INodeNo(self.out(a.ino.0));
        a
    }
}

/// The views through one mount's root map.
#[derive(Clone, Copy)]
pub struct Mapped<'v> {
    pub views: &'v Views,
    pub map: RootMap,
}

impl Mapped<'_> {
    /// The parent a view directory shows as `..` (the live mount's root
    /// for `.snapshots`).
    fn dotdot(&self, node: u64) -> u64 {
        if node == self.map.root || node == SNAPDIR {
            return INodeNo::ROOT.0;
        }
        self.map.out(self.views.parent_of(node))
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> VResult<(FileAttr, Duration)> {
        let (a, ttl) = self.views.lookup(self.map.inn(parent), name)?;
        Ok((self.map.attr(a), ttl))
    }

    pub fn getattr(&self, ino: u64) -> VResult<(FileAttr, Duration)> {
        let (a, ttl) = self.views.getattr(self.map.inn(ino))?;
        Ok((self.map.attr(a), ttl))
    }

    pub fn readlink(&self, ino: u64) -> VResult<Vec<u8>> {
        self.views.readlink(self.map.inn(ino))
    }

    pub fn open(&self, ino: u64, flags: i32) -> VResult<u64> {
        self.views.open(self.map.inn(ino), flags)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> VResult<ReadData> {
        self.views.read(fh, offset, size)
    }

    pub fn release(&self, fh: u64) {
        self.views.release(fh)
    }

    /// List `ino` from `offset` (entries are numbered from 1): `add(node,
    /// next offset, kind, name)` returns true when the reply is full.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &[u8]) -> bool,
    ) -> VResult<()> {
        let node = self.map.inn(ino);
        let entries = self.views.readdir(node, self.dotdot(node))?;
        for (i, (n, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            let shown = if name.as_slice() == b".." {
                *n
            } else {
                self.map.out(*n)
            };
            if add(shown, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        Ok(())
    }

    /// As [`Mapped::readdir`], with each entry's attributes.
    pub fn readdirplus(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(u64, &[u8], &FileAttr, Duration) -> bool,
    ) -> VResult<()> {
        let node = self.map.inn(ino);
        let entries = self.views.readdir(node, self.dotdot(node))?;
        for (i, (n, _, name)) in entries.iter().enumerate().skip(offset as usize) {
            let dots = name.as_slice() == b"." || name.as_slice() == b"..";
            // `.` and `..` are not instantiated by the kernel: the
            // directory's own attributes do, with their node ids.
            let Ok((a, ttl)) = self.views.getattr(if dots { node } else { *n }) else {
                continue;
            };
            let a = if dots {
                FileAttr {
                    ino: INodeNo(if name.as_slice() == b"." {
                        self.map.out(node)
                    } else {
                        *n
                    }),
                    ..a
                }
            } else {
                self.map.attr(a)
            };
            if add((i + 1) as u64, name, &a, ttl) {
                break;
            }
        }
        Ok(())
    }

    /// An xattr's value (`size` 0: the caller asks for its length only).
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> VResult<Vec<u8>> {
        let v = self.views.getxattr(self.map.inn(ino), name)?;
        if size != 0 && v.len() > size as usize {
            return Err(Errno::ERANGE);
        }
        Ok(v)
    }

    pub fn listxattr(&self, ino: u64, size: u32) -> VResult<Vec<u8>> {
        let v = self.views.listxattr(self.map.inn(ino))?;
        if size != 0 && v.len() > size as usize {
            return Err(Errno::ERANGE);
        }
        Ok(v)
    }

    pub fn statfs(&self) -> VResult<rustix::fs::StatVfs> {
        self.views.statfs()
    }

    /// SEEK_DATA/SEEK_HOLE on a snapshot file: all data, no holes.
    pub fn lseek(&self, ino: u64, offset: i64, whence: i32) -> VResult<i64> {
        let size = self
            .views
            .getattr(self.map.inn(ino))
            .map(|(a, _)| a.size)
            .unwrap_or(0);
        match whence {
            libc::SEEK_DATA if (offset as u64) < size => Ok(offset),
            libc::SEEK_HOLE if (offset as u64) < size => Ok(size as i64),
            libc::SEEK_DATA | libc::SEEK_HOLE => Err(Errno::ENXIO),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Everything in a view is read-only: W_OK is refused.
    pub fn access(&self, mask: i32) -> VResult<()> {
        if mask & libc::W_OK != 0 {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standalone_root_maps_both_ways() {
        let m = RootMap { root: 77 };
        assert_eq!(m.inn(INodeNo::ROOT.0), 77);
        assert_eq!(m.out(77), INodeNo::ROOT.0);
        assert_eq!(m.inn(5), 5);
        assert_eq!(m.out(5), 5);
        let live = RootMap::BELOW_LIVE_ROOT;
        assert_eq!(live.inn(INodeNo::ROOT.0), INodeNo::ROOT.0);
        assert_eq!(live.out(SNAPDIR), SNAPDIR);
    }
}
