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
//!
//! Format 2 (since 2026-12-06), for a chunk that does not start on an
//! element (a content-defined chunk of a tensor file):
//! ```text
//! u8 version = 2, u8 stride, u8 phase (1..stride), u8 zero
//! phase bytes, raw (the end of the element the chunk starts inside)
//! then format 1's planes and tail, over the remaining raw_len - phase bytes
//! ```
//! A chunk that starts on an element is still written in format 1.

use crate::error::{Error, Result};

const VERSION: u8 = 1;
/// A payload with a raw head of `phase` bytes.
const VERSION_PHASED: u8 = 2;

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

/// How a block is split: `stride` planes after a raw head of `phase`
/// bytes, and which planes to compress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub stride: usize,
    pub phase: usize,
    pub mask: Vec<bool>,
}

/// Where the elements of `sample` (offset 0 in the block) start, for
/// `stride`-byte little-endian floats: the byte position whose values
/// vary least (entropy) is each element's high byte (sign and exponent),
/// and the next one starts an element. 0 for a block that starts on one.
fn phase_of(sample: &[u8], stride: usize) -> usize {
    let mut best = (f64::MAX, 0);
    for r in 0..stride {
        let mut hist = [0u32; 256];
        let mut n = 0u32;
        for b in sample.iter().skip(r).step_by(stride) {
            hist[*b as usize] += 1;
            n += 1;
        }
        let nf = f64::from(n.max(1));
        let h: f64 = hist
            .iter()
            .filter(|c| **c > 0)
            .map(|c| {
                let p = f64::from(*c) / nf;
                -p * p.log2()
            })
            .sum();
        if h < best.0 {
            best = (h, r);
        }
    }
    (best.1 + 1) % stride
}

/// A plan for a block: the stride, where its elements start, and which
/// planes to compress, when splitting beats plain zstd on a sample of the
/// block by 5% or more.
pub fn plan(data: &[u8]) -> Option<Plan> {
    const SAMPLE: usize = 32 << 10;
    if data.len() < 4 * SAMPLE {
        return None;
    }
    let start = (data.len() / 2) & !4095;
    let sample = &data[start..start + SAMPLE];
    let plain = compress_if_worth(sample, 1).map_or(sample.len(), |c| c.len());
    let mut best: Option<(usize, Plan)> = None;
    for stride in [4usize, 2] {
        let phase = phase_of(&sample[..8192], stride);
        let (size, mask) = probe_stride(&sample[phase..], stride);
        if !mask.iter().any(|m| *m) {
            continue;
        }
        if size * 20 < plain * 19 && best.as_ref().is_none_or(|b| size < b.0) {
            best = Some((
                size,
                Plan {
                    stride,
                    phase,
                    mask,
                },
            ));
        }
    }
    best.map(|(_, p)| p)
}

/// Encode a block with the plan from [`plan`]. Planes are compressed at
/// zstd level 1 at most: the planes worth compressing (exponents) shrink
/// about as much at level 1, several times faster.
pub fn encode(data: &[u8], plan: &Plan, level: i32) -> Vec<u8> {
    let (stride, mask) = (plan.stride, &plan.mask);
    let phase = plan.phase.min(stride - 1).min(data.len());
    let level = level.min(1);
    let mut out = Vec::with_capacity(data.len());
    if phase == 0 {
        out.extend_from_slice(&[VERSION, stride as u8, 0, 0]);
    } else {
        out.extend_from_slice(&[VERSION_PHASED, stride as u8, phase as u8, 0]);
        out.extend_from_slice(&data[..phase]);
    }
    let data = &data[phase..];
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
    if payload.len() < 4 || !matches!(payload[0], VERSION | VERSION_PHASED) {
        return Err(bad("unknown version"));
    }
    let stride = payload[1] as usize;
    if !(2..=8).contains(&stride) {
        return Err(bad("bad stride"));
    }
    let phase = if payload[0] == VERSION_PHASED {
        payload[2] as usize
    } else {
        0
    };
    if (payload[0] == VERSION_PHASED && !(1..stride).contains(&phase))
        || phase > raw_len
        || payload.len() < 4 + phase
    {
        return Err(bad("bad phase"));
    }
    let head = 4..4 + phase;
    let raw_len = raw_len - phase;
    let n = raw_len / stride;
    let tail = raw_len - n * stride;
    let mut pos = 4 + phase;
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
    crate::util::bytes::set_len_keeping(out, phase + raw_len);
    out[..phase].copy_from_slice(&payload[head]);
    interleave(&planes, &mut out[phase..phase + n * stride]);
    out[phase + n * stride..].copy_from_slice(&payload[pos..]);
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

    fn p(stride: usize, phase: usize) -> Plan {
        Plan {
            stride,
            phase,
            mask: vec![true; stride],
        }
    }

    #[test]
    fn planes_roundtrip_with_tails_and_heads() {
        for (len, stride) in [
            (1 << 20, 4),
            (1 << 20 | 3, 4),
            (300_001, 2),
            (65, 4),
            (2, 4),
        ] {
            let mut data = floats(len / 4 + 1, len as u32);
            data.truncate(len);
            for phase in 0..stride {
                let enc = encode(&data, &p(stride, phase), 3);
                assert_eq!(
                    enc[0],
                    if phase.min(len) == 0 { 1 } else { 2 },
                    "{len} {phase}"
                );
                assert_eq!(
                    decode(&enc, len).unwrap(),
                    data,
                    "len {len} stride {stride} phase {phase}"
                );
            }
        }
    }

    /// A chunk cut anywhere in a tensor (content-defined) still finds its
    /// elements: the plan's phase, and about the same size as aligned.
    #[test]
    fn unaligned_floats_find_their_phase() {
        let data = floats(1 << 18, 11);
        let aligned = encode(&data, &plan(&data).unwrap(), 3).len();
        for skip in 1..4 {
            let d = &data[skip..];
            let pl = plan(d).expect("fp32 data should be split");
            assert_eq!((pl.stride, pl.phase), (4, 4 - skip), "skip {skip}");
            let enc = encode(d, &pl, 3);
            assert!(enc.len() <= aligned + 64, "{} vs {aligned}", enc.len());
            assert_eq!(decode(&enc, d.len()).unwrap(), d);
        }
    }

    #[test]
    fn floats_get_a_plan_and_shrink_text_does_not() {
        let data = floats(1 << 18, 7);
        let pl = plan(&data).expect("fp32 data should be split");
        assert_eq!((pl.stride, pl.phase), (4, 0));
        let enc = encode(&data, &pl, 3);
        let plain = zstd::bulk::compress(&data, 3).unwrap();
        assert!(enc.len() < plain.len(), "{} vs {}", enc.len(), plain.len());
        let text = b"the quick brown fox jumps over the lazy dog ".repeat(30_000);
        assert!(plan(&text).is_none());
    }

    #[test]
    fn bad_payloads_are_errors() {
        let data = floats(1 << 16, 3);
        let enc = encode(&data, &p(4, 0), 3);
        assert!(decode(&enc, data.len() + 1).is_err());
        let mut phased = encode(&data, &p(4, 3), 3);
        phased[2] = 4;
        assert!(decode(&phased, data.len()).is_err());
        phased[2] = 0;
        assert!(decode(&phased, data.len()).is_err());
        assert!(decode(&enc[..enc.len() - 1], data.len()).is_err());
        let mut bad = enc.clone();
        bad[1] = 9;
        assert!(decode(&bad, data.len()).is_err());
    }
}
