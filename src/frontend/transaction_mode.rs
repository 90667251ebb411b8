//! Transaction pooling: an upstream connection is attached for each transaction and released
//! when it is idle; prepared statements are carried across connections by the rewriter.

use std::time::Instant;

use tracing::warn;

use tokio::io::AsyncReadExt;

use crate::forward::buffers::Buffer;
use crate::forward::{Detach, Outcome, Period, Pump, Rewrite, Traffic, forward_attached};
use crate::ops::metrics::ClientState;
use crate::ops::shutdown::Woken;
use crate::pool::Lease;

use super::cancel::Serving;
use super::login::checkout_error_to_pg;
use super::session::{Session, closer};
use super::waiting::Waited;
use super::{send_error, send_shutdown_error};

/// Terminate.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

impl Session {
    /// An upstream connection is attached for each transaction and released when it is idle.
    /// (A plain fn around an async block: an `async fn` would store `self` twice.)
    #[allow(clippy::manual_async_fn)]
    pub(super) fn run_transaction_mode(&mut self) -> impl Future<Output = Outcome> + Send + '_ {
        async move {
            loop {
                // Detached: no upstream connection and no buffer until the client sends something.
                // poll_fn, not an async readiness future: nothing is stored for the wait but the
                // waker in the socket's registration.
                let stream = &mut self.stream;
                let closer = self.cancel_key.closer();
                let woken = self
                    .context
                    .shutdown
                    // Plain readiness, not peek-confirmed: the try_read below confirms it, and
                    // clears stale readiness, for one syscall instead of two.
                    .idle_wait(true, closer, |cx| stream.poll_read_ready(cx))
                    .await;
                match woken {
                    Woken::Ready(Ok(())) => {}
                    Woken::Ready(Err(_)) => return Outcome::ClientError,
                    // Between transactions: a shutdown closes the session now.
                    Woken::Draining => {
                        Box::pin(send_shutdown_error(&mut self.stream)).await;
                        return Outcome::Shutdown;
                    }
                }
                let mut first = Buffer::take();
                let n = match self.stream.try_read(&mut first) {
                    Ok(0) => return Outcome::ClientClosed,
                    Ok(n) => n,
                    // Readiness was stale: give the buffer back and wait again.
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Outcome::ClientError,
                };
                // Boxed: a transaction's state lives on the heap only while it runs.
                if let Some(ending) = Box::pin(self.transaction(&first[..n])).await {
                    return ending;
                }
            }
        }
    }

    /// One attached period from the client's first bytes `first` until the connection is
    /// released; `Some(outcome)` when the session ends.
    async fn transaction(&mut self, first: &[u8]) -> Option<Outcome> {
        let first = match self.skip_late_copy(first).await {
            Ok([]) => return None,
            Ok(rest) => rest,
            Err(ending) => return Some(ending),
        };
        if self.rewriter.at_boundary() && first.starts_with(&TERMINATE) {
            return Some(Outcome::ClientTerminated);
        }
        if self.cancel_key.state().only_sidecar_answers() {
            // Answered locally until the client ends its failed transaction; what it sent
            // after that goes upstream.
            let rest = match self.serve_aborted(first).await {
                Ok(rest) => rest,
                Err(ending) => return Some(ending),
            };
            if rest.is_empty() {
                return None;
            }
            if rest.starts_with(&TERMINATE) {
                return Some(Outcome::ClientTerminated);
            }
            return self.attached(&rest).await;
        }
        self.attached(first).await
    }

    /// What follows the COPY messages (CopyData, CopyDone, CopyFail) at the start of `first`:
    /// a client whose COPY failed sends the rest of its data after the error and ReadyForQuery
    /// released the connection (libpq, pgJDBC and pg-copy-streams do), and PostgreSQL ignores
    /// such messages outside copy mode. So does the sidecar, without taking a connection for
    /// them; the rest of one cut at the end of `first` is read from the client and dropped.
    async fn skip_late_copy<'a>(&mut self, first: &'a [u8]) -> Result<&'a [u8], Outcome> {
        if !self.rewriter.at_boundary() {
            return Ok(first);
        }
        let (whole, mut to_come) = late_copy_prefix(first);
        if to_come == 0 {
            return Ok(&first[whole..]);
        }
        let mut scratch = Buffer::take();
        while to_come > 0 {
            let want = to_come.min(scratch.len());
            match self.stream.read(&mut scratch[..want]).await {
                Ok(0) => return Err(Outcome::ClientClosed),
                Ok(n) => to_come -= n,
                Err(_) => return Err(Outcome::ClientError),
            }
        }
        Ok(&[])
    }

    async fn attached(&mut self, first: &[u8]) -> Option<Outcome> {
        self.gauge.set(ClientState::Active);
        let ending = self.attached_transaction(first).await;
        self.gauge.set(ClientState::Idle);
        ending
    }

    async fn attached_transaction(&mut self, first: &[u8]) -> Option<Outcome> {
        let started = Instant::now();
        let checkout = match self.checkout_unless_cancelled(first).await {
            Waited::Checkout(checkout) => checkout,
            Waited::Stopped(ending) => return ending,
        };
        let mut lease = match checkout {
            Ok(lease) => lease,
            Err(error) => {
                self.cancel_key.set_serving(Serving::Nothing);
                let pg = checkout_error_to_pg(&error, &self.context, &self.pool.key.user);
                warn!(conn = self.conn, %error, sqlstate = %pg.code, pool = %self.pool.key, "no upstream connection for a transaction");
                send_error(&mut self.stream, &pg).await;
                return Some(Outcome::ServerError);
            }
        };
        self.context.metrics.pool_wait(started.elapsed());
        self.cancel_key
            .set_serving(Serving::connection(lease.server().backend_key));
        let cancel = closer(&self.cancel_key);
        let pending = std::mem::take(&mut lease.server().pending);
        let server = lease.server();
        let rewrite = Rewrite {
            client: &mut self.rewriter,
            statements: &mut self.statements,
            prepared: &server.prepared,
        };
        let period = Period {
            state: self.cancel_key.state(),
            parameters: &mut server.parameters,
            first,
            pending: &pending,
            detach: Detach::WhenIdle,
            cancel,
            pump: Pump::Rewriting(rewrite),
        };
        let (outcome, traffic) =
            forward_attached(&mut self.stream, &mut server.stream, period).await;
        self.add(traffic);
        self.cancel_key.set_serving(Serving::Nothing);
        self.after_transaction(lease, outcome, &traffic).await
    }

    /// The attached period ended with `outcome`: release the connection when it is idle;
    /// `Some(outcome)` when the session ends.
    async fn after_transaction(
        &mut self,
        lease: Lease,
        outcome: Outcome,
        traffic: &Traffic,
    ) -> Option<Outcome> {
        match outcome {
            Outcome::Released => {
                self.cancel_key.release(lease);
                None
            }
            Outcome::ClientTerminated | Outcome::ClientClosed => {
                if self.cancel_key.state().is_idle() {
                    self.cancel_key.release(lease);
                }
                Some(outcome)
            }
            Outcome::Cancelled => {
                drop(lease);
                self.answer_cancelled().await
            }
            Outcome::ServerClosed
            | Outcome::ServerClosedIdle
            | Outcome::ServerError
            | Outcome::ClientProtocolError
            | Outcome::ClientMessageTooLarge
            | Outcome::Terminated => {
                drop(lease);
                self.tell_ending(outcome, traffic).await;
                Some(outcome)
            }
            Outcome::ClientError | Outcome::CancelledMidAnswer | Outcome::Shutdown => Some(outcome),
        }
    }
}

/// How many bytes at the start of `bytes` are COPY messages (CopyData, CopyDone, CopyFail),
/// and how many of the last one are still to come when `bytes` ends inside it. A header cut at
/// the end is left for the rewriter (and whatever follows the COPY messages).
fn late_copy_prefix(bytes: &[u8]) -> (usize, usize) {
    let mut at = 0;
    while let Some(&[tag, l0, l1, l2, l3]) = bytes.get(at..).and_then(|b| b.first_chunk::<5>()) {
        let length = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        if !matches!(tag, b'd' | b'c' | b'f') || length < 4 {
            break;
        }
        let end = at + 1 + length;
        if end > bytes.len() {
            return (bytes.len(), end - bytes.len());
        }
        at = end;
    }
    (at, 0)
}

#[cfg(test)]
mod tests {
    use super::late_copy_prefix;
    use crate::protocol::framing::message;

    #[test]
    fn late_copy_messages_are_told_apart_from_what_follows() {
        let data = message(b'd', b"1\tx\n");
        let done = message(b'c', &[]);
        let query = message(b'Q', b"select 1\0");
        let copy = [data.clone(), done.clone()].concat();
        assert_eq!(late_copy_prefix(&query), (0, 0));
        assert_eq!(late_copy_prefix(&copy), (copy.len(), 0));
        let both = [copy.clone(), query.clone()].concat();
        assert_eq!(late_copy_prefix(&both), (copy.len(), 0));
        // Cut inside a CopyData: the rest is still to come.
        assert_eq!(late_copy_prefix(&data[..7]), (7, data.len() - 7));
        // Cut inside a header: left as it is.
        assert_eq!(late_copy_prefix(&data[..3]), (0, 0));
        assert_eq!(late_copy_prefix(&[b'd', 0, 0, 0, 2]), (0, 0));
    }
}
