//! Repeated log messages are rate-limited: a place in the code (a
//! callsite) that logs at INFO, WARN or ERROR writes at most
//! [`BURST`] messages per [`WINDOW`]; later ones in the window are counted
//! and one line says how many were left out. A client that triggers the
//! same warning for every request (a Python `open()` per file, once) can
//! then never fill the disk with the log. DEBUG and TRACE, asked for with
//! `RUST_LOG`, are never limited.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Messages per callsite per window.
pub const BURST: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);

struct Slot {
    start: Instant,
    shown: u32,
    dropped: u64,
    /// Where the messages come from (for the summary line).
    target: &'static str,
    level: Level,
}

/// The rate-limiting layer (put it before the formatting layer).
#[derive(Default)]
pub struct RateLimit {
    slots: Mutex<HashMap<Identifier, Slot>>,
}

/// What [`RateLimit::admit`] decided.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Write it; `dropped` messages of the previous window were left out.
    Show {
        dropped: u64,
    },
    Drop,
}

impl RateLimit {
    fn admit(&self, id: Identifier, target: &'static str, level: Level, now: Instant) -> Verdict {
        let mut slots = self.slots.lock();
        let slot = slots.entry(id).or_insert(Slot {
            start: now,
            shown: 0,
            dropped: 0,
            target,
            level,
        });
        let mut dropped = 0;
        if now.duration_since(slot.start) >= WINDOW {
            dropped = std::mem::take(&mut slot.dropped);
            slot.start = now;
            slot.shown = 0;
        }
        if slot.shown < BURST {
            slot.shown += 1;
            Verdict::Show { dropped }
        } else {
            slot.dropped += 1;
            Verdict::Drop
        }
    }
}

impl<S: Subscriber> Layer<S> for RateLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::INFO {
            return true;
        }
        match self.admit(
            meta.callsite(),
            meta.target(),
            *meta.level(),
            Instant::now(),
        ) {
            Verdict::Show { dropped: 0 } => true,
            Verdict::Show { dropped } => {
                // Written straight to stderr (the log): emitting an event
                // from inside the subscriber would re-enter it.
                let _ = writeln!(
                    std::io::stderr(),
                    "{} {:>5} {}: {dropped} more messages like the next one were left out in the last {} s",
                    super::time::rfc3339(super::time::now_ns()),
                    meta.level(),
                    meta.target(),
                    WINDOW.as_secs()
                );
                true
            }
            Verdict::Drop => false,
        }
    }
}

impl Drop for RateLimit {
    fn drop(&mut self) {
        for slot in self.slots.lock().values().filter(|s| s.dropped > 0) {
            let _ = writeln!(
                std::io::stderr(),
                "{} {:>5} {}: {} more messages were left out at the end",
                super::time::rfc3339(super::time::now_ns()),
                slot.level,
                slot.target,
                slot.dropped
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Site;
    impl tracing::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unreachable!()
        }
    }
    static SITE: Site = Site;

    #[test]
    fn a_burst_per_window_then_a_count_of_what_was_left_out() {
        let r = RateLimit::default();
        let t0 = Instant::now();
        let id = || Identifier(&SITE);
        for _ in 0..BURST {
            assert_eq!(
                r.admit(id(), "t", Level::WARN, t0),
                Verdict::Show { dropped: 0 }
            );
        }
        for _ in 0..25 {
            assert_eq!(
                r.admit(id(), "t", Level::WARN, t0 + Duration::from_secs(1)),
                Verdict::Drop
            );
        }
        assert_eq!(
            r.admit(id(), "t", Level::WARN, t0 + WINDOW),
            Verdict::Show { dropped: 25 }
        );
        assert_eq!(
            r.admit(id(), "t", Level::WARN, t0 + WINDOW),
            Verdict::Show { dropped: 0 }
        );
    }
}
