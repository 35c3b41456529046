//! What every command shares: where output goes (`Out`), the repository
//! argument, and size parsing and printing.

use std::io::Write;
use std::path::PathBuf;

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
    /// Repository directory.
    #[arg(long, env = "REWINDFS_REPO", value_name = "DIR")]
    pub repo: PathBuf,
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
