//! The control socket: how the CLI talks to the daemon that holds a
//! repository (sled allows one process per database).
//!
//! `REPO/control.sock`, mode 0600. One JSON request per line, one JSON
//! response per line:
//!
//! ```text
//! {"cmd":"status"}   -> {"ok":true,"status":{...}}
//! {"cmd":"unmount"}  -> {"ok":true}            (then the daemon unmounts and exits)
//! {"cmd":"unmount","mountpoint":"/mnt/s"}  -> {"ok":true}  (one snapshot mount)
//! {"cmd":"mount-snapshot","snap":"latest","mountpoint":"/mnt/s","all":false}
//!                    -> {"ok":true}            (once the read-only mount is live)
//! {"cmd":"snapshot","kind":"incremental","label":null}
//!                    -> {"ok":true,"snapshot":{...record...}}   (once committed)
//! {"cmd":"cli","args":["ls","latest"],"cwd":"/home/x"}
//!                    -> frames until the exit frame (see below)
//! ```
//! Errors: `{"ok":false,"error":"..."}`.
//!
//! A `cli` request runs a repository command (snapshots, ls, cat, restore,
//! verify, scan snapshot) inside the daemon, which holds the repository.
//! Its output comes back as frames: one tag byte (`o` stdout, `e` stderr,
//! `x` exit), a u32 BE length, the payload (for `x`: the exit code, i32 BE).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// Unmount `mountpoint` (a snapshot mount), or everything the daemon
    /// serves (and stop).
    Unmount {
        #[serde(default)]
        mountpoint: Option<String>,
    },
    /// Serve a read-only snapshot mount.
    MountSnapshot {
        snap: String,
        mountpoint: String,
        all: bool,
        #[serde(default)]
        allow_other: bool,
    },
    Snapshot {
        kind: Option<String>,
        label: Option<String>,
    },
    Cli {
        args: Vec<String>,
        cwd: String,
    },
    /// Configure a fault injection point (test builds with `failpoints`).
    Failpoint {
        name: String,
        actions: String,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<serde_json::Value>,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            ok: true,
            ..Default::default()
        }
    }

    pub fn error(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }
}

pub fn socket_path(repo: &Path) -> PathBuf {
    repo.join("control.sock")
}

/// Answers a request. It may stream its answer itself (for `cli`) and
/// return `None`.
pub type Handler = Arc<dyn Fn(Request, &mut dyn Write) -> Option<Response> + Send + Sync>;

/// Write one output frame.
pub fn write_frame(w: &mut dyn Write, tag: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut h = [0u8; 5];
    h[0] = tag;
    h[1..5].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    w.write_all(&h)?;
    w.write_all(payload)
}

/// A writer that sends everything written as frames with one tag.
pub struct FrameWriter<'a> {
    pub inner: &'a mut dyn Write,
    pub tag: u8,
}

impl Write for FrameWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write_frame(self.inner, self.tag, buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Listen on the repository's socket and answer requests on a thread.
/// A leftover socket file is replaced (the caller holds the repository
/// lock, so no other daemon uses it).
pub fn serve(repo: &Path, handler: Handler) -> Result<std::thread::JoinHandle<()>> {
    let path = socket_path(repo);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).ctx("listen on", &path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).ctx("chmod", &path)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let h = handler.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || answer(conn, h));
            }
        })
        .map_err(|e| Error::io("start control thread", &path, e))
}

fn answer(conn: UnixStream, handler: Handler) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut w = &conn;
    let resp = match serde_json::from_str::<Request>(line.trim()) {
        Ok(req) => handler(req, &mut w),
        Err(e) => Some(Response::error(format!("bad request: {e}"))),
    };
    if let Some(resp) = resp {
        if let Ok(mut s) = serde_json::to_string(&resp) {
            s.push('\n');
            let _ = (&conn).write_all(s.as_bytes());
        }
    }
}

/// Why a request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no rewindfs mount is running for this repository")]
    NotRunning,
    #[error(
        "the control socket {0} is stale (the daemon is gone); `rewindfs umount` the mountpoint"
    )]
    Stale(PathBuf),
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon answered: {0}")]
    Failed(String),
}

fn connect(repo: &Path, timeout: Option<Duration>) -> std::result::Result<UnixStream, CallError> {
    let path = socket_path(repo);
    let conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CallError::NotRunning),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(CallError::Stale(path))
        }
        Err(e) => return Err(e.into()),
    };
    conn.set_read_timeout(timeout)?;
    Ok(conn)
}

/// Is a daemon answering on the repository's socket?
pub fn daemon_running(repo: &Path) -> bool {
    connect(repo, Some(Duration::from_secs(1))).is_ok()
}

/// Run a repository command in the daemon, copying its output to `out`
/// and `err`. Returns its exit code.
pub fn call_cli(
    repo: &Path,
    args: Vec<String>,
    cwd: String,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::result::Result<i32, CallError> {
    let conn = connect(repo, None)?;
    let mut s =
        serde_json::to_string(&Request::Cli { args, cwd }).map_err(std::io::Error::other)?;
    s.push('\n');
    (&conn).write_all(s.as_bytes())?;
    let mut r = BufReader::new(&conn);
    loop {
        let mut h = [0u8; 5];
        if let Err(e) = std::io::Read::read_exact(&mut r, &mut h) {
            return Err(CallError::Failed(format!(
                "the daemon closed the connection ({e})"
            )));
        }
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        let mut payload = vec![0u8; len];
        std::io::Read::read_exact(&mut r, &mut payload)?;
        match h[0] {
            b'o' => out.write_all(&payload)?,
            b'e' => err.write_all(&payload)?,
            b'x' if len == 4 => {
                return Ok(i32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]))
            }
            _ => return Err(CallError::Failed("bad frame from the daemon".into())),
        }
    }
}

/// Send one request to the daemon of `repo`.
pub fn call(
    repo: &Path,
    req: &Request,
    timeout: Duration,
) -> std::result::Result<Response, CallError> {
    let conn = connect(repo, Some(timeout))?;
    let mut s = serde_json::to_string(req).map_err(std::io::Error::other)?;
    s.push('\n');
    (&conn).write_all(s.as_bytes())?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let resp: Response = serde_json::from_str(line.trim()).map_err(std::io::Error::other)?;
    if !resp.ok {
        return Err(CallError::Failed(resp.error.unwrap_or_default()));
    }
    Ok(resp)
}
