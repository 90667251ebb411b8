//! Session pooling: a client keeps one upstream connection for its life; between round trips
//! it holds no forwarding buffers. When it leaves idle, the connection is reset and pooled.

use std::task::Poll;

use bytes::BytesMut;
use tracing::debug;

use crate::forward::buffers::Buffer;
use crate::forward::{ClientSide, Detach, Outcome, Period, Pump, forward_attached};
use crate::ops::metrics::ClientState;
use crate::ops::shutdown::Woken;
use crate::pool::Lease;
use crate::pool::reset::reset;
use crate::protocol::framing::TransactionStatus;
use crate::upstream::ServerConnection;

use super::send_shutdown_error;
use super::session::{Session, closer};

/// What ended an idle wait in session mode.
enum Spoken {
    /// The client sent these bytes (the first `n` of the buffer).
    Client(Buffer, usize),
    /// The server sent something unasked (a notification, a shutdown).
    Server,
    /// The readiness was stale: wait again.
    Stale,
}

impl Session {
    /// The client keeps `lease` until it leaves; the connection then goes back to the pool
    /// only if it is idle and the reset query succeeds. Between round trips the client holds
    /// no forwarding buffers.
    pub(super) async fn run_session_mode(&mut self, mut lease: Lease) -> Outcome {
        // The client's stream as it passes through (in this boxed future, not the Session:
        // transaction mode keeps its own framing in the rewriter).
        let mut client_side = ClientSide::default();
        let mut pending = std::mem::take(&mut lease.server().pending);
        let outcome = loop {
            let server = lease.server();
            let mut first = None;
            if pending.is_empty() {
                match self.idle_until_spoken(server).await {
                    Ok(Spoken::Client(buffer, n)) => first = Some((buffer, n)),
                    Ok(Spoken::Server) => {}
                    Ok(Spoken::Stale) => continue,
                    Err(outcome) => break outcome,
                }
            }
            let first_bytes = first.as_ref().map_or(&[][..], |(buffer, n)| &buffer[..*n]);
            // Boxed: the attached period's state lives on the heap only while it runs.
            self.gauge.set(ClientState::Active);
            let cancel = closer(self.context.cancel_mode, &self.cancel_key);
            let period = Period {
                state: &self.state,
                parameters: &mut server.parameters,
                first: first_bytes,
                pending: &pending,
                detach: Detach::WhenQuiet,
                cancel,
                pump: Pump::PassThrough(&mut client_side),
            };
            let (outcome, traffic) = Box::pin(forward_attached(
                &mut self.stream,
                &mut server.stream,
                period,
            ))
            .await;
            self.gauge.set(ClientState::Idle);
            pending = BytesMut::new();
            self.add(traffic);
            if outcome != Outcome::Released {
                break outcome;
            }
        };
        self.leave(lease, outcome).await;
        outcome
    }

    /// Waits, holding no buffers, until the client or the server speaks. A shutdown closes
    /// the session here, between transactions, never inside one.
    async fn idle_until_spoken(
        &mut self,
        server: &mut ServerConnection,
    ) -> Result<Spoken, Outcome> {
        let outside_transaction = self.state.status() == TransactionStatus::Idle;
        let stream = &self.stream;
        let woken = self
            .context
            .shutdown
            .idle_wait(outside_transaction, self.cancel_key.closer(), |cx| {
                // The client's readiness is confirmed by the try_read below (one syscall); the
                // server, which rarely speaks unasked, by a peek.
                match (stream.poll_read_ready(cx), server.stream.poll_readable(cx)) {
                    (Poll::Pending, Poll::Pending) => Poll::Pending,
                    // Errors show in the attached period's reads.
                    _ => Poll::Ready(Ok(())),
                }
            })
            .await;
        if let Woken::Draining = woken {
            return Err(Outcome::Shutdown);
        }
        let mut buffer = Buffer::take();
        match self.stream.try_read(&mut buffer) {
            Ok(0) => Err(Outcome::ClientClosed),
            Ok(n) => Ok(Spoken::Client(buffer, n)),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                // Not the client: the server spoke, or the client's readiness was stale.
                let waker = std::task::Waker::noop();
                let mut cx = std::task::Context::from_waker(waker);
                if server.stream.poll_readable(&mut cx).is_pending() {
                    Ok(Spoken::Stale)
                } else {
                    Ok(Spoken::Server)
                }
            }
            Err(_) => Err(Outcome::ClientError),
        }
    }

    /// The session ended with `outcome`: pool the connection if it can serve another client,
    /// and tell the client what it is owed.
    async fn leave(&mut self, mut lease: Lease, outcome: Outcome) {
        match outcome {
            Outcome::ClientTerminated | Outcome::ClientClosed if self.state.is_idle() => {
                let reset_query = self.context.pools.settings.reset_query.clone();
                match reset_query {
                    Some(query) => match Box::pin(reset(lease.server(), &query)).await {
                        Ok(()) => {
                            if let Ok(mut prepared) = lease.server().prepared.lock() {
                                prepared.clear();
                            }
                            lease.release()
                        }
                        Err(error) => {
                            debug!(%error, "upstream connection not reusable; closing it")
                        }
                    },
                    None => lease.release(),
                }
            }
            Outcome::Cancelled => {
                drop(lease);
                self.cancelled_fatal().await;
            }
            Outcome::Shutdown => {
                drop(lease);
                Box::pin(send_shutdown_error(&mut self.stream)).await;
            }
            _ => {
                debug!(?outcome, status = ?self.state.status(), "upstream connection not reusable; closing it")
            }
        }
    }
}
