//! The fuser adapter of standalone `mount-snapshot` mounts (mounted
//! `ro,nosuid,nodev`): match-and-reply only, over the views seen through
//! the mount's root map (`views::Mapped`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use fuser::{
    Config, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, IoctlFlags, KernelConfig,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
    Session, SessionACL,
};

use super::guard::Guarded;
use super::kernel::{Statfs, MAX_IO};
use super::view_io::ViewIo;
use crate::views::{Mapped, RootMap, Views};

/// A standalone read-only mount of one snapshot or of all of them.
pub struct ViewAdapter {
    pub views: Arc<Views>,
    pub map: RootMap,
    /// Cached or passthrough, per open (see `view_io.rs`).
    pub io: ViewIo,
}

impl ViewAdapter {
    fn mapped(&self) -> Mapped<'_> {
        Mapped {
            views: &self.views,
            map: self.map,
        }
    }
}

impl Filesystem for ViewAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(MAX_IO);
        // ACLs captured with the files are enforced by the kernel (from
        // the system.posix_acl_* xattrs the views serve).
        if config
            .add_capabilities(fuser::InitFlags::FUSE_POSIX_ACL)
            .is_err()
        {
            tracing::warn!("the kernel does not offer FUSE_POSIX_ACL: POSIX ACLs are not enforced on this snapshot mount");
        }
        // Materialized copies are served by passthrough (root only).
        if self.views.materialize.is_some() {
            let ok = config
                .capabilities()
                .contains(fuser::InitFlags::FUSE_PASSTHROUGH)
                && config
                    .add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH)
                    .is_ok()
                && config.set_max_stack_depth(2).is_ok();
            if !ok {
                tracing::info!("the kernel does not offer FUSE passthrough: snapshot files are served by the daemon");
            }
            self.io.set_enabled(&self.views, ok);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.mapped().lookup(parent.0, name) {
            Ok((a, ttl)) => reply.entry(&ttl, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.mapped().getattr(ino.0) {
            Ok((a, ttl)) => reply.attr(&ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.mapped().readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let m = self.mapped();
        match m.open(ino.0, flags.0) {
            Ok(fh) => match self
                .io
                .open(&self.views, ino.0, fh, |f| reply.open_backing(f))
            {
                Ok(Some(b)) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b),
                // Snapshot files never change: keep their pages across opens.
                Ok(None) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => {
                    m.release(fh);
                    reply.error(e)
                }
            },
            Err(e) => reply.error(e),
        }
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
        match self.mapped().read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(fuser::Errno::ENOSYS)
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
        self.io.release(fh.0);
        self.mapped().release(fh.0);
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
        let mut reply = reply;
        let r = self.mapped().readdir(ino.0, offset, |n, next, kind, name| {
            reply.add(INodeNo(n), next, kind, OsStr::from_bytes(name))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let mut reply = reply;
        let r = self
            .mapped()
            .readdirplus(ino.0, offset, |next, name, a, ttl| {
                reply.add(a.ino, next, OsStr::from_bytes(name), &ttl, a, Generation(0))
            });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        match self.mapped().statfs() {
            Ok(s) => Statfs::read_only(&s).reply(reply),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.mapped().getxattr(ino.0, name, size) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.mapped().listxattr(ino.0, size) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.mapped().access(mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Snapshot files answer every ioctl as a regular file answers one
    /// it does not know (Python's `open()` asks TCGETS of every file).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(fuser::Errno::ENOTTY)
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.mapped().lseek(ino.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
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
) -> std::io::Result<Session<Guarded<ViewAdapter>>> {
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
        Guarded(
            ViewAdapter {
                views,
                map: RootMap { root },
                io: ViewIo::default(),
            },
            super::readahead::FirstRequest::raise(mountpoint, super::readahead::READAHEAD_KIB),
        ),
        mountpoint,
        &config,
    )
}
