//! The per-service span rate cap (`sampling.max_spans_per_second`): a
//! token bucket per service, refilled continuously, one second deep. Past
//! it spans are dropped and counted; their requests still count in the RED
//! metrics. A capped trace loses spans at random: this protects the
//! pipeline from floods, it is not a sampler.

use std::collections::HashMap;
use std::time::Instant;

/// Token buckets by service.
#[derive(Debug)]
pub struct RateCap {
    per_second: f64,
    buckets: HashMap<String, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl RateCap {
    /// At most `per_second` spans a second per service (bursts up to one
    /// second's worth).
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            buckets: HashMap::new(),
        }
    }

    /// True if `service` may export one more span at `now`.
    pub fn allow(&mut self, service: &str, now: Instant) -> bool {
        let per_second = self.per_second;
        let bucket = match self.buckets.get_mut(service) {
            Some(bucket) => bucket,
            None => self.buckets.entry(service.to_owned()).or_insert(Bucket {
                tokens: per_second,
                refilled: now,
            }),
        };
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(per_second);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn caps_each_service_per_second() {
        let mut cap = RateCap::new(100);
        let start = Instant::now();
        // A flood of 10,000 spans over two seconds, one every 0.2 ms.
        let allowed = (0..10_000)
            .filter(|i| cap.allow("a", start + Duration::from_micros(200 * i)))
            .count();
        // One second's burst plus two seconds of refill, at most.
        assert!((200..=300).contains(&allowed), "{allowed}");
        // Another service has its own budget.
        assert!(cap.allow("b", start + Duration::from_secs(2)));
    }

    #[test]
    fn refills_after_a_pause() {
        let mut cap = RateCap::new(2);
        let start = Instant::now();
        assert!(cap.allow("a", start));
        assert!(cap.allow("a", start));
        assert!(!cap.allow("a", start));
        assert!(cap.allow("a", start + Duration::from_millis(500)));
        assert!(!cap.allow("a", start + Duration::from_millis(500)));
    }
}
