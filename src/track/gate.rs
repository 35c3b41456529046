//! The gate: every change to the live filesystem holds it shared for the
//! whole operation; the cut holds it exclusive for a moment. A snapshot
//! therefore always sits between whole operations (never inside a
//! rename, a truncation or one write request).

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Default)]
pub struct Gate {
    lock: RwLock<()>,
}

/// Held by one change in progress.
pub struct Change<'g> {
    _guard: RwLockReadGuard<'g, ()>,
}

/// Held by the cut: no change is in flight, none starts.
pub struct Frozen<'g> {
    _guard: RwLockWriteGuard<'g, ()>,
}

impl Gate {
    pub fn change(&self) -> Change<'_> {
        Change {
            _guard: self.lock.read(),
        }
    }

    pub fn freeze(&self) -> Frozen<'_> {
        Frozen {
            _guard: self.lock.write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_waits_for_changes_and_holds_new_ones() {
        let g = Gate::default();
        let c = g.change();
        assert!(
            g.lock.try_write().is_none(),
            "a change in flight blocks the cut"
        );
        drop(c);
        let f = g.freeze();
        assert!(
            g.lock.try_read().is_none(),
            "no change starts during the cut"
        );
        drop(f);
        let _c = g.change();
    }
}
