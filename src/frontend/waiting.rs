//! A client's statement waiting for an upstream connection: in transaction mode at the start
//! of each transaction, in session mode for the client's first one (and the first after a
//! cancel closed its connection), while its pool is at `--pool-size`, for up to
//! `--pool-timeout`. A cancel for it (psql's Ctrl-C, a driver's statement timeout) finds
//! nothing running upstream; rather than dropping it, as PgBouncer does, the sidecar stops the
//! wait and answers as PostgreSQL answers a statement cancelled before it ran: `ERROR 57014`,
//! then ReadyForQuery, and the client stays. It can do so only when the client sent one whole
//! batch (up to one sync point): what it is owed for more, or for part of one, cannot be told,
//! so that client gets the FATAL. A drain that starts during the wait refuses the statement
//! with 57P01, as it refuses a client between transactions.

use std::future::poll_fn;

use bytes::BytesMut;

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
            loop {
                tokio::select! {
                    // The checkout first: most often a connection is idle and this is all.
                    biased;
                    checkout = &mut checkout => return Waited::Checkout(checkout),
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

    /// Answers `first`, a statement cancelled before it ran: `None` when the client goes on.
    async fn answer_cancelled_waiting(&mut self, first: &[u8]) -> Option<Outcome> {
        let mut answer = BytesMut::new();
        if !one_whole_batch(first) {
            messages::error_response(&mut answer, &cancelled_waiting(Severity::Fatal));
            let _ = self.stream.write_flushed(&answer).await;
            return Some(Outcome::Cancelled);
        }
        messages::error_response(&mut answer, &cancelled_waiting(Severity::Error));
        messages::ready_for_query(&mut answer, b'I');
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

/// `bytes` are whole messages ending with the batch's one sync point (Query, Sync or
/// FunctionCall) and holding no other.
fn one_whole_batch(mut bytes: &[u8]) -> bool {
    let mut last_was_sync = false;
    while !bytes.is_empty() {
        if last_was_sync {
            return false;
        }
        let Some(&[tag, l0, l1, l2, l3]) = bytes.first_chunk::<5>() else {
            return false;
        };
        let length = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        let Some(rest) = bytes.get(1 + length..).filter(|_| length >= 4) else {
            return false;
        };
        last_was_sync = matches!(tag, b'Q' | b'S' | b'F');
        bytes = rest;
    }
    last_was_sync
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framing::message;

    #[test]
    fn one_whole_batch_up_to_its_sync_point() {
        let query = message(b'Q', b"select 1\0");
        let parse = message(b'P', b"\0select 1\0\0\0");
        let sync = message(b'S', &[]);
        assert!(one_whole_batch(&query));
        assert!(one_whole_batch(&[parse.clone(), sync.clone()].concat()));
        // Part of a batch, two batches, a partial message, nothing.
        assert!(!one_whole_batch(&parse));
        assert!(!one_whole_batch(&[query.clone(), query.clone()].concat()));
        assert!(!one_whole_batch(&query[..query.len() - 1]));
        assert!(!one_whole_batch(&[sync, parse].concat()));
        assert!(!one_whole_batch(&[]));
        assert!(!one_whole_batch(&[b'Q', 0, 0, 0, 2]));
    }
}
