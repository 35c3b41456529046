//! The metrics listener (`--metrics-listen ADDR:PORT`): Prometheus text at
//! `/metrics`, a small self-contained status page at `/` and the JSON it
//! reads (`/api/status`, `/api/snapshots`). Read-only: every other method
//! is refused, nothing reachable here changes the mount or the
//! repository.
//!
//! A deliberately small HTTP/1.0 server rather than a general one: the
//! daemon runs as root and any local user can reach loopback, so the
//! listener must cost a bounded amount whatever clients do. One thread
//! accepts and answers connections one at a time; each connection gets
//! 5 s to send its request head (at most 8 KiB) and 5 s per write, then
//! it is closed. No request body is read, no connection is kept alive.
//! A `Host` header that names neither a loopback name nor the bound
//! address is refused (a web page elsewhere cannot use DNS rebinding to
//! read the daemon's answers through a local browser).
//!
//! Every request needs the repository's access token (`REPO/web-token`,
//! 0600, made at the first start with a listener): as
//! `Authorization: Bearer TOKEN` (Prometheus: `credentials_file`), as
//! `?token=TOKEN` (the status page's address `status` shows; the page
//! then keeps it in a cookie for its own requests), or that cookie. The
//! figures here (bytes added by each snapshot, the size of the packs over
//! time) are a deduplication oracle: a local user who can trigger
//! snapshots and write guesses of another user's small file learns which
//! guess was stored already. Only who can read the repository's files may
//! read them.
//!
//! Invariants: off unless asked for; the page loads nothing from
//! elsewhere (no CDN, works offline). Keep it on loopback
//! (docs/security.md).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::control::DaemonStatus;
use super::metrics::Metrics;
use crate::error::{Error, Result};
use crate::repo::Repository;

const PAGE: &str = include_str!("status_page.html");
/// How long a client may take to send its request, and per write.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head read.
const MAX_HEAD: usize = 8 << 10;
/// The whole request head must arrive within this.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Connections answered at once.
const MAX_CONNECTIONS: usize = 8;

/// One snapshot as the page shows it.
#[derive(Serialize)]
struct SnapRow {
    id: u64,
    name: String,
    kind: &'static str,
    /// Synthetic full (rewritten from manifests by retention).
    synthetic: bool,
    time: String,
    time_ns: i64,
    label: Option<String>,
    files: u64,
    logical_bytes: u64,
    added_bytes: u64,
}

/// Bind `addr` (before the mount starts, so a taken port fails the start
/// at once).
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let l = TcpListener::bind(addr).map_err(|e| {
        Error::InvalidInput(format!("--metrics-listen {addr}: cannot listen there: {e}"))
    })?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "metrics and the status page listen on {addr}: their token travels unencrypted over HTTP; keep the listener on loopback or a network you trust"
        );
    }
    Ok(l)
}

/// The listener's access token: `REPO/web-token`, made (32 random bytes,
/// hex, 0600) when missing.
pub fn token(repo: &crate::util::dirfd::Dir) -> Result<String> {
    use crate::repo::layout::WEB_TOKEN;
    if let Some(b) = repo.read(WEB_TOKEN, 256)? {
        let t = String::from_utf8_lossy(&b).trim().to_string();
        if t.len() >= 32 && t.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Ok(t);
        }
    }
    let mut raw = [0u8; 32];
    crate::store::crypto::random(&mut raw)?;
    let t = crate::util::bytes::to_hex(&raw);
    repo.write_atomic(WEB_TOKEN, format!("{t}\n").as_bytes())?;
    Ok(t)
}

/// Answer on `listener` from a thread; returns the bound address.
pub fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    repo: Arc<Repository>,
    status: Arc<dyn Fn() -> DaemonStatus + Send + Sync>,
    token: String,
) -> Result<SocketAddr> {
    let token: Arc<str> = token.into();
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("metrics listener address", "", e))?;
    // Each connection is answered on a thread of its own, at most
    // MAX_CONNECTIONS at once: a slow client holds one slot for at most
    // HEAD_DEADLINE (plus the writes' timeout), never the listener.
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if busy.fetch_add(1, std::sync::atomic::Ordering::AcqRel) >= MAX_CONNECTIONS {
                    busy.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    // Full: closed at once (a scraper retries).
                    drop(conn);
                    continue;
                }
                let (metrics, repo, status, busy, token) = (
                    metrics.clone(),
                    repo.clone(),
                    status.clone(),
                    busy.clone(),
                    token.clone(),
                );
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        answer(conn, bound, &metrics, &repo, &*status, &token);
                        busy.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    tracing::warn!("cannot start a thread for a metrics connection");
                }
            }
        })
        .map_err(|e| Error::io("start thread", "metrics-http", e))?;
    Ok(bound)
}

/// The request line and Host header of a request head, and the token it
/// carries (query, bearer or cookie).
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    path: String,
    host: Option<String>,
    token: Option<String>,
    /// Given in the query (the page then sets its cookie).
    token_in_query: bool,
}

fn parse_head(head: &str) -> Option<Head> {
    // An obs-fold continuation line (RFC 9112 5.2: a header line that
    // starts with a space or a tab) could smuggle a Host past the check:
    // the request is refused.
    let body_start = head.find("\r\n\r\n").unwrap_or(head.len());
    if head[..body_start]
        .split("\r\n")
        .skip(1)
        .any(|l| l.starts_with(' ') || l.starts_with('\t'))
    {
        return None;
    }
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = path.to_string();
    let headers: Vec<(&str, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    let host = header("host").map(str::to_string);
    let from_query = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(str::to_string);
    let token_in_query = from_query.is_some();
    let token = from_query
        .or_else(|| {
            header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| t.trim().to_string())
        })
        .or_else(|| {
            header("cookie").and_then(|c| {
                c.split(';')
                    .find_map(|kv| kv.trim().strip_prefix("rewindfs_token="))
                    .map(str::to_string)
            })
        });
    Some(Head {
        method,
        path,
        host,
        token,
        token_in_query,
    })
}

/// Compare a presented token with ours in time that does not depend on
/// where they differ.
fn token_ok(given: Option<&str>, ours: &str) -> bool {
    let Some(g) = given else { return false };
    if g.len() != ours.len() {
        return false;
    }
    g.bytes()
        .zip(ours.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Whether a Host header names us: a loopback name or the bound address.
fn host_ok(host: Option<&str>, bound: SocketAddr) -> bool {
    let Some(h) = host else { return true }; // HTTP/1.0 without Host
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        h.rsplit_once(':').map_or(h, |(n, _)| n)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip == bound.ip())
}

/// Read the request head, bounded in size and in time as a whole (a
/// client sending a byte now and then gets HEAD_DEADLINE in all, not
/// IO_TIMEOUT per byte).
fn read_head(conn: &mut TcpStream) -> Option<String> {
    read_head_within(conn, HEAD_DEADLINE)
}

fn read_head_within(conn: &mut TcpStream, deadline: Duration) -> Option<String> {
    let until = std::time::Instant::now() + deadline;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() >= MAX_HEAD {
            return None;
        }
        let left = until.checked_duration_since(std::time::Instant::now())?;
        conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

fn respond(conn: &mut TcpStream, code: u16, ctype: &str, body: &[u8], head_only: bool) {
    respond_with(conn, code, ctype, body, head_only, "")
}

/// `extra`: more header lines, each ending in CRLF.
fn respond_with(
    conn: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &[u8],
    head_only: bool,
    extra: &str,
) {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.0 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nContent-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:\r\n{}{extra}\r\n",
        body.len(),
        if code == 405 { "Allow: GET, HEAD\r\n" } else { "" }
    );
    let _ = conn.write_all(head.as_bytes());
    if !head_only {
        let _ = conn.write_all(body);
    }
    let _ = conn.flush();
}

const TEXT: &str = "text/plain; charset=utf-8";

fn answer(
    mut conn: TcpStream,
    bound: SocketAddr,
    metrics: &Arc<Metrics>,
    repo: &Repository,
    status: &(dyn Fn() -> DaemonStatus + Send + Sync),
    token: &str,
) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let Some(head) = read_head(&mut conn).as_deref().and_then(parse_head) else {
        respond(&mut conn, 400, TEXT, b"bad request\n", false);
        return;
    };
    let head_only = head.method == "HEAD";
    if head.method != "GET" && !head_only {
        respond(&mut conn, 405, TEXT, b"read-only: GET only\n", false);
        return;
    }
    if !host_ok(head.host.as_deref(), bound) {
        respond(&mut conn, 403, TEXT, b"unknown Host\n", false);
        return;
    }
    if !token_ok(head.token.as_deref(), token) {
        respond_with(
            &mut conn,
            401,
            TEXT,
            b"a token is needed: the repository's web-token file (readable by its owner), as Authorization: Bearer TOKEN or ?token=TOKEN (the address `rewindfs status` shows)\n",
            head_only,
            "WWW-Authenticate: Bearer\r\n",
        );
        return;
    }
    // The page keeps the token in a cookie for its own requests.
    let cookie = if head.token_in_query {
        format!("Set-Cookie: rewindfs_token={token}; Path=/; HttpOnly; SameSite=Strict\r\n")
    } else {
        String::new()
    };
    let (code, ctype, body) = match head.path.as_str() {
        "/metrics" => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/" | "/index.html" => (200, "text/html; charset=utf-8", PAGE.to_string()),
        "/api/status" => json(&status()),
        "/api/snapshots" => match repo.snapshots() {
            Ok(list) => json(&list.iter().map(row).collect::<Vec<_>>()),
            Err(e) => (500, TEXT, format!("{e}\n")),
        },
        _ => (404, TEXT, "not found\n".to_string()),
    };
    respond_with(&mut conn, code, ctype, body.as_bytes(), head_only, &cookie);
}

fn json<T: Serialize>(v: &T) -> (u16, &'static str, String) {
    match serde_json::to_string(v) {
        Ok(s) => (200, "application/json", s),
        Err(e) => (500, TEXT, format!("{e}\n")),
    }
}

fn row(r: &crate::snapshot::SnapshotRecord) -> SnapRow {
    SnapRow {
        id: r.id,
        name: r.name.clone(),
        kind: r.kind.as_str(),
        synthetic: r.kind_label().contains("synthetic"),
        time: r.time.clone(),
        time_ns: r.time_ns,
        label: r.label.clone(),
        files: r.stats.files,
        logical_bytes: r.stats.logical_bytes,
        added_bytes: r.stats.stored_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_hosts_are_checked() {
        let h =
            parse_head("GET /metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9143\r\nAccept: */*\r\n\r\n")
                .unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/metrics");
        assert_eq!(h.host.as_deref(), Some("127.0.0.1:9143"));
        assert_eq!(h.token, None);
        let h = parse_head("GET /?token=ab HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(
            (h.path.as_str(), h.token.as_deref(), h.token_in_query),
            ("/", Some("ab"), true)
        );
        let h = parse_head("GET /m HTTP/1.1\r\nAuthorization: Bearer cd\r\n\r\n").unwrap();
        assert_eq!(h.token.as_deref(), Some("cd"));
        let h = parse_head("GET /m HTTP/1.1\r\nCookie: a=b; rewindfs_token=ef\r\n\r\n").unwrap();
        assert_eq!((h.token.as_deref(), h.token_in_query), (Some("ef"), false));
        assert!(token_ok(Some("ab"), "ab"));
        assert!(!token_ok(Some("ac"), "ab"));
        assert!(!token_ok(Some("a"), "ab"));
        assert!(!token_ok(None, "ab"));
        assert!(parse_head("").is_none());
        let bound: SocketAddr = "127.0.0.1:9143".parse().unwrap();
        assert!(host_ok(None, bound));
        assert!(host_ok(Some("localhost:9143"), bound));
        assert!(host_ok(Some("127.0.0.1"), bound));
        assert!(host_ok(Some("[::1]:9143"), bound));
        assert!(!host_ok(Some("evil.example:9143"), bound));
        assert!(!host_ok(Some("rebind.attacker.test"), bound));
        let lan: SocketAddr = "10.0.0.5:9143".parse().unwrap();
        assert!(host_ok(Some("10.0.0.5:9143"), lan));
        assert!(!host_ok(Some("10.0.0.6:9143"), lan));
    }

    #[test]
    fn obs_fold_is_refused() {
        assert!(parse_head("GET / HTTP/1.1\r\nX: a\r\n Host: evil\r\n\r\n").is_none());
        assert!(parse_head("GET / HTTP/1.1\r\nHost: a\r\n\tmore\r\n\r\n").is_none());
        assert!(parse_head("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").is_some());
    }

    #[test]
    fn a_client_trickling_bytes_gets_one_deadline_for_its_head() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut slow = TcpStream::connect(addr).unwrap();
        let (mut conn, _) = l.accept().unwrap();
        let t = std::thread::spawn(move || {
            // A byte every 100 ms, for 3 s.
            for _ in 0..30 {
                if slow.write_all(b"G").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let t0 = std::time::Instant::now();
        assert!(read_head_within(&mut conn, Duration::from_millis(500)).is_none());
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        drop(conn);
        let _ = t.join();
    }

    #[test]
    fn a_silent_client_costs_at_most_the_timeout() {
        // A head that never ends is cut at MAX_HEAD; one that never comes
        // at IO_TIMEOUT (checked here with a short timeout).
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _idle = TcpStream::connect(addr).unwrap();
        let (mut conn, _) = l.accept().unwrap();
        assert!(read_head_within(&mut conn, Duration::from_millis(200)).is_none());
        let mut big = TcpStream::connect(addr).unwrap();
        let (mut conn, _) = l.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        big.write_all(&vec![b'a'; MAX_HEAD + 2048]).unwrap();
        assert!(read_head(&mut conn).is_none());
    }
}
