//! The background flusher: turns the change journal into snapshots.
//!
//! - `cow.rs`: copy-before-write of blocks a capture still needs

pub mod cow;
