//! Checkpoint-aware deduplication: a file read whole is cut at its
//! tensors' starts (safetensors) or by content, so a tensor that did not
//! change is stored once wherever it moved; restores are exact.
//!
//! Scan captures (no mount) for the format cases and the property test;
//! a live mount for the fast path and for a file in content chunks that
//! is then changed in place (its chunks are cut again where they were).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use proptest::prelude::*;
use rewindfs::repo::Repository;
use rewindfs::restore::{restore, RestoreOptions};
use rewindfs::snapshot::{Blocks, Kind, Node, SnapshotRecord};

use common::bytes;
use common::live::FlushedMount;

const MIB: usize = 1 << 20;

/// A safetensors file: `tensors` (name, dtype, bytes) laid out in order,
/// `meta` in `__metadata__`; the header padded with spaces to 8 bytes.
fn safetensors(tensors: &[(&str, &str, Vec<u8>)], meta: &[(&str, &str)]) -> Vec<u8> {
    let mut table = serde_json::Map::new();
    if !meta.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        table.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut at = 0usize;
    for (name, dtype, data) in tensors {
        let width = if *dtype == "F32" { 4 } else { 2 };
        table.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": dtype,
                "shape": [data.len() / width],
                "data_offsets": [at, at + data.len()],
            }),
        );
        at += data.len();
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(table)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for (_, _, d) in tensors {
        out.extend_from_slice(d);
    }
    out
}

fn scan(repo: &Repository, src: &Path) -> SnapshotRecord {
    common::scan_record(repo, src, Kind::Incremental, 2)
}

/// Restore snapshot `rec` and compare every file with `want`.
fn assert_restores(repo: &Repository, rec: &SnapshotRecord, want: &BTreeMap<&str, Vec<u8>>) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let tree = repo.resolve(rec).unwrap();
    restore(
        repo,
        &tree,
        b"",
        &out,
        &RestoreOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    for (name, data) in want {
        let got = fs::read(out.join(name)).unwrap();
        assert!(got == *data, "snapshot {}: {name} differs", rec.id);
    }
}

/// The chunk lengths of `name` in snapshot `rec` (`None`: fixed blocks).
fn chunk_lens(repo: &Repository, rec: &SnapshotRecord, name: &str) -> Option<Vec<u32>> {
    let tree = repo.resolve(rec).unwrap();
    match tree.get(name.as_bytes()) {
        Some((
            _,
            Node::File {
                blocks: Blocks::Sized { lens, .. },
                ..
            },
        )) => Some(lens.clone()),
        _ => None,
    }
}

/// A frozen backbone of 16 fp32 tensors of 1 MiB and the versions a
/// fine-tuning job writes of it: each stores its changed tensors and a
/// small constant (the header chunk, the directory objects), never the
/// tensors that only moved.
#[test]
fn safetensors_versions_store_only_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    Repository::init(&tmp.path().join("repo"), 1 << 20, 3).unwrap();
    let repo = Repository::open(&tmp.path().join("repo")).unwrap();
    let names: Vec<String> = (0..16).map(|i| format!("layers.{i}.weight")).collect();
    let base: Vec<(&str, &str, Vec<u8>)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), "F32", bytes(100 + i as u64, MIB)))
        .collect();
    let file = src.join("model.safetensors");
    let mut want = BTreeMap::new();
    let v0 = safetensors(&base, &[("step", "1")]);
    fs::write(&file, &v0).unwrap();
    want.insert("model.safetensors", v0);
    let first = scan(&repo, &src);
    assert_restores(&repo, &first, &want);
    let lens = chunk_lens(&repo, &first, "model.safetensors").expect("content chunks");
    assert_eq!(
        lens.len(),
        17,
        "the header and one chunk per tensor: {lens:?}"
    );

    // (what changed, the version, bytes it may store beyond 64 KiB)
    let lora_a = ("lora.A", "F32", bytes(7, 32 << 10));
    let lora_b = ("lora.B", "F32", bytes(8, 32 << 10));
    let mut with_lora = base.clone();
    with_lora.insert(8, lora_a);
    with_lora.push(lora_b);
    let mut renamed = base.clone();
    renamed[3].0 = "layers.3.renamed_weight";
    let mut bf16 = base.clone();
    bf16[5] = ("layers.5.weight", "BF16", bytes(55, MIB / 2));
    let long = "x".repeat(5000);
    let versions: Vec<(&str, Vec<u8>, usize)> = vec![
        ("metadata only", safetensors(&base, &[("step", "2")]), 0),
        (
            "LoRA adapter added",
            safetensors(&with_lora, &[("step", "3")]),
            64 << 10,
        ),
        (
            "grown metadata header",
            safetensors(&base, &[("step", "4"), ("note", &long)]),
            0,
        ),
        ("renamed tensor", safetensors(&renamed, &[("step", "5")]), 0),
        (
            "dtype change of one tensor",
            safetensors(&bf16, &[("step", "6")]),
            MIB / 2,
        ),
    ];
    for (what, data, changed) in versions {
        fs::write(&file, &data).unwrap();
        want.insert("model.safetensors", data);
        let rec = scan(&repo, &src);
        let limit = (changed + (64 << 10)) as u64;
        assert!(
            rec.stats.stored_bytes <= limit,
            "{what}: stored {} bytes, at most {limit} expected",
            rec.stats.stored_bytes
        );
        assert_restores(&repo, &rec, &want);
    }
}

/// Headers that lie cost a fallback to content chunks, never an error or
/// a wrong restore.
#[test]
fn hostile_safetensors_headers_are_chunked_safely() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    Repository::init(&tmp.path().join("repo"), 256 << 10, 3).unwrap();
    let repo = Repository::open(&tmp.path().join("repo")).unwrap();
    let body = bytes(3, 3 * MIB);
    let with_header = |len: u64, json: &str| {
        let mut v = len.to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend_from_slice(&body);
        v
    };
    let mut want = BTreeMap::new();
    let cases = [
        ("huge.safetensors", with_header(1 << 62, "{}")),
        ("past-end.safetensors", with_header(u64::MAX, "{")),
        (
            "overlap.safetensors",
            with_header(
                0,
                r#"{"a":{"data_offsets":[0,900000]},"b":{"data_offsets":[10,20]}}"#,
            ),
        ),
        (
            "outside.safetensors",
            with_header(0, r#"{"a":{"data_offsets":[0,99999999999]}}"#),
        ),
        (
            "many.safetensors",
            with_header(0, &{
                // A header naming 20,000 one-byte tensors.
                let t: Vec<String> = (0..20_000)
                    .map(|i| format!(r#""t{i}":{{"data_offsets":[{i},{}]}}"#, i + 1))
                    .collect();
                format!("{{{}}}", t.join(","))
            }),
        ),
    ];
    for (name, mut data) in cases {
        if !name.starts_with("huge") && !name.starts_with("past") {
            // The header's true length.
            let n = (data.len() - 8 - body.len()) as u64;
            data[..8].copy_from_slice(&n.to_le_bytes());
        }
        fs::write(src.join(name), &data).unwrap();
        want.insert(name, data);
    }
    let rec = scan(&repo, &src);
    assert_restores(&repo, &rec, &want);
    // Tiny tensors are not cut at: no chunk is shorter than 4 KiB but
    // the last.
    let lens = chunk_lens(&repo, &rec, "many.safetensors").unwrap();
    assert!(
        lens[..lens.len() - 1].iter().all(|l| *l >= 4096),
        "{lens:?}"
    );
    // Nothing changed: no chunk of file data is new (the directory
    // objects may be: the files were written within the racy window).
    let again = scan(&repo, &src);
    assert!(again.stats.stored_bytes < 16 << 10, "{:?}", again.stats);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    /// Random insertions and deletions of bytes at random places in a
    /// large file keep all but a few chunks per edit; every version
    /// restores exactly.
    #[test]
    fn edits_store_a_few_chunks_and_restore_exactly(
        seed in any::<u64>(),
        rounds in proptest::collection::vec(
            proptest::collection::vec((0.0f64..1.0, 1usize..5000, any::<bool>()), 1..4),
            1..4,
        ),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        Repository::init(&tmp.path().join("repo"), 64 << 10, 3).unwrap();
        let repo = Repository::open(&tmp.path().join("repo")).unwrap();
        let mut data = bytes(seed, 3 * MIB);
        fs::write(src.join("f.bin"), &data).unwrap();
        let first = scan(&repo, &src);
        let mut want = BTreeMap::new();
        want.insert("f.bin", data.clone());
        assert_restores(&repo, &first, &want);
        let total = first.stats.new_chunks;
        for (r, edits) in rounds.iter().enumerate() {
            for (k, (at, len, insert)) in edits.iter().enumerate() {
                let i = (*at * data.len() as f64) as usize;
                if *insert {
                    data.splice(i..i, bytes(seed ^ ((r * 16 + k) as u64 + 1), *len));
                } else {
                    let e = (i + len).min(data.len());
                    data.drain(i..e);
                }
            }
            fs::write(src.join("f.bin"), &data).unwrap();
            want.insert("f.bin", data.clone());
            let rec = scan(&repo, &src);
            // Chunks of the file (1 per edit for 90% of edits, rarely up
            // to 4, see chunking's unit test), plus the root directory.
            prop_assert!(
                rec.stats.new_chunks <= 4 * edits.len() as u64 + 3,
                "{} new chunks (of {total}) for {} edits",
                rec.stats.new_chunks,
                edits.len()
            );
            assert_restores(&repo, &rec, &want);
        }
    }
}

/// Through a live mount: a checkpoint saved on the fast path with a LoRA
/// adapter added stores the adapter and the header; a large file in
/// content chunks changed in place through the mount is read again only
/// where it changed, cut where it was, and its snapshots read back
/// exactly from `.snapshots`.
#[test]
fn live_mount_versions_share_unchanged_content() {
    let cfg = rewindfs::fuse::MountConfig {
        checkpoints: Some(
            rewindfs::fs::fastpath::CheckpointPatterns::new(
                rewindfs::fs::fastpath::DEFAULT_PATTERNS,
            )
            .unwrap(),
        ),
        ..Default::default()
    };
    let m = FlushedMount::with(1 << 20, cfg, |_| {});
    let base: Vec<(String, &str, Vec<u8>)> = (0..12)
        .map(|i| (format!("layers.{i}.weight"), "F32", bytes(300 + i, MIB)))
        .collect();
    let as_ref = |v: &[(String, &str, Vec<u8>)]| -> Vec<(String, String, Vec<u8>)> {
        v.iter()
            .map(|(a, b, c)| (a.clone(), b.to_string(), c.clone()))
            .collect()
    };
    let encode = |v: &[(String, String, Vec<u8>)], step: &str| {
        let t: Vec<(&str, &str, Vec<u8>)> = v
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.clone()))
            .collect();
        safetensors(&t, &[("step", step)])
    };
    let v1 = encode(&as_ref(&base), "100");
    fs::write(m.mnt.join("model.safetensors"), &v1).unwrap();
    let data = bytes(9, 6 * MIB + 12345);
    fs::write(m.mnt.join("data.bin"), &data).unwrap();
    let s1 = m.snapshot(Kind::Incremental);
    assert!(chunk_lens(&m.repo, &s1, "model.safetensors").is_some());
    assert!(chunk_lens(&m.repo, &s1, "data.bin").is_some());

    let mut lora = as_ref(&base);
    lora.insert(6, ("lora.A".into(), "F32".into(), bytes(1, 32 << 10)));
    lora.push(("lora.B".into(), "F32".into(), bytes(2, 32 << 10)));
    let v2 = encode(&lora, "200");
    fs::write(m.mnt.join("model.safetensors"), &v2).unwrap();
    let s2 = m.snapshot(Kind::Incremental);
    assert!(
        s2.stats.stored_bytes <= 200 << 10,
        "a LoRA add stored {} bytes",
        s2.stats.stored_bytes
    );

    // In place, through the mount: 100 bytes in the middle and a few
    // across a block boundary, then an append.
    let mut now = data.clone();
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.mnt.join("data.bin"))
            .unwrap();
        for (off, len, seed) in [(3 * MIB + 777, 100, 21u64), (2 * MIB - 3, 9, 22)] {
            let b = bytes(seed, len);
            f.write_all_at(&b, off as u64).unwrap();
            now[off..off + len].copy_from_slice(&b);
        }
        let tail = bytes(23, 70_000);
        f.write_all_at(&tail, now.len() as u64).unwrap();
        now.extend_from_slice(&tail);
    }
    let before = chunk_lens(&m.repo, &s2, "data.bin").unwrap();
    let s3 = m.snapshot(Kind::Incremental);
    let after = chunk_lens(&m.repo, &s3, "data.bin").unwrap();
    // In-place writes keep every boundary; the append re-cuts only the
    // last chunk (once more if it grew past a block).
    let n = before.len() - 1;
    assert_eq!(after[..n], before[..n], "{before:?} -> {after:?}");
    assert!(
        (n + 1..=n + 2).contains(&after.len()),
        "{before:?} -> {after:?}"
    );
    assert!(
        s3.stats.new_chunks <= 8,
        "{} new chunks for three small writes",
        s3.stats.new_chunks
    );
    let files = m.files_of(s3.id);
    assert!(files["data.bin"] == now);
    assert!(files["model.safetensors"] == v2);
    // And from the snapshot views, through FUSE.
    let name = &s1.name;
    let view = |n: &str, f: &str| fs::read(m.mnt.join(".snapshots").join(n).join(f)).unwrap();
    assert!(view(name, "model.safetensors") == v1);
    assert!(view(name, "data.bin") == data);
    assert!(view(&s3.name, "data.bin") == now);
    assert!(view(&s2.name, "model.safetensors") == v2);

    // Cut to a block boundary, nothing written: no block to read, the
    // last chunk kept stored again shorter (once a capture that failed
    // here, and went on failing).
    fs::OpenOptions::new()
        .write(true)
        .open(m.mnt.join("data.bin"))
        .unwrap()
        .set_len(4 * MIB as u64)
        .unwrap();
    now.truncate(4 * MIB);
    let s4 = m.snapshot(Kind::Incremental);
    assert!(m.files_of(s4.id)["data.bin"] == now);
    assert!(view(&s4.name, "data.bin") == now);
    // And to nothing: a fixed-block (empty) list again.
    fs::write(m.mnt.join("data.bin"), b"").unwrap();
    let s5 = m.snapshot(Kind::Incremental);
    assert!(m.files_of(s5.id)["data.bin"].is_empty());
    assert_eq!(chunk_lens(&m.repo, &s5, "data.bin"), None);
}
