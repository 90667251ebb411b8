//! A session-mode client idle between round trips, holding its upstream connection: it waits,
//! holding no buffers, until the client or the server speaks. What the server says unasked is
//! mostly something to pass on (a notification, a notice, a parameter change); but RDS Proxy
//! closes client connections idle past its IdleClientTimeout (30 minutes by default), and
//! PostgreSQL ends sessions past `idle_session_timeout` or on an administrator's command, with
//! a FATAL or just a closed socket. Nothing was running, so a client whose session can be built
//! again need not hear of it (DESIGN.md §6: a server-side close of an idle connection must never
//! reach a client as an error): its session goes on with another connection at its next
//! statement, as after a cancel.

use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::backend;
use tokio::io::AsyncReadExt;

use crate::error::Severity;
use crate::forward::Outcome;
use crate::forward::buffers::Buffer;
use crate::ops::shutdown::Woken;
use crate::protocol::framing::TransactionStatus;
use crate::protocol::server::error_response;
use crate::stream::UpstreamStream;
use crate::upstream::ServerConnection;

use super::session::Session;

/// How long the server's first unasked bytes may take to arrive whole once its socket is
/// readable (a TLS record cut by the network); past it they are passed on as they come.
const WHOLE_WITHIN: Duration = Duration::from_millis(500);

/// What ended an idle wait in session mode.
pub(super) enum Spoken {
    /// The client sent these bytes (the first `n` of the buffer).
    Client(Buffer, usize),
    /// The server sent something unasked: these bytes for the client (maybe none yet; the
    /// attached period reads on).
    Server(BytesMut),
    /// The server closed the connection, or said FATAL, while the client was idle.
    ServerClosed,
    /// The readiness was stale: wait again.
    Stale,
}

impl Session {
    /// Waits, holding no buffers, until the client or the server speaks. A shutdown closes
    /// the session here, between transactions, never inside one. What the server says while
    /// the client owes and is owed nothing, outside a transaction, is read here, to tell a
    /// close from something to pass on.
    pub(super) async fn idle_until_spoken(
        &mut self,
        server: &mut ServerConnection,
    ) -> Result<Spoken, Outcome> {
        let outside_transaction = self.cancel_key.state().status() == TransactionStatus::Idle;
        let stream = &mut self.stream;
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
            // Inside a transaction only the grace period's end wakes this: the client is told
            // its transaction was rolled back (57P01, as for a statement the grace cut).
            return Err(if outside_transaction {
                Outcome::Shutdown
            } else {
                Outcome::Terminated
            });
        }
        let mut buffer = Buffer::take();
        match self.stream.try_read(&mut buffer) {
            Ok(0) => Err(Outcome::ClientClosed),
            Ok(n) => Ok(Spoken::Client(buffer, n)),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                // Not the client: the server spoke, or the client's readiness was stale.
                let spoke = {
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    server.stream.poll_readable(&mut cx).is_ready()
                };
                if !spoke {
                    Ok(Spoken::Stale)
                } else if self.cancel_key.state().is_idle() {
                    Ok(read_unasked(&mut server.stream).await)
                } else {
                    Ok(Spoken::Server(BytesMut::new()))
                }
            }
            Err(_) => Err(Outcome::ClientError),
        }
    }
}

/// Reads what the server sent unasked (its socket is readable) and tells a close from
/// something for the client.
async fn read_unasked(server: &mut UpstreamStream) -> Spoken {
    let mut bytes = BytesMut::with_capacity(1024);
    match tokio::time::timeout(WHOLE_WITHIN, server.read_buf(&mut bytes)).await {
        Err(_) => Spoken::Server(bytes),
        Ok(Ok(0) | Err(_)) => Spoken::ServerClosed,
        Ok(Ok(_)) if starts_with_fatal(&bytes) => Spoken::ServerClosed,
        Ok(Ok(_)) => Spoken::Server(bytes),
    }
}

/// `bytes` begin with a whole ErrorResponse of severity FATAL or PANIC.
fn starts_with_fatal(bytes: &[u8]) -> bool {
    let mut copy = BytesMut::from(bytes);
    match backend::Message::parse(&mut copy) {
        Ok(Some(backend::Message::ErrorResponse(body))) => {
            error_response(&body).is_ok_and(|error| error.severity == Severity::Fatal)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framing::message;

    fn error(severity: &str) -> Vec<u8> {
        let body = format!("S{severity}\0V{severity}\0C57P05\0Midle timeout\0\0");
        message(b'E', body.as_bytes())
    }

    #[test]
    fn a_fatal_is_a_close_and_anything_else_is_passed_on() {
        assert!(starts_with_fatal(&error("FATAL")));
        assert!(starts_with_fatal(&error("PANIC")));
        assert!(!starts_with_fatal(&error("ERROR")));
        assert!(!starts_with_fatal(&message(b'A', b"\0\0\0\x01chan\0hi\0")));
        // Cut: not known to be a FATAL, so passed on as it comes.
        let fatal = error("FATAL");
        assert!(!starts_with_fatal(&fatal[..fatal.len() - 3]));
    }
}
