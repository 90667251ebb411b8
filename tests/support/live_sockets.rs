//! The emulator's open client sockets, so that a "proxy restart" drops them all at the same
//! instant, as the kernel does when a proxy process dies: each is shut down through a
//! duplicate of its descriptor (`shutdown(2)` acts on the socket, and the duplicate cannot be
//! reused by another socket while it is held), before the tasks serving them even wake.

use std::collections::HashMap;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use socket2::{SockRef, Socket};
use tokio::net::TcpStream;

/// The sockets open now.
#[derive(Debug, Default)]
pub struct LiveSockets {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Socket>>,
}

/// One registered socket; unregistered (its duplicate closed) when dropped.
pub struct LiveSocket {
    sockets: Arc<LiveSockets>,
    id: u64,
}

impl LiveSockets {
    /// Registers `stream` until the returned guard is dropped (a socket that cannot be
    /// duplicated is only ended by its task).
    pub fn register(self: &Arc<Self>, stream: &TcpStream) -> LiveSocket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(duplicate) = SockRef::from(stream).try_clone() {
            self.lock().insert(id, duplicate);
        }
        LiveSocket {
            sockets: Arc::clone(self),
            id,
        }
    }

    /// Shuts every open socket down, both ways, now.
    pub fn shutdown_all(&self) {
        for socket in self.lock().values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Socket>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for LiveSocket {
    fn drop(&mut self) {
        self.sockets.lock().remove(&self.id);
    }
}
