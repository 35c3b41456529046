//! Capture: turning files into a snapshot's tree and stored chunks. One
//! engine serves both ways of taking a snapshot:
//!
//! - `scan.rs`: scan capture (`rewindfs snapshot SOURCE`): walk a
//!   directory, skip what the base says is unchanged by stat, read the rest
//! - `live.rs`: the live mount's capture: the tree at a cut (from the
//!   base and the cut's changes), reading only changed blocks, through
//!   copy-before-write
//! - `stream.rs`: the live mount's first snapshot: the backing directory
//!   stored one directory at a time before the cut, as the base the cut
//!   then corrects (memory follows the walk, not the tree)
//!
//! and both use the same parts:
//!
//! - `blocks.rs`: read → hash → compress → store, units of blocks on the
//!   one worker pool (`util::pool`)
//! - `base.rs`: which snapshot a capture of a kind is compared with
//! - `base_tree.rs`: the live capture's base, changed in place with its
//!   inode index and counts (what changed is recorded, not searched for),
//!   its directories read on demand when the tree is large
//! - `ino_index.rs`: that base's inode index, compact (one sorted array)
//! - `manifest.rs`: the one manifest builder (removed paths, changed
//!   entries, files as patches of changed blocks)
//! - the "unchanged by stat" rule and racily clean entries
//!   (`snapshot::unchanged`)
//!
//! Invariants: a chunk is stored (and its pack durable by commit) before
//! any manifest names it; a capture never reads a block changed after its
//! cut (live: copy-before-write) and says so when a scanned file changed
//! while read; a file's block list always matches its size.

pub mod base;
pub mod base_tree;
pub mod blocks;
pub mod ino_index;
pub mod live;
pub mod manifest;
pub mod runs;
pub mod scan;
pub mod stream;
