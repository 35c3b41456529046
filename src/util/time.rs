//! Time helpers: nanosecond timestamps, RFC 3339 formatting and parsing,
//! and the time-sortable snapshot names.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    system_time_to_ns(SystemTime::now())
}

pub fn system_time_to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

pub fn ns_to_system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// RFC 3339 UTC with second precision, e.g. `2026-11-23T10:00:00Z`.
pub fn rfc3339(ns: i64) -> String {
    humantime::format_rfc3339_seconds(ns_to_system_time(ns)).to_string()
}

/// RFC 3339 UTC with nanosecond precision.
pub fn rfc3339_nanos(ns: i64) -> String {
    humantime::format_rfc3339_nanos(ns_to_system_time(ns)).to_string()
}

/// The unique, time-sortable directory name of a snapshot:
/// `2026-11-23T10.00.00Z-000042` (UTC time, then the id). No `:` so the
/// name is safe for rsync, scp and Make.
pub fn snapshot_name(time_ns: i64, id: u64) -> String {
    let t = rfc3339(time_ns).replace(':', ".");
    format!("{t}-{id:06}")
}

/// Parse a point in time given by a user: RFC 3339 (`2026-11-23T10:00:00Z`,
/// fractional seconds and a missing `Z` accepted) or a relative time in the
/// past such as `-2h`, `-30m`, `-1d 2h`.
pub fn parse_point_in_time(s: &str, now_ns: i64) -> Result<i64> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('-') {
        let d = humantime::parse_duration(rel.trim())
            .map_err(|e| Error::InvalidInput(format!("bad relative time {s:?}: {e}")))?;
        return Ok(now_ns - d.as_nanos() as i64);
    }
    let t = humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(s))
        .map_err(|e| {
            Error::InvalidInput(format!(
                "bad time {s:?} ({e}); use RFC 3339 like 2026-11-23T10:00:00Z or a relative time like -2h"
            ))
        })?;
    Ok(system_time_to_ns(t))
}

#[cfg(test)]
mod tests {
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
        assert_eq!(t, 1_000_000_000_000_000_000);
        let t2 = parse_point_in_time("2001-09-09T01:46:40", 0).unwrap();
        assert_eq!(t2, t);
        let now = 10_000_000_000_000;
        assert_eq!(
            parse_point_in_time("-2h", now).unwrap(),
            now - 7200 * 1_000_000_000
        );
        assert!(parse_point_in_time("yesterday", now).is_err());
    }
}
