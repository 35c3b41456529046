//! The fuser adapter: thin, match-and-reply only. Every method calls the
//! filesystem core (`LiveFs`) and answers its value or its errno.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::creds::Caller;
use super::live::{file_type, LiveFs, OpenReply, SNAPSHOTS_DIR};
use super::snapshot_view::{is_view, Views, FH_TAG, SNAPDIR};
use super::view_adapter::{self as va, RootMap};

/// Offset cookie of the synthetic `.snapshots` entry listed first in the
/// root (`--snapdir visible`); the real entries restart from 0 after it.
const SNAPDIR_COOKIE: u64 = 0x7fff_ffff_ffff_fff0;
const MAP: RootMap = RootMap { root: 0 };

/// Largest read/write request: 1 MiB (max_pages 256).
pub const MAX_IO: u32 = 1 << 20;

pub struct LiveAdapter {
    pub fs: Arc<LiveFs>,
    pub writeback_cache: bool,
    /// The snapshot views served under `.snapshots`.
    pub views: Option<Arc<Views>>,
    /// List `.snapshots` in the root (it is always reachable by name).
    pub snapdir_visible: bool,
    /// The kernel sends creation modes without applying the umask
    /// (FUSE_DONT_MASK): the handler applies the caller's umask, so that
    /// a parent's default ACL replaces it exactly as on the backing
    /// filesystem.
    pub dont_mask: bool,
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: None,
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
}

impl LiveAdapter {
    fn ttl(&self) -> Duration {
        self.fs.opts.ttl
    }

    /// The views, if `ino` is one of their nodes.
    fn view(&self, ino: u64) -> Option<&Views> {
        if is_view(ino) {
            self.views.as_deref()
        } else {
            None
        }
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
            | InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DONT_MASK;
        if self.writeback_cache {
            want |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        let have = config.capabilities();
        let _ = config.add_capabilities(want & have);
        self.dont_mask = have.contains(InitFlags::FUSE_DONT_MASK);
        if !have.contains(InitFlags::FUSE_POSIX_ACL) {
            tracing::warn!("the kernel does not offer FUSE_POSIX_ACL: POSIX ACLs are not enforced on this mount");
        }
        if self.fs.passthrough_enabled() {
            let ok = have.contains(InitFlags::FUSE_PASSTHROUGH)
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(2).is_ok();
            if !ok {
                tracing::info!(
                    "the kernel does not offer FUSE passthrough; reads go through the daemon"
                );
                self.fs.disable_passthrough();
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Some(v) = self.view(parent.0) {
            return va::lookup(v, MAP, parent.0, name, reply);
        }
        if let (Some(v), true) = (
            &self.views,
            parent.0 == INodeNo::ROOT.0 && name.as_bytes() == SNAPSHOTS_DIR.as_bytes(),
        ) {
            return match v.getattr(SNAPDIR) {
                Ok((a, ttl)) => reply.entry(&ttl, &a, Generation(0)),
                Err(e) => reply.error(e),
            };
        }
        match self.fs.lookup(parent.0, name) {
            Ok(e) => reply.entry(&self.ttl(), &e.attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if is_view(ino.0) {
            return;
        }
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(v) = self.view(ino.0) {
            return va::getattr(v, MAP, ino.0, reply);
        }
        match self.fs.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&self.ttl(), &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
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
        if is_view(ino.0) {
            return reply.error(Errno::EROFS);
        }
        match self
            .fs
            .setattr(ino.0, mode, uid, gid, size, atime, mtime, fh.map(|f| f.0))
        {
            Ok(a) => reply.attr(&self.ttl(), &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        if let Some(v) = self.view(ino.0) {
            return va::readlink(v, MAP, ino.0, reply);
        }
        match self.fs.readlink(ino.0) {
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
        if is_view(parent.0) {
            return reply.error(Errno::EROFS);
        }
        let (c, mode) = self.creator(req, mode, umask);
        match self.fs.mknod(c, parent.0, name, mode, rdev) {
            Ok(e) => reply.entry(&self.ttl(), &e.attr, Generation(0)),
            Err(e) => reply.error(e),
        }
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
        if is_view(parent.0) {
            return reply.error(Errno::EROFS);
        }
        let (c, mode) = self.creator(req, mode, umask);
        match self.fs.mkdir(c, parent.0, name, mode) {
            Ok(e) => reply.entry(&self.ttl(), &e.attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if is_view(parent.0) {
            return reply.error(Errno::EROFS);
        }
        match self.fs.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if is_view(parent.0) {
            return reply.error(Errno::EROFS);
        }
        match self.fs.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        if is_view(parent.0) {
            return reply.error(Errno::EROFS);
        }
        match self.fs.symlink(
            self.creator(req, 0o777, 0).0,
            parent.0,
            link_name,
            target.as_os_str().as_bytes(),
        ) {
            Ok(e) => reply.entry(&self.ttl(), &e.attr, Generation(0)),
            Err(e) => reply.error(e),
        }
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
        if is_view(parent.0) || is_view(newparent.0) {
            return reply.error(Errno::EROFS);
        }
        match self
            .fs
            .rename(parent.0, name, newparent.0, newname, flags.bits())
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        if is_view(ino.0) || is_view(newparent.0) {
            return reply.error(Errno::EROFS);
        }
        match self.fs.link(ino.0, newparent.0, newname) {
            Ok(e) => reply.entry(&self.ttl(), &e.attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if let Some(v) = self.view(ino.0) {
            return va::open(v, MAP, ino.0, flags.0, reply);
        }
        match self.fs.open(ino.0, flags.0) {
            Ok(OpenReply::Plain { fh, keep_cache }) => {
                let f = if keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), f)
            }
            Ok(OpenReply::Passthrough { fh, backing }) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing)
            }
            Ok(OpenReply::NeedBacking { fh }) => {
                let id = self
                    .fs
                    .handle_file(fh)
                    .ok()
                    .and_then(|h| reply.open_backing(&h.file).ok());
                match id {
                    Some(id) => {
                        let id = Arc::new(id);
                        let _ = self.fs.set_backing(fh, id.clone());
                        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id)
                    }
                    None => {
                        self.fs.passthrough_failed(fh);
                        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
                    }
                }
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
        if fh.0 & FH_TAG != 0 {
            if let Some(v) = &self.views {
                return va::read(v, fh.0, offset, size, reply);
            }
        }
        match self.fs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if fh.0 & FH_TAG != 0 {
            return reply.error(Errno::EROFS);
        }
        match self.fs.write(fh.0, offset, data) {
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
        if fh.0 & FH_TAG != 0 {
            if let Some(v) = &self.views {
                v.release(fh.0);
            }
            return reply.ok();
        }
        self.fs.release(fh.0);
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
        if fh.0 & FH_TAG != 0 {
            return reply.ok();
        }
        match self.fs.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if is_view(ino.0) {
            return reply.opened(FileHandle(FH_TAG), FopenFlags::empty());
        }
        match self.fs.opendir(ino.0) {
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
        if let Some(v) = self.view(ino.0) {
            return va::readdir(v, MAP, ino.0, offset, reply);
        }
        let mut offset = offset;
        if self.snapdir_visible && self.views.is_some() && ino.0 == INodeNo::ROOT.0 {
            if offset == 0 {
                if reply.add(
                    INodeNo(SNAPDIR),
                    SNAPDIR_COOKIE,
                    fuser::FileType::Directory,
                    SNAPSHOTS_DIR,
                ) {
                    return reply.ok();
                }
            } else if offset == SNAPDIR_COOKIE {
                offset = 0;
            }
        }
        let r = self.fs.readdir(fh.0, offset, |name, ino, kind, next| {
            reply.add(INodeNo(ino), next, file_type(kind), OsStr::from_bytes(name))
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
        if let Some(v) = self.view(ino.0) {
            return va::readdirplus(v, MAP, ino.0, offset, reply);
        }
        let mut offset = offset;
        if let (true, Some(v), true) = (self.snapdir_visible, &self.views, ino.0 == INodeNo::ROOT.0)
        {
            if offset == 0 {
                if let Ok((a, ttl)) = v.getattr(SNAPDIR) {
                    if reply.add(
                        a.ino,
                        SNAPDIR_COOKIE,
                        SNAPSHOTS_DIR,
                        &ttl,
                        &a,
                        Generation(0),
                    ) {
                        return reply.ok();
                    }
                }
            } else if offset == SNAPDIR_COOKIE {
                offset = 0;
            }
        }
        let ttl = self.ttl();
        let fs = &self.fs;
        let r = fs.readdir(fh.0, offset, |name, _ino, _kind, next| {
            let e = match fs.lookup_in_dir_handle(fh.0, name) {
                Ok(e) => e,
                // Gone since the directory was read: skip it.
                Err(_) => return false,
            };
            let counted = name != b"." && name != b"..";
            let full = reply.add(
                e.attr.ino,
                next,
                OsStr::from_bytes(name),
                &ttl,
                &e.attr,
                Generation(0),
            );
            if full && counted {
                fs.forget(e.attr.ino.0, 1);
            }
            full
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
        self.fs.release(fh.0);
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
        match self.fs.fsyncdir(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        if let Some(v) = self.view(_ino.0) {
            return va::statfs(v, reply);
        }
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if is_view(ino.0) {
            return reply.error(Errno::EROFS);
        }
        match self.fs.setxattr(ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if let Some(v) = self.view(ino.0) {
            return va::getxattr(v, MAP, ino.0, name, size, reply);
        }
        match self.fs.getxattr(ino.0, name, size) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if let Some(v) = self.view(ino.0) {
            return va::listxattr(v, MAP, ino.0, size, reply);
        }
        match self.fs.listxattr(ino.0, size) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if is_view(ino.0) {
            return reply.error(Errno::EROFS);
        }
        match self.fs.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if is_view(ino.0) {
            return if mask.bits() & libc::W_OK != 0 {
                reply.error(Errno::EROFS)
            } else {
                reply.ok()
            };
        }
        match self.fs.access(ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        if is_view(parent.0) {
            return reply.error(Errno::EROFS);
        }
        let (c, mode) = self.creator(req, mode, umask);
        match self.fs.create(c, parent.0, name, mode, flags) {
            Ok((e, fh)) => reply.created(
                &self.ttl(),
                &e.attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if fh.0 & FH_TAG != 0 {
            return reply.error(Errno::EROFS);
        }
        match self.fs.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        if fh.0 & FH_TAG != 0 {
            if let Some(v) = &self.views {
                let size = v.getattr(_ino.0).map(|(a, _)| a.size).unwrap_or(0);
                return va::lseek(v, fh.0, offset, whence, size, reply);
            }
        }
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
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
        if fh_out.0 & FH_TAG != 0 {
            return reply.error(Errno::EROFS);
        }
        if fh_in.0 & FH_TAG != 0 {
            // Copying out of a snapshot: let the kernel fall back to
            // read + write.
            return reply.error(Errno::EXDEV);
        }
        match self
            .fs
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }
}
