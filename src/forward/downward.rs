//! Server → client during an attached period: [`ToClient`] reads the upstream connection's
//! answers, rewrites them in transaction mode (the sidecar's own ParseComplete/CloseComplete
//! in their place), tracks ReadyForQuery and ParameterStatus, and ends the period at the
//! ReadyForQuery where [`Detach`] says the client may let go of the connection.

use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::buffers::{Buffer, OutVec};
use super::prepared::{Plan, ServerRewriter, ServerStatements};
use super::sync::Downward;
use super::{Detach, Outcome, SyncState, ToServer, Traffic, write_flushed};
use crate::protocol::framing::FrameScanner;

/// The server → client half of an attached period.
pub(super) struct ToClient<'a, W> {
    client: W,
    scanner: FrameScanner,
    visitor: Downward<'a>,
    plan: &'a Plan,
    /// Transaction mode: the attached connection's prepared statements.
    prepared: Option<&'a Mutex<ServerStatements>>,
    rewriter: ServerRewriter,
    /// Transaction mode: the rewritten bytes of one chunk.
    out: OutVec,
    detach: Detach,
    /// A write to the client is under way (it may stop half-way if the period is dropped).
    writing: bool,
    /// Bytes sent to the client.
    sent: u64,
}

impl<'a, W: AsyncWrite + Unpin> ToClient<'a, W> {
    pub(super) fn new(
        client: W,
        state: &'a SyncState,
        parameters: &'a mut std::sync::Arc<Vec<(String, String)>>,
        plan: &'a Plan,
        prepared: Option<&'a Mutex<ServerStatements>>,
        detach: Detach,
    ) -> Self {
        Self {
            client,
            scanner: FrameScanner::new(),
            visitor: Downward {
                state,
                parameters,
                last_tag: 0,
                at_ready: true,
                transactions: 0,
                track_session: prepared.is_none(),
            },
            plan,
            prepared,
            rewriter: ServerRewriter::default(),
            out: OutVec::take(if prepared.is_some() { 2048 } else { 0 }),
            detach,
            writing: false,
            sent: 0,
        }
    }

    /// The client's stream is between two messages: nothing was left half-written.
    pub(super) fn client_at_boundary(&self) -> bool {
        !self.writing && self.scanner.at_boundary()
    }

    /// Writes `bytes` to the client, noting while it is under way.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), Outcome> {
        self.writing = true;
        write_flushed(&mut self.client, bytes)
            .await
            .map_err(|_| Outcome::ClientError)?;
        self.writing = false;
        self.sent += bytes.len() as u64;
        Ok(())
    }

    /// The period's byte and transaction counts, both directions.
    pub(super) fn traffic<S>(&self, up: &ToServer<'_, S>) -> Traffic {
        Traffic {
            to_server: up.sent,
            to_client: self.sent,
            transactions: self.visitor.transactions,
            client_at_boundary: self.client_at_boundary(),
            server_said_error: self.visitor.last_tag == b'E',
        }
    }

    /// Sends what the server said before the period started.
    pub(super) async fn send_pending(&mut self, pending: &[u8]) -> Result<(), Outcome> {
        if pending.is_empty() {
            return Ok(());
        }
        if self.scanner.scan(pending, &mut self.visitor).is_err() {
            return Err(Outcome::ServerError);
        }
        self.write(pending).await
    }

    /// Forwards until the server closes or fails, a write to the client fails, or the period
    /// detaches.
    pub(super) async fn run<R: AsyncRead + Unpin>(&mut self, server: &mut R) -> Outcome {
        let mut buffer = Buffer::take();
        let rewriting = self.prepared.is_some();
        loop {
            let read = tokio::select! {
                read = server.read(&mut buffer) => read,
                () = self.plan.wake.notified(), if rewriting => {
                    // The sidecar's own answers lead: the client waits for them, not the server.
                    if let Err(outcome) = self.send_synthetic().await {
                        return outcome;
                    }
                    // Or the client sent what the server will not answer, and it is idle.
                    if self.may_detach() {
                        return Outcome::Released;
                    }
                    continue;
                }
            };
            let n = match read {
                Ok(0) => return Outcome::ServerClosed,
                Ok(n) => {
                    // Progress a cancel's grace looks at (one uncontended add per read).
                    self.visitor.state.note_heard();
                    n
                }
                // A TLS peer that closes without close_notify: a close, not a failure.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Outcome::ServerClosed;
                }
                Err(_) => return Outcome::ServerError,
            };
            if let Err(outcome) = self.deliver(&buffer[..n]).await {
                return outcome;
            }
        }
    }

    async fn send_synthetic(&mut self) -> Result<(), Outcome> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        self.plan.take_leading_synthetic(&mut out);
        let written = self.write(&out).await;
        self.out = out;
        written
    }

    async fn scan_and_write(&mut self, chunk: &[u8]) -> Result<(), Outcome> {
        if self.scanner.scan(chunk, &mut self.visitor).is_err() {
            return Err(Outcome::ServerError);
        }
        self.write(chunk).await
    }

    /// Sends one chunk of the server's bytes to the client; `Err(Released)` when the period
    /// detaches after it.
    async fn deliver(&mut self, bytes: &[u8]) -> Result<(), Outcome> {
        match self.prepared {
            Some(prepared) => {
                let mut out = std::mem::take(&mut self.out);
                out.clear();
                let rewritten = self.rewriter.process(bytes, self.plan, prepared, &mut out);
                let sent = match rewritten {
                    Ok(()) => self.scan_and_write(&out).await,
                    Err(_) => Err(Outcome::ServerError),
                };
                self.out = out;
                sent?;
            }
            None => self.scan_and_write(bytes).await?,
        }
        if self.may_detach() {
            return Err(Outcome::Released);
        }
        Ok(())
    }

    /// The period may end here, as [`Detach`] says: after a ReadyForQuery and nothing but
    /// asynchronous messages since (or before the server said anything: the connection came
    /// idle), with both streams at a message boundary.
    fn may_detach(&self) -> bool {
        let state = self.visitor.state;
        let detach = match self.detach {
            Detach::Never => false,
            Detach::WhenQuiet => state.owes_nothing(),
            Detach::WhenIdle => state.is_idle() && self.plan.is_empty(),
        };
        detach && self.visitor.at_ready && self.scanner.at_boundary()
    }
}
