//! When to take snapshots: cadences per kind, and on-close globs.
//!
//! The schedule reads time only through a [`Clock`], so tests drive it
//! with a fake one instead of sleeping.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::snapshot::{Kind, SnapshotRecord};
use crate::track::{FileKey, FsEvent, Journal};
use crate::util::time;

pub use crate::repo::config::PolicyConfig;
use crate::retention::keep::KeepPolicy;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub every: Option<Duration>,
    pub differential_every: Option<Duration>,
    pub full_every: Option<Duration>,
    pub on_close: Vec<String>,
    /// Checkpoint fast-path patterns besides the `on_close` globs.
    pub checkpoints: Vec<String>,
    pub settle: Duration,
    pub snapshot_on_unmount: bool,
    /// Retention applied after each snapshot (empty: none).
    pub keep: KeepPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            every: Some(Duration::from_secs(15 * 60)),
            differential_every: None,
            full_every: Some(Duration::from_secs(24 * 3600)),
            on_close: Vec::new(),
            checkpoints: crate::fs::fastpath::DEFAULT_PATTERNS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            settle: Duration::from_secs(2),
            snapshot_on_unmount: true,
            keep: KeepPolicy::default(),
        }
    }
}

/// The longest cadence accepted (longer ones are surely a typo, and
/// would overflow the scheduler's clock arithmetic).
pub const MAX_CADENCE: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Parse a duration (`15m`, `1h 30m`, `500ms`), or `off`/`0` for none.
pub fn parse_cadence(s: &str) -> Result<Option<Duration>> {
    match s.trim() {
        "off" | "none" | "0" | "never" => Ok(None),
        t => {
            let d = humantime::parse_duration(t).map_err(|e| {
                Error::InvalidInput(format!(
                    "bad duration {s:?}: {e} (use e.g. 15m, 24h, 2s or off)"
                ))
            })?;
            if d > MAX_CADENCE {
                return Err(Error::InvalidInput(format!(
                    "duration {s:?} is longer than 10 years; use off to disable"
                )));
            }
            Ok(Some(d))
        }
    }
}

impl Policy {
    /// Start from the defaults, apply the repository's stored policy, then
    /// the command line's (which wins).
    pub fn layered(layers: &[&PolicyConfig]) -> Result<Policy> {
        let mut p = Policy::default();
        for l in layers {
            if let Some(v) = &l.every {
                p.every = parse_cadence(v)?;
            }
            if let Some(v) = &l.differential_every {
                p.differential_every = parse_cadence(v)?;
            }
            if let Some(v) = &l.full_every {
                p.full_every = parse_cadence(v)?;
            }
            if !l.on_close.is_empty() {
                p.on_close = l.on_close.clone();
            }
            if let Some(v) = &l.checkpoints {
                p.checkpoints = v
                    .iter()
                    .filter(|g| !matches!(g.as_str(), "none" | "off"))
                    .cloned()
                    .collect();
            }
            if let Some(v) = &l.settle {
                p.settle = parse_cadence(v)?.unwrap_or(Duration::ZERO);
            }
            if let Some(v) = l.snapshot_on_unmount {
                p.snapshot_on_unmount = v;
            }
            let k = &mut p.keep;
            for (field, v) in [
                (&mut k.last, l.keep_last),
                (&mut k.hourly, l.keep_hourly),
                (&mut k.daily, l.keep_daily),
                (&mut k.weekly, l.keep_weekly),
                (&mut k.monthly, l.keep_monthly),
                (&mut k.yearly, l.keep_yearly),
            ] {
                if let Some(v) = v {
                    *field = v;
                }
            }
            if let Some(v) = &l.keep_within {
                k.within = parse_cadence(v)?;
            }
            if !l.keep_label.is_empty() {
                k.labels = l.keep_label.clone();
            }
        }
        for g in &p.keep.labels {
            globset::Glob::new(g)
                .map_err(|e| Error::InvalidInput(format!("bad --keep-label glob {g:?}: {e}")))?;
        }
        for g in &p.on_close {
            globset::Glob::new(g)
                .map_err(|e| Error::InvalidInput(format!("bad --on-close glob {g:?}: {e}")))?;
        }
        p.checkpoint_patterns()?;
        Ok(p)
    }
}

impl Policy {
    /// The checkpoint fast path's patterns: `checkpoints` and the
    /// `on_close` globs (`None` when there are none).
    pub fn checkpoint_patterns(&self) -> Result<Option<crate::fs::fastpath::CheckpointPatterns>> {
        let all: Vec<&String> = self.checkpoints.iter().chain(&self.on_close).collect();
        if all.is_empty() {
            return Ok(None);
        }
        crate::fs::fastpath::CheckpointPatterns::new(&all)
            .map(Some)
            .map_err(|e| Error::InvalidInput(format!("{e} (--checkpoint)")))
    }
}

/// Where the schedule reads the time: a monotonic instant for cadences,
/// and wall-clock nanoseconds to compare with snapshot and journal times.
pub trait Clock: Send {
    fn now(&self) -> Instant;
    fn now_ns(&self) -> i64;
}

/// The system's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn now_ns(&self) -> i64 {
        time::now_ns()
    }
}

/// Why a snapshot is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    Cadence(Kind),
    OnClose,
    Retry,
}

struct Pending {
    labels: Vec<String>,
    keys: Vec<FileKey>,
    last_event: Instant,
}

pub struct Schedule {
    policy: Policy,
    clock: Box<dyn Clock>,
    globs: Option<globset::GlobSet>,
    never: bool,
    last_any: Option<Instant>,
    last_diff: Option<Instant>,
    last_full: Option<Instant>,
    pending: Option<Pending>,
}

fn rank(k: Kind) -> u8 {
    match k {
        Kind::Full => 3,
        Kind::Differential => 2,
        Kind::Incremental => 1,
    }
}

impl Schedule {
    pub fn new(policy: &Policy) -> Schedule {
        Self::with_clock(policy, Box::new(SystemClock))
    }

    pub fn with_clock(policy: &Policy, clock: Box<dyn Clock>) -> Schedule {
        let globs = (!policy.on_close.is_empty()).then(|| {
            let mut b = globset::GlobSetBuilder::new();
            for g in &policy.on_close {
                if let Ok(g) = globset::Glob::new(g) {
                    b.add(g);
                }
            }
            b.build().ok()
        });
        Schedule {
            policy: policy.clone(),
            clock,
            globs: globs.flatten(),
            never: true,
            last_any: None,
            last_diff: None,
            last_full: None,
            pending: None,
        }
    }

    /// Learn the times of the repository's snapshots.
    pub fn load(&mut self, all: &[SnapshotRecord]) {
        let now = self.clock.now();
        let now_ns = self.clock.now_ns();
        let at = |r: &SnapshotRecord| {
            let ago = Duration::from_nanos((now_ns - r.time_ns).max(0) as u64);
            now.checked_sub(ago).unwrap_or(now)
        };
        for r in all {
            self.never = false;
            let t = at(r);
            self.last_any = Some(self.last_any.map_or(t, |x| x.max(t)));
            match r.kind {
                Kind::Full => self.last_full = Some(self.last_full.map_or(t, |x| x.max(t))),
                Kind::Differential => self.last_diff = Some(self.last_diff.map_or(t, |x| x.max(t))),
                Kind::Incremental => {}
            }
        }
    }

    pub fn never_taken(&self) -> bool {
        self.never
    }

    /// The schedule's time now.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The snapshot to take now, if any: its kind and label. A cadence
    /// that comes due with nothing changed takes none (and starts over);
    /// an on-close snapshot waits until its files were quiet for the
    /// settle time. A due retry is consumed.
    pub fn poll(
        &mut self,
        retry_at: &mut Option<Instant>,
        journal: &Journal,
    ) -> Option<(Kind, Option<String>)> {
        let now = self.clock.now();
        let (at, due) = self.next(now, *retry_at)?;
        if at > now {
            return None;
        }
        let (kind, label) = match due {
            Due::Cadence(k) => (k, None),
            Due::Retry => (Kind::Incremental, None),
            Due::OnClose => (Kind::Incremental, Some(self.take_on_close(journal, now)?)),
        };
        *retry_at = None;
        if !self.never && journal.is_empty() && label.is_none() {
            // Nothing changed: no snapshot, but the cadence starts over.
            self.skipped(kind, now);
            return None;
        }
        Some((kind, label))
    }

    /// The next thing due, and when.
    pub fn next(&self, now: Instant, retry_at: Option<Instant>) -> Option<(Instant, Due)> {
        if let Some(r) = retry_at {
            return Some((r, Due::Retry));
        }
        if self.never && (self.policy.every.is_some() || self.policy.full_every.is_some()) {
            // A repository without snapshots is not protected yet.
            return Some((now, Due::Cadence(Kind::Full)));
        }
        let mut c: Vec<(Instant, Due)> = Vec::new();
        if let (Some(e), Some(l)) = (self.policy.every, self.last_any) {
            c.push((l + e, Due::Cadence(Kind::Incremental)));
        }
        if let (Some(e), Some(l)) = (
            self.policy.differential_every,
            self.last_diff.max(self.last_full),
        ) {
            c.push((l + e, Due::Cadence(Kind::Differential)));
        }
        if let (Some(e), Some(l)) = (self.policy.full_every, self.last_full.or(self.last_any)) {
            c.push((l + e, Due::Cadence(Kind::Full)));
        }
        if let Some(p) = &self.pending {
            c.push((p.last_event + self.policy.settle, Due::OnClose));
        }
        // Among what is already due, the biggest kind wins.
        let due_now: Vec<&(Instant, Due)> = c.iter().filter(|(t, _)| *t <= now).collect();
        if let Some(best) = due_now.iter().max_by_key(|(_, d)| match d {
            Due::Cadence(k) => rank(*k),
            _ => 0,
        }) {
            return Some(**best);
        }
        c.into_iter().min_by_key(|(t, _)| *t)
    }

    /// For status: when the next snapshot may happen and of which kind.
    pub fn next_due(&self, now: Instant, retry_at: Option<Instant>) -> Option<(Instant, Kind)> {
        self.next(now, retry_at).map(|(t, d)| {
            (
                t,
                match d {
                    Due::Cadence(k) => k,
                    _ => Kind::Incremental,
                },
            )
        })
    }

    pub fn pending_label(&self) -> Option<String> {
        self.pending.as_ref().map(|p| p.labels.join(", "))
    }

    /// A filesystem event: a matching file closed after writing, or renamed
    /// into a matching name.
    pub fn event(&mut self, e: &FsEvent, now: Instant) {
        let Some(globs) = &self.globs else { return };
        let (key, path) = match e {
            FsEvent::ClosedAfterWrite { key, path } | FsEvent::RenamedTo { key, path } => {
                (key, path)
            }
        };
        let p = String::from_utf8_lossy(path).into_owned();
        let base = p.rsplit('/').next().unwrap_or(&p).to_string();
        if !(globs.is_match(&p) || globs.is_match(&base)) {
            return;
        }
        let pending = self.pending.get_or_insert(Pending {
            labels: Vec::new(),
            keys: Vec::new(),
            last_event: now,
        });
        if !pending.labels.contains(&p) {
            pending.labels.push(p);
        }
        if !pending.keys.contains(key) {
            pending.keys.push(*key);
        }
        pending.last_event = now;
    }

    /// The on-close snapshot may be taken if its files were quiet for the
    /// settle time: returns its label, or postpones it.
    pub fn take_on_close(&mut self, journal: &Journal, now: Instant) -> Option<String> {
        let p = self.pending.as_mut()?;
        let dirty = journal.dirty();
        let now_ns = self.clock.now_ns();
        let settle_ns = self.policy.settle.as_nanos() as i64;
        let last_write = p
            .keys
            .iter()
            .filter_map(|k| dirty.get(k))
            .flat_map(|d| d.blocks.values().map(|b| b.last_ns).chain([d.file.last_ns]))
            .max()
            .unwrap_or(0);
        if now_ns - last_write < settle_ns {
            // Still being written: wait for it to settle.
            let ago = Duration::from_nanos((now_ns - last_write).max(0) as u64);
            p.last_event = now.checked_sub(ago).unwrap_or(now);
            return None;
        }
        self.pending.take().map(|p| p.labels.join(", "))
    }

    /// An on-close snapshot failed: wait again.
    pub fn restore_on_close(&mut self, label: String, now: Instant) {
        let p = self.pending.get_or_insert(Pending {
            labels: Vec::new(),
            keys: Vec::new(),
            last_event: now,
        });
        p.labels.insert(0, label);
    }

    pub fn taken(&mut self, rec: &SnapshotRecord, now: Instant) {
        self.never = false;
        self.last_any = Some(now);
        match rec.kind {
            Kind::Full => {
                self.last_full = Some(now);
                self.last_diff = Some(now);
            }
            Kind::Differential => self.last_diff = Some(now),
            Kind::Incremental => {}
        }
    }

    /// A cadence came due with nothing changed: no snapshot, and the
    /// cadence starts over.
    pub fn skipped(&mut self, kind: Kind, now: Instant) {
        self.last_any = Some(now);
        match kind {
            Kind::Full => self.last_full = Some(now),
            Kind::Differential => self.last_diff = Some(now),
            Kind::Incremental => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layering_and_parsing() {
        let repo = PolicyConfig {
            every: Some("5m".into()),
            full_every: Some("off".into()),
            ..Default::default()
        };
        let flags = PolicyConfig {
            every: Some("1s".into()),
            on_close: vec!["*.safetensors".into()],
            ..Default::default()
        };
        let p = Policy::layered(&[&repo, &flags]).unwrap();
        assert_eq!(p.every, Some(Duration::from_secs(1)));
        assert_eq!(p.full_every, None);
        assert_eq!(p.settle, Duration::from_secs(2));
        assert!(p.snapshot_on_unmount);
        assert!(Policy::layered(&[&PolicyConfig {
            every: Some("soon".into()),
            ..Default::default()
        }])
        .is_err());
    }

    #[test]
    fn due_order_and_on_close_matching() {
        let p = Policy {
            every: Some(Duration::from_secs(10)),
            full_every: Some(Duration::from_secs(100)),
            on_close: vec!["*.safetensors".into()],
            ..Policy::default()
        };
        let mut s = Schedule::new(&p);
        let t0 = Instant::now();
        assert_eq!(s.next(t0, None), Some((t0, Due::Cadence(Kind::Full))));
        s.never = false;
        s.last_any = Some(t0);
        s.last_full = Some(t0);
        assert_eq!(
            s.next(t0, None),
            Some((
                t0 + Duration::from_secs(10),
                Due::Cadence(Kind::Incremental)
            ))
        );
        // Both due: the full one wins.
        let later = t0 + Duration::from_secs(200);
        assert_eq!(
            s.next(later, None).map(|x| x.1),
            Some(Due::Cadence(Kind::Full))
        );
        let k = FileKey { dev: 1, ino: 2 };
        s.event(
            &FsEvent::ClosedAfterWrite {
                key: k,
                path: b"ckpt/step1.bin".to_vec(),
            },
            t0,
        );
        assert!(s.pending_label().is_none());
        s.event(
            &FsEvent::RenamedTo {
                key: k,
                path: b"ckpt/model.safetensors".to_vec(),
            },
            t0,
        );
        assert_eq!(s.pending_label().as_deref(), Some("ckpt/model.safetensors"));
        assert_eq!(
            s.next(t0, None),
            Some((t0 + Duration::from_secs(2), Due::OnClose))
        );
    }

    /// A clock the test moves by hand (wall time starts at the real
    /// time, so journal records made now are "now" for it too).
    #[derive(Clone)]
    struct FakeClock {
        start: Instant,
        start_ns: i64,
        offset: std::sync::Arc<parking_lot::Mutex<Duration>>,
    }

    impl FakeClock {
        fn new() -> FakeClock {
            FakeClock {
                start: Instant::now(),
                start_ns: time::now_ns(),
                offset: Default::default(),
            }
        }

        fn advance(&self, d: Duration) {
            *self.offset.lock() += d;
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.start + *self.offset.lock()
        }

        fn now_ns(&self) -> i64 {
            self.start_ns + self.offset.lock().as_nanos() as i64
        }
    }

    fn journal() -> (sled::Db, Journal) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let j = Journal::open(db.open_tree("journal").unwrap(), 64 << 10).unwrap();
        (db, j)
    }

    fn record(kind: Kind, time_ns: i64) -> SnapshotRecord {
        SnapshotRecord {
            format: 1,
            id: 1,
            kind,
            parent: None,
            full: 1,
            time: time::rfc3339(time_ns),
            time_ns,
            label: None,
            name: "s1".into(),
            source: "/data".into(),
            block_size: 64 << 10,
            manifest: Vec::new(),
            manifest_len: 0,
            stats: Default::default(),
            rewritten: None,
        }
    }

    /// Step the fake clock by `step` until `until`, polling like the
    /// flusher's loop; returns what was due, with the offset it was due at.
    fn run_for(
        s: &mut Schedule,
        clock: &FakeClock,
        j: &Journal,
        until: Duration,
        step: Duration,
    ) -> Vec<(Duration, Kind, Option<String>)> {
        let t0 = clock.now();
        let mut retry = None;
        let mut out = Vec::new();
        while clock.now() - t0 < until {
            clock.advance(step);
            if let Some((k, l)) = s.poll(&mut retry, j) {
                let now = clock.now();
                out.push((now - t0, k, l));
                s.last_any = Some(now);
                if k == Kind::Full {
                    s.last_full = Some(now);
                }
            }
        }
        out
    }

    #[test]
    fn idle_cadences_take_nothing_and_a_change_is_taken_at_the_next_one() {
        let clock = FakeClock::new();
        let p = Policy {
            every: Some(Duration::from_secs(1)),
            full_every: None,
            ..Policy::default()
        };
        let mut s = Schedule::with_clock(&p, Box::new(clock.clone()));
        // A repository without snapshots gets a full one at once.
        let (_db, j) = journal();
        let mut retry = None;
        assert_eq!(s.poll(&mut retry, &j), Some((Kind::Full, None)));
        s.load(&[record(Kind::Full, clock.now_ns())]);
        // An hour of idle cadences: nothing.
        let ms = Duration::from_millis;
        assert!(run_for(&mut s, &clock, &j, Duration::from_secs(3600), ms(250)).is_empty());
        // A change: taken at the next cadence (within one period).
        j.record_write(&FileKey { dev: 1, ino: 2 }, 0, 10);
        let got = run_for(&mut s, &clock, &j, Duration::from_secs(5), ms(100));
        assert_eq!(
            got.len(),
            5,
            "one per cadence while the journal holds changes"
        );
        assert!(got[0].0 <= Duration::from_secs(1), "{got:?}");
        assert_eq!(got[0].1, Kind::Incremental);
    }

    #[test]
    fn on_close_waits_for_the_settle_time_and_ignores_other_files() {
        let clock = FakeClock::new();
        let p = Policy {
            every: None,
            full_every: None,
            on_close: vec!["*.safetensors".into()],
            settle: Duration::from_millis(500),
            ..Policy::default()
        };
        let mut s = Schedule::with_clock(&p, Box::new(clock.clone()));
        s.load(&[record(Kind::Full, clock.now_ns())]);
        let (_db, j) = journal();
        let key = FileKey { dev: 1, ino: 7 };
        // A temporary file written and closed: no snapshot.
        j.record_write(&key, 0, 300_000);
        s.event(
            &FsEvent::ClosedAfterWrite {
                key,
                path: b"ckpt/.tmp-save".to_vec(),
            },
            clock.now(),
        );
        let ms = Duration::from_millis;
        assert!(run_for(&mut s, &clock, &j, Duration::from_secs(60), ms(100)).is_empty());
        // Renamed into a checkpoint name: one snapshot, once quiet for
        // the settle time, labelled with the checkpoint.
        s.event(
            &FsEvent::RenamedTo {
                key,
                path: b"ckpt/model-2.safetensors".to_vec(),
            },
            clock.now(),
        );
        let got = run_for(&mut s, &clock, &j, Duration::from_secs(60), ms(100));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].0 >= ms(500) && got[0].0 <= ms(600), "{got:?}");
        assert_eq!(got[0].2.as_deref(), Some("ckpt/model-2.safetensors"));
    }

    #[test]
    fn on_close_waits_while_the_file_is_still_written() {
        // The fake clock runs 10 s behind the wall clock, so a journal
        // record made now is a write 10 s after the close event.
        let clock = FakeClock::new();
        let behind = Duration::from_secs(10);
        let clock = FakeClock {
            start_ns: clock.start_ns - behind.as_nanos() as i64,
            ..clock
        };
        let p = Policy {
            every: None,
            full_every: None,
            on_close: vec!["*.pt".into()],
            settle: Duration::from_secs(2),
            ..Policy::default()
        };
        let mut s = Schedule::with_clock(&p, Box::new(clock.clone()));
        s.load(&[record(Kind::Full, clock.now_ns())]);
        let (_db, j) = journal();
        let key = FileKey { dev: 1, ino: 9 };
        s.event(
            &FsEvent::ClosedAfterWrite {
                key,
                path: b"step.pt".to_vec(),
            },
            s.now(),
        );
        j.record_write(&key, 0, 10);
        let got = run_for(
            &mut s,
            &clock,
            &j,
            Duration::from_secs(30),
            Duration::from_millis(100),
        );
        assert_eq!(got.len(), 1, "{got:?}");
        // Due 2 s after the event, postponed until 2 s after the write.
        let (at, kind, label) = &got[0];
        assert!(
            *at >= behind + Duration::from_secs(2) && *at <= behind + Duration::from_millis(2600),
            "fired at {at:?}"
        );
        assert_eq!(*kind, Kind::Incremental);
        assert_eq!(label.as_deref(), Some("step.pt"));
    }

    proptest::proptest! {
        #[test]
        fn durations_parse_or_err_and_stay_bounded(s in "\\PC{0,24}", n in proptest::num::u64::ANY, unit in "(ns|ms|s|m|h|d|w|y)") {
            for input in [s.clone(), format!("{n}{unit}"), format!("{n}{unit} {s}")] {
                if let Ok(Some(d)) = parse_cadence(&input) {
                    proptest::prop_assert!(d <= MAX_CADENCE);
                }
            }
        }

        #[test]
        fn any_policy_schedules_without_panicking(every in "(off|[0-9]{1,12}(s|m|h|d|y))", full in "(off|[0-9]{1,12}(s|m|h|d|y))", glob in "\\PC{0,12}") {
            let cfg = PolicyConfig {
                every: Some(every),
                full_every: Some(full),
                differential_every: Some("3650d".into()),
                on_close: vec![glob],
                settle: Some("1s".into()),
                snapshot_on_unmount: None,
                ..PolicyConfig::default()
            };
            if let Ok(p) = Policy::layered(&[&cfg]) {
                let mut s = Schedule::new(&p);
                let t0 = Instant::now();
                let _ = s.next(t0, None);
                s.never = false;
                s.last_any = Some(t0);
                s.last_full = Some(t0);
                s.last_diff = Some(t0);
                let _ = s.next(t0, Some(t0 + Duration::from_secs(300)));
                let _ = s.next_due(t0, None);
            }
        }
    }
}
