//! The control socket: how the CLI talks to the daemon that holds a
//! repository (sled allows one process per database).
//!
//! `REPO/control.sock`, mode 0600 from the moment it exists (the socket's
//! mode is set before `bind`, and it is bound through the repository's
//! directory descriptor, so a repository path of any length works). The
//! daemon answers only peers whose uid (`SO_PEERCRED`) is its own euid or
//! root; the CLI talks only to a daemon running as root or as itself.
//! Commands run for a client act with the client's identity (fsuid,
//! fsgid, groups) and umask. One JSON request per line (at most 1 MiB),
//! one JSON response per line:
//!
//! ```text
//! {"cmd":"status"}   -> {"reply":"status","status":{...}}
//! {"cmd":"unmount"}  -> {"reply":"ok"}         (then the daemon unmounts and exits)
//! {"cmd":"unmount","mountpoint":"/mnt/s"}  -> {"reply":"ok"}  (one snapshot mount)
//! {"cmd":"mount-snapshot","snap":"latest","mountpoint":"/mnt/s","all":false}
//!                    -> {"reply":"ok"}         (once the read-only mount is live)
//! {"cmd":"snapshot","kind":"incremental","label":null}
//!                    -> {"reply":"snapshot","record":{...}}   (once committed)
//! {"cmd":"cli","args":[[108,115],[108,97,116,101,115,116]],"cwd":[47],"umask":18}
//!                    (arguments and cwd as bytes: any file name passes)
//!                    -> frames until the exit frame (see below)
//! ```
//! Errors: `{"reply":"error","message":"..."}`. Both sides use the types
//! below ([`Request`], [`Response`], [`DaemonStatus`]), never loose JSON.
//!
//! A `cli` request runs a repository command (snapshots, ls, cat, restore,
//! verify, scan snapshot) inside the daemon, which holds the repository.
//! Its output comes back as frames: one tag byte (`o` stdout, `e` stderr,
//! `x` exit), a u32 BE length, the payload (for `x`: the exit code, i32 BE).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::flusher::FlusherStatus;
use crate::snapshot::SnapshotRecord;
use crate::util::dirfd::Dir;

pub use crate::repo::layout::SOCKET;
/// The longest request line read.
pub const MAX_REQUEST: u64 = 1 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// Unmount `mountpoint` (a snapshot mount), or everything the daemon
    /// serves (and stop).
    Unmount {
        #[serde(default)]
        mountpoint: Option<String>,
        /// Detach a busy mount instead of refusing (umount -l).
        #[serde(default)]
        lazy: bool,
    },
    /// Serve a read-only snapshot mount.
    MountSnapshot {
        snap: String,
        mountpoint: String,
        all: bool,
        #[serde(default)]
        allow_other: bool,
        #[serde(default)]
        nonempty: bool,
    },
    Snapshot {
        kind: Option<String>,
        label: Option<String>,
    },
    Cli {
        args: Vec<Vec<u8>>,
        cwd: Vec<u8>,
        /// The client's umask (what directories a restore creates honour).
        #[serde(default)]
        umask: Option<u32>,
    },
    /// Configure a fault injection point (test builds with `failpoints`).
    Failpoint {
        name: String,
        actions: String,
    },
}

/// A daemon's answer (for `cli` requests: the frames described above).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Response {
    Ok,
    Error { message: String },
    Status { status: Box<DaemonStatus> },
    Snapshot { record: Box<SnapshotRecord> },
}

impl Response {
    pub fn error(msg: impl Into<String>) -> Response {
        Response::Error {
            message: msg.into(),
        }
    }
}

/// What `rewindfs status` shows for a daemon (a snapshot-mount daemon
/// fills `pid`, `repo`, `mounts` and `chunk_cache_bytes`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub mountpoint: String,
    pub backing: String,
    pub repo: String,
    pub started: String,
    /// The previous mount did not stop cleanly.
    pub unclean_start: bool,
    /// The mount-time comparison with the latest snapshot.
    pub startup_check: String,
    pub dirty_files: u64,
    pub dirty_blocks: u64,
    /// Dirty blocks times the block size (an upper bound).
    pub dirty_bytes: u64,
    pub oldest_change: Option<String>,
    pub journal_records: u64,
    pub block_size: u32,
    pub passthrough_reads: bool,
    pub writeback_cache: bool,
    pub snapshots: u64,
    pub flusher: Option<FlusherStatus>,
    /// Read-only snapshot mounts served by the daemon.
    #[serde(default)]
    pub mounts: Vec<String>,
    /// The live mount was detached (a lazy unmount): it is gone from the
    /// mount table and the daemon finishes once its last open file of it
    /// is closed.
    #[serde(default)]
    pub detached: bool,
    /// Files (and directories) of the live mount open now.
    #[serde(default)]
    pub open_files: u64,
    /// Snapshot manifests the daemon read since it started.
    #[serde(default)]
    pub manifests_read: u64,
    /// Directory objects (of format 3 trees) the daemon read since it
    /// started: what a capture, a lookup or a listing reads must follow
    /// the directories it touches, not the tree.
    #[serde(default)]
    pub dir_objects_read: u64,
    /// This daemon serves the live mount (not only snapshot mounts).
    #[serde(default)]
    pub live: bool,
    /// Bytes of verified chunks cached for snapshot reads.
    #[serde(default)]
    pub chunk_cache_bytes: u64,
    /// The views' materialization cache, when there is one.
    #[serde(default)]
    pub materialized: Option<crate::views::materialize::MaterializeStatus>,
    /// How reads of live files are served (kernel passthrough, or through
    /// the daemon and why).
    #[serde(default)]
    pub reads: String,
    /// The checkpoint fast path's patterns (empty: off).
    #[serde(default)]
    pub checkpoint_patterns: Vec<String>,
    /// Files open for writing on the checkpoint fast path now.
    #[serde(default)]
    pub fast_path_open: u64,
    /// Change recording is off (a benchmark run): nothing is protected.
    #[serde(default)]
    pub untracked: bool,
    /// The newest snapshot in the repository.
    #[serde(default)]
    pub newest: Option<NewestSnapshot>,
    /// Nanoseconds since the epoch of the oldest change not in a snapshot.
    #[serde(default)]
    pub oldest_change_ns: Option<i64>,
    /// Rolling verification, when it is on.
    #[serde(default)]
    pub verify: Option<VerifyStatus>,
    /// Where metrics and the status page are served.
    #[serde(default)]
    pub metrics_url: Option<String>,
    /// The status page's address with its access token.
    #[serde(default)]
    pub status_page: Option<String>,
    /// The file holding the listener's access token (for Prometheus'
    /// `credentials_file`).
    #[serde(default)]
    pub metrics_token_file: Option<String>,
    /// The remotes it replicates to, and how far behind each is.
    #[serde(default)]
    pub remotes: Vec<super::replicator::RemoteStatus>,
    /// Where the daemon's memory goes.
    #[serde(default)]
    pub memory: Option<MemoryStatus>,
}

/// The daemon's memory by component (`status --json`). Bytes of trees
/// are estimates from what they hold (keys, entries, block lists);
/// the heap figures are the allocator's own.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MemoryStatus {
    /// Resident now and at its peak (VmRSS, VmHWM).
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Heap in use, and free but still held by the allocator (read at
    /// most every 10 s).
    pub heap_in_use_bytes: u64,
    pub heap_free_bytes: u64,
    /// The flusher's snapshot trees (bases of the next captures): the
    /// entries held in memory (a large latest tree is dropped after each
    /// snapshot and its directories read again as captures need them).
    pub flusher_tree_entries: u64,
    pub flusher_tree_bytes: u64,
    /// The inode index of the latest tree (over the whole tree): its
    /// paths, the heap bytes it takes (past 65,536 paths only the changes
    /// since it was last rebuilt: the array is in a file), and the bytes
    /// of that file (disk, read through the page cache; not resident).
    #[serde(default)]
    pub flusher_index_entries: u64,
    #[serde(default)]
    pub flusher_index_bytes: u64,
    #[serde(default)]
    pub flusher_index_file_bytes: u64,
    /// Snapshots open for `.snapshots` and snapshot mounts (at most 8),
    /// the entries of their directories read and kept (at most
    /// --view-entries per snapshot), and about the bytes they take.
    pub view_trees: u64,
    pub view_nodes: u64,
    pub view_bytes: u64,
    /// Verified chunks cached for snapshot reads.
    pub chunk_cache_bytes: u64,
    /// The index's page cache limit (sled).
    pub index_cache_limit_bytes: u64,
}

impl MemoryStatus {
    /// [`Self::process`] with what `views` hold (loaded trees, chunk
    /// cache) and the index's cache limit.
    pub fn with_views(views: &crate::views::Views) -> MemoryStatus {
        let mut m = MemoryStatus::process();
        let (t, n, b) = views.trees_memory();
        m.view_trees = t;
        m.view_nodes = n;
        m.view_bytes = b;
        m.chunk_cache_bytes = views.chunks.bytes();
        m.index_cache_limit_bytes = crate::repo::index_cache_bytes();
        m
    }

    /// VmRSS, VmHWM and the allocator's figures of this process.
    pub fn process() -> MemoryStatus {
        let mut m = MemoryStatus::default();
        if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
            for line in s.lines() {
                let kib = |l: &str| -> u64 {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                        * 1024
                };
                if line.starts_with("VmRSS:") {
                    m.rss_bytes = kib(line);
                } else if line.starts_with("VmHWM:") {
                    m.peak_rss_bytes = kib(line);
                }
            }
        }
        // mallinfo2 walks the allocator's free lists: at most every 10 s.
        static HEAP: parking_lot::Mutex<Option<(std::time::Instant, (u64, u64))>> =
            parking_lot::Mutex::new(None);
        let (used, free) = {
            let mut h = HEAP.lock();
            match *h {
                Some((at, v)) if at.elapsed() < std::time::Duration::from_secs(10) => v,
                _ => {
                    let v = crate::util::sys::heap_usage();
                    *h = Some((std::time::Instant::now(), v));
                    v
                }
            }
        };
        m.heap_in_use_bytes = used;
        m.heap_free_bytes = free;
        m
    }
}

/// Rolling verification in `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct VerifyStatus {
    pub every_seconds: u64,
    pub sample_percent: f64,
    /// Every blob is checked within this many seconds.
    pub bound_seconds: u64,
    /// Share of blobs checked within the bound (0..=1).
    pub coverage: f64,
    pub checked_total: u64,
    pub damaged_total: u64,
    pub last_rotation: Option<String>,
}

/// The newest snapshot of a repository, as status shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NewestSnapshot {
    pub id: u64,
    pub name: String,
    pub kind: String,
    /// RFC 3339 UTC.
    pub time: String,
    pub time_ns: i64,
    pub label: Option<String>,
}

impl NewestSnapshot {
    /// The newest of `list` (by cut time).
    pub fn of(list: &[SnapshotRecord]) -> Option<NewestSnapshot> {
        list.iter()
            .max_by_key(|r| (r.time_ns, r.id))
            .map(|r| NewestSnapshot {
                id: r.id,
                name: r.name.clone(),
                kind: r.kind.as_str().to_string(),
                time: r.time.clone(),
                time_ns: r.time_ns,
                label: r.label.clone(),
            })
    }
}

/// Who is on the other end of a connection (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

fn peer_of(fd: impl AsFd) -> std::io::Result<Peer> {
    let c = rustix::net::sockopt::socket_peercred(fd)?;
    Ok(Peer {
        uid: c.uid.as_raw(),
        gid: c.gid.as_raw(),
        pid: c.pid.as_raw_nonzero().get() as u32,
    })
}

/// Whether `uid` may talk to (or be trusted as) the other side: root, or
/// the same user as this process.
pub fn peer_allowed(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// Answers a request from a peer (already checked). It may stream its
/// answer itself (for `cli`) and return `None`.
pub type Handler = Arc<dyn Fn(Request, Peer, &mut dyn Write) -> Option<Response> + Send + Sync>;

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

/// A unix socket named `name` in `dir`, bound through the directory's
/// descriptor, mode 0600 from its creation.
fn bind_in(dir: &Dir, name: &str) -> Result<UnixListener> {
    let path = dir.join(name);
    let fd: OwnedFd = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::io("create socket", &path, e.into()))?;
    // The inode bind creates takes the socket's mode: no moment at 0777.
    rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o600))
        .map_err(|e| Error::io("chmod socket", &path, e.into()))?;
    let at = dir.proc_path().join(name);
    let addr = rustix::net::SocketAddrUnix::new(&at)
        .map_err(|e| Error::io("socket address", &path, e.into()))?;
    rustix::net::bind(&fd, &addr).map_err(|e| Error::io("bind", &path, e.into()))?;
    rustix::net::listen(&fd, 64).map_err(|e| Error::io("listen on", &path, e.into()))?;
    Ok(UnixListener::from(fd))
}

/// Listen on the repository's socket and answer requests on a thread.
/// A leftover socket file is replaced (the caller holds the repository
/// lock, so no other daemon uses it). Connections from a uid other than
/// ours or root are refused before a byte is read.
pub fn serve(repo: &Dir, handler: Handler) -> Result<std::thread::JoinHandle<()>> {
    repo.remove_file(SOCKET)?;
    let listener = bind_in(repo, SOCKET)?;
    let path = repo.join(SOCKET);
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let peer = match peer_of(&conn) {
                    Ok(p) if peer_allowed(p.uid) => p,
                    Ok(p) => {
                        tracing::warn!(
                            uid = p.uid,
                            pid = p.pid,
                            "refused a control connection from another user"
                        );
                        let _ = (&conn).write_all(
                            b"{\"reply\":\"error\",\"message\":\"permission denied: only root and the user running the daemon may use it\"}\n",
                        );
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("control connection without peer credentials: {e}");
                        continue;
                    }
                };
                let h = handler.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || answer(conn, peer, h));
            }
        })
        .map_err(|e| Error::io("start control thread", &path, e))
}

/// Parse one request line (bounded by the reader).
pub fn parse_request(line: &str) -> std::result::Result<Request, String> {
    serde_json::from_str::<Request>(line.trim()).map_err(|e| format!("bad request: {e}"))
}

fn answer(conn: UnixStream, peer: Peer, handler: Handler) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new((&conn).take(MAX_REQUEST));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut w = &conn;
    let resp = match parse_request(&line) {
        Ok(req) => handler(req, peer, &mut w),
        Err(e) => Some(Response::error(e)),
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
    #[error("{path} (or the process answering on it) belongs to uid {uid}, neither root nor you: not talking to it")]
    Untrusted { path: PathBuf, uid: u32 },
    #[error("the daemon answered: {0}")]
    Failed(String),
}

fn connect(repo: &Path, timeout: Option<Duration>) -> std::result::Result<UnixStream, CallError> {
    use rustix::fs::{Mode, OFlags};
    let path = repo.join(SOCKET);
    // The directory and the socket must be root's or ours (another user
    // could point a symlink, or a socket of their own, at a daemon), and
    // the socket is reached through descriptors: any path length works.
    let owned = |fd: &OwnedFd, kind: u32| -> std::result::Result<(), CallError> {
        let st = rustix::fs::fstat(fd).map_err(std::io::Error::from)?;
        if st.st_mode & libc::S_IFMT != kind || !peer_allowed(st.st_uid) {
            return Err(CallError::Untrusted {
                path: path.clone(),
                uid: st.st_uid,
            });
        }
        Ok(())
    };
    let dir = match rustix::fs::openat(
        rustix::fs::CWD,
        repo,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(rustix::io::Errno::NOENT) => return Err(CallError::NotRunning),
        Err(e) => return Err(std::io::Error::from(e).into()),
    };
    owned(&dir, libc::S_IFDIR)?;
    let sock = match rustix::fs::openat(
        &dir,
        SOCKET,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(s) => s,
        Err(rustix::io::Errno::NOENT) => return Err(CallError::NotRunning),
        Err(e) => return Err(std::io::Error::from(e).into()),
    };
    owned(&sock, libc::S_IFSOCK)?;
    let at = format!("/proc/self/fd/{}", sock.as_raw_fd());
    let conn = match UnixStream::connect(&at) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CallError::NotRunning),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(CallError::Stale(path))
        }
        Err(e) => return Err(e.into()),
    };
    let server = peer_of(&conn)?;
    if !peer_allowed(server.uid) {
        return Err(CallError::Untrusted {
            path,
            uid: server.uid,
        });
    }
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
    args: Vec<Vec<u8>>,
    cwd: Vec<u8>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::result::Result<i32, CallError> {
    let conn = connect(repo, None)?;
    // Read the umask without changing it for long (single-threaded CLI).
    let umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    rustix::process::umask(umask);
    let mut s = serde_json::to_string(&Request::Cli {
        args,
        cwd,
        umask: Some(umask.as_raw_mode()),
    })
    .map_err(std::io::Error::other)?;
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
        if len > 64 << 20 {
            return Err(CallError::Failed("bad frame from the daemon".into()));
        }
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
    BufReader::new((&conn).take(64 << 20)).read_line(&mut line)?;
    let resp: Response = serde_json::from_str(line.trim()).map_err(std::io::Error::other)?;
    match resp {
        Response::Error { message } => Err(CallError::Failed(message)),
        r => Ok(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_roundtrip() {
        let r = Request::Cli {
            args: vec![b"ls".to_vec(), b"\xff".to_vec()],
            cwd: b"/".to_vec(),
            umask: Some(0o022),
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(parse_request(&line).unwrap(), r);
        // Old clients without a umask still parse.
        assert_eq!(
            parse_request(r#"{"cmd":"cli","args":[],"cwd":[47]}"#).unwrap(),
            Request::Cli {
                args: vec![],
                cwd: b"/".to_vec(),
                umask: None
            }
        );
        assert!(parse_request("{\"cmd\":\"rm -rf\"}").is_err());
    }

    #[test]
    fn a_long_repository_path_still_serves() {
        let t = tempfile::tempdir().unwrap();
        let mut p = t.path().to_path_buf();
        while p.as_os_str().len() < 200 {
            p.push("a-rather-long-directory-name");
        }
        std::fs::create_dir_all(&p).unwrap();
        let dir = Dir::open_path(&p).unwrap();
        let h: Handler = Arc::new(|_req, peer, _w| {
            Some(Response::Status {
                status: Box::new(DaemonStatus {
                    pid: peer.uid,
                    ..Default::default()
                }),
            })
        });
        serve(&dir, h).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::symlink_metadata(p.join(SOCKET))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let r = call(&p, &Request::Status, Duration::from_secs(5)).unwrap();
        let me = rustix::process::geteuid().as_raw();
        assert!(matches!(r, Response::Status { status } if status.pid == me));
    }

    proptest::proptest! {
        #[test]
        fn any_line_parses_or_errs(line in "\\PC{0,200}") {
            let _ = parse_request(&line);
        }

        #[test]
        fn json_shaped_lines_parse_or_err(cmd in "(status|unmount|mount-snapshot|snapshot|cli|failpoint|x)", body in "[a-z\":,\\[\\]{} 0-9]{0,60}") {
            let _ = parse_request(&format!("{{\"cmd\":\"{cmd}\",{body}}}"));
        }
    }
}
