//! The connections of one pool key ([`Pool`]): the idle ones, how many exist, and the clients
//! waiting for one, first come first served, under one short lock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, oneshot};
use tokio::time::{Instant, sleep_until};

use super::PoolKey;
use crate::protocol::messages;
use crate::upstream::ServerConnection;

/// An upstream connection with its pool bookkeeping.
#[derive(Debug)]
pub struct PooledConnection {
    pub server: ServerConnection,
    /// When its lifetime ends (`None`: a lifetime past the clock's range). Kept as an instant,
    /// not as its start and length, so the check at each checkout and release is a compare.
    pub(super) expires: Option<Instant>,
    pub(super) idle_since: Instant,
}

impl PooledConnection {
    pub(super) fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|expires| now >= expires)
    }
}

pub(super) struct PoolState {
    pub(super) idle: Vec<PooledConnection>,
    /// Idle + leased + being opened.
    pub(super) open: usize,
    /// Spare connections being opened for `--min-idle` (counted in `open`, not yet idle), so
    /// that the next upkeep does not start them again.
    pub(super) opening_spares: usize,
    /// Clients waiting for a connection, first come first served.
    pub(super) waiters: VecDeque<oneshot::Sender<Handoff>>,
    /// Clients holding room while they wait to log in (a backoff after a throttled login, or
    /// the login rate): a connection given back meanwhile wakes them ([`Pool::freed_before`]).
    pub(super) waiting_to_open: usize,
}

/// What a waiting client is handed.
pub(super) enum Handoff {
    /// A connection someone released.
    Connection(Box<PooledConnection>),
    /// Room to open a new connection (already counted in `open`).
    Room,
}

/// What a checkout gets: a connection (at once from the idle list, unboxed, or from a
/// waiter's handoff) or room to open one.
pub(super) enum Step {
    Connection(PooledConnection),
    Room,
}

impl From<Handoff> for Step {
    fn from(handoff: Handoff) -> Self {
        match handoff {
            Handoff::Connection(connection) => Step::Connection(*connection),
            Handoff::Room => Step::Room,
        }
    }
}

/// A ParameterStatus set, shared.
/// One `Arc` per distinct set: every connection of a pool, and every client greeted from it,
/// shares its pool's (a PostgreSQL 15 set is 13 pairs, 26 strings: ~1.5 KiB each connection
/// held on its own); a connection whose set changes (a SET) gets its own copy.
pub type Parameters = Arc<Vec<(String, String)>>;

/// A pool's known ParameterStatus set and its messages, encoded once: a login greets its
/// client with a copy of them (the 13 messages of a PostgreSQL 15 set encoded anew for each
/// login cost ~1,500 of the 34,000 instructions of a transaction-mode `pgbench -C`
/// transaction, callgrind, issue 16).
struct KnownParameters {
    set: Parameters,
    messages: Bytes,
}

impl KnownParameters {
    fn new(set: Parameters) -> Self {
        let messages = encode_parameter_status(&set);
        Self { set, messages }
    }
}

/// The ParameterStatus messages of `parameters`, in order.
pub fn encode_parameter_status(parameters: &[(String, String)]) -> Bytes {
    let mut messages = BytesMut::new();
    for (name, value) in parameters {
        messages::parameter_status(&mut messages, name, value);
    }
    messages.freeze()
}

/// The connections of one key.
pub struct Pool {
    pub key: PoolKey,
    pub(super) state: Mutex<PoolState>,
    /// The ParameterStatus set of the latest connection opened: what a client is greeted
    /// with when it logs in while no connection is free (`None` until one login succeeded).
    known_parameters: Mutex<Option<KnownParameters>>,
    /// Wakes one client waiting to open when a connection goes to the idle list while
    /// `waiting_to_open` > 0.
    freed: Notify,
}

impl Pool {
    pub(super) fn new(key: PoolKey) -> Self {
        Self {
            key,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
                opening_spares: 0,
                waiters: VecDeque::new(),
                waiting_to_open: 0,
            }),
            known_parameters: Mutex::new(None),
            freed: Notify::new(),
        }
    }

    /// The ParameterStatus set of the latest connection opened, once one was.
    pub fn known_parameters(&self) -> Option<Parameters> {
        self.known_parameters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|known| known.set.clone())
    }

    /// The ParameterStatus messages of `parameters`: the pool's encoded copy when they are
    /// its known set (the shared one), else encoded now.
    pub fn parameter_status_messages(&self, parameters: &Parameters) -> Bytes {
        let known = self
            .known_parameters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &*known {
            Some(known) if Arc::ptr_eq(&known.set, parameters) => known.messages.clone(),
            _ => {
                drop(known);
                encode_parameter_status(parameters)
            }
        }
    }

    /// Records the ParameterStatus set of a connection just opened, and returns the pool's
    /// shared copy of it (the one already known when equal).
    pub(super) fn learn_parameters(&self, parameters: Parameters) -> Parameters {
        let mut known = self
            .known_parameters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &*known {
            Some(shared) if *shared.set == *parameters => shared.set.clone(),
            _ => {
                *known = Some(KnownParameters::new(parameters.clone()));
                parameters
            }
        }
    }

    /// An idle connection that has not expired, without waiting or opening one.
    pub(super) fn take_idle(&self) -> Option<PooledConnection> {
        let mut state = self.lock();
        let now = Instant::now();
        while let Some(candidate) = state.idle.pop() {
            if !candidate.expired(now) {
                return Some(candidate);
            }
            state.open -= 1;
        }
        None
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection that has not expired at `now`, else room for a new one while the
    /// pool has fewer than `size`, else a place in the queue of waiters.
    /// Not boxed when taken at once: one allocation fewer per transaction in transaction mode.
    pub(super) fn take_or_queue(
        &self,
        size: usize,
        now: Instant,
    ) -> Result<Step, oneshot::Receiver<Handoff>> {
        let mut state = self.lock();
        while let Some(candidate) = state.idle.pop() {
            if candidate.expired(now) {
                state.open -= 1;
                continue;
            }
            return Ok(Step::Connection(candidate));
        }
        if state.open < size {
            state.open += 1;
            return Ok(Step::Room);
        }
        let (sender, receiver) = oneshot::channel();
        state.waiters.push_back(sender);
        Err(receiver)
    }

    /// (idle, open) counts.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.idle.len(), state.open)
    }

    /// A connection is gone: its room goes to the first waiting client, if any.
    pub(super) fn forget_one(&self) {
        let mut state = self.lock();
        while let Some(waiter) = state.waiters.pop_front() {
            if waiter.send(Handoff::Room).is_ok() {
                return;
            }
        }
        state.open -= 1;
    }

    /// A connection is free: it goes to the first waiting client, else to the idle list.
    pub(super) fn give_back(&self, connection: PooledConnection) {
        let mut state = self.lock();
        let mut connection = connection;
        // Boxed only for a waiter: most returns go to the idle list, one allocation fewer per
        // transaction in transaction mode.
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.send(Handoff::Connection(Box::new(connection))) {
                Ok(()) => return,
                Err(Handoff::Connection(back)) => connection = *back,
                Err(Handoff::Room) => return,
            }
        }
        state.idle.push(connection);
        // Read under the lock already held: no cost per transaction when nobody waits.
        let wake = state.waiting_to_open > 0;
        drop(state);
        if wake {
            // One waiter: only one can take the connection (a waiter dropped before it ran
            // passes the wake on, tokio's `notify_one` guarantee).
            self.freed.notify_one();
        }
    }

    /// For a client that holds room to open a connection but has to wait first (a backoff
    /// after a throttled login, or the login rate): a connection given back meanwhile, else
    /// `None` at `until`. Without it, a client in a backoff during a login storm kept trying
    /// to log in while a connection sat idle in its pool. The caller still holds its room.
    pub(super) async fn freed_before(&self, until: Instant) -> Option<PooledConnection> {
        let _waiting = WaitingToOpen::new(self);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Queued for `notify_one` before looking, so that a connection given back after
            // the look wakes this wait.
            freed.as_mut().enable();
            if let Some(connection) = self.take_idle() {
                return Some(connection);
            }
            tokio::select! {
                // A connection freed as the wait ends is still taken.
                biased;
                () = &mut freed => {}
                () = sleep_until(until) => return self.take_idle(),
            }
        }
    }
}

/// Counts a client in [`PoolState::waiting_to_open`] for as long as it lives (also when its
/// wait is dropped).
struct WaitingToOpen<'a>(&'a Pool);

impl<'a> WaitingToOpen<'a> {
    fn new(pool: &'a Pool) -> Self {
        pool.lock().waiting_to_open += 1;
        Self(pool)
    }
}

impl Drop for WaitingToOpen<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting_to_open -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(time_zone: &str) -> Parameters {
        Arc::new(vec![
            ("client_encoding".to_owned(), "UTF8".to_owned()),
            ("TimeZone".to_owned(), time_zone.to_owned()),
        ])
    }

    #[test]
    fn connections_with_the_same_parameters_share_one_copy_and_a_change_copies() {
        let pool = Pool::new(PoolKey::new("app", "db", Vec::new()));
        let first = pool.learn_parameters(set("UTC"));
        let second = pool.learn_parameters(set("UTC"));
        assert!(
            Arc::ptr_eq(&first, &second),
            "equal sets share the pool's copy"
        );
        let mut changed = second.clone();
        crate::protocol::framing::set_parameter(
            Arc::make_mut(&mut changed),
            "TimeZone".to_owned(),
            "Europe/Paris".to_owned(),
        );
        assert_eq!(
            first[1].1, "UTC",
            "a SET on one connection leaves the shared copy"
        );
        let other = pool.learn_parameters(set("Asia/Tokyo"));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(
            pool.known_parameters().map(|p| p[1].1.clone()).as_deref(),
            Some("Asia/Tokyo")
        );
    }

    #[test]
    fn a_greeting_copies_the_known_sets_messages_and_encodes_any_other() {
        let pool = Pool::new(PoolKey::new("app", "db", Vec::new()));
        let known = pool.learn_parameters(set("UTC"));
        let expected = encode_parameter_status(&known);
        assert!(expected.starts_with(b"S\0\0\0\x19client_encoding\0UTF8\0"));
        assert_eq!(pool.parameter_status_messages(&known), expected);
        // An equal set that is not the shared one, and a changed one: encoded from their own.
        assert_eq!(pool.parameter_status_messages(&set("UTC")), expected);
        let paris = set("Europe/Paris");
        let messages = pool.parameter_status_messages(&paris);
        assert!(messages.ends_with(b"TimeZone\0Europe/Paris\0"));
        assert_eq!(messages, encode_parameter_status(&paris));
    }
}
