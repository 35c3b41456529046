//! Routing in the live mount: which requests the live filesystem answers
//! and which the snapshot views (`.snapshots` and everything below it).
//! This is the one place that decides; the adapter only matches requests
//! and replies, and tests drive the router without a kernel mount.
//!
//! Rules: view node ids and view handles carry their own ranges
//! ([`is_view`], [`FH_TAG`]); `.snapshots` is found by name in the live
//! root only; anything that would change a view answers EROFS; copying
//! out of a view with `copy_file_range` answers EXDEV (the kernel falls
//! back to read and write).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Errno, FileAttr, FileType, INodeNo};

use super::kernel::Statfs;
use crate::fs::live::{FsResult, LiveFs, OpenReply, SNAPSHOTS_DIR};
use crate::util::sys::fuse_file_type;
use crate::views::{is_view, Mapped, ReadData, RootMap, Views, FH_TAG, SNAPDIR};

/// Offset cookie of the synthetic `.snapshots` entry listed first in the
/// root (`--snapdir visible`); the real entries restart from 0 after it.
pub const SNAPDIR_COOKIE: u64 = 0x7fff_ffff_ffff_fff0;

pub struct Router {
    pub fs: Arc<LiveFs>,
    /// The snapshot views served under `.snapshots`.
    pub views: Option<Arc<Views>>,
    /// List `.snapshots` in the root (it is always reachable by name).
    pub snapdir_visible: bool,
}

/// How an open was answered.
pub enum Opened {
    Live(OpenReply),
    /// A snapshot file: its pages may be kept across opens.
    View(u64),
}

impl Router {
    fn ttl(&self) -> Duration {
        self.fs.opts.ttl
    }

    fn mapped(&self) -> Option<Mapped<'_>> {
        self.views.as_deref().map(|views| Mapped {
            views,
            map: RootMap::BELOW_LIVE_ROOT,
        })
    }

    /// The views, if `ino` is one of their nodes.
    fn view(&self, ino: u64) -> Option<Mapped<'_>> {
        if is_view(ino) {
            self.mapped()
        } else {
            None
        }
    }

    /// The views, if `fh` is one of their handles.
    fn view_handle(&self, fh: u64) -> Option<Mapped<'_>> {
        if fh & FH_TAG != 0 {
            self.mapped()
        } else {
            None
        }
    }

    /// The live filesystem, for a change to node `ino` (views: EROFS).
    pub fn live(&self, ino: u64) -> FsResult<&LiveFs> {
        if is_view(ino) {
            Err(Errno::EROFS)
        } else {
            Ok(&self.fs)
        }
    }

    /// The live filesystem, for a change through handle `fh`.
    pub fn live_handle(&self, fh: u64) -> FsResult<&LiveFs> {
        if fh & FH_TAG != 0 {
            Err(Errno::EROFS)
        } else {
            Ok(&self.fs)
        }
    }

    /// The live filesystem, for a change naming two nodes.
    pub fn live2(&self, a: u64, b: u64) -> FsResult<&LiveFs> {
        self.live(a)?;
        self.live(b)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<(FileAttr, Duration)> {
        if let Some(v) = self.view(parent) {
            return v.lookup(parent, name);
        }
        if let Some(v) = &self.views {
            if parent == INodeNo::ROOT.0 && name.as_bytes() == SNAPSHOTS_DIR.as_bytes() {
                return v.getattr(SNAPDIR);
            }
        }
        Ok((self.fs.lookup(parent, name)?.attr, self.ttl()))
    }

    pub fn forget(&self, ino: u64, nlookup: u64) {
        if !is_view(ino) {
            self.fs.forget(ino, nlookup);
        }
    }

    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> FsResult<(FileAttr, Duration)> {
        match self.view(ino) {
            Some(v) => v.getattr(ino),
            None => Ok((self.fs.getattr(ino, fh)?, self.ttl())),
        }
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        match self.view(ino) {
            Some(v) => v.readlink(ino),
            None => self.fs.readlink(ino),
        }
    }

    pub fn open(
        &self,
        ino: u64,
        flags: i32,
        pid: u32,
        backer: crate::fs::live::Backer<'_>,
    ) -> FsResult<Opened> {
        match self.view(ino) {
            Some(v) => v.open(ino, flags).map(Opened::View),
            None => self.fs.open(ino, flags, pid, backer).map(Opened::Live),
        }
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        match self.view_handle(fh) {
            Some(v) => v.read(fh, offset, size),
            None => self.fs.read(fh, offset, size).map(ReadData::Owned),
        }
    }

    /// A close(2) of a descriptor of `fh`.
    pub fn flush(&self, fh: u64) {
        if fh & FH_TAG == 0 {
            self.fs.flush(fh);
        }
    }

    pub fn release(&self, fh: u64) {
        if fh & FH_TAG != 0 {
            if let Some(v) = self.view_handle(fh) {
                v.release(fh);
            }
            return;
        }
        self.fs.release(fh);
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        if fh & FH_TAG != 0 {
            return Ok(());
        }
        self.fs.fsync(fh, datasync)
    }

    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        if is_view(ino) {
            return Ok(FH_TAG);
        }
        self.fs.opendir(ino)
    }

    pub fn releasedir(&self, fh: u64) {
        if fh & FH_TAG == 0 {
            self.fs.release(fh);
        }
    }

    pub fn fsyncdir(&self, fh: u64) -> FsResult<()> {
        if fh & FH_TAG != 0 {
            return Ok(());
        }
        self.fs.fsyncdir(fh)
    }

    /// Whether `.snapshots` is listed first in the root, and where the
    /// live entries start: `None` when the listing should stop (the
    /// reply is full).
    fn snapdir_first(&self, ino: u64, offset: u64, add: impl FnOnce() -> bool) -> Option<u64> {
        if !(self.snapdir_visible && self.views.is_some() && ino == INodeNo::ROOT.0) {
            return Some(offset);
        }
        match offset {
            0 if add() => None,
            0 => Some(0),
            SNAPDIR_COOKIE => Some(0),
            o => Some(o),
        }
    }

    /// List directory `ino` (open as `fh`) from `offset`: `add(node, next
    /// offset, kind, name)` returns true when the reply is full.
    pub fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &[u8]) -> bool,
    ) -> FsResult<()> {
        if let Some(v) = self.view(ino) {
            return v.readdir(ino, offset, add);
        }
        let Some(offset) = self.snapdir_first(ino, offset, || {
            add(
                SNAPDIR,
                SNAPDIR_COOKIE,
                FileType::Directory,
                SNAPSHOTS_DIR.as_bytes(),
            )
        }) else {
            return Ok(());
        };
        self.fs.readdir(fh, offset, |name, ino, kind, next| {
            add(ino, next, fuse_file_type(kind), name)
        })
    }

    /// As [`Router::readdir`], with attributes; every live entry listed
    /// counts as a lookup (the kernel instantiates it).
    pub fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &[u8], &FileAttr, Duration) -> bool,
    ) -> FsResult<()> {
        if let Some(v) = self.view(ino) {
            return v.readdirplus(ino, offset, add);
        }
        let Some(offset) = self.snapdir_first(ino, offset, || {
            match self.views.as_deref().map(|v| v.getattr(SNAPDIR)) {
                Some(Ok((a, ttl))) => add(SNAPDIR_COOKIE, SNAPSHOTS_DIR.as_bytes(), &a, ttl),
                _ => false,
            }
        }) else {
            return Ok(());
        };
        let ttl = self.ttl();
        let fs = &self.fs;
        fs.readdir(fh, offset, |name, _ino, _kind, next| {
            let e = match fs.lookup_in_dir_handle(fh, name) {
                Ok(e) => e,
                // Gone since the directory was read: skip it.
                Err(_) => return false,
            };
            let counted = name != b"." && name != b"..";
            let full = add(next, name, &e.attr, ttl);
            if full && counted {
                // Not sent: the kernel will not know it.
                fs.forget(e.attr.ino.0, 1);
            }
            full
        })
    }

    pub fn statfs(&self, ino: u64) -> FsResult<Statfs> {
        match self.view(ino) {
            Some(v) => v.statfs().map(|s| Statfs::read_only(&s)),
            None => self.fs.statfs().map(|s| Statfs::of(&s)),
        }
    }

    /// An xattr's value (`size` 0: the caller asks for its length).
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> FsResult<Vec<u8>> {
        match self.view(ino) {
            Some(v) => v.getxattr(ino, name, size),
            None => self.fs.getxattr(ino, name, size),
        }
    }

    pub fn listxattr(&self, ino: u64, size: u32) -> FsResult<Vec<u8>> {
        match self.view(ino) {
            Some(v) => v.listxattr(ino, size),
            None => self.fs.listxattr(ino, size),
        }
    }

    pub fn access(&self, ino: u64, mask: i32) -> FsResult<()> {
        if is_view(ino) {
            return if mask & libc::W_OK != 0 {
                Err(Errno::EROFS)
            } else {
                Ok(())
            };
        }
        self.fs.access(ino, mask)
    }

    /// An ioctl: the live filesystem's file-flag ioctls; ENOTTY for
    /// snapshot files and anything else.
    pub fn ioctl(&self, fh: u64, cmd: u32, in_data: &[u8], out_size: u32) -> FsResult<Vec<u8>> {
        if fh & FH_TAG != 0 {
            return Err(Errno::ENOTTY);
        }
        self.fs.ioctl(fh, cmd, in_data, out_size)
    }

    pub fn lseek(&self, ino: u64, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        match self.view_handle(fh) {
            Some(v) => v.lseek(ino, offset, whence),
            None => self.fs.lseek(fh, offset, whence),
        }
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
        pid: u32,
    ) -> FsResult<u32> {
        let fs = self.live_handle(fh_out)?;
        if fh_in & FH_TAG != 0 {
            // Copying out of a snapshot: let the kernel fall back to
            // read + write.
            return Err(Errno::EXDEV);
        }
        fs.copy_file_range(fh_in, offset_in, fh_out, offset_out, len, pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::live::LiveOptions;
    use crate::repo::Repository;
    use crate::track::{Journal, Tracker};
    use crate::views::ViewOptions;

    struct Fixture {
        _tmp: tempfile::TempDir,
        router: Router,
    }

    /// A router over a live filesystem and the views of a fresh
    /// repository, with no kernel mount.
    fn fixture(snapdir_visible: bool) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let backing = tmp.path().join("backing");
        std::fs::create_dir(&backing).unwrap();
        std::fs::write(backing.join("f"), b"live").unwrap();
        let repo_dir = tmp.path().join("repo");
        Repository::init(&repo_dir, 64 << 10, 3).unwrap();
        let repo = Arc::new(Repository::open(&repo_dir).unwrap());
        let journal =
            Arc::new(Journal::open(repo.index().journal_tree().unwrap(), 64 << 10).unwrap());
        let tracker = Tracker::new(journal);
        let root = crate::util::sys::open_dir_path(&backing).unwrap();
        let fs = Arc::new(
            LiveFs::new(
                root,
                tracker.recorder(),
                LiveOptions {
                    passthrough_reads: false,
                    ..LiveOptions::default()
                },
            )
            .unwrap(),
        );
        let views = Views::new(repo, 1 << 20, ViewOptions::default());
        Fixture {
            _tmp: tmp,
            router: Router {
                fs,
                views: Some(views),
                snapdir_visible,
            },
        }
    }

    fn names(r: &Router, ino: u64) -> Vec<String> {
        let fh = r.opendir(ino).unwrap();
        let mut out = Vec::new();
        r.readdir(ino, fh, 0, |_, _, _, name| {
            out.push(String::from_utf8_lossy(name).into_owned());
            false
        })
        .unwrap();
        r.releasedir(fh);
        out.sort();
        out
    }

    #[test]
    fn snapshots_are_found_by_name_in_the_root_only() {
        let f = fixture(false);
        let r = &f.router;
        let (a, _) = r.lookup(INodeNo::ROOT.0, OsStr::new(".snapshots")).unwrap();
        assert_eq!(a.ino.0, SNAPDIR);
        assert!(is_view(a.ino.0));
        let (live, _) = r.lookup(INodeNo::ROOT.0, OsStr::new("f")).unwrap();
        assert!(!is_view(live.ino.0));
        // Hidden from the listing unless asked for.
        assert!(!names(r, INodeNo::ROOT.0).contains(&".snapshots".to_string()));
        let visible = fixture(true);
        assert!(names(&visible.router, INodeNo::ROOT.0).contains(&".snapshots".to_string()));
    }

    #[test]
    fn views_are_read_only_and_their_handles_are_routed_to_them() {
        let f = fixture(true);
        let r = &f.router;
        assert_eq!(r.live(SNAPDIR).err(), Some(Errno::EROFS));
        assert_eq!(r.live2(INodeNo::ROOT.0, SNAPDIR).err(), Some(Errno::EROFS));
        assert_eq!(r.live_handle(FH_TAG | 3).err(), Some(Errno::EROFS));
        assert_eq!(r.access(SNAPDIR, libc::W_OK), Err(Errno::EROFS));
        assert_eq!(r.access(SNAPDIR, libc::R_OK), Ok(()));
        assert_eq!(
            r.copy_file_range(FH_TAG | 1, 0, 1, 0, 10, 0),
            Err(Errno::EXDEV)
        );
        assert_eq!(
            r.copy_file_range(1, 0, FH_TAG | 1, 0, 10, 0),
            Err(Errno::EROFS)
        );
        // The views' own directory (no snapshots yet).
        let (a, _) = r.getattr(SNAPDIR, None).unwrap();
        assert_eq!(a.kind, FileType::Directory);
        assert_eq!(r.opendir(SNAPDIR).unwrap() & FH_TAG, FH_TAG);
        // A live file opens, reads and releases through the live side.
        let (fa, _) = r.lookup(INodeNo::ROOT.0, OsStr::new("f")).unwrap();
        let Opened::Live(OpenReply::Plain { fh, .. }) = r
            .open(fa.ino.0, libc::O_RDONLY, 0, &|_| {
                Err(std::io::Error::from_raw_os_error(libc::EPERM))
            })
            .unwrap()
        else {
            panic!("a plain live open expected");
        };
        assert_eq!(&*r.read(fh, 0, 100).unwrap(), b"live");
        r.release(fh);
    }
}
