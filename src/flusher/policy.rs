//! When to take snapshots: per kind an interval (`--every 15m`) or a
//! cron expression in local time (`--full-at "0 2 * * SUN"`), daily
//! windows that fulls and differentials keep to (`--window 01:00-05:00`),
//! and on-close globs.
//!
//! Every kind is due at its rule's first time after the last snapshot of
//! that kind (or a bigger one), so a time missed while the host was down
//! is due at once when the daemon starts, and only once however many
//! were missed. A due full or differential outside the windows waits
//! for the next opening.
//!
//! The schedule reads time only through a [`Clock`], so tests drive it
//! with a fake one instead of sleeping.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::snapshot::{Kind, SnapshotRecord};
use crate::track::{FileKey, FsEvent, Journal};
use crate::util::calendar::{CronSpec, Windows, Zone};
use crate::util::time;

use crate::fs::fastpath::is_marker;
pub use crate::repo::config::PolicyConfig;
use crate::retention::keep::KeepPolicy;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub every: Option<Duration>,
    pub differential_every: Option<Duration>,
    pub full_every: Option<Duration>,
    /// Cron rules, replacing the same kind's interval.
    pub incremental_at: Option<CronSpec>,
    pub differential_at: Option<CronSpec>,
    pub full_at: Option<CronSpec>,
    /// Where fulls and differentials (and gc, rolling verification) may
    /// run (empty: any time).
    pub windows: Windows,
    /// The zone cron rules and windows are read in.
    pub zone: Zone,
    pub synthetic_fulls: Synthetic,
    pub on_close: Vec<String>,
    /// Checkpoint fast-path patterns besides the `on_close` globs.
    pub checkpoints: Vec<String>,
    /// Whether a closed checkpoint (a file matching `checkpoints`, or a
    /// completed checkpoint folder: see [`is_marker`]) takes a snapshot,
    /// as an `on_close` glob does.
    pub checkpoint_snapshots: bool,
    pub settle: Duration,
    /// The longest an on-close snapshot waits for its files to be quiet:
    /// a job saving faster than the settle time still gets one snapshot
    /// per burst.
    pub settle_max: Duration,
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
            incremental_at: None,
            differential_at: None,
            full_at: None,
            windows: Windows::default(),
            zone: Zone::system(),
            synthetic_fulls: Synthetic::Auto,
            on_close: Vec::new(),
            checkpoints: crate::fs::fastpath::DEFAULT_PATTERNS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            checkpoint_snapshots: true,
            settle: Duration::from_secs(2),
            settle_max: DEFAULT_SETTLE_MAX,
            snapshot_on_unmount: true,
            keep: KeepPolicy::default(),
        }
    }
}

/// The default longest wait of an on-close snapshot.
pub const DEFAULT_SETTLE_MAX: Duration = Duration::from_secs(10);

/// The wait after a checkpoint is complete (its folder's last file, or a
/// file renamed into place) for the files a framework writes right after
/// it.
pub const SETTLE_COMPLETE: Duration = Duration::from_millis(250);

/// Whether a scheduled full snapshot re-reads the dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synthetic {
    /// Built from the latest snapshot's tree and the journal's changes
    /// when those are under [`SYNTHETIC_BELOW`] of the dataset; a real
    /// full (every file read again) otherwise.
    Auto,
    Always,
    Never,
}

/// `auto` builds a synthetic full when the changed bytes waiting in the
/// journal are under this fraction of the dataset's size.
pub const SYNTHETIC_BELOW: f64 = 0.25;

impl Synthetic {
    pub fn parse(s: &str) -> Result<Synthetic> {
        match s.trim() {
            "auto" => Ok(Synthetic::Auto),
            "always" | "on" | "true" => Ok(Synthetic::Always),
            "never" | "off" | "false" => Ok(Synthetic::Never),
            _ => Err(Error::InvalidInput(format!(
                "bad --synthetic-fulls {s:?} (auto, always or never)"
            ))),
        }
    }

    /// Whether a scheduled full with `changed` bytes waiting, of a
    /// dataset of `dataset` bytes, is built synthetically.
    pub fn applies(&self, changed: u64, dataset: u64) -> bool {
        match self {
            Synthetic::Always => true,
            Synthetic::Never => false,
            Synthetic::Auto => (changed as f64) < SYNTHETIC_BELOW * dataset as f64,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Synthetic::Auto => "auto",
            Synthetic::Always => "always",
            Synthetic::Never => "never",
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
        let mut zone = None;
        for l in layers {
            // Per kind an interval or a cron rule: a layer's choice
            // replaces the earlier layers' (and the default).
            for (every, at, p_every, p_at, what) in [
                (
                    &l.every,
                    &l.incremental_at,
                    &mut p.every,
                    &mut p.incremental_at,
                    "--every and --incremental-at",
                ),
                (
                    &l.differential_every,
                    &l.differential_at,
                    &mut p.differential_every,
                    &mut p.differential_at,
                    "--differential-every and --differential-at",
                ),
                (
                    &l.full_every,
                    &l.full_at,
                    &mut p.full_every,
                    &mut p.full_at,
                    "--full-every and --full-at",
                ),
            ] {
                let at = match at.as_deref().map(str::trim) {
                    None => None,
                    Some("off" | "none" | "never") => Some(None),
                    Some(c) => Some(Some(CronSpec::parse(c)?)),
                };
                let every = every.as_deref().map(parse_cadence).transpose()?;
                if matches!((&every, &at), (Some(Some(_)), Some(Some(_)))) {
                    return Err(Error::InvalidInput(format!(
                        "{what} both set one kind's schedule: give one of them"
                    )));
                }
                let sets_every = every.is_some();
                if let Some(e) = every {
                    *p_every = e;
                    *p_at = None;
                }
                if let Some(a) = at {
                    // A cron rule replaces the interval; `off` turns the
                    // kind off (unless this layer gives an interval).
                    if a.is_some() || !sets_every {
                        *p_every = None;
                    }
                    *p_at = a;
                }
            }
            if !l.window.is_empty() {
                p.windows = if l.window.iter().all(|w| w.trim() == "off") {
                    Windows::default()
                } else {
                    Windows::parse(&l.window)?
                };
            }
            if let Some(z) = &l.timezone {
                zone = Some(Zone::parse(z)?);
            }
            if let Some(v) = &l.synthetic_fulls {
                p.synthetic_fulls = Synthetic::parse(v)?;
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
            if let Some(v) = &l.settle_max {
                p.settle_max = parse_cadence(v)?.unwrap_or(MAX_CADENCE);
            }
            if let Some(v) = l.checkpoint_snapshots {
                p.checkpoint_snapshots = v;
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
        if !layers.iter().any(|l| l.settle_max.is_some()) {
            // Not given: never shorter than a settle time that is.
            p.settle_max = p.settle_max.max(p.settle);
        }
        if p.settle_max < p.settle {
            return Err(Error::InvalidInput(format!(
                "--settle-max ({}) is shorter than --settle ({}): give a longer one, or off",
                humantime::format_duration(p.settle_max),
                humantime::format_duration(p.settle)
            )));
        }
        if let Some(z) = zone {
            p.zone = z;
        }
        Ok(p)
    }

    /// The rule of `kind`, for people: `cron "0 2 * * SUN"`, `every 15m`
    /// or `off`.
    pub fn rule(&self, kind: Kind) -> String {
        let (every, at) = match kind {
            Kind::Incremental => (self.every, &self.incremental_at),
            Kind::Differential => (self.differential_every, &self.differential_at),
            Kind::Full => (self.full_every, &self.full_at),
        };
        match (at, every) {
            (Some(c), _) => format!("cron \"{}\"", c.as_str()),
            (None, Some(d)) => format!("every {}", humantime::format_duration(d)),
            (None, None) => "off".into(),
        }
    }

    fn is_scheduled(&self, kind: Kind) -> bool {
        match kind {
            Kind::Incremental => self.every.is_some() || self.incremental_at.is_some(),
            Kind::Differential => {
                self.differential_every.is_some() || self.differential_at.is_some()
            }
            Kind::Full => self.full_every.is_some() || self.full_at.is_some(),
        }
    }

    /// Whether `kind` keeps to the windows.
    pub fn windowed(&self, kind: Kind) -> bool {
        kind != Kind::Incremental && !self.windows.is_empty()
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

impl Policy {
    /// The globs whose closed files take a snapshot: the `on_close` globs
    /// and, with `checkpoint_snapshots`, the checkpoint patterns.
    pub fn snapshot_globs(&self) -> Vec<&String> {
        let mut v: Vec<&String> = self.on_close.iter().collect();
        if self.checkpoint_snapshots {
            v.extend(&self.checkpoints);
        }
        v
    }

    /// Whether any close or rename can take a snapshot (the flusher then
    /// listens to the filesystem's events).
    pub fn listens(&self) -> bool {
        !self.snapshot_globs().is_empty()
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
    /// The first event of this burst (the snapshot waits at most
    /// `settle_max` from it).
    first_event: Instant,
    last_event: Instant,
    /// A checkpoint was completed (a marker closed, a file renamed into
    /// place): only [`SETTLE_COMPLETE`] more is waited for.
    complete: bool,
    /// A file was renamed into a matching name (the name is the change,
    /// even when its content is in a snapshot already).
    renamed: bool,
}

pub struct Schedule {
    policy: Policy,
    clock: Box<dyn Clock>,
    globs: Option<globset::GlobSet>,
    /// Markers of completed checkpoint folders count ([`is_marker`]).
    markers: bool,
    never: bool,
    last_any: Option<Instant>,
    last_diff: Option<Instant>,
    last_full: Option<Instant>,
    /// The same times on the wall clock: cron rules and windows are
    /// computed in wall time from these, never from an instant converted
    /// back (two clock reads apart, a round trip can land a microsecond
    /// early and make a time that just fired due again).
    last_any_ns: Option<i64>,
    last_diff_ns: Option<i64>,
    last_full_ns: Option<i64>,
    /// The wall time the rule that `poll` last returned was due at: the
    /// snapshot (or skip) that follows counts as taken no earlier, so a
    /// wall clock read a little behind cannot make that time due again.
    fired_ns: Option<i64>,
    /// The kind of the latest snapshot (a full or differential due with
    /// nothing changed is still taken when it shortens the chain).
    latest_kind: Option<Kind>,
    pending: Option<Pending>,
}

/// The next run of one kind, for `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextRun {
    pub kind: Kind,
    /// Wall-clock nanoseconds (already past when overdue: waiting for a
    /// change or for the snapshot in progress).
    pub at_ns: i64,
    /// `cron "0 2 * * SUN"`, `every 15m`.
    pub rule: String,
    /// Set when the rule's time fell outside the windows and the run
    /// waits for the next opening.
    pub waits_for_window: bool,
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
        let triggers = policy.snapshot_globs();
        let globs = (!triggers.is_empty()).then(|| {
            let mut b = globset::GlobSetBuilder::new();
            for g in &triggers {
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
            markers: policy.checkpoint_snapshots && !policy.checkpoints.is_empty(),
            never: true,
            last_any: None,
            last_diff: None,
            last_full: None,
            last_any_ns: None,
            last_diff_ns: None,
            last_full_ns: None,
            fired_ns: None,
            latest_kind: None,
            pending: None,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Wall-clock nanoseconds of an instant of this schedule's clock.
    fn wall(&self, t: Instant) -> i64 {
        let now = self.clock.now();
        let now_ns = self.clock.now_ns();
        if t >= now {
            now_ns.saturating_add((t - now).as_nanos().min(i64::MAX as u128) as i64)
        } else {
            now_ns.saturating_sub((now - t).as_nanos().min(i64::MAX as u128) as i64)
        }
    }

    /// The instant of wall-clock nanoseconds `ns`.
    fn instant(&self, ns: i64) -> Instant {
        let now = self.clock.now();
        let now_ns = self.clock.now_ns();
        if ns >= now_ns {
            now.checked_add(Duration::from_nanos((ns - now_ns) as u64))
                .unwrap_or(now + MAX_CADENCE)
        } else {
            now.checked_sub(Duration::from_nanos(now_ns.saturating_sub(ns) as u64))
                .unwrap_or(now)
        }
    }

    /// When `kind` comes due by its rule (interval or cron, after the
    /// last snapshot of that kind or a bigger one), moved to the next
    /// window opening when it must keep to the windows and falls outside
    /// them: as an instant, in wall-clock ns, and whether it was moved.
    fn due_of(&self, kind: Kind) -> Option<(Instant, i64, bool)> {
        let p = &self.policy;
        let (last, last_ns, every, at) = match kind {
            Kind::Incremental => (self.last_any, self.last_any_ns, p.every, &p.incremental_at),
            Kind::Differential => (
                self.last_diff.max(self.last_full),
                self.last_diff_ns.max(self.last_full_ns),
                p.differential_every,
                &p.differential_at,
            ),
            Kind::Full => (
                self.last_full.or(self.last_any),
                self.last_full_ns.or(self.last_any_ns),
                p.full_every,
                &p.full_at,
            ),
        };
        let (raw, raw_ns) = match (at, every) {
            (Some(c), _) => {
                let ns = c.next_after(last_ns?, p.zone)?;
                (self.instant(ns), ns)
            }
            (None, Some(e)) => {
                let t = last?.checked_add(e)?;
                (t, self.wall(t))
            }
            (None, None) => return None,
        };
        if !p.windowed(kind) {
            return Some((raw, raw_ns, false));
        }
        let now_ns = self.clock.now_ns();
        let probe = raw_ns.max(now_ns);
        if p.windows.open_at(probe, p.zone) {
            return Some((raw, raw_ns, false));
        }
        if at.is_none() {
            // An interval falling outside the windows runs early, in the
            // window that opened last before it (if that came after the
            // last snapshot), rather than late: late would push every
            // later run with it until a whole day was skipped.
            if let Some(o) = p
                .windows
                .last_open(raw_ns, p.zone)
                .filter(|o| last_ns.is_some_and(|l| *o > l))
            {
                if o > now_ns {
                    return Some((self.instant(o), o, true));
                }
                if p.windows.open_at(now_ns, p.zone) {
                    return Some((self.clock.now(), now_ns, false));
                }
            }
        }
        let open = p.windows.first_open(probe, p.zone);
        Some((self.instant(open), open, true))
    }

    /// The next run of each scheduled kind (for `status`).
    pub fn next_runs(&self) -> Vec<NextRun> {
        let mut out = Vec::new();
        for kind in [Kind::Full, Kind::Differential, Kind::Incremental] {
            if !self.policy.is_scheduled(kind) {
                continue;
            }
            let (at_ns, waits) = if self.never {
                (self.clock.now_ns(), false)
            } else {
                match self.due_of(kind) {
                    Some((_, ns, w)) => (ns, w),
                    None => continue,
                }
            };
            out.push(NextRun {
                kind,
                at_ns,
                rule: self.policy.rule(kind),
                waits_for_window: waits,
            });
        }
        out
    }

    /// Learn the times of the repository's snapshots.
    pub fn load(&mut self, all: &[SnapshotRecord]) {
        let now = self.clock.now();
        let now_ns = self.clock.now_ns();
        let at = |r: &SnapshotRecord| {
            let ago = Duration::from_nanos((now_ns - r.time_ns).max(0) as u64);
            now.checked_sub(ago).unwrap_or(now)
        };
        if let Some(l) = all.iter().max_by_key(|r| (r.time_ns, r.id)) {
            self.latest_kind = Some(l.kind);
        }
        for r in all {
            self.never = false;
            let t = at(r);
            let ns = r.time_ns;
            self.last_any = Some(self.last_any.map_or(t, |x| x.max(t)));
            self.last_any_ns = Some(self.last_any_ns.map_or(ns, |x| x.max(ns)));
            match r.kind {
                Kind::Full => {
                    self.last_full = Some(self.last_full.map_or(t, |x| x.max(t)));
                    self.last_full_ns = Some(self.last_full_ns.map_or(ns, |x| x.max(ns)));
                }
                Kind::Differential => {
                    self.last_diff = Some(self.last_diff.map_or(t, |x| x.max(t)));
                    self.last_diff_ns = Some(self.last_diff_ns.map_or(ns, |x| x.max(ns)));
                }
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
        self.fired_ns = match due {
            Due::Cadence(k) => self.due_of(k).map(|(_, ns, _)| ns),
            _ => None,
        };
        if !self.never && journal.is_empty() && label.is_none() && !self.shortens_chain(kind) {
            // Nothing changed: no snapshot, but the cadence starts over.
            self.skipped(kind, now);
            return None;
        }
        Some((kind, label))
    }

    /// With nothing changed, would a snapshot of `kind` still shorten
    /// restore chains (a full after anything but a full, a differential
    /// after an incremental)?
    fn shortens_chain(&self, kind: Kind) -> bool {
        match kind {
            Kind::Full => self.latest_kind.is_some_and(|k| k != Kind::Full),
            Kind::Differential => self.latest_kind == Some(Kind::Incremental),
            Kind::Incremental => false,
        }
    }

    /// The next thing due, and when.
    pub fn next(&self, now: Instant, retry_at: Option<Instant>) -> Option<(Instant, Due)> {
        if let Some(r) = retry_at {
            return Some((r, Due::Retry));
        }
        if self.never
            && (self.policy.is_scheduled(Kind::Incremental) || self.policy.is_scheduled(Kind::Full))
        {
            // A repository without snapshots is not protected yet: its
            // first full does not wait for a window.
            return Some((now, Due::Cadence(Kind::Full)));
        }
        let mut c: Vec<(Instant, Due)> = Vec::new();
        for kind in [Kind::Incremental, Kind::Differential, Kind::Full] {
            if let Some((t, _, _)) = self.due_of(kind) {
                c.push((t, Due::Cadence(kind)));
            }
        }
        if let Some(p) = &self.pending {
            c.push((self.on_close_due(p), Due::OnClose));
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
        self.pending.as_ref().map(|p| label_of(&p.labels))
    }

    /// How long the files of `p` must be quiet.
    fn settle_of(&self, p: &Pending) -> Duration {
        if p.complete {
            self.policy.settle.min(SETTLE_COMPLETE)
        } else {
            self.policy.settle
        }
    }

    /// When the on-close snapshot of `p` is due: once its files were
    /// quiet for the settle time, and at the latest `settle_max` after
    /// its first event.
    fn on_close_due(&self, p: &Pending) -> Instant {
        let quiet = p.last_event + self.settle_of(p);
        match p.first_event.checked_add(self.policy.settle_max) {
            Some(max) => quiet.min(max),
            None => quiet,
        }
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
        let marker = self.markers && is_marker(path);
        if !(marker || globs.is_match(&p) || globs.is_match(&base)) {
            return;
        }
        let pending = self.pending.get_or_insert(Pending {
            labels: Vec::new(),
            keys: Vec::new(),
            first_event: now,
            last_event: now,
            complete: false,
            renamed: false,
        });
        let renamed = matches!(e, FsEvent::RenamedTo { .. });
        pending.renamed |= renamed;
        pending.complete |= marker || renamed;
        if !pending.labels.contains(&p) {
            pending.labels.push(p);
        }
        if !pending.keys.contains(key) {
            pending.keys.push(*key);
        }
        pending.last_event = now;
    }

    /// The on-close snapshot may be taken if its files were quiet for the
    /// settle time: returns its label, or postpones it. A trigger whose
    /// changes are all in a snapshot already (a framework callback or
    /// `rewindfs snapshot` took one after the close) is dropped: it would
    /// take an empty snapshot.
    pub fn take_on_close(&mut self, journal: &Journal, now: Instant) -> Option<String> {
        let p = self.pending.as_mut()?;
        let dirty = journal.dirty();
        let captured =
            dirty.is_empty() || (!p.renamed && !p.keys.iter().any(|k| dirty.contains_key(k)));
        if captured {
            self.pending = None;
            return None;
        }
        let now_ns = self.clock.now_ns();
        let settle_ns = if p.complete {
            self.policy.settle.min(SETTLE_COMPLETE)
        } else {
            self.policy.settle
        }
        .as_nanos() as i64;
        // Waited the longest: taken now, whatever is still written (a
        // checkpoint open on the fast path is held back by the cut; its
        // last closed version is what the snapshot holds).
        let overdue = p
            .first_event
            .checked_add(self.policy.settle_max)
            .is_some_and(|max| now >= max);
        let last_write = p
            .keys
            .iter()
            .filter_map(|k| dirty.get(k))
            .flat_map(|d| d.blocks.values().map(|b| b.last_ns).chain([d.file.last_ns]))
            .max()
            .unwrap_or(0);
        if !overdue && now_ns - last_write < settle_ns {
            // Still being written: wait for it to settle.
            let ago = Duration::from_nanos((now_ns - last_write).max(0) as u64);
            p.last_event = now.checked_sub(ago).unwrap_or(now);
            return None;
        }
        self.pending.take().map(|p| label_of(&p.labels))
    }

    /// An on-close snapshot failed: wait again.
    pub fn restore_on_close(&mut self, label: String, now: Instant) {
        let p = self.pending.get_or_insert(Pending {
            labels: Vec::new(),
            keys: Vec::new(),
            first_event: now,
            last_event: now,
            complete: false,
            renamed: false,
        });
        // Its changes are still in the journal (the capture failed): it
        // is not dropped as captured unless they are.
        p.renamed = true;
        p.labels.insert(0, label);
    }

    pub fn taken(&mut self, rec: &SnapshotRecord, now: Instant) {
        self.never = false;
        self.latest_kind = Some(rec.kind);
        let now_ns = self
            .clock
            .now_ns()
            .max(self.fired_ns.take().unwrap_or(i64::MIN));
        self.last_any = Some(now);
        self.last_any_ns = Some(now_ns);
        match rec.kind {
            Kind::Full => {
                self.last_full = Some(now);
                self.last_diff = Some(now);
                self.last_full_ns = Some(now_ns);
                self.last_diff_ns = Some(now_ns);
            }
            Kind::Differential => {
                self.last_diff = Some(now);
                self.last_diff_ns = Some(now_ns);
            }
            Kind::Incremental => {}
        }
    }

    /// A cadence came due with nothing changed: no snapshot, and the
    /// cadence starts over.
    pub fn skipped(&mut self, kind: Kind, now: Instant) {
        let now_ns = self
            .clock
            .now_ns()
            .max(self.fired_ns.take().unwrap_or(i64::MIN));
        self.last_any = Some(now);
        self.last_any_ns = Some(now_ns);
        match kind {
            Kind::Full => {
                self.last_full = Some(now);
                self.last_full_ns = Some(now_ns);
            }
            Kind::Differential => {
                self.last_diff = Some(now);
                self.last_diff_ns = Some(now_ns);
            }
            Kind::Incremental => {}
        }
    }
}

/// Labels longer than this many names end with "and N more".
const LABEL_NAMES: usize = 8;

/// The label of an on-close snapshot: the paths of the files closed, a
/// folder named once (`run/checkpoint-500/`) when several of its files
/// were, or when it is a completed checkpoint folder.
pub fn label_of(paths: &[String]) -> String {
    fn parent(p: &str) -> Option<&str> {
        p.rfind('/').map(|i| &p[..i])
    }
    let mut per_dir: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for p in paths {
        if let Some(d) = parent(p) {
            *per_dir.entry(d).or_insert(0) += 1;
        }
    }
    let mut names: Vec<String> = Vec::new();
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for p in paths {
        let folder = parent(p).filter(|d| is_marker(p.as_bytes()) || per_dir[d] > 1);
        let name = match folder {
            Some(d) => format!("{d}/"),
            None => p.clone(),
        };
        if seen.insert(name.clone()) {
            names.push(name);
        }
    }
    if names.len() > LABEL_NAMES {
        let more = names.len() - (LABEL_NAMES - 1);
        names.truncate(LABEL_NAMES - 1);
        names.push(format!("and {more} more"));
    }
    names.join(", ")
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
        // A file renamed into place is complete: due after
        // SETTLE_COMPLETE, not the whole settle time.
        assert_eq!(s.next(t0, None), Some((t0 + SETTLE_COMPLETE, Due::OnClose)));
        // A close alone waits the settle time.
        let mut s = Schedule::new(&p);
        s.never = false;
        s.last_any = Some(t0);
        s.last_full = Some(t0);
        s.event(
            &FsEvent::ClosedAfterWrite {
                key: k,
                path: b"ckpt/model.safetensors".to_vec(),
            },
            t0,
        );
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
        /// Each wall-clock read is off by this many ns, alternately
        /// early and late (real clocks are read apart: an instant and a
        /// wall time never match exactly).
        jitter: i64,
        reads: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl FakeClock {
        fn new() -> FakeClock {
            FakeClock {
                start: Instant::now(),
                start_ns: time::now_ns(),
                offset: Default::default(),
                jitter: 0,
                reads: Default::default(),
            }
        }

        /// A clock whose wall time starts at `ns`.
        fn at(ns: i64) -> FakeClock {
            FakeClock {
                start_ns: ns,
                ..FakeClock::new()
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
            let n = self
                .reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let j = if n.is_multiple_of(2) {
                -self.jitter
            } else {
                self.jitter
            };
            self.start_ns + self.offset.lock().as_nanos() as i64 + j
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
            synthetic: false,
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
        // Renamed into a checkpoint name (complete): one snapshot, once
        // quiet for SETTLE_COMPLETE (under the settle time), labelled
        // with the checkpoint.
        s.event(
            &FsEvent::RenamedTo {
                key,
                path: b"ckpt/model-2.safetensors".to_vec(),
            },
            clock.now(),
        );
        let got = run_for(&mut s, &clock, &j, Duration::from_secs(60), ms(100));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].0 >= ms(250) && got[0].0 <= ms(350), "{got:?}");
        assert_eq!(got[0].2.as_deref(), Some("ckpt/model-2.safetensors"));
    }

    #[test]
    fn an_on_close_trigger_whose_changes_are_in_a_snapshot_is_dropped() {
        let clock = FakeClock::new();
        let p = Policy {
            every: None,
            full_every: None,
            on_close: vec!["*.pt".into()],
            settle: Duration::from_millis(500),
            ..Policy::default()
        };
        let mut s = Schedule::with_clock(&p, Box::new(clock.clone()));
        s.load(&[record(Kind::Full, clock.now_ns())]);
        let (_db, j) = journal();
        let (a, other) = (FileKey { dev: 1, ino: 7 }, FileKey { dev: 1, ino: 8 });
        let ms = Duration::from_millis;
        let close = |s: &mut Schedule, key| {
            s.event(
                &FsEvent::ClosedAfterWrite {
                    key,
                    path: b"ckpt/step-1.pt".to_vec(),
                },
                clock.now(),
            )
        };
        // Written and closed, then captured by a snapshot the job asked
        // for (the journal's epoch taken): no on-close snapshot, even
        // while something else is still unsnapshotted.
        j.record_write(&a, 0, 4096);
        close(&mut s, a);
        j.take_epoch().unwrap();
        j.record_write(&other, 0, 10);
        assert!(run_for(&mut s, &clock, &j, Duration::from_secs(10), ms(100)).is_empty());
        // Written again: the trigger fires.
        j.record_write(&a, 0, 4096);
        close(&mut s, a);
        let got = run_for(&mut s, &clock, &j, Duration::from_secs(10), ms(100));
        assert_eq!(got.len(), 1, "{got:?}");
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
            // (The longest wait is not what this test is about.)
            settle_max: Duration::from_secs(60),
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

    #[test]
    fn a_job_saving_faster_than_the_settle_gets_a_snapshot_per_burst() {
        // The fake clock runs 100 s behind the wall clock: every journal
        // record made now is a write in its future (files always busy).
        let clock = FakeClock::new();
        let behind = Duration::from_secs(100);
        let clock = FakeClock {
            start_ns: clock.start_ns - behind.as_nanos() as i64,
            ..clock
        };
        // Default flags: the checkpoint patterns take snapshots.
        let p = Policy {
            every: None,
            full_every: None,
            ..Policy::default()
        };
        assert!(p.on_close.is_empty() && p.listens());
        let mut s = Schedule::with_clock(&p, Box::new(clock.clone()));
        s.load(&[record(Kind::Full, clock.now_ns())]);
        let (_db, j) = journal();
        let t0 = clock.now();
        let mut fired = Vec::new();
        let mut retry = None;
        for step in 0..60u64 {
            // A checkpoint every 0.5 s, well under the 2 s settle time.
            let key = FileKey {
                dev: 1,
                ino: 100 + step,
            };
            let path = format!("run/step-{step}.safetensors").into_bytes();
            s.event(&FsEvent::ClosedAfterWrite { key, path }, s.now());
            j.record_write(&key, 0, 10);
            clock.advance(Duration::from_millis(500));
            if let Some((_, l)) = s.poll(&mut retry, &j) {
                fired.push((clock.now() - t0, l));
                s.taken(&record(Kind::Incremental, clock.now_ns()), clock.now());
            }
        }
        // One snapshot per settle_max (10 s) of the 30 s burst.
        assert_eq!(fired.len(), 3, "{fired:?}");
        let mut last = Duration::ZERO;
        for (at, label) in &fired {
            assert!(*at - last <= Duration::from_millis(10_500), "{fired:?}");
            last = *at;
            // 20 files of one folder: the folder.
            assert_eq!(label.as_deref(), Some("run/"));
        }
        // Without the longest wait, none at all while the job runs.
        let p = Policy {
            settle_max: MAX_CADENCE,
            ..p
        };
        let mut s = Schedule::with_clock(&p, Box::new(clock.clone()));
        s.load(&[record(Kind::Full, clock.now_ns())]);
        for step in 0..60u64 {
            let key = FileKey {
                dev: 1,
                ino: 100 + step,
            };
            let path = format!("step-{step}.pt").into_bytes();
            s.event(&FsEvent::ClosedAfterWrite { key, path }, s.now());
            clock.advance(Duration::from_millis(500));
            assert_eq!(s.poll(&mut retry, &j), None);
        }
    }

    #[test]
    fn a_completed_checkpoint_folder_is_taken_quickly_and_named_once() {
        let clock = FakeClock::new();
        let p = Policy {
            every: None,
            full_every: None,
            ..Policy::default()
        };
        let mut s = Schedule::with_clock(&p, Box::new(clock.clone()));
        s.load(&[record(Kind::Full, clock.now_ns())]);
        let (_db, j) = journal();
        for (ino, name) in [(1, "__0_0.distcp"), (2, "__1_0.distcp"), (3, ".metadata")] {
            let key = FileKey { dev: 1, ino };
            j.record_write(&key, 0, 10);
            let path = format!("ckpt/step-3/{name}").into_bytes();
            s.event(&FsEvent::ClosedAfterWrite { key, path }, s.now());
        }
        let got = run_for(
            &mut s,
            &clock,
            &j,
            Duration::from_secs(3),
            Duration::from_millis(50),
        );
        assert_eq!(got.len(), 1, "{got:?}");
        // Due 250 ms after the marker, not the 2 s settle time.
        assert!(got[0].0 <= Duration::from_millis(400), "{got:?}");
        assert_eq!(got[0].2.as_deref(), Some("ckpt/step-3/"));
        // A marker outside a checkpoint's shape is no event, nor is any
        // checkpoint with checkpoint snapshots off.
        let off = Policy {
            checkpoint_snapshots: false,
            ..p.clone()
        };
        for (policy, path) in [
            (&p, "out/trainer_state.json"),
            (&off, "a.safetensors"),
            (&off, "ckpt/.metadata"),
        ] {
            let mut s = Schedule::with_clock(policy, Box::new(clock.clone()));
            s.load(&[record(Kind::Full, clock.now_ns())]);
            let key = FileKey { dev: 1, ino: 7 };
            s.event(
                &FsEvent::ClosedAfterWrite {
                    key,
                    path: path.into(),
                },
                s.now(),
            );
            assert_eq!(s.pending_label(), None, "{path}");
        }
    }

    #[test]
    fn labels_name_folders_once_and_stay_short() {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(label_of(&v(&["a.pt"])), "a.pt");
        assert_eq!(label_of(&v(&["r/a.pt", "r/b.pt", "c.pt"])), "r/, c.pt");
        assert_eq!(
            label_of(&v(&["out/checkpoint-5/trainer_state.json"])),
            "out/checkpoint-5/"
        );
        let many: Vec<String> = (0..20).map(|i| format!("s{i}.pt")).collect();
        assert_eq!(
            label_of(&many),
            "s0.pt, s1.pt, s2.pt, s3.pt, s4.pt, s5.pt, s6.pt, and 13 more"
        );
    }

    #[test]
    fn settle_max_is_read_and_checked() {
        let p = Policy::layered(&[&PolicyConfig {
            settle_max: Some("30s".into()),
            checkpoint_snapshots: Some(false),
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(p.settle_max, Duration::from_secs(30));
        assert!(!p.checkpoint_snapshots && !p.listens());
        assert_eq!(Policy::default().settle_max, DEFAULT_SETTLE_MAX);
        let e = Policy::layered(&[&PolicyConfig {
            settle: Some("5s".into()),
            settle_max: Some("1s".into()),
            ..Default::default()
        }])
        .unwrap_err();
        assert!(e.to_string().contains("--settle-max"), "{e}");
        // A long settle time alone raises the longest wait with it.
        let p = Policy::layered(&[&PolicyConfig {
            settle: Some("30s".into()),
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(p.settle_max, Duration::from_secs(30));
    }

    fn berlin() -> Zone {
        Zone::parse("Europe/Berlin").unwrap()
    }

    fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        crate::util::calendar::local_ns(berlin(), y, mo, d, h, mi).unwrap()
    }

    fn policy(cfg: PolicyConfig) -> Policy {
        Policy::layered(&[&PolicyConfig {
            timezone: Some("Europe/Berlin".into()),
            ..cfg
        }])
        .unwrap()
    }

    /// Run the schedule like the flusher does, stepping the fake clock
    /// by `step` up to `until` (wall ns), with changes always waiting;
    /// every snapshot taken is reported as (wall ns, kind).
    fn drive(s: &mut Schedule, clock: &FakeClock, until: i64, step: Duration) -> Vec<(i64, Kind)> {
        let (_db, j) = journal();
        j.record_write(&FileKey { dev: 1, ino: 2 }, 0, 10);
        let mut retry = None;
        let mut out = Vec::new();
        while clock.now_ns() < until {
            clock.advance(step);
            if let Some((k, _)) = s.poll(&mut retry, &j) {
                let now_ns = clock.now_ns();
                out.push((now_ns, k));
                s.taken(&record(k, now_ns), clock.now());
            }
        }
        out
    }

    /// `p` on a fake clock at `now`, the latest snapshot a full at
    /// `last_full`, driven minute by minute until `until`.
    fn run_from(p: &Policy, now: i64, last_full: i64, until: i64) -> Vec<(i64, Kind)> {
        let clock = FakeClock::at(now);
        let mut s = Schedule::with_clock(p, Box::new(clock.clone()));
        s.load(&[record(Kind::Full, last_full)]);
        drive(&mut s, &clock, until, MIN)
    }

    fn of_kind(v: &[(i64, Kind)], k: Kind) -> Vec<i64> {
        v.iter().filter(|x| x.1 == k).map(|x| x.0).collect()
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn cron_fulls_and_differentials_come_at_their_local_times() {
        // Tuesday 2026-12-01 10:00 in Berlin; the repository's full is
        // from an hour ago.
        let clock = FakeClock::at(local(2026, 12, 1, 10, 0));
        let p = policy(PolicyConfig {
            every: Some("15m".into()),
            full_at: Some("0 2 * * SUN".into()),
            differential_at: Some("0 2 * * *".into()),
            ..Default::default()
        });
        assert_eq!(p.full_every, None, "a cron rule replaces the interval");
        assert_eq!(p.rule(Kind::Full), "cron \"0 2 * * SUN\"");
        let mut s = Schedule::with_clock(&p, Box::new(clock.clone()));
        s.load(&[record(Kind::Full, local(2026, 12, 1, 9, 0))]);
        let runs = s.next_runs();
        assert_eq!(runs[0].kind, Kind::Full);
        assert_eq!(runs[0].at_ns, local(2026, 12, 6, 2, 0));
        assert_eq!(runs[1].at_ns, local(2026, 12, 2, 2, 0));
        // Overdue since 09:15 (nothing changed yet): shown as such.
        assert_eq!(runs[2].at_ns, local(2026, 12, 1, 9, 15));
        let got = drive(&mut s, &clock, local(2026, 12, 15, 0, 0), MIN);
        assert_eq!(
            of_kind(&got, Kind::Full),
            vec![local(2026, 12, 6, 2, 0), local(2026, 12, 13, 2, 0)]
        );
        // Daily at 02:00, except Sundays where the full one stands in.
        let diffs = of_kind(&got, Kind::Differential);
        assert_eq!(diffs.len(), 11, "{diffs:?}");
        assert!(diffs
            .iter()
            .all(|t| (t - local(2026, 12, 2, 2, 0)) % (24 * 3600 * 1_000_000_000) == 0));
        assert!(!diffs.contains(&local(2026, 12, 6, 2, 0)));
        // Incrementals every 15 minutes in between.
        let incr = of_kind(&got, Kind::Incremental);
        assert!(incr.len() > 13 * 24 * 4 - 20, "{}", incr.len());
    }

    #[test]
    fn a_cron_time_fires_once_when_clock_reads_disagree() {
        // Wall-clock reads 5 us early or late, alternately; polls land
        // exactly on the cron times.
        let clock = FakeClock {
            jitter: 5_000,
            ..FakeClock::at(local(2026, 12, 1, 10, 0))
        };
        let p = policy(PolicyConfig {
            every: Some("off".into()),
            differential_at: Some("0 2 * * *".into()),
            full_at: Some("0 3 * * SUN".into()),
            ..Default::default()
        });
        let mut s = Schedule::with_clock(&p, Box::new(clock.clone()));
        s.load(&[record(Kind::Full, local(2026, 12, 1, 9, 0))]);
        let got = drive(&mut s, &clock, local(2026, 12, 15, 0, 0), MIN);
        assert_eq!(of_kind(&got, Kind::Differential).len(), 13, "{got:?}");
        assert_eq!(of_kind(&got, Kind::Full).len(), 2, "{got:?}");
        assert_eq!(got.len(), 15, "{got:?}");
    }

    #[test]
    fn a_window_across_midnight_holds_fulls_and_differentials() {
        let clock = FakeClock::at(local(2026, 12, 1, 12, 0));
        let p = policy(PolicyConfig {
            every: Some("1h".into()),
            full_every: Some("24h".into()),
            window: vec!["22:00-04:00".into()],
            ..Default::default()
        });
        let mut s = Schedule::with_clock(&p, Box::new(clock.clone()));
        // The last full was 30 h ago: overdue, but it is noon.
        s.load(&[record(Kind::Full, local(2026, 11, 30, 6, 0))]);
        let runs = s.next_runs();
        assert_eq!(runs[0].at_ns, local(2026, 12, 1, 22, 0));
        assert!(runs[0].waits_for_window);
        let got = drive(&mut s, &clock, local(2026, 12, 4, 12, 0), MIN);
        let fulls = of_kind(&got, Kind::Full);
        // Held to 22:00 on the 1st; then 24 h later is 22:00 again.
        assert_eq!(
            fulls,
            vec![
                local(2026, 12, 1, 22, 0),
                local(2026, 12, 2, 22, 0),
                local(2026, 12, 3, 22, 0)
            ]
        );
        for t in &fulls {
            assert!(p.windows.open_at(*t, p.zone));
        }
        // Incrementals are not held: every hour, all day.
        assert!(of_kind(&got, Kind::Incremental).len() >= 3 * 24 - 6);

        // A full that comes due at 03:30 runs then; one due at 04:30,
        // after the window closes, runs early in it (at once, 03:01)
        // rather than waiting until 22:00.
        let got = run_from(
            &p,
            local(2026, 12, 1, 3, 0),
            local(2026, 11, 30, 3, 30),
            local(2026, 12, 1, 23, 0),
        );
        assert_eq!(of_kind(&got, Kind::Full), vec![local(2026, 12, 1, 3, 30)]);
        let got = run_from(
            &p,
            local(2026, 12, 1, 3, 0),
            local(2026, 11, 30, 4, 30),
            local(2026, 12, 1, 23, 0),
        );
        assert_eq!(of_kind(&got, Kind::Full), vec![local(2026, 12, 1, 3, 1)]);
    }

    #[test]
    fn windowed_intervals_do_not_drift_out_of_the_window() {
        // Daily fulls inside 01:00-05:00 that take 30 minutes each: re-
        // armed from their end they would move later every day until one
        // fell out of the window and a day was skipped.
        let clock = FakeClock::at(local(2026, 12, 1, 12, 0));
        let p = policy(PolicyConfig {
            every: Some("off".into()),
            full_every: Some("24h".into()),
            window: vec!["01:00-05:00".into()],
            ..Default::default()
        });
        let mut s = Schedule::with_clock(&p, Box::new(clock.clone()));
        s.load(&[record(Kind::Full, local(2026, 12, 1, 4, 0))]);
        let (_db, j) = journal();
        j.record_write(&FileKey { dev: 1, ino: 2 }, 0, 10);
        let mut retry = None;
        let mut days = Vec::new();
        while clock.now_ns() < local(2026, 12, 11, 12, 0) {
            clock.advance(MIN);
            if let Some((k, _)) = s.poll(&mut retry, &j) {
                let started = clock.now_ns();
                assert!(p.windows.open_at(started, p.zone));
                clock.advance(30 * MIN);
                s.taken(&record(k, started), clock.now());
                days.push(crate::util::calendar::Zone::UTC.rfc3339(started)[..10].to_string());
            }
        }
        let want: Vec<String> = (2..=11).map(|d| format!("2026-12-{d:02}")).collect();
        assert_eq!(days, want, "one full a day, none skipped");
    }

    #[test]
    fn cron_and_windows_across_daylight_saving_changes() {
        // A nightly full at 02:30 in Berlin: on 2026-03-29 the clocks
        // jump from 02:00 to 03:00, and it runs at 03:00 CEST.
        let p = policy(PolicyConfig {
            every: Some("off".into()),
            full_at: Some("30 2 * * *".into()),
            ..Default::default()
        });
        let got = run_from(
            &p,
            local(2026, 3, 28, 12, 0),
            local(2026, 3, 28, 2, 30),
            local(2026, 3, 31, 0, 0),
        );
        assert_eq!(
            of_kind(&got, Kind::Full),
            vec![local(2026, 3, 29, 3, 0), local(2026, 3, 30, 2, 30)]
        );
        // On 2026-10-25 02:00-03:00 happens twice: one run, not two.
        let got = run_from(
            &p,
            local(2026, 10, 24, 12, 0),
            local(2026, 10, 24, 2, 30),
            local(2026, 10, 26, 12, 0),
        );
        let fulls = of_kind(&got, Kind::Full);
        assert_eq!(
            fulls,
            vec![local(2026, 10, 25, 2, 30), local(2026, 10, 26, 2, 30)]
        );
        assert_eq!(fulls[1] - fulls[0], 25 * 3600 * 1_000_000_000);
        // A 24 h interval is 24 real hours whatever the clocks do; the
        // window 01:00-05:00 is local and still holds it.
        let p = policy(PolicyConfig {
            every: Some("off".into()),
            full_every: Some("24h".into()),
            window: vec!["01:00-05:00".into()],
            ..Default::default()
        });
        let got = run_from(
            &p,
            local(2026, 3, 28, 12, 0),
            local(2026, 3, 28, 4, 30),
            local(2026, 3, 31, 0, 0),
        );
        // 24 h after 04:30 CET is 05:30 CEST: outside, so early, when
        // that night's window opens (01:00 CET); 24 real hours later is
        // 02:00 CEST, inside.
        assert_eq!(
            of_kind(&got, Kind::Full),
            vec![local(2026, 3, 29, 1, 0), local(2026, 3, 30, 2, 0)]
        );
    }

    #[test]
    fn missed_windows_run_once_at_the_next_opportunity() {
        // A weekly full on Sunday at 02:00 inside 01:00-05:00; the host
        // was down for three weeks and comes back on Tuesday at 10:00.
        let p = policy(PolicyConfig {
            every: Some("15m".into()),
            full_at: Some("0 2 * * SUN".into()),
            window: vec!["01:00-05:00".into()],
            ..Default::default()
        });
        let clock = FakeClock::at(local(2026, 12, 1, 10, 0));
        let mut s = Schedule::with_clock(&p, Box::new(clock.clone()));
        s.load(&[record(Kind::Full, local(2026, 11, 8, 2, 0))]);
        // Due (three times over), but outside the window: Wednesday 01:00.
        let runs = s.next_runs();
        assert_eq!(runs[0].at_ns, local(2026, 12, 2, 1, 0));
        assert!(runs[0].waits_for_window);
        let got = drive(&mut s, &clock, local(2026, 12, 14, 0, 0), MIN);
        assert_eq!(
            of_kind(&got, Kind::Full),
            vec![
                local(2026, 12, 2, 1, 0),
                local(2026, 12, 6, 2, 0),
                local(2026, 12, 13, 2, 0)
            ],
            "the missed fulls run once, then the schedule resumes"
        );
        // Without a window it runs at start, once.
        let p = policy(PolicyConfig {
            every: Some("15m".into()),
            full_at: Some("0 2 * * SUN".into()),
            ..Default::default()
        });
        let got = run_from(
            &p,
            local(2026, 12, 1, 10, 0),
            local(2026, 11, 8, 2, 0),
            local(2026, 12, 5, 0, 0),
        );
        assert_eq!(of_kind(&got, Kind::Full), vec![local(2026, 12, 1, 10, 1)]);
    }

    #[test]
    fn idle_fulls_are_taken_only_when_they_shorten_the_chain() {
        let clock = FakeClock::at(local(2026, 12, 1, 10, 0));
        let p = policy(PolicyConfig {
            every: Some("off".into()),
            full_at: Some("0 2 * * *".into()),
            ..Default::default()
        });
        let (_db, j) = journal();
        let mut retry = None;
        // Latest is an incremental: nothing changed, the full is taken.
        let mut s = Schedule::with_clock(&p, Box::new(clock.clone()));
        let mut incr = record(Kind::Incremental, local(2026, 12, 1, 9, 0));
        incr.parent = Some(1);
        s.load(&[record(Kind::Full, local(2026, 11, 30, 2, 0)), incr]);
        clock.advance(Duration::from_secs(17 * 3600));
        assert_eq!(s.poll(&mut retry, &j), Some((Kind::Full, None)));
        // Latest is a full: nothing to gain, skipped (and re-armed).
        let mut s = Schedule::with_clock(&p, Box::new(clock.clone()));
        s.load(&[record(Kind::Full, local(2026, 12, 1, 9, 0))]);
        assert_eq!(s.poll(&mut retry, &j), None);
        assert_eq!(s.next_runs()[0].at_ns, local(2026, 12, 3, 2, 0));
    }

    #[test]
    fn schedule_settings_are_checked() {
        let err = |cfg: PolicyConfig| Policy::layered(&[&cfg]).unwrap_err().to_string();
        assert!(err(PolicyConfig {
            full_every: Some("7d".into()),
            full_at: Some("0 2 * * SUN".into()),
            ..Default::default()
        })
        .contains("give one of them"));
        assert!(err(PolicyConfig {
            full_at: Some("0 2 * *".into()),
            ..Default::default()
        })
        .contains("cron"));
        assert!(err(PolicyConfig {
            window: vec!["1am-5am".into()],
            ..Default::default()
        })
        .contains("window"));
        assert!(err(PolicyConfig {
            timezone: Some("Nowhere/Land".into()),
            ..Default::default()
        })
        .contains("time zone"));
        // `--full-at off` turns fulls off, default interval included.
        let p = Policy::layered(&[&PolicyConfig {
            full_at: Some("off".into()),
            ..Default::default()
        }])
        .unwrap();
        assert_eq!((p.full_every, p.full_at.is_none()), (None, true));
        // The command line's interval replaces the repository's cron.
        let repo = PolicyConfig {
            full_at: Some("0 2 * * SUN".into()),
            ..Default::default()
        };
        let flags = PolicyConfig {
            full_every: Some("12h".into()),
            ..Default::default()
        };
        let p = Policy::layered(&[&repo, &flags]).unwrap();
        assert_eq!(p.full_at, None);
        assert_eq!(p.full_every, Some(Duration::from_secs(12 * 3600)));
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
