//! zstd decompression with one context per thread, bounded by the
//! caller's capacity. Shared by the blob codecs (`blob.rs` for plain zstd
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
