//! Restart pacing: exponential backoff between restarts and the start limit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Delay before the next restart: `base`, doubling per consecutive failed run, up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    consecutive: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            consecutive: 0,
        }
    }

    /// The delay for the next restart; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.consecutive.min(20);
        self.consecutive = self.consecutive.saturating_add(1);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A run that lasted long enough (or became healthy) starts the sequence over.
    pub fn reset(&mut self) {
        self.consecutive = 0;
    }
}

/// At most `burst` starts within any `interval`.
#[derive(Debug, Clone)]
pub struct StartLimit {
    burst: u32,
    interval: Duration,
    starts: VecDeque<Instant>,
}

impl StartLimit {
    pub fn new(burst: u32, interval: Duration) -> StartLimit {
        StartLimit {
            burst,
            interval,
            starts: VecDeque::new(),
        }
    }

    pub fn record(&mut self, now: Instant) {
        self.starts.push_back(now);
        self.forget_before(now);
    }

    /// Whether another start at `now` stays within the limit.
    pub fn allows(&mut self, now: Instant) -> bool {
        self.forget_before(now);
        (self.starts.len() as u32) < self.burst
    }

    fn forget_before(&mut self, now: Instant) {
        while let Some(&t) = self.starts.front() {
            if now.saturating_duration_since(t) >= self.interval {
                self.starts.pop_front();
            } else {
                break;
            }
        }
        while self.starts.len() as u32 > self.burst {
            self.starts.pop_front();
        }
    }

    /// Starts the count over (after a manual start).
    pub fn clear(&mut self) {
        self.starts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        let mut huge = Backoff::new(Duration::from_secs(1), Duration::from_secs(3600));
        for _ in 0..100 {
            assert!(huge.next_delay() <= Duration::from_secs(3600));
        }
    }

    #[test]
    fn start_limit_counts_starts_inside_the_interval() {
        let t0 = Instant::now();
        let mut l = StartLimit::new(3, Duration::from_secs(10));
        for i in 0..3 {
            assert!(l.allows(t0 + Duration::from_secs(i)));
            l.record(t0 + Duration::from_secs(i));
        }
        assert!(!l.allows(t0 + Duration::from_secs(5)));
        // The first start leaves the window at t0 + 10s.
        assert!(l.allows(t0 + Duration::from_secs(10)));
    }
}
