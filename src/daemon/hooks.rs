//! Notification hooks (`--on-snapshot CMD`, `--on-error CMD`): each event
//! from the flusher (and rolling verification) runs the command with
//! `/bin/sh -c`, the event as one JSON document on stdin and its kind in
//! `REWINDFS_EVENT`; the hook's output goes to the daemon's log.
//!
//! Invariants: hooks never hold up the flusher (they run one at a time on
//! a thread of their own, fed by a bounded queue: when hooks fall behind,
//! events are dropped and logged, never queued without bound); a hook
//! running longer than the timeout is killed with its whole process
//! group; a hook's failure is logged and changes nothing else.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::error::{Error, Result};
use crate::flusher::Event;

/// The commands to run.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    pub on_snapshot: Option<String>,
    pub on_error: Option<String>,
    pub timeout: Duration,
}

/// How one hook run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signalled,
    TimedOut,
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.on_snapshot.is_none() && self.on_error.is_none()
    }

    /// Run hooks for `events` on a thread until the channel closes (see
    /// [`Broadcast::close`](crate::flusher::Broadcast::close)); join it to
    /// let the last events' hooks run.
    pub fn start(self, events: Receiver<Event>) -> Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("hooks".into())
            .spawn(move || {
                for e in events {
                    let (cmd, kind) = match &e {
                        Event::Snapshot { .. } => (&self.on_snapshot, "snapshot"),
                        Event::Error { .. } => (&self.on_error, "error"),
                    };
                    let Some(cmd) = cmd else { continue };
                    match run(cmd, kind, &e, self.timeout) {
                        Ok(Outcome::Exited(0)) => tracing::debug!("{kind} hook ran"),
                        Ok(o) => tracing::warn!("{kind} hook `{cmd}`: {o:?}"),
                        Err(err) => tracing::warn!("{kind} hook `{cmd}` could not run: {err}"),
                    }
                }
            })
            .map_err(|e| Error::io("start thread", "hooks", e))
    }
}

/// Run `cmd` for one event and wait for it (at most `timeout`).
pub fn run(cmd: &str, kind: &str, e: &Event, timeout: Duration) -> Result<Outcome> {
    let json = serde_json::to_vec(e).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("REWINDFS_EVENT", kind)
        // systemd's socket is the daemon's, not the hook's.
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        // Its own process group: a timeout kills what it started too.
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io("run hook", cmd, e))?;
    // Feed stdin beside the wait: a hook that never reads it must not
    // block us once the pipe is full.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = std::thread::Builder::new()
            .name("hook-stdin".into())
            .spawn(move || {
                let _ = stdin.write_all(&json);
                let _ = stdin.write_all(b"\n");
            });
    }
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                return Ok(match st.code() {
                    Some(c) => Outcome::Exited(c),
                    None => Outcome::Signalled,
                })
            }
            Ok(None) if t0.elapsed() >= timeout => {
                if let Ok(pid) = i32::try_from(child.id()) {
                    // SAFETY: kill(2) on the process group we created.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                let _ = child.wait();
                return Ok(Outcome::TimedOut);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Error::io("wait for hook", cmd, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Event {
        Event::Error {
            time: "2026-12-01T00:00:00Z".into(),
            during: "snapshot".into(),
            message: "disk full".into(),
        }
    }

    #[test]
    fn a_hook_reads_the_event_and_a_slow_one_is_killed() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out.json");
        let cmd = format!(
            "cat > '{}'; echo \"$REWINDFS_EVENT\" >> '{}'",
            out.display(),
            out.display()
        );
        assert_eq!(
            run(&cmd, "error", &ev(), Duration::from_secs(10)).unwrap(),
            Outcome::Exited(0)
        );
        let text = std::fs::read_to_string(&out).unwrap();
        let mut lines = text.lines();
        let v: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(v["event"], "error");
        assert_eq!(v["message"], "disk full");
        assert_eq!(lines.next(), Some("error"));

        let t0 = Instant::now();
        let o = run(
            "sleep 30 & sleep 30",
            "error",
            &ev(),
            Duration::from_millis(300),
        )
        .unwrap();
        assert_eq!(o, Outcome::TimedOut);
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert_eq!(
            run("exit 3", "error", &ev(), Duration::from_secs(10)).unwrap(),
            Outcome::Exited(3)
        );
    }
}
