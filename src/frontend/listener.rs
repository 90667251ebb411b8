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
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// The next client and its address (none for a unix socket).
    async fn accept(&self) -> std::io::Result<(ClientStream, Option<SocketAddr>)> {
        match self {
            Self::Tcp(listener) => {
                let (socket, peer) = listener.accept().await?;
                let _ = socket.set_nodelay(true);
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
