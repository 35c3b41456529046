//! Prometheus metrics of a live mount (`--metrics-listen`), encoded with
//! `prometheus-client` on each scrape.
//!
//! Point-in-time values (dirty bytes, snapshot ages, chunk cache, RSS,
//! FUSE operation counters) are read when scraped; what happens once per
//! snapshot (capture time, cut pause) is observed from the flusher's
//! events by a worker thread, which also recomputes the repository's
//! space accounting (stored/logical bytes, dedup and compression ratios)
//! when the snapshot list changed, so a scrape never resolves trees.
//!
//! Names follow the Prometheus conventions: `rewindfs_` prefix, base
//! units in the name (`_seconds`, `_bytes`), counters end in `_total`
//! (added by the encoder), ratios are plain gauges.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::control::DaemonStatus;
use crate::flusher::Event;
use crate::fuse::opstats;
use crate::repo::Repository;
use crate::util::time;
use crate::views::chunk_cache::ChunkCache;

/// A histogram with fixed buckets (non-cumulative counts).
#[derive(Clone, Debug)]
struct Hist {
    bounds: &'static [f64],
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Hist {
    fn new(bounds: &'static [f64]) -> Hist {
        Hist {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
    }

    /// Per-bucket counts (not cumulative: the encoder adds them up),
    /// the last one (+Inf) holding what is above every bound.
    fn buckets(&self) -> Vec<(f64, u64)> {
        let mut out: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| (*b, *c))
            .collect();
        let finite: u64 = self.counts.iter().sum();
        out.push((f64::INFINITY, self.count.saturating_sub(finite)));
        out
    }
}

const CAPTURE_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0];
const CUT_BUCKETS: [f64; 9] = [1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0];

/// What the worker thread keeps.
struct Observed {
    capture: Hist,
    cut: Hist,
    /// The repository's space accounting, for records generation `gen`.
    space: Option<(u64, crate::retention::space::RepoSpace)>,
}

/// Rolling verification's coverage (see `daemon::verifier`).
#[derive(Clone, Debug, Default)]
pub struct VerifyCoverage {
    /// Share of the repository's chunks checked within the last full
    /// rotation period (0..=1).
    pub ratio: f64,
    pub chunks_checked_total: u64,
    pub damaged_total: u64,
    /// When the last completed rotation ended (ns), if any.
    pub last_cycle_ns: Option<i64>,
}

/// What the metrics of a live mount are read from.
pub struct Sources {
    pub repo: Arc<Repository>,
    pub status: Arc<dyn Fn() -> DaemonStatus + Send + Sync>,
    pub chunks: Arc<ChunkCache>,
    pub verify: Arc<Mutex<VerifyCoverage>>,
}

/// The metrics of one daemon.
pub struct Metrics {
    src: Sources,
    observed: Mutex<Observed>,
}

impl Metrics {
    /// Start observing `events` (a subscription to the flusher's).
    pub fn start(
        src: Sources,
        events: crossbeam_channel::Receiver<Event>,
    ) -> crate::error::Result<Arc<Metrics>> {
        let m = Arc::new(Metrics {
            src,
            observed: Mutex::new(Observed {
                capture: Hist::new(&CAPTURE_BUCKETS),
                cut: Hist::new(&CUT_BUCKETS),
                space: None,
            }),
        });
        let w = Arc::downgrade(&m);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || loop {
                let ev = events.recv_timeout(Duration::from_secs(30));
                let Some(m) = w.upgrade() else { return };
                match ev {
                    Ok(Event::Snapshot {
                        cut_seconds,
                        duration_seconds,
                        ..
                    }) => {
                        let mut o = m.observed.lock();
                        o.capture.observe(duration_seconds);
                        o.cut.observe(cut_seconds);
                    }
                    Ok(Event::Error { .. }) | Err(_) => {}
                }
                m.refresh_space();
            })
            .map_err(|e| crate::error::Error::io("start thread", "metrics", e))?;
        Ok(m)
    }

    /// Recompute the space accounting if the snapshot list changed.
    fn refresh_space(&self) {
        let gen = self.src.repo.records_generation();
        if matches!(&self.observed.lock().space, Some((g, _)) if *g == gen) {
            return;
        }
        match crate::retention::space::space(&self.src.repo) {
            Ok(s) => self.observed.lock().space = Some((gen, s)),
            Err(e) => tracing::warn!("metrics: space accounting failed: {e}"),
        }
    }

    /// The text exposition of every metric.
    pub fn encode(self: &Arc<Self>) -> String {
        let mut reg = Registry::default();
        reg.register_collector(Box::new(Scrape(self.clone())));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            tracing::warn!("metrics: encoding failed: {e}");
        }
        out
    }
}

/// Process resident set size in bytes (from /proc/self/statm).
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Histograms here carry no exemplars.
type NoLabels = Vec<(String, String)>;

#[derive(Debug)]
struct Scrape(Arc<Metrics>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn labelled_gauges(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(String, f64)],
) -> std::fmt::Result {
    let mut d = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (l, v) in values {
        let set = [(label.to_string(), l.clone())];
        ConstGauge::new(*v).encode(d.encode_family(&set.as_slice())?)?;
    }
    Ok(())
}

fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, h: &Hist) -> std::fmt::Result {
    let mut d = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    d.encode_histogram::<NoLabels>(h.sum, h.count, &h.buckets(), None)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let m = &self.0;
        let st = (m.src.status)();
        let now = time::now_ns();
        let secs = |ns: i64| ns as f64 / 1e9;

        // Snapshots by kind, newest per kind.
        let list = m.src.repo.snapshots().unwrap_or_default();
        let mut by_kind: BTreeMap<String, (u64, i64)> = BTreeMap::new();
        for k in ["full", "incremental", "differential"] {
            by_kind.insert(k.into(), (0, 0));
        }
        for r in &list {
            let e = by_kind.entry(r.kind.as_str().to_string()).or_default();
            e.0 += 1;
            e.1 = e.1.max(r.time_ns);
        }
        let count: Vec<(String, f64)> = by_kind
            .iter()
            .map(|(k, (n, _))| (k.clone(), *n as f64))
            .collect();
        labelled_gauges(
            &mut e,
            "rewindfs_snapshots",
            "Snapshots in the repository, by kind.",
            "kind",
            &count,
        )?;
        let newest: Vec<(String, f64)> = by_kind
            .iter()
            .filter(|(_, (n, _))| *n > 0)
            .map(|(k, (_, t))| (k.clone(), secs(*t)))
            .collect();
        labelled_gauges(
            &mut e,
            "rewindfs_last_snapshot_timestamp_seconds",
            "Cut time of the newest snapshot of each kind (Unix time).",
            "kind",
            &newest,
        )?;
        let ages: Vec<(String, f64)> = newest
            .iter()
            .map(|(k, t)| (k.clone(), (secs(now) - t).max(0.0)))
            .collect();
        labelled_gauges(
            &mut e,
            "rewindfs_last_snapshot_age_seconds",
            "Age of the newest snapshot of each kind.",
            "kind",
            &ages,
        )?;

        // The live recovery-point lag.
        gauge(
            &mut e,
            "rewindfs_dirty_bytes",
            "Bytes changed and not in a snapshot yet (changed blocks times the block size).",
            st.dirty_bytes as f64,
        )?;
        gauge(
            &mut e,
            "rewindfs_dirty_files",
            "Files with changes not in a snapshot yet.",
            st.dirty_files as f64,
        )?;
        gauge(
            &mut e,
            "rewindfs_oldest_change_age_seconds",
            "Age of the oldest change not in a snapshot yet (0 when everything is in one): the live recovery-point lag.",
            st.oldest_change_ns.map(|t| (secs(now) - secs(t)).max(0.0)).unwrap_or(0.0),
        )?;

        // Replication to remotes.
        let by_remote =
            |f: &dyn Fn(&super::replicator::RemoteStatus) -> f64| -> Vec<(String, f64)> {
                st.remotes.iter().map(|r| (r.name.clone(), f(r))).collect()
            };
        labelled_gauges(
            &mut e,
            "rewindfs_remote_pending_snapshots",
            "Snapshots not replicated to the remote yet.",
            "remote",
            &by_remote(&|r| r.pending_snapshots as f64),
        )?;
        labelled_gauges(
            &mut e,
            "rewindfs_remote_pending_bytes",
            "Stored bytes added by the snapshots not replicated yet.",
            "remote",
            &by_remote(&|r| r.pending_bytes as f64),
        )?;
        labelled_gauges(
            &mut e,
            "rewindfs_remote_lag_seconds",
            "Age of the oldest snapshot not replicated yet (0 when the remote has everything): the off-site recovery-point lag.",
            "remote",
            &by_remote(&|r| r.oldest_pending_ns.map_or(0.0, |t| (secs(now) - secs(t)).max(0.0))),
        )?;
        labelled_gauges(
            &mut e,
            "rewindfs_remote_failing",
            "1 when the last push to the remote failed (it is retried with backoff).",
            "remote",
            &by_remote(&|r| if r.last_error.is_some() { 1.0 } else { 0.0 }),
        )?;
        labelled_gauges(
            &mut e,
            "rewindfs_remote_uploaded_bytes",
            "Bytes this daemon uploaded to the remote.",
            "remote",
            &by_remote(&|r| r.uploaded_bytes as f64),
        )?;

        // The flusher.
        let f = st.flusher.clone().unwrap_or_default();
        counter(
            &mut e,
            "rewindfs_snapshots_taken",
            "Snapshots this daemon committed.",
            f.snapshots_taken,
        )?;
        counter(
            &mut e,
            "rewindfs_flusher_errors",
            "Snapshots that failed (their changes wait for the next one).",
            f.errors,
        )?;
        gauge(
            &mut e,
            "rewindfs_kept_pending_files",
            "Checkpoints deleted or replaced before a snapshot held them, kept aside and waiting for one.",
            f.kept_pending as f64,
        )?;
        gauge(
            &mut e,
            "rewindfs_kept_pending_bytes",
            "Bytes of the checkpoints kept aside and waiting for a snapshot.",
            f.kept_pending_bytes as f64,
        )?;
        counter(
            &mut e,
            "rewindfs_kept_total",
            "Checkpoints this daemon kept aside (deleted or replaced before a snapshot held them).",
            f.kept_total,
        )?;
        counter(
            &mut e,
            "rewindfs_capture_read_bytes",
            "Bytes read from the backing directory by snapshot captures.",
            f.bytes_read_total,
        )?;
        let mat = st.materialized.clone().unwrap_or_default();
        gauge(
            &mut e,
            "rewindfs_kept_served_files",
            "Snapshot versions of deleted checkpoints served by passthrough from the deleted file itself (no second copy).",
            mat.kept_files as f64,
        )?;
        gauge(
            &mut e,
            "rewindfs_kept_served_bytes",
            "Bytes of those files (part of the materialization cache).",
            mat.kept_bytes as f64,
        )?;
        let (capture, cut, space) = {
            let o = m.observed.lock();
            (o.capture.clone(), o.cut.clone(), o.space.clone())
        };
        histogram(
            &mut e,
            "rewindfs_capture_duration_seconds",
            "Time from the start of a snapshot to its commit.",
            &capture,
        )?;
        histogram(
            &mut e,
            "rewindfs_cut_pause_seconds",
            "How long each snapshot's cut held writers.",
            &cut,
        )?;

        // The repository.
        if let Some((_, s)) = &space {
            gauge(
                &mut e,
                "rewindfs_repository_stored_bytes",
                "Bytes of pack files on disk.",
                s.pack_bytes as f64,
            )?;
            gauge(
                &mut e,
                "rewindfs_repository_logical_bytes",
                "Sum of every snapshot's logical size.",
                s.logical_bytes as f64,
            )?;
            gauge(
                &mut e,
                "rewindfs_repository_unreferenced_bytes",
                "Stored bytes no snapshot references (gc frees them).",
                s.unreferenced_bytes as f64,
            )?;
            gauge(
                &mut e,
                "rewindfs_dedup_ratio",
                "Logical bytes of all snapshots over their unique uncompressed bytes.",
                s.dedup_ratio,
            )?;
            gauge(
                &mut e,
                "rewindfs_compression_ratio",
                "Uncompressed over stored bytes of the referenced chunks.",
                s.compression_ratio,
            )?;
        }
        let v = m.src.verify.lock().clone();
        gauge(&mut e, "rewindfs_chunks_verified_ratio", "Share of chunks re-read and checked by rolling verification within its rotation period.", v.ratio)?;
        counter(
            &mut e,
            "rewindfs_verify_chunks_checked",
            "Chunks re-read and checked by rolling verification.",
            v.chunks_checked_total,
        )?;
        counter(
            &mut e,
            "rewindfs_verify_damaged_chunks",
            "Damaged chunks rolling verification found.",
            v.damaged_total,
        )?;

        // The kernel edge and the process.
        let ops = opstats::snapshot();
        {
            let mut d = e.encode_descriptor(
                "rewindfs_fuse_operations",
                "FUSE requests handled, by operation.",
                None,
                MetricType::Counter,
            )?;
            for o in &ops {
                let set = [("op".to_string(), o.name.to_string())];
                ConstCounter::new(o.count).encode(d.encode_family(&set.as_slice())?)?;
            }
        }
        {
            let mut d = e.encode_descriptor(
                "rewindfs_fuse_operation_duration_seconds",
                "Time the daemon spent on FUSE requests, by operation.",
                None,
                MetricType::Histogram,
            )?;
            for o in &ops {
                let set = [("op".to_string(), o.name.to_string())];
                d.encode_family(&set.as_slice())?
                    .encode_histogram::<NoLabels>(o.sum_seconds, o.count, &o.buckets, None)?;
            }
        }
        counter(
            &mut e,
            "rewindfs_chunk_cache_hits",
            "Snapshot reads served from verified chunks in memory.",
            m.src.chunks.hits.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "rewindfs_chunk_cache_misses",
            "Snapshot reads that had to read and verify a chunk.",
            m.src.chunks.misses.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut e,
            "rewindfs_chunk_cache_bytes",
            "Bytes of verified chunks held in memory.",
            m.src.chunks.bytes() as f64,
        )?;
        gauge(
            &mut e,
            "rewindfs_process_resident_memory_bytes",
            "Resident memory of the daemon.",
            rss_bytes() as f64,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_histograms_are_cumulative_and_end_at_the_count() {
        let mut h = Hist::new(&CUT_BUCKETS);
        h.observe(0.0002);
        h.observe(0.02);
        h.observe(7.0);
        #[derive(Debug)]
        struct One(Hist);
        impl Collector for One {
            fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
                histogram(&mut e, "t_seconds", "test", &self.0)
            }
        }
        let mut reg = Registry::default();
        reg.register_collector(Box::new(One(h)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        let bucket = |le: &str| -> u64 {
            let pat = format!("t_seconds_bucket{{le=\"{le}\"}} ");
            let line = text
                .lines()
                .find(|l| l.starts_with(&pat))
                .unwrap_or_else(|| panic!("{pat} in {text}"));
            line[pat.len()..].trim().parse().unwrap()
        };
        assert_eq!(bucket("0.0001"), 0);
        assert_eq!(bucket("0.0005"), 1);
        assert_eq!(bucket("0.05"), 2);
        assert_eq!(bucket("1.0"), 2);
        assert_eq!(bucket("+Inf"), 3);
        assert!(text.contains("t_seconds_count 3"), "{text}");
    }
}
