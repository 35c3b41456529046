//! Directory pins: a descriptor of every directory whose entries changed
//! in the current epoch, so the cut can list it even if the kernel has
//! forgotten the directory (and no path reaches it any more).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use parking_lot::Mutex;

use super::journal::FileKey;

#[derive(Default)]
pub struct DirPins {
    pins: Mutex<HashMap<FileKey, Arc<OwnedFd>>>,
}

impl DirPins {
    /// Keep a directory reachable until the next cut (the first
    /// descriptor of an epoch is kept).
    pub fn pin(&self, key: FileKey, fd: Arc<OwnedFd>) {
        self.pins.lock().entry(key).or_insert(fd);
    }

    /// The pins of the epoch being frozen (new ones go to the next).
    pub fn take(&self) -> HashMap<FileKey, Arc<OwnedFd>> {
        std::mem::take(&mut *self.pins.lock())
    }
}
