//! Kernel timestamps are CLOCK_MONOTONIC; spans need Unix time. The offset
//! between the two is measured at start and re-measured on every refresh, so
//! a wall-clock step (NTP) shows up in new spans within one tick.

use std::sync::atomic::{AtomicI64, Ordering};

/// Converts monotonic nanoseconds to Unix epoch nanoseconds.
#[derive(Debug)]
pub struct Clock {
    realtime_minus_monotonic: AtomicI64,
}

fn now_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

impl Default for Clock {
    fn default() -> Self {
        let clock = Self {
            realtime_minus_monotonic: AtomicI64::new(0),
        };
        clock.refresh();
        clock
    }
}

impl Clock {
    /// Re-measures the offset.
    pub fn refresh(&self) {
        let offset = now_ns(libc::CLOCK_REALTIME) - now_ns(libc::CLOCK_MONOTONIC);
        self.realtime_minus_monotonic
            .store(offset, Ordering::Relaxed);
    }

    /// Current CLOCK_MONOTONIC time, as the kernel's `bpf_ktime_get_ns`.
    pub fn monotonic_now_ns() -> u64 {
        now_ns(libc::CLOCK_MONOTONIC) as u64
    }

    /// Unix nanoseconds for a monotonic timestamp.
    pub fn to_unix_ns(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i64 + self.realtime_minus_monotonic.load(Ordering::Relaxed)).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_now_to_about_now() {
        let clock = Clock::default();
        let unix = clock.to_unix_ns(Clock::monotonic_now_ns());
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(unix.abs_diff(system) < 1_000_000_000, "{unix} vs {system}");
    }
}
