//! Kernel handles of backing objects (`name_to_handle_at`/
//! `open_by_handle_at`; not FUSE's numeric file handles `fh`): a few
//! bytes that name a backing object for as long as it exists, so the live
//! mount can close the descriptor of an object the kernel still knows and
//! reopen it later, instead of holding one descriptor per object.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `MAX_HANDLE_SZ` from linux/exportfs.h.
const MAX_HANDLE_SZ: usize = 128;

/// An opaque handle: the `struct file_handle` header and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelHandle {
    /// u32 words, so the buffer is aligned for `struct file_handle`.
    words: Vec<u32>,
}

fn buffer() -> Vec<u32> {
    let header = std::mem::size_of::<libc::file_handle>();
    vec![0u32; (header + MAX_HANDLE_SZ).div_ceil(4)]
}

impl KernelHandle {
    /// The handle of the object `fd` refers to (an `O_PATH` descriptor is
    /// fine). Fails with EOPNOTSUPP on filesystems that cannot export.
    pub fn of(fd: &OwnedFd) -> std::io::Result<KernelHandle> {
        let mut words = buffer();
        let fh = words.as_mut_ptr().cast::<libc::file_handle>();
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `fh` points to a buffer of `size_of::<file_handle>() +
        // MAX_HANDLE_SZ` bytes aligned for `file_handle`; setting
        // handle_bytes to MAX_HANDLE_SZ tells the kernel how much it may
        // write; the path is a valid NUL-terminated empty string.
        let r = unsafe {
            (*fh).handle_bytes = MAX_HANDLE_SZ as libc::c_uint;
            libc::name_to_handle_at(
                fd.as_raw_fd(),
                c"".as_ptr(),
                fh,
                &mut mount_id,
                libc::AT_EMPTY_PATH,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(KernelHandle { words })
    }

    /// Open the object again (`flags` as for openat; `O_PATH` works).
    /// `mount_fd` is any descriptor on the same filesystem. Needs
    /// CAP_DAC_READ_SEARCH. ESTALE once the object no longer exists.
    pub fn open(&self, mount_fd: &OwnedFd, flags: libc::c_int) -> std::io::Result<OwnedFd> {
        let mut words = self.words.clone();
        // SAFETY: the buffer holds a handle filled in by name_to_handle_at
        // (its header says how many bytes follow, within the buffer); the
        // kernel only reads it. The returned descriptor is new and owned.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount_fd.as_raw_fd(),
                words.as_mut_ptr().cast::<libc::file_handle>(),
                flags | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is not owned
        // by anything else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_when_permitted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let fd: OwnedFd = std::fs::File::open(&p).unwrap().into();
        let root: OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
        let h = match KernelHandle::of(&fd) {
            Ok(h) => h,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return,
            Err(e) => panic!("{e}"),
        };
        match h.open(&root, libc::O_PATH) {
            Ok(again) => {
                let a = rustix::fs::fstat(&fd).unwrap();
                let b = rustix::fs::fstat(&again).unwrap();
                assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));
            }
            // Without CAP_DAC_READ_SEARCH handles cannot be opened.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
