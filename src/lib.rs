//! rewindfs: a continuous-backup filesystem for AI data.
//!
//! Module map, top to bottom (an import only ever points down; see
//! docs/architecture.md):
//! - [`daemon`]: the processes that hold a repository (live mount, snapshot
//!   mounts) and the typed control protocol the CLI speaks with them
//! - [`mount`]: `LiveMount::start`, the one assembly of a live mount
//! - [`fuse`]: the kernel edge: thin adapters, the live/views router, panic guard
//! - [`flusher`]: when to snapshot, and taking one (cut, capture, commit)
//! - [`restore`], [`verify`]: restoring and checking snapshots;
//!   [`advise`]: which schedule suits a dataset, from its history
//! - [`retention`]: which snapshots a keep policy keeps
//! - [`fs`]: the live passthrough filesystem
//! - [`views`]: snapshots as read-only folders, the chunk cache
//! - [`capture`]: the one capture engine (scan and live)
//! - [`track`]: change tracking (journal, gate, pins, copy-before-write, cut);
//!   [`remote`]: replication to an object store and reading back from it
//! - [`repo`]: a repository: layout, config, trust, chunk writer, commit
//! - [`snapshot`]: the snapshot model, manifests, trees, the unchanged rule
//! - [`index`]: the sled index over packs and snapshot records (rebuildable)
//! - [`store`]: blobs and pack files (the truth on disk)
//! - [`util`], [`error`]: helpers; the typed error and its errno mapping

pub mod advise;
pub mod capture;
pub mod chunking;
pub mod daemon;
pub mod error;
pub mod flusher;
pub mod fs;
pub mod fuse;
pub mod index;
pub mod mount;
pub mod remote;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod store;
pub mod track;
pub mod util;
pub mod verify;
pub mod views;

pub use error::{Error, Result};
