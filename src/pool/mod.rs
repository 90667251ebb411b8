//! Pools of logged-in upstream connections, one per [`PoolKey`], so that clients connect in
//! microseconds and IAM logins stay rare. A pool hands out [`Lease`]s: at most `--pool-size`
//! connections exist per pool (idle + leased + being opened); a client waits up to
//! `--pool-timeout` for one. Idle connections are checked before reuse and retired after
//! `--idle-timeout` or their (jittered) `--max-lifetime`; `--min-idle` are kept open. New logins
//! across all pools pass one [`RateLimiter`], which slows down while the upstream throttles them;
//! a throttled login is tried again after a backoff (`opening.rs`).

mod error;
pub mod key;
mod keyed;
mod lease;
mod opening;
pub mod rate;
pub mod reset;
mod settings;
mod slot;

use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info, warn};

use crate::upstream::{Connector, ServerConnection};
pub use error::CheckoutError;
pub use key::{KeyView, PoolKey};
use keyed::Step;
pub use keyed::{Parameters, Pool, PooledConnection};
pub use lease::Lease;
use opening::Opened;
pub use rate::RateLimiter;
pub use settings::{PoolMode, PoolSettings};
use slot::{Queued, Slot};

/// How long an idle connection may take to answer the empty query that proves it alive.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// All pools of one endpoint, the connector behind them and the login rate limit that every
/// endpoint of the process shares.
pub struct Pools {
    connector: Arc<Connector>,
    pub settings: PoolSettings,
    limiter: Arc<RateLimiter>,
    /// Hashed with foldhash, seeded per process (looked up on every login; issue 16): its keys
    /// come from local clients' startup parameters, and a per-process seed is the defence
    /// against colliding keys, not SipHash's.
    pools: Mutex<hashbrown::HashMap<PoolKey, Arc<Pool>, foldhash::fast::RandomState>>,
}

impl Pools {
    pub fn new(
        connector: Arc<Connector>,
        settings: PoolSettings,
        limiter: Arc<RateLimiter>,
    ) -> Arc<Self> {
        Arc::new(Self {
            limiter,
            connector,
            settings,
            pools: Mutex::new(hashbrown::HashMap::default()),
        })
    }

    pub fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }

    /// New logins per second allowed now (the process's, shared by every endpoint).
    pub fn login_rate(&self) -> f64 {
        self.limiter.rate()
    }

    /// The pool for a key (read in place from a client's startup packet), created on first
    /// use: only then is a [`PoolKey`] built.
    pub fn pool<'a, P>(&self, key: KeyView<'a, P>) -> Arc<Pool>
    where
        P: Iterator<Item = (&'a str, &'a str)> + Clone,
    {
        let created = {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pool) = pools.get(&key) {
                return pool.clone();
            }
            let key = key.to_key();
            let pool = Arc::new(Pool::new(key.clone()));
            pools.insert(key, pool.clone());
            pool
        };
        info!(
            pool = %created.key,
            spec = %created.key.spec_for_log(),
            "new pool (--warm-pool with this spec opens it at start)"
        );
        created
    }

    /// (idle, open) summed over the pools of `user@database`, if any exist.
    pub fn counts_for(&self, user: &str, database: &str) -> Option<(usize, usize)> {
        let matching: Vec<_> = self
            .all()
            .into_iter()
            .filter(|p| p.key.user == user && p.key.database == database)
            .collect();
        (!matching.is_empty()).then(|| {
            matching.iter().fold((0, 0), |(idle, open), pool| {
                let (i, o) = pool.counts();
                (idle + i, open + o)
            })
        })
    }

    /// (idle, open, waiting clients) summed over every pool.
    pub fn totals(&self) -> (usize, usize, usize) {
        self.all()
            .iter()
            .fold((0, 0, 0), |(idle, open, waiting), pool| {
                let state = pool.lock();
                (
                    idle + state.idle.len(),
                    open + state.open,
                    waiting + state.waiters.len(),
                )
            })
    }

    /// Pools at their size with clients waiting: `(pool, waiting clients)`.
    pub fn saturated(&self) -> Vec<(String, usize)> {
        self.all()
            .iter()
            .filter_map(|pool| {
                let state = pool.lock();
                (state.open >= self.settings.size && !state.waiters.is_empty())
                    .then(|| (pool.key.to_string(), state.waiters.len()))
            })
            .collect()
    }

    fn all(&self) -> Vec<Arc<Pool>> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.values().cloned().collect()
    }

    /// A connection of `pool`: an idle one that is still alive, a new one while the pool is
    /// below its size, or else the next one freed within `--pool-timeout` (first come, first
    /// served).
    pub async fn checkout(self: &Arc<Self>, pool: &Arc<Pool>) -> Result<Lease, CheckoutError> {
        // One clock reading for the deadline, the expiry and the idle time of a connection
        // taken at once (each reading costs ~60 instructions; transaction mode takes one
        // connection per transaction).
        let mut now = Instant::now();
        let deadline = now + self.settings.timeout;
        loop {
            let step = match pool.take_or_queue(self.settings.size, now) {
                Ok(step) => step,
                Err(receiver) => {
                    let mut queued = Queued::new(pool, receiver);
                    let handed = timeout_at(deadline, queued.handoff()).await;
                    now = Instant::now();
                    match handed {
                        Ok(Some(step)) => step,
                        // The pool went away: look again.
                        Ok(None) => continue,
                        Err(_) => return Err(self.timed_out(pool)),
                    }
                }
            };
            // From here this checkout owns one of the pool's `open`, also if it is dropped.
            let slot = Slot::held(pool);
            let mut connection = match step {
                Step::Connection(connection) => connection,
                // Boxed: logging in is rare and its state large, and the checkout's future
                // is part of every transaction's in transaction mode (boxed per transaction:
                // 3,376 bytes with it inline, 1,920 without, in a test build).
                Step::Room => {
                    match Box::pin(self.open(pool, deadline, opening::Demand::Client)).await {
                        Ok(Opened::LoggedIn(connection)) => return Ok(slot.lease(connection)),
                        Ok(Opened::Freed(connection)) => {
                            // The slot now stands for the freed connection; the room held for
                            // this client's own login goes.
                            pool.forget_one();
                            now = Instant::now();
                            connection
                        }
                        Err(error) => return Err(error),
                    }
                }
            };
            if is_alive(&mut connection.server) && self.proven(&mut connection, now, deadline).await
            {
                return Ok(slot.lease(connection));
            }
            debug!(pool = %pool.key, "idle upstream connection was closed or did not answer; replacing it");
            // Each proof is bounded by the client's wait, not only by PROBE_TIMEOUT: with every
            // idle connection slow to answer, one after the other outlasted --pool-timeout.
            now = Instant::now();
            if now >= deadline {
                return Err(self.timed_out(pool));
            }
        }
    }

    fn timed_out(&self, pool: &Pool) -> CheckoutError {
        CheckoutError::Timeout {
            pool: pool.key.to_string(),
            waited: self.settings.timeout,
            size: self.settings.size,
        }
    }

    /// An idle connection of `pool` that is still alive and was idle too briefly to need a
    /// proof, if one is free right now.
    pub fn checkout_idle(&self, pool: &Arc<Pool>) -> Option<Lease> {
        while let Some(mut connection) = pool.take_idle() {
            if connection.idle_since.elapsed() >= self.settings.probe_after {
                pool.give_back(connection);
                return None;
            }
            if is_alive(&mut connection.server) {
                return Some(Lease::new(pool, connection));
            }
            pool.forget_one();
        }
        None
    }

    /// A connection idle longer than `probe_after` (at `now`) answers an empty query within
    /// [`PROBE_TIMEOUT`] (and before `deadline`); a briefly idle one needs no proof.
    async fn proven(
        &self,
        connection: &mut PooledConnection,
        now: Instant,
        deadline: Instant,
    ) -> bool {
        if now.saturating_duration_since(connection.idle_since) < self.settings.probe_after {
            return true;
        }
        let within = PROBE_TIMEOUT.min(deadline.saturating_duration_since(now));
        reset::probe(&mut connection.server, within).await
    }

    /// Retires idle connections past their idle timeout or lifetime, or closed by the server,
    /// and opens connections up to `--min-idle`; runs until `stop` says so.
    pub async fn maintain(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let period = (self.settings.idle_timeout / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                _ = tokio::time::sleep(period) => {}
            }
            for pool in self.all() {
                self.retire_idle(&pool);
                self.top_up(&pool);
            }
        }
    }

    fn retire_idle(&self, pool: &Pool) {
        let now = Instant::now();
        let mut retired = Vec::new();
        {
            let mut state = pool.lock();
            let mut index = 0;
            while index < state.idle.len() {
                let connection = &mut state.idle[index];
                let stale = now.duration_since(connection.idle_since) >= self.settings.idle_timeout
                    || connection.expired(now)
                    || !is_alive(&mut connection.server);
                if stale {
                    retired.push(state.idle.swap_remove(index));
                } else {
                    index += 1;
                }
            }
        }
        if !retired.is_empty() {
            debug!(pool = %pool.key, count = retired.len(), "retired idle upstream connections");
        }
        for connection in retired {
            pool.forget_one();
            connection.server.close_in_background();
        }
    }

    /// Opens the pool of `key` now, with `--min-idle` connections (`--warm-pool`); the
    /// maintenance task keeps them.
    pub fn warm(self: &Arc<Self>, key: PoolKey) {
        let pool = self.pool(key.view());
        self.top_up(&pool);
    }

    fn top_up(self: &Arc<Self>, pool: &Arc<Pool>) {
        // While logins are throttled, spares wait: the proxy's logins go to clients first.
        if self.limiter.is_reduced() {
            return;
        }
        let wanted = {
            let mut state = pool.lock();
            let have = state.idle.len() + state.opening_spares;
            let room = self.settings.size.saturating_sub(state.open);
            let wanted = self.settings.min_idle.saturating_sub(have).min(room);
            state.open += wanted;
            state.opening_spares += wanted;
            wanted
        };
        for _ in 0..wanted {
            let pools = self.clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                // Spread, so that a fleet starting together, or refilling after the proxy
                // dropped every connection at once, does not log in in the same second.
                tokio::time::sleep(opening::spread_over(pools.settings.warm_up_spread)).await;
                let opened = if pools.limiter.is_reduced() {
                    None
                } else {
                    let deadline = Instant::now() + pools.settings.timeout;
                    Some(pools.open(&pool, deadline, opening::Demand::Spare).await)
                };
                pool.lock().opening_spares -= 1;
                match opened {
                    Some(Ok(Opened::LoggedIn(connection))) => pool.give_back(connection),
                    // Not for a spare (it does not wait for one); were it, the room goes.
                    Some(Ok(Opened::Freed(connection))) => {
                        pool.give_back(connection);
                        pool.forget_one();
                    }
                    // Throttled, or no login free now: the next upkeep tries again.
                    Some(Err(error))
                        if error.is_throttled()
                            || matches!(error, CheckoutError::LoginRate { .. }) =>
                    {
                        pool.forget_one()
                    }
                    Some(Err(error)) => {
                        warn!(pool = %pool.key, %error, "opening an idle upstream connection failed");
                        pool.forget_one();
                    }
                    None => pool.forget_one(),
                }
            });
        }
    }
}

/// An idle connection must have nothing to read: data or EOF means the server closed it (or
/// sent something no client asked for), so it is not handed out.
fn is_alive(server: &mut ServerConnection) -> bool {
    if !server.pending.is_empty() {
        return false;
    }
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    // Nothing arrived since the last read drained the socket (tokio's readiness, kept from
    // epoll): alive, and no syscall spent. Readiness left over from a read that filled its
    // buffer falls through to the real check.
    if server.stream.poll_socket_read_ready(&mut cx).is_pending() {
        return true;
    }
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    matches!(
        std::pin::Pin::new(&mut server.stream).poll_read(&mut cx, &mut buf),
        Poll::Pending
    )
}
