//! A token bucket for new upstream logins across all pools (`--max-connect-rate`): AWS throttles
//! IAM authentication, and a burst of starting tasks must not trip it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Allows `rate` acquisitions per second with bursts of up to `rate`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(rate_per_second: u32) -> Self {
        let rate = f64::from(rate_per_second.max(1));
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Reserves one token and returns when it may be used (now, or later when over the rate).
    pub fn reserve(&self) -> Instant {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let (tokens, last) = *state;
        let refilled = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.rate);
        let left = refilled - 1.0;
        *state = (left, now);
        if left >= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(-left / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_spaces_out() {
        let limiter = RateLimiter::new(10);
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(limiter.reserve(), start, "the burst is free");
        }
        let eleventh = limiter.reserve();
        assert_eq!(eleventh - start, Duration::from_millis(100));
        let twelfth = limiter.reserve();
        assert_eq!(twelfth - start, Duration::from_millis(200));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(limiter.reserve(), Instant::now(), "refilled");
    }
}
