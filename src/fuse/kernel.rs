//! What the daemon tells the kernel: the largest request, and `statfs`
//! replies (of the backing filesystem, or of a read-only view).

/// Largest read/write request: 1 MiB (max_pages 256).
pub const MAX_IO: u32 = 1 << 20;

/// What a `statfs` reply carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

impl Statfs {
    /// The backing filesystem's figures.
    pub fn of(s: &rustix::fs::StatVfs) -> Statfs {
        Statfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        }
    }

    /// A read-only view's: sizes of the repository's filesystem, nothing
    /// free.
    pub fn read_only(s: &rustix::fs::StatVfs) -> Statfs {
        Statfs {
            blocks: s.f_blocks,
            bfree: 0,
            bavail: 0,
            files: s.f_files,
            ffree: 0,
            bsize: s.f_bsize as u32,
            namelen: 255,
            frsize: s.f_frsize as u32,
        }
    }

    pub fn reply(&self, reply: fuser::ReplyStatfs) {
        reply.statfs(
            self.blocks,
            self.bfree,
            self.bavail,
            self.files,
            self.ffree,
            self.bsize,
            self.namelen,
            self.frsize,
        )
    }
}
