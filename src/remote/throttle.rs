//! An average upload rate limit: each upload reserves its bytes' share
//! of time on one shared clock and waits for its turn. Over any long
//! stretch the rate stays under the limit; a single object is sent at
//! the link's speed (object PUTs cannot be paced inside).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub struct Throttle {
    bytes_per_sec: Option<u64>,
    next_free: Mutex<Option<Instant>>,
}

impl Throttle {
    pub fn new(bytes_per_sec: Option<u64>) -> Throttle {
        Throttle {
            bytes_per_sec: bytes_per_sec.filter(|&r| r > 0),
            next_free: Mutex::new(None),
        }
    }

    /// How long to wait before sending `n` bytes (the time is reserved).
    pub fn reserve(&self, n: u64, now: Instant) -> Duration {
        let Some(rate) = self.bytes_per_sec else {
            return Duration::ZERO;
        };
        let mut next = self.next_free.lock();
        let start = match *next {
            Some(t) if t > now => t,
            _ => now,
        };
        *next = Some(start + Duration::from_secs_f64(n as f64 / rate as f64));
        start - now
    }

    /// Wait for the turn of `n` bytes.
    pub fn take(&self, n: u64) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_space_uploads_at_the_rate() {
        let t = Throttle::new(Some(1000));
        let now = Instant::now();
        assert_eq!(t.reserve(500, now), Duration::ZERO);
        assert_eq!(t.reserve(1000, now), Duration::from_millis(500));
        assert_eq!(t.reserve(1, now), Duration::from_millis(1500));
        // Idle time is not banked beyond now.
        let later = now + Duration::from_secs(10);
        assert_eq!(t.reserve(1, later), Duration::ZERO);
        assert_eq!(Throttle::new(None).reserve(1 << 30, now), Duration::ZERO);
    }
}
