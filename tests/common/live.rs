//! A live FUSE mount for tests, with a guard that always unmounts (also
//! when the test panics). Without FUSE the test fails with a clear message.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rewindfs::flusher::Policy;
use rewindfs::fs::LiveFs;
use rewindfs::fuse::MountConfig;
use rewindfs::mount::{LiveMount, LiveMountConfig};
use rewindfs::repo::Repository;
use rewindfs::track::Journal;

pub const BS: u32 = 64 << 10;

/// Fail loudly (never skip) when FUSE cannot be used here.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "FUSE is not available (/dev/fuse is missing): this test needs a real FUSE mount"
    );
    assert!(
        rustix::process::geteuid().is_root() || which("fusermount3"),
        "FUSE mounts need root or fusermount3 (apt-get install fuse3)"
    );
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).exists()))
        .unwrap_or(false)
}

/// No automatic snapshots: tests take them on request.
fn manual_policy() -> Policy {
    Policy {
        every: None,
        differential_every: None,
        full_every: None,
        on_close: Vec::new(),
        checkpoints: Vec::new(),
        settle: std::time::Duration::from_secs(1),
        snapshot_on_unmount: false,
        keep: Default::default(),
        ..Policy::default()
    }
}

/// Start a live mount the way the daemon does (`LiveMount::start`), with
/// its repository in `tmp/repo`, and serve it on background threads.
fn start_mount(
    tmp: &Path,
    block_size: u32,
    cfg: MountConfig,
    views: bool,
) -> (LiveMount, PathBuf, PathBuf) {
    let backing = tmp.join("backing");
    let mnt = tmp.join("mnt");
    let repo_dir = tmp.join("repo");
    Repository::init(&repo_dir, block_size, 3).unwrap();
    let repo = Arc::new(Repository::open(&repo_dir).unwrap());
    let mut live = LiveMount::start(LiveMountConfig {
        events: Default::default(),
        backing: backing.canonicalize().unwrap(),
        mountpoint: mnt.clone(),
        repo,
        mount: cfg,
        policy: manual_policy(),
        hidden: None,
        views,
        startup: Default::default(),
        threads: 2,
    })
    .unwrap_or_else(|e| panic!("mounting FUSE on {} failed: {e}", mnt.display()));
    live.spawn().expect("start the FUSE session");
    (live, backing, mnt)
}

/// A live mount without snapshot views, for filesystem and tracking
/// tests (the flusher runs, with no cadence).
pub struct TestMount {
    pub backing: PathBuf,
    pub mnt: PathBuf,
    pub journal: Arc<Journal>,
    pub fs: Arc<LiveFs>,
    live: Option<LiveMount>,
    pub tmp: tempfile::TempDir,
}

impl TestMount {
    pub fn new() -> TestMount {
        Self::with(MountConfig::default())
    }

    pub fn with(cfg: MountConfig) -> TestMount {
        require_fuse();
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("backing")).unwrap();
        std::fs::create_dir(tmp.path().join("mnt")).unwrap();
        let (live, backing, mnt) = start_mount(tmp.path(), BS, cfg, false);
        TestMount {
            backing,
            mnt,
            journal: live.tracker.journal().clone(),
            fs: live.fs.clone(),
            live: Some(live),
            tmp,
        }
    }

    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn b(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }

    /// The journal's dirty blocks of the backing file `rel`.
    pub fn dirty_blocks(&self, rel: &str) -> Vec<u64> {
        let key = key_of(&self.b(rel));
        self.journal
            .dirty()
            .get(&key)
            .map(|d| d.blocks.keys().copied().collect())
            .unwrap_or_default()
    }
}

pub fn key_of(p: &Path) -> rewindfs::track::FileKey {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(p).unwrap();
    rewindfs::track::FileKey {
        dev: md.dev(),
        ino: md.ino(),
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        // Unmounts (also when the test panicked).
        drop(self.live.take());
    }
}

/// A mount made by the `rewindfs mount` daemon; unmounted on drop.
pub struct DaemonMount {
    pub mnt: PathBuf,
}

impl DaemonMount {
    /// Run `rewindfs mount BACKING MNT ARGS...` and insist it succeeds.
    pub fn start(backing: &Path, mnt: &Path, args: &[&str]) -> DaemonMount {
        DaemonMount::start_with_env(backing, mnt, args, &[])
    }

    /// [`DaemonMount::start`] with extra environment variables.
    pub fn start_with_env(
        backing: &Path,
        mnt: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> DaemonMount {
        require_fuse();
        let o = std::process::Command::new(super::bin())
            .arg("mount")
            .arg(backing)
            .arg(mnt)
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "rewindfs mount failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        DaemonMount {
            mnt: mnt.to_path_buf(),
        }
    }

    /// Unmount now (and insist it works).
    pub fn umount(mut self) {
        let o = std::process::Command::new(super::bin())
            .arg("umount")
            .arg(&self.mnt)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "rewindfs umount failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        self.mnt = PathBuf::new();
    }
}

impl Drop for DaemonMount {
    fn drop(&mut self) {
        if self.mnt.as_os_str().is_empty() {
            return;
        }
        let ok = std::process::Command::new(super::bin())
            .arg("umount")
            .arg(&self.mnt)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            let _ = rustix::mount::unmount(&self.mnt, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// A live mount with a repository, views and a flusher in this process,
/// for snapshot tests (no automatic cadence: snapshots are taken on
/// request).
pub struct FlushedMount {
    pub repo: Arc<Repository>,
    pub flusher: Option<Arc<rewindfs::flusher::Flusher>>,
    pub fs: Arc<LiveFs>,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    live: Option<LiveMount>,
    pub tmp: tempfile::TempDir,
}

impl FlushedMount {
    pub fn new(block_size: u32) -> FlushedMount {
        Self::with(block_size, MountConfig::default(), |_| {})
    }

    /// `prepare` fills the backing directory before the mount.
    pub fn with(block_size: u32, cfg: MountConfig, prepare: impl FnOnce(&Path)) -> FlushedMount {
        require_fuse();
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("backing")).unwrap();
        std::fs::create_dir(tmp.path().join("mnt")).unwrap();
        prepare(&tmp.path().join("backing"));
        let (live, backing, mnt) = start_mount(tmp.path(), block_size, cfg, true);
        FlushedMount {
            repo: live.repo.clone(),
            flusher: Some(live.flusher.clone()),
            fs: live.fs.clone(),
            backing,
            mnt,
            live: Some(live),
            tmp,
        }
    }

    pub fn snapshot(&self, kind: rewindfs::snapshot::Kind) -> rewindfs::snapshot::SnapshotRecord {
        self.flusher
            .as_ref()
            .unwrap()
            .snapshot(Some(kind), None)
            .expect("snapshot")
    }
    /// The content of every regular file of a snapshot.
    pub fn files_of(&self, id: u64) -> std::collections::BTreeMap<String, Vec<u8>> {
        let rec = self
            .repo
            .snapshots()
            .unwrap()
            .into_iter()
            .find(|r| r.id == id)
            .unwrap();
        let tree = self.repo.resolve(&rec).unwrap();
        let mut out = std::collections::BTreeMap::new();
        for (p, (_, node)) in &tree.entries {
            if let rewindfs::snapshot::Node::File { size, .. } = node {
                let mut data = Vec::with_capacity(*size as usize);
                for id in rewindfs::snapshot::Tree::blocks_of(node) {
                    data.extend(self.repo.read_blob(id).unwrap());
                }
                assert_eq!(data.len() as u64, *size);
                out.insert(String::from_utf8_lossy(p).into_owned(), data);
            }
        }
        out
    }
}

impl Drop for FlushedMount {
    fn drop(&mut self) {
        // Unmounts and stops the flusher (also when the test panicked).
        drop(self.live.take());
    }
}

/// Unmounts a path when dropped (also when the test panicked): plainly,
/// or lazily if it is busy.
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::empty())
            .or_else(|_| rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH));
    }
}
