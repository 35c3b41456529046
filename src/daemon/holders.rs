//! Who keeps a mount busy: the processes with a file of it open or
//! mapped, or a working or root directory in it (what `fuser -m` and
//! `lsof` tell), found in /proc without walking into the mount (a stat
//! of an open file would be answered by the daemon being unmounted).
//! Processes this user may not inspect are not listed (root sees all).

use std::path::{Path, PathBuf};

/// One process that keeps the mount busy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`).
    pub command: String,
    /// What it holds: "open file PATH", "mapped PATH", "working directory".
    pub holds: Vec<String>,
}

/// The mount at `mountpoint` as mountinfo names it.
struct Target {
    id: u64,
    /// `MAJ:MIN` as in /proc/PID/maps (hexadecimal, two digits at least).
    maps_dev: String,
    mountpoint: PathBuf,
}

fn target(mountpoint: &Path) -> Option<Target> {
    let m = crate::util::mountinfo::mounts()
        .into_iter()
        .rfind(|m| m.mountpoint == mountpoint)?;
    let (maj, min) = m.dev.split_once(':')?;
    let (maj, min): (u32, u32) = (maj.parse().ok()?, min.parse().ok()?);
    Some(Target {
        id: m.id,
        maps_dev: format!("{maj:02x}:{min:02x}"),
        mountpoint: m.mountpoint,
    })
}

/// The processes keeping the mount at `mountpoint` busy (this process
/// excluded), by pid.
pub fn holders(mountpoint: &Path) -> Vec<Holder> {
    let Some(t) = target(mountpoint) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<Holder> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| holder(pid, &t))
        .collect();
    out.sort_by_key(|h| h.pid);
    out
}

fn holder(pid: u32, t: &Target) -> Option<Holder> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let mut holds = Vec::new();
    let inside = |p: &Path| p.starts_with(&t.mountpoint);
    for (link, what) in [("cwd", "working directory"), ("root", "root directory")] {
        if std::fs::read_link(dir.join(link)).is_ok_and(|p| inside(&p)) {
            holds.push(what.to_string());
        }
    }
    // Open files: fdinfo names the mount of each descriptor.
    if let Ok(fds) = std::fs::read_dir(dir.join("fdinfo")) {
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            let on_mount = info
                .lines()
                .find_map(|l| l.strip_prefix("mnt_id:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                == Some(t.id);
            if on_mount {
                let path = std::fs::read_link(dir.join("fd").join(fd.file_name()))
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                let h = format!("open file {path}");
                if !holds.contains(&h) {
                    holds.push(h);
                }
            }
        }
    }
    // Mappings: the device of each mapped file.
    if let Ok(maps) = std::fs::read_to_string(dir.join("maps")) {
        let mut seen = std::collections::BTreeSet::new();
        for l in maps.lines() {
            let f: Vec<&str> = l.splitn(6, ' ').collect();
            if f.len() == 6 && f[3] == t.maps_dev {
                let path = f[5].trim_start().to_string();
                if seen.insert(path.clone()) {
                    holds.push(format!("mapped {path}"));
                }
            }
        }
    }
    if holds.is_empty() {
        return None;
    }
    let command = std::fs::read_to_string(dir.join("comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default();
    Some(Holder {
        pid,
        command,
        holds,
    })
}

/// The holders in a few lines (at most `max` processes, the rest counted).
pub fn describe(holders: &[Holder], max: usize) -> String {
    let mut s = String::new();
    for h in holders.iter().take(max) {
        let shown: Vec<&str> = h.holds.iter().take(3).map(String::as_str).collect();
        let more = h.holds.len().saturating_sub(3);
        s.push_str(&format!(
            "\n  pid {} ({}): {}",
            h.pid,
            h.command,
            shown.join(", ")
        ));
        if more > 0 {
            s.push_str(&format!(" and {more} more"));
        }
    }
    if holders.len() > max {
        s.push_str(&format!("\n  and {} more processes", holders.len() - max));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_finds_another_one_holding_a_directory() {
        // A child whose working directory is a tmpfs-free plain directory
        // is not a mount: nothing is found for a path that is no mount.
        assert!(holders(Path::new("/nonexistent/mount")).is_empty());
        let h = vec![Holder {
            pid: 7,
            command: "python3".into(),
            holds: vec![
                "open file /m/a".into(),
                "mapped /m/b".into(),
                "working directory".into(),
                "open file /m/c".into(),
            ],
        }];
        assert_eq!(
            describe(&h, 5),
            "\n  pid 7 (python3): open file /m/a, mapped /m/b, working directory and 1 more"
        );
    }
}
