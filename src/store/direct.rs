//! Reads of pack bytes that bypass the page cache (`O_DIRECT`).
//!
//! A blob read through the page cache is copied twice before it is
//! decoded: the device fills a page-cache page, then `pread` copies it
//! into the daemon. That second copy was 40% of the daemon's CPU during a
//! first read of a snapshot file (perf, docs/benchmarks.md), and the
//! pages stay cached beside the decoded chunks the daemon caches itself.
//! A direct read has the device fill the daemon's buffer instead.
//!
//! `O_DIRECT` wants the file offset, the length and the buffer's address
//! aligned to the device's logical block size; [`ALIGN`] (4096) covers
//! 512- and 4096-byte sectors. The buffer is an ordinary `Vec` with
//! [`ALIGN`] spare bytes, used from its first aligned address, so no
//! unsafe allocation is needed. The span read is the blob's bytes widened
//! to aligned bounds; the extra bytes are ignored.
//!
//! Coherence: before a direct read the kernel writes back the page-cache
//! pages of the range that are dirty, so a pack still being appended to
//! reads what its writer wrote, as a buffered read does.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// Alignment of direct reads: offsets, lengths and buffer addresses.
pub const ALIGN: usize = 4096;

/// Read bytes `at .. at + len` of `file` (opened with `O_DIRECT`) into
/// `buf` (resized as needed; its old contents are overwritten) and return
/// where they are in `buf`. A file that ends before `at + len` is an
/// `UnexpectedEof` error; a filesystem that refuses the alignment gives
/// the kernel's `EINVAL`, which callers take as "use buffered reads".
pub fn read_at(file: &File, buf: &mut Vec<u8>, at: u64, len: usize) -> io::Result<Range<usize>> {
    let start = at & !(ALIGN as u64 - 1);
    let lead = (at - start) as usize;
    let span = (lead + len).div_ceil(ALIGN) * ALIGN;
    if buf.len() < span + ALIGN {
        // Growing zeroes only the new tail; the bytes are overwritten by
        // the read or never looked at.
        buf.resize(span + ALIGN, 0);
    }
    let base = buf.as_ptr().align_offset(ALIGN);
    if base >= ALIGN {
        return Err(io::Error::other("cannot align a read buffer"));
    }
    let window = &mut buf[base..base + span];
    let mut done = 0;
    while done < lead + len {
        match file.read_at(&mut window[done..], start + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                // A direct read stops short only at the end of the file;
                // the next one would start unaligned.
                if done % ALIGN != 0 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if done < lead + len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    Ok(base + lead..base + lead + len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    fn direct_file(dir: &std::path::Path, bytes: &[u8]) -> io::Result<File> {
        let p = dir.join("f");
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p)
    }

    #[test]
    fn unaligned_spans_read_exactly_and_eof_is_an_error() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let bytes: Vec<u8> = (0..50_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let f = match direct_file(dir.path(), &bytes) {
            Ok(f) => f,
            Err(e) => {
                // tmpfs and a few others refuse O_DIRECT; the pack reader
                // relies on that refusal being EINVAL to fall back.
                assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
                eprintln!("O_DIRECT refused here (EINVAL): only the refusal was checked");
                return;
            }
        };
        let mut buf = Vec::new();
        for (at, len) in [
            (0usize, 1usize),
            (1, 4095),
            (4095, 2),
            (4096, 4096),
            (12_345, 20_000),
            (0, 50_000),
            (49_999, 1),
            (8191, 0),
        ] {
            let r = read_at(&f, &mut buf, at as u64, len).unwrap();
            assert_eq!(&buf[r], &bytes[at..at + len], "at {at} len {len}");
        }
        // The buffer is reused, not grown, for a smaller read.
        let cap = buf.capacity();
        read_at(&f, &mut buf, 100, 10).unwrap();
        assert_eq!(buf.capacity(), cap);
        for (at, len) in [(49_999u64, 2usize), (50_000, 1), (60_000, 10)] {
            let e = read_at(&f, &mut buf, at, len).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "at {at} len {len}");
        }
    }
}
