//! The fuser adapter of the live mount: thin, match-and-reply only.
//! Every method asks the [`Router`] (which decides between the live
//! filesystem and the snapshot views) and answers its value or errno.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fuser::{
    AccessFlags, CopyFileRangeFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::kernel::MAX_IO;
use super::router::{Opened, Router};
use crate::fs::creds::Caller;
use crate::fs::live::OpenReply;

pub struct LiveAdapter {
    pub router: Router,
    pub writeback_cache: bool,
    /// The kernel sends creation modes without applying the umask
    /// (FUSE_DONT_MASK): the handler applies the caller's umask, so that
    /// a parent's default ACL replaces it exactly as on the backing
    /// filesystem.
    pub dont_mask: bool,
    /// How opens of `.snapshots` files are answered (see `view_io.rs`).
    pub view_io: super::view_io::ViewIo,
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: None,
    }
}

/// The attributes of a negative entry reply (node id 0).
fn negative_attr() -> fuser::FileAttr {
    let t = std::time::UNIX_EPOCH;
    fuser::FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn reply_empty(r: Result<(), fuser::Errno>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn reply_entry(r: Result<(fuser::FileAttr, std::time::Duration), fuser::Errno>, reply: ReplyEntry) {
    match r {
        Ok((a, ttl)) => reply.entry(&ttl, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_xattr(r: Result<Vec<u8>, fuser::Errno>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

impl LiveAdapter {
    /// The caller of a creation, with the umask the backing call must
    /// use, and the mode to ask for. Should this thread have no umask of
    /// its own (unshare refused), the caller's umask is applied to the
    /// mode here instead (stricter than a default ACL would be, never
    /// looser).
    fn creator(&self, req: &Request, mode: u32, umask: u32) -> (Caller, u32) {
        let c = caller(req);
        if !self.dont_mask {
            let c = Caller {
                umask: Some(0),
                ..c
            };
            return (c, mode);
        }
        if crate::fs::creds::private_fs_context() {
            let c = Caller {
                umask: Some(umask),
                ..c
            };
            (c, mode)
        } else {
            (c, mode & !umask)
        }
    }

    /// `FOPEN_NOFLUSH` for every open but a checkpoint fast-path writer's
    /// (whose FLUSH tells the daemon it is being closed).
    fn noflush(&self, fh: u64) -> FopenFlags {
        if self.router.fs.is_fast(fh) {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_NOFLUSH
        }
    }

    fn ttl(&self) -> std::time::Duration {
        self.router.fs.opts.ttl
    }

    /// A live entry reply with the live ttl.
    fn entry(&self, r: Result<crate::fs::live::Entry, fuser::Errno>, reply: ReplyEntry) {
        reply_entry(r.map(|e| (e.attr, self.ttl())), reply)
    }
}

impl Filesystem for LiveAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        // POSIX ACLs: the kernel enforces them (with default_permissions,
        // always on) from the system.posix_acl_* xattrs we pass through.
        let mut want = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            // chattr/lsattr of directories reach the daemon too.
            | InitFlags::FUSE_HAS_IOCTL_DIR
            | InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DONT_MASK
            // O_TRUNC reaches open (the fast path needs to see it).
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            // No getxattr("security.capability") round trip before each
            // write: the daemon drops setuid/setgid itself (fs::live).
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        if self.writeback_cache {
            want |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        let have = config.capabilities();
        let _ = config.add_capabilities(want & have);
        self.dont_mask = have.contains(InitFlags::FUSE_DONT_MASK);
        self.router
            .fs
            .set_killpriv(have.contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2));
        if !have.contains(InitFlags::FUSE_POSIX_ACL) {
            tracing::warn!("the kernel does not offer FUSE_POSIX_ACL: POSIX ACLs are not enforced on this mount");
        }
        let fs = &self.router.fs;
        // Snapshot files are served by passthrough from their copies only
        // when the mount uses passthrough at all (--passthrough-reads).
        if fs.passthrough_enabled() {
            let ok = have.contains(InitFlags::FUSE_PASSTHROUGH)
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(2).is_ok();
            if !ok {
                tracing::info!(
                    "the kernel does not offer FUSE passthrough; reads go through the daemon"
                );
                fs.disable_passthrough("the kernel does not offer FUSE passthrough");
            }
            if let Some(v) = self.router.views.as_deref() {
                self.view_io.set_enabled(v, ok);
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.router.lookup(parent.0, name) {
            // A negative entry the kernel may cache for the live ttl: every
            // creation through the mount replaces it, so only a name
            // created directly in the backing directory shows up late.
            Err(e) if e == fuser::Errno::ENOENT && !crate::views::is_view(parent.0) => {
                reply.entry(&self.ttl(), &negative_attr(), Generation(0))
            }
            r => reply_entry(r, reply),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.router.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.router.getattr(ino.0, fh.map(|f| f.0)) {
            Ok((a, ttl)) => reply.attr(&ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.router.live(ino.0).and_then(|fs| {
            fs.setattr(
                ino.0,
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
                fh.map(|f| f.0),
                req.pid(),
            )
        });
        match r {
            Ok(a) => reply.attr(&self.ttl(), &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.router.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (c, mode) = self.creator(req, mode, umask);
        let r = self
            .router
            .live(parent.0)
            .and_then(|fs| fs.mknod(c, parent.0, name, mode, rdev));
        self.entry(r, reply)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (c, mode) = self.creator(req, mode, umask);
        let r = self
            .router
            .live(parent.0)
            .and_then(|fs| fs.mkdir(c, parent.0, name, mode));
        self.entry(r, reply)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .router
            .live(parent.0)
            .and_then(|fs| fs.unlink(parent.0, name));
        reply_empty(r, reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .router
            .live(parent.0)
            .and_then(|fs| fs.rmdir(parent.0, name));
        reply_empty(r, reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let c = self.creator(req, 0o777, 0).0;
        let r = self
            .router
            .live(parent.0)
            .and_then(|fs| fs.symlink(c, parent.0, link_name, target.as_os_str().as_bytes()));
        self.entry(r, reply)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self
            .router
            .live2(parent.0, newparent.0)
            .and_then(|fs| fs.rename(parent.0, name, newparent.0, newname, flags.bits()));
        reply_empty(r, reply)
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self
            .router
            .live2(ino.0, newparent.0)
            .and_then(|fs| fs.link(ino.0, newparent.0, newname));
        self.entry(r, reply)
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let backer = |f: std::os::fd::BorrowedFd<'_>| reply.open_backing(f);
        match self.router.open(ino.0, flags.0, req.pid(), &backer) {
            // Snapshot files never change: keep their pages across opens.
            Ok(Opened::View(fh)) => {
                let Some(views) = self.router.views.as_deref() else {
                    return reply.error(fuser::Errno::EIO);
                };
                match self
                    .view_io
                    .open(views, ino.0, fh, |f| reply.open_backing(f))
                {
                    // No FLUSH at close either: a snapshot file is read
                    // only, and its close has nothing to tell the daemon
                    // (one round trip less per file for a data loader
                    // reading a dataset version from .snapshots).
                    Ok(Some(b)) => {
                        reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &b)
                    }
                    Ok(None) => reply.opened(
                        FileHandle(fh),
                        FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
                    ),
                    Err(e) => {
                        self.router.release(fh);
                        reply.error(e)
                    }
                }
            }
            Ok(Opened::Live(OpenReply::Plain { fh, keep_cache })) => {
                let f = if keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), f | self.noflush(fh))
            }
            Ok(Opened::Live(OpenReply::Passthrough { fh, backing })) => {
                reply.opened_passthrough(FileHandle(fh), self.noflush(fh), &backing)
            }
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
        match self.router.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self
            .router
            .live_handle(fh.0)
            .and_then(|fs| fs.write(fh.0, offset, data, kill, req.pid()))
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Only checkpoint fast-path files get FLUSH (every other open is
        // answered with FOPEN_NOFLUSH: one round trip less per close). A
        // fast-path file's close is then known before close(2) returns.
        self.router.flush(_fh.0);
        reply.ok();
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
        if fh.0 & crate::views::FH_TAG != 0 {
            self.view_io.release(fh.0);
        }
        self.router.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.router.fsync(fh.0, datasync), reply)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.router.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self
            .router
            .readdir(ino.0, fh.0, offset, |ino, next, kind, name| {
                reply.add(INodeNo(ino), next, kind, OsStr::from_bytes(name))
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
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let r = self
            .router
            .readdirplus(ino.0, fh.0, offset, |next, name, attr, ttl| {
                reply.add(
                    attr.ino,
                    next,
                    OsStr::from_bytes(name),
                    &ttl,
                    attr,
                    Generation(0),
                )
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
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.router.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.router.fsyncdir(fh.0), reply)
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.router.statfs(ino.0) {
            Ok(s) => s.reply(reply),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let r = self
            .router
            .live(ino.0)
            .and_then(|fs| fs.setxattr(ino.0, name, value, flags, req.pid()));
        reply_empty(r, reply)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(self.router.getxattr(ino.0, name, size), size, reply)
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(self.router.listxattr(ino.0, size), size, reply)
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .router
            .live(ino.0)
            .and_then(|fs| fs.removexattr(ino.0, name));
        reply_empty(r, reply)
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        match self.router.ioctl(fh.0, cmd, in_data, out_size) {
            Ok(data) => reply.ioctl(0, &data),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        reply_empty(self.router.access(ino.0, mask.bits()), reply)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (c, mode) = self.creator(req, mode, umask);
        let r = self.router.live(parent.0).and_then(|fs| {
            fs.create(
                c,
                parent.0,
                name,
                mode,
                flags,
                &|f: std::os::fd::BorrowedFd<'_>| reply.open_backing(f),
            )
        });
        let ttl = self.ttl();
        match r {
            Ok((e, OpenReply::Plain { fh, keep_cache })) => {
                let f = if keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.created(
                    &ttl,
                    &e.attr,
                    Generation(0),
                    FileHandle(fh),
                    f | self.noflush(fh),
                )
            }
            Ok((e, OpenReply::Passthrough { fh, backing })) => reply.created_passthrough(
                &ttl,
                &e.attr,
                Generation(0),
                FileHandle(fh),
                self.noflush(fh),
                &backing,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self
            .router
            .live_handle(fh.0)
            .and_then(|fs| fs.fallocate(fh.0, offset, length, mode, req.pid()));
        reply_empty(r, reply)
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
        match self.router.lseek(ino.0, fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self
            .router
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len, req.pid())
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }
}
