//! Fault injection points at each durability step, for tests. Compiled to
//! nothing unless the `failpoints` feature is on; then configured with
//! `FAILPOINTS="name=1*return(error)"` (fail once with an I/O error) or
//! `return(crash)` (abort the process, like kill -9, at that point).
//!
//! Points: `pack-write`, `pack-fsync`, `dir-fsync`, `rename`,
//! `index-insert`, `index-flush`, `manifest-commit`; forget:
//! `record-rewrite`, `record-remove`; gc: `gc-condemned`, `gc-repacked`,
//! `gc-unindexed`, `gc-unlink`.

use crate::error::Result;

/// Fail here if the fail point `name` says so.
#[inline]
pub fn inject(name: &'static str) -> Result<()> {
    fail::fail_point!(name, |arg: Option<String>| {
        if arg.as_deref() == Some("crash") {
            std::process::abort();
        }
        Err(crate::error::Error::io(
            "injected failure",
            name,
            std::io::Error::other(format!("fail point {name}")),
        ))
    });
    let _ = name;
    Ok(())
}
