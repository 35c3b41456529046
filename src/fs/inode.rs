//! FUSE node ids and the backing objects they stand for.
//!
//! Every node the kernel knows can give an `O_PATH` descriptor of its
//! backing object, so operations never resolve string paths (a concurrent
//! rename cannot redirect them). Descriptors are cached; when there are
//! more nodes than the open-file limit allows, the oldest cached
//! descriptors are closed and reopened from the node's kernel file handle
//! when needed (`handle.rs`). Filesystems without file handles keep every
//! descriptor open.
//!
//! Node ids are the backing inode numbers where that is unambiguous (same
//! device as the backing root), so `stat` through the mount shows the
//! backing inode numbers and hard links share one. The root is node 1.
//! Objects on other devices get ids from the top half of the range.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use super::kernel_handle::KernelHandle;
use crate::track::FileKey;

pub const ROOT: u64 = 1;
const FOREIGN_BASE: u64 = 1 << 63;

/// Kernel passthrough state of a file (see `live::open`).
#[derive(Default)]
pub struct OpenModes {
    /// Opens served by the daemon (page cache or direct).
    pub cached: u32,
    /// Opens served by kernel passthrough.
    pub passthrough: u32,
    /// Opens by exec(2) (the program is running from this file).
    pub exec: u32,
    /// Written through passthrough since the last cached open: the next
    /// cached open must drop the kernel's pages of the file.
    pub stale_cache: bool,
    /// The backing id shared by this file's passthrough opens.
    pub backing: Option<std::sync::Weak<fuser::BackingId>>,
}

pub struct Inode {
    pub nodeid: u64,
    pub key: FileKey,
    /// `S_IFMT` bits.
    pub kind: u32,
    lookups: AtomicU64,
    pub opens: Mutex<OpenModes>,
    /// The kernel's handle of the object, when the filesystem has them.
    handle: Option<KernelHandle>,
    /// The cached `O_PATH` descriptor (shared with pins and with
    /// operations in progress, which keep it open while they use it).
    fd: Mutex<Option<Arc<OwnedFd>>>,
    /// In the table's queue of cached descriptors.
    queued: AtomicBool,
    table: Weak<FdCache>,
}

/// A `/proc/self/fd/N` path, valid while this value (which keeps the
/// descriptor open) lives.
pub struct ProcPath {
    _fd: Arc<OwnedFd>,
    path: String,
}

impl ProcPath {
    pub fn new(fd: Arc<OwnedFd>) -> ProcPath {
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        ProcPath { _fd: fd, path }
    }

    pub fn as_str(&self) -> &str {
        &self.path
    }
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// The object's `O_PATH` descriptor (reopened from its handle if it was
    /// closed to save descriptors).
    pub fn fd(self: &Arc<Self>) -> std::io::Result<Arc<OwnedFd>> {
        let mut slot = self.fd.lock();
        if let Some(fd) = slot.as_ref() {
            return Ok(fd.clone());
        }
        let stale = || std::io::Error::from_raw_os_error(libc::ESTALE);
        let (Some(h), Some(table)) = (&self.handle, self.table.upgrade()) else {
            return Err(stale());
        };
        let fd = Arc::new(h.open(table.mount_fd.as_ref().ok_or_else(stale)?, libc::O_PATH)?);
        *slot = Some(fd.clone());
        drop(slot);
        table.push(self);
        Ok(fd)
    }

    /// A path that reaches this object through `/proc` (for the calls that
    /// have no `*at` or fd form usable with `O_PATH`).
    pub fn proc_path(self: &Arc<Self>) -> std::io::Result<ProcPath> {
        Ok(ProcPath::new(self.fd()?))
    }

    /// Close the cached descriptor if the handle can reopen it.
    fn evict(&self) -> bool {
        if self.handle.is_none() {
            return false;
        }
        *self.fd.lock() = None;
        self.queued.store(false, Ordering::Relaxed);
        true
    }
}

/// Keeps the number of cached descriptors under a budget.
struct FdCache {
    /// A (non-`O_PATH`) descriptor on the backing filesystem, for
    /// open_by_handle_at.
    mount_fd: Option<OwnedFd>,
    budget: usize,
    queue: Mutex<VecDeque<Weak<Inode>>>,
}

impl FdCache {
    fn push(&self, n: &Arc<Inode>) {
        if n.handle.is_none() || n.queued.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut q = self.queue.lock();
        q.push_back(Arc::downgrade(n));
        while q.len() > self.budget {
            match q.pop_front() {
                Some(w) => {
                    if let Some(old) = w.upgrade() {
                        old.evict();
                    }
                }
                None => break,
            }
        }
    }
}

pub struct InodeTable {
    root_dev: u64,
    nodes: RwLock<HashMap<u64, Arc<Inode>>>,
    foreign: Mutex<HashMap<FileKey, u64>>,
    next_foreign: AtomicU64,
    cache: Arc<FdCache>,
    /// File handles work here (the filesystem exports them and we may
    /// open them).
    handles: bool,
}

impl InodeTable {
    /// `fd_budget`: how many descriptors to keep cached at most.
    pub fn new(root_fd: OwnedFd, root_key: FileKey, fd_budget: usize) -> InodeTable {
        let root_fd = Arc::new(root_fd);
        let mount_fd = rustix::fs::openat(
            rustix::fs::CWD,
            ProcPath::new(root_fd.clone()).as_str(),
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        );
        // Handles are usable if we can make one and open it again.
        let handles = match &mount_fd {
            Ok(m) => KernelHandle::of(&root_fd)
                .and_then(|h| h.open(m, libc::O_PATH))
                .is_ok(),
            Err(_) => false,
        };
        let mount_fd = mount_fd.ok();
        let cache = Arc::new(FdCache {
            mount_fd,
            budget: fd_budget.max(64),
            queue: Mutex::new(VecDeque::new()),
        });
        let root = Arc::new(Inode {
            nodeid: ROOT,
            key: root_key,
            kind: libc::S_IFDIR,
            lookups: AtomicU64::new(1),
            opens: Mutex::new(OpenModes::default()),
            handle: None,
            fd: Mutex::new(Some(root_fd)),
            queued: AtomicBool::new(false),
            table: Arc::downgrade(&cache),
        });
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, root);
        InodeTable {
            root_dev: root_key.dev,
            nodes: RwLock::new(nodes),
            foreign: Mutex::new(HashMap::new()),
            next_foreign: AtomicU64::new(FOREIGN_BASE),
            cache,
            handles,
        }
    }

    /// Whether descriptors can be closed and reopened from file handles.
    pub fn uses_handles(&self) -> bool {
        self.handles
    }

    pub fn get(&self, nodeid: u64) -> Option<Arc<Inode>> {
        let n = self.nodes.read().get(&nodeid).cloned()?;
        Some(n)
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
        let handle = if self.handles {
            KernelHandle::of(&fd).ok()
        } else {
            None
        };
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
            kind: st.st_mode & libc::S_IFMT,
            lookups: AtomicU64::new(1),
            opens: Mutex::new(OpenModes::default()),
            handle,
            fd: Mutex::new(Some(Arc::new(fd))),
            queued: AtomicBool::new(false),
            table: Arc::downgrade(&self.cache),
        });
        nodes.insert(nodeid, n.clone());
        drop(nodes);
        self.cache.push(&n);
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
