//! The control socket: how the CLI talks to the daemon that holds a
//! repository (sled allows one process per database).
//!
//! `REPO/control.sock`, mode 0600. One JSON request per line, one JSON
//! response per line:
//!
//! ```text
//! {"cmd":"status"}   -> {"ok":true,"status":{...}}
//! {"cmd":"unmount"}  -> {"ok":true}            (then the daemon unmounts and exits)
//! ```
//! Errors: `{"ok":false,"error":"..."}`.

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
    Unmount,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
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
            status: None,
        }
    }
}

pub fn socket_path(repo: &Path) -> PathBuf {
    repo.join("control.sock")
}

pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

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
    let resp = match serde_json::from_str::<Request>(line.trim()) {
        Ok(req) => handler(req),
        Err(e) => Response::error(format!("bad request: {e}")),
    };
    if let Ok(mut s) = serde_json::to_string(&resp) {
        s.push('\n');
        let _ = (&conn).write_all(s.as_bytes());
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

/// Send one request to the daemon of `repo`.
pub fn call(
    repo: &Path,
    req: &Request,
    timeout: Duration,
) -> std::result::Result<Response, CallError> {
    let path = socket_path(repo);
    let conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CallError::NotRunning),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(CallError::Stale(path))
        }
        Err(e) => return Err(e.into()),
    };
    conn.set_read_timeout(Some(timeout))?;
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
