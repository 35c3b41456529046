//! Progress of long operations (restore, verify --read-data, gc's repack,
//! scan snapshots) on a terminal: a bar with rate and ETA when the total
//! is known, a counter with rate otherwise. Hidden when stderr is not a
//! terminal (scripts, the daemon's log, forwarded commands) or when the
//! caller turned it off, so nothing but results reaches pipes and logs.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` bytes (None: unknown), labelled `what`.
pub fn bytes(what: &str, total: Option<u64>, enabled: bool) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (pb, template) = match total {
        Some(t) => (
            ProgressBar::new(t),
            "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{msg} {spinner} {bytes} {bytes_per_sec} {elapsed}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    if total.is_none() {
        pb.enable_steady_tick(std::time::Duration::from_millis(200));
    }
    pb
}
