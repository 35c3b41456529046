//! The keys of an encrypted repository (`rewindfs init --encrypt`).
//!
//! A 64-byte master secret, random, from which store::crypto derives the
//! encryption key and the chunk-id key. It is stored only wrapped, in
//! `REPO/keys/<16 hex>.json`, sealed under a key-encryption key that
//! comes from a passphrase (Argon2id, 64 MiB, 3 passes, 4 lanes, random
//! salt; the parameters are stored with it) or from a key file (at least
//! 32 bytes of secret, hashed with the salt). The key is taken from
//! `REWINDFS_KEY_FILE` (a file), `REWINDFS_PASSWORD_FILE` (its first
//! line) or `REWINDFS_PASSWORD`, in that order. A wrong passphrase fails
//! authentication of the wrapped secret: a clear error, nothing read.
//!
//! Snapshot records of an encrypted repository are sealed too:
//! `"RWREC\x01\0\0" || nonce || ciphertext || tag`, bound to their id.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use super::config::EncryptionConfig;
use super::config::RepoConfig;
use crate::error::{Error, Result};
use crate::snapshot::model::SnapshotRecord;
use crate::store::crypto::{random, Crypto, MASTER_LEN};
use crate::util::bytes::to_hex as hex;
use crate::util::dirfd::Dir;

/// `REPO/keys/`.
pub const KEYS_DIR: &str = "keys";
const MAX_KEY_FILE: u64 = 64 << 10;
const RECORD_MAGIC: &[u8; 8] = b"RWREC\x01\0\0";

/// Read a key or password file: a regular file (never a device, a FIFO
/// or a socket: `/dev/zero` would be read for ever), at most
/// [`MAX_KEY_FILE`] bytes, that other users can neither read nor write
/// (refused, as ssh refuses a private key others can read); one its
/// group can read is used with a warning.
pub fn read_secret_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let op: &'static str = if what == "key file" {
        "read key file"
    } else {
        "read password file"
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(op, path, e))?;
    let md = f.metadata().map_err(|e| Error::io(op, path, e))?;
    if !md.file_type().is_file() {
        return Err(Error::InvalidInput(format!(
            "{what} {} is not a regular file",
            path.display()
        )));
    }
    if md.len() > MAX_KEY_FILE {
        return Err(Error::InvalidInput(format!(
            "{what} {} is {} bytes; a {what} holds at most {MAX_KEY_FILE}",
            path.display(),
            md.len()
        )));
    }
    if md.mode() & 0o026 != 0 || md.mode() & 0o004 != 0 {
        return Err(Error::InvalidInput(format!(
            "{what} {} can be read or changed by other users (mode {:o}): `chmod 600 {}`",
            path.display(),
            md.mode() & 0o7777,
            path.display()
        )));
    }
    if md.mode() & 0o040 != 0 {
        tracing::warn!(
            "{what} {} is readable by its group (mode {:o}); `chmod 600` keeps it yours alone",
            path.display(),
            md.mode() & 0o7777
        );
    }
    let mut b = Vec::new();
    f.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut b)
        .map_err(|e| Error::io(op, path, e))?;
    if b.len() as u64 > MAX_KEY_FILE {
        return Err(Error::InvalidInput(format!(
            "{what} {} grew past {MAX_KEY_FILE} bytes while read",
            path.display()
        )));
    }
    Ok(b)
}

/// Where the key comes from.
pub enum KeySource {
    Passphrase(Vec<u8>),
    KeyFile(Vec<u8>),
}

impl KeySource {
    /// From the environment (see the module doc); `None` if nothing is set.
    pub fn from_env() -> Result<Option<KeySource>> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(p) = var("REWINDFS_KEY_FILE") {
            let b = read_secret_file(std::path::Path::new(&p), "key file")?;
            if b.len() < 32 {
                return Err(Error::InvalidInput(format!(
                    "key file {} holds {} bytes; a key file needs at least 32 bytes of secret (e.g. `head -c 32 /dev/urandom > FILE`)",
                    std::path::Path::new(&p).display(),
                    b.len()
                )));
            }
            return Ok(Some(KeySource::KeyFile(b)));
        }
        if let Some(p) = var("REWINDFS_PASSWORD_FILE") {
            let b = read_secret_file(std::path::Path::new(&p), "password file")?;
            let line = b.split(|c| *c == b'\n').next().unwrap_or(&[]).to_vec();
            return KeySource::passphrase(line).map(Some);
        }
        if let Some(p) = var("REWINDFS_PASSWORD") {
            use std::os::unix::ffi::OsStrExt;
            return KeySource::passphrase(p.as_bytes().to_vec()).map(Some);
        }
        Ok(None)
    }

    fn passphrase(p: Vec<u8>) -> Result<KeySource> {
        if p.len() < 8 {
            return Err(Error::InvalidInput(
                "the passphrase must have at least 8 characters".into(),
            ));
        }
        Ok(KeySource::Passphrase(p))
    }

    /// The key-encryption key for `kdf`.
    fn kek(&self, kdf: &Kdf) -> Result<[u8; 32]> {
        let salt = hex_decode(&kdf.salt)?;
        match (self, kdf.algorithm.as_str()) {
            (KeySource::Passphrase(_), "argon2id")
                if kdf.m_kib > MAX_M_KIB || kdf.t > MAX_T || kdf.p > MAX_P =>
            {
                Err(Error::Corrupt(format!(
                    "key parameters out of range (m {} KiB, t {}, p {})",
                    kdf.m_kib, kdf.t, kdf.p
                )))
            }
            (KeySource::Passphrase(p), "argon2id") => {
                let params = argon2::Params::new(kdf.m_kib, kdf.t, kdf.p, Some(32))
                    .map_err(|e| Error::Corrupt(format!("key parameters: {e}")))?;
                let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
                let mut out = [0u8; 32];
                a.hash_password_into(p, &salt, &mut out)
                    .map_err(|e| Error::InvalidInput(format!("argon2: {e}")))?;
                Ok(out)
            }
            (KeySource::KeyFile(k), "keyfile") => {
                let mut h = blake3::Hasher::new_derive_key("rewindfs 2026-12 key file");
                h.update(&salt);
                h.update(k);
                Ok(*h.finalize().as_bytes())
            }
            (KeySource::Passphrase(_), _) => Err(Error::InvalidInput(
                "this key needs a key file (REWINDFS_KEY_FILE), not a passphrase".into(),
            )),
            (KeySource::KeyFile(_), _) => Err(Error::InvalidInput(
                "this key needs a passphrase (REWINDFS_PASSWORD or REWINDFS_PASSWORD_FILE), not a key file".into(),
            )),
        }
    }

    fn kdf(&self) -> Result<Kdf> {
        let mut salt = [0u8; 16];
        random(&mut salt)?;
        Ok(match self {
            KeySource::Passphrase(_) => Kdf {
                algorithm: "argon2id".into(),
                m_kib: 64 * 1024,
                t: 3,
                p: 4,
                salt: hex(&salt),
            },
            KeySource::KeyFile(_) => Kdf {
                algorithm: "keyfile".into(),
                m_kib: 0,
                t: 0,
                p: 0,
                salt: hex(&salt),
            },
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Kdf {
    /// `argon2id` (a passphrase) or `keyfile`.
    algorithm: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
}

/// `REPO/keys/<id>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct KeyFile {
    id: String,
    created: String,
    kdf: Kdf,
    /// The master secret sealed under the key-encryption key (hex).
    wrapped: String,
}

fn hex_decode(s: &str) -> Result<Vec<u8>> {
    let bad = || Error::Corrupt("bad hex in a key file".into());
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) || b.len() > 4096 {
        return Err(bad());
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8).ok_or_else(bad);
    b.chunks_exact(2)
        .map(|p| Ok(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

/// Key files can come from a bucket: their cost parameters are bounded
/// (a forged file must not make unlocking take all memory or hours).
const MAX_M_KIB: u32 = 1 << 20;
const MAX_T: u32 = 16;
const MAX_P: u32 = 16;
/// Key files tried at most (each passphrase attempt costs an Argon2 run).
const MAX_KEY_FILES: usize = 16;

fn wrap_ad(key_id: &str, repo_id: &str) -> Vec<u8> {
    format!("rewindfs key {key_id} of {repo_id}").into_bytes()
}

/// Create the keys of a new encrypted repository in `dir`: a fresh
/// master secret wrapped under `source`. Returns the crypto.
pub fn create(dir: &Dir, repo_id: &str, source: &KeySource) -> Result<Crypto> {
    let mut master = [0u8; MASTER_LEN];
    random(&mut master)?;
    let kdf = source.kdf()?;
    let kek = source.kek(&kdf)?;
    let mut idb = [0u8; 8];
    random(&mut idb)?;
    let id = hex(&idb);
    let wrapped = Crypto::wrapping(&kek).seal(&wrap_ad(&id, repo_id), &master)?;
    let kf = KeyFile {
        id: id.clone(),
        created: crate::util::time::rfc3339(crate::util::time::now_ns()),
        kdf,
        wrapped: hex(&wrapped),
    };
    let keys = dir.ensure_dir(KEYS_DIR, 0o700)?;
    let bytes = serde_json::to_vec_pretty(&kf).map_err(|e| Error::InvalidInput(e.to_string()))?;
    keys.write_atomic(&format!("{id}.json"), &bytes)?;
    Ok(Crypto::from_master(&master))
}

/// The names of the key files in `REPO/keys/`.
pub fn key_files(dir: &Dir) -> Result<Vec<String>> {
    let Ok(keys) = dir.open_dir(KEYS_DIR) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<String> = keys
        .names()?
        .into_iter()
        .filter_map(|n| String::from_utf8(n).ok())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect();
    out.sort();
    Ok(out)
}

/// The crypto of the repository in `dir` whose config is `config`:
/// `None` for an unencrypted one; the key from the environment.
pub fn unlock(dir: &Dir, config: &RepoConfig) -> Result<Option<Arc<Crypto>>> {
    let Some(enc) = &config.encryption else {
        return Ok(None);
    };
    enc.check()?;
    let source = KeySource::from_env()?.ok_or_else(|| {
        Error::InvalidInput(format!(
            "repository {} is encrypted: give its passphrase (REWINDFS_PASSWORD or REWINDFS_PASSWORD_FILE) or its key file (REWINDFS_KEY_FILE)",
            dir.path().display()
        ))
    })?;
    let keys = dir.open_dir(KEYS_DIR).map_err(|_| {
        Error::Corrupt(format!(
            "repository {} is encrypted but has no keys/ directory",
            dir.path().display()
        ))
    })?;
    let mut last = None;
    for name in key_files(dir)?.into_iter().take(MAX_KEY_FILES) {
        let parsed = keys
            .read(&name, MAX_KEY_FILE)
            .and_then(|b| b.ok_or_else(|| Error::Corrupt(format!("key {name} vanished"))))
            .and_then(|bytes| {
                serde_json::from_slice::<KeyFile>(&bytes)
                    .map_err(|e| Error::Corrupt(format!("{}: {e}", keys.join(&name).display())))
            });
        let kf = match parsed {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!("{e}; skipped");
                last = Some(e);
                continue;
            }
        };
        let kek = match source.kek(&kf.kdf) {
            Ok(k) => k,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let sealed = match hex_decode(&kf.wrapped) {
            Ok(s) => s,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        match Crypto::wrapping(&kek).open(&wrap_ad(&kf.id, &config.repo_id), &sealed, &|| {
            format!("key {}", kf.id)
        }) {
            Ok(m) if m.len() == MASTER_LEN => {
                let mut master = [0u8; MASTER_LEN];
                master.copy_from_slice(&m);
                return Ok(Some(Arc::new(Crypto::from_master(&master))));
            }
            _ => {
                last = Some(Error::InvalidInput(format!(
                    "wrong passphrase or key file for repository {}",
                    dir.path().display()
                )))
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        Error::Corrupt(format!(
            "repository {} is encrypted but has no key files",
            dir.path().display()
        ))
    }))
}

fn record_ad(id: u64) -> Vec<u8> {
    let mut ad = b"rewindfs record ".to_vec();
    ad.extend_from_slice(&id.to_le_bytes());
    ad
}

/// The bytes of a record file (sealed in an encrypted repository).
pub fn encode_record(crypto: Option<&Crypto>, rec: &SnapshotRecord) -> Result<Vec<u8>> {
    let json = rec.to_json()?;
    match crypto {
        None => Ok(json),
        Some(c) => {
            let mut out = RECORD_MAGIC.to_vec();
            out.extend_from_slice(&c.seal(&record_ad(rec.id), &json)?);
            Ok(out)
        }
    }
}

/// A record from its file's bytes (unsealed and checked).
pub fn decode_record(crypto: Option<&Crypto>, bytes: &[u8], id: u64) -> Result<SnapshotRecord> {
    match (crypto, bytes.strip_prefix(RECORD_MAGIC.as_slice())) {
        (Some(c), Some(sealed)) => {
            let json = c.open(&record_ad(id), sealed, &|| format!("snapshot record {id}"))?;
            SnapshotRecord::from_json_as(&json, id)
        }
        (None, None) => SnapshotRecord::from_json_as(bytes, id),
        (None, Some(_)) => Err(Error::Corrupt(format!(
            "snapshot record {id} is sealed, in an unencrypted repository"
        ))),
        (Some(_), None) => Err(Error::Corrupt(format!(
            "snapshot record {id} is not sealed, in an encrypted repository (it was not written by this repository)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_decoded_from_bytes_and_bad_input_is_an_error() {
        assert_eq!(hex_decode("00ff10").unwrap(), vec![0, 255, 16]);
        for bad in ["0", "zz", "\u{20ac}x", "0g"] {
            assert!(hex_decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forged_cost_parameters_are_refused_before_any_work() {
        let k = KeySource::Passphrase(b"long enough".to_vec());
        let kdf = Kdf {
            algorithm: "argon2id".into(),
            m_kib: u32::MAX,
            t: 3,
            p: 4,
            salt: "00".repeat(16),
        };
        assert!(k.kek(&kdf).is_err());
        let kf = KeySource::KeyFile(vec![1; 32]);
        assert!(kf.kek(&kdf).is_err(), "a key file for a passphrase key");
    }
}
