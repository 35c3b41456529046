//! Blob format: an 88-byte header followed by the stored payload.
//!
//! ```text
//! offset size field
//!      0    4 magic "RWBL"
//!      4    1 kind   (1 = chunk of file data, 2 = manifest part)
//!      5    1 codec  (0 = raw, 1 = zstd, 2 = byte planes)
//!      6    2 flags  (bit 0: the payload is sealed, see crypto.rs; bit 1: fast
//!                     sums, below; others 0)
//!      8    4 raw_len    u32 LE, length of the content
//!     12    4 stored_len u32 LE, length of the payload that follows
//!     16   32 id         blake3 of the content (the chunk's address)
//!     48   32 stored_sum blake3 of the payload as stored; with fast sums
//!                         (flag bit 1, plain blobs of format 3) its first 24
//!                         bytes, then xxh3-64 of the payload (LE)
//!     80    8 header_sum first 8 bytes of blake3(header[0..80])
//!     88    . payload
//! ```
//! Reading verifies `header_sum`, caps the decompressed size at `raw_len`
//! (itself capped at [`MAX_RAW_LEN`]), and checks the payload: blake3 of
//! the result against `id` ([`Check::Content`]), or on the read path
//! ([`Check::Fast`]) xxh3 of a fast-summed payload or the tag of a sealed
//! one, with the content hash on one read in [`SEALED_SAMPLE`]. Never
//! wrong bytes. `stored_sum` lets a scrub ([`Check::Full`], `rewindfs
//! verify --read-data`) also name damage to a payload before decoding it,
//! and a rebuild check payloads without decompressing them.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::crypto::Crypto;
use crate::error::{Error, Result};

pub const BLOB_MAGIC: [u8; 4] = *b"RWBL";
pub const HEADER_LEN: usize = 88;
/// Byte ranges of the header fields (the table above, docs/format.md).
pub mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const KIND: usize = 4;
    pub const CODEC: usize = 5;
    pub const FLAGS: Range<usize> = 6..8;
    pub const RAW_LEN: Range<usize> = 8..12;
    pub const STORED_LEN: Range<usize> = 12..16;
    pub const ID: Range<usize> = 16..48;
    pub const STORED_SUM: Range<usize> = 48..80;
    /// The first 8 bytes of blake3 of everything before it.
    pub const HEADER_SUM: Range<usize> = 80..88;
}
/// No blob holds more than this many bytes of content (the largest block
/// size is 8 MiB; manifest parts are cut at 4 MiB).
pub const MAX_RAW_LEN: usize = 8 << 20;
/// Compression must save at least this fraction (1/32, about 3%) or the
/// block is stored raw.
const MIN_SAVING_DIVISOR: usize = 32;

/// A blake3 content address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

/// A chunk's id: blake3 keyed with `crypto`'s key in an encrypted
/// repository, plain blake3 otherwise.
pub fn chunk_id(crypto: Option<&Crypto>, data: &[u8]) -> ChunkId {
    match crypto {
        Some(c) => ChunkId(c.keyed_hash(data)),
        None => ChunkId::of(data),
    }
}

impl ChunkId {
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        crate::util::bytes::to_hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Result<ChunkId> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(Error::Corrupt(format!("bad chunk id {s:?}")));
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            let hi = (bytes[2 * i] as char).to_digit(16);
            let lo = (bytes[2 * i + 1] as char).to_digit(16);
            match (hi, lo) {
                (Some(h), Some(l)) => *o = (h * 16 + l) as u8,
                _ => return Err(Error::Corrupt(format!("bad chunk id {s:?}"))),
            }
        }
        Ok(ChunkId(out))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum BlobKind {
    Chunk = 1,
    Manifest = 2,
}

impl BlobKind {
    fn from_u8(v: u8) -> Result<BlobKind> {
        match v {
            1 => Ok(BlobKind::Chunk),
            2 => Ok(BlobKind::Manifest),
            _ => Err(Error::Corrupt(format!("unknown blob kind {v}"))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
    /// Byte planes, each raw or zstd (see `planes.rs`).
    Planes = 2,
}

impl Codec {
    pub fn from_u8(v: u8) -> Result<Codec> {
        match v {
            0 => Ok(Codec::Raw),
            1 => Ok(Codec::Zstd),
            2 => Ok(Codec::Planes),
            _ => Err(Error::Corrupt(format!(
                "unknown codec {v} (written by a newer rewindfs?)"
            ))),
        }
    }
}

/// The parsed header of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobHeader {
    pub kind: BlobKind,
    pub codec: Codec,
    pub raw_len: u32,
    pub stored_len: u32,
    pub id: ChunkId,
    pub stored_sum: [u8; 32],
    /// The payload is sealed (an encrypted repository).
    pub encrypted: bool,
    /// `stored_sum` holds 24 bytes of blake3 and xxh3-64 of the payload.
    pub fast_sum: bool,
}

/// Header flag: the payload is `nonce || ciphertext || tag`.
pub const FLAG_ENCRYPTED: u16 = 1;
/// Header flag: `stored_sum` ends with xxh3-64 of the payload (a check
/// the read path can afford for every blob; see [`Check::Fast`]).
pub const FLAG_FAST_SUM: u16 = 2;

/// xxh3-64 of a stored payload, as stored in the last 8 bytes of a
/// fast-summed header.
fn fast_sum(payload: &[u8]) -> [u8; 8] {
    xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes()
}

/// What a sealed payload is bound to: its kind, codec, length and id.
fn blob_ad(kind: BlobKind, codec: Codec, raw_len: u32, id: &ChunkId) -> [u8; 38] {
    let mut ad = [0u8; 38];
    ad[0] = kind as u8;
    ad[1] = codec as u8;
    ad[2..6].copy_from_slice(&raw_len.to_le_bytes());
    ad[6..].copy_from_slice(&id.0);
    ad
}

impl BlobHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[field::MAGIC].copy_from_slice(&BLOB_MAGIC);
        h[field::KIND] = self.kind as u8;
        h[field::CODEC] = self.codec as u8;
        let flags = if self.encrypted { FLAG_ENCRYPTED } else { 0 }
            | if self.fast_sum { FLAG_FAST_SUM } else { 0 };
        h[field::FLAGS].copy_from_slice(&flags.to_le_bytes());
        h[field::RAW_LEN].copy_from_slice(&self.raw_len.to_le_bytes());
        h[field::STORED_LEN].copy_from_slice(&self.stored_len.to_le_bytes());
        h[field::ID].copy_from_slice(&self.id.0);
        h[field::STORED_SUM].copy_from_slice(&self.stored_sum);
        let sum = blake3::hash(&h[..field::HEADER_SUM.start]);
        h[field::HEADER_SUM].copy_from_slice(&sum.as_bytes()[..field::HEADER_SUM.len()]);
        h
    }

    pub fn decode(h: &[u8]) -> Result<BlobHeader> {
        if h.len() < HEADER_LEN {
            return Err(Error::Corrupt("blob header truncated".into()));
        }
        if h[field::MAGIC] != BLOB_MAGIC {
            return Err(Error::Corrupt("blob header has a bad magic".into()));
        }
        let sum = blake3::hash(&h[..field::HEADER_SUM.start]);
        if h[field::HEADER_SUM] != sum.as_bytes()[..field::HEADER_SUM.len()] {
            return Err(Error::Corrupt("blob header checksum mismatch".into()));
        }
        let u32_at = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&h[r]);
            u32::from_le_bytes(b)
        };
        let raw_len = u32_at(field::RAW_LEN);
        let stored_len = u32_at(field::STORED_LEN);
        let flags = u16::from_le_bytes([h[field::FLAGS.start], h[field::FLAGS.start + 1]]);
        if flags & !(FLAG_ENCRYPTED | FLAG_FAST_SUM) != 0 || flags == FLAG_ENCRYPTED | FLAG_FAST_SUM
        {
            return Err(Error::Corrupt(format!(
                "blob header has unknown flags {flags:#x}"
            )));
        }
        if raw_len as usize > MAX_RAW_LEN || stored_len as usize > MAX_RAW_LEN + 4096 {
            return Err(Error::Corrupt(format!(
                "blob header claims {raw_len} bytes (cap {MAX_RAW_LEN})"
            )));
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&h[field::ID]);
        let mut stored_sum = [0u8; 32];
        stored_sum.copy_from_slice(&h[field::STORED_SUM]);
        Ok(BlobHeader {
            kind: BlobKind::from_u8(h[field::KIND])?,
            codec: Codec::from_u8(h[field::CODEC])?,
            raw_len,
            stored_len,
            id: ChunkId(id),
            stored_sum,
            encrypted: flags & FLAG_ENCRYPTED != 0,
            fast_sum: flags & FLAG_FAST_SUM != 0,
        })
    }

    /// Whether `payload` matches the stored checksum (blake3; with fast
    /// sums, its first 24 bytes and xxh3-64).
    pub fn stored_sum_matches(&self, payload: &[u8]) -> bool {
        let b = blake3::hash(payload);
        if self.fast_sum {
            b.as_bytes()[..24] == self.stored_sum[..24] && self.fast_sum_matches(payload)
        } else {
            *b.as_bytes() == self.stored_sum
        }
    }

    /// Whether xxh3-64 of `payload` is the one stored (fast sums only).
    fn fast_sum_matches(&self, payload: &[u8]) -> bool {
        fast_sum(payload) == self.stored_sum[24..]
    }
}

/// A blob ready to be appended to a pack.
pub struct EncodedBlob {
    pub header: BlobHeader,
    pub payload: Vec<u8>,
}

impl EncodedBlob {
    /// Total bytes this blob occupies in a pack.
    pub fn encoded_len(&self) -> u64 {
        HEADER_LEN as u64 + self.payload.len() as u64
    }
}

/// Encode `data` whose id is `id` (blake3, keyed with `crypto`'s key in
/// an encrypted repository). Compresses with zstd at `level` (0 disables
/// compression) and keeps the raw form when compression does not save
/// at least ~3%; then seals the payload when `crypto` is given.
pub fn encode(
    kind: BlobKind,
    id: ChunkId,
    data: &[u8],
    level: i32,
    crypto: Option<&Crypto>,
) -> Result<EncodedBlob> {
    encode_with(kind, id, data, level, crypto, false)
}

/// [`encode`], with fast sums (`fast`, plain blobs only: a sealed blob
/// has its authentication tag).
pub fn encode_with(
    kind: BlobKind,
    id: ChunkId,
    data: &[u8],
    level: i32,
    crypto: Option<&Crypto>,
    fast: bool,
) -> Result<EncodedBlob> {
    let fast = fast && crypto.is_none();
    if data.len() > MAX_RAW_LEN {
        return Err(Error::InvalidInput(format!(
            "blob of {} bytes exceeds the {MAX_RAW_LEN} byte cap",
            data.len()
        )));
    }
    let mut payload = None;
    // Tensors: split into byte planes when that beats plain zstd.
    if level > 0 && kind == BlobKind::Chunk {
        if let Some(plan) = super::planes::plan(data) {
            let p = super::planes::encode(data, &plan, level);
            if p.len() <= data.len() - data.len() / MIN_SAVING_DIVISOR {
                payload = Some((Codec::Planes, p));
            }
        }
    }
    if payload.is_none() && level > 0 && data.len() >= 64 && worth_compressing(data) {
        let limit = data.len() - data.len() / MIN_SAVING_DIVISOR;
        // Compress into a buffer no larger than the useful size: zstd
        // gives up (Err) as soon as the output would not fit, which is
        // exactly the "does not save ~3%" case.
        let mut buf = Vec::with_capacity(limit);
        if super::zstd::compress_into(data, &mut buf, level).is_ok() {
            payload = Some((Codec::Zstd, buf));
        }
    }
    let (codec, payload) = match (payload, crypto) {
        (Some(p), _) => p,
        // Sealed straight from `data` (no copy first).
        (None, Some(_)) => (Codec::Raw, Vec::new()),
        (None, None) => (Codec::Raw, data.to_vec()),
    };
    let raw_len = data.len() as u32;
    let (payload, mut stored_sum) = match crypto {
        Some(c) => {
            let inner: &[u8] = if codec == Codec::Raw { data } else { &payload };
            let sealed = c.seal(&blob_ad(kind, codec, raw_len, &id), inner)?;
            let sum = *blake3::hash(&sealed).as_bytes();
            (sealed, sum)
        }
        None if codec == Codec::Raw => (payload, id.0),
        None => {
            let sum = *blake3::hash(&payload).as_bytes();
            (payload, sum)
        }
    };
    if fast {
        stored_sum[24..].copy_from_slice(&fast_sum(&payload));
    }
    Ok(EncodedBlob {
        header: BlobHeader {
            kind,
            codec,
            raw_len,
            stored_len: payload.len() as u32,
            id,
            stored_sum,
            encrypted: crypto.is_some(),
            fast_sum: fast,
        },
        payload,
    })
}

/// Bytes sampled by [`worth_compressing`] from a large block.
const PROBE_LEN: usize = 16 << 10;

/// A cheap guess whether compressing `data` can save ~3%: compress a
/// sample from its middle at the fastest level. Random or encrypted blocks
/// then cost a few microseconds instead of a full compression pass.
fn worth_compressing(data: &[u8]) -> bool {
    if data.len() < 4 * PROBE_LEN {
        return true;
    }
    let start = (data.len() / 2) & !4095;
    let sample = &data[start..start + PROBE_LEN];
    let mut out = Vec::with_capacity(PROBE_LEN - PROBE_LEN / MIN_SAVING_DIVISOR);
    super::zstd::compress_into(sample, &mut out, 1).is_ok()
}

/// How much [`decode`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The content hash of the decoded bytes (enough for never returning
    /// wrong bytes: the decoders are bounded by `raw_len` and reject
    /// malformed input).
    Content,
    /// [`Check::Content`], except for a sealed payload: its AEAD tag,
    /// checked when it is opened, already proves it is the payload sealed
    /// under this repository's key for this id, kind, codec and length,
    /// so the keyed content hash after decoding (a check of the decoder
    /// itself) is computed for one read in [`SEALED_SAMPLE`] only. The
    /// read path of remote (untrusted) packs.
    Sealed,
    /// [`Check::Sealed`], and for a plain blob with fast sums: xxh3-64 of
    /// the stored payload (which catches any damage on disk) instead of
    /// blake3 of the content, which is computed for one read in
    /// [`SEALED_SAMPLE`] (a check of the codecs themselves). The read path
    /// of local packs: snapshot views, cat and restore.
    Fast,
    /// Also the checksum of the stored payload, before decoding.
    Full,
}

/// A blob read with [`Check::Sealed`] (sealed) or [`Check::Fast`] (fast
/// sums) gets its content hash checked once in this many reads.
pub const SEALED_SAMPLE: u64 = 16;

static SEALED_READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether this read checks the content hash after decoding: always,
/// unless the payload was already checked by something every read pays
/// for (a sealed payload's tag under [`Check::Sealed`] or [`Check::Fast`],
/// a fast sum under [`Check::Fast`]); then one read in [`SEALED_SAMPLE`].
fn content_hash_due(header: &BlobHeader, check: Check) -> bool {
    let covered = if header.encrypted {
        matches!(check, Check::Sealed | Check::Fast)
    } else {
        check == Check::Fast && header.fast_sum
    };
    !covered
        || SEALED_READS
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(SEALED_SAMPLE)
}

/// Verify and decode a payload read from a pack. `expect` is the id the
/// caller wants; any mismatch is an error, never wrong bytes. A raw
/// payload is returned as is, without a copy.
pub fn decode(
    header: &BlobHeader,
    mut payload: Vec<u8>,
    expect: &ChunkId,
    check: Check,
    crypto: Option<&Crypto>,
) -> Result<Vec<u8>> {
    if header.encrypted {
        check_stored(header, &payload, expect, check, crypto)?;
        open_payload(header, &mut payload, expect, crypto)?;
        return decode_plain(
            header,
            payload,
            expect,
            crypto,
            content_hash_due(header, check),
        );
    }
    if header.codec == Codec::Raw {
        check_stored(header, &payload, expect, check, crypto)?;
        return Ok(payload);
    }
    decode_ref(header, &payload, expect, check, Vec::new(), crypto)
}

/// Unseal an encrypted payload in place.
fn open_payload(
    header: &BlobHeader,
    payload: &mut Vec<u8>,
    expect: &ChunkId,
    crypto: Option<&Crypto>,
) -> Result<()> {
    let c = crypto.ok_or_else(|| {
        Error::Corrupt(format!(
            "chunk {expect} is encrypted and this repository has no key (an unencrypted repository holds no sealed blobs)"
        ))
    })?;
    let ad = blob_ad(header.kind, header.codec, header.raw_len, &header.id);
    c.open_in_place(&ad, payload, &|| format!("chunk {expect}"))
}

/// Decode an unsealed payload and check its keyed id (when `hash`).
fn decode_plain(
    header: &BlobHeader,
    inner: Vec<u8>,
    expect: &ChunkId,
    crypto: Option<&Crypto>,
    hash: bool,
) -> Result<Vec<u8>> {
    let out = match header.codec {
        Codec::Raw => {
            if inner.len() != header.raw_len as usize {
                return Err(Error::Corrupt(format!(
                    "chunk {expect}: {} bytes, expected {}",
                    inner.len(),
                    header.raw_len
                )));
            }
            inner
        }
        _ => {
            let plain = BlobHeader {
                encrypted: false,
                ..*header
            };
            return decode_content(&plain, &inner, expect, Vec::new(), crypto, hash);
        }
    };
    if hash && chunk_id(crypto, &out) != *expect {
        return Err(Error::Corrupt(format!(
            "chunk {expect}: content hash mismatch"
        )));
    }
    Ok(out)
}

/// [`decode`] from a borrowed payload into `out`'s allocation (used if it
/// is large enough; `out` may be empty). A raw payload is copied.
pub fn decode_ref(
    header: &BlobHeader,
    payload: &[u8],
    expect: &ChunkId,
    check: Check,
    out: Vec<u8>,
    crypto: Option<&Crypto>,
) -> Result<Vec<u8>> {
    check_stored(header, payload, expect, check, crypto)?;
    if header.encrypted {
        let mut inner = payload.to_vec();
        open_payload(header, &mut inner, expect, crypto)?;
        return decode_plain(
            header,
            inner,
            expect,
            crypto,
            content_hash_due(header, check),
        );
    }
    decode_content(
        header,
        payload,
        expect,
        out,
        crypto,
        content_hash_due(header, check),
    )
}

/// Decode an unsealed payload into `out` and check its id (when `hash`).
fn decode_content(
    header: &BlobHeader,
    payload: &[u8],
    expect: &ChunkId,
    out: Vec<u8>,
    crypto: Option<&Crypto>,
    hash: bool,
) -> Result<Vec<u8>> {
    let cap = header.raw_len as usize;
    let mut out = if out.capacity() >= cap {
        out
    } else {
        Vec::with_capacity(cap)
    };
    match header.codec {
        Codec::Raw => {
            out.clear();
            out.extend_from_slice(payload);
            return Ok(out);
        }
        Codec::Zstd => {
            super::zstd::decompress_into(payload, &mut out)
                .map_err(|e| Error::Corrupt(format!("chunk {expect}: zstd: {e}")))?;
        }
        Codec::Planes => {
            super::planes::decode_into(payload, cap, &mut out)
                .map_err(|e| Error::Corrupt(format!("chunk {expect}: {e}")))?;
        }
    }
    if out.len() != cap {
        return Err(Error::Corrupt(format!(
            "chunk {expect}: decompressed to {} bytes, expected {cap}",
            out.len()
        )));
    }
    if hash && chunk_id(crypto, &out) != *expect {
        return Err(Error::Corrupt(format!(
            "chunk {expect}: content hash mismatch after decompression"
        )));
    }
    Ok(out)
}

/// The checks made before decoding: the right blob, the right length,
/// the stored checksum when asked for, and for a raw payload (which is
/// the content) its content hash.
fn check_stored(
    header: &BlobHeader,
    payload: &[u8],
    expect: &ChunkId,
    check: Check,
    crypto: Option<&Crypto>,
) -> Result<()> {
    if crypto.is_some() && !header.encrypted {
        return Err(Error::Corrupt(format!(
            "chunk {expect} is not encrypted, in an encrypted repository (it was not written by this repository)"
        )));
    }
    if header.id != *expect {
        return Err(Error::Corrupt(format!(
            "blob holds {} but {} was expected",
            header.id, expect
        )));
    }
    if payload.len() != header.stored_len as usize {
        return Err(Error::Corrupt(format!(
            "chunk {expect}: payload is {} bytes, header says {}",
            payload.len(),
            header.stored_len
        )));
    }
    // The fast sum, on every read that relies on it and in scrubs.
    let bad_fast = header.fast_sum
        && matches!(check, Check::Fast | Check::Full)
        && !header.fast_sum_matches(payload);
    let bad_sum = bad_fast
        || match header.codec {
            // The payload is the content.
            Codec::Raw if !header.encrypted => {
                payload.len() != header.raw_len as usize
                    || (content_hash_due(header, check) && ChunkId::of(payload) != *expect)
            }
            _ => check == Check::Full && !header.stored_sum_matches(payload),
        };
    if bad_sum {
        return Err(Error::Corrupt(format!(
            "chunk {expect}: stored bytes do not match their checksum"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_compressible_and_random() {
        let text = b"hello world ".repeat(10_000);
        let id = ChunkId::of(&text);
        let b = encode(BlobKind::Chunk, id, &text, 3, None).unwrap();
        assert_eq!(b.header.codec, Codec::Zstd);
        let h = BlobHeader::decode(&b.header.encode()).unwrap();
        assert_eq!(h, b.header);
        assert_eq!(
            decode(&h, b.payload.clone(), &id, Check::Full, None).unwrap(),
            text
        );

        let mut rnd = vec![0u8; 100_000];
        let mut x: u64 = 12345;
        for v in rnd.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *v = x as u8;
        }
        let id = ChunkId::of(&rnd);
        let b = encode(BlobKind::Chunk, id, &rnd, 3, None).unwrap();
        assert_eq!(b.header.codec, Codec::Raw);
        assert_eq!(
            decode(&b.header, b.payload.clone(), &id, Check::Content, None).unwrap(),
            rnd
        );
    }

    /// Format 3: every read of a fast-summed blob checks xxh3-64 of its
    /// stored payload (and a sample also the content hash), so damage is
    /// caught on every read, for every codec; a scrub checks both sums.
    #[test]
    fn fast_sums_catch_damage_on_every_read() {
        let text = b"checkpoint step 17 ".repeat(8000);
        let floats = floats((256 << 10) / 4);
        let mut y: u64 = 12345;
        let noise: Vec<u8> = (0..100_000u32)
            .map(|_| {
                y ^= y << 13;
                y ^= y >> 7;
                y ^= y << 17;
                (y >> 24) as u8
            })
            .collect();
        let mut codecs = Vec::new();
        for data in [&text[..], &floats[..], &noise[..]] {
            let id = ChunkId::of(data);
            let b = encode_with(BlobKind::Chunk, id, data, 3, None, true).unwrap();
            codecs.push(b.header.codec);
            let h = BlobHeader::decode(&b.header.encode()).unwrap();
            assert!(h.fast_sum);
            assert_eq!(h, b.header);
            assert!(h.stored_sum_matches(&b.payload));
            for check in [Check::Content, Check::Fast, Check::Full] {
                assert_eq!(
                    decode(&h, b.payload.clone(), &id, check, None).unwrap(),
                    data
                );
                assert_eq!(
                    decode_ref(&h, &b.payload, &id, check, Vec::new(), None).unwrap(),
                    data
                );
            }
            for at in [0, b.payload.len() / 2, b.payload.len() - 1] {
                let mut bad = b.payload.clone();
                bad[at] ^= 0x20;
                assert!(!h.stored_sum_matches(&bad));
                for _ in 0..2 * SEALED_SAMPLE {
                    for check in [Check::Fast, Check::Full] {
                        assert!(decode(&h, bad.clone(), &id, check, None).is_err());
                        assert!(decode_ref(&h, &bad, &id, check, Vec::new(), None).is_err());
                    }
                }
            }
            // The same blob without fast sums (formats 1 and 2) is checked
            // by its content hash under Check::Fast.
            let old = encode(BlobKind::Chunk, id, data, 3, None).unwrap();
            assert!(!old.header.fast_sum);
            let mut bad = old.payload.clone();
            let at = bad.len() / 2;
            bad[at] ^= 0x20;
            assert!(decode(&old.header, bad, &id, Check::Fast, None).is_err());
        }
        assert_eq!(codecs, [Codec::Zstd, Codec::Planes, Codec::Raw]);
        // Both flags at once is not a header we write.
        let b = encode_with(BlobKind::Chunk, ChunkId::of(&text), &text, 3, None, true).unwrap();
        let mut raw = b.header.encode();
        raw[field::FLAGS].copy_from_slice(&(FLAG_ENCRYPTED | FLAG_FAST_SUM).to_le_bytes());
        let sum = blake3::hash(&raw[..field::HEADER_SUM.start]);
        raw[field::HEADER_SUM].copy_from_slice(&sum.as_bytes()[..8]);
        assert!(BlobHeader::decode(&raw).is_err());
    }

    #[test]
    fn flipped_bytes_are_detected() {
        let text = b"abcdefgh".repeat(5000);
        let id = ChunkId::of(&text);
        let b = encode(BlobKind::Chunk, id, &text, 3, None).unwrap();
        let mut bad = b.payload.clone();
        bad[3] ^= 1;
        assert!(decode(&b.header, bad.clone(), &id, Check::Full, None).is_err());
        assert!(decode(&b.header, bad, &id, Check::Content, None).is_err());
        let mut hdr = b.header.encode();
        hdr[9] ^= 1;
        assert!(BlobHeader::decode(&hdr).is_err());
        let other = ChunkId::of(b"x");
        assert!(decode(&b.header, b.payload.clone(), &other, Check::Content, None).is_err());
    }

    /// `n` small fp32 weights (little-endian bytes), reproducible.
    fn floats(n: usize) -> Vec<u8> {
        let mut x: u32 = 99;
        (0..n)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                ((x as f32 / u32::MAX as f32 - 0.5) * 0.02).to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn decoding_into_a_used_buffer_gives_only_the_content() {
        let text = b"tensor ".repeat(3000);
        let floats = floats(65_536);
        let mut codecs = Vec::new();
        for data in [&text[..], &floats[..], &b"x"[..]] {
            let id = ChunkId::of(data);
            let b = encode(BlobKind::Chunk, id, data, 3, None).unwrap();
            codecs.push(b.header.codec);
            // A recycled buffer: longer than the content, full of garbage.
            let used = vec![0xAB; data.len() * 2 + 10];
            let got = decode_ref(&b.header, &b.payload, &id, Check::Content, used, None).unwrap();
            assert_eq!(got, data, "codec {:?}", b.header.codec);
        }
        assert_eq!(codecs, [Codec::Zstd, Codec::Planes, Codec::Raw]);
    }

    #[test]
    fn hex_roundtrip() {
        let id = ChunkId::of(b"abc");
        assert_eq!(ChunkId::from_hex(&id.to_hex()).unwrap(), id);
        assert!(ChunkId::from_hex("zz").is_err());
    }

    #[test]
    fn sealed_blobs_round_trip_and_refuse_every_other_reading() {
        use crate::store::crypto::{Crypto, MASTER_LEN};
        let c = Crypto::from_master(&[7; MASTER_LEN]);
        let other = Crypto::from_master(&[8; MASTER_LEN]);
        let text = b"MARKER-plaintext ".repeat(4000);
        let rnd: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for data in [&text[..], &rnd[..]] {
            let id = chunk_id(Some(&c), data);
            let b = encode(BlobKind::Chunk, id, data, 3, Some(&c)).unwrap();
            assert!(b.header.encrypted);
            assert!(!b.payload.windows(6).any(|w| w == b"MARKER"));
            let h = BlobHeader::decode(&b.header.encode()).unwrap();
            assert!(h.encrypted);
            for check in [Check::Content, Check::Sealed, Check::Full] {
                assert_eq!(
                    decode(&h, b.payload.clone(), &id, check, Some(&c)).unwrap(),
                    data
                );
                assert_eq!(
                    decode_ref(&h, &b.payload, &id, check, Vec::new(), Some(&c)).unwrap(),
                    data
                );
            }
            // No key, the wrong key, a flipped byte: errors, never bytes.
            assert!(decode(&h, b.payload.clone(), &id, Check::Content, None).is_err());
            let e = decode(&h, b.payload.clone(), &id, Check::Content, Some(&other)).unwrap_err();
            assert!(e.to_string().contains("authentication failed"), "{e}");
            let mut bad = b.payload.clone();
            bad[30] ^= 4;
            assert!(decode(&h, bad, &id, Check::Content, Some(&c)).is_err());
            // A header that lies about the codec fails authentication.
            let lie = BlobHeader {
                codec: if h.codec == Codec::Raw {
                    Codec::Zstd
                } else {
                    Codec::Raw
                },
                ..h
            };
            assert!(decode(&lie, b.payload.clone(), &id, Check::Content, Some(&c)).is_err());
            // The read path's check skips the content hash of most sealed
            // reads, never the tag: every read of a damaged payload, or
            // with a header naming another id, fails.
            for _ in 0..2 * SEALED_SAMPLE {
                let mut bad = b.payload.clone();
                let at = bad.len() / 2;
                bad[at] ^= 1;
                assert!(decode(&h, bad, &id, Check::Sealed, Some(&c)).is_err());
                let mut bad = b.payload.clone();
                bad[at] ^= 1;
                assert!(decode_ref(&h, &bad, &id, Check::Sealed, Vec::new(), Some(&c)).is_err());
                let other_id = chunk_id(Some(&c), b"another chunk");
                let moved = BlobHeader { id: other_id, ..h };
                assert!(decode(
                    &moved,
                    b.payload.clone(),
                    &other_id,
                    Check::Sealed,
                    Some(&c)
                )
                .is_err());
            }
        }
        // Fast sums are for plain blobs only (a sealed one has its tag).
        let sealed = encode_with(
            BlobKind::Chunk,
            chunk_id(Some(&c), &text),
            &text,
            3,
            Some(&c),
            true,
        )
        .unwrap();
        assert!(!sealed.header.fast_sum && sealed.header.encrypted);
        // A plaintext blob in an encrypted repository is refused.
        let id = ChunkId::of(&text);
        let plain = encode(BlobKind::Chunk, id, &text, 3, None).unwrap();
        assert!(decode(&plain.header, plain.payload, &id, Check::Content, Some(&c)).is_err());
    }
}
