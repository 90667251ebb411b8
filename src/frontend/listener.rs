//! Accepting clients: one loop for TCP and unix-socket listeners alike, which spawns each
//! client's life ([`super::serve_client`]) and backs off briefly when accepting fails (out of
//! file descriptors) instead of spinning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tracing::error;

use super::{Frontend, serve_client};
use crate::stream::ClientStream;
use crate::uring::Socket;

/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound listening socket of one endpoint.
pub enum Listener {
    /// Made by [`Listener::tcp`].
    Tcp {
        listener: TcpListener,
        /// The sockets it accepts have `TCP_NODELAY` already (set on the listener, Linux).
        nodelay_inherited: bool,
    },
    Unix(UnixListener),
}

impl Listener {
    /// A TCP listener whose clients get `TCP_NODELAY` (each response goes out at once). Set
    /// on the listening socket, which Linux copies to every socket it accepts: one
    /// `setsockopt` a connection fewer (of 17 a transaction-mode `pgbench -C` connection;
    /// strace, issue 16). Elsewhere each accepted socket gets it as well.
    pub fn tcp(listener: TcpListener) -> Self {
        let set = socket2::SockRef::from(&listener).set_tcp_nodelay(true);
        Self::Tcp {
            listener,
            nodelay_inherited: cfg!(target_os = "linux") && set.is_ok(),
        }
    }

    /// The next client and its address (none for a unix socket).
    async fn accept(&self) -> std::io::Result<(ClientStream, Option<SocketAddr>)> {
        match self {
            Self::Tcp {
                listener,
                nodelay_inherited,
            } => {
                let (socket, peer) = listener.accept().await?;
                if !nodelay_inherited {
                    let _ = socket.set_nodelay(true);
                }
                Ok((ClientStream::Tcp(Socket::new(socket)), Some(peer)))
            }
            Self::Unix(listener) => {
                let (socket, _) = listener.accept().await?;
                Ok((ClientStream::Unix(socket), None))
            }
        }
    }
}

/// Accepts clients for `frontend` until `stopped` turns true.
pub async fn accept_loop(
    listener: Listener,
    frontend: Arc<Frontend>,
    mut stopped: watch::Receiver<bool>,
) {
    // One wait for the stop for the listener's life, polled after the accepts: made anew for
    // each accept (a watch registration, its poll and its removal), it cost ~430 instructions
    // a connection (callgrind, issue 16).
    tokio::select! {
        biased;
        () = accept_forever(&listener, &frontend) => {}
        _ = stopped.wait_for(|s| *s) => {}
    }
}

/// Accepts clients and spawns each one's life, for as long as it is polled.
async fn accept_forever(listener: &Listener, frontend: &Arc<Frontend>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                frontend.metrics.client_accepted();
                tokio::spawn(serve_client(stream, peer, frontend.clone()));
            }
            Err(e) => {
                error!(error = %e, upstream = frontend.metrics.upstream(), "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every accepted client has `TCP_NODELAY` (on Linux from the listening socket, with no
    /// call of its own): without it a response written in two pieces would wait for the
    /// client's delayed ACK.
    #[tokio::test]
    async fn accepted_clients_have_nodelay() {
        let bound = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = bound.local_addr().expect("address");
        let listener = Listener::tcp(bound);
        if cfg!(target_os = "linux") {
            assert!(matches!(
                listener,
                Listener::Tcp {
                    nodelay_inherited: true,
                    ..
                }
            ));
        }
        for _ in 0..2 {
            let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (stream, peer) = listener.accept().await.expect("accept");
            assert!(peer.is_some());
            let ClientStream::Tcp(socket) = stream else {
                panic!("a TCP client");
            };
            assert!(socket.tcp().nodelay().expect("getsockopt"), "TCP_NODELAY");
        }
    }
}
