//! The emulator's IAM login throttle, as RDS Proxy throttles IAM authentication: a limit on
//! logins per second shared by every connection (a sliding one-second window over the logins
//! let through), answered with RDS Proxy's "too many competing requests" message; plus the
//! test's "throttle the next N logins" switch. It counts, per second since the emulator
//! started, the logins let through and the ones throttled, so tests and the fleet benchmark can
//! report the login rate the proxy saw.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// RDS Proxy's answer to a throttled IAM login (FATAL 28P01).
pub const THROTTLED_MESSAGE: &str =
    "The IAM authentication failed because of too many competing requests. Try again later.";

/// Logins let through and throttled in one second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoginSecond {
    pub accepted: u64,
    pub throttled: u64,
}

/// The throttle and its counters.
#[derive(Debug)]
pub struct LoginThrottle {
    started: Instant,
    /// Logins per second let through; `None` for no limit.
    limit: Option<u32>,
    /// Logins the test asked to throttle regardless of the rate.
    forced: AtomicU64,
    state: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// When the logins let through in the last second were.
    recent: VecDeque<Instant>,
    /// Indexed by whole seconds since `started`.
    seconds: Vec<LoginSecond>,
}

impl LoginThrottle {
    pub fn new(limit: Option<u32>) -> Self {
        Self {
            started: Instant::now(),
            limit,
            forced: AtomicU64::new(0),
            state: Mutex::new(Window::default()),
        }
    }

    /// Throttles the next `n` logins whatever the rate.
    pub fn throttle_next(&self, n: u64) {
        self.forced.store(n, Ordering::SeqCst);
    }

    /// Decides one login: `true` when it is throttled. Counted either way.
    pub fn check(&self) -> bool {
        let forced = self
            .forced
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let now = Instant::now();
        let mut window = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while window
            .recent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(1))
        {
            window.recent.pop_front();
        }
        let over = self
            .limit
            .is_some_and(|limit| window.recent.len() >= limit as usize);
        let throttled = forced || over;
        if !throttled {
            window.recent.push_back(now);
        }
        let second = now.duration_since(self.started).as_secs() as usize;
        if window.seconds.len() <= second {
            window.seconds.resize(second + 1, LoginSecond::default());
        }
        let counts = &mut window.seconds[second];
        if throttled {
            counts.throttled += 1;
        } else {
            counts.accepted += 1;
        }
        throttled
    }

    /// Logins let through and throttled in each second since the emulator started.
    pub fn per_second(&self) -> Vec<LoginSecond> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seconds
            .clone()
    }

    /// Whole seconds since the emulator started.
    pub fn second_now(&self) -> usize {
        self.started.elapsed().as_secs() as usize
    }

    /// The limit in logins per second, if any.
    pub fn limit(&self) -> Option<u32> {
        self.limit
    }
}
