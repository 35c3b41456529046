//! The remote tier: a repository's snapshots replicated to an
//! S3-compatible object store, and read back from it on a machine that
//! has nothing else (docs/format.md, "Remote layout").
//!
//! Invariants (each enforced by one file):
//! - a pack is uploaded whole, then its blob list (`.idx`); a snapshot
//!   record is uploaded only after every blob its manifests reference is
//!   on the remote (push.rs): the remote never lists a snapshot whose
//!   data is missing;
//! - what was uploaded is recorded durably after the server acknowledged
//!   it (state.rs), so a push resumes where it stopped and never uploads
//!   a pack twice needlessly;
//! - everything read back is verified exactly as local reads are (the
//!   blob's header and content hash; the `.idx` by its checksum): a
//!   damaged or foreign object is an error naming it, never data.

pub mod client;
pub mod config;
pub mod idx;
pub mod layout;
pub mod lease;
pub mod pull;
pub mod push;
pub mod read;
pub mod state;
pub mod throttle;
