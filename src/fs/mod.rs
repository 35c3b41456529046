//! The live filesystem: a passthrough of the backing directory in which
//! every change is recorded (through `track::Recorder`). Nothing here
//! knows the FUSE session or the snapshot views (`fuse/` and `views/`).
//!
//! - `live.rs`: the filesystem core, `Result<_, Errno>` per operation
//! - `inode.rs`: node ids ⇄ backing objects (`O_PATH` fds), lookup counts
//! - `kernel_handle.rs`: kernel handles that reopen a backing object
//!   whose descriptor was closed
//! - `creds.rs`: acting as the caller when creating objects
//!
//! Invariants: all backing access is through descriptors and `*at` calls
//! with `O_NOFOLLOW`; every change is recorded while the tracking gate is
//! held; a handler never panics (it answers an errno).

pub mod creds;
pub mod fastpath;
pub mod inode;
pub mod kernel_handle;
pub mod live;

pub use live::{LiveFs, LiveOptions};
