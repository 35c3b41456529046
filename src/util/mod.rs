//! Small helpers shared by several modules.

pub mod bytes;
pub mod calendar;
pub mod dirfd;
pub mod display;
pub mod durable;
pub mod fault;
pub mod mountinfo;
pub mod panic;
pub mod pool;
pub mod progress;
pub mod ratelimit;
pub mod sys;
pub mod time;
pub mod walk;
