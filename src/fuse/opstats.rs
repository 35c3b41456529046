//! Counts and latencies of FUSE operations, per operation, for metrics.
//!
//! Every guarded handler (`guard.rs`) records how long it ran, in
//! process-wide lock-free counters: a count, a sum and fixed latency
//! buckets per operation. Most handlers reply before they return, so the
//! time is the daemon's share of the request (not the kernel's queueing).
//!
//! Invariant: recording is a few relaxed atomic adds; it never allocates,
//! locks or fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The operations counted, in the order of [`OPS`].
pub const NAMES: [&str; 40] = [
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "access",
    "create",
    "getlk",
    "setlk",
    "bmap",
    "ioctl",
    "poll",
    "fallocate",
    "lseek",
    "copy_file_range",
    "init",
    "destroy",
];

/// Upper bounds of the latency buckets, in seconds (then +Inf).
pub const BUCKETS: [f64; 12] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 10e-3, 50e-3, 250e-3, 1.0,
];

/// The index of `name` in [`NAMES`]; a name not there fails to compile
/// where it is used in a constant.
pub const fn index(name: &str) -> usize {
    let n = name.as_bytes();
    let mut i = 0;
    while i < NAMES.len() {
        let c = NAMES[i].as_bytes();
        if c.len() == n.len() {
            let mut j = 0;
            while j < n.len() && c[j] == n[j] {
                j += 1;
            }
            if j == n.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("operation not in opstats::NAMES")
}

/// One operation's counters.
pub struct OpStat {
    count: AtomicU64,
    sum_ns: AtomicU64,
    /// Non-cumulative: `buckets[i]` counts latencies in (BUCKETS[i-1], BUCKETS[i]].
    buckets: [AtomicU64; BUCKETS.len()],
}

#[allow(clippy::declare_interior_mutable_const)] // the array initialiser only
const NEW: OpStat = OpStat {
    count: AtomicU64::new(0),
    sum_ns: AtomicU64::new(0),
    buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
};

/// The counters of every operation in this process (all mounts).
pub static OPS: [OpStat; NAMES.len()] = [NEW; NAMES.len()];

/// Count one run of operation `i` that took `d`.
pub fn record(i: usize, d: Duration) {
    let Some(s) = OPS.get(i) else { return };
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    s.count.fetch_add(1, Ordering::Relaxed);
    s.sum_ns.fetch_add(ns, Ordering::Relaxed);
    let secs = d.as_secs_f64();
    if let Some(b) = BUCKETS.iter().position(|&up| secs <= up) {
        s.buckets[b].fetch_add(1, Ordering::Relaxed);
    }
}

/// A point-in-time copy of one operation's counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpSnapshot {
    pub name: &'static str,
    pub count: u64,
    pub sum_seconds: f64,
    /// Counts per bucket upper bound, not cumulative; the last (+Inf)
    /// holds what is above every bound, so they add up to `count`.
    pub buckets: Vec<(f64, u64)>,
}

/// Every operation that ran at least once.
pub fn snapshot() -> Vec<OpSnapshot> {
    OPS.iter()
        .zip(NAMES)
        .filter_map(|(s, name)| {
            let count = s.count.load(Ordering::Relaxed);
            if count == 0 {
                return None;
            }
            let mut buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .zip(&s.buckets)
                .map(|(up, b)| (*up, b.load(Ordering::Relaxed)))
                .collect();
            let finite: u64 = buckets.iter().map(|(_, n)| n).sum();
            // Counts read one by one may lag each other: the count is at
            // least what the buckets hold.
            let count = count.max(finite);
            buckets.push((f64::INFINITY, count - finite));
            Some(OpSnapshot {
                name,
                count,
                sum_seconds: s.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
                buckets,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_index_and_buckets_accumulate() {
        const W: usize = index("write");
        assert_eq!(NAMES[W], "write");
        assert_eq!(index("copy_file_range"), 37);
        let before = snapshot()
            .into_iter()
            .find(|s| s.name == "bmap")
            .map(|s| s.count)
            .unwrap_or(0);
        let b = index("bmap");
        record(b, Duration::from_micros(5));
        record(b, Duration::from_micros(300));
        record(b, Duration::from_secs(3));
        let s = snapshot().into_iter().find(|s| s.name == "bmap").unwrap();
        assert_eq!(s.count, before + 3);
        let at = |up: f64| s.buckets.iter().find(|(u, _)| *u == up).unwrap().1;
        assert!(at(10e-6) >= 1);
        assert!(at(500e-6) >= 1);
        assert!(at(f64::INFINITY) >= 1, "3 s is only in +Inf");
        assert_eq!(s.buckets.iter().map(|(_, n)| n).sum::<u64>(), s.count);
        assert!(s.sum_seconds >= 3.0);
    }
}
