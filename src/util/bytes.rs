//! Byte-buffer helpers.

/// Make `buf` exactly `len` bytes long for a caller that will overwrite
/// all of them: shrinking keeps the old bytes (no zeroing pass, which cost
/// ~5% of a snapshot read when buffers are recycled), growing zero-fills
/// only the new part.
pub fn set_len_keeping(buf: &mut Vec<u8>, len: usize) {
    if buf.len() >= len {
        buf.truncate(len);
    } else {
        buf.resize(len, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_and_grows() {
        let mut v = vec![7u8; 10];
        set_len_keeping(&mut v, 4);
        assert_eq!(v, [7; 4]);
        set_len_keeping(&mut v, 6);
        assert_eq!(v, [7, 7, 7, 7, 0, 0]);
    }
}
