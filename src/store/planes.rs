//! The byte-plane codec (codec id 2) for tensors.
//!
//! Model weights barely compress as a byte stream (fp32 ~1.08x with zstd),
//! but their bytes are not alike: in each little-endian float the high
//! byte (sign and exponent) takes few values while the low mantissa bytes
//! are noise. Splitting a block into `stride` planes (plane k holds bytes
//! k, k+stride, k+2*stride, ...) and compressing only the planes that
//! compress gives a better ratio at a fraction of the work, for writing
//! and for reading.
//!
//! Payload (format 1):
//! ```text
//! u8 version = 1, u8 stride (2..=8), u16 zero
//! stride times: u8 codec (0 raw, 1 zstd), u32 LE stored length, bytes
//! tail: raw_len % stride bytes, raw
//! ```
//! Plane k has `raw_len / stride` bytes.

use crate::error::{Error, Result};

const VERSION: u8 = 1;

/// Compression must save at least 1/32 of a plane to be kept.
const MIN_SAVING_DIVISOR: usize = 32;

fn split(data: &[u8], stride: usize) -> Vec<Vec<u8>> {
    let n = data.len() / stride;
    let mut planes = vec![vec![0u8; n]; stride];
    for (k, plane) in planes.iter_mut().enumerate() {
        for (dst, chunk) in plane
            .iter_mut()
            .zip(data[..n * stride].chunks_exact(stride))
        {
            *dst = chunk[k];
        }
    }
    planes
}

fn compress_if_worth(data: &[u8], level: i32) -> Option<Vec<u8>> {
    if data.len() < 64 {
        return None;
    }
    let limit = data.len() - data.len() / MIN_SAVING_DIVISOR;
    let mut out = Vec::with_capacity(limit);
    super::zstd::compress_into(data, &mut out, level).ok()?;
    Some(out)
}

/// Which planes of a block split with `stride` are worth compressing, and
/// the estimated compressed size, from a sample.
fn probe_stride(sample: &[u8], stride: usize) -> (usize, Vec<bool>) {
    let mut total = 0;
    let mut use_zstd = Vec::with_capacity(stride);
    for p in split(sample, stride) {
        match compress_if_worth(&p, 1) {
            Some(c) => {
                total += c.len();
                use_zstd.push(true);
            }
            None => {
                total += p.len();
                use_zstd.push(false);
            }
        }
    }
    (total, use_zstd)
}

/// A plan for a block: the stride and which planes to compress, when
/// splitting beats plain zstd on a sample of the block by 5% or more.
pub fn plan(data: &[u8]) -> Option<(usize, Vec<bool>)> {
    const SAMPLE: usize = 32 << 10;
    if data.len() < 4 * SAMPLE {
        return None;
    }
    let start = (data.len() / 2) & !4095;
    let sample = &data[start..start + SAMPLE];
    let plain = compress_if_worth(sample, 1).map_or(sample.len(), |c| c.len());
    let mut best: Option<(usize, usize, Vec<bool>)> = None;
    for stride in [4usize, 2] {
        let (size, mask) = probe_stride(sample, stride);
        if !mask.iter().any(|m| *m) {
            continue;
        }
        if size * 20 < plain * 19 && best.as_ref().is_none_or(|b| size < b.1) {
            best = Some((stride, size, mask));
        }
    }
    best.map(|(s, _, m)| (s, m))
}

/// Encode a block with the plan from [`plan`]. Planes are compressed at
/// zstd level 1 at most: the planes worth compressing (exponents) shrink
/// about as much at level 1, several times faster.
pub fn encode(data: &[u8], stride: usize, mask: &[bool], level: i32) -> Vec<u8> {
    let level = level.min(1);
    let mut out = Vec::with_capacity(data.len());
    out.extend_from_slice(&[VERSION, stride as u8, 0, 0]);
    for (k, plane) in split(data, stride).into_iter().enumerate() {
        let packed = if mask.get(k).copied().unwrap_or(false) {
            compress_if_worth(&plane, level)
        } else {
            None
        };
        match packed {
            Some(c) => {
                out.push(1);
                out.extend_from_slice(&(c.len() as u32).to_le_bytes());
                out.extend_from_slice(&c);
            }
            None => {
                out.push(0);
                out.extend_from_slice(&(plane.len() as u32).to_le_bytes());
                out.extend_from_slice(&plane);
            }
        }
    }
    let n = data.len() / stride;
    out.extend_from_slice(&data[n * stride..]);
    out
}

/// Decode a payload into `out`, which becomes `raw_len` bytes long (its
/// allocation is reused); every length is checked against `raw_len`
/// before anything is decompressed.
pub fn decode_into(payload: &[u8], raw_len: usize, out: &mut Vec<u8>) -> Result<()> {
    let bad = |w: &str| Error::Corrupt(format!("byte-plane payload: {w}"));
    if payload.len() < 4 || payload[0] != VERSION {
        return Err(bad("unknown version"));
    }
    let stride = payload[1] as usize;
    if !(2..=8).contains(&stride) {
        return Err(bad("bad stride"));
    }
    let n = raw_len / stride;
    let tail = raw_len - n * stride;
    let mut pos = 4;
    // Raw planes are used in place, compressed ones decoded.
    let mut spans: Vec<(bool, usize)> = Vec::with_capacity(stride);
    let mut decoded: Vec<Vec<u8>> = Vec::new();
    for _ in 0..stride {
        if pos + 5 > payload.len() {
            return Err(bad("truncated"));
        }
        let codec = payload[pos];
        let len = u32::from_le_bytes([
            payload[pos + 1],
            payload[pos + 2],
            payload[pos + 3],
            payload[pos + 4],
        ]) as usize;
        pos += 5;
        if pos + len > payload.len() {
            return Err(bad("truncated plane"));
        }
        let bytes = &payload[pos..pos + len];
        match codec {
            0 if len == n => spans.push((false, pos)),
            1 => {
                let plane =
                    super::zstd::decompress(bytes, n).map_err(|e| bad(&format!("zstd: {e}")))?;
                if plane.len() != n {
                    return Err(bad("plane has the wrong length"));
                }
                spans.push((true, decoded.len()));
                decoded.push(plane);
            }
            _ => return Err(bad("bad plane")),
        }
        pos += len;
    }
    if payload.len() - pos != tail {
        return Err(bad("bad tail"));
    }
    let planes: Vec<&[u8]> = spans
        .iter()
        .map(|&(was_compressed, at)| {
            if was_compressed {
                &decoded[at][..]
            } else {
                &payload[at..at + n]
            }
        })
        .collect();
    // Interleave and tail overwrite every byte: a recycled buffer is not
    // zeroed first.
    crate::util::bytes::set_len_keeping(out, raw_len);
    interleave(&planes, &mut out[..n * stride]);
    out[n * stride..].copy_from_slice(&payload[pos..]);
    Ok(())
}

/// Write plane k's bytes to positions k, k+stride, ... of `out`, in one
/// pass over `out` (the common fp32 and 16-bit cases unrolled).
fn interleave(planes: &[&[u8]], out: &mut [u8]) {
    match planes {
        [a, b, c, d] => {
            let src = a.iter().zip(b.iter()).zip(c.iter()).zip(d.iter());
            for (o, (((a, b), c), d)) in out.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&[*a, *b, *c, *d]);
            }
        }
        [a, b] => {
            for (o, (a, b)) in out.chunks_exact_mut(2).zip(a.iter().zip(b.iter())) {
                o.copy_from_slice(&[*a, *b]);
            }
        }
        _ => {
            let stride = planes.len();
            for (i, o) in out.chunks_exact_mut(stride).enumerate() {
                for (k, p) in planes.iter().enumerate() {
                    o[k] = p[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(payload: &[u8], raw_len: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        decode_into(payload, raw_len, &mut out)?;
        Ok(out)
    }

    fn floats(n: usize, seed: u32) -> Vec<u8> {
        // Weights-like: normal(0, 0.02) floats (Box-Muller), so mantissas
        // are noise and exponents cluster, as in real checkpoints.
        let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut uniform = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let mut out = Vec::with_capacity(n * 4);
        for _ in 0..n {
            let (u1, u2) = (uniform(), uniform());
            let v = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * 0.02;
            out.extend_from_slice(&(v as f32).to_le_bytes());
        }
        out
    }

    #[test]
    fn planes_roundtrip_with_tails() {
        for (len, stride) in [(1 << 20, 4), (1 << 20 | 3, 4), (300_001, 2), (65, 4)] {
            let mut data = floats(len / 4 + 1, len as u32);
            data.truncate(len);
            let mask = vec![true; stride];
            let enc = encode(&data, stride, &mask, 3);
            assert_eq!(
                decode(&enc, len).unwrap(),
                data,
                "len {len} stride {stride}"
            );
        }
    }

    #[test]
    fn floats_get_a_plan_and_shrink_text_does_not() {
        let data = floats(1 << 18, 7);
        let (stride, mask) = plan(&data).expect("fp32 data should be split");
        assert_eq!(stride, 4);
        let enc = encode(&data, stride, &mask, 3);
        let plain = zstd::bulk::compress(&data, 3).unwrap();
        assert!(enc.len() < plain.len(), "{} vs {}", enc.len(), plain.len());
        let text = b"the quick brown fox jumps over the lazy dog ".repeat(30_000);
        assert!(plan(&text).is_none());
    }

    #[test]
    fn bad_payloads_are_errors() {
        let data = floats(1 << 16, 3);
        let enc = encode(&data, 4, &[true; 4], 3);
        assert!(decode(&enc, data.len() + 1).is_err());
        assert!(decode(&enc[..enc.len() - 1], data.len()).is_err());
        let mut bad = enc.clone();
        bad[1] = 9;
        assert!(decode(&bad, data.len()).is_err());
    }
}
