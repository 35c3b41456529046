//! The chunk index's memory after a first snapshot's worth of inserts.
//!
//! `cargo bench --bench index_memory [-- N]` (N chunk ids, default
//! 1,000,000) inserts N ids the way a capture publishes them (sorted per
//! pack of 4,096, in sled batches of 1,000, a flush after each pack) into
//! a fresh index, once per configuration, each in a process of its own,
//! and prints the process's resident memory (VmRSS after malloc_trim),
//! peak (VmHWM), heap in use (mallinfo2) and 200,000 random lookups of
//! stored ids:
//!
//! - `sled` rows: plain sled 0.34 with that cache, nothing else (what the
//!   index did before it drove the collection of sled's garbage);
//! - `index` rows: rewindfs's `Index` (sled plus the collection, see
//!   index/mod.rs `collect_garbage`).
//!
//! A measurement, not a test: nothing is asserted.

use std::process::Command;
use std::time::Instant;

use rewindfs::index::Index;
use rewindfs::store::blob::{BlobKind, ChunkId, Codec};
use rewindfs::store::pack::Location;
use rewindfs::util::dirfd::Dir;

const PER_PACK: u64 = 4096;
const BATCH: usize = 1000;
const LOOKUPS: u64 = 200_000;

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn id(k: u64) -> ChunkId {
    ChunkId(*blake3::hash(&k.to_le_bytes()).as_bytes())
}

fn loc(k: u64) -> Location {
    Location {
        pack: k / PER_PACK,
        offset: k * 4184,
        stored_len: 4184,
        raw_len: 4096,
        codec: Codec::Raw,
        kind: BlobKind::Chunk,
    }
}

/// One configuration, in this process: prints one table row.
fn run_one(mode: &str, cache_mib: u64, n: u64) {
    let dir = tempfile::tempdir_in("/var/tmp").expect("a temporary directory in /var/tmp");
    let cache = cache_mib << 20;
    let t0 = Instant::now();
    let lookups;
    match mode {
        "sled" => {
            let db = sled::Config::new()
                .path(dir.path())
                .cache_capacity(cache)
                .open()
                .expect("sled opens");
            let tree = db.open_tree("chunks").expect("sled tree");
            let mut k = 0;
            while k < n {
                let end = (k + PER_PACK).min(n);
                let mut v: Vec<(ChunkId, Location)> = (k..end).map(|i| (id(i), loc(i))).collect();
                v.sort_unstable_by_key(|e| e.0);
                for part in v.chunks(BATCH) {
                    let mut b = sled::Batch::default();
                    for (i, l) in part {
                        b.insert(&i.0[..], &l.encode()[..]);
                    }
                    tree.apply_batch(b).expect("sled batch");
                }
                db.flush().expect("sled flush");
                k = end;
            }
            let t1 = Instant::now();
            for j in 0..LOOKUPS {
                let found = tree.get(id((j * 7919) % n).0).expect("sled get");
                assert!(found.is_some());
            }
            lookups = t1.elapsed();
            report(mode, cache_mib, n, t0, lookups);
        }
        _ => {
            let d = Dir::open_path(dir.path()).expect("open the directory");
            let index = Index::open(d, cache).expect("the index opens");
            let mut k = 0;
            while k < n {
                let end = (k + PER_PACK).min(n);
                let v: Vec<(ChunkId, Location)> = (k..end).map(|i| (id(i), loc(i))).collect();
                index.insert_chunks(&v).expect("insert");
                index.flush().expect("flush");
                k = end;
            }
            let t1 = Instant::now();
            for j in 0..LOOKUPS {
                let found = index.get_chunk(&id((j * 7919) % n)).expect("get");
                assert!(found.is_some());
            }
            lookups = t1.elapsed();
            report(mode, cache_mib, n, t0, lookups);
        }
    }
}

fn report(mode: &str, cache_mib: u64, n: u64, t0: Instant, lookups: std::time::Duration) {
    let secs = t0.elapsed().as_secs_f64() - lookups.as_secs_f64();
    rewindfs::util::sys::trim_now();
    let (in_use, _) = rewindfs::util::sys::heap_usage();
    println!(
        "| {mode} | {cache_mib} MiB | {n} | {:.1} | {} | {} | {} | {:.1} |",
        secs,
        status_kib("VmRSS:") / 1024,
        status_kib("VmHWM:") / 1024,
        in_use >> 20,
        lookups.as_secs_f64() * 1e6 / LOOKUPS as f64,
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--one") {
        let mode = args.get(1).cloned().unwrap_or_default();
        let cache: u64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(32);
        let n: u64 = args
            .get(3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        run_one(&mode, cache, n);
        return;
    }
    let n: u64 = args
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!(
        "| index | cache | ids | insert s | RSS MiB | peak MiB | heap in use MiB | lookup us |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let me = std::env::current_exe().expect("the bench's own path");
    for mode in ["sled", "index"] {
        for cache in [64u64, 32, 16] {
            let st = Command::new(&me)
                .args(["--one", mode, &cache.to_string(), &n.to_string()])
                .status()
                .expect("run one configuration");
            if !st.success() {
                println!("| {mode} | {cache} MiB | {n} | failed: {st} | | | | |");
            }
        }
    }
}
