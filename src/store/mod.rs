//! The chunk store: self-describing blobs appended to pack files.
//!
//! Packs are the truth of a repository. Every blob carries its content
//! hash, sizes and codec, so the index can be rebuilt from the packs alone.

pub mod blob;
pub mod crypto;
pub mod direct;
pub mod pack;
pub mod planes;
pub mod zstd;

pub use blob::{BlobKind, ChunkId, Codec, EncodedBlob};
pub use pack::{PackReader, PackWriter};
