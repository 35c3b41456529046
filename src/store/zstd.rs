//! zstd with one context per thread: compression (a fresh context is
//! about 1 MiB of tables to allocate and clear, more than compressing a
//! 4 KiB file: it made the first snapshot of many small files spend most
//! of its time in the kernel zeroing pages) and decompression, bounded by
//! the caller's capacity. Shared by the blob codecs (`blob.rs` for plain zstd
//! payloads, `planes.rs` for each compressed plane); it depends on
//! neither.
//!
//! Invariant: output never exceeds the capacity given; malformed input or
//! a larger frame is an error, never a partial result used as data.

thread_local! {
    /// One zstd decompression context per thread: creating one costs an
    /// allocation of ~100 KiB, more than decoding a small plane.
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

thread_local! {
    /// Compression contexts of this thread, one per level used (the
    /// probe's level 1 and the repository's level).
    static CCTX: std::cell::RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Compress `src` at `level` into `dst`'s spare capacity (`dst` is
/// cleared first; its capacity bounds the output: an error when the frame
/// would not fit) with this thread's context. Returns the length.
pub fn compress_into(src: &[u8], dst: &mut Vec<u8>, level: i32) -> std::io::Result<usize> {
    dst.clear();
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        let i = match c.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                if c.len() >= 4 {
                    c.remove(0);
                }
                c.push((level, zstd::bulk::Compressor::new(level)?));
                c.len() - 1
            }
        };
        c[i].1.compress_to_buffer(src, dst)
    })
}

/// Decompress a zstd frame of at most `cap` bytes with this thread's
/// context. Errors on malformed input or output larger than `cap`.
pub fn decompress(src: &[u8], cap: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(cap);
    decompress_into(src, &mut out)?;
    Ok(out)
}

/// Like [`decompress`], into `out`'s spare capacity (`out` is cleared
/// first; its capacity is the cap).
pub fn decompress_into(src: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
    out.clear();
    DCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Decompressor::new()?);
        }
        match c.as_mut() {
            Some(d) => d.decompress_to_buffer(src, out),
            None => Err(std::io::Error::other("no zstd context")),
        }
    })
}
