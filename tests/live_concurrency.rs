//! 8 writer threads x 200 files of random writes through the mount: the
//! backing files equal an in-memory model, and the journal holds exactly
//! the blocks that were written.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use common::live::{key_of, TestMount, BS};
use rand::{Rng, SeedableRng};

const B: u64 = BS as u64;
const THREADS: usize = 8;
const FILES: usize = 200;
const FILE_LEN: u64 = 4 * B;

/// Per thread: file -> expected content, file -> blocks written.
type ThreadResult = (BTreeMap<usize, Vec<u8>>, BTreeMap<usize, BTreeSet<u64>>);

#[test]
fn concurrent_writers_match_the_model_and_the_journal() {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let m = TestMount::new();
    // Each thread owns 25 files and writes them in random order.
    let results: Vec<ThreadResult> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let m = &m;
                s.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed + t as u64);
                    let mine: Vec<usize> = (0..FILES).filter(|f| f % THREADS == t).collect();
                    let mut model: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
                    let mut blocks: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
                    for &f in &mine {
                        let p = m.m(&format!("f{f}"));
                        fs::File::create(&p).unwrap().set_len(FILE_LEN).unwrap();
                        model.insert(f, vec![0u8; FILE_LEN as usize]);
                        blocks.insert(f, BTreeSet::new());
                    }
                    for _ in 0..200 {
                        let f = mine[rng.gen_range(0..mine.len())];
                        let len = rng.gen_range(1..(B as usize + 100));
                        let off = rng.gen_range(0..FILE_LEN - len as u64);
                        let byte: u8 = rng.gen();
                        let file = OpenOptions::new()
                            .write(true)
                            .open(m.m(&format!("f{f}")))
                            .unwrap();
                        file.write_all_at(&vec![byte; len], off).unwrap();
                        model.get_mut(&f).unwrap()[off as usize..off as usize + len].fill(byte);
                        let set = blocks.get_mut(&f).unwrap();
                        for b in off / B..=(off + len as u64 - 1) / B {
                            set.insert(b);
                        }
                    }
                    (model, blocks)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let dirty = m.journal.dirty();
    let mut checked = 0;
    for (model, blocks) in results {
        for (f, want) in model {
            let got = fs::read(m.b(&format!("f{f}"))).unwrap();
            assert!(got == want, "backing file f{f} differs from the model");
            let key = key_of(&m.b(&format!("f{f}")));
            let journal: BTreeSet<u64> = dirty
                .get(&key)
                .map(|d| d.blocks.keys().copied().collect())
                .unwrap_or_default();
            assert_eq!(journal, blocks[&f], "journal of f{f}");
            checked += 1;
        }
    }
    assert_eq!(checked, FILES);
}
