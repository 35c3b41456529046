//! Incremental cost: in a dataset with one 4 GiB sparse file and 10,000
//! small files, changing one block through the mount makes an incremental
//! snapshot that stores about one block, with a small manifest, and reads
//! only that block.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;

use common::live::FlushedMount;
use rewindfs::snapshot::Kind;

const BS: u32 = 1 << 20;

#[test]
fn one_changed_block_costs_one_block() {
    let m = FlushedMount::with(BS, Default::default(), |b| {
        let f = fs::File::create(b.join("sparse.bin")).unwrap();
        f.set_len(4 << 30).unwrap();
        f.write_all_at(b"some real data in the middle", 2 << 30)
            .unwrap();
        for d in 0..100 {
            let dir = b.join(format!("d{d:03}"));
            fs::create_dir(&dir).unwrap();
            for i in 0..100 {
                fs::write(
                    dir.join(format!("s{i:03}.txt")),
                    format!("sample {d} {i}\n"),
                )
                .unwrap();
            }
        }
    });
    let full = m.snapshot(Kind::Full);
    assert_eq!(full.stats.files, 10_001);
    // Change one block of the big sparse file, through the mount.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.mnt.join("sparse.bin"))
        .unwrap();
    f.write_all_at(&vec![7u8; 1000], (3u64 << 30) + 12345)
        .unwrap();
    drop(f);
    let inc = m.snapshot(Kind::Incremental);
    eprintln!(
        "incremental: {} bytes stored, manifest {} bytes, {} changed blocks, {} entries",
        inc.stats.stored_bytes,
        inc.manifest_len,
        inc.stats.changed_blocks,
        inc.stats.changed_entries
    );
    assert_eq!(inc.stats.changed_blocks, 1);
    // One (compressible) block plus the manifest: far below one raw block.
    assert!(
        inc.stats.stored_bytes < BS as u64,
        "stored {}",
        inc.stats.stored_bytes
    );
    assert!(
        inc.manifest_len < 4096,
        "manifest {} bytes",
        inc.manifest_len
    );
    assert_eq!(inc.stats.files, 10_001);
    let st = m.flusher.as_ref().unwrap().status.lock().clone();
    assert_eq!(
        st.last_bytes_read,
        Some(BS as u64),
        "only the changed block is read"
    );
    // And the snapshot is right (checked block by block, not 4 GiB at once).
    let tree = m.repo.resolve(&inc).unwrap();
    let block = |path: &[u8], i: usize| {
        let (_, node) = tree.get(path).unwrap();
        m.repo
            .read_blob(&rewindfs::snapshot::Tree::blocks_of(node)[i])
            .unwrap()
    };
    let changed = block(b"sparse.bin", 3 << 10);
    assert_eq!(&changed[12345..13345], &vec![7u8; 1000][..]);
    assert!(changed[..12345].iter().all(|b| *b == 0));
    assert_eq!(
        &block(b"sparse.bin", 2 << 10)[..28],
        b"some real data in the middle"
    );
    assert_eq!(block(b"d042/s017.txt", 0), b"sample 42 17\n");
}

/// The repository's first snapshot stores the tree one directory at a
/// time: at 10^5 files the walk holds a few directories' entries, never
/// the tree (counted, not timed), and what it stored is the tree.
#[test]
fn the_first_snapshot_holds_a_few_directories_not_the_tree() {
    const TOP: usize = 20;
    const MID: usize = 10;
    const FILES: usize = 500;
    let m = FlushedMount::with(64 << 10, Default::default(), |b| {
        for a in 0..TOP {
            for c in 0..MID {
                let dir = b.join(format!("a{a:02}/b{c:02}"));
                fs::create_dir_all(&dir).unwrap();
                for i in 0..FILES {
                    fs::write(dir.join(format!("f{i:03}")), format!("{a} {c} {i}\n")).unwrap();
                }
            }
        }
        // One file past a segment's worth of blocks (1,024), and a link.
        fs::write(b.join("big.bin"), vec![9u8; (1100 << 16) + 5]).unwrap();
        fs::hard_link(b.join("a00/b00/f000"), b.join("link")).unwrap();
    });
    let full = m.snapshot(Kind::Full);
    let files = TOP * MID * FILES + 2;
    assert_eq!(full.stats.files as usize, files);
    assert_eq!(full.stats.dirs as usize, 1 + TOP + TOP * MID);
    let st = m.flusher.as_ref().unwrap().status.lock().clone();
    let peak = st
        .first_walk_peak_entries
        .expect("the first snapshot's walk ran") as usize;
    eprintln!("first snapshot: at most {peak} entries held, of {files} files");
    // The root and one directory per level, plus the leaf directories
    // whose files are still being read (64 files ahead: two, or three
    // while the sink falls behind; 1,042 alone, 1,552 with the other
    // test of this file running beside it on 2 cores), and the levels'
    // own entries: a few directories, never the tree's 100,002 files.
    assert!(
        peak <= TOP + 3 * MID + 3 * FILES + 16,
        "the walk held {peak} entries at once"
    );
    // What it stored is the tree, file by file.
    let tree = m.repo.resolve(&full).unwrap();
    let mut seen = 0;
    for a in 0..TOP {
        for c in 0..MID {
            for i in (0..FILES).step_by(97) {
                let p = format!("a{a:02}/b{c:02}/f{i:03}");
                let (_, node) = tree.get(p.as_bytes()).unwrap();
                let ids = rewindfs::snapshot::Tree::blocks_of(node);
                assert_eq!(ids.len(), 1);
                assert_eq!(
                    m.repo.read_blob(&ids[0]).unwrap(),
                    format!("{a} {c} {i}\n").into_bytes()
                );
                seen += 1;
            }
        }
    }
    assert!(seen > 1000);
    let (_, big) = tree.get(b"big.bin").unwrap();
    let ids = rewindfs::snapshot::Tree::blocks_of(big);
    assert_eq!(ids.len(), 1101);
    assert_eq!(m.repo.read_blob(&ids[0]).unwrap(), vec![9u8; 1 << 16]);
    assert_eq!(m.repo.read_blob(&ids[1100]).unwrap(), vec![9u8; 5]);
    let v = rewindfs::verify::verify(&m.repo, true).unwrap();
    assert!(v.ok(), "{v:?}");
}
