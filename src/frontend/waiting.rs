//! A client's statement waiting for an upstream connection: in transaction mode at the start
//! of each transaction, in session mode for the client's first one (and the first after a
//! cancel closed its connection), while its pool is at `--pool-size`, for up to
//! `--pool-timeout`. A cancel for it (psql's Ctrl-C, a driver's statement timeout) finds
//! nothing running upstream; rather than dropping it, as PgBouncer does, the sidecar stops the
//! wait and answers as PostgreSQL answers a statement cancelled before it ran: `ERROR 57014`,
//! then ReadyForQuery, and the client stays. It can do so when the client sent one whole
//! batch (up to one sync point), or whole messages of one with the Sync still to come
//! (asyncpg's Parse, Describe, Flush): then the rest up to the Sync is dropped and the Sync
//! answered, as PostgreSQL skips to Sync after an error. What a client is owed for more than
//! one batch, or for part of a message, cannot be told, so that client gets the FATAL. A drain
//! that starts during the wait refuses the statement with 57P01, as it refuses a client
//! between transactions. A client that left during the wait (closed or reset: an app's own
//! timeout) is looked for when the connection comes: its statement is not sent and the
//! connection goes back unused.

use std::future::{Future, poll_fn};
use std::task::Poll;

use bytes::BytesMut;
use tracing::debug;

use crate::error::{PgError, Severity, sqlstate};
use crate::forward::Outcome;
use crate::forward::closer::CloseAsk;
use crate::ops::shutdown::{shutdown_error, terminated_error};
use crate::pool::{CheckoutError, Lease};
use crate::protocol::messages;

use super::cancel::Serving;
use super::send_error;
use super::session::Session;

/// How a wait for an upstream connection ended. Returned by value once per transaction: boxing
/// the lease would cost an allocation per transaction to save a move.
#[allow(clippy::large_enum_variant)]
pub(super) enum Waited {
    Checkout(Result<Lease, CheckoutError>),
    /// A cancel came first, or the shutdown's grace period ended: the session's outcome, if
    /// it ends.
    Stopped(Option<Outcome>),
}

impl Session {
    /// An upstream connection of the client's pool for its bytes `first`, unless a cancel for
    /// them comes first.
    pub(super) async fn checkout_unless_cancelled(&mut self, first: &[u8]) -> Waited {
        let asked = {
            let closer = self.cancel_key.closer();
            // A close asked for before the wait began was for what ran then.
            closer.forget();
            self.cancel_key.set_serving(Serving::Waiting);
            let checkout = self.context.pools.checkout(&self.pool);
            tokio::pin!(checkout);
            // Most often a connection is idle and this is all.
            if let Poll::Ready(checkout) =
                poll_fn(|cx| Poll::Ready(checkout.as_mut().poll(cx))).await
            {
                return Waited::Checkout(checkout);
            }
            loop {
                tokio::select! {
                    biased;
                    checkout = &mut checkout => return self.unless_client_left(checkout),
                    asked = poll_fn(|cx| closer.poll_close(cx)) => match asked {
                        // Only a forwarded cancel's grace asks this: it was for a statement
                        // that ran before.
                        CloseAsk::UnlessAnsweredSince(_) => continue,
                        asked => break Some(asked),
                    },
                    // A drain refuses a statement still waiting: nothing of it ran, and the
                    // connection it waits for would only be freed to close.
                    () = self.context.shutdown.draining() => break None,
                }
            }
        };
        self.cancel_key.set_serving(Serving::Nothing);
        match asked {
            None => {
                send_error(&mut self.stream, &shutdown_error()).await;
                Waited::Stopped(Some(Outcome::Shutdown))
            }
            Some(CloseAsk::Terminate) => {
                send_error(&mut self.stream, &terminated_error()).await;
                Waited::Stopped(Some(Outcome::Terminated))
            }
            Some(_) => Waited::Stopped(self.answer_cancelled_waiting(first).await),
        }
    }

    /// A connection for a statement that waited for one, unless its client left meanwhile (an
    /// app's own timeout, a killed process): then the statement is not sent, the connection
    /// goes back to the pool unused (no login lost for it) and the session ends. Without the
    /// look, each client that gave up in a queue later ran its statement and cost its
    /// connection (a fault probe: 40 of 40).
    fn unless_client_left(&self, checkout: Result<Lease, CheckoutError>) -> Waited {
        let Ok(lease) = checkout else {
            return Waited::Checkout(checkout);
        };
        if !self.stream.is_gone() {
            return Waited::Checkout(Ok(lease));
        }
        debug!(
            conn = self.conn,
            "the client left while its statement waited for an upstream connection; not sent"
        );
        self.cancel_key.set_serving(Serving::Nothing);
        self.cancel_key.release(lease);
        Waited::Stopped(Some(Outcome::ClientClosed))
    }

    /// Answers `first`, a statement cancelled before it ran: `None` when the client goes on.
    async fn answer_cancelled_waiting(&mut self, first: &[u8]) -> Option<Outcome> {
        let mut answer = BytesMut::new();
        let batch = batch_of(first);
        if batch == Batch::Unknown {
            messages::error_response(&mut answer, &cancelled_waiting(Severity::Fatal));
            let _ = self.stream.write_flushed(&answer).await;
            return Some(Outcome::Cancelled);
        }
        messages::error_response(&mut answer, &cancelled_waiting(Severity::Error));
        if batch == Batch::Synced {
            messages::ready_for_query(&mut answer, b'I');
        } else {
            // The rest of the batch, up to its Sync, is dropped; the Sync answered.
            self.cancel_key.state().set_batch_failed();
        }
        if self.stream.write_flushed(&answer).await.is_err() {
            return Some(Outcome::ClientError);
        }
        None
    }
}

fn cancelled_waiting(severity: Severity) -> PgError {
    PgError::new(
        severity,
        sqlstate::QUERY_CANCELED,
        "canceling statement due to user request",
    )
    .with_detail(
        "the statement was waiting for an upstream connection (its pool was at --pool-size) \
         and never ran",
    )
}

/// What a client's bytes are, as one batch the sidecar can answer for.
#[derive(Debug, PartialEq, Eq)]
enum Batch {
    /// Whole messages ending with the batch's one sync point (Query, Sync or FunctionCall).
    Synced,
    /// Whole extended-protocol messages with no sync point yet (asyncpg's Parse, Describe,
    /// Flush): the client waits for what it flushed, and the Sync comes later.
    Unsynced,
    /// Part of a message, or more than one batch: what the client is owed cannot be told.
    Unknown,
}

fn batch_of(mut bytes: &[u8]) -> Batch {
    if bytes.is_empty() {
        return Batch::Unknown;
    }
    let mut last_was_sync = false;
    while !bytes.is_empty() {
        if last_was_sync {
            return Batch::Unknown;
        }
        let Some(&[tag, l0, l1, l2, l3]) = bytes.first_chunk::<5>() else {
            return Batch::Unknown;
        };
        let length = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        let Some(rest) = bytes.get(1 + length..).filter(|_| length >= 4) else {
            return Batch::Unknown;
        };
        if !matches!(
            tag,
            b'Q' | b'S' | b'F' | b'P' | b'B' | b'D' | b'E' | b'C' | b'H'
        ) {
            return Batch::Unknown;
        }
        last_was_sync = matches!(tag, b'Q' | b'S' | b'F');
        bytes = rest;
    }
    if last_was_sync {
        Batch::Synced
    } else {
        Batch::Unsynced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framing::message;

    #[test]
    fn a_batch_is_answered_whole_or_up_to_its_sync() {
        let query = message(b'Q', b"select 1\0");
        let parse = message(b'P', b"\0select 1\0\0\0");
        let describe = message(b'D', b"S\0");
        let flush = message(b'H', &[]);
        let sync = message(b'S', &[]);
        assert_eq!(batch_of(&query), Batch::Synced);
        assert_eq!(
            batch_of(&[parse.clone(), sync.clone()].concat()),
            Batch::Synced
        );
        // asyncpg: Parse, Describe, Flush; the Sync comes after the answer.
        let unsynced = [parse.clone(), describe, flush].concat();
        assert_eq!(batch_of(&unsynced), Batch::Unsynced);
        assert_eq!(batch_of(&parse), Batch::Unsynced);
        // Two batches, a partial message, nothing, COPY data.
        assert_eq!(
            batch_of(&[query.clone(), query.clone()].concat()),
            Batch::Unknown
        );
        assert_eq!(batch_of(&query[..query.len() - 1]), Batch::Unknown);
        assert_eq!(batch_of(&[sync, parse].concat()), Batch::Unknown);
        assert_eq!(batch_of(&[]), Batch::Unknown);
        assert_eq!(batch_of(&[b'Q', 0, 0, 0, 2]), Batch::Unknown);
        assert_eq!(batch_of(&message(b'd', b"1\n")), Batch::Unknown);
    }
}
