//! `rewindfs pull`: rebuild a local repository from its remote (a new
//! machine after the old one died). Packs are downloaded whole and
//! checked (every blob the `.idx` lists must be in the pack, with its
//! stored checksum) before they are written and fsynced; records come
//! after all packs; config.json comes last, so a directory without it is
//! a pull in progress that the next `pull` continues (packs already
//! there whole are kept). The remote is then registered in the new
//! repository with everything marked as present, so pushing resumes
//! without uploading anything again.

use std::path::Path;
use std::time::Instant;

use super::client::Client;
use super::config::{self, RemoteConfig, RemoteSpec};
use super::idx::{PackIdx, MAX_ENTRIES};
use super::layout;
use super::state::UploadLog;
use crate::error::{Error, Result};
use crate::repo::{layout as repo_layout, trust};
use crate::snapshot::model::SnapshotRecord;
use crate::store::blob::HEADER_LEN;
use crate::store::pack::{pack_file_name, scan_pack_bytes};
use crate::util::pool;

const MAX_SMALL_OBJECT: u64 = 16 << 20;

#[derive(Debug, Default, serde::Serialize)]
pub struct PullReport {
    pub packs: u64,
    pub bytes: u64,
    /// Packs already present from an interrupted pull.
    pub kept: u64,
    pub records: u64,
    pub seconds: f64,
}

/// Pull the repository `spec` names into `root` (new, empty, or a pull
/// in progress), registering the remote as `name`.
pub fn pull(
    spec: &RemoteSpec,
    root: &Path,
    name: &str,
    concurrency: usize,
    trust_unencrypted: bool,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<PullReport> {
    config::check_name(name)?;
    let t0 = Instant::now();
    let client = Client::connect(spec)?;
    let cfg = client
        .get(layout::CONFIG, MAX_SMALL_OBJECT)?
        .ok_or_else(|| {
            Error::InvalidInput(format!("{} holds no rewindfs repository", client.name()))
        })?;
    let dir = trust::open_trusted(root, trust::Open::CreateIfMissing)?;
    if dir.stat_at(repo_layout::CONFIG).is_ok() {
        return Err(Error::AlreadyExists {
            path: dir.path().to_path_buf(),
        });
    }
    let names = dir.names()?;
    let in_progress = names.iter().all(|n| {
        n == repo_layout::PACKS.as_bytes()
            || n == repo_layout::SNAPSHOTS.as_bytes()
            || n == config::REMOTES_DIR.as_bytes()
            || n == crate::repo::keys::KEYS_DIR.as_bytes()
            || n.starts_with(repo_layout::TMP_PREFIX.as_bytes())
    });
    if !in_progress {
        return Err(Error::InvalidInput(format!(
            "{} is not empty; pull needs a new or empty directory",
            dir.path().display()
        )));
    }
    dir.chmod(0o700)?;
    // An encrypted repository: its keys first, and the key from the
    // environment must open them before anything is downloaded.
    super::read::download_keys(&client, &dir)?;
    let parsed: crate::repo::RepoConfig = serde_json::from_slice(&cfg)
        .map_err(|e| Error::Corrupt(format!("{}/{}: {e}", client.name(), layout::CONFIG)))?;
    if parsed.encryption.is_none() && !trust_unencrypted {
        return Err(Error::InvalidInput(format!(
            "{} is not encrypted: anyone who can write the bucket could have written it, and a pulled repository is trusted like one of yours (a restore by root sets owners and creates setuid and device files); pull it with --trust-remote if only you can write the bucket, or restore from it with `restore --remote` (read as untrusted data)",
            client.name()
        )));
    }
    let crypto = crate::repo::keys::unlock(&dir, &parsed)?;
    let packs_dir = dir.ensure_dir(repo_layout::PACKS, 0o700)?;
    let snaps_dir = dir.ensure_dir(repo_layout::SNAPSHOTS, 0o700)?;
    // Records before packs: a push landing between the two listings then
    // adds packs nobody needs, never a record whose packs are missing.
    let mut fetched = Vec::new();
    for (key, _) in client.list(layout::SNAPSHOTS_DIR)? {
        let Some(id) = layout::parse_record(&key) else {
            continue;
        };
        let Some(b) = client.get(&key, MAX_SMALL_OBJECT)? else {
            continue;
        };
        crate::repo::keys::decode_record(crypto.as_deref(), &b, id)
            .map_err(|e| Error::Corrupt(format!("{}/{key}: {e}", client.name())))?;
        fetched.push((id, b));
    }
    let mut sizes = std::collections::HashMap::new();
    let mut idxs = Vec::new();
    for (key, size) in client.list(layout::PACKS_DIR)? {
        if let Some(p) = layout::parse_pack(&key) {
            sizes.insert(p, size);
        } else if let Some(p) = layout::parse_idx(&key) {
            idxs.push(p);
        }
    }
    let mut report = PullReport::default();
    let c = &client;
    let (_, got) = pool::run(
        concurrency.clamp(1, 64),
        || (),
        |_, p: u64| -> Result<Option<(u64, u64, bool)>> {
            let what = format!("{}/{}", c.name(), layout::idx(p));
            let Some(ib) = c.get(&layout::idx(p), (MAX_ENTRIES * 64) as u64)? else {
                return Ok(None);
            };
            let idx = PackIdx::decode(&ib, p, &what)?;
            if sizes.get(&p) != Some(&idx.pack_len) {
                return Ok(None); // an upload that never completed
            }
            let fname = pack_file_name(p);
            if packs_dir
                .stat_at(&fname)
                .is_ok_and(|st| st.st_size as u64 == idx.pack_len)
            {
                return Ok(Some((p, idx.pack_len, true)));
            }
            let data = c
                .get(&layout::pack(p), idx.pack_len)?
                .ok_or_else(|| Error::Remote {
                    remote: c.name().to_string(),
                    op: "get",
                    key: layout::pack(p),
                    detail: "vanished during the pull".into(),
                })?;
            check_pack(&data, &idx, &format!("{}/{}", c.name(), layout::pack(p)))?;
            packs_dir.write_atomic(&fname, &data)?;
            on_bytes(data.len() as u64);
            Ok(Some((p, idx.pack_len, false)))
        },
        |feed| {
            for p in &idxs {
                feed.send(*p);
            }
        },
    );
    let mut pulled = Vec::new();
    for g in got {
        if let Some((p, len, kept)) = g? {
            pulled.push((p, len));
            if kept {
                report.kept += 1;
            } else {
                report.packs += 1;
                report.bytes += len;
            }
        }
    }
    let mut records = Vec::new();
    for (id, b) in fetched {
        snaps_dir.write_atomic(&SnapshotRecord::file_name(id), &b)?;
        records.push((id, blake3::hash(&b).to_hex().to_string()));
    }
    report.records = records.len() as u64;
    // The remote, with everything marked present, before the config
    // makes the directory a repository.
    let rc = RemoteConfig {
        name: name.to_string(),
        spec: spec.clone(),
        concurrency: concurrency.max(1),
        bandwidth: None,
        keep: None,
        added: crate::util::time::rfc3339(crate::util::time::now_ns()),
    };
    config::save(&dir, &rc)?;
    let repo_id = super::push::remote_repo_id(&cfg).ok_or_else(|| {
        Error::Corrupt(format!(
            "{}/{}: not a rewindfs config",
            client.name(),
            layout::CONFIG
        ))
    })?;
    let mut log = UploadLog::open(&dir, name)?;
    let mut lines = vec![UploadLog::config_line(&repo_id)];
    lines.extend(pulled.iter().map(|(p, len)| UploadLog::pack_line(*p, *len)));
    lines.extend(
        records
            .iter()
            .map(|(id, sum)| UploadLog::record_line(*id, sum)),
    );
    log.append(&lines)?;
    // Without a snapshot policy: rules from the bucket are not taken.
    let mut local = parsed;
    local.policy = None;
    let cfg = serde_json::to_vec_pretty(&local).map_err(|e| Error::InvalidInput(e.to_string()))?;
    dir.write_atomic(repo_layout::CONFIG, &cfg)?;
    drop(dir);
    // The index, from the packs and records (this also checks the config).
    crate::repo::rebuild_index(root)?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Every blob the `.idx` lists is in `data` where it says, with its
/// stored checksum.
fn check_pack(data: &[u8], idx: &PackIdx, what: &str) -> Result<()> {
    if data.len() as u64 != idx.pack_len {
        return Err(Error::Corrupt(format!(
            "{what}: {} bytes, its .idx says {}",
            data.len(),
            idx.pack_len
        )));
    }
    let scan = scan_pack_bytes(data, idx.pack);
    let found: std::collections::HashMap<u64, _> =
        scan.blobs.iter().map(|b| (b.location.offset, b)).collect();
    for (id, loc) in &idx.blobs {
        let ok = found.get(&loc.offset).is_some_and(|b| {
            let start = (loc.offset + HEADER_LEN as u64) as usize;
            b.header.id == *id
                && b.location == *loc
                && b.header
                    .stored_sum_matches(&data[start..start + loc.stored_len as usize])
        });
        if !ok {
            return Err(Error::Corrupt(format!(
                "{what}: chunk {id} at offset {} is damaged",
                loc.offset
            )));
        }
    }
    Ok(())
}
