//! The checkpoint fast path: which files may be written by the kernel
//! straight to the backing file (FUSE passthrough for writes), without
//! their bytes crossing the daemon.
//!
//! A file qualifies when it is created, or truncated on open, by a name
//! matching the checkpoint patterns (the default set below, or the
//! mount's own, plus its `--on-close` globs). Such a file is tracked as
//! wholly changed, and a snapshot cut while it is open for writing holds
//! its last closed version (see `track::cut` and docs/semantics.md).

use globset::{Glob, GlobSet, GlobSetBuilder};

/// The well-known checkpoint suffixes: PyTorch (`torch.save`, Lightning,
/// distributed checkpoint shards) and safetensors.
pub const DEFAULT_PATTERNS: &[&str] = &["*.safetensors", "*.pt", "*.pth", "*.ckpt", "*.distcp"];

/// Whether `path` (relative to the mount root) is the file a framework
/// writes last into a checkpoint folder: a torch.distributed.checkpoint
/// folder's `.metadata`, or a Hugging Face Trainer `checkpoint-N/`
/// folder's `trainer_state.json`. Closing one completes the checkpoint.
pub fn is_marker(path: &[u8]) -> bool {
    let mut it = path.rsplit(|b| *b == b'/');
    let name = it.next().unwrap_or(path);
    match name {
        b".metadata" => true,
        b"trainer_state.json" => it.next().is_some_and(|d| d.starts_with(b"checkpoint-")),
        _ => false,
    }
}

/// Whether a file named `name` may be a checkpoint folder's marker (its
/// folder's name decides: see [`is_marker`]).
pub fn may_be_marker(name: &[u8]) -> bool {
    matches!(name, b".metadata" | b"trainer_state.json")
}

/// A set of checkpoint patterns, matched like `--on-close` globs: against
/// the path relative to the mount root, or against the file name.
#[derive(Clone, Debug)]
pub struct CheckpointPatterns {
    set: GlobSet,
    /// Some pattern has a `/` (the path must be known to match it).
    by_path: bool,
    patterns: Vec<String>,
}

impl CheckpointPatterns {
    /// Build from glob patterns; a bad pattern is an error naming it.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<CheckpointPatterns, String> {
        let mut b = GlobSetBuilder::new();
        let mut by_path = false;
        let mut kept = Vec::new();
        for p in patterns {
            let p = p.as_ref();
            let g = Glob::new(p).map_err(|e| format!("bad checkpoint pattern {p:?}: {e}"))?;
            b.add(g);
            by_path |= p.contains('/');
            kept.push(p.to_string());
        }
        let set = b
            .build()
            .map_err(|e| format!("bad checkpoint patterns: {e}"))?;
        Ok(CheckpointPatterns {
            set,
            by_path,
            patterns: kept,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Does the file `name` match? `path` gives its path relative to the
    /// mount root; it is asked for only when a pattern needs it.
    pub fn matches(&self, name: &[u8], path: impl FnOnce() -> Option<Vec<u8>>) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let n = String::from_utf8_lossy(name);
        if self.set.is_match(n.as_ref()) {
            return true;
        }
        if !self.by_path {
            return false;
        }
        match path() {
            Some(p) => self.set.is_match(String::from_utf8_lossy(&p).as_ref()),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        let p = CheckpointPatterns::new(DEFAULT_PATTERNS).unwrap();
        assert!(p.matches(b"model.safetensors", || None));
        assert!(p.matches(b"epoch=3.ckpt", || None));
        assert!(!p.matches(b"model.safetensors.tmp", || None));
        assert!(!p.matches(b"data.db", || panic!("no path pattern")));
        let p = CheckpointPatterns::new(&["ckpt/**/*.bin"]).unwrap();
        assert!(p.matches(b"a.bin", || Some(b"ckpt/x/a.bin".to_vec())));
        assert!(!p.matches(b"a.bin", || Some(b"data/a.bin".to_vec())));
        assert!(!p.matches(b"a.bin", || None));
        let none = CheckpointPatterns::new::<&str>(&[]).unwrap();
        assert!(!none.matches(b"x.pt", || None));
        assert!(CheckpointPatterns::new(&["a[b"]).is_err());
    }

    #[test]
    fn markers_of_completed_checkpoint_folders() {
        assert!(is_marker(b"run/step-3/.metadata"));
        assert!(is_marker(b".metadata"));
        assert!(is_marker(b"out/checkpoint-500/trainer_state.json"));
        assert!(!is_marker(b"out/trainer_state.json"));
        assert!(!is_marker(b"trainer_state.json"));
        assert!(!is_marker(b"run/step-3/metadata"));
        assert!(may_be_marker(b"trainer_state.json") && !may_be_marker(b"x.json"));
    }
}
