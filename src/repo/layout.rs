//! The names of everything in a repository directory, in one place.
//! docs/format.md ("Layout") describes each entry; these constants mirror
//! it, and no other file spells a repository name.
//!
//! ```text
//! REPO/
//!   config.json            CONFIG
//!   lock                   LOCK
//!   packs/<16 hex>.pack    PACKS (file names: store::pack::pack_file_name)
//!   snapshots/<id>.json    SNAPSHOTS (file names: SnapshotRecord::file_name)
//!   index/                 INDEX
//!   index.old-<time>/      INDEX_OLD (moved aside by rebuild-index)
//!   index.damaged-<time>/  INDEX_DAMAGED (moved aside when unreadable)
//!   mounted                MARKER
//!   control.sock           SOCKET
//!   daemon.log             LOG
//!   verify-state.json      VERIFY_STATE (rolling verification's place)
//!   keep/                  KEEP (track::keep: checkpoints deleted or
//!                          replaced through the mount before a snapshot
//!                          held them, waiting for one: <id>.rec, <id>.data)
//!   cache/                 CACHE (what can be deleted at any time)
//!     materialized/        MATERIALIZED (views::materialize: copies of
//!                          snapshot files served by passthrough)
//!     unique.json          retention::space::UNIQUE_CACHE (unique sizes)
//!     ledger/<16 hex>.delta retention::ledger::LEDGER_DIR (the reference
//!                          ledger: each snapshot's change in references)
//!     gc/                  repo::candidates::GC_DIR (gc's candidate list,
//!                          the session marker)
//!   .tmp.<name>.<pid>      TMP_PREFIX (an atomic replacement in progress)
//! ```
//! Copy-before-write spill files, the live daemon's inode index file and
//! a capture's list of appended chunks (in `packs/`) have no name
//! (`O_TMPFILE`).

pub const CONFIG: &str = "config.json";
pub const LOCK: &str = "lock";
pub const PACKS: &str = "packs";
pub const SNAPSHOTS: &str = "snapshots";
pub const INDEX: &str = "index";
pub const INDEX_OLD: &str = "index.old";
pub const INDEX_DAMAGED: &str = "index.damaged";
/// Present while a live mount runs; left behind by an unclean stop.
pub const MARKER: &str = "mounted";
/// The control socket of the daemon holding the repository.
pub const SOCKET: &str = "control.sock";
/// The daemon's log when it runs in the background.
pub const LOG: &str = "daemon.log";
/// Where rolling verification (`--verify-every`) is in its rotation.
pub const VERIFY_STATE: &str = "verify-state.json";
/// Checkpoints kept aside until a snapshot holds them (`track::keep`).
pub const KEEP: &str = "keep";
/// Caches: nothing in them is repository data, all can be deleted.
pub const CACHE: &str = "cache";
/// The metrics listener's access token (0600: its readers may read the
/// repository's figures).
pub const WEB_TOKEN: &str = "web-token";
/// Verified copies of snapshot files (`views::materialize`).
pub const MATERIALIZED: &str = "materialized";
/// Temporary files of an atomic replacement (`Dir::write_atomic`).
pub use crate::util::dirfd::TMP_PREFIX;
/// Modes of everything a repository holds.
pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;
