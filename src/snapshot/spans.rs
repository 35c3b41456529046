//! Where each chunk of a file lies: every block from `i * block_size`
//! (fixed blocks), or one after the other by their lengths (content
//! chunks). Readers map an offset to its chunk in O(1) or O(log n).

use super::manifest::{Blocks, Node};
use crate::error::{Error, Result};

/// The chunk layout of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spans {
    /// `n` blocks of `bs` bytes (the last one short) of a `size`-byte file.
    Grid { bs: u64, size: u64, n: usize },
    /// Each chunk's end offset, increasing (the last is the size).
    Ends(Vec<u64>),
}

impl Spans {
    /// The layout of a file node (`None` for anything else) in a tree of
    /// `block_size`.
    pub fn of(node: &Node, block_size: u32) -> Option<Spans> {
        match node {
            Node::File { size, blocks, .. } => Some(Spans::from_blocks(blocks, *size, block_size)),
            _ => None,
        }
    }

    pub fn from_blocks(blocks: &Blocks, size: u64, block_size: u32) -> Spans {
        match blocks {
            Blocks::Sized { lens, .. } => Spans::from_lens(lens),
            _ => Spans::grid(size, block_size),
        }
    }

    pub fn grid(size: u64, block_size: u32) -> Spans {
        let bs = u64::from(block_size.max(1));
        Spans::Grid {
            bs,
            size,
            n: size.div_ceil(bs) as usize,
        }
    }

    pub fn from_lens(lens: &[u32]) -> Spans {
        let mut at = 0u64;
        Spans::Ends(
            lens.iter()
                .map(|l| {
                    at += u64::from(*l);
                    at
                })
                .collect(),
        )
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        match self {
            Spans::Grid { n, .. } => *n,
            Spans::Ends(e) => e.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        match self {
            Spans::Grid { size, .. } => *size,
            Spans::Ends(e) => e.last().copied().unwrap_or(0),
        }
    }

    /// Offset and length of chunk `i` (`(size, 0)` past the end).
    pub fn span(&self, i: usize) -> (u64, u64) {
        match self {
            Spans::Grid { bs, size, .. } => {
                let off = (i as u64).saturating_mul(*bs).min(*size);
                (off, (*size - off).min(*bs))
            }
            Spans::Ends(e) => {
                let start = if i == 0 {
                    0
                } else {
                    e.get(i - 1).copied().unwrap_or(self.size())
                };
                let end = e.get(i).copied().unwrap_or(start);
                (start, end - start)
            }
        }
    }

    /// The chunk holding byte `off` (`len()` at or past the end).
    pub fn find(&self, off: u64) -> usize {
        match self {
            Spans::Grid { bs, n, size } => {
                if off >= *size {
                    *n
                } else {
                    (off / bs) as usize
                }
            }
            Spans::Ends(e) => e.partition_point(|end| *end <= off),
        }
    }

    /// Are these fixed blocks?
    pub fn is_grid(&self) -> bool {
        matches!(self, Spans::Grid { .. })
    }
}

/// Check the chunk lengths of a `size`-byte file: each from 1 byte to
/// `max` (the block size), adding up to the size.
pub fn check_lens(lens: &[u32], size: u64, max: u32) -> Result<()> {
    let mut sum = 0u64;
    for l in lens {
        if *l == 0 || *l > max {
            return Err(Error::Corrupt(format!(
                "a chunk of {l} bytes (1 to {max} allowed)"
            )));
        }
        sum += u64::from(*l);
    }
    if sum != size {
        return Err(Error::Corrupt(format!(
            "chunks of {sum} bytes for a file of {size}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_their_chunks() {
        let g = Spans::grid(10, 4);
        assert_eq!(
            (g.len(), g.span(2), g.find(9), g.find(10)),
            (3, (8, 2), 2, 3)
        );
        let e = Spans::from_lens(&[3, 5, 2]);
        assert_eq!(e.len(), 3);
        assert_eq!((e.span(0), e.span(1), e.span(2)), ((0, 3), (3, 5), (8, 2)));
        assert_eq!(
            (e.find(0), e.find(2), e.find(3), e.find(9), e.find(10)),
            (0, 0, 1, 2, 3)
        );
        assert_eq!(e.span(3), (10, 0));
        assert!(check_lens(&[3, 5, 2], 10, 8).is_ok());
        assert!(check_lens(&[3, 5, 2], 11, 8).is_err());
        assert!(check_lens(&[3, 0, 7], 10, 8).is_err());
        assert!(check_lens(&[9, 1], 10, 8).is_err());
    }
}
