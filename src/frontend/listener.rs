//! Accepting clients: one loop for TCP and unix-socket listeners alike, which spawns each
//! client's life ([`super::serve_client`]) and backs off briefly when accepting fails (out of
//! file descriptors) instead of spinning.
//!
//! A TCP listener is accepted from directly (tokio's readiness and `accept4`), not through
//! tokio's `TcpListener`, to skip the `accept4` that answers `EAGAIN` after each client: that
//! one allocates a socket and a file and frees them again, 1.4 µs on this VM, where a `poll`
//! of the listener says as much for a tenth of it (see [`accept_tcp`]).

use std::io;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockAddr, Socket as RawSocket};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
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
        listener: AsyncFd<RawSocket>,
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
    pub fn tcp(listener: TcpListener) -> io::Result<Self> {
        let listener = RawSocket::from(listener.into_std()?);
        let set = listener.set_tcp_nodelay(true);
        // SAFETY: a `socket2::Socket` owns its descriptor and answers the same one for its
        // life; the `AsyncFd` owns the socket, and nothing closes it while it does.
        let listener = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }?;
        Ok(Self::Tcp {
            listener,
            nodelay_inherited: cfg!(target_os = "linux") && set.is_ok(),
        })
    }

    /// The next client and its address (none for a unix socket).
    async fn accept(&self) -> std::io::Result<(ClientStream, Option<SocketAddr>)> {
        match self {
            Self::Tcp {
                listener,
                nodelay_inherited,
            } => {
                let (socket, peer) = accept_tcp(listener).await?;
                if !nodelay_inherited {
                    let _ = socket.set_nodelay(true);
                }
                Ok((ClientStream::Tcp(Socket::accepted(socket)?), Some(peer)))
            }
            Self::Unix(listener) => {
                let (socket, _) = listener.accept().await?;
                Ok((ClientStream::Unix(socket), None))
            }
        }
    }
}

/// The next client of a TCP listener. The listener's readiness is cleared after a client when
/// a `poll` finds no other waiting, so the next call waits for epoll instead of asking
/// `accept4` to say `EAGAIN` (1,373 ns against `poll`'s ~210 on this VM; one a connection,
/// issue 16). A client that arrives after the `poll` raises a new epoll event, which the
/// runtime reads after this task yields: it marks the listener ready again.
async fn accept_tcp(listener: &AsyncFd<RawSocket>) -> io::Result<(StdTcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        let Ok(accepted) = ready.try_io(|listener| accept_nonblocking(listener.get_ref())) else {
            continue;
        };
        let (socket, peer) = accepted?;
        if !another_waiting(listener.get_ref()) {
            ready.clear_ready();
        }
        let peer = peer.as_socket().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "a TCP client without an IP address",
            )
        })?;
        return Ok((socket.into(), peer));
    }
}

/// `accept4` with the new socket non-blocking (tokio's sockets are), in one call.
#[cfg(target_os = "linux")]
fn accept_nonblocking(listener: &RawSocket) -> io::Result<(RawSocket, SockAddr)> {
    listener.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
}

/// `accept`, then the new socket made non-blocking (tokio's sockets are).
#[cfg(not(target_os = "linux"))]
fn accept_nonblocking(listener: &RawSocket) -> io::Result<(RawSocket, SockAddr)> {
    let (socket, peer) = listener.accept()?;
    socket.set_nonblocking(true)?;
    Ok((socket, peer))
}

/// Whether another client waits in the listener's queue (a `poll` that does not wait). When
/// the `poll` fails the answer is yes: the next `accept4` will tell.
fn another_waiting(listener: &RawSocket) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(listener, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    !matches!(poll(&mut fds, Some(&now)), Ok(0))
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
        let listener = Listener::tcp(bound).expect("listener");
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

    /// Clients that queued up together are all accepted, each at its own call, and the next
    /// call waits for a new one: the listener stays ready while the `poll` sees another
    /// waiting (cleared after each client, the second of a burst would wait for a client that
    /// never comes, as epoll says nothing new about the ones already queued).
    #[tokio::test]
    async fn a_burst_of_clients_is_accepted_in_full() {
        let bound = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = bound.local_addr().expect("address");
        let listener = Listener::tcp(bound).expect("listener");
        let first = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (_, peer) = listener.accept().await.expect("accept");
        assert_eq!(peer, Some(first.local_addr().expect("address")));
        let mut burst = Vec::new();
        for _ in 0..5 {
            burst.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let mut accepted = Vec::new();
        for _ in 0..5 {
            let next = tokio::time::timeout(Duration::from_secs(5), listener.accept());
            let (_, peer) = next
                .await
                .expect("a queued client accepted")
                .expect("accept");
            accepted.push(peer.expect("an address"));
        }
        let connected: Vec<_> = burst
            .iter()
            .map(|c| c.local_addr().expect("address"))
            .collect();
        assert_eq!(accepted, connected, "each queued client, in order");
        let none = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(none.is_err(), "no client left to accept");
        let late = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let next = tokio::time::timeout(Duration::from_secs(5), listener.accept());
        let (_, peer) = next.await.expect("a new client accepted").expect("accept");
        assert_eq!(peer, Some(late.local_addr().expect("address")));
    }
}
