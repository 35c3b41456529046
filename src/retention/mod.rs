//! Retention: which snapshots a policy keeps. (Removing the others
//! without breaking the chains that depend on them, and giving their space
//! back, build on this.)
//!
//! - `space.rs`: where the space goes (logical, stored and unique bytes per
//!   snapshot; deduplication and compression; chains)
//! - `ledger.rs`: the reference ledger, per snapshot the change in the
//!   chunks it references against the one before (what `space.rs` reads
//!   instead of the trees)
//! - `keep.rs`: restic's `--keep-*` rules over snapshot times, by calendar
//!   buckets in the local time zone, with the reasons each kept snapshot
//!   stays
//!
//! Invariants: a policy that keeps nothing is refused, never applied; a
//! snapshot is kept if any rule keeps it; the decision depends only on
//! the snapshots' times and labels (and the time zone), never on the
//! clock, so a dry run shows exactly what a real run does.

pub mod auto;
pub mod forget;
pub mod gc;
pub mod keep;
pub mod ledger;
pub mod remote;
pub mod space;
