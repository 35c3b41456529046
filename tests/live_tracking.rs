//! The live mount records exactly the blocks that were written, with
//! timestamps inside the write interval, and nothing else.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;

use common::live::{key_of, TestMount, BS};
use rewindfs::util::time::now_ns;

const B: u64 = BS as u64;

fn write_at(path: &std::path::Path, off: u64, len: usize) -> (i64, i64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    let t0 = now_ns();
    f.write_all_at(&vec![0xab; len], off).unwrap();
    let t1 = now_ns();
    (t0, t1)
}

#[test]
fn journal_holds_exactly_the_written_blocks() {
    let m = TestMount::new();
    // A file created outside the mount: no records at all.
    fs::write(m.b("pre"), vec![1u8; 10 * B as usize]).unwrap();
    assert!(m.journal.dirty().is_empty());

    // Single bytes.
    let (t0, t1) = write_at(&m.m("pre"), 3 * B + 7, 1);
    assert_eq!(m.dirty_blocks("pre"), vec![3]);
    let d = m.journal.dirty()[&key_of(&m.b("pre"))].clone();
    let times = d.blocks[&3];
    assert!(
        t0 <= times.first_ns && times.last_ns <= t1,
        "{times:?} not in [{t0}, {t1}]"
    );
    // A span crossing block boundaries: blocks 5, 6, 7.
    write_at(&m.m("pre"), 5 * B + B / 2, 2 * B as usize);
    assert_eq!(m.dirty_blocks("pre"), vec![3, 5, 6, 7]);
    // Exactly one block, aligned.
    write_at(&m.m("pre"), 9 * B, B as usize);
    assert_eq!(m.dirty_blocks("pre"), vec![3, 5, 6, 7, 9]);
    // Rewriting a block keeps its first time and moves its last time.
    let (_, t3) = write_at(&m.m("pre"), 3 * B, 1);
    let again = m.journal.dirty()[&key_of(&m.b("pre"))].blocks[&3];
    assert_eq!(again.first_ns, times.first_ns);
    assert!(again.last_ns > times.last_ns && again.last_ns <= t3);

    // Appends.
    let mut f = OpenOptions::new().append(true).open(m.m("pre")).unwrap();
    f.write_all(&vec![2u8; B as usize + 10]).unwrap();
    drop(f);
    assert_eq!(m.dirty_blocks("pre"), vec![3, 5, 6, 7, 9, 10, 11]);

    // Truncate down then up: the file record keeps the lowest size.
    fs::write(m.b("t"), vec![1u8; 4 * B as usize]).unwrap();
    let f = OpenOptions::new().write(true).open(m.m("t")).unwrap();
    f.set_len(B + 5).unwrap();
    f.set_len(3 * B).unwrap();
    drop(f);
    let d = m.journal.dirty()[&key_of(&m.b("t"))].clone();
    assert_eq!(d.file.truncated_to, Some(B + 5));
    // Growing from B+5 changes block 1 (zeros appended) and nothing else.
    assert_eq!(m.dirty_blocks("t"), vec![1]);

    // Rename, then write: the same file, found by inode.
    fs::write(m.b("r"), vec![0u8; 3 * B as usize]).unwrap();
    let before = key_of(&m.b("r"));
    fs::rename(m.m("r"), m.m("r2")).unwrap();
    write_at(&m.m("r2"), 2 * B, 1);
    assert_eq!(key_of(&m.b("r2")), before);
    assert_eq!(m.dirty_blocks("r2"), vec![2]);

    // Hard link, then write through the other name.
    fs::write(m.b("h"), vec![0u8; 3 * B as usize]).unwrap();
    fs::hard_link(m.m("h"), m.m("h2")).unwrap();
    write_at(&m.m("h2"), 0, 1);
    assert_eq!(m.dirty_blocks("h"), vec![0]);
    assert_eq!(key_of(&m.b("h")), key_of(&m.b("h2")));

    // Files never written through the mount have no block records.
    fs::write(m.b("untouched"), b"x").unwrap();
    let _ = fs::read(m.m("untouched")).unwrap();
    assert!(m.dirty_blocks("untouched").is_empty());

    // Every block record belongs to a file we wrote, at most one per block.
    let dirty = m.journal.dirty();
    let total: usize = dirty.values().map(|d| d.blocks.len()).sum();
    assert_eq!(total, 7 + 1 + 1 + 1);

    // Persisted: one record per dirty block plus file/dir records.
    m.journal.flush().unwrap();
    let st = m.journal.stats();
    assert_eq!(st.dirty_blocks, 10);
    assert!(st.records >= 10);
}

#[test]
fn namespace_and_metadata_changes_are_recorded() {
    let m = TestMount::new();
    fs::create_dir(m.m("d")).unwrap();
    fs::write(m.m("d/f"), b"hello").unwrap();
    let d = m.journal.dirty();
    let root = key_of(&m.backing);
    let dir = key_of(&m.b("d"));
    let f = key_of(&m.b("d/f"));
    assert!(d[&root].file.entries, "mkdir marks the parent");
    assert!(d[&dir].file.created && d[&dir].file.entries);
    assert!(d[&f].file.created);
    assert_eq!(d[&f].blocks.keys().copied().collect::<Vec<_>>(), vec![0]);

    use std::os::unix::fs::PermissionsExt;
    fs::write(m.b("meta"), b"m").unwrap();
    fs::set_permissions(m.m("meta"), fs::Permissions::from_mode(0o600)).unwrap();
    assert!(m.journal.dirty()[&key_of(&m.b("meta"))].file.meta);
    assert!(m.dirty_blocks("meta").is_empty());
}
