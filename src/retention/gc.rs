//! Garbage collection: delete the chunks no snapshot references and
//! repack the packs that are mostly garbage.
//!
//! The protocol (the same code runs offline and inside the daemon, where
//! captures run beside it):
//! 1. **Mark**: every chunk and manifest part the snapshot records name
//!    (their manifests, not their resolved trees: a resolved tree only
//!    names what its chain's manifests name), plus the chunks readers
//!    still use (files of forgotten snapshots open in a view). A damaged
//!    record or an unreadable manifest stops gc: it cannot know what they
//!    reference.
//! 2. **Condemn**: every indexed chunk not marked is published as
//!    condemned. From then on no writer deduplicates against it: a capture
//!    that needs one stores a fresh copy, which the index then points to.
//! 3. **Barrier**: wait until every capture that started before the
//!    condemnation has committed or given up (captures hold the
//!    repository's capture lock shared), mark the records committed
//!    since step 1, and pardon any condemned chunk they (or a reader)
//!    reference. After this no record and no running capture can name a
//!    condemned chunk's old copy.
//! 4. **Repack**: live blobs of packs whose live fraction is under the
//!    threshold are copied, as stored (checked, not decoded), into new
//!    packs; the new packs are fsynced before the index points at them.
//! 5. **Delete**: index entries of condemned chunks that still point at
//!    their old copies are removed, the removed and repacked packs lose
//!    their `indexed` mark, the index is flushed, and only then are the
//!    pack files unlinked. (The highest-numbered pack is emptied to its
//!    header instead, so pack ids are never reused.)
//!
//! kill -9 at any line: before step 5's flush nothing a record needs has
//! moved; after it, a pack that was not unlinked yet is scanned again on
//! the next open (it lost its mark), its blobs re-enter the index only
//! where the index has no entry, and the next gc removes them again.
//! Packs created after gc started, or not yet marked indexed when it
//! listed the index (a capture that began before it still writing), are
//! never touched.
//!
//! That is a **full** gc. After forgets, gc is **incremental** when it
//! can be: step 1 looks only at gc's candidates (`repo::candidates`: the
//! ids the forgets' ledger merges cancelled out) and condemns those that
//! no delta of the reference ledger names (an id is referenced by some
//! snapshot exactly when a delta names it); steps 2-3 are the same (the
//! records committed meanwhile are asked through their deltas); steps 4-5
//! run over the packs that hold condemned chunks only, read through their
//! blob headers against the index. No tree is read. When the list is not
//! trusted, or a delta does not cover its snapshot's structure (an older
//! format), gc is full, and a full gc starts a new list.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::snapshot::SnapshotRecord;
use crate::store::blob::HEADER_LEN;
use crate::store::pack::{list_packs, pack_file_name, Location, PACK_HEADER_LEN};
use crate::store::ChunkId;

/// Repack a pack whose live bytes are under this share of its size.
pub const DEFAULT_REPACK_BELOW: f64 = 0.5;

#[derive(Clone, Debug)]
pub struct GcOptions {
    /// 0.0 ..= 1.0: packs with a smaller live fraction are repacked
    /// (0: only packs with nothing live are removed).
    pub repack_below: f64,
    /// Say what would be freed; change nothing.
    pub dry_run: bool,
    /// Mark everything, even when the candidates of the forgets since
    /// the last gc are known (see the module doc).
    pub full: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            repack_below: DEFAULT_REPACK_BELOW,
            dry_run: false,
            full: false,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// "full" (every snapshot marked) or "incremental" (only what the
    /// forgets since the last gc released was looked at).
    pub mode: &'static str,
    /// Incremental: the objects looked at.
    pub candidates: u64,
    pub snapshots: u64,
    /// Chunks (and manifest parts) some snapshot or reader references
    /// (a full gc; an incremental one counts the candidates still
    /// referenced).
    pub referenced_chunks: u64,
    /// Chunks removed from the index (unreferenced).
    pub deleted_chunks: u64,
    /// Condemned chunks referenced again before the deletion (by a
    /// snapshot committed meanwhile, or a reader): kept.
    pub rescued_chunks: u64,
    pub packs_before: u64,
    /// Packs removed because nothing in them was live.
    pub packs_deleted: u64,
    /// Packs whose live blobs were copied into new packs, then removed.
    pub packs_repacked: u64,
    pub packs_written: u64,
    /// Packs gc could not repack (a blob in them is damaged): kept as
    /// they are; `verify --read-data` names the damage.
    pub packs_skipped: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub bytes_freed: u64,
    /// Bytes copied by repacking.
    pub bytes_copied: u64,
    pub seconds: f64,
}

/// The chunks, manifest parts and directory objects `records` name
/// (directory objects in `seen` were marked before, with what they name).
fn mark(
    repo: &Repository,
    records: &[SnapshotRecord],
    seen: &mut HashSet<crate::snapshot::dirs::DirRef>,
    out: &mut HashSet<ChunkId>,
) -> Result<()> {
    for r in records {
        repo.references(r, seen, out).map_err(|e| {
            Error::Corrupt(format!(
                "gc stopped: the manifest of snapshot {} cannot be read ({e}), so what it references is unknown; nothing was deleted",
                r.id
            ))
        })?;
    }
    Ok(())
}

/// Bytes a blob occupies in its pack.
fn blob_bytes(l: &Location) -> u64 {
    HEADER_LEN as u64 + u64::from(l.stored_len)
}

/// Run gc on `repo` (see the module doc).
pub fn gc(repo: &Repository, opts: &GcOptions) -> Result<GcReport> {
    let t0 = Instant::now();
    if !(0.0..=1.0).contains(&opts.repack_below) {
        return Err(Error::InvalidInput(
            "the repack threshold must be between 0 and 100 percent".into(),
        ));
    }
    let _one = repo.lifecycle_guard();
    repo.sync_records()?;
    // Whatever happens (an error, a panic), nothing stays condemned: a
    // chunk whose entry survived may be deduplicated against again.
    struct Pardon<'r>(&'r Repository);
    impl Drop for Pardon<'_> {
        fn drop(&mut self) {
            self.0.clear_condemned();
        }
    }
    let _pardon = Pardon(repo);
    let incremental = if opts.full || opts.dry_run {
        None
    } else {
        run_incremental(repo, opts)?
    };
    let mut report = match incremental {
        Some(r) => r,
        None => {
            if !opts.dry_run {
                // What forgets release from now on is looked at next time.
                repo.reset_gc_candidates()?;
            }
            let r = run_full(repo, opts);
            if r.is_err() && !opts.dry_run {
                repo.drop_gc_candidates("a full gc failed");
            }
            r?
        }
    };
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// The records to mark, refusing to go on past a damaged one.
fn sound_records(repo: &Repository) -> Result<Vec<SnapshotRecord>> {
    let records = repo.snapshots()?;
    let damaged = repo.check_record_files()?;
    if let Some((id, why)) = damaged.iter().next() {
        return Err(Error::Corrupt(format!(
            "gc stopped: the record of snapshot {id} is damaged ({why}); what it references is unknown, so nothing was deleted (forget it with `rewindfs forget {id}` or restore the record file)"
        )));
    }
    Ok(records)
}

/// gc of what the forgets since the last gc released: each candidate
/// (see `repo::candidates`) that no delta of the reference ledger names
/// any more is condemned, and only the packs holding condemned chunks
/// are looked at. `None`: the candidates are not trusted, or a snapshot
/// is of an older format (its ledger does not cover its structure): a
/// full gc is needed.
fn run_incremental(repo: &Repository, opts: &GcOptions) -> Result<Option<GcReport>> {
    let Some(cands) = repo.take_gc_candidates() else {
        return Ok(None);
    };
    match incremental(repo, opts, &cands) {
        Ok(Some((report, keep))) => {
            repo.finish_gc_candidates(&keep);
            Ok(Some(report))
        }
        // The full gc that follows starts a new list.
        Ok(None) => Ok(None),
        // What was taken stays taken: the next gc looks at it again.
        Err(e) => Err(e),
    }
}

fn incremental(
    repo: &Repository,
    opts: &GcOptions,
    cands: &[ChunkId],
) -> Result<Option<(GcReport, Vec<ChunkId>)>> {
    let mut report = GcReport {
        mode: "incremental",
        candidates: cands.len() as u64,
        ..GcReport::default()
    };
    let limit = repo.next_pack_id();
    let records = sound_records(repo)?;
    let marked: HashMap<u64, Vec<String>> =
        records.iter().map(|r| (r.id, r.manifest.clone())).collect();
    let t = Instant::now();
    let (found, complete) = super::ledger::rebuilding_once(repo, || {
        super::ledger::referenced_among(repo, &records, cands)
    })?;
    if !complete {
        tracing::debug!("gc: a snapshot's ledger does not cover its structure: marking everything");
        return Ok(None);
    }
    let pinned: HashSet<ChunkId> = repo.pinned().into_iter().collect();
    // Candidates decided later: used by a reader, or stored again since.
    let mut keep = Vec::new();
    let mut condemned: HashSet<ChunkId> = HashSet::new();
    let mut dead: Vec<(ChunkId, Location)> = Vec::new();
    for c in cands {
        if found.contains(c) {
            continue;
        }
        if pinned.contains(c) {
            keep.push(*c);
            continue;
        }
        match repo.index().get_chunk(c)? {
            None => {}
            Some(l) if l.pack >= limit => keep.push(*c),
            Some(l) => {
                condemned.insert(*c);
                dead.push((*c, l));
            }
        }
    }
    report.referenced_chunks = found.len() as u64;
    tracing::debug!(
        "gc: {} candidates, {} still referenced, {} condemned in {:?}",
        cands.len(),
        found.len(),
        condemned.len(),
        t.elapsed()
    );
    repo.condemn(condemned.clone());
    crate::util::fault::inject("gc-condemned")?;
    {
        // Barrier: what was committed since is asked too.
        let _no_capture = repo.exclude_captures();
        let now = repo.snapshots()?;
        report.snapshots = now.len() as u64;
        let fresh = now.iter().any(|r| marked.get(&r.id) != Some(&r.manifest));
        let mut rescued: Vec<ChunkId> = Vec::new();
        if fresh && !condemned.is_empty() {
            let mut ids: Vec<ChunkId> = condemned.iter().copied().collect();
            ids.sort_unstable_by_key(|id| id.0);
            let (again, complete) = super::ledger::referenced_among(repo, &now, &ids)?;
            if !complete {
                repo.pardon(&ids);
                return Ok(None);
            }
            rescued.extend(again);
        }
        for id in repo.pinned() {
            if condemned.contains(&id) {
                rescued.push(id);
                keep.push(id);
            }
        }
        for id in &rescued {
            condemned.remove(id);
        }
        repo.pardon(&rescued);
        report.rescued_chunks = rescued.len() as u64;
    }
    dead.retain(|(id, _)| condemned.contains(id));
    // Only the packs holding condemned chunks: what is live in them is
    // read from their headers and the index.
    let reader = repo.pack_reader();
    let affected: std::collections::BTreeSet<u64> = dead.iter().map(|(_, l)| l.pack).collect();
    let mut by_pack: BTreeMap<u64, Vec<(ChunkId, Location)>> = BTreeMap::new();
    let mut consider = std::collections::BTreeSet::new();
    // Packs that stay whatever else is dead in them (by the garbage gc
    // counted before, plus what it deletes now) are not read: only
    // their garbage count grows.
    let mut grown = Vec::new();
    let mut dead_in: HashMap<u64, u64> = HashMap::new();
    for (_, l) in &dead {
        *dead_in.entry(l.pack).or_default() += blob_bytes(l);
    }
    for &p in &affected {
        if !repo.index().is_pack_indexed(p)? {
            continue;
        }
        let blobs = reader
            .pack_len(p)
            .unwrap_or(0)
            .saturating_sub(PACK_HEADER_LEN);
        let now = dead_in.get(&p).copied().unwrap_or(0);
        let known = repo.index().pack_garbage(p)?.saturating_add(now);
        let live = blobs.saturating_sub(known);
        if live > 0 && (live as f64) >= opts.repack_below * blobs as f64 {
            grown.push((p, known.min(blobs)));
            continue;
        }
        let scan = crate::store::pack::scan_pack(reader.dir(), p)?;
        if !scan.damaged.is_empty() {
            report.packs_skipped += 1;
            continue;
        }
        let list = by_pack.entry(p).or_default();
        for b in scan.blobs {
            if let Some(l) = repo.index().get_chunk(&b.header.id)? {
                if l.pack == p && l.offset == b.location.offset {
                    list.push((b.header.id, l));
                }
            }
        }
        consider.insert(p);
    }
    sweep(
        repo,
        opts,
        &mut report,
        limit,
        &consider,
        by_pack,
        &condemned,
        dead,
    )?;
    for (p, garbage) in grown {
        repo.index().set_pack_garbage(p, garbage)?;
    }
    Ok(Some((report, keep)))
}

fn run_full(repo: &Repository, opts: &GcOptions) -> Result<GcReport> {
    let mut report = GcReport {
        dry_run: opts.dry_run,
        mode: "full",
        ..GcReport::default()
    };
    // Packs from here on are new: gc leaves them alone.
    let limit = repo.next_pack_id();

    // 1. Mark.
    let records = sound_records(repo)?;
    let marked: HashMap<u64, Vec<String>> =
        records.iter().map(|r| (r.id, r.manifest.clone())).collect();
    let mut live = HashSet::new();
    let mut seen = HashSet::new();
    // Only packs already marked indexed are swept: their entries were
    // inserted before the mark, so the listing below holds them. (A
    // capture that began before gc may still be writing a pack whose id
    // is below `limit`: it is marked indexed when committed, perhaps
    // after the listing, and then looked empty.)
    let mut eligible = std::collections::BTreeSet::new();
    for p in list_packs(repo.pack_reader().dir())? {
        if p < limit && repo.index().is_pack_indexed(p)? {
            eligible.insert(p);
        }
    }
    // The index is listed while the records are marked (one core reads
    // directory objects, the other the index: at 10^6 chunks 1.35 s and
    // 0.86 s cold). The listing may be older than a capture that stores
    // a fresh copy of a condemned chunk: it then still names the old
    // copy, which is what gc removes (removals and moves are
    // conditional on the location listed).
    let t = Instant::now();
    let (marked_ok, indexed) = std::thread::scope(|s| {
        let lister = s.spawn(|| repo.index().chunks());
        let m = mark(repo, &records, &mut seen, &mut live);
        let l = lister
            .join()
            .unwrap_or_else(|_| Err(Error::Poisoned("gc: the index listing panicked".into())));
        (m, l)
    });
    marked_ok?;
    let indexed = indexed?;
    tracing::debug!(
        "gc: marked {} chunks in {} directory objects, listed {} index entries in {:?}",
        live.len(),
        seen.len(),
        indexed.len(),
        t.elapsed()
    );
    let t = Instant::now();

    // 2. Condemn every indexed chunk not marked (in packs from before
    // gc started). Every chunk a record names must be indexed: if the
    // index lost one, a pack holding its last copy could look dead. The
    // index names each chunk once, so that holds when as many indexed
    // chunks are marked as were marked.
    let mut marked_indexed = 0usize;
    let mut condemned: HashSet<ChunkId> = HashSet::new();
    for (id, l) in &indexed {
        if live.contains(id) {
            marked_indexed += 1;
        } else if l.pack < limit {
            condemned.insert(*id);
        }
    }
    if marked_indexed != live.len() {
        let ids: HashSet<ChunkId> = indexed.iter().map(|(id, _)| *id).collect();
        if let Some(missing) = live.iter().find(|id| !ids.contains(id)) {
            return Err(Error::Corrupt(format!(
                "gc stopped: chunk {missing}, which a snapshot references, is not in the index; nothing was deleted (run `rewindfs verify`, then `rewindfs rebuild-index` if the packs hold it)"
            )));
        }
    }
    // Chunks only readers hold: kept now, looked at again by the next gc
    // (incremental or not) through the candidate list.
    let mut held: Vec<ChunkId> = Vec::new();
    for id in repo.pinned() {
        if condemned.remove(&id) {
            held.push(id);
        }
        live.insert(id);
    }
    if !opts.dry_run {
        repo.condemn(condemned.clone());
        crate::util::fault::inject("gc-condemned")?;

        // 3. Barrier.
        let _no_capture = repo.exclude_captures();
        let now = repo.snapshots()?;
        report.snapshots = now.len() as u64;
        let fresh: Vec<SnapshotRecord> = now
            .into_iter()
            .filter(|r| marked.get(&r.id) != Some(&r.manifest))
            .collect();
        mark(repo, &fresh, &mut seen, &mut live)?;
        let pinned: HashSet<ChunkId> = repo.pinned().into_iter().collect();
        held.extend(condemned.intersection(&pinned).copied());
        live.extend(pinned);
        let rescued: Vec<ChunkId> = condemned.intersection(&live).copied().collect();
        for id in &rescued {
            condemned.remove(id);
        }
        repo.pardon(&rescued);
        report.rescued_chunks = rescued.len() as u64;
    } else {
        report.snapshots = records.len() as u64;
    }
    report.referenced_chunks = live.len() as u64;
    tracing::debug!("gc: condemned and barrier in {:?}", t.elapsed());

    // Which packs go, which are repacked (from the listing above).
    let entries = indexed;
    let mut by_pack: BTreeMap<u64, Vec<(ChunkId, Location)>> = BTreeMap::new();
    for (id, l) in &entries {
        if l.pack < limit {
            by_pack.entry(l.pack).or_default().push((*id, *l));
        }
    }
    let dead_entries: Vec<(ChunkId, Location)> = entries
        .iter()
        .filter(|(id, l)| l.pack < limit && condemned.contains(id))
        .copied()
        .collect();
    sweep(
        repo,
        opts,
        &mut report,
        limit,
        &eligible,
        by_pack,
        &condemned,
        dead_entries,
    )?;
    if !opts.dry_run {
        repo.note_gc_candidates(&held);
    }
    Ok(report)
}

/// Steps 4 and 5 over the packs of `consider` (below `limit`), with `by_pack` each pack's indexed blobs and
/// `dead_entries` the index entries of the condemned chunks.
#[allow(clippy::too_many_arguments)]
fn sweep(
    repo: &Repository,
    opts: &GcOptions,
    report: &mut GcReport,
    limit: u64,
    consider: &std::collections::BTreeSet<u64>,
    by_pack: BTreeMap<u64, Vec<(ChunkId, Location)>>,
    condemned: &HashSet<ChunkId>,
    dead_entries: Vec<(ChunkId, Location)>,
) -> Result<()> {
    let t = Instant::now();
    let reader = repo.pack_reader();
    let all_packs = list_packs(reader.dir())?;
    let highest = all_packs.last().copied();
    let mut delete = Vec::new();
    let mut repack = Vec::new();
    for &p in &all_packs {
        let size = reader.pack_len(p).unwrap_or(0);
        report.packs_before += 1;
        report.bytes_before += size;
        if p >= limit || !consider.contains(&p) || !repo.index().is_pack_indexed(p)? {
            continue;
        }
        let in_pack = by_pack.get(&p).map(Vec::as_slice).unwrap_or(&[]);
        let live_bytes: u64 = in_pack
            .iter()
            .filter(|(id, _)| !condemned.contains(id))
            .map(|(_, l)| blob_bytes(l))
            .sum();
        if live_bytes == 0 {
            if size > PACK_HEADER_LEN || !in_pack.is_empty() {
                delete.push(p);
            }
        } else {
            // The share of the pack's blob bytes that is live (its
            // header is neither): a pack with nothing dead is never
            // rewritten, whatever the threshold.
            let blobs = size.saturating_sub(PACK_HEADER_LEN);
            if live_bytes < blobs && (live_bytes as f64) < opts.repack_below * blobs as f64 {
                repack.push(p);
            } else if !opts.dry_run {
                // Kept: what is dead in it, for the next incremental gc.
                repo.index()
                    .set_pack_garbage(p, blobs.saturating_sub(live_bytes))?;
            }
        }
    }
    report.deleted_chunks = dead_entries.len() as u64;
    if opts.dry_run {
        let mut freed = 0;
        for p in delete.iter().chain(repack.iter()) {
            let size = reader.pack_len(*p).unwrap_or(0);
            let live: u64 = by_pack.get(p).map_or(0, |v| {
                v.iter()
                    .filter(|(id, _)| !condemned.contains(id))
                    .map(|(_, l)| blob_bytes(l))
                    .sum()
            });
            freed += size.saturating_sub(live);
        }
        report.packs_deleted = delete.len() as u64;
        report.packs_repacked = repack.len() as u64;
        report.bytes_freed = freed;
        report.bytes_after = report.bytes_before.saturating_sub(freed);
        return Ok(());
    }

    tracing::debug!("gc: planned in {:?}", t.elapsed());
    let t = Instant::now();
    // 4. Repack.
    let mut moved = Vec::new();
    let mut repacked = Vec::new();
    if !repack.is_empty() {
        let to_copy: u64 = repack
            .iter()
            .filter_map(|p| by_pack.get(p))
            .flatten()
            .filter(|(id, _)| !condemned.contains(id))
            .map(|(_, l)| blob_bytes(l))
            .sum();
        let pb = crate::util::progress::bytes("gc: repacking", Some(to_copy), true);
        let mut writer = repo.pack_writer()?;
        for &p in &repack {
            let mut ok = true;
            let mut copies = Vec::new();
            for (id, l) in by_pack.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
                if condemned.contains(id) {
                    continue;
                }
                let blob = match reader.read_stored(l, id) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(
                            pack = p,
                            "not repacking {}: {e}",
                            reader.pack_path(p).display()
                        );
                        ok = false;
                        break;
                    }
                };
                let to = writer.append(&blob)?;
                pb.inc(blob_bytes(l));
                report.bytes_copied += blob.encoded_len();
                copies.push((*id, *l, to));
            }
            if ok {
                moved.extend(copies);
                repacked.push(p);
            } else {
                report.packs_skipped += 1;
            }
        }
        pb.finish_and_clear();
        let written = writer.close()?;
        report.packs_written = written.len() as u64;
        crate::util::fault::inject("gc-repacked")?;
        for (id, from, to) in &moved {
            repo.index().move_chunk(id, from, to)?;
        }
        repo.index().flush()?;
        repo.index().mark_packs_indexed(&written)?;
        repo.index().flush()?;
    }

    tracing::debug!("gc: repacked in {:?}", t.elapsed());
    let t = Instant::now();
    // 5. Delete: index first, files after.
    // (An entry that moved to a fresh copy since the listing stays.)
    let mut removed = 0;
    for (id, l) in &dead_entries {
        removed += u64::from(repo.index().remove_chunk_if(id, l)?);
    }
    report.deleted_chunks = removed;
    let gone: Vec<u64> = delete.iter().chain(repacked.iter()).copied().collect();
    for &p in &gone {
        repo.index().unmark_pack(p)?;
    }
    repo.index().flush()?;
    crate::util::fault::inject("gc-unindexed")?;
    for &p in &gone {
        reader.evict(p);
        let name = pack_file_name(p);
        let r = if Some(p) == highest {
            // Kept, empty, so that its id is never given again.
            reader
                .dir()
                .open_file(&name, rustix::fs::OFlags::WRONLY, 0)
                .and_then(|f| {
                    f.set_len(PACK_HEADER_LEN)
                        .and_then(|()| f.sync_all())
                        .map_err(|e| Error::io("truncate", reader.pack_path(p), e))
                })
        } else {
            reader.dir().remove_file(&name)
        };
        r?;
        crate::util::fault::inject("gc-unlink")?;
    }
    reader.dir().fsync()?;
    report.packs_deleted = delete.len() as u64;
    report.packs_repacked = repacked.len() as u64;
    report.bytes_after = list_packs(reader.dir())?
        .iter()
        .map(|p| reader.pack_len(*p).unwrap_or(0))
        .sum();
    report.bytes_freed = report.bytes_before.saturating_sub(report.bytes_after);
    tracing::debug!("gc: deleted in {:?}", t.elapsed());
    Ok(())
}
