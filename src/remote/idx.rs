//! A pack's blob list on the remote (`packs/<id>.idx`): what a reader
//! needs to find blobs without reading every pack. Packs carry no
//! trailer, so the list is a separate object, uploaded after its pack.
//!
//! ```text
//! 0   8  magic "RWIDX\0\0\0"
//! 8   4  version u32 LE = 1
//! 12  4  count u32 LE
//! 16  8  pack id u64 LE
//! 24  8  pack length u64 LE (bytes of the uploaded pack)
//! 32  count x 58: chunk id (32) + location (26, store::pack::Location::encode)
//! end 32 blake3 of everything before
//! ```

use crate::error::{Error, Result};
use crate::store::blob::{ChunkId, HEADER_LEN};
use crate::store::pack::{Location, PACK_HEADER_LEN};

const MAGIC: [u8; 8] = *b"RWIDX\0\0\0";
const VERSION: u32 = 1;
const HEAD: usize = 32;
const ENTRY: usize = 58;
const SUM: usize = 32;
/// No pack holds more blobs than this (a 16 GiB pack of 64 KiB blocks).
pub const MAX_ENTRIES: usize = 1 << 18;

/// A pack's blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackIdx {
    pub pack: u64,
    pub pack_len: u64,
    pub blobs: Vec<(ChunkId, Location)>,
}

impl PackIdx {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEAD + self.blobs.len() * ENTRY + SUM);
        v.extend_from_slice(&MAGIC);
        v.extend_from_slice(&VERSION.to_le_bytes());
        v.extend_from_slice(&(self.blobs.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.pack.to_le_bytes());
        v.extend_from_slice(&self.pack_len.to_le_bytes());
        for (id, loc) in &self.blobs {
            v.extend_from_slice(&id.0);
            v.extend_from_slice(&loc.encode());
        }
        let sum = blake3::hash(&v);
        v.extend_from_slice(sum.as_bytes());
        v
    }

    /// Decode and check the list of pack `pack` (`what` names the object
    /// in errors).
    pub fn decode(b: &[u8], pack: u64, what: &str) -> Result<PackIdx> {
        let bad = |m: &str| Error::Corrupt(format!("{what}: {m}"));
        if b.len() < HEAD + SUM || b[..8] != MAGIC {
            return Err(bad("not a pack index"));
        }
        let (body, sum) = b.split_at(b.len() - SUM);
        if blake3::hash(body).as_bytes() != sum {
            return Err(bad("checksum mismatch (damaged object)"));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        if u32_at(8) != VERSION {
            return Err(bad(&format!("version {} is not supported", u32_at(8))));
        }
        let count = u32_at(12) as usize;
        if count > MAX_ENTRIES || body.len() != HEAD + count * ENTRY {
            return Err(bad("its length does not match its count"));
        }
        if u64_at(16) != pack {
            return Err(bad(&format!("it lists pack {:x}", u64_at(16))));
        }
        let pack_len = u64_at(24);
        let mut blobs = Vec::with_capacity(count);
        for e in body[HEAD..].chunks_exact(ENTRY) {
            let mut id = [0u8; 32];
            id.copy_from_slice(&e[..32]);
            let loc = Location::decode(&e[32..])?;
            let end = loc
                .offset
                .checked_add(HEADER_LEN as u64 + loc.stored_len as u64);
            if loc.pack != pack || loc.offset < PACK_HEADER_LEN || end.is_none_or(|e| e > pack_len)
            {
                return Err(bad("an entry points outside its pack"));
            }
            blobs.push((ChunkId(id), loc));
        }
        Ok(PackIdx {
            pack,
            pack_len,
            blobs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::blob::{BlobKind, Codec};

    fn sample() -> PackIdx {
        let loc = |offset| Location {
            pack: 9,
            offset,
            stored_len: 100,
            raw_len: 200,
            codec: Codec::Zstd,
            kind: BlobKind::Chunk,
        };
        PackIdx {
            pack: 9,
            pack_len: 1000,
            blobs: vec![(ChunkId::of(b"a"), loc(16)), (ChunkId::of(b"b"), loc(204))],
        }
    }

    #[test]
    fn round_trip_and_every_flipped_byte_is_caught() {
        let i = sample();
        let b = i.encode();
        assert_eq!(PackIdx::decode(&b, 9, "x").unwrap(), i);
        assert!(PackIdx::decode(&b, 8, "x").is_err());
        for at in 0..b.len() {
            let mut c = b.clone();
            c[at] ^= 0x10;
            assert!(PackIdx::decode(&c, 9, "x").is_err(), "byte {at}");
        }
        assert!(PackIdx::decode(&b[..b.len() - 1], 9, "x").is_err());
    }

    #[test]
    fn entries_outside_the_pack_are_refused() {
        let mut i = sample();
        i.pack_len = 300;
        assert!(PackIdx::decode(&i.encode(), 9, "x").is_err());
    }
}
