//! The one worker pool of capture (scan and live) and restore: how many
//! threads, how many blocks make one unit of work, and the loop that runs
//! units on the workers while the caller feeds them.
//!
//! Work is cut into units of [`UNIT_BLOCKS`] blocks so that one large
//! file keeps every worker busy and small files do not each cost a
//! channel round trip per block. The feed runs on the calling thread (it
//! may walk a tree and borrow anything); at most `4 × threads` units wait
//! at a time, so memory stays bounded; results come back in completion
//! order, each naming what it belongs to.

use crossbeam_channel::{bounded, Sender};

/// Blocks per unit of work (large enough to keep reads sequential and
/// amortize a channel send, small enough to spread one file over cores).
pub const UNIT_BLOCKS: u64 = 8;

/// Worker threads: one per core.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// `requested` threads, or one per core for 0.
pub fn threads_or_default(requested: usize) -> usize {
    if requested == 0 {
        threads()
    } else {
        requested
    }
}

/// The units of `n` blocks: `(first, count)` pairs of at most
/// [`UNIT_BLOCKS`].
pub fn units(n: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..n.div_ceil(UNIT_BLOCKS)).map(move |u| {
        let first = u * UNIT_BLOCKS;
        (first, UNIT_BLOCKS.min(n - first))
    })
}

/// Hands units to the workers.
pub struct Feeder<'a, T> {
    tx: &'a Sender<T>,
}

impl<T> Feeder<'_, T> {
    /// Queue a unit (waits while the queue is full). False if the
    /// workers are gone (they only stop when a worker panicked).
    pub fn send(&self, unit: T) -> bool {
        self.tx.send(unit).is_ok()
    }
}

/// Run `threads` workers, each with its own state from `init` (a reusable
/// buffer, say), applying `work` to every unit `feed` sends; `feed` runs
/// on the calling thread. Returns what `feed` returned and every result.
pub fn run<T, R, W, Out>(
    threads: usize,
    init: impl Fn() -> W + Sync,
    work: impl Fn(&mut W, T) -> R + Sync,
    feed: impl FnOnce(&Feeder<'_, T>) -> Out,
) -> (Out, Vec<R>)
where
    T: Send,
    R: Send,
{
    let mut results = Vec::new();
    let (out, _) = run_into(threads, init, work, feed, |r| results.push(r));
    (out, results)
}

/// [`run`], handing each result to `sink` as it comes back (on a thread
/// of its own, while `feed` goes on) instead of collecting them all:
/// memory follows the units in flight, not every unit of the run (a
/// first snapshot of 10^6 files kept 10^6 results until its last read).
/// At most `threads * 16` results wait for the sink.
/// Returns what `feed` returned and the sink.
pub fn run_into<T, R, W, Out, S>(
    threads: usize,
    init: impl Fn() -> W + Sync,
    work: impl Fn(&mut W, T) -> R + Sync,
    feed: impl FnOnce(&Feeder<'_, T>) -> Out,
    mut sink: S,
) -> (Out, S)
where
    T: Send,
    R: Send,
    S: FnMut(R) + Send,
{
    let threads = threads.max(1);
    let (tx, rx) = bounded::<T>(threads * 4);
    // Bounded too: a sink that falls behind (starved of CPU) holds the
    // workers back, and they the feeder, instead of results piling up.
    let (rtx, rrx) = bounded::<R>(threads * 16);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let rx = rx.clone();
            let rtx = rtx.clone();
            let (init, work) = (&init, &work);
            s.spawn(move || {
                let mut state = init();
                for unit in rx {
                    if rtx.send(work(&mut state, unit)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(rx);
        drop(rtx);
        // The sink runs until the last worker has sent its last result
        // (the workers end once the queue is drained after `feed`).
        let collector = s.spawn(move || {
            for r in rrx {
                sink(r);
            }
            sink
        });
        let out = feed(&Feeder { tx: &tx });
        drop(tx);
        match collector.join() {
            Ok(sink) => (out, sink),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_is_worked_once_with_per_worker_state() {
        let (fed, mut got) = run(
            3,
            Vec::<u64>::new,
            |seen: &mut Vec<u64>, i: u64| {
                seen.push(i);
                i * 2
            },
            |f| {
                let mut n = 0;
                for i in 0..1000u64 {
                    assert!(f.send(i));
                    n += 1;
                }
                n
            },
        );
        assert_eq!(fed, 1000);
        got.sort();
        assert_eq!(got, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn a_sink_gets_every_result_while_the_feed_runs() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let mut seen = Vec::new();
        let sunk = AtomicUsize::new(0);
        let (fed, _) = run_into(
            2,
            || (),
            |_, i: u64| i + 1,
            |f| {
                let sent = (0..500u64).all(|i| f.send(i));
                // The sink runs beside the feed: every result reaches
                // it before the feed returns.
                while sunk.load(Ordering::SeqCst) < 500 {
                    std::thread::yield_now();
                }
                sent
            },
            |r: u64| {
                seen.push(r);
                sunk.fetch_add(1, Ordering::SeqCst);
            },
        );
        assert!(fed);
        seen.sort();
        assert_eq!(seen, (1..=500).collect::<Vec<_>>());
    }

    #[test]
    fn units_cover_every_block_once() {
        assert_eq!(units(0).count(), 0);
        assert_eq!(units(3).collect::<Vec<_>>(), vec![(0, 3)]);
        let u: Vec<_> = units(2 * UNIT_BLOCKS + 1).collect();
        assert_eq!(
            u,
            vec![
                (0, UNIT_BLOCKS),
                (UNIT_BLOCKS, UNIT_BLOCKS),
                (2 * UNIT_BLOCKS, 1)
            ]
        );
    }

    #[test]
    fn zero_threads_means_one_per_core() {
        assert_eq!(threads_or_default(0), threads());
        assert_eq!(threads_or_default(3), 3);
    }
}
