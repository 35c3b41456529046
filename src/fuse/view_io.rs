//! How the opens of snapshot files are answered on one FUSE session:
//! through the daemon (cached: FOPEN_KEEP_CACHE) or by kernel passthrough
//! from a verified materialized copy (`views::materialize`).
//!
//! The kernel keeps one I/O mode per inode: while a cached open of an
//! inode lives, a passthrough open of it fails with EIO, and while a
//! passthrough open lives, every other open must be passthrough with
//! the same backing file. So the opens of each node are counted here
//! (a RELEASE reaches the daemon after the kernel dropped the open, so
//! these counts are never below the kernel's), and:
//! - a node with passthrough opens gets passthrough with their backing,
//!   once the copy behind it is checked again (unchanged since it was
//!   verified; otherwise the open fails with EIO: a cached open would
//!   fail too, and wrong bytes are never served);
//! - a node with cached opens gets a cached open;
//! - otherwise passthrough when the views have a trusted copy.
//!
//! Backing ids belong to one FUSE connection: each session has its own
//! table. The copy is found and registered outside the table's lock.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuser::{BackingId, Errno};
use parking_lot::Mutex;

use crate::views::materialize::{Identity, Key, Materializer};
use crate::views::Views;

/// The copy behind a node's passthrough opens.
struct Backing {
    id: Arc<BackingId>,
    key: Key,
    file: File,
    identity: Identity,
}

#[derive(Default)]
struct NodeIo {
    cached: u32,
    passthrough: u32,
    backing: Option<Arc<Backing>>,
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<u64, NodeIo>,
    /// Open handle -> (node, served by passthrough).
    handles: HashMap<u64, (u64, bool)>,
}

#[derive(Default)]
pub struct ViewIo {
    /// The kernel accepted FUSE passthrough at INIT.
    enabled: AtomicBool,
    inner: Mutex<Inner>,
}

/// Register errors that mean this session cannot use passthrough at all.
fn refused_for_good(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM) | Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::ENOSYS)
    )
}

impl ViewIo {
    /// Called at INIT: whether the kernel accepted passthrough. The
    /// views' cache then copies files (it does not when no session can
    /// serve the copies).
    pub fn set_enabled(&self, views: &Views, on: bool) {
        // Registering a backing file needs CAP_SYS_ADMIN.
        let on = on && rustix::process::geteuid().is_root();
        self.enabled.store(on, Ordering::Relaxed);
        if let Some(m) = &views.materialize {
            if on {
                m.set_serving(true);
            }
        }
    }

    /// Decide how the open `fh` of node `ino` is answered: `Ok(Some(id))`
    /// for passthrough with backing `id`, `Ok(None)` for a cached open.
    /// `register` makes a backing id of a copy (the reply's
    /// `open_backing`).
    pub fn open(
        &self,
        views: &Views,
        ino: u64,
        fh: u64,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Result<Option<Arc<BackingId>>, Errno> {
        let m = match &views.materialize {
            Some(m) if self.enabled.load(Ordering::Relaxed) => Some(m),
            _ => None,
        };
        // Outside the lock: find and register a copy when the node has no
        // opens (the common case of a file opened again later).
        let idle = {
            let g = self.inner.lock();
            !g.nodes.contains_key(&ino)
        };
        let fresh = match (m, idle) {
            (Some(m), true) => views.materialized_key(fh).and_then(|key| {
                let file = m.trusted(&key)?;
                let identity = Materializer::identity_of(&file)?;
                match register(&file) {
                    Ok(id) => Some(Arc::new(Backing {
                        id: Arc::new(id),
                        key,
                        file,
                        identity,
                    })),
                    Err(e) => {
                        if refused_for_good(&e) {
                            tracing::warn!("the kernel refused passthrough of a materialized copy ({e}): snapshot files are served by the daemon");
                            self.enabled.store(false, Ordering::Relaxed);
                            m.set_serving(false);
                        } else {
                            tracing::info!("passthrough of a materialized copy refused ({e}): this open is served by the daemon");
                        }
                        None
                    }
                }
            }),
            _ => None,
        };
        let mut g = self.inner.lock();
        let n = g.nodes.entry(ino).or_default();
        // The node's mode as it is now (other opens may have come in).
        let backing = if n.passthrough > 0 {
            let b = n.backing.clone();
            if let (Some(b), Some(m)) = (&b, m.or(views.materialize.as_ref())) {
                if !m.still_trusted(&b.key, &b.file, &b.identity) {
                    return Err(Errno::EIO);
                }
            }
            b
        } else if n.cached == 0 {
            if let (Some(_), Some(m)) = (&fresh, m) {
                m.served();
            }
            fresh
        } else {
            None
        };
        match &backing {
            Some(b) => {
                n.passthrough += 1;
                n.backing = Some(b.clone());
            }
            None => n.cached += 1,
        }
        g.handles.insert(fh, (ino, backing.is_some()));
        Ok(backing.map(|b| b.id.clone()))
    }

    /// The open `fh` was released.
    pub fn release(&self, fh: u64) {
        let dropped = {
            let mut g = self.inner.lock();
            let Some((ino, pt)) = g.handles.remove(&fh) else {
                return;
            };
            let mut dropped = None;
            if let Some(n) = g.nodes.get_mut(&ino) {
                if pt {
                    n.passthrough = n.passthrough.saturating_sub(1);
                    if n.passthrough == 0 {
                        dropped = n.backing.take();
                    }
                } else {
                    n.cached = n.cached.saturating_sub(1);
                }
                if n.passthrough == 0 && n.cached == 0 {
                    g.nodes.remove(&ino);
                }
            }
            dropped
        };
        // The backing id is closed (an ioctl) outside the lock.
        drop(dropped);
    }
}
