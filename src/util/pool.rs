//! The one worker pool of capture and restore: how many threads, and how
//! many blocks make one unit of work.
//!
//! Work is cut into units of [`UNIT_BLOCKS`] blocks so that one large
//! file keeps every worker busy and small files do not each cost a
//! channel round trip per block; results come back in any order and are
//! put in place by their index.

use crossbeam_channel::{bounded, unbounded};

/// Blocks per unit of work (8 × 1 MiB by default: large enough to
/// amortize a channel send, small enough to spread one file over cores).
pub const UNIT_BLOCKS: u64 = 8;

/// Worker threads for capture and restore: one per core.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Run `work` over every item `feed` produces on `threads` workers, and
/// hand each result to `done` on the calling thread, in completion order.
/// `feed` runs on its own thread and may block (walking a tree); the
/// first error from `work` or `done` stops the feeding and is returned
/// once the workers have drained.
pub fn run<T, R, E>(
    threads: usize,
    feed: impl FnOnce(&dyn Fn(T) -> bool) -> Result<(), E> + Send,
    work: impl Fn(T) -> Result<R, E> + Sync,
    mut done: impl FnMut(R) -> Result<(), E>,
) -> Result<(), E>
where
    T: Send,
    R: Send,
    E: Send,
{
    let threads = threads.max(1);
    let (tx, rx) = bounded::<T>(threads * 4);
    let (rtx, rrx) = unbounded::<Result<R, E>>();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let rx = rx.clone();
            let rtx = rtx.clone();
            let work = &work;
            let stop = &stop;
            s.spawn(move || {
                for item in rx {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        continue;
                    }
                    if rtx.send(work(item)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(rx);
        drop(rtx);
        let stop_ref = &stop;
        let feeder = s.spawn(move || {
            let send = |item: T| -> bool {
                !stop_ref.load(std::sync::atomic::Ordering::Relaxed) && tx.send(item).is_ok()
            };
            feed(&send)
        });
        let mut first_err: Option<E> = None;
        for r in rrx {
            if first_err.is_some() {
                continue;
            }
            match r.and_then(&mut done) {
                Ok(()) => {}
                Err(e) => {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    first_err = Some(e);
                }
            }
        }
        let fed = match feeder.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        };
        match first_err {
            Some(e) => Err(e),
            None => fed,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_worked_once_and_results_come_back() {
        let mut got = Vec::new();
        let r: Result<(), String> = run(
            3,
            |send| {
                for i in 0..100u64 {
                    if !send(i) {
                        break;
                    }
                }
                Ok(())
            },
            |i| Ok(i * 2),
            |r| {
                got.push(r);
                Ok(())
            },
        );
        r.unwrap();
        got.sort();
        assert_eq!(got, (0..100).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn the_first_error_stops_the_feed_and_is_returned() {
        let fed = std::sync::atomic::AtomicU64::new(0);
        let r: Result<(), String> = run(
            2,
            |send| {
                for i in 0..1_000_000u64 {
                    fed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if !send(i) {
                        break;
                    }
                }
                Ok(())
            },
            |i| {
                if i == 10 {
                    Err(format!("bad {i}"))
                } else {
                    Ok(i)
                }
            },
            |_| Ok(()),
        );
        assert_eq!(r, Err("bad 10".to_string()));
        assert!(fed.load(std::sync::atomic::Ordering::Relaxed) < 1_000_000);
    }

    #[test]
    fn a_feed_error_is_returned() {
        let r: Result<(), String> =
            run(2, |_| Err("walk failed".into()), |i: u64| Ok(i), |_| Ok(()));
        assert_eq!(r, Err("walk failed".to_string()));
    }
}
