//! FUSE node ids and the backing objects they stand for.
//!
//! Every node the kernel knows holds an `O_PATH` descriptor of its backing
//! object, so operations never resolve string paths (a concurrent rename
//! cannot redirect them) and the backing inode cannot be freed and its
//! number reused while the kernel may still name it.
//!
//! Node ids are the backing inode numbers where that is unambiguous (same
//! device as the backing root), so `stat` through the mount shows the
//! backing inode numbers and hard links share one. The root is node 1.
//! Objects on other devices get ids from the top half of the range.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::journal::FileKey;

pub const ROOT: u64 = 1;
const FOREIGN_BASE: u64 = 1 << 63;

/// Kernel passthrough state of a file (see `live::open`).
#[derive(Default)]
pub struct OpenModes {
    /// Opens served by the daemon (page cache or direct).
    pub cached: u32,
    /// Opens served by kernel passthrough.
    pub passthrough: u32,
    /// The backing id shared by this file's passthrough opens.
    pub backing: Option<std::sync::Weak<fuser::BackingId>>,
}

pub struct Inode {
    pub nodeid: u64,
    pub key: FileKey,
    /// `O_PATH` descriptor of the backing object (shared with pins that
    /// keep it reachable for a snapshot after the kernel forgets it).
    pub fd: Arc<OwnedFd>,
    /// `S_IFMT` bits.
    pub kind: u32,
    lookups: AtomicU64,
    pub opens: Mutex<OpenModes>,
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// A path that reaches this object through `/proc` (for the calls that
    /// have no `*at` or fd form usable with `O_PATH`).
    pub fn proc_path(&self) -> String {
        use std::os::fd::AsRawFd;
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }
}

pub struct InodeTable {
    root_dev: u64,
    nodes: RwLock<HashMap<u64, Arc<Inode>>>,
    foreign: Mutex<HashMap<FileKey, u64>>,
    next_foreign: AtomicU64,
}

impl InodeTable {
    pub fn new(root_fd: OwnedFd, root_key: FileKey) -> InodeTable {
        let root = Arc::new(Inode {
            nodeid: ROOT,
            key: root_key,
            fd: Arc::new(root_fd),
            kind: libc::S_IFDIR,
            lookups: AtomicU64::new(1),
            opens: Mutex::new(OpenModes::default()),
        });
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, root);
        InodeTable {
            root_dev: root_key.dev,
            nodes: RwLock::new(nodes),
            foreign: Mutex::new(HashMap::new()),
            next_foreign: AtomicU64::new(FOREIGN_BASE),
        }
    }

    pub fn get(&self, nodeid: u64) -> Option<Arc<Inode>> {
        self.nodes.read().get(&nodeid).cloned()
    }

    pub fn root(&self) -> Arc<Inode> {
        self.nodes.read()[&ROOT].clone()
    }

    fn nodeid_for(&self, key: &FileKey) -> u64 {
        if key.dev == self.root_dev && key.ino > ROOT && key.ino < FOREIGN_BASE {
            return key.ino;
        }
        *self
            .foreign
            .lock()
            .entry(*key)
            .or_insert_with(|| self.next_foreign.fetch_add(1, Ordering::Relaxed))
    }

    /// The node for a backing object just looked up (its `O_PATH` fd and
    /// stat), counting one kernel lookup. An existing node keeps its fd.
    pub fn lookup(&self, fd: OwnedFd, st: &rustix::fs::Stat) -> Arc<Inode> {
        let key = FileKey::of(st);
        if key == self.root().key {
            let root = self.root();
            root.lookups.fetch_add(1, Ordering::Relaxed);
            return root;
        }
        let nodeid = self.nodeid_for(&key);
        {
            let nodes = self.nodes.read();
            if let Some(n) = nodes.get(&nodeid) {
                if n.key == key {
                    n.lookups.fetch_add(1, Ordering::Relaxed);
                    return n.clone();
                }
            }
        }
        let mut nodes = self.nodes.write();
        if let Some(n) = nodes.get(&nodeid) {
            if n.key == key {
                n.lookups.fetch_add(1, Ordering::Relaxed);
                return n.clone();
            }
        }
        let n = Arc::new(Inode {
            nodeid,
            key,
            fd: Arc::new(fd),
            kind: st.st_mode & libc::S_IFMT,
            lookups: AtomicU64::new(1),
            opens: Mutex::new(OpenModes::default()),
        });
        nodes.insert(nodeid, n.clone());
        n
    }

    /// The node of a backing object, if the kernel knows it.
    pub fn find(&self, key: &FileKey) -> Option<Arc<Inode>> {
        let nodeid = if key.dev == self.root_dev && key.ino > ROOT && key.ino < FOREIGN_BASE {
            key.ino
        } else {
            *self.foreign.lock().get(key)?
        };
        self.get(nodeid).filter(|n| n.key == *key)
    }

    /// The kernel forgot `n` lookups of `nodeid`.
    pub fn forget(&self, nodeid: u64, n: u64) {
        if nodeid == ROOT {
            return;
        }
        let mut nodes = self.nodes.write();
        if let Some(node) = nodes.get(&nodeid) {
            let before = node.lookups.fetch_sub(
                n.min(node.lookups.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            if before <= n {
                nodes.remove(&nodeid);
            }
        }
    }

    /// Nodes the kernel currently knows.
    pub fn node_count(&self) -> usize {
        self.nodes.read().len()
    }
}
