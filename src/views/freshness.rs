//! Keeping the kernel's caches of `.snapshots` current.
//!
//! The kernel believes an entry or attribute for as long as its TTL, and
//! keeps a symlink's target (FUSE_CACHE_SYMLINKS) until told otherwise.
//! Contents of a snapshot never change, so they are cached for long; what
//! changes is the list of snapshots. The rules:
//!
//! - Every `@TIME` name is looked up again at every use (entry TTL 0):
//!   its meaning moves with the clock (`@-2h`). `latest` moves only with
//!   the list: the kernel keeps it for the views' short TTL (1 s), and
//!   the invalidation below drops it as soon as the list changes (a data
//!   loader opening thousands of files under `latest` then pays no lookup
//!   of it per file). Each names a node of its own per snapshot (`AT +
//!   id`), a symlink whose target never changes, so the kernel may keep
//!   targets.
//! - When the list changes (a snapshot committed, rewritten or forgotten),
//!   a thread of the views tells every kernel showing `.snapshots`: the
//!   directory's attributes, `latest`, and the names of snapshots that are
//!   gone are invalidated. [`Freshness::sync`] waits until that is done
//!   for the list as it is now: a command that changed the list replies
//!   only after it, so `.snapshots` is current when the command returns.
//!
//! The thread holds no lock of the views or the repository while it talks
//! to the kernel: an invalidation waits for FUSE requests on the same
//! directory to finish, and those may need those locks.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::root_map::RootMap;

/// A FUSE session showing the views.
struct Kernel {
    token: u64,
    notifier: fuser::Notifier,
    map: RootMap,
}

#[derive(Default)]
struct State {
    /// A change was signalled and not yet published.
    pending: bool,
    /// The records generation the kernels were last told about.
    published: u64,
    /// Snapshot names (by id) as last published.
    names: BTreeMap<u64, String>,
}

/// The kernels to tell and how far they have been told.
#[derive(Default)]
pub struct Freshness {
    kernels: Mutex<Vec<Kernel>>,
    next_token: std::sync::atomic::AtomicU64,
    state: Mutex<State>,
    /// Signals `pending` (to the thread) and `published` (to waiters).
    changed: Condvar,
}

/// What the publishing thread needs of the views.
pub trait Source: Send + Sync + 'static {
    /// The repository's records generation now.
    fn generation(&self) -> u64;
    /// The snapshot list (id, name) at least as new as `generation()`
    /// read before the call.
    fn names(&self) -> Option<BTreeMap<u64, String>>;
    /// The node id of `@`-names and `latest` pointing at snapshot `id`.
    fn at_node(&self, id: u64) -> u64;
    /// The node id of `.snapshots`.
    fn snapdir(&self) -> u64;
    fn freshness(&self) -> &Freshness;
}

/// How long [`Freshness::sync`] waits for the kernels at most (a kernel
/// that does not answer must not hang a command).
const SYNC_WAIT: Duration = Duration::from_secs(10);

impl Freshness {
    /// Tell this kernel about changes from now on; returns a token for
    /// [`Freshness::remove`]. Only sessions that show `.snapshots` (the
    /// live mount, `mount-snapshot --all`) need this.
    pub fn add(&self, notifier: fuser::Notifier, map: RootMap) -> u64 {
        let token = self
            .next_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.kernels.lock().push(Kernel {
            token,
            notifier,
            map,
        });
        token
    }

    pub fn remove(&self, token: u64) {
        self.kernels.lock().retain(|k| k.token != token);
    }

    /// The snapshot list changed (called by the repository, possibly under
    /// its locks: only signals).
    pub fn signal(&self) {
        self.state.lock().pending = true;
        self.changed.notify_all();
    }

    /// Wait until the kernels were told about the snapshot list as of
    /// `generation` (at most [`SYNC_WAIT`]).
    pub fn sync(&self, generation: u64) {
        let deadline = Instant::now() + SYNC_WAIT;
        let mut s = self.state.lock();
        while s.published < generation {
            s.pending = true;
            self.changed.notify_all();
            if self.changed.wait_until(&mut s, deadline).timed_out() {
                tracing::warn!(
                    "the kernel's view of .snapshots is not confirmed current after {SYNC_WAIT:?}"
                );
                return;
            }
        }
    }

    /// Start the thread that tells the kernels (it ends with the views).
    pub fn start<S: Source>(source: &Arc<S>) {
        let weak: Weak<S> = Arc::downgrade(source);
        // The names as they are now: a later change compares with these.
        if let Some(names) = source.names() {
            let mut s = source.freshness().state.lock();
            s.names = names;
            s.published = source.generation();
        }
        let spawned = std::thread::Builder::new()
            .name("views-fresh".into())
            .spawn(move || loop {
                let Some(src) = weak.upgrade() else { return };
                {
                    let f = src.freshness();
                    let mut s = f.state.lock();
                    if !s.pending && s.published >= src.generation() {
                        // Wake now and then to notice the views are gone.
                        f.changed.wait_for(&mut s, Duration::from_secs(1));
                        continue;
                    }
                    s.pending = false;
                }
                publish(&*src);
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the thread keeping .snapshots current: {e}");
        }
    }
}

/// Tell every kernel what changed since the last publication.
fn publish<S: Source>(src: &S) {
    let f = src.freshness();
    let generation = src.generation();
    let Some(names) = src.names() else {
        // The list cannot be read now: try again on the next signal.
        std::thread::sleep(Duration::from_millis(100));
        f.state.lock().pending = true;
        return;
    };
    let old = std::mem::take(&mut f.state.lock().names);
    let gone: Vec<(u64, &String)> = old
        .iter()
        .filter(|(id, name)| names.get(id) != Some(*name))
        .map(|(id, n)| (*id, n))
        .collect();
    // Notifiers are cloned out: no lock is held while the kernel works.
    let kernels: Vec<(fuser::Notifier, RootMap)> = f
        .kernels
        .lock()
        .iter()
        .map(|k| (k.notifier.clone(), k.map))
        .collect();
    for (n, map) in &kernels {
        let dir = fuser::INodeNo(map.out(src.snapdir()));
        // Errors mean the kernel does not know the node (never looked
        // up, or forgotten): nothing to invalidate.
        let _ = n.inval_entry(dir, OsStr::new("latest"));
        for (id, name) in &gone {
            let _ = n.inval_entry(dir, OsStr::from_bytes(name.as_bytes()));
            let _ = n.inval_inode(fuser::INodeNo(src.at_node(*id)), 0, 0);
        }
        let _ = n.inval_inode(dir, 0, 0);
    }
    let mut s = f.state.lock();
    s.names = names;
    s.published = s.published.max(generation);
    f.changed.notify_all();
}
