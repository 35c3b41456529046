//! rewindfs: a continuous-backup filesystem for AI data.
//!
//! Module map (see docs/architecture.md):
//! - [`store`]: blobs and pack files (the truth on disk)
//! - [`index`]: the sled index over packs and snapshot records (rebuildable)
//! - [`repo`]: a repository: config, lock, chunk writer, snapshot commit
//! - [`snapshot`]: the snapshot model, manifests, chain resolution, scan capture
//! - [`track`]: change tracking of the live mount (journal, gate, cut, copy-before-write)
//! - [`fs`]: the FUSE filesystems (live passthrough mount)
//! - [`restore`]: safe restore through directory file descriptors
//! - [`verify`]: checks of the index, references and chunk data

pub mod daemon;
pub mod error;
pub mod flusher;
pub mod fs;
pub mod index;
pub mod mount;
pub mod repo;
pub mod restore;
pub mod snapshot;
pub mod store;
pub mod track;
pub mod util;
pub mod verify;

pub use error::{Error, Result};
