//! Opening one upstream connection for a pool: paced by the process's login rate, and when a
//! login is throttled (RDS Proxy's "too many competing requests", or AWS throttling the
//! credentials fetch), tried again after an exponential backoff with full jitter for as long
//! as the client waits (`--pool-timeout`), the rate halved meanwhile. A throttled login is
//! never retried with freshly fetched credentials and never told to the client as a rejected
//! one: the client waits while the storm passes, or gets 08004 saying it was throttled.

use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use super::{CheckoutError, Pool, PooledConnection, Pools};
use crate::upstream::error::{ConnectError, ThrottledBy};

/// The first retry waits up to this long; each later one up to twice as long as the one
/// before, up to [`BACKOFF_CAP`]. Half a second, as the AWS SDKs wait after a throttling
/// error (100 ms made 8 sidecars sharing a proxy limited to 10 logins/s send 20 attempts a
/// second: `tests/fleet.rs`).
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// No attempt starts with less of the client's wait left than this.
const LAST_ATTEMPT: Duration = Duration::from_millis(250);
/// How often a client whose login slot would come after its wait asks the lowered rate again.
const RATE_RECHECK: Duration = Duration::from_millis(500);

/// What opening got.
pub(super) enum Opened {
    /// A new connection, logged in.
    LoggedIn(PooledConnection),
    /// A connection another client gave back while this one waited to log in. The room the
    /// opener held is still counted: the caller gives it up.
    Freed(PooledConnection),
}

/// A login slot from the rate.
enum Slot {
    /// Reserved: the login may start then.
    At(Instant),
    /// A connection another client gave back while this one waited for a slot.
    Freed(PooledConnection),
}

/// Who waits for a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Demand {
    /// A client: retried while throttled, until the client's wait ends.
    Client,
    /// A spare for `--min-idle`: given up at the first throttle (the pool tries again at a
    /// later upkeep, once the rate has recovered), so that the proxy's scarce logins go to
    /// clients. In `benches/fleet.sh` with the proxy at 10 logins/s, warm-ups retrying like
    /// clients took the logins that clients were waiting for.
    Spare,
}

impl Pools {
    /// Opens one connection for `pool` before `deadline`: after the login rate allows it, and
    /// for a client again after a backoff for as long as logins are throttled.
    pub(super) async fn open(
        &self,
        pool: &Pool,
        deadline: Instant,
        demand: Demand,
    ) -> Result<Opened, CheckoutError> {
        let started = Instant::now();
        let mut attempts = 0;
        let mut throttled: Option<ConnectError> = None;
        loop {
            let allowed_at = match self.rate_slot(pool, deadline, demand).await {
                Ok(Slot::At(allowed_at)) => allowed_at,
                Ok(Slot::Freed(freed)) => return Ok(Opened::Freed(freed)),
                // After throttled attempts, the lowered rate is the throttling's doing: say so
                // with the upstream's own words.
                Err(error) => {
                    return Err(throttled.map_or(error, |last| {
                        last.into_throttled(attempts, started.elapsed()).into()
                    }));
                }
            };
            if let Some(freed) = wait_until(pool, allowed_at, demand).await {
                // The login reserved is not made: its place goes to the next one.
                self.limiter.unreserve();
                self.connector.metrics().login_backoff(Duration::ZERO);
                return Ok(Opened::Freed(freed));
            }
            attempts += 1;
            let error = match self.login(pool).await {
                Ok(connection) => {
                    self.connector.metrics().login_backoff(Duration::ZERO);
                    return Ok(Opened::LoggedIn(connection));
                }
                Err(error) => error,
            };
            match self.backoff_after(pool, &error, attempts, deadline, demand) {
                Some(backoff) => {
                    throttled = Some(error);
                    if let Some(freed) = wait_until(pool, Instant::now() + backoff, demand).await {
                        self.connector.metrics().login_backoff(Duration::ZERO);
                        return Ok(Opened::Freed(freed));
                    }
                }
                None if error.throttled_by().is_some() && demand == Demand::Client => {
                    let error = error.into_throttled(attempts, started.elapsed());
                    warn!(pool = %pool.key, %error, "login throttled until the client's wait ran out");
                    return Err(error.into());
                }
                None => return Err(error.into()),
            }
        }
    }

    /// After a failed attempt: the backoff before the next one, or `None` to give up (not
    /// throttled; a spare; or the client's wait nearly over).
    fn backoff_after(
        &self,
        pool: &Pool,
        error: &ConnectError,
        attempts: u32,
        deadline: Instant,
        demand: Demand,
    ) -> Option<Duration> {
        let by = error.throttled_by()?;
        // Only the upstream's throttling lowers the login rate: a throttled credentials
        // source is waited out by the backoff (and the cache's own pause).
        if by == ThrottledBy::Upstream {
            self.limiter.throttled();
            crate::ops::metrics::login_rate(self.limiter.rate());
        }
        if demand == Demand::Spare {
            debug!(pool = %pool.key, "a spare connection's login was throttled; left for later");
            return None;
        }
        // Clamped to leave the next attempt its share of the wait, rather than giving up on a
        // long draw with time left.
        let left = deadline.saturating_duration_since(Instant::now());
        if left < LAST_ATTEMPT {
            return None;
        }
        let backoff = full_jitter(attempts).min(left - LAST_ATTEMPT);
        self.connector.metrics().login_backoff(backoff);
        warn!(
            pool = %pool.key,
            attempts,
            backoff_ms = backoff.as_millis() as u64,
            rate = format_args!("{:.1}", self.limiter.rate()),
            "upstream login throttled; trying again after a backoff at a lower login rate"
        );
        Some(backoff)
    }

    /// A login slot for a client before `deadline`, for a spare now (it must not book the
    /// slots that clients will need). At `--max-connect-rate`, a client's slot is booked as
    /// far ahead as its deadline, and one past it is an error at once. A rate
    /// lowered by throttling climbs back, so a client books only a slot close at hand
    /// ([`RATE_RECHECK`]) and otherwise waits and asks again (taking a connection given back
    /// meanwhile) until its wait nearly ends. Failing at once told 15 of 40 clients 08004
    /// within 4 s behind a proxy admitting 5 logins a second, though all fitted in 8; booking
    /// ahead at the lowered rate then kept the logins seconds apart after the rate had climbed
    /// back (24 pools behind a proxy admitting 4 a second: served in 18–24 s, 8.5 s booking
    /// only what is close at hand; `tests/throttling.rs`).
    async fn rate_slot(
        &self,
        pool: &Pool,
        deadline: Instant,
        demand: Demand,
    ) -> Result<Slot, CheckoutError> {
        let rate_deadline = match demand {
            Demand::Client => deadline,
            Demand::Spare => Instant::now(),
        };
        let last_check = deadline.checked_sub(LAST_ATTEMPT).unwrap_or(deadline);
        loop {
            let now = Instant::now();
            let waits = demand == Demand::Client && self.limiter.is_reduced() && now < last_check;
            let horizon = if waits {
                (now + RATE_RECHECK).min(rate_deadline)
            } else {
                rate_deadline
            };
            let error = match self.reserve_rate(pool, horizon) {
                Ok(at) => return Ok(Slot::At(at)),
                Err(error) => error,
            };
            if !waits {
                return Err(error);
            }
            let recheck = (now + RATE_RECHECK).min(last_check);
            if let Some(freed) = wait_until(pool, recheck, demand).await {
                return Ok(Slot::Freed(freed));
            }
        }
    }

    /// When the login rate allows one more login (reserved), or an error at once when that
    /// would be after `deadline` (nothing reserved: the slot stays for a login that can use it).
    fn reserve_rate(&self, pool: &Pool, deadline: Instant) -> Result<Instant, CheckoutError> {
        self.limiter
            .reserve_by(Some(deadline))
            .ok_or_else(|| CheckoutError::LoginRate {
                pool: pool.key.to_string(),
                rate: self.limiter.rate(),
                max: self.limiter.max_rate(),
                reduced: self.limiter.is_reduced(),
            })
    }

    /// One login for `pool`.
    async fn login(&self, pool: &Pool) -> Result<PooledConnection, ConnectError> {
        let started = Instant::now();
        let mut server = self
            .connector
            .connect(&pool.key.user, &pool.key.startup_parameters())
            .await?;
        info!(
            pool = %pool.key,
            login_ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
            "opened upstream connection"
        );
        server.parameters = pool.learn_parameters(server.parameters);
        let now = Instant::now();
        Ok(PooledConnection {
            server,
            expires: now.checked_add(jittered(self.settings.max_lifetime)),
            idle_since: now,
        })
    }
}

/// Waits until `until` before a login. A client takes a connection given back meanwhile
/// instead (a spare does not: it would only put it back).
async fn wait_until(pool: &Pool, until: Instant, demand: Demand) -> Option<PooledConnection> {
    if until <= Instant::now() {
        return None;
    }
    match demand {
        Demand::Client => pool.freed_before(until).await,
        Demand::Spare => {
            sleep_until(until).await;
            None
        }
    }
}

/// The wait before retry number `attempt` (from 1): anywhere from zero up to
/// `BACKOFF_BASE × 2^(attempt-1)`, capped ("full jitter": retries of a fleet spread over the
/// whole window instead of arriving together).
pub fn full_jitter(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(rand::random::<f64>())
}

/// A random point in `[0, window)`: when one of a fleet's synchronised actions runs.
pub fn spread_over(window: Duration) -> Duration {
    window.mul_f64(rand::random::<f64>())
}

/// max_lifetime ± 10 %.
fn jittered(lifetime: Duration) -> Duration {
    let factor = 0.9 + rand::random::<f64>() * 0.2;
    lifetime.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_its_ceiling_up_to_the_cap_with_full_jitter() {
        let most = |attempt| (0..2000).map(|_| full_jitter(attempt)).max();
        let least = |attempt| (0..2000).map(|_| full_jitter(attempt)).min();
        for (attempt, ceiling) in [(1, 500), (2, 1000), (3, 2000), (6, 10_000), (40, 10_000)] {
            let ceiling = Duration::from_millis(ceiling);
            let highest = most(attempt).unwrap_or_default();
            assert!(highest <= ceiling, "attempt {attempt}: {highest:?}");
            assert!(
                highest >= ceiling.mul_f64(0.9),
                "attempt {attempt}: {highest:?}"
            );
            assert!(least(attempt).unwrap_or_default() <= ceiling.mul_f64(0.1));
        }
    }
}
