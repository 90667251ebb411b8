//! The pace of new upstream logins across all pools of the process (`--max-connect-rate`): a
//! token bucket whose rate adapts to throttling, additive increase and multiplicative decrease
//! (AIMD, as TCP does for congestion). AWS throttles IAM authentication per database, and a
//! fleet that starts or reconnects together must not keep a throttled proxy throttled: each
//! throttled login halves the rate (once per [`DECREASE_EVERY`] at most, so one volley of
//! throttled answers counts once), and the rate climbs back to `--max-connect-rate` over
//! [`RECOVERY`] of quiet.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The slowest the adapted rate goes: one login every five seconds.
const FLOOR_PER_SECOND: f64 = 0.2;
/// How long the rate takes to climb from the floor back to the configured rate.
const RECOVERY: Duration = Duration::from_secs(20);
/// Throttled logins closer together than this are one event (one halving): about one round
/// trip of a login. With a second, 50 sidecars took 7 s to come down from 20 logins/s each
/// and sent a proxy limited to 10/s 160 attempts a second (`benches/fleet.sh`).
const DECREASE_EVERY: Duration = Duration::from_millis(200);

/// Allows up to `--max-connect-rate` logins per second, with bursts of up to one second's
/// worth, less while the upstream throttles.
#[derive(Debug)]
pub struct RateLimiter {
    max_rate: f64,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// The rate now (logins per second), between the floor and `max_rate`.
    rate: f64,
    /// Tokens in the bucket (negative: reserved ahead).
    tokens: f64,
    /// When `rate` and `tokens` were last brought up to date.
    updated: Instant,
    /// The last halving.
    decreased: Option<Instant>,
}

impl RateLimiter {
    pub fn new(rate_per_second: u32) -> Self {
        let rate = f64::from(rate_per_second.max(1));
        Self {
            max_rate: rate,
            state: Mutex::new(State {
                rate,
                tokens: rate,
                updated: Instant::now(),
                decreased: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves one login and returns when it may start (now, or later when over the rate).
    pub fn reserve(&self) -> Instant {
        self.reserve_by(None).unwrap_or_else(Instant::now)
    }

    /// Reserves one login if it may start by `deadline` (a deadline already past: only if it
    /// may start now), and returns when; `None` (and nothing reserved) when it could only
    /// start later.
    pub fn reserve_by(&self, deadline: Option<Instant>) -> Option<Instant> {
        let mut state = self.lock();
        let now = Instant::now();
        self.catch_up(&mut state, now);
        let at = if state.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - state.tokens) / state.rate)
        };
        if deadline.is_some_and(|deadline| at > deadline.max(now)) {
            return None;
        }
        state.tokens -= 1.0;
        Some(at)
    }

    /// A login reserved and then not made (its client took a connection freed meanwhile):
    /// the place goes back, so that it does not delay every later login by one interval.
    pub fn unreserve(&self) {
        let mut state = self.lock();
        self.catch_up(&mut state, Instant::now());
        state.tokens = (state.tokens + 1.0).min(state.rate.max(1.0));
    }

    /// The rate is below `--max-connect-rate`: logins were throttled lately.
    pub fn is_reduced(&self) -> bool {
        self.rate() < self.max_rate
    }

    /// `--max-connect-rate`.
    pub fn max_rate(&self) -> f64 {
        self.max_rate
    }

    /// A login was throttled: halve the rate (once per [`DECREASE_EVERY`]) and take back the
    /// bucket's burst, so the next logins are spaced at the new rate.
    pub fn throttled(&self) {
        let mut state = self.lock();
        let now = Instant::now();
        self.catch_up(&mut state, now);
        if state
            .decreased
            .is_some_and(|at| now.duration_since(at) < DECREASE_EVERY)
        {
            return;
        }
        state.rate = (state.rate / 2.0).max(FLOOR_PER_SECOND.min(self.max_rate));
        state.tokens = state.tokens.min(0.0);
        state.decreased = Some(now);
    }

    /// The rate allowed now, in logins per second.
    pub fn rate(&self) -> f64 {
        let mut state = self.lock();
        self.catch_up(&mut state, Instant::now());
        state.rate
    }

    /// Refills the bucket for the time passed and lets the rate climb back (additively, from
    /// [`DECREASE_EVERY`] after the last halving on).
    fn catch_up(&self, state: &mut State, now: Instant) {
        let climbing_since = match state.decreased {
            Some(at) => state.updated.max(at + DECREASE_EVERY),
            None => state.updated,
        };
        let climbed = now.saturating_duration_since(climbing_since).as_secs_f64();
        let step = self.max_rate / RECOVERY.as_secs_f64();
        state.rate = (state.rate + climbed * step).min(self.max_rate);
        let passed = now.duration_since(state.updated).as_secs_f64();
        state.tokens = (state.tokens + passed * state.rate).min(state.rate.max(1.0));
        state.updated = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_place_given_back_goes_to_the_next_login() {
        let limiter = RateLimiter::new(10);
        let start = Instant::now();
        for _ in 0..10 {
            limiter.reserve();
        }
        assert_eq!(limiter.reserve() - start, Duration::from_millis(100));
        limiter.unreserve();
        assert_eq!(
            limiter.reserve() - start,
            Duration::from_millis(100),
            "the place given back, not the one after it"
        );
    }

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

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_rate_once_per_storm_and_it_climbs_back() {
        let limiter = RateLimiter::new(20);
        limiter.throttled();
        assert_eq!(limiter.rate(), 10.0);
        limiter.throttled();
        assert_eq!(
            limiter.rate(),
            10.0,
            "a second throttle at once is the same storm"
        );
        assert!(limiter.is_reduced());
        let start = Instant::now();
        assert_eq!(
            limiter.reserve() - start,
            Duration::from_millis(100),
            "no burst right after a throttle: spaced at the new rate"
        );
        tokio::time::advance(DECREASE_EVERY).await;
        limiter.throttled();
        assert_eq!(limiter.rate(), 5.0);
        for _ in 0..10 {
            tokio::time::advance(DECREASE_EVERY).await;
            limiter.throttled();
        }
        assert_eq!(limiter.rate(), FLOOR_PER_SECOND, "never below the floor");
        // Quiet: DECREASE_EVERY before climbing, then max/RECOVERY per second.
        tokio::time::advance(DECREASE_EVERY + RECOVERY / 2).await;
        let half = limiter.rate();
        assert!((half - (FLOOR_PER_SECOND + 10.0)).abs() < 1e-6, "{half}");
        tokio::time::advance(RECOVERY).await;
        assert_eq!(
            limiter.rate(),
            20.0,
            "back to --max-connect-rate, not beyond"
        );
        assert!(!limiter.is_reduced());
    }
}
