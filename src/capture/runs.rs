//! A file stored in content chunks that then changed in place (block-
//! tracked writes): which chunks are read again, and the list after.
//!
//! The chunks holding a changed block, and the last one when the size
//! changed, are cut again where they were cut before (so the others keep
//! their ids) and a grown tail is cut every block after the last old
//! start. Consecutive such chunks make one run. A run's bytes are the
//! stored chunks' bytes with the changed blocks read over them: only
//! changed blocks are read from the file (the blocks copy-before-write
//! keeps as they were at the cut), so the snapshot is the file at the cut.

use crate::error::{Error, Result};
use crate::snapshot::spans::Spans;
use crate::store::ChunkId;

/// Chunks `first..end` of the old list, read again as bytes
/// `start..stop` of the file at the cut, cut at `marks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub first: usize,
    pub end: usize,
    pub start: u64,
    pub stop: u64,
    pub marks: Vec<u64>,
}

/// The runs of a file whose chunks have lengths `lens` (its old size
/// their sum) after `dirty` blocks of `bs` bytes changed and its size
/// became `size`.
pub fn dirty_runs(lens: &[u32], bs: u64, dirty: &[u64], size: u64) -> Vec<Run> {
    let spans = Spans::from_lens(lens);
    let old = spans.size();
    let n = lens.len();
    if size == 0 {
        return Vec::new();
    }
    if n == 0 {
        return vec![Run {
            first: 0,
            end: 0,
            start: 0,
            stop: size,
            marks: Vec::new(),
        }];
    }
    // Chunks that begin below the new size are kept (or read again).
    let kept = spans.find(size - 1).min(n - 1) + 1;
    let mut hit = vec![false; kept];
    for &b in dirty {
        let lo = b.saturating_mul(bs);
        if lo >= size {
            continue;
        }
        let hi = (lo + bs).min(size);
        if lo >= old {
            hit[kept - 1] = true;
            continue;
        }
        let (a, z) = (spans.find(lo), spans.find(hi.min(old) - 1));
        for h in hit.iter_mut().take(z.min(kept - 1) + 1).skip(a) {
            *h = true;
        }
    }
    if size != old {
        hit[kept - 1] = true;
    }
    let mut runs = Vec::new();
    let mut i = 0;
    while i < kept {
        if !hit[i] {
            i += 1;
            continue;
        }
        let first = i;
        while i < kept && hit[i] {
            i += 1;
        }
        let start = spans.span(first).0;
        let stop = if i == kept { size } else { spans.span(i).0 };
        let marks = (first + 1..i).map(|k| spans.span(k).0).collect();
        runs.push(Run {
            first,
            end: i,
            start,
            stop,
            marks,
        });
    }
    runs
}

/// One run over the whole file (of `size` bytes at the cut): every old
/// chunk below the size, to be cut again by content (a file rewritten
/// in place from start to end).
pub fn whole_run(lens: &[u32], size: u64) -> Run {
    let spans = Spans::from_lens(lens);
    let end = if size == 0 || lens.is_empty() {
        0
    } else {
        spans.find(size - 1).min(lens.len() - 1) + 1
    };
    Run {
        first: 0,
        end,
        start: 0,
        stop: size,
        marks: Vec::new(),
    }
}

/// The new list: the old one with each run's chunks replaced by its
/// pieces (`(offset, length, id)`, any order), and chunks past the last
/// kept one dropped.
pub fn splice(
    ids: &[ChunkId],
    lens: &[u32],
    runs: &[Run],
    mut pieces: Vec<(u64, u32, ChunkId)>,
    size: u64,
) -> Result<(Vec<ChunkId>, Vec<u32>)> {
    pieces.sort_unstable_by_key(|p| p.0);
    let spans = Spans::from_lens(lens);
    let kept = if size == 0 || lens.is_empty() {
        0
    } else {
        spans.find(size - 1).min(lens.len() - 1) + 1
    };
    let (mut out_ids, mut out_lens) = (Vec::new(), Vec::new());
    let mut p = pieces.into_iter().peekable();
    let mut i = 0;
    let mut at = 0u64;
    let mut take_run = |r: &Run, at: &mut u64, oi: &mut Vec<ChunkId>, ol: &mut Vec<u32>| {
        while let Some(&(off, len, id)) = p.peek() {
            if off >= r.stop {
                break;
            }
            if off != *at {
                return Err(Error::Corrupt(format!(
                    "capture pieces do not tile a changed run: {off} where {at} was expected"
                )));
            }
            oi.push(id);
            ol.push(len);
            *at += u64::from(len);
            p.next();
        }
        if *at != r.stop {
            return Err(Error::Corrupt(format!(
                "a changed run ends at {at}, not {}",
                r.stop
            )));
        }
        Ok(())
    };
    for r in runs {
        while i < r.first.min(kept) {
            out_ids.push(ids[i]);
            out_lens.push(lens[i]);
            at += u64::from(lens[i]);
            i += 1;
        }
        take_run(r, &mut at, &mut out_ids, &mut out_lens)?;
        i = r.end;
    }
    while i < kept {
        out_ids.push(ids[i]);
        out_lens.push(lens[i]);
        at += u64::from(lens[i]);
        i += 1;
    }
    if at != size {
        return Err(Error::Corrupt(format!(
            "a changed file's chunks cover {at} bytes of {size}"
        )));
    }
    Ok((out_ids, out_lens))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn changed_blocks_read_their_chunks_again() {
        // Chunks [0,5) [5,12) [12,20) [20,22); blocks of 4.
        let lens = [5, 7, 8, 2];
        // Block 1 = [4,8): chunks 0 and 1, one run.
        assert_eq!(
            dirty_runs(&lens, 4, &[1], 22),
            vec![Run {
                first: 0,
                end: 2,
                start: 0,
                stop: 12,
                marks: vec![5]
            }]
        );
        // Block 4 = [16,20): chunk 2 only.
        let r = dirty_runs(&lens, 4, &[4], 22);
        assert_eq!(
            (r.len(), r[0].first, r[0].end, r[0].start, r[0].stop),
            (1, 2, 3, 12, 20)
        );
        // Grown to 30: the last chunk and the tail.
        let r = dirty_runs(&lens, 4, &[5, 6, 7], 30);
        assert_eq!((r.len(), r[0].first, r[0].start, r[0].stop), (1, 3, 20, 30));
        // Cut to 10: chunk 1 truncated, chunks 2 and 3 dropped.
        let r = dirty_runs(&lens, 4, &[], 10);
        assert_eq!(
            (r.len(), r[0].first, r[0].end, r[0].start, r[0].stop),
            (1, 1, 2, 5, 10)
        );
        let (i, l) = splice(
            &[id(1), id(2), id(3), id(4)],
            &lens,
            &r,
            vec![(5, 5, id(9))],
            10,
        )
        .unwrap();
        assert_eq!((i, l), (vec![id(1), id(9)], vec![5, 5]));
        // Pieces that do not tile the run are refused.
        assert!(splice(
            &[id(1), id(2), id(3), id(4)],
            &lens,
            &r,
            vec![(5, 4, id(9))],
            10
        )
        .is_err());
    }
}
