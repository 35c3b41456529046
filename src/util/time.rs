//! Time helpers: nanosecond timestamps, RFC 3339 formatting and parsing,
//! and the time-sortable snapshot names.
//!
//! Nothing here can panic or overflow on any input: the formatter covers
//! every `i64` second (years beyond 9999 are written with their sign, as
//! ISO 8601's expanded form), conversions saturate or say "out of range",
//! and parsed times that do not fit in `i64` nanoseconds (before 1677 or
//! after 2262) are reported as such, never wrapped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

const NS: i64 = 1_000_000_000;

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    system_time_to_ns(SystemTime::now())
}

/// A `SystemTime` as seconds and nanoseconds since the epoch (the whole
/// range of `SystemTime`, no saturation).
pub fn system_time_to_parts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 {
                (-secs, 0)
            } else {
                ((-secs).saturating_sub(1), 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

/// A `SystemTime` in nanoseconds since the epoch, `None` outside the
/// `i64` range (before 1677 or after 2262).
pub fn system_time_to_ns_checked(t: SystemTime) -> Option<i64> {
    let (s, n) = system_time_to_parts(t);
    s.checked_mul(NS)?.checked_add(n as i64)
}

/// A `SystemTime` in nanoseconds since the epoch, saturating at the ends
/// of the `i64` range.
pub fn system_time_to_ns(t: SystemTime) -> i64 {
    system_time_to_ns_checked(t).unwrap_or_else(
        || {
            if t >= UNIX_EPOCH {
                i64::MAX
            } else {
                i64::MIN
            }
        },
    )
}

pub fn ns_to_system_time(ns: i64) -> SystemTime {
    parts_to_system_time(ns.div_euclid(NS), ns.rem_euclid(NS) as u32)
}

/// Seconds and nanoseconds as a `SystemTime`, saturating where the
/// platform's `SystemTime` ends.
pub fn parts_to_system_time(sec: i64, nsec: u32) -> SystemTime {
    let nsec = nsec.min(999_999_999);
    if sec >= 0 {
        UNIX_EPOCH
            .checked_add(Duration::new(sec as u64, nsec))
            .unwrap_or(UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 / 2))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(sec.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::new(0, nsec)))
            .unwrap_or(UNIX_EPOCH - Duration::from_secs(i64::MAX as u64 / 2))
    }
}

/// The civil date (proleptic Gregorian, UTC) of a day count since
/// 1970-01-01 (H. Hinnant's algorithm), valid for every `i64` input that
/// comes from seconds (`days` within ±1.1e14).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The calendar buckets of an instant in some time zone: what retention
/// rules group snapshots by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    /// ISO 8601 week-numbering year and week (weeks start on Monday;
    /// week 1 holds the year's first Thursday).
    pub iso_year: i64,
    pub iso_week: u32,
}

/// The calendar buckets of `ns` at a UTC offset of `offset_sec`.
pub fn civil_at(ns: i64, offset_sec: i64) -> Civil {
    let sec = ns.div_euclid(1_000_000_000).saturating_add(offset_sec);
    let days = sec.div_euclid(86_400);
    let hour = (sec.rem_euclid(86_400) / 3600) as u32;
    let (year, month, day) = civil_from_days(days);
    // Monday = 0 (1970-01-01 was a Thursday).
    let weekday = (days + 3).rem_euclid(7);
    let thursday = days - weekday + 3;
    let (iso_year, _, _) = civil_from_days(thursday);
    let iso_week = ((thursday - days_from_civil(iso_year, 1, 1)) / 7 + 1) as u32;
    Civil {
        year,
        month,
        day,
        hour,
        iso_year,
        iso_week,
    }
}

/// The local time zone's UTC offset at `ns` (daylight saving included),
/// from the C library (`TZ`, /etc/localtime); 0 if it cannot tell.
pub fn local_offset(ns: i64) -> i64 {
    let t: libc::time_t = ns.div_euclid(1_000_000_000) as libc::time_t;
    // SAFETY: `tm` is plain data the call fills in; both pointers are
    // valid for the call, and localtime_r is the thread-safe variant.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    if r.is_null() {
        0
    } else {
        tm.tm_gmtoff
    }
}

/// The calendar buckets of `ns` in the local time zone.
pub fn civil_local(ns: i64) -> Civil {
    civil_at(ns, local_offset(ns))
}

/// `YYYY-MM-DDTHH:MM:SS` of a second count (UTC), any `i64`.
fn format_seconds(sec: i64) -> String {
    let days = sec.div_euclid(86_400);
    let rem = sec.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let year = if (0..=9999).contains(&y) {
        format!("{y:04}")
    } else {
        format!("{y:+05}")
    };
    format!(
        "{year}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// RFC 3339 UTC with second precision, e.g. `2026-11-23T10:00:00Z`.
pub fn rfc3339(ns: i64) -> String {
    format!("{}Z", format_seconds(ns.div_euclid(NS)))
}

/// RFC 3339 UTC with nanosecond precision.
pub fn rfc3339_nanos(ns: i64) -> String {
    format!(
        "{}.{:09}Z",
        format_seconds(ns.div_euclid(NS)),
        ns.rem_euclid(NS)
    )
}

/// RFC 3339 UTC of seconds and nanoseconds (any `i64` second).
pub fn rfc3339_parts(sec: i64, nsec: u32) -> String {
    if nsec == 0 {
        format!("{}Z", format_seconds(sec))
    } else {
        format!("{}.{:09}Z", format_seconds(sec), nsec.min(999_999_999))
    }
}

/// The unique, time-sortable directory name of a snapshot:
/// `2026-11-23T10.00.00Z-000042` (UTC time, then the id). No `:` so the
/// name is safe for rsync, scp and Make.
pub fn snapshot_name(time_ns: i64, id: u64) -> String {
    let t = rfc3339(time_ns).replace(':', ".");
    format!("{t}-{id:06}")
}

/// A point in time a user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointInTime {
    /// Nanoseconds since the epoch.
    At(i64),
    /// A valid time that `i64` nanoseconds cannot hold (before 1677 or
    /// after 2262): no snapshot can be at it.
    OutOfRange,
}

/// Parse a point in time given by a user: RFC 3339 (`2026-11-23T10:00:00Z`,
/// fractional seconds and a missing `Z` accepted) or a relative time in the
/// past such as `-2h`, `-30m`, `-1d 2h`. Malformed input is an error;
/// a well-formed time outside the representable range is
/// [`PointInTime::OutOfRange`].
pub fn parse_point_in_time(s: &str, now_ns: i64) -> Result<PointInTime> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('-') {
        let d = humantime::parse_duration(rel.trim())
            .map_err(|e| Error::InvalidInput(format!("bad relative time {s:?}: {e}")))?;
        let at = i64::try_from(d.as_nanos())
            .ok()
            .and_then(|d| now_ns.checked_sub(d));
        return Ok(at.map_or(PointInTime::OutOfRange, PointInTime::At));
    }
    let (sec, nsec) = parse_rfc3339(s).map_err(|why| {
        Error::InvalidInput(format!(
            "bad time {s:?} ({why}); use RFC 3339 like 2026-11-23T10:00:00Z or a relative time like -2h"
        ))
    })?;
    let at = sec.checked_mul(NS).and_then(|t| t.checked_add(nsec as i64));
    Ok(at.map_or(PointInTime::OutOfRange, PointInTime::At))
}

/// Days since 1970-01-01 of a civil date (inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Parse `YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z|+HH:MM|-HH:MM]` (no zone
/// means UTC) into seconds and nanoseconds since the epoch. Years 0000 to
/// 9999.
pub fn parse_rfc3339(s: &str) -> std::result::Result<(i64, u32), &'static str> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> std::result::Result<u32, &'static str> {
        let d = b.get(r).ok_or("too short")?;
        if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
            return Err("expected digits");
        }
        Ok(d.iter().fold(0u32, |a, c| a * 10 + (c - b'0') as u32))
    };
    let sep = |i: usize, c: &[u8]| -> std::result::Result<(), &'static str> {
        match b.get(i) {
            Some(x) if c.contains(x) => Ok(()),
            _ => Err("unexpected character"),
        }
    };
    let y = num(0..4)? as i64;
    sep(4, b"-")?;
    let mo = num(5..7)?;
    sep(7, b"-")?;
    let d = num(8..10)?;
    sep(10, b"Tt ")?;
    let h = num(11..13)?;
    sep(13, b":")?;
    let mi = num(14..16)?;
    sep(16, b":")?;
    let se = num(17..19)?;
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) {
        return Err("no such date");
    }
    if h > 23 || mi > 59 || se > 59 {
        return Err("no such time of day");
    }
    let mut i = 19;
    let mut nsec = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nsec = nsec * 10 + (b[i] - b'0') as u32;
            }
            i += 1;
        }
        if i == start {
            return Err("expected digits after '.'");
        }
        for _ in (i - start)..9 {
            nsec *= 10;
        }
    }
    let offset: i64 = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(c @ (b'+' | b'-')) if i + 6 == b.len() => {
            let oh = num(i + 1..i + 3)? as i64;
            sep(i + 3, b":")?;
            let om = num(i + 4..i + 6)? as i64;
            if oh > 23 || om > 59 {
                return Err("bad time zone offset");
            }
            let o = oh * 3600 + om * 60;
            if *c == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return Err("unexpected text after the time"),
    };
    let sec = days_from_civil(y, mo, d) * 86_400 + (h as i64) * 3600 + (mi as i64) * 60 + se as i64
        - offset;
    Ok((sec, nsec))
}

#[cfg(test)]
mod tests {

    #[test]
    fn calendar_buckets_and_iso_weeks() {
        let at = |y: i64, m: u32, d: u32, h: i64| {
            (days_from_civil(y, m, d) * 86_400 + h * 3600) * 1_000_000_000
        };
        let c = civil_at(at(2026, 11, 30, 23), 0);
        assert_eq!((c.year, c.month, c.day, c.hour), (2026, 11, 30, 23));
        assert_eq!((c.iso_year, c.iso_week), (2026, 49));
        // One hour east of UTC it is already December 1st.
        let e = civil_at(at(2026, 11, 30, 23), 3600);
        assert_eq!((e.month, e.day, e.hour), (12, 1, 0));
        // ISO weeks across year ends: 2021-01-03 is in 2020-W53,
        // 2024-12-30 in 2025-W01, 2026-01-01 (a Thursday) in 2026-W01.
        let w = |y, m, d| {
            let c = civil_at(at(y, m, d, 12), 0);
            (c.iso_year, c.iso_week)
        };
        assert_eq!(w(2021, 1, 3), (2020, 53));
        assert_eq!(w(2021, 1, 4), (2021, 1));
        assert_eq!(w(2024, 12, 30), (2025, 1));
        assert_eq!(w(2026, 1, 1), (2026, 1));
        assert_eq!(w(1970, 1, 1), (1970, 1));
        // Before 1970 too.
        assert_eq!(w(1969, 12, 28), (1969, 52));
    }

    use super::*;

    #[test]
    fn names_sort_by_time_then_id() {
        let a = snapshot_name(1_000_000_000_000_000_000, 7);
        let b = snapshot_name(1_000_000_001_000_000_000, 3);
        assert!(a < b);
        assert_eq!(a, "2001-09-09T01.46.40Z-000007");
    }

    #[test]
    fn parses_absolute_and_relative() {
        let t = parse_point_in_time("2001-09-09T01:46:40Z", 0).unwrap();
        assert_eq!(t, PointInTime::At(1_000_000_000_000_000_000));
        let t2 = parse_point_in_time("2001-09-09T01:46:40", 0).unwrap();
        assert_eq!(t2, t);
        let now = 10_000_000_000_000;
        assert_eq!(
            parse_point_in_time("-2h", now).unwrap(),
            PointInTime::At(now - 7200 * 1_000_000_000)
        );
        assert!(parse_point_in_time("yesterday", now).is_err());
        assert_eq!(
            parse_point_in_time("2001-09-09T03:46:40+02:00", 0).unwrap(),
            t
        );
        assert_eq!(
            parse_point_in_time("2001-09-09 01:46:40.5Z", 0).unwrap(),
            PointInTime::At(1_000_000_000_500_000_000)
        );
        for bad in [
            "2001-02-29T00:00:00Z",
            "2001-13-01T00:00:00Z",
            "2001-01-01T24:00:00Z",
            "2001-01-01T00:00:00Zx",
            "2001-01-01",
        ] {
            assert!(parse_point_in_time(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn out_of_range_times_are_not_wrapped() {
        let now = now_ns();
        for s in [
            "-584y",
            "-999999999y",
            "-292y 1000d",
            "9999-12-31T23:59:59Z",
        ] {
            assert_eq!(
                parse_point_in_time(s, now).unwrap(),
                PointInTime::OutOfRange,
                "{s}"
            );
        }
        // Before 1970 but representable.
        let PointInTime::At(t) = parse_point_in_time("-60y", now).unwrap() else {
            panic!("-60y is in range");
        };
        assert!(t < 0);
        assert!(rfc3339(t).starts_with("19"));
    }

    #[test]
    fn formats_every_range() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339_nanos(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(rfc3339(i64::MAX), "2262-04-11T23:47:16Z");
        assert_eq!(rfc3339(i64::MIN), "1677-09-21T00:12:43Z");
        assert_eq!(rfc3339_parts(253_402_300_799, 0), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_parts(253_402_300_800, 0), "+10000-01-01T00:00:00Z");
        // Every i64 second formats without panicking.
        for s in [i64::MIN, i64::MIN + 1, -62_135_596_801, i64::MAX] {
            let _ = rfc3339_parts(s, 999_999_999);
        }
        // Agrees with humantime where both work.
        for s in [1_234_567_890i64, 951_782_400, 4_107_542_399] {
            assert_eq!(
                rfc3339(s * NS),
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s as u64))
                    .to_string()
            );
        }
    }

    #[test]
    fn system_time_parts_roundtrip() {
        for (s, n) in [
            (0i64, 0u32),
            (-1, 500),
            (-100, 0),
            (5, 7),
            (20_000_000_000, 1),
        ] {
            let t = parts_to_system_time(s, n);
            assert_eq!(system_time_to_parts(t), (s, n));
        }
        assert_eq!(
            system_time_to_ns(parts_to_system_time(20_000_000_000, 0)),
            i64::MAX
        );
    }

    proptest::proptest! {
        #[test]
        fn formatter_never_panics(s in proptest::num::i64::ANY, n in 0u32..2_000_000_000) {
            let _ = rfc3339_parts(s, n);
            let _ = rfc3339(s);
            let _ = rfc3339_nanos(s);
            let _ = snapshot_name(s, n as u64);
        }

        #[test]
        fn parser_never_panics(s in ".{0,40}", now in proptest::num::i64::ANY) {
            let _ = parse_point_in_time(&s, now);
            let _ = parse_point_in_time(&format!("-{s}"), now);
        }

        #[test]
        fn relative_parser_never_panics(n in proptest::num::u64::ANY, unit in "(ns|us|ms|s|m|h|d|w|M|y)") {
            let _ = parse_point_in_time(&format!("-{n}{unit}"), now_ns());
        }

        #[test]
        fn days_roundtrip(days in -3_000_000i64..3_000_000) {
            let (y, m, d) = civil_from_days(days);
            proptest::prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn rfc3339_roundtrips_in_range(ns in proptest::num::i64::ANY) {
            let t = parse_point_in_time(&rfc3339_nanos(ns), 0).unwrap();
            proptest::prop_assert_eq!(t, PointInTime::At(ns));
        }
    }
}
