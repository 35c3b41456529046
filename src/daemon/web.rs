//! The metrics listener (`--metrics-listen ADDR:PORT`): Prometheus text at
//! `/metrics`, a small self-contained status page at `/` and the JSON it
//! reads (`/api/status`, `/api/snapshots`). Read-only: every other method
//! is refused, nothing reachable here changes the mount or the
//! repository.
//!
//! Invariants: off unless asked for; one thread answers requests one at a
//! time with a bounded body, so a slow or hostile client costs at most
//! that thread; the page loads nothing from elsewhere (no CDN, works
//! offline). Anyone who can reach the address can read mount paths,
//! snapshot labels and sizes: keep it on loopback (docs/security.md).

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use super::control::DaemonStatus;
use super::metrics::Metrics;
use crate::error::{Error, Result};
use crate::repo::Repository;

const PAGE: &str = include_str!("status_page.html");

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

/// Serve on `addr` from a thread; returns the bound address.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    repo: Arc<Repository>,
    status: Arc<dyn Fn() -> DaemonStatus + Send + Sync>,
) -> Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(|e| {
        Error::InvalidInput(format!("--metrics-listen {addr}: cannot listen there: {e}"))
    })?;
    let bound = server.server_addr().to_ip().ok_or_else(|| {
        Error::InvalidInput(format!("--metrics-listen {addr}: not an IP address"))
    })?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "metrics and the status page listen on {addr}: anyone who reaches it reads mount paths and snapshot labels"
        );
    }
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                answer(req, &metrics, &repo, &*status);
            }
        })
        .map_err(|e| Error::io("start thread", "metrics-http", e))?;
    Ok(bound)
}

/// A response with headers (ours, constants: a bad one is skipped).
fn respond(req: tiny_http::Request, code: u16, body: String, headers: &[(&str, &str)]) {
    let mut resp = tiny_http::Response::from_string(body).with_status_code(code);
    for (k, v) in headers {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            resp.add_header(h);
        }
    }
    let _ = req.respond(resp);
}

fn answer(
    req: tiny_http::Request,
    metrics: &Arc<Metrics>,
    repo: &Repository,
    status: &(dyn Fn() -> DaemonStatus + Send + Sync),
) {
    use tiny_http::Method;
    let head = *req.method() == Method::Head;
    if *req.method() != Method::Get && !head {
        respond(
            req,
            405,
            "read-only: GET only\n".into(),
            &[("Allow", "GET, HEAD")],
        );
        return;
    }
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let (code, ctype, body) = match path.as_str() {
        "/metrics" => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/" | "/index.html" => (200, "text/html; charset=utf-8", PAGE.to_string()),
        "/api/status" => json(&status()),
        "/api/snapshots" => match repo.snapshots() {
            Ok(list) => json(&list.iter().map(row).collect::<Vec<_>>()),
            Err(e) => (500, "text/plain; charset=utf-8", format!("{e}\n")),
        },
        _ => (404, "text/plain; charset=utf-8", "not found\n".to_string()),
    };
    respond(
        req,
        code,
        if head { String::new() } else { body },
        &[
            ("Content-Type", ctype),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            (
                "Content-Security-Policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            ),
        ],
    );
}

fn json<T: Serialize>(v: &T) -> (u16, &'static str, String) {
    match serde_json::to_string(v) {
        Ok(s) => (200, "application/json", s),
        Err(e) => (500, "text/plain; charset=utf-8", format!("{e}\n")),
    }
}

fn row(r: &crate::snapshot::SnapshotRecord) -> SnapRow {
    SnapRow {
        id: r.id,
        name: r.name.clone(),
        kind: r.kind.as_str(),
        synthetic: r.rewritten.is_some() && r.kind == crate::snapshot::Kind::Full,
        time: r.time.clone(),
        time_ns: r.time_ns,
        label: r.label.clone(),
        files: r.stats.files,
        logical_bytes: r.stats.logical_bytes,
        added_bytes: r.stats.stored_bytes,
    }
}
