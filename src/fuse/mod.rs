//! The kernel edge: fuser adapters that only match requests and reply,
//! the routing between the live filesystem and the snapshot views, the
//! panic guard around every handler, and the mount options.
//!
//! - `router.rs`: which side answers a request (tested without a mount)
//! - `live_adapter.rs`: `impl fuser::Filesystem` for the live mount
//! - `view_adapter.rs`: `impl fuser::Filesystem` for `mount-snapshot`
//! - `view_io.rs`: snapshot-file opens answered through the daemon or by
//!   passthrough from a materialized copy (the kernel's per-inode modes)
//! - `guard.rs`: a panicking handler costs one request (EIO), never the mount
//! - `opstats.rs`: per-operation counts and latency buckets (for metrics)
//! - `readahead.rs`: raising the kernel's readahead window after INIT
//! - `kernel.rs`: what we tell the kernel (request sizes, statfs replies)
//! - `session.rs`: mount options and mounting (live and snapshot mounts)
//!
//! Errors reach the kernel through one mapping (`error::ToErrno`).

pub mod guard;
pub mod kernel;
pub mod live_adapter;
pub mod opstats;
pub mod readahead;
pub mod router;
pub mod session;
pub mod view_adapter;
pub mod view_io;

pub use kernel::{Statfs, MAX_IO};
pub use live_adapter::LiveAdapter;
pub use router::Router;
pub use session::{mount_live, MountConfig};
pub use view_adapter::{mount_views, ViewAdapter};
