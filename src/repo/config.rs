//! `config.json`: the repository's settings, and the snapshot policy a
//! repository may store for its live mounts (the flusher interprets it;
//! the schema lives here, with the file it is stored in).
//!
//! Invariant: a config is accepted only if every value is in range; the
//! format version must be one this build reads.

use serde::{Deserialize, Serialize};

use super::layout::CONFIG;
use crate::error::{Error, Result};
use crate::store::ChunkId;
use crate::util::dirfd::Dir;
use crate::util::time;

pub const FORMAT_VERSION: u32 = 1;
/// The format of an encrypted repository (format 1 plus sealed blobs and
/// records, keyed chunk ids and `keys/`): a rewindfs that knows only
/// format 1 refuses it instead of misreading it.
pub const ENCRYPTED_FORMAT_VERSION: u32 = 2;
/// A plain repository whose blobs carry fast sums (blob flag bit 1): what
/// `init` creates without encryption. Formats 1 and 2 are still read and
/// written as they are.
pub const FAST_SUMS_FORMAT_VERSION: u32 = 3;
pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;
pub const MIN_BLOCK_SIZE: u32 = 64 << 10;
pub const MAX_BLOCK_SIZE: u32 = 8 << 20;
pub const DEFAULT_COMPRESSION: i32 = 3;
pub const DEFAULT_PACK_TARGET: u64 = 64 << 20;
/// The largest config.json read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Snapshot policy of a live mount. Durations are humantime strings
/// (`15m`, `24h`, `2s`); `off` (or absent) disables a cadence.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyConfig {
    pub every: Option<String>,
    pub differential_every: Option<String>,
    pub full_every: Option<String>,
    /// Cron expressions per kind, in local time (`0 2 * * SUN`); one
    /// given replaces the same kind's interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differential_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental_at: Option<String>,
    /// Daily windows (`01:00-05:00`, local time) that full and
    /// differential snapshots, retention's gc and rolling verification
    /// keep to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub window: Vec<String>,
    /// The IANA time zone of the schedule (absent: the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// `auto`, `always` or `never`: whether a scheduled full snapshot is
    /// built from the previous snapshot's manifests and the journal's
    /// changes instead of re-reading the dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic_fulls: Option<String>,
    pub on_close: Vec<String>,
    /// The checkpoint fast path's patterns, replacing the default set
    /// (`["none"]` or empty: no default patterns; the `on_close` globs
    /// always count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<Vec<String>>,
    pub settle: Option<String>,
    /// The longest an on-close snapshot waits for quiet (absent: 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_max: Option<String>,
    /// Whether closing a checkpoint takes a snapshot (absent: yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_snapshots: Option<bool>,
    pub snapshot_on_unmount: Option<bool>,
    /// Retention applied by the daemon after each snapshot (restic's
    /// `--keep-*` rules; absent: nothing is removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// A humantime duration (`7d`, `36h`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keep_label: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub format_version: u32,
    pub block_size: u32,
    /// zstd level; 0 stores everything raw.
    pub compression_level: i32,
    pub pack_target_size: u64,
    pub repo_id: String,
    pub created: String,
    /// Snapshot policy of live mounts (command-line flags win).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyConfig>,
    /// Present in an encrypted repository (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
}

impl RepoConfig {
    pub fn new(block_size: u32, compression_level: i32) -> Result<RepoConfig> {
        check_params(block_size, compression_level)?;
        let now = time::now_ns();
        let seed = format!(
            "{now}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        Ok(RepoConfig {
            format_version: FAST_SUMS_FORMAT_VERSION,
            block_size,
            compression_level,
            pack_target_size: DEFAULT_PACK_TARGET,
            repo_id: ChunkId::of(seed.as_bytes()).to_hex()[..32].to_string(),
            created: time::rfc3339(now),
            policy: None,
            encryption: None,
        })
    }
}

fn check_params(block_size: u32, compression_level: i32) -> Result<()> {
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(Error::InvalidInput(format!(
            "block size {block_size} must be a power of two from 64 KiB to 8 MiB"
        )));
    }
    if !(0..=19).contains(&compression_level) {
        return Err(Error::InvalidInput(format!(
            "compression level {compression_level} must be 0 (off) to 19"
        )));
    }
    Ok(())
}

pub fn read_config(dir: &Dir) -> Result<RepoConfig> {
    let p = dir.join(CONFIG);
    let bytes = dir
        .read(CONFIG, MAX_CONFIG_BYTES)?
        .ok_or_else(|| Error::NotARepository {
            path: dir.path().to_path_buf(),
        })?;
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    let v: Version = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Corrupt(format!("{}: {e}", p.display())))?;
    if ![
        FORMAT_VERSION,
        ENCRYPTED_FORMAT_VERSION,
        FAST_SUMS_FORMAT_VERSION,
    ]
    .contains(&v.format_version)
    {
        return Err(Error::UnsupportedFormat {
            path: dir.path().to_path_buf(),
            found: v.format_version,
            supported: FAST_SUMS_FORMAT_VERSION,
        });
    }
    let c: RepoConfig = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Corrupt(format!("{}: {e}", p.display())))?;
    check_params(c.block_size, c.compression_level)
        .map_err(|e| Error::Corrupt(format!("{}: {e}", p.display())))?;
    if (c.format_version == ENCRYPTED_FORMAT_VERSION) != c.encryption.is_some() {
        return Err(Error::Corrupt(format!(
            "{}: format version {} does not match its encryption setting",
            p.display(),
            c.format_version
        )));
    }
    if c.pack_target_size < 1 << 20 || c.pack_target_size > 1 << 34 {
        return Err(Error::Corrupt(format!(
            "{}: pack_target_size {} is out of range (1 MiB to 16 GiB)",
            p.display(),
            c.pack_target_size
        )));
    }
    Ok(c)
}

/// The `encryption` block of config.json.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionConfig {
    /// `xchacha20-poly1305`.
    pub cipher: String,
    /// `blake3-keyed`.
    pub chunk_ids: String,
}

impl EncryptionConfig {
    pub fn current() -> EncryptionConfig {
        EncryptionConfig {
            cipher: "xchacha20-poly1305".into(),
            chunk_ids: "blake3-keyed".into(),
        }
    }

    pub fn check(&self) -> Result<()> {
        if *self != EncryptionConfig::current() {
            return Err(Error::InvalidInput(format!(
                "the repository uses encryption {} / {}, which this rewindfs does not know",
                self.cipher, self.chunk_ids
            )));
        }
        Ok(())
    }
}
