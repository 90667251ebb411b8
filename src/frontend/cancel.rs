//! Cancel keys. Each client gets a BackendKeyData the sidecar made up; this registry maps it to
//! what serves that client right now ([`Serving`]: an upstream connection with its server key,
//! one without a key as behind RDS Proxy, or nothing between transactions in transaction mode),
//! so a CancelRequest, which arrives on a fresh connection, reaches that connection and no
//! other. Each client also has a `Closer` its session listens to, for a cancel emulated by
//! closing the upstream connection and for a shutdown drain, and the session's protocol state,
//! which a cancel reads to know what runs. Unknown keys are dropped silently,
//! as PostgreSQL does. A client's entry is its own (`ClientSlot`): re-pointing it at every
//! transaction never takes the registry's lock.
//!
//! A forwarded cancel is in flight from the moment it is claimed (its connection open, the
//! client still served by that server and its statement still running) until the server
//! closed the cancel's connection, by which time the server has signalled its backend. In
//! transaction mode the client's statement may end meanwhile; its connection must not go to
//! another client until then, or the signal lands on that client's statement (pgbouncer#245,
//! fixed the same way in pgbouncer#717). So a session releases a connection only once its
//! client's cancels settled ([`CancelKeyGuard::release`]), and closes it instead when one
//! ended without knowing whether it was delivered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::forward::SyncState;
use crate::forward::closer::Closer;
use crate::pool::Lease;

#[path = "cancel_pointing.rs"]
mod pointing;
use pointing::Pointing;

/// How long a released connection waits for its client's cancels in flight at most: beyond
/// their own deadline (the upstream connect timeout), closed rather than pooled.
const SETTLE_BOUND: Duration = Duration::from_secs(60);

/// Notified when some client's last cancel in flight settles; each waiting release looks at
/// its own client's count. One for the process, not one a client: an idle client's memory is
/// held to 1 KiB, and a release waits for a cancel rarely.
static SETTLED: Notify = Notify::const_new();

/// What a cancel request does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum CancelMode {
    /// Send a CancelRequest to the upstream connection serving the client (default); where
    /// that connection has no server key (RDS Proxy sends none) or forwarding fails, close it
    /// and tell the client 57014.
    Forward,
    /// Always close that upstream connection and tell the client 57014.
    Close,
}

/// The server-side key a client's cancel must be sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerKey {
    pub pid: i32,
    pub secret: i32,
}

/// What serves a client right now, as far as a cancel is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Serving {
    /// No upstream connection (transaction mode, between transactions).
    #[default]
    Nothing,
    /// No upstream connection yet: the client's statement waits for one (its pool is full).
    Waiting,
    /// An upstream connection whose server sent this key.
    Key(ServerKey),
    /// An upstream connection without a key (RDS Proxy sends none): a cancel is emulated.
    Keyless,
}

impl Serving {
    /// An upstream connection with the key its server sent, if any.
    pub fn connection(backend_key: Option<(i32, i32)>) -> Self {
        match backend_key {
            Some((pid, secret)) => Self::Key(ServerKey { pid, secret }),
            None => Self::Keyless,
        }
    }
}

/// What a client key leads to.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// What serves the client now.
    pub serving: Serving,
    slot: Arc<ClientSlot>,
}

impl CancelTarget {
    /// Asks the client's session to close its upstream connection (an emulated cancel).
    pub fn close(&self) {
        self.slot.closer.close();
    }

    /// Where the client's answers and the server's progress stand now, if the client waits
    /// for an answer (a statement runs).
    pub fn running(&self) -> Option<Mark> {
        let state = &self.slot.state;
        (!state.owes_nothing()).then(|| Mark {
            answered: state.answered(),
            heard: state.heard(),
        })
    }

    /// What serves the client right now (it changes between transactions).
    pub fn serving_now(&self) -> Serving {
        self.slot.serving()
    }

    /// Claims a cancel for `server` if it still serves the client and the statement running
    /// at `mark` has not ended, atomically with the session's re-pointing of the key; the
    /// claim holds the connection's release until it is dropped (see the module).
    pub fn claim(&self, server: ServerKey, mark: Mark) -> Option<InFlight> {
        let mut pointing = self.slot.pointing();
        if pointing.serving() != Serving::Key(server)
            || !self.still_running(mark)
            || pointing.cancels == u8::MAX
        {
            return None;
        }
        pointing.cancels += 1;
        Some(InFlight {
            slot: self.slot.clone(),
            delivered: false,
        })
    }

    /// The statement running at `mark` has not ended.
    pub fn still_running(&self, mark: Mark) -> bool {
        let state = &self.slot.state;
        state.answered() == mark.answered && !state.owes_nothing()
    }

    /// Asks the session to close the upstream connection unless the statement running at
    /// `mark` has ended by the time it looks (a forward that failed).
    pub fn close_unless_answered(&self, mark: Mark) {
        self.slot.closer.close_unless_answered(mark.answered);
    }

    /// After a forwarded cancel's grace: the statement ended, or the server is still sending
    /// (a large answer, a slow client: the grace starts again from here), or it went silent,
    /// in which case the close is asked for.
    pub fn after_grace(&self, mark: Mark) -> Grace {
        if !self.still_running(mark) {
            return Grace::Ended;
        }
        let state = &self.slot.state;
        if state.heard() != mark.heard {
            return Grace::Progress(Mark {
                heard: state.heard(),
                ..mark
            });
        }
        self.close_unless_answered(mark);
        Grace::Closed
    }
}

/// Where a client stood when a cancel came: the answers (ReadyForQuery) it had got and the
/// reads from its server so far, to tell later whether the statement ended or moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    answered: u32,
    heard: u32,
}

/// What a forwarded cancel's grace found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grace {
    Ended,
    Progress(Mark),
    Closed,
}

/// A forwarded cancel claimed for a client's connection (see [`CancelTarget::claim`]):
/// settled when dropped, delivered if [`InFlight::delivered`] was called first.
#[derive(Debug)]
pub struct InFlight {
    slot: Arc<ClientSlot>,
    delivered: bool,
}

impl InFlight {
    /// The server closed the cancel's connection: its backend has been signalled.
    pub fn delivered(mut self) {
        self.delivered = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut pointing = self.slot.pointing();
        pointing.cancels -= 1;
        pointing.undelivered |= !self.delivered;
        if pointing.cancels == 0 {
            SETTLED.notify_waiters();
        }
    }
}

/// One client's entry: what serves it, its cancels in flight, what wakes its session, and the
/// client's protocol state ([`SyncState`], owned here so that both its session and a cancel
/// can reach it: is a statement running, did it end, is the server still sending).
#[derive(Debug, Default)]
struct ClientSlot {
    pointing: Mutex<Pointing>,
    closer: Closer,
    state: SyncState,
}

impl ClientSlot {
    fn serving(&self) -> Serving {
        self.pointing().serving()
    }

    fn pointing(&self) -> std::sync::MutexGuard<'_, Pointing> {
        self.pointing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until no cancel is in flight; whether every one since the last look was
    /// delivered (read once).
    async fn settled(&self) -> bool {
        loop {
            let settled = SETTLED.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let mut pointing = self.pointing();
                if pointing.cancels == 0 {
                    return !std::mem::take(&mut pointing.undelivered);
                }
            }
            settled.await;
        }
    }
}

/// Hashed with foldhash: written on every login (the keys are random, ours).
type Entries = HashMap<(i32, i32), Arc<ClientSlot>, foldhash::fast::RandomState>;

/// Sidecar-issued keys → the server key currently behind them.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<Entries>,
}

impl CancelRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Issues a fresh, unique client key; it stays registered while the guard lives.
    pub fn register(self: &Arc<Self>, serving: Serving) -> CancelKeyGuard {
        let mut map = self.lock();
        loop {
            let key = (rand::random::<i32>() & i32::MAX, rand::random::<i32>());
            if key.0 == 0 {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(entry) = map.entry(key) {
                let mut pointing = Pointing::default();
                pointing.point_at(serving);
                let slot = Arc::new(ClientSlot {
                    pointing: Mutex::new(pointing),
                    ..ClientSlot::default()
                });
                entry.insert(slot.clone());
                return CancelKeyGuard {
                    registry: self.clone(),
                    pid: key.0,
                    secret: key.1,
                    slot,
                };
            }
        }
    }

    /// What a client key leads to, if that client is connected.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let slot = self.lock().get(&(pid, secret)).cloned()?;
        Some(CancelTarget {
            serving: slot.serving(),
            slot,
        })
    }

    /// Wakes every client's session (a shutdown drain: idle ones close themselves).
    pub fn wake_all(&self) {
        self.each_closer(Closer::wake);
    }

    /// Ends every client's session now, telling the client 57P01 (the shutdown's grace
    /// period is over).
    pub fn terminate_all(&self) {
        self.each_closer(Closer::terminate);
    }

    fn each_closer(&self, pull: fn(&Closer)) {
        let slots: Vec<Arc<ClientSlot>> = self.lock().values().cloned().collect();
        for slot in slots {
            pull(&slot.closer);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A client's key; removed from the registry on drop.
#[derive(Debug)]
pub struct CancelKeyGuard {
    registry: Arc<CancelRegistry>,
    pub pid: i32,
    pub secret: i32,
    slot: Arc<ClientSlot>,
}

impl CancelKeyGuard {
    /// Woken when a cancel asks to close the upstream connection, and when a drain starts.
    pub fn closer(&self) -> &Closer {
        &self.slot.closer
    }

    /// The client session's protocol state (what both directions know of its sync points).
    pub fn state(&self) -> &SyncState {
        &self.slot.state
    }

    /// Points the key at another upstream connection (or nothing, between transactions).
    pub fn set_serving(&self, serving: Serving) {
        self.slot.pointing().point_at(serving);
    }

    /// Gives `lease` back to its pool once no cancel of this client can still reach it: at
    /// once when none is in flight, else from a task of its own once they settled (the
    /// client goes on meanwhile), or closed when one may not have been delivered or they do
    /// not settle within [`SETTLE_BOUND`]. The key must no longer point at the connection.
    pub fn release(&self, lease: Lease) {
        let (in_flight, undelivered) = {
            let mut pointing = self.slot.pointing();
            (
                pointing.cancels > 0,
                std::mem::take(&mut pointing.undelivered),
            )
        };
        if !in_flight {
            return if undelivered {
                lease.close()
            } else {
                lease.release()
            };
        }
        let slot = self.slot.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(SETTLE_BOUND, slot.settled()).await {
                Ok(true) if !undelivered => lease.release(),
                _ => lease.close(),
            }
        });
    }
}

impl Drop for CancelKeyGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&(self.pid, self.secret));
    }
}

#[cfg(test)]
#[path = "cancel_tests.rs"]
mod tests;
