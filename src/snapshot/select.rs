//! Choosing a snapshot from what a user typed: an id, a name, `latest`, or
//! `@TIME` (the newest snapshot at or before TIME; RFC 3339 or `@-2h`).

use super::model::SnapshotRecord;
use crate::error::{Error, Result};
use crate::util::time;

pub fn select<'a>(
    all: &'a [SnapshotRecord],
    spec: &str,
    now_ns: i64,
) -> Result<&'a SnapshotRecord> {
    let unknown = || Error::UnknownSnapshot(spec.to_string());
    if all.is_empty() {
        return Err(Error::UnknownSnapshot(format!(
            "{spec} (the repository has no snapshots yet)"
        )));
    }
    if spec == "latest" {
        return all.iter().max_by_key(|r| r.id).ok_or_else(unknown);
    }
    if let Some(t) = spec.strip_prefix('@') {
        let at = match time::parse_point_in_time(t, now_ns)? {
            time::PointInTime::At(at) => at,
            time::PointInTime::OutOfRange => {
                return Err(Error::UnknownSnapshot(format!(
                    "{spec} (that time is out of range: snapshots are between 1677 and 2262)"
                )))
            }
        };
        // A time given to the second means "up to the end of that second":
        // the time shown by `snapshots` selects that snapshot.
        let at = if !t.trim().starts_with('-') && !t.contains('.') {
            at.saturating_add(999_999_999)
        } else {
            at
        };
        return all
            .iter()
            .filter(|r| r.time_ns <= at)
            .max_by_key(|r| (r.time_ns, r.id))
            .ok_or_else(|| {
                Error::UnknownSnapshot(format!(
                    "{spec} (no snapshot at or before {})",
                    time::rfc3339(at)
                ))
            });
    }
    if let Ok(id) = spec.parse::<u64>() {
        return all.iter().find(|r| r.id == id).ok_or_else(unknown);
    }
    all.iter().find(|r| r.name == spec).ok_or_else(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::model::{Kind, Stats, RECORD_FORMAT};

    fn rec(id: u64, t: i64) -> SnapshotRecord {
        SnapshotRecord {
            format: RECORD_FORMAT,
            id,
            kind: Kind::Full,
            parent: None,
            full: id,
            time: time::rfc3339(t),
            time_ns: t,
            label: None,
            name: time::snapshot_name(t, id),
            source: String::new(),
            block_size: 1 << 20,
            manifest: vec![],
            manifest_len: 0,
            stats: Stats::default(),
            rewritten: None,
            synthetic: false,
        }
    }

    #[test]
    fn selects() {
        let s = 1_000_000_000i64;
        let all = vec![rec(1, 100 * s), rec(2, 200 * s), rec(3, 300 * s)];
        assert_eq!(select(&all, "latest", 0).unwrap().id, 3);
        assert_eq!(select(&all, "2", 0).unwrap().id, 2);
        assert_eq!(select(&all, &all[0].name, 0).unwrap().id, 1);
        assert_eq!(select(&all, "@1970-01-01T00:04:10Z", 0).unwrap().id, 2);
        let late = vec![rec(1, 100 * s + 500_000_000)];
        assert_eq!(
            select(&late, &format!("@{}", late[0].time), 0).unwrap().id,
            1
        );
        assert_eq!(select(&all, "@-100s", 350 * s).unwrap().id, 2);
        assert!(select(&all, "@1970-01-01T00:00:10Z", 0).is_err());
        assert!(select(&all, "9", 0).is_err());
        assert!(select(&[], "latest", 0).is_err());
        // Out of range: no snapshot, never `latest` by wrap-around.
        let now = time::now_ns();
        let recent = vec![rec(1, now - 10 * s)];
        for spec in [
            "@-60y",
            "@-57y",
            "@-292y",
            "@-584y",
            "@-999999999y",
            "@9999-12-31T23:59:59Z",
            "@0000-01-01T00:00:00Z",
        ] {
            assert!(
                matches!(select(&recent, spec, now), Err(Error::UnknownSnapshot(_))),
                "{spec}"
            );
        }
        assert_eq!(select(&recent, "@2200-01-01T00:00:00Z", now).unwrap().id, 1);
    }

    proptest::proptest! {
        #[test]
        fn any_spec_selects_or_errs(spec in "\\PC{0,30}", at in proptest::option::of("[-@0-9a-zA-Z:. TZ+]{0,30}")) {
            let s = 1_000_000_000i64;
            let all = vec![rec(1, 100 * s), rec(2, 200 * s)];
            let spec = match at { Some(a) => format!("@{a}"), None => spec };
            if let Ok(r) = select(&all, &spec, 300 * s) {
                proptest::prop_assert!(r.id == 1 || r.id == 2);
            }
        }
    }
}
