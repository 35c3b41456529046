//! Snapshot views: every snapshot as a read-only directory tree, served
//! under `.snapshots/` of the live mount and by standalone
//! `mount-snapshot` mounts. Nothing here knows FUSE requests: the
//! adapters in `fuse/` match and reply.
//!
//! - `snapshot_fs.rs`: the snapshot filesystem ([`Views`]): node ids
//!   computed from snapshot ids and tree positions, lookups, attributes
//!   (never granting privilege), reads through the chunk cache
//! - `view_tree.rs`: one snapshot's tree, its directories read when
//!   first used and a bounded number of entries kept; node numbers are
//!   preorder positions, stable however often a directory is read again
//! - `root_map.rs`: a view as seen from a mount whose root is one of its
//!   nodes (a standalone mount of one snapshot, or `.snapshots` in the
//!   live mount), with the operations the adapters call
//! - `chunk_cache.rs`: a bounded cache of verified chunks with prefetch,
//!   a read cache over the repository
//! - `freshness.rs`: the kernel's caches of `.snapshots` kept current as
//!   snapshots come and go
//! - `materialize.rs`: verified local copies of files read again, which
//!   the adapters serve by kernel passthrough
//!
//! Invariants: views never write to the repository (only to its
//! `cache/materialized/`, which holds no repository data); a chunk that fails
//! verification answers EIO, never wrong bytes; every node and handle id
//! of a view lies in the ranges `snapshot_fs` reserves, disjoint from the
//! live filesystem's.

pub mod chunk_cache;
pub mod freshness;
pub mod materialize;
pub mod root_map;
pub mod snapshot_fs;
pub mod view_tree;

pub use root_map::{Mapped, RootMap};
pub use snapshot_fs::{is_view, ReadData, ViewOptions, Views, FH_TAG, SNAPDIR, VIEW_BASE};
