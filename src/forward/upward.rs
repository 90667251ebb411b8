//! Client → server during an attached period: [`ToServer`] reads the client's bytes and sends
//! them upstream as the [`Pump`] says, unchanged with Terminate held back (session mode) or
//! rewritten for the attached connection's prepared statements (transaction mode).

use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::buffers::{Buffer, OutVec};
use super::prepared::{Plan, Unrewritable, UpwardReport};
use super::sync::Upward;
use super::{ClientSide, Outcome, Pump, Rewrite, SyncState, write_flushed};

/// The client → server half of an attached period.
pub(super) struct ToServer<'a, W> {
    /// The write half of the upstream connection (shut down when the period fails).
    pub(super) server: W,
    pump: Pump<'a>,
    state: &'a SyncState,
    plan: &'a Plan,
    /// Transaction mode: the rewritten bytes of one chunk.
    out: OutVec,
    /// Bytes sent upstream.
    pub(super) sent: u64,
}

impl<'a, W: AsyncWrite + Unpin> ToServer<'a, W> {
    pub(super) fn new(server: W, pump: Pump<'a>, state: &'a SyncState, plan: &'a Plan) -> Self {
        // Sized for a typical batch up front in transaction mode (no regrowth per message);
        // session mode never writes to it.
        let capacity = match pump {
            Pump::Rewriting(_) => 1024,
            Pump::PassThrough(_) => 0,
        };
        Self {
            server,
            pump,
            state,
            plan,
            out: OutVec::take(capacity),
            sent: 0,
        }
    }

    /// Sends the bytes the client sent before the period started (`first`), then forwards
    /// until the client terminates, closes or fails, or a write upstream fails. Run beside
    /// the other direction from the start: a rewrite may wait for the server's answers.
    pub(super) async fn run<R: AsyncRead + Unpin>(
        &mut self,
        client: &mut R,
        first: &[u8],
    ) -> Outcome {
        if !first.is_empty()
            && let Err(outcome) = self.send(first).await
        {
            return outcome;
        }
        let mut buffer = Buffer::take();
        loop {
            let n = match client.read(&mut buffer).await {
                Ok(0) => return Outcome::ClientClosed,
                Ok(n) => n,
                Err(_) => return Outcome::ClientError,
            };
            if let Err(outcome) = self.send(&buffer[..n]).await {
                return outcome;
            }
        }
    }

    /// Sends one chunk of the client's bytes upstream; `Err` ends the period (Terminate too).
    async fn send(&mut self, chunk: &[u8]) -> Result<(), Outcome> {
        let terminated = match &mut self.pump {
            Pump::PassThrough(client_side) => {
                send_upward(chunk, client_side, self.state, &mut self.server).await?
            }
            Pump::Rewriting(rewrite) => {
                let mut rest = chunk;
                loop {
                    self.out.clear();
                    let report =
                        rewrite_chunk(rest, rewrite, self.state, self.plan, &mut self.out)?;
                    // Not quiet while the bytes are on their way: the other direction must not
                    // release the connection with part of them sent.
                    self.state.client_quiet.store(false, Ordering::Release);
                    write_flushed(&mut self.server, &self.out)
                        .await
                        .map_err(|_| Outcome::ServerError)?;
                    if !report.terminated {
                        self.state
                            .client_quiet
                            .store(report.quiet, Ordering::Release);
                    }
                    if self.state.is_idle() {
                        // Nothing is owed (COPY messages after a failed COPY, which the server
                        // ignores; or its answers came during the write): the other direction
                        // may release the connection.
                        self.plan.wake.notify_one();
                    }
                    let Some(consumed) = report.paused_at else {
                        break report.terminated;
                    };
                    // A Bind waits for its statement's shape (the other direction reads it).
                    self.plan.learnt().await;
                    rest = &rest[consumed..];
                }
            }
        };
        if terminated {
            return Err(Outcome::ClientTerminated);
        }
        self.sent += chunk.len() as u64;
        Ok(())
    }
}

/// Rewrites one chunk from the client into `out` (transaction mode): whether the client
/// terminated (`out` then holds what came before Terminate) or the rewrite paused, and
/// whether it is quiet after it (stored by the caller once `out` is sent).
fn rewrite_chunk(
    chunk: &[u8],
    rewrite: &mut Rewrite<'_>,
    state: &SyncState,
    plan: &Plan,
    out: &mut Vec<u8>,
) -> Result<UpwardReport, Outcome> {
    let report = rewrite
        .client
        .process(
            chunk,
            rewrite.statements,
            rewrite.prepared,
            plan,
            out,
            state.copy.server_in_copy(),
        )
        .map_err(|error| match error {
            Unrewritable::TooLarge => Outcome::ClientMessageTooLarge,
            Unrewritable::Malformed(_) => Outcome::ClientProtocolError,
        })?;
    state
        .expected_ready
        .fetch_add(report.sync_points, Ordering::AcqRel);
    if report.ignored_syncs > 0 {
        state.copy.client_ended();
        state.forget_ignored_syncs(report.ignored_syncs);
    }
    if report.opened {
        state.note_opened();
    }
    Ok(report)
}

/// Scans and forwards one chunk from the client (session mode); true when the client
/// terminated (what came before Terminate was sent, Terminate never).
async fn send_upward<W: AsyncWrite + Unpin>(
    chunk: &[u8],
    client_side: &mut ClientSide,
    state: &SyncState,
    server: &mut W,
) -> Result<bool, Outcome> {
    let mut up = Upward {
        state,
        quiet: state.client_quiet.load(Ordering::Acquire),
        terminate_at: None,
        replay: &mut client_side.replay,
        syncs_after_execute: &mut client_side.syncs_after_execute,
    };
    if client_side.scanner.scan(chunk, &mut up).is_err() {
        return Err(Outcome::ClientProtocolError);
    }
    let held = std::mem::take(&mut client_side.held);
    if let Some(start) = up.terminate_at {
        // Forward everything before Terminate, and Terminate itself never.
        let held_part = if start < 0 {
            held.len().saturating_sub(start.unsigned_abs())
        } else {
            held.len()
        };
        let chunk_part = usize::try_from(start).unwrap_or(0);
        if write_flushed(server, &held[..held_part]).await.is_err()
            || write_flushed(server, &chunk[..chunk_part]).await.is_err()
        {
            return Err(Outcome::ServerError);
        }
        return Ok(true);
    }
    // Before writing: while this chunk is on its way the server may answer an earlier sync
    // point, and the other direction must not see a quiet client then (it would detach and
    // drop this half mid-write).
    state.client_quiet.store(
        up.quiet && client_side.scanner.at_boundary(),
        Ordering::Release,
    );
    // Hold back the start of a header that is not complete yet: it might be Terminate. Its
    // bytes may span the held ones and this chunk (a header over three reads or more).
    let partial = client_side.scanner.partial_header_len();
    let tail = partial.min(chunk.len());
    let still_held = (partial - tail).min(held.len());
    let mut held = held;
    let ready = held.len() - still_held;
    if (ready > 0 && write_flushed(server, &held[..ready]).await.is_err())
        || write_flushed(server, &chunk[..chunk.len() - tail])
            .await
            .is_err()
    {
        return Err(Outcome::ServerError);
    }
    held.drain(..ready);
    held.extend_from_slice(&chunk[chunk.len() - tail..]);
    client_side.held = held;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framing::message;

    /// A Terminate whose header comes over three reads never reaches the server, nor do its
    /// first bytes (they would start the next client's stream on a pooled connection).
    #[tokio::test]
    async fn a_terminate_split_over_three_reads_stays_back() {
        let state = SyncState::default();
        let mut side = ClientSide::default();
        let mut upstream = Vec::new();
        let query = message(b'Q', b"select 1\0");
        let terminate = [b'X', 0, 0, 0, 4];
        let chunks = [
            [&query[..], &terminate[..2]].concat(),
            terminate[2..4].to_vec(),
        ];
        for chunk in chunks {
            let sent = send_upward(&chunk, &mut side, &state, &mut upstream).await;
            assert_eq!(sent, Ok(false));
        }
        let sent = send_upward(&terminate[4..], &mut side, &state, &mut upstream).await;
        assert_eq!(sent, Ok(true));
        assert_eq!(upstream, query);
    }

    /// A header over three reads that is not Terminate goes on whole once complete.
    #[tokio::test]
    async fn a_query_header_split_over_three_reads_goes_on_whole() {
        let state = SyncState::default();
        let mut side = ClientSide::default();
        let mut upstream = Vec::new();
        let query = message(b'Q', b"select 1\0");
        for chunk in [&query[..2], &query[2..4], &query[4..]] {
            let sent = send_upward(chunk, &mut side, &state, &mut upstream).await;
            assert_eq!(sent, Ok(false));
        }
        assert_eq!(upstream, query);
        assert_eq!(state.owed(), 1);
    }
}
