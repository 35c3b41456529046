//! The consistency oracle: writer threads write generation-stamped records
//! in a known global order while snapshots of random kinds are taken every
//! few hundred milliseconds. Every snapshot must equal the state after
//! some prefix of the write log: nothing after its cut, nothing missing
//! before it. The one write that may have been in flight at the cut (the
//! newest one the snapshot holds) may be there in part: the kernel can
//! split one write(2) into several FUSE requests and the cut can fall
//! between them (docs/semantics.md); every other write is whole.

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::live::FlushedMount;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rewindfs::snapshot::Kind;

const BS: u32 = 64 << 10;

/// Where file `f` of the oracle lives (a few directories: the first
/// snapshot's walk completes them one at a time).
fn name(f: usize) -> String {
    format!("d{}/f{f}", f % 4)
}

/// (generation, file, offset, length); offsets and lengths are multiples of 8.
type Log = Vec<(u64, usize, usize, usize)>;

fn stamp(gen: u64, len: usize) -> Vec<u8> {
    gen.to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

fn max_gen(files: &BTreeMap<String, Vec<u8>>) -> u64 {
    files
        .values()
        .flat_map(|d| {
            d.chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn every_snapshot_is_a_prefix_of_the_write_log() {
    oracle(false, 6, 4 << 20);
}

/// The repository's first snapshot, taken while the writers run: its walk
/// stores the tree before the cut, and the cut corrects what the writers
/// changed meanwhile. It too is the state after a prefix of the log.
#[test]
fn the_first_snapshot_taken_during_writes_is_a_prefix_of_the_write_log() {
    oracle(true, 96, 1 << 20);
}

/// Writers stamp generations into `files` files of `file_len` bytes while
/// snapshots of random kinds are taken; the first one before the writers
/// start, or (`first_during_writes`) while they run.
fn oracle(first_during_writes: bool, n_files: usize, file_len: usize) {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let m = FlushedMount::with(BS, Default::default(), |b| {
        for f in 0..n_files {
            let p = b.join(name(f));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, vec![0u8; file_len]).unwrap();
        }
    });
    let log: Mutex<(u64, Log)> = Mutex::new((0, Vec::new()));
    let stop = AtomicBool::new(false);
    let mut taken = Vec::new();
    let mut kinds = Vec::new();
    if !first_during_writes {
        taken.push(m.snapshot(Kind::Full).id);
        kinds.push(Kind::Full);
    }
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (m, log, stop) = (&m, &log, &stop);
            s.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ t);
                let files: Vec<_> = (0..n_files)
                    .map(|f| {
                        OpenOptions::new()
                            .write(true)
                            .open(m.mnt.join(name(f)))
                            .unwrap()
                    })
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    let f = rng.gen_range(0..n_files);
                    let len = rng.gen_range(1..(3 * BS as usize / 8)) * 8;
                    let off = rng.gen_range(0..(file_len - len) / 8) * 8;
                    // The global order: one write at a time, logged with it.
                    let mut l = log.lock();
                    l.0 += 1;
                    let gen = l.0;
                    files[f].write_all_at(&stamp(gen, len), off as u64).unwrap();
                    l.1.push((gen, f, off, len));
                }
            });
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        if first_during_writes {
            // Let the writers start, then take the first snapshot.
            while log.lock().0 < 50 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let before = log.lock().0;
            taken.push(m.snapshot(Kind::Full).id);
            kinds.push(Kind::Full);
            let during = log.lock().0 - before;
            eprintln!("{during} writes during the first snapshot");
            assert!(during > 0, "no write happened during the first snapshot");
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(6) {
            std::thread::sleep(Duration::from_millis(rng.gen_range(100..400)));
            let kind = [
                Kind::Incremental,
                Kind::Incremental,
                Kind::Differential,
                Kind::Full,
            ][rng.gen_range(0..4)];
            taken.push(m.snapshot(kind).id);
            kinds.push(kind);
        }
        stop.store(true, Ordering::Relaxed);
    });
    taken.push(m.snapshot(Kind::Incremental).id);
    let (total, log) = log.into_inner();
    eprintln!("{} writes, {} snapshots", total, taken.len());
    assert!(total > 1000, "too few writes: {total}");

    // Replay the log and compare each snapshot with the state after the
    // prefix ending at the newest generation it contains.
    let mut snaps: Vec<(u64, u64, BTreeMap<String, Vec<u8>>)> = taken
        .iter()
        .map(|id| {
            let files = m.files_of(*id);
            (max_gen(&files), *id, files)
        })
        .collect();
    snaps.sort_by_key(|s| (s.0, s.1));
    let mut state: Vec<Vec<u8>> = vec![vec![0u8; file_len]; n_files];
    let mut applied = 0usize;
    let mut saved_blocks = 0;
    let mut torn = 0;
    for (g, id, files) in &snaps {
        // The state before the snapshot's newest write, then that write
        // (which may be in the snapshot in part).
        while applied < log.len() && log[applied].0 < *g {
            let (gen, f, off, len) = log[applied];
            state[f][off..off + len].copy_from_slice(&stamp(gen, len));
            applied += 1;
        }
        if let Some(&(gen, f, off, len)) = log.get(applied).filter(|w| w.0 == *g) {
            let got = &files[&name(f)];
            let before = state[f][off..off + len].to_vec();
            let mut part = false;
            for (i, w) in got[off..off + len].chunks_exact(8).enumerate() {
                let word = u64::from_le_bytes(w.try_into().unwrap());
                let old = &before[i * 8..i * 8 + 8];
                if word == gen {
                    state[f][off + i * 8..off + i * 8 + 8].copy_from_slice(w);
                } else if w == old {
                    part = true;
                } else {
                    panic!(
                        "snapshot {id}: write {gen} at f{f}:{} is neither old nor new data",
                        off + i * 8
                    );
                }
            }
            torn += part as usize;
            if !part {
                applied += 1;
            }
        }
        for f in 0..n_files {
            let got = &files[&name(f)];
            if *got != state[f] {
                let first = got
                    .iter()
                    .zip(&state[f])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                let word = |d: &[u8]| {
                    let at = first & !7;
                    u64::from_le_bytes(d[at..at + 8].try_into().unwrap())
                };
                let kind = taken
                    .iter()
                    .position(|t| t == id)
                    .and_then(|i| kinds.get(i));
                panic!(
                    "snapshot {id} ({kind:?}) is not the state after write {g}: f{f} differs at byte {first} (holds write {}, the log says write {})",
                    word(got),
                    word(&state[f])
                );
            }
        }
        saved_blocks += 1;
        // A torn write's remaining bytes belong to later snapshots.
        if applied < log.len() && log[applied].0 == *g {
            let (gen, f, off, len) = log[applied];
            state[f][off..off + len].copy_from_slice(&stamp(gen, len));
            applied += 1;
        }
    }
    eprintln!("{torn} snapshots hold their newest write in part");
    assert_eq!(saved_blocks, taken.len());
    // The last snapshot (after the writers stopped) is the whole log.
    assert_eq!(snaps.last().unwrap().0, total);
    let v = rewindfs::verify::verify(&m.repo, true).unwrap();
    assert!(v.ok(), "{v:?}");
}
