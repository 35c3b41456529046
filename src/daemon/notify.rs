//! systemd readiness (`Type=notify`): with `--foreground` under systemd,
//! the daemon says `READY=1` once the mount is live and `STOPPING=1` when
//! it begins a clean stop, as datagrams to `$NOTIFY_SOCKET` (a path, or
//! an abstract name when it starts with `@`).
//!
//! Invariant: without `$NOTIFY_SOCKET` this does nothing; a failure to
//! notify is logged, never fatal (systemd then times the start out and
//! says so).

use std::os::unix::net::UnixDatagram;

/// Send `state` (e.g. "READY=1\nSTATUS=...") to systemd, if it listens.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::warn!("telling systemd {state:?}: {e}");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_a_path_socket() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        send(p.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
