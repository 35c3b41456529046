//! `mount.fuse.rewindfs`: the helper mount(8) runs for `-t fuse.rewindfs`
//! (an fstab line, or test suites such as xfstests). It is the rewindfs
//! binary itself under that name (a symlink in /sbin), turning mount(8)'s
//! calling convention into a `rewindfs mount` command line:
//!
//! ```text
//! mount.fuse.rewindfs SPEC MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]
//! ```
//!
//! - SPEC is the data directory (`/data/x /mnt/x fuse.rewindfs defaults 0 0`);
//!   with `-o source=DIR`, DIR is the data directory and SPEC the
//!   repository, written as the mount shows its source in /proc/mounts
//!   (`rewindfs:/path/of/repo`, or the bare path): suites that unmount by
//!   source (xfstests) find the mount by SPEC.
//! - Mount options: `allow_other`, `allow_suid` and `allow_dev` (the
//!   mount is `nosuid,nodev` unless asked; mount(8) does not pass `suid`
//!   and `dev` on, they are its defaults), `nonempty`, `repo=DIR`; the
//!   generic ones mount(8) passes along
//!   (`rw`, `defaults`, `auto`, `noauto`, `user`, `nofail`, `_netdev`,
//!   `exec`, `async`, `atime`, `relatime`, `x-*`, `comment=*`,
//!   `default_permissions`, always on) are accepted and change nothing;
//!   `ro` and `noexec` are refused (not supported: a silent read-write or
//!   exec mount would surprise). Any other `NAME[=VALUE]` is the mount
//!   command's `--NAME [VALUE]` (`every=15m`, `checkpoint=*.pt`,
//!   `passthrough-reads=false`, `snapshot-on-unmount=false`), validated
//!   like the command line.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Whether the program was started as the mount helper.
pub fn invoked_as_helper(argv0: &OsStr) -> bool {
    let name = std::path::Path::new(argv0)
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default();
    name == b"mount.fuse.rewindfs" || name == b"mount.rewindfs"
}

/// The `rewindfs mount ...` arguments (argv[0] included) for a helper
/// command line, or `Ok(None)` for a fake mount (`-f`).
pub fn translate(argv: &[OsString]) -> Result<Option<Vec<OsString>>, String> {
    let mut positional: Vec<OsString> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let mut fake = false;
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        if b == b"-o" {
            let o = it.next().ok_or("-o needs a value")?;
            options.push(utf8(o)?);
        } else if let Some(o) = b.strip_prefix(b"-o") {
            options.push(utf8(OsStr::from_bytes(o))?);
        } else if b == b"-t" {
            it.next();
        } else if b == b"-N" {
            return Err("mount namespaces (-N) are not supported".into());
        } else if b.len() > 1 && b[0] == b'-' && b[1..].iter().all(|c| b"sfnvi".contains(c)) {
            // sloppy, fake, no mtab, verbose, no helper: only fake matters.
            fake |= b.contains(&b'f');
        } else {
            positional.push(a.clone());
        }
    }
    let [spec, mountpoint] = <[OsString; 2]>::try_from(positional)
        .map_err(|_| "usage: mount.fuse.rewindfs DATA_DIR MOUNTPOINT [-o OPTIONS]")?;
    let mut flags: Vec<OsString> = Vec::new();
    let mut source: Option<OsString> = None;
    for opt in options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        match (name, value) {
            ("source", Some(v)) => source = Some(v.into()),
            ("repo", Some(v)) => flags.extend(["--repo".into(), v.into()]),
            ("allow_other", None) => flags.push("--allow-other".into()),
            ("suid" | "allow_suid", None) => flags.push("--suid".into()),
            ("dev" | "allow_dev", None) => flags.push("--dev".into()),
            ("nonempty", None) => flags.push("--nonempty".into()),
            ("ro", None) => {
                return Err("a live rewindfs mount is read-write; `rewindfs mount-snapshot` mounts snapshots read-only".into())
            }
            ("noexec", None) => return Err("noexec is not supported by rewindfs mounts".into()),
            (
                "rw" | "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "owner"
                | "group" | "nofail" | "_netdev" | "exec" | "async" | "atime" | "noatime"
                | "relatime" | "strictatime" | "nosuid" | "nodev" | "default_permissions",
                None,
            ) => {}
            (n, _) if n.starts_with("x-") || n == "comment" => {}
            (n, _) if n.is_empty() || n.starts_with('-') => {
                return Err(format!("bad mount option {opt:?}"))
            }
            (n, None) => flags.push(format!("--{n}").into()),
            (n, Some(v)) => flags.extend([format!("--{n}").into(), v.into()]),
        }
    }
    if fake {
        return Ok(None);
    }
    let mut out: Vec<OsString> = vec!["rewindfs".into(), "mount".into(), "--quiet".into()];
    match source {
        // SPEC names the repository (and is the mount's source).
        Some(data) => {
            if flags.iter().any(|f| f == "--repo") {
                return Err("give the repository either as the device (with source=DATA) or as repo=, not both".into());
            }
            let repo = match spec.as_bytes().strip_prefix(b"rewindfs:") {
                Some(p) => OsStr::from_bytes(p).to_os_string(),
                None => spec,
            };
            out.extend([data, mountpoint, "--repo".into(), repo]);
        }
        None => out.extend([spec, mountpoint]),
    }
    out.extend(flags);
    Ok(Some(out))
}

fn utf8(s: &OsStr) -> Result<String, String> {
    String::from_utf8(s.as_bytes().to_vec()).map_err(|_| {
        format!(
            "mount options must be UTF-8: {:?}",
            OsString::from_vec(s.as_bytes().to_vec())
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(args: &[&str]) -> Result<Option<Vec<String>>, String> {
        let argv: Vec<OsString> = std::iter::once("mount.fuse.rewindfs")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        translate(&argv)
            .map(|o| o.map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect()))
    }

    #[test]
    fn an_fstab_line_mounts_its_data_directory() {
        assert_eq!(
            t(&[
                "/data/x",
                "/mnt/x",
                "-o",
                "rw,defaults,nofail,x-systemd.after=a"
            ])
            .unwrap(),
            Some(vec![
                "rewindfs".into(),
                "mount".into(),
                "--quiet".into(),
                "/data/x".into(),
                "/mnt/x".into()
            ])
        );
        assert_eq!(
            t(&[
                "/d",
                "/m",
                "-oallow_other,suid,every=15m,checkpoint=*.pt,writeback-cache,repo=/r"
            ])
            .unwrap()
            .unwrap()[5..],
            [
                "--allow-other",
                "--suid",
                "--every",
                "15m",
                "--checkpoint",
                "*.pt",
                "--writeback-cache",
                "--repo",
                "/r"
            ]
        );
    }

    #[test]
    fn source_makes_the_device_the_repository() {
        assert_eq!(
            t(&[
                "/repo",
                "/mnt",
                "-n",
                "-o",
                "source=/data,allow_other,default_permissions"
            ])
            .unwrap()
            .unwrap(),
            [
                "rewindfs",
                "mount",
                "--quiet",
                "/data",
                "/mnt",
                "--repo",
                "/repo",
                "--allow-other"
            ]
        );
        assert_eq!(
            t(&["rewindfs:/repo", "/mnt", "-o", "source=/data"])
                .unwrap()
                .unwrap()[5..],
            ["--repo", "/repo"]
        );
        assert!(t(&["/repo", "/mnt", "-o", "source=/data,repo=/r"]).is_err());
    }

    #[test]
    fn unsupported_or_malformed_lines_are_refused() {
        assert!(t(&["/d", "/m", "-o", "ro"])
            .unwrap_err()
            .contains("mount-snapshot"));
        assert!(t(&["/d", "/m", "-o", "noexec"]).is_err());
        assert!(t(&["/d"]).is_err());
        assert!(t(&["/d", "/m", "/x"]).is_err());
        assert!(t(&["/d", "/m", "-o"]).is_err());
        assert!(t(&["/d", "/m", "-o", "--foreground"]).is_err());
        assert_eq!(t(&["/d", "/m", "-f"]).unwrap(), None);
        assert!(invoked_as_helper(OsStr::new("/sbin/mount.fuse.rewindfs")));
        assert!(!invoked_as_helper(OsStr::new("/usr/bin/rewindfs")));
    }
}
