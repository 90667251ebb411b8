//! Cancel keys. Each client gets a BackendKeyData the sidecar made up; this registry maps it to
//! the server key of the upstream connection serving that client right now (none between
//! transactions in transaction mode), so a CancelRequest, which arrives on a fresh connection,
//! reaches that connection and no other. Each client also has a `Closer` its session listens
//! to, for `--cancel-mode close` and for a shutdown drain. Unknown keys are dropped silently,
//! as PostgreSQL does. A client's entry is its own (`ClientSlot`): re-pointing it at every
//! transaction never takes the registry's lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::forward::closer::Closer;

/// What a cancel request does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum CancelMode {
    /// Send a CancelRequest to the upstream connection serving the client (default).
    Forward,
    /// Close that upstream connection and tell the client 57014 (for upstreams that ignore
    /// cancels, like RDS Proxy for PostgreSQL).
    Close,
}

/// The server-side key a client's cancel must be sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerKey {
    pub pid: i32,
    pub secret: i32,
}

/// What a client key leads to.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// The server key of the upstream connection serving the client now.
    pub server: Option<ServerKey>,
    slot: Arc<ClientSlot>,
}

impl CancelTarget {
    /// Asks the client's session to close its upstream connection (`--cancel-mode close`).
    pub fn close(&self) {
        self.slot.closer.close();
    }
}

/// One client's entry: its current server key, and what wakes its session.
#[derive(Debug, Default)]
struct ClientSlot {
    server: Mutex<Option<ServerKey>>,
    closer: Closer,
}

impl ClientSlot {
    fn server(&self) -> Option<ServerKey> {
        *self.server.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Entries = HashMap<(i32, i32), Arc<ClientSlot>>;

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
    pub fn register(self: &Arc<Self>, server: Option<ServerKey>) -> CancelKeyGuard {
        let mut map = self.lock();
        loop {
            let key = (rand::random::<i32>() & i32::MAX, rand::random::<i32>());
            if key.0 != 0 && !map.contains_key(&key) {
                let slot = Arc::new(ClientSlot {
                    server: Mutex::new(server),
                    closer: Closer::default(),
                });
                map.insert(key, slot.clone());
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
            server: slot.server(),
            slot,
        })
    }

    /// Wakes every client's session (a shutdown drain: idle ones close themselves).
    pub fn wake_all(&self) {
        let slots: Vec<Arc<ClientSlot>> = self.lock().values().cloned().collect();
        for slot in slots {
            slot.closer.wake();
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

    /// Points the key at another upstream connection (or none, between transactions).
    pub fn set_server(&self, server: Option<ServerKey>) {
        *self.slot.server.lock().unwrap_or_else(|p| p.into_inner()) = server;
    }
}

impl Drop for CancelKeyGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&(self.pid, self.secret));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::task::Context;

    use super::*;

    #[test]
    fn keys_map_to_their_own_server_only() {
        let registry = CancelRegistry::new();
        let a = registry.register(Some(ServerKey { pid: 1, secret: 10 }));
        let b = registry.register(Some(ServerKey { pid: 2, secret: 20 }));
        let server = |pid, secret| registry.lookup(pid, secret).and_then(|t| t.server);
        assert_eq!(
            server(a.pid, a.secret),
            Some(ServerKey { pid: 1, secret: 10 })
        );
        assert_eq!(
            server(b.pid, b.secret),
            Some(ServerKey { pid: 2, secret: 20 })
        );
        assert!(registry.lookup(a.pid, b.secret).is_none());
        a.set_server(None);
        assert_eq!(server(a.pid, a.secret), None);
        assert!(registry.lookup(a.pid, a.secret).is_some());
        drop(b);
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn a_close_request_is_seen_once_and_wakes_the_waiting_task() {
        use std::sync::atomic::AtomicUsize;
        use std::task::{Wake, Waker};

        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let registry = CancelRegistry::new();
        let key = registry.register(Some(ServerKey { pid: 1, secret: 2 }));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(key.closer().poll_close(&mut cx).is_pending());

        registry.wake_all();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "a drain wakes the session"
        );
        assert!(
            key.closer().poll_close(&mut cx).is_pending(),
            "but asks no close"
        );

        let target = registry.lookup(key.pid, key.secret).expect("registered");
        target.close();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(key.closer().poll_close(&mut cx).is_ready());
        assert!(
            key.closer().poll_close(&mut cx).is_pending(),
            "one request closes once"
        );
    }
}
