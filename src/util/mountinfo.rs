//! `/proc/self/mountinfo`: the mounts this process sees, read without
//! walking a path into any of them.

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The prefix of a rewindfs mount's source (see `daemon::discover`).
pub const SOURCE_PREFIX: &str = "rewindfs:";

/// The source a rewindfs mount of `repo` shows in the mount table.
pub fn mount_source(repo: &Path) -> String {
    let s = repo.display().to_string();
    if s.contains(|c: char| c == ',' || c.is_whitespace()) {
        "rewindfs".to_string()
    } else {
        format!("{SOURCE_PREFIX}{s}")
    }
}

/// The repository a mount-table source names, if it names one.
pub fn repo_of_source(source: &str) -> Option<PathBuf> {
    let p = PathBuf::from(source.strip_prefix(SOURCE_PREFIX).unwrap_or(source));
    p.is_absolute().then_some(p)
}

/// Whether some mount in this namespace names `repo` (absolute) as its
/// source: a daemon of that repository is serving a mount.
pub fn serves_a_mount(repo: &Path) -> bool {
    mounts()
        .iter()
        .any(|m| repo_of_source(&m.source).as_deref() == Some(repo))
}

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount's id (as `mnt_id` in /proc/PID/fdinfo).
    pub id: u64,
    /// `MAJ:MIN` of the mounted filesystem.
    pub dev: String,
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    /// The superblock's options (e.g. `user_id=0` of a FUSE mount).
    pub super_options: String,
}

/// The mounts this process sees, in mount order (empty if unreadable).
pub fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| parse(&s))
        .unwrap_or_default()
}

/// Parse a mountinfo text.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountEntry {
                id: f.first()?.parse().ok()?,
                dev: f.get(2)?.to_string(),
                mountpoint: PathBuf::from(std::ffi::OsString::from_vec(unescape(f.get(4)?))),
                fstype: f.get(sep + 1)?.to_string(),
                source: String::from_utf8_lossy(&unescape(f.get(sep + 2)?)).into_owned(),
                super_options: f.get(sep + 3).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escaped_mountpoints_and_fuse_options() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
40 22 0:50 / /tmp/a\\040b rw,nosuid shared:1 - fuse.rewindfs /r\\040s rw,user_id=0,group_id=0
";
        let m = parse(info);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].id, 40);
        assert_eq!(m[1].dev, "0:50");
        assert_eq!(m[1].mountpoint, PathBuf::from("/tmp/a b"));
        assert_eq!(m[1].fstype, "fuse.rewindfs");
        assert_eq!(m[1].source, "/r s");
        assert_eq!(m[1].super_options, "rw,user_id=0,group_id=0");
        assert_eq!(m[0].mountpoint, PathBuf::from("/"));
    }
}
