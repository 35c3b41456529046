//! What every command shares: where output goes (`Out`), the repository
//! argument, and size parsing and printing.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

/// Where a command writes: the terminal, or frames back to a client of
/// the daemon.
pub struct Out<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    /// Output goes to a terminal (progress bars allowed).
    pub terminal: bool,
    /// Who the command runs for: root may restore owners, setuid bits
    /// and device files (from a trusted repository).
    pub caller_is_root: bool,
}

#[derive(Args, Clone)]
pub struct RepoArg {
    /// Repository directory. Default: the repository of the mount given
    /// with -C, or of the mount the current directory is in.
    #[arg(long, env = "REWINDFS_REPO", value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Use the repository of the rewindfs mount at (or holding) MNT, a
    /// live or a snapshot mount. --repo and REWINDFS_REPO win over it.
    #[arg(short = 'C', long = "mount", value_name = "MNT")]
    pub mount: Option<PathBuf>,
}

impl RepoArg {
    /// The repository: --repo (or REWINDFS_REPO), else the one of the
    /// mount named by -C or holding the current directory, confirmed by
    /// its daemon.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        find_repo(self.repo.as_deref(), self.mount.as_deref())
    }
}

/// See [`RepoArg::resolve`].
pub fn find_repo(repo: Option<&Path>, mount: Option<&Path>) -> anyhow::Result<PathBuf> {
    use rewindfs::daemon::discover::{self, FindError};
    if let Some(r) = repo {
        return Ok(r.to_path_buf());
    }
    let (from, hint) = match mount {
        Some(m) => (m.to_path_buf(), false),
        None => (
            std::env::current_dir()
                .map_err(|e| anyhow::anyhow!("cannot read the current directory: {e}"))?,
            true,
        ),
    };
    match discover::find(&from) {
        Ok((_, repo, _)) => Ok(repo),
        Err(FindError::NotInMount(p)) if hint => anyhow::bail!(
            "no repository given: use --repo DIR (or REWINDFS_REPO), -C MOUNTPOINT, or run inside a rewindfs mount ({} is not in one)",
            p.display()
        ),
        Err(e) => Err(e.into()),
    }
}

/// Parse sizes like `256M`, `4G` (up to u64).
pub fn parse_size_u64(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(format!("bad size unit {u:?} in {s:?} (use K, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Parse sizes like `1M`, `64KiB`, `1048576`.
pub fn parse_size(s: &str) -> std::result::Result<u32, String> {
    let v = parse_size_u64(s)?;
    u32::try_from(v).map_err(|_| format!("size {s:?} is too large"))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parse a percentage in (0, 100], like `5`, `12.5` or `5%`.
pub fn parse_percent(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("bad percentage {s:?} (use e.g. 5 or 12.5)"))?;
    if !(v > 0.0 && v <= 100.0) {
        return Err(format!("percentage {s:?} must be above 0 and at most 100"));
    }
    Ok(v)
}

/// The next run of each scheduled kind (`status`, `snapshots`).
pub fn write_planned(out: &mut dyn Write, p: &rewindfs::repo::Planned) -> std::io::Result<()> {
    let hours = if p.windows.is_empty() {
        String::new()
    } else {
        format!(
            "; fulls and differentials, gc and verification within {}",
            p.windows
        )
    };
    writeln!(out, "schedule:       times in {}{hours}", p.timezone)?;
    for r in &p.runs {
        let when = if r.overdue {
            format!("due since {} (when something changes)", r.local)
        } else if r.waits_for_window {
            format!("{} (the window's next opening)", r.local)
        } else {
            r.local.clone()
        };
        writeln!(out, "  next {:<13} {when}   [{}]", r.kind, r.rule)?;
    }
    Ok(())
}
