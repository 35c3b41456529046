//! Checkpoints kept aside until a snapshot holds them.
//!
//! A training job's rotation (`save_total_limit`, keep-last-k scripts)
//! deletes old checkpoints as soon as new ones are written, often before
//! any snapshot was taken of them. A checkpoint deleted or replaced
//! (renamed over) through the mount whose last closed content no snapshot
//! holds yet is therefore kept: hard-linked into the repository just
//! before its name goes (so the unlink or rename stays atomic):
//!
//! ```text
//! REPO/keep/              0700 (layout::KEEP)
//!   <id>.rec              where it was: its path, the metadata of the
//!                         directories above it (JSON; written, fsynced
//!                         and renamed into place first)
//!   <id>.data             the file itself: the same inode, linked from
//!                         BACKING (no byte copied), made immutable once
//!                         its name in BACKING is gone
//! ```
//!
//! The repository must be on BACKING's filesystem (a rename cannot cross
//! filesystems); otherwise nothing is kept and deletes are plain deletes.
//!
//! The flusher then takes a *kept* snapshot: the latest snapshot with
//! these files added at their paths (and the directories they were in,
//! if those are gone too), labelled `kept: ...`. The entries it added are
//! looked at again by the next cut (`Freezer::recheck`), which finds
//! them gone and removes them from the snapshots after it. Once the kept
//! snapshot is committed, each file is handed to the materialization
//! cache (a verified copy served by passthrough: the snapshot's version
//! is read at native speed, with no second copy) or deleted.
//!
//! **Crashes.** The record is durable before the link; a record whose
//! data file is missing, or has a second link (the crash came before the
//! link, or before the name in BACKING was removed: the file is still at
//! its path), is dropped with our link; a data file without a record can
//! only be a leftover of a discard and is deleted. Pending files
//! found when a daemon starts are captured by its first kept snapshot.
//!
//! **Immutability.** The file is made immutable (`FS_IMMUTABLE_FL`) as it
//! is kept: on ext4 and most Linux filesystems no descriptor opened
//! earlier (directly in BACKING, or a shared writable mapping) can change
//! it any more, so what the kept snapshot reads is what a reader of the
//! snapshot is later served. A file that could not be made immutable is
//! still captured, but never served by passthrough.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::journal::FileKey;
use crate::error::{Error, Result};
use crate::repo::layout;
use crate::snapshot::manifest::Meta;
use crate::util::dirfd::Dir;

const RECORD_VERSION: u32 = 1;
/// Records are small; anything larger is not ours.
const RECORD_MAX: u64 = 1 << 20;
/// Directories recently kept from (their other files are kept too).
const RECENT_DIRS: usize = 1024;
/// How long a directory counts as one a checkpoint was kept from.
const RECENT_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// `<id>.rec`: where a kept file was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptRecord {
    pub version: u32,
    pub id: u64,
    /// Its path relative to the mount root.
    pub path: Vec<u8>,
    /// The directories above it, top first: path and metadata when kept.
    pub dirs: Vec<(Vec<u8>, Meta)>,
    /// Its inode number (the data file must be this inode).
    pub ino: u64,
    /// When it was kept (wall-clock ns).
    pub kept_ns: i64,
}

/// A file kept and not yet in a snapshot.
#[derive(Clone, Debug)]
pub struct Kept {
    pub rec: KeptRecord,
    /// An `O_PATH` descriptor of `<id>.data`.
    pub fd: Arc<OwnedFd>,
    pub size: u64,
    /// Made immutable (may be served by passthrough once captured).
    pub immutable: bool,
}

/// What became of a file asked to be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Linked into the keep directory under this id: remove the name as
    /// asked, then [`Keeper::seal`] it (or [`Keeper::abandon`] it if the
    /// removal failed).
    Kept(u64),
    /// Nothing was done (not the file expected, a link refused...):
    /// remove the name as usual.
    NotKept,
}

#[derive(Default)]
struct Inner {
    next: u64,
    pending: BTreeMap<u64, Kept>,
    /// Linked, waiting for the caller's unlink or rename (see `seal`).
    linked: BTreeMap<u64, (KeptRecord, Arc<OwnedFd>, FileKey)>,
    /// Directories files were kept from, and when (their other files
    /// deleted within [`RECENT_FOR`] count as parts of the same
    /// checkpoint).
    dirs: std::collections::HashMap<FileKey, std::time::Instant>,
    /// Files kept by this daemon, and those captured since.
    kept_total: u64,
    captured_total: u64,
}

pub struct Keeper {
    dir: Dir,
    dev: u64,
    inner: Mutex<Inner>,
}

pub fn data_name(id: u64) -> String {
    format!("{id}.data")
}

fn record_name(id: u64) -> String {
    format!("{id}.rec")
}

/// Set or clear the immutable flag of the file an `O_PATH` descriptor
/// names (through a read-only open of it: the flags' ioctl needs one).
pub fn set_immutable(fd: &OwnedFd, on: bool) -> rustix::io::Result<()> {
    set_immutable_open(reopen_read(fd)?, on)
}

/// [`set_immutable`] on a descriptor opened for reading.
pub fn set_immutable_open(f: impl AsFd, on: bool) -> rustix::io::Result<()> {
    let flags = rustix::fs::ioctl_getflags(&f)?;
    let want = if on {
        flags | rustix::fs::IFlags::IMMUTABLE
    } else {
        flags - rustix::fs::IFlags::IMMUTABLE
    };
    if want != flags {
        rustix::fs::ioctl_setflags(&f, want)?;
    }
    Ok(())
}

/// Whether the file of an `O_PATH` descriptor is immutable.
pub fn is_immutable(fd: impl AsFd) -> bool {
    rustix::fs::ioctl_getflags(fd).is_ok_and(|f| f.contains(rustix::fs::IFlags::IMMUTABLE))
}

/// Open the regular file of an `O_PATH` descriptor for reading.
pub fn reopen_read(fd: &OwnedFd) -> rustix::io::Result<OwnedFd> {
    let st = rustix::fs::fstat(fd)?;
    if crate::util::sys::file_type(st.st_mode) != libc::S_IFREG {
        return Err(rustix::io::Errno::INVAL);
    }
    let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::openat(
        rustix::fs::CWD,
        p.as_str(),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

impl Keeper {
    /// Open (create) `REPO/keep` and load what is pending there. `None`
    /// when the repository is not on the backing directory's filesystem
    /// (device `backing_dev`).
    pub fn open(repo_dir: &Dir, backing_dev: u64) -> Result<Option<Arc<Keeper>>> {
        let st = repo_dir.stat()?;
        if st.st_dev != backing_dev {
            tracing::info!(
                "the repository is not on the backing directory's filesystem: checkpoints deleted before a snapshot holds them are not kept aside"
            );
            return Ok(None);
        }
        let dir = repo_dir.ensure_dir(layout::KEEP, layout::DIR_MODE)?;
        let k = Keeper {
            dir,
            dev: st.st_dev,
            inner: Mutex::new(Inner::default()),
        };
        k.scan()?;
        Ok(Some(Arc::new(k)))
    }

    /// Load the records; drop what is not a whole kept file.
    fn scan(&self) -> Result<()> {
        let names: Vec<String> = self
            .dir
            .names()?
            .into_iter()
            .filter_map(|n| String::from_utf8(n).ok())
            .collect();
        let mut g = self.inner.lock();
        let mut datas: HashSet<u64> = HashSet::new();
        for n in &names {
            if let Some(id) = n.strip_suffix(".data").and_then(|i| i.parse().ok()) {
                datas.insert(id);
                g.next = g.next.max(id + 1);
            } else if n.starts_with(crate::util::dirfd::TMP_PREFIX) {
                let _ = self.dir.remove_file(n);
            }
        }
        for n in &names {
            let Some(id) = n.strip_suffix(".rec").and_then(|i| i.parse::<u64>().ok()) else {
                continue;
            };
            g.next = g.next.max(id + 1);
            let rec = self.read_record(id);
            let kept = rec.and_then(|rec| {
                let fd = self.open_data(id).ok()?;
                let st = rustix::fs::fstat(&fd).ok()?;
                // A second link: the crash came between the link and the
                // caller's unlink, so the file is still at its path.
                (st.st_ino == rec.ino
                    && st.st_nlink == 1
                    && crate::util::sys::file_type(st.st_mode) == libc::S_IFREG)
                    .then_some((rec, fd, st.st_size as u64))
            });
            match kept {
                Some((rec, fd, size)) => {
                    // Kept before a crash: immutable now if it was not yet.
                    let immutable = set_immutable(&fd, true).is_ok();
                    datas.remove(&id);
                    g.pending.insert(
                        id,
                        Kept {
                            rec,
                            fd: Arc::new(fd),
                            size,
                            immutable,
                        },
                    );
                }
                None => {
                    // The crash came before the link, or before the
                    // caller's unlink: the file is where it was. Only our
                    // link goes (never made immutable: it may be a name
                    // of a live file).
                    let _ = self.dir.remove_file(&data_name(id));
                    datas.remove(&id);
                    let _ = self.dir.remove_file(&record_name(id));
                }
            }
        }
        drop(g);
        for id in datas {
            self.remove_data(id);
        }
        let n = self.inner.lock().pending.len();
        if n > 0 {
            tracing::info!("{n} checkpoint(s) kept aside before a restart wait for a snapshot");
        }
        Ok(())
    }

    fn read_record(&self, id: u64) -> Option<KeptRecord> {
        let f = self.dir.open_read(&record_name(id)).ok()??;
        let mut bytes = Vec::new();
        f.take(RECORD_MAX).read_to_end(&mut bytes).ok()?;
        let r: KeptRecord = serde_json::from_slice(&bytes).ok()?;
        (r.version == RECORD_VERSION && r.id == id).then_some(r)
    }

    fn open_data(&self, id: u64) -> rustix::io::Result<OwnedFd> {
        rustix::fs::openat(
            self.dir.fd(),
            data_name(id).as_str(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }

    /// Delete a data file (immutable or not).
    fn remove_data(&self, id: u64) {
        if let Ok(fd) = self.open_data(id) {
            let _ = set_immutable(&fd, false);
        }
        let _ = self.dir.remove_file(&data_name(id));
    }

    /// The keep directory (the materialization cache adopts data files
    /// from it by rename).
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The device of the backing directory's filesystem.
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// Was a file kept from directory `dir` (its other files then count
    /// as parts of the same checkpoint)?
    pub fn kept_from(&self, dir: &FileKey) -> bool {
        self.inner
            .lock()
            .dirs
            .get(dir)
            .is_some_and(|t| t.elapsed() < RECENT_FOR)
    }

    /// Keep `name` of the directory `dir` (key `dir_key`), which must be
    /// the regular file `expect`, before the caller removes or replaces
    /// it: a hard link in the keep directory, after the record is durable
    /// (the caller's unlink or rename stays atomic: the name never goes
    /// missing). `path` and `dirs` say where it was (see [`KeptRecord`]).
    pub fn keep(
        &self,
        dir: &OwnedFd,
        dir_key: FileKey,
        name: &[u8],
        path: Vec<u8>,
        dirs: Vec<(Vec<u8>, Meta)>,
        expect: FileKey,
    ) -> Result<Outcome> {
        let id = {
            let mut g = self.inner.lock();
            g.next += 1;
            g.next - 1
        };
        let rec = KeptRecord {
            version: RECORD_VERSION,
            id,
            path,
            dirs,
            ino: expect.ino,
            kept_ns: crate::util::time::now_ns(),
        };
        let bytes = serde_json::to_vec(&rec)
            .map_err(|e| Error::Corrupt(format!("encoding a keep record: {e}")))?;
        // Durable before the link: a kept file always has its record.
        self.dir.write_atomic(&record_name(id), &bytes)?;
        crate::util::fault::inject("keep-rename")?;
        // (linkat without AT_SYMLINK_FOLLOW: a symlink put at the name is
        // linked itself, never followed, and refused just below.)
        if let Err(e) = rustix::fs::linkat(
            dir,
            name,
            self.dir.fd(),
            data_name(id).as_str(),
            rustix::fs::AtFlags::empty(),
        ) {
            let _ = self.dir.remove_file(&record_name(id));
            tracing::debug!("keeping a checkpoint aside: link refused ({e})");
            return Ok(Outcome::NotKept);
        }
        let ours = self
            .open_data(id)
            .ok()
            .and_then(|fd| rustix::fs::fstat(&fd).ok().map(|st| (fd, st)))
            .filter(|(_, st)| {
                FileKey::of(st) == expect
                    && crate::util::sys::file_type(st.st_mode) == libc::S_IFREG
            });
        let Some((fd, _)) = ours else {
            // Something else was put at the name meanwhile: not ours to
            // keep (the name itself is untouched).
            let _ = self.dir.remove_file(&data_name(id));
            let _ = self.dir.remove_file(&record_name(id));
            return Ok(Outcome::NotKept);
        };
        self.inner
            .lock()
            .linked
            .insert(id, (rec, Arc::new(fd), dir_key));
        Ok(Outcome::Kept(id))
    }

    /// The name `id` was linked from is gone (the caller's unlink or
    /// rename succeeded): the file waits for a kept snapshot, immutable
    /// from now on (unless another name of it appeared meanwhile).
    pub fn seal(&self, id: u64) {
        let Some((rec, fd, dir_key)) = self.inner.lock().linked.remove(&id) else {
            return;
        };
        let alone = rustix::fs::fstat(&*fd).is_ok_and(|s| s.st_nlink == 1);
        let immutable = alone
            && match set_immutable(&fd, true) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!("a kept checkpoint could not be made immutable ({e}): it will not be served by passthrough");
                    false
                }
            };
        let size = rustix::fs::fstat(&*fd)
            .map(|s| s.st_size as u64)
            .unwrap_or(0);
        let mut g = self.inner.lock();
        if g.dirs.len() >= RECENT_DIRS {
            g.dirs.clear();
        }
        g.dirs.insert(dir_key, std::time::Instant::now());
        g.kept_total += 1;
        g.pending.insert(
            id,
            Kept {
                rec,
                fd,
                size,
                immutable,
            },
        );
    }

    /// The caller's unlink or rename failed: the link is removed, nothing
    /// is kept.
    pub fn abandon(&self, id: u64) {
        self.inner.lock().linked.remove(&id);
        let _ = self.dir.remove_file(&data_name(id));
        let _ = self.dir.remove_file(&record_name(id));
    }

    /// What waits for a kept snapshot, in the order kept. A file that is
    /// no longer the regular file kept (nothing but root can make it so)
    /// is dropped here, so that it never holds the others up.
    pub fn pending(&self) -> Vec<Kept> {
        let all: Vec<Kept> = self.inner.lock().pending.values().cloned().collect();
        let (good, bad): (Vec<Kept>, Vec<Kept>) = all.into_iter().partition(|k| {
            rustix::fs::fstat(&*k.fd).is_ok_and(|st| {
                st.st_ino == k.rec.ino && crate::util::sys::file_type(st.st_mode) == libc::S_IFREG
            })
        });
        for k in bad {
            tracing::warn!(
                path = %crate::snapshot::manifest::display_path(&k.rec.path),
                "a kept checkpoint changed type or vanished: dropped"
            );
            self.inner.lock().pending.remove(&k.rec.id);
            self.discard(k.rec.id);
        }
        good
    }

    pub fn has_pending(&self) -> bool {
        !self.inner.lock().pending.is_empty()
    }

    /// Files and bytes waiting for a kept snapshot.
    pub fn pending_totals(&self) -> (u64, u64) {
        let g = self.inner.lock();
        (
            g.pending.len() as u64,
            g.pending.values().map(|k| k.size).sum(),
        )
    }

    /// Files kept, and captured, since the daemon started.
    pub fn totals(&self) -> (u64, u64) {
        let g = self.inner.lock();
        (g.kept_total, g.captured_total)
    }

    /// `id` is in a committed snapshot: no longer pending. The caller
    /// then adopts its data file (renames it away) and calls
    /// [`Keeper::forget`], or calls [`Keeper::discard`].
    pub fn captured(&self, id: u64) -> Option<Kept> {
        let mut g = self.inner.lock();
        let k = g.pending.remove(&id)?;
        g.captured_total += 1;
        Some(k)
    }

    /// The daemon stops: files still waiting are made mutable again (so
    /// that the repository can be deleted like any directory); the next
    /// start makes them immutable before they are captured.
    pub fn release(&self) {
        for k in self.inner.lock().pending.values() {
            let _ = set_immutable(&k.fd, false);
        }
    }

    /// Drop the record of `id` (its data file was adopted).
    pub fn forget(&self, id: u64) {
        let _ = self.dir.remove_file(&record_name(id));
    }

    /// Delete `id` entirely: its data, then its record.
    pub fn discard(&self, id: u64) {
        self.remove_data(id);
        let _ = self.dir.remove_file(&record_name(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::AtFlags;

    fn meta() -> Meta {
        Meta {
            mode: libc::S_IFDIR | 0o755,
            uid: 0,
            gid: 0,
            mtime: Default::default(),
            ctime_ns: 0,
            ino: 1,
            xattrs: Vec::new(),
        }
    }

    fn key_of(dir: &OwnedFd, name: &str) -> FileKey {
        FileKey::of(&rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).unwrap())
    }

    #[test]
    fn a_kept_file_moves_with_its_record_and_survives_a_restart() {
        let t = tempfile::tempdir().unwrap();
        let backing = t.path().join("data");
        std::fs::create_dir(&backing).unwrap();
        std::fs::write(backing.join("step-1.pt"), b"weights").unwrap();
        std::fs::create_dir(t.path().join("repo")).unwrap();
        let repo = Dir::open_path(&t.path().join("repo")).unwrap();
        let bdir = crate::util::sys::open_dir_path(&backing).unwrap();
        let dev = rustix::fs::fstat(&bdir).unwrap().st_dev;
        let k = Keeper::open(&repo, dev).unwrap().unwrap();
        let dkey = FileKey::of(&rustix::fs::fstat(&bdir).unwrap());
        let expect = key_of(&bdir, "step-1.pt");
        let out = k
            .keep(
                &bdir,
                dkey,
                b"step-1.pt",
                b"data/step-1.pt".to_vec(),
                vec![(b"data".to_vec(), meta())],
                expect,
            )
            .unwrap();
        let Outcome::Kept(id) = out else {
            panic!("{out:?}")
        };
        // Linked: the name is the caller's to remove, then sealed.
        assert!(backing.join("step-1.pt").exists());
        std::fs::remove_file(backing.join("step-1.pt")).unwrap();
        k.seal(id);
        assert!(k.kept_from(&dkey));
        assert_eq!(k.pending_totals(), (1, 7));
        let p = k.pending();
        assert_eq!(p[0].rec.path, b"data/step-1.pt");
        assert_eq!(rustix::fs::fstat(&*p[0].fd).unwrap().st_ino, expect.ino);
        // Reopened (a restart): still pending, same record.
        drop(k);
        let k = Keeper::open(&repo, dev).unwrap().unwrap();
        let again = k.pending();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].rec, p[0].rec);
        // Captured and discarded: nothing left.
        let c = k.captured(id).unwrap();
        assert_eq!(c.size, 7);
        k.discard(id);
        assert!(repo
            .open_dir(layout::KEEP)
            .unwrap()
            .names()
            .unwrap()
            .is_empty());
        // Linked but its name never removed (a crash between the two):
        // dropped at the next start, and the file in BACKING is untouched
        // (not made immutable).
        std::fs::write(backing.join("step-2.pt"), b"v2").unwrap();
        let expect = key_of(&bdir, "step-2.pt");
        let out = k
            .keep(
                &bdir,
                dkey,
                b"step-2.pt",
                b"data/step-2.pt".to_vec(),
                Vec::new(),
                expect,
            )
            .unwrap();
        assert!(matches!(out, Outcome::Kept(_)), "{out:?}");
        drop(k);
        let k = Keeper::open(&repo, dev).unwrap().unwrap();
        assert!(!k.has_pending());
        assert!(repo
            .open_dir(layout::KEEP)
            .unwrap()
            .names()
            .unwrap()
            .is_empty());
        std::fs::write(backing.join("step-2.pt"), b"still writable").unwrap();
        // A record whose file never moved (a crash before the link) is
        // dropped at the next start.
        let kd = repo.open_dir(layout::KEEP).unwrap();
        kd.write_atomic("9.rec", &serde_json::to_vec(&p[0].rec).unwrap())
            .unwrap();
        let k = Keeper::open(&repo, dev).unwrap().unwrap();
        assert!(!k.has_pending());
        assert!(kd.names().unwrap().is_empty());
    }

    #[test]
    fn another_object_at_the_name_is_not_kept() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("repo")).unwrap();
        let repo = Dir::open_path(&t.path().join("repo")).unwrap();
        std::fs::write(t.path().join("a.pt"), b"x").unwrap();
        std::fs::write(t.path().join("b.pt"), b"y").unwrap();
        let bdir = crate::util::sys::open_dir_path(t.path()).unwrap();
        let st = rustix::fs::fstat(&bdir).unwrap();
        let k = Keeper::open(&repo, st.st_dev).unwrap().unwrap();
        // Asked to keep a.pt as b.pt's inode (as if swapped meanwhile).
        let wrong = key_of(&bdir, "b.pt");
        let out = k
            .keep(
                &bdir,
                FileKey::of(&st),
                b"a.pt",
                b"a.pt".to_vec(),
                Vec::new(),
                wrong,
            )
            .unwrap();
        assert_eq!(out, Outcome::NotKept);
        assert!(t.path().join("a.pt").exists() && t.path().join("b.pt").exists());
        assert!(repo
            .open_dir(layout::KEEP)
            .unwrap()
            .names()
            .unwrap()
            .is_empty());
        assert!(!k.has_pending());
        // A missing name: not kept, nothing left behind.
        let out = k
            .keep(
                &bdir,
                FileKey::of(&st),
                b"gone.pt",
                b"gone.pt".to_vec(),
                Vec::new(),
                wrong,
            )
            .unwrap();
        assert_eq!(out, Outcome::NotKept);
        assert!(repo
            .open_dir(layout::KEEP)
            .unwrap()
            .names()
            .unwrap()
            .is_empty());
        // Another filesystem's repository keeps nothing.
        assert!(Keeper::open(&repo, st.st_dev + 1).unwrap().is_none());
    }
}
