//! Encryption of an encrypted repository (`rewindfs init --encrypt`):
//! XChaCha20-Poly1305 with a random 192-bit nonce per sealed item, and
//! chunk ids keyed with a secret (keyed blake3), so that stored ids say
//! nothing about content. The keys derive from a 64-byte master secret
//! (repo/keys.rs keeps it wrapped under a passphrase or a key file).
//!
//! A sealed item is `nonce (24) || ciphertext || tag (16)`; its
//! associated data binds it to what it claims to be (a blob's kind,
//! codec, length and id; a record's id), so moving sealed bytes to
//! another place fails authentication like any tampering. A wrong key
//! and a damaged item both fail authentication: never wrong bytes.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

use crate::error::{Error, Result};

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed item adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
pub const MASTER_LEN: usize = 64;

/// The keys of one encrypted repository.
pub struct Crypto {
    aead: XChaCha20Poly1305,
    id_key: [u8; 32],
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crypto(keys hidden)")
    }
}

/// Fill `buf` from the operating system's secure random source.
pub fn random(buf: &mut [u8]) -> Result<()> {
    getrandom::getrandom(buf).map_err(|e| {
        Error::io(
            "read random bytes",
            "getrandom",
            std::io::Error::other(e.to_string()),
        )
    })
}

impl Crypto {
    /// The keys derived from a master secret.
    pub fn from_master(master: &[u8; MASTER_LEN]) -> Crypto {
        let enc = blake3::derive_key("rewindfs 2026-12 blob and record encryption", master);
        let ids = blake3::derive_key("rewindfs 2026-12 chunk ids", master);
        Crypto {
            aead: XChaCha20Poly1305::new(Key::from_slice(&enc)),
            id_key: ids,
        }
    }

    /// A key-encryption key used directly (wrapping the master secret).
    pub fn wrapping(kek: &[u8; 32]) -> Crypto {
        Crypto {
            aead: XChaCha20Poly1305::new(Key::from_slice(kek)),
            id_key: [0; 32],
        }
    }

    /// Keyed blake3 of `data`: a chunk's id in an encrypted repository
    /// (see `blob::chunk_id`).
    pub fn keyed_hash(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.id_key, data).as_bytes()
    }

    /// Seal `plain`: `nonce || ciphertext || tag`.
    pub fn seal(&self, ad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.resize(NONCE_LEN, 0);
        random(&mut out[..NONCE_LEN])?;
        out.extend_from_slice(plain);
        let nonce = *XNonce::from_slice(&out[..NONCE_LEN]);
        let tag = self
            .aead
            .encrypt_in_place_detached(&nonce, ad, &mut out[NONCE_LEN..])
            .map_err(|_| Error::InvalidInput("encryption failed".into()))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Open a sealed item in place: `buf` becomes the plaintext. `what`
    /// names it in the error.
    pub fn open_in_place(
        &self,
        ad: &[u8],
        buf: &mut Vec<u8>,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        if buf.len() < OVERHEAD {
            return Err(auth_error(what()));
        }
        let tag_at = buf.len() - TAG_LEN;
        let nonce = *XNonce::from_slice(&buf[..NONCE_LEN]);
        let tag = *chacha20poly1305::Tag::from_slice(&buf[tag_at..]);
        self.aead
            .decrypt_in_place_detached(&nonce, ad, &mut buf[NONCE_LEN..tag_at], &tag)
            .map_err(|_| auth_error(what()))?;
        buf.truncate(tag_at);
        buf.drain(..NONCE_LEN);
        Ok(())
    }

    /// Open a sealed item into a new buffer.
    pub fn open(&self, ad: &[u8], sealed: &[u8], what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        let mut buf = sealed.to_vec();
        self.open_in_place(ad, &mut buf, what)?;
        Ok(buf)
    }
}

fn auth_error(what: String) -> Error {
    Error::Corrupt(format!(
        "{what}: authentication failed (the object was changed or damaged, or the key is not this repository's)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(b: u8) -> Crypto {
        Crypto::from_master(&[b; MASTER_LEN])
    }

    #[test]
    fn seal_open_and_every_kind_of_tampering_fails() {
        let c = keys(1);
        let s = c.seal(b"ad", b"secret data").unwrap();
        assert_eq!(s.len(), 11 + OVERHEAD);
        assert!(!s.windows(6).any(|w| w == b"secret"));
        assert_eq!(c.open(b"ad", &s, &|| "x".into()).unwrap(), b"secret data");
        // Fresh nonces: sealing twice differs.
        assert_ne!(c.seal(b"ad", b"secret data").unwrap(), s);
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert!(c.open(b"ad", &t, &|| "x".into()).is_err(), "byte {i}");
        }
        assert!(c.open(b"other", &s, &|| "x".into()).is_err());
        let e = keys(2).open(b"ad", &s, &|| "pack 7".into()).unwrap_err();
        assert!(
            e.to_string().contains("pack 7: authentication failed"),
            "{e}"
        );
        assert!(c.open(b"ad", &s[..10], &|| "x".into()).is_err());
    }

    #[test]
    fn ids_are_keyed() {
        use crate::store::blob::{chunk_id, ChunkId};
        let (a, b) = (keys(1), keys(2));
        assert_ne!(chunk_id(Some(&a), b"block"), ChunkId::of(b"block"));
        assert_ne!(a.keyed_hash(b"block"), b.keyed_hash(b"block"));
        assert_eq!(chunk_id(Some(&a), b"block").0, a.keyed_hash(b"block"));
        assert_eq!(chunk_id(None, b"block"), ChunkId::of(b"block"));
    }
}
