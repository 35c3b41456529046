//! Wall-clock schedules: a time zone, cron expressions and daily time
//! windows, all in the zone's local time (daylight-saving changes
//! included).
//!
//! Times are nanoseconds since the Unix epoch, as everywhere else in
//! rewindfs; the zone only decides what "02:00" means. Cron expressions
//! are croner's (five fields, or six with seconds first): a time in a
//! skipped hour (spring forward) comes due when the hour ends, a time in
//! a repeated hour (fall back) comes due once, at its first occurrence.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Timelike};
use chrono_tz::Tz;

use crate::error::{Error, Result};

/// A time zone from the IANA database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zone(Tz);

impl Zone {
    pub const UTC: Zone = Zone(Tz::UTC);

    /// `Europe/Berlin`, `UTC`, `America/New_York`...
    pub fn parse(name: &str) -> Result<Zone> {
        let n = name.trim().trim_start_matches(':');
        Tz::from_str(n).map(Zone).map_err(|_| {
            Error::InvalidInput(format!(
                "unknown time zone {name:?} (use an IANA name such as Europe/Berlin or UTC)"
            ))
        })
    }

    /// The system's zone: `TZ` when it names an IANA zone (a POSIX rule
    /// such as `CET-1CEST,M3.5.0,M10.5.0/3` is not read), else the zone
    /// /etc/localtime links to, else UTC.
    pub fn system() -> Zone {
        if let Ok(tz) = std::env::var("TZ") {
            if let Ok(z) = Zone::parse(&tz) {
                return z;
            }
        }
        iana_time_zone::get_timezone()
            .ok()
            .and_then(|n| Zone::parse(&n).ok())
            .unwrap_or(Zone::UTC)
    }

    /// `name` when given, else the system's zone.
    pub fn or_system(name: Option<&str>) -> Result<Zone> {
        name.map(Zone::parse)
            .transpose()
            .map(|z| z.unwrap_or_else(Zone::system))
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    fn at(&self, ns: i64) -> DateTime<Tz> {
        self.0.timestamp_nanos(ns)
    }

    /// `2026-12-06 02:00:00 CET (+01:00)`: local time for people.
    pub fn format(&self, ns: i64) -> String {
        self.at(ns).format("%Y-%m-%d %H:%M:%S %Z (%:z)").to_string()
    }

    /// RFC 3339 with the zone's offset (`2026-12-06T02:00:00+01:00`).
    pub fn rfc3339(&self, ns: i64) -> String {
        self.at(ns).format("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }

    /// Minutes since local midnight at `ns`.
    fn minute_of_day(&self, ns: i64) -> u32 {
        let t = self.at(ns);
        t.hour() * 60 + t.minute()
    }
}

fn to_ns(t: &DateTime<Tz>) -> Option<i64> {
    t.timestamp_nanos_opt()
}

/// A cron expression (`0 2 * * SUN`).
#[derive(Clone, Debug)]
pub struct CronSpec {
    text: String,
    cron: croner::Cron,
}

impl PartialEq for CronSpec {
    fn eq(&self, o: &CronSpec) -> bool {
        self.text == o.text
    }
}

impl Eq for CronSpec {}

impl CronSpec {
    pub fn parse(s: &str) -> Result<CronSpec> {
        let text = s.trim().to_string();
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(&text)
            .map_err(|e| {
                Error::InvalidInput(format!(
                    "bad cron expression {s:?}: {e} (five fields: minute hour day-of-month month day-of-week, e.g. \"0 2 * * SUN\")"
                ))
            })?;
        let spec = CronSpec { text, cron };
        // An expression that never matches (30 February) is a mistake.
        if spec
            .next_after(crate::util::time::now_ns(), Zone::UTC)
            .is_none()
        {
            return Err(Error::InvalidInput(format!(
                "cron expression {s:?} never comes due"
            )));
        }
        Ok(spec)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time after `ns` (strictly) it comes due in `zone`.
    pub fn next_after(&self, ns: i64, zone: Zone) -> Option<i64> {
        let start = zone.at(ns);
        self.cron
            .find_next_occurrence(&start, false)
            .ok()
            .and_then(|t| to_ns(&t))
    }
}

/// A daily time window, `01:00-05:00`, in local time; one that ends
/// before it starts crosses midnight (`22:00-04:00`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Minutes since midnight.
    start: u32,
    end: u32,
}

fn parse_hhmm(s: &str, whole: &str) -> Result<u32> {
    let bad = || {
        Error::InvalidInput(format!(
            "bad time window {whole:?}: use HH:MM-HH:MM in local time, e.g. 01:00-05:00 or 22:00-04:00"
        ))
    };
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    // 24:00 is accepted as an end ("until midnight").
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl Window {
    pub fn parse(s: &str) -> Result<Window> {
        let (a, b) = s.split_once('-').ok_or_else(|| {
            Error::InvalidInput(format!(
                "bad time window {s:?}: use HH:MM-HH:MM in local time, e.g. 01:00-05:00"
            ))
        })?;
        // 24:00 as a start is midnight; as an end, the end of the day.
        let start = parse_hhmm(a, s)? % (24 * 60);
        let end = parse_hhmm(b, s)?;
        if start == end {
            return Err(Error::InvalidInput(format!(
                "time window {s:?} is empty (start and end are the same)"
            )));
        }
        Ok(Window { start, end })
    }

    fn contains_minute(&self, m: u32) -> bool {
        if self.start < self.end {
            self.start <= m && m < self.end
        } else {
            m >= self.start || m < self.end
        }
    }

    /// The opening minute as a daily cron job: croner knows what a
    /// skipped or repeated local hour does to it.
    fn opening(&self) -> Option<croner::Cron> {
        croner::Cron::from_str(&format!("{} {} * * *", self.start % 60, self.start / 60)).ok()
    }

    /// The next time after `ns` (strictly) the window opens.
    fn next_open(&self, ns: i64, zone: Zone) -> Option<i64> {
        self.opening()?
            .find_next_occurrence(&zone.at(ns), false)
            .ok()
            .and_then(|t| to_ns(&t))
    }

    /// The last time at or before `ns` the window opened.
    fn prev_open(&self, ns: i64, zone: Zone) -> Option<i64> {
        self.opening()?
            .find_previous_occurrence(&zone.at(ns), true)
            .ok()
            .and_then(|t| to_ns(&t))
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// The windows heavy work keeps to (none: any time).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Windows(pub Vec<Window>);

impl Windows {
    pub fn parse(list: &[String]) -> Result<Windows> {
        let mut v = Vec::new();
        for s in list {
            for part in s.split(',').filter(|p| !p.trim().is_empty()) {
                v.push(Window::parse(part)?);
            }
        }
        Ok(Windows(v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether heavy work may run at `ns`.
    pub fn open_at(&self, ns: i64, zone: Zone) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let m = zone.minute_of_day(ns);
        self.0.iter().any(|w| w.contains_minute(m))
    }

    /// The last opening of any window at or before `ns`.
    pub fn last_open(&self, ns: i64, zone: Zone) -> Option<i64> {
        self.0.iter().filter_map(|w| w.prev_open(ns, zone)).max()
    }

    /// The first time at or after `ns` heavy work may run.
    pub fn first_open(&self, ns: i64, zone: Zone) -> i64 {
        if self.open_at(ns, zone) {
            return ns;
        }
        self.0
            .iter()
            .filter_map(|w| w.next_open(ns, zone))
            .min()
            .unwrap_or(ns)
    }
}

impl Windows {
    /// Wait until the windows are open; `pause(d)` waits up to `d` and
    /// says whether to give up (the worker is stopping). Returns whether
    /// the windows are open. The clock is re-read each minute at least,
    /// so a changed system time is noticed.
    pub fn wait_open(
        &self,
        zone: Zone,
        mut pause: impl FnMut(std::time::Duration) -> bool,
    ) -> bool {
        loop {
            let now = crate::util::time::now_ns();
            let open = self.first_open(now, zone);
            if open <= now {
                return true;
            }
            let d = std::time::Duration::from_nanos((open - now) as u64)
                .min(std::time::Duration::from_secs(60));
            if pause(d) {
                return false;
            }
        }
    }
}

impl std::fmt::Display for Windows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v: Vec<String> = self.0.iter().map(|w| w.to_string()).collect();
        f.write_str(&v.join(","))
    }
}

/// Nanoseconds of a local date and time in `zone` (tests and docs; the
/// earlier one when the time is repeated, `None` when it is skipped).
pub fn local_ns(zone: Zone, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Option<i64> {
    zone.0
        .with_ymd_and_hms(y, mo, d, h, mi, 0)
        .earliest()
        .and_then(|t| to_ns(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600 * 1_000_000_000;

    fn berlin() -> Zone {
        Zone::parse("Europe/Berlin").unwrap()
    }

    #[test]
    fn cron_next_in_local_time() {
        let z = berlin();
        // Tuesday 2026-12-01 15:00 local: the next Sunday 02:00 is 12-06.
        let now = local_ns(z, 2026, 12, 1, 15, 0).unwrap();
        let c = CronSpec::parse("0 2 * * SUN").unwrap();
        let next = c.next_after(now, z).unwrap();
        assert_eq!(next, local_ns(z, 2026, 12, 6, 2, 0).unwrap());
        assert_eq!(z.format(next), "2026-12-06 02:00:00 CET (+01:00)");
        // Strictly after: at the occurrence itself, the following one.
        assert_eq!(
            c.next_after(next, z).unwrap(),
            local_ns(z, 2026, 12, 13, 2, 0).unwrap()
        );
        // The same expression in UTC is an hour later in absolute time.
        let u = c.next_after(now, Zone::UTC).unwrap();
        assert_eq!(u - next, H);
    }

    #[test]
    fn cron_across_daylight_saving_changes() {
        let z = berlin();
        let daily = CronSpec::parse("30 2 * * *").unwrap();
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not
        // exist and comes due when the gap ends.
        let before = local_ns(z, 2026, 3, 29, 1, 0).unwrap();
        let due = daily.next_after(before, z).unwrap();
        assert_eq!(due, local_ns(z, 2026, 3, 29, 3, 0).unwrap());
        assert_eq!(due - before, H, "one real hour after 01:00 CET");
        // The next day it is 02:30 CEST again.
        assert_eq!(
            daily.next_after(due, z).unwrap(),
            local_ns(z, 2026, 3, 30, 2, 30).unwrap()
        );
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens
        // twice and the job runs once.
        let before = local_ns(z, 2026, 10, 25, 1, 0).unwrap();
        let first = daily.next_after(before, z).unwrap();
        assert_eq!(first - before, 90 * 60 * 1_000_000_000);
        let second = daily.next_after(first, z).unwrap();
        assert_eq!(second, local_ns(z, 2026, 10, 26, 2, 30).unwrap());
        // 25 real hours between 02:30 on 10-25 and 02:30 on 10-26.
        assert_eq!(second - first, 25 * H);
    }

    #[test]
    fn bad_expressions_are_clear_errors() {
        for bad in [
            "",
            "0 2 * *",
            "61 2 * * *",
            "0 2 31 2 *",
            "every day",
            // A year field (croner's seventh) could name a past year.
            "0 0 0 29 2 * 2024",
        ] {
            let e = CronSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("cron expression"), "{bad:?}: {e}");
        }
        for bad in [
            "1-5",
            "01:00",
            "25:00-01:00",
            "01:00-01:00",
            "1:60-2:00",
            "a:b-c:d",
        ] {
            let e = Window::parse(bad).unwrap_err().to_string();
            assert!(e.contains("window"), "{bad:?}: {e}");
        }
        assert!(Zone::parse("Mars/Olympus").is_err());
        assert_eq!(Zone::parse(":UTC").unwrap(), Zone::UTC);
    }

    #[test]
    fn windows_within_a_day_and_across_midnight() {
        let z = berlin();
        let w = Windows::parse(&["01:00-05:00".into()]).unwrap();
        let at = |d, h, m| local_ns(z, 2026, 12, d, h, m).unwrap();
        assert!(w.open_at(at(2, 1, 0), z));
        assert!(w.open_at(at(2, 4, 59), z));
        assert!(!w.open_at(at(2, 5, 0), z));
        assert!(!w.open_at(at(2, 0, 59), z));
        assert_eq!(w.first_open(at(2, 3, 0), z), at(2, 3, 0));
        assert_eq!(w.first_open(at(2, 5, 0), z), at(3, 1, 0));
        assert_eq!(w.first_open(at(2, 0, 30), z), at(2, 1, 0));

        let all_day = Windows::parse(&["00:00-24:00".into()]).unwrap();
        assert!(all_day.open_at(at(3, 23, 59), z) && all_day.open_at(at(3, 0, 0), z));
        let night = Windows::parse(&["22:00-04:00".into()]).unwrap();
        assert_eq!(night.to_string(), "22:00-04:00");
        assert!(night.open_at(at(2, 23, 30), z));
        assert!(night.open_at(at(3, 0, 0), z));
        assert!(night.open_at(at(3, 3, 59), z));
        assert!(!night.open_at(at(3, 4, 0), z));
        assert!(!night.open_at(at(3, 21, 59), z));
        assert_eq!(night.first_open(at(3, 12, 0), z), at(3, 22, 0));
        // Two windows: the nearer opening wins.
        let two = Windows::parse(&["01:00-02:00,13:00-14:00".into()]).unwrap();
        assert_eq!(two.first_open(at(3, 3, 0), z), at(3, 13, 0));
        assert_eq!(two.first_open(at(3, 15, 0), z), at(4, 1, 0));
        assert!(Windows::default().open_at(at(3, 15, 0), z));
    }

    #[test]
    fn waiting_for_a_window() {
        let now = crate::util::time::now_ns();
        let z = Zone::UTC;
        // Open now: no wait at all.
        assert!(Windows::default().wait_open(z, |_| panic!("waited")));
        // A window that opens in a few hours: waits in pauses of at
        // most a minute, and gives up when asked.
        let in_3h = (now / 60_000_000_000 / 60 + 3) % 24;
        let w = Windows::parse(&[format!("{in_3h:02}:00-{:02}:00", (in_3h + 1) % 24)]).unwrap();
        assert!(!w.open_at(now, z));
        let mut pauses = Vec::new();
        let open = w.wait_open(z, |d| {
            pauses.push(d);
            pauses.len() == 3
        });
        assert!(!open);
        assert_eq!(pauses.len(), 3);
        assert!(pauses
            .iter()
            .all(|d| *d <= std::time::Duration::from_secs(60)));
    }

    #[test]
    fn a_window_on_the_day_clocks_spring_forward() {
        let z = berlin();
        // 02:00-03:00 local does not exist on 2026-03-29: the window
        // opens when the gap ends, at 03:00 CEST, 90 real minutes after
        // 00:30 CET.
        let w = Windows::parse(&["02:00-04:00".into()]).unwrap();
        let before = local_ns(z, 2026, 3, 29, 0, 30).unwrap();
        let open = w.first_open(before, z);
        assert_eq!(open, local_ns(z, 2026, 3, 29, 3, 0).unwrap());
        assert!(w.open_at(open, z), "03:00 CEST is inside 02:00-04:00");
        assert_eq!(open - before, (90 * 60) * 1_000_000_000);
    }
}
