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
//! - a node with passthrough opens gets passthrough with their backing;
//! - a node with cached opens gets a cached open;
//! - otherwise passthrough when the views have a trusted copy.
//!
//! Backing ids belong to one FUSE connection: each session has its own
//! table.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuser::BackingId;
use parking_lot::Mutex;

#[derive(Default)]
struct NodeIo {
    cached: u32,
    passthrough: u32,
    backing: Option<Arc<BackingId>>,
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

impl ViewIo {
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Decide how the open `fh` of node `ino` is answered: `Some(backing)`
    /// for passthrough. `copy` gives the trusted copy, `register` makes
    /// a backing id of it (the reply's `open_backing`).
    pub fn open(
        &self,
        ino: u64,
        fh: u64,
        copy: impl FnOnce() -> Option<File>,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        let mut g = self.inner.lock();
        let n = g.nodes.entry(ino).or_default();
        let backing = if n.passthrough > 0 {
            n.backing.clone()
        } else if n.cached == 0 && self.enabled.load(Ordering::Relaxed) {
            copy().and_then(|f| match register(&f) {
                Ok(id) => Some(Arc::new(id)),
                Err(e) => {
                    tracing::warn!("the kernel refused passthrough of a materialized copy ({e}): snapshot files are served by the daemon");
                    self.enabled.store(false, Ordering::Relaxed);
                    None
                }
            })
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
        backing
    }

    /// The open `fh` was released.
    pub fn release(&self, fh: u64) {
        let mut g = self.inner.lock();
        let Some((ino, pt)) = g.handles.remove(&fh) else {
            return;
        };
        if let Some(n) = g.nodes.get_mut(&ino) {
            if pt {
                n.passthrough = n.passthrough.saturating_sub(1);
                if n.passthrough == 0 {
                    n.backing = None;
                }
            } else {
                n.cached = n.cached.saturating_sub(1);
            }
            if n.passthrough == 0 && n.cached == 0 {
                g.nodes.remove(&ino);
            }
        }
    }
}
