//! fuser glue for snapshot views: reply helpers shared with the live
//! adapter (for `.snapshots` inside the live mount), and the adapter of
//! standalone `mount-snapshot` mounts (mounted `ro,nosuid,nodev`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use fuser::{
    Config, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr, Request, Session,
    SessionACL,
};

use super::snapshot_view::{Views, SNAPDIR};

/// Mapping between the kernel's node ids and view node ids: a standalone
/// mount shows a view node (a snapshot, or `.snapshots`) as its root.
#[derive(Clone, Copy)]
pub struct RootMap {
    pub root: u64,
}

impl RootMap {
    pub fn inn(&self, ino: u64) -> u64 {
        if ino == fuser::INodeNo::ROOT.0 {
            self.root
        } else {
            ino
        }
    }

    pub fn out(&self, node: u64) -> u64 {
        if node == self.root {
            fuser::INodeNo::ROOT.0
        } else {
            node
        }
    }

    fn attr(&self, mut a: fuser::FileAttr) -> fuser::FileAttr {
        a.ino = INodeNo(self.out(a.ino.0));
        a
    }
}

/// The parent a view directory shows as `..` (the live mount's root for
/// `.snapshots`).
fn dotdot(views: &Views, node: u64, map: RootMap) -> u64 {
    if node == map.root {
        return fuser::INodeNo::ROOT.0;
    }
    if node == SNAPDIR {
        return fuser::INodeNo::ROOT.0;
    }
    map.out(views.parent_of(node))
}

pub fn lookup(views: &Views, map: RootMap, parent: u64, name: &OsStr, reply: ReplyEntry) {
    match views.lookup(map.inn(parent), name) {
        Ok((a, ttl)) => reply.entry(&ttl, &map.attr(a), Generation(0)),
        Err(e) => reply.error(e),
    }
}

pub fn getattr(views: &Views, map: RootMap, ino: u64, reply: ReplyAttr) {
    match views.getattr(map.inn(ino)) {
        Ok((a, ttl)) => reply.attr(&ttl, &map.attr(a)),
        Err(e) => reply.error(e),
    }
}

pub fn readlink(views: &Views, map: RootMap, ino: u64, reply: ReplyData) {
    match views.readlink(map.inn(ino)) {
        Ok(t) => reply.data(&t),
        Err(e) => reply.error(e),
    }
}

pub fn open(views: &Views, map: RootMap, ino: u64, flags: i32, reply: ReplyOpen) {
    match views.open(map.inn(ino), flags) {
        // Snapshot files never change: keep their pages across opens.
        Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
        Err(e) => reply.error(e),
    }
}

pub fn read(views: &Views, fh: u64, offset: u64, size: u32, reply: ReplyData) {
    match views.read(fh, offset, size) {
        Ok(d) => reply.data(&d),
        Err(e) => reply.error(e),
    }
}

pub fn readdir(views: &Views, map: RootMap, ino: u64, offset: u64, mut reply: ReplyDirectory) {
    let node = map.inn(ino);
    match views.readdir(node, dotdot(views, node, map)) {
        Ok(entries) => {
            for (i, (n, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                let shown = if name.as_slice() == b".." {
                    *n
                } else {
                    map.out(*n)
                };
                if reply.add(
                    INodeNo(shown),
                    (i + 1) as u64,
                    *kind,
                    OsStr::from_bytes(name),
                ) {
                    break;
                }
            }
            reply.ok()
        }
        Err(e) => reply.error(e),
    }
}

pub fn readdirplus(
    views: &Views,
    map: RootMap,
    ino: u64,
    offset: u64,
    mut reply: ReplyDirectoryPlus,
) {
    let node = map.inn(ino);
    match views.readdir(node, dotdot(views, node, map)) {
        Ok(entries) => {
            for (i, (n, _, name)) in entries.iter().enumerate().skip(offset as usize) {
                let dots = name.as_slice() == b"." || name.as_slice() == b"..";
                // `.` and `..` are not instantiated by the kernel: the
                // directory's own attributes do, with their node ids.
                let attr = views.getattr(if dots { node } else { *n });
                let Ok((a, ttl)) = attr else { continue };
                let a = if dots {
                    fuser::FileAttr {
                        ino: INodeNo(if name.as_slice() == b"." {
                            map.out(node)
                        } else {
                            *n
                        }),
                        ..a
                    }
                } else {
                    map.attr(a)
                };
                if reply.add(
                    a.ino,
                    (i + 1) as u64,
                    OsStr::from_bytes(name),
                    &ttl,
                    &a,
                    Generation(0),
                ) {
                    break;
                }
            }
            reply.ok()
        }
        Err(e) => reply.error(e),
    }
}

pub fn getxattr(views: &Views, map: RootMap, ino: u64, name: &OsStr, size: u32, reply: ReplyXattr) {
    match views.getxattr(map.inn(ino), name) {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

pub fn listxattr(views: &Views, map: RootMap, ino: u64, size: u32, reply: ReplyXattr) {
    match views.listxattr(map.inn(ino)) {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

pub fn statfs(views: &Views, reply: ReplyStatfs) {
    match views.statfs() {
        Ok(s) => reply.statfs(
            s.f_blocks,
            0,
            0,
            s.f_files,
            0,
            s.f_bsize as u32,
            255,
            s.f_frsize as u32,
        ),
        Err(e) => reply.error(e),
    }
}

/// SEEK_DATA/SEEK_HOLE on a snapshot file: all data, no holes.
pub fn lseek(views: &Views, fh: u64, offset: i64, whence: i32, size: u64, reply: ReplyLseek) {
    let _ = (views, fh);
    match whence {
        libc::SEEK_DATA if (offset as u64) < size => reply.offset(offset),
        libc::SEEK_HOLE if (offset as u64) < size => reply.offset(size as i64),
        libc::SEEK_DATA | libc::SEEK_HOLE => reply.error(Errno::ENXIO),
        _ => reply.error(Errno::EINVAL),
    }
}

/// A standalone read-only mount of one snapshot or of all of them.
pub struct ViewAdapter {
    pub views: Arc<Views>,
    pub map: RootMap,
}

impl Filesystem for ViewAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(super::adapter::MAX_IO);
        // ACLs captured with the files are enforced by the kernel (from
        // the system.posix_acl_* xattrs the views serve).
        if config
            .add_capabilities(fuser::InitFlags::FUSE_POSIX_ACL)
            .is_err()
        {
            tracing::warn!("the kernel does not offer FUSE_POSIX_ACL: POSIX ACLs are not enforced on this snapshot mount");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        lookup(&self.views, self.map, parent.0, name, reply)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        getattr(&self.views, self.map, ino.0, reply)
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        readlink(&self.views, self.map, ino.0, reply)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        open(&self.views, self.map, ino.0, flags.0, reply)
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        read(&self.views, fh.0, offset, size, reply)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.views.release(fh.0);
        reply.ok()
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty())
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        readdir(&self.views, self.map, ino.0, offset, reply)
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        readdirplus(&self.views, self.map, ino.0, offset, reply)
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        statfs(&self.views, reply)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        getxattr(&self.views, self.map, ino.0, name, size, reply)
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        listxattr(&self.views, self.map, ino.0, size, reply)
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.bits() & libc::W_OK != 0 {
            reply.error(Errno::EROFS)
        } else {
            reply.ok()
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let size = self
            .views
            .getattr(self.map.inn(ino.0))
            .map(|(a, _)| a.size)
            .unwrap_or(0);
        lseek(&self.views, fh.0, offset, whence, size, reply)
    }
}

/// Mount a standalone, read-only view of `root` (a snapshot's root node
/// or `SNAPDIR`) on `mountpoint`. The session is returned unstarted.
pub fn mount_views(
    views: Arc<Views>,
    root: u64,
    mountpoint: &Path,
    fsname: &str,
    allow_other: bool,
) -> std::io::Result<Session<super::guard::Guarded<ViewAdapter>>> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(fsname.to_string()),
        MountOption::Subtype("rewindfs".into()),
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::DefaultPermissions,
    ];
    config.acl = if allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(4);
    config.clone_fd = true;
    Session::new(
        super::guard::Guarded(ViewAdapter {
            views,
            map: RootMap { root },
        }),
        mountpoint,
        &config,
    )
}
