//! The hot loop: bytes between a client and the upstream connection serving it, unchanged.
//! Both directions run concurrently (so neither side can deadlock the other with a full socket
//! buffer) and walk message headers with [`FrameScanner`]:
//! - client → server counts sync points (Query, Sync, FunctionCall) and stops before Terminate,
//!   which must not reach a pooled connection;
//! - server → client tracks ReadyForQuery (one per sync point) and ParameterStatus, so the
//!   session knows when the connection is idle and which parameters it now has.
//!
//! Buffers (from [`crate::forward::buffers`]) are held only while a client is attached to an upstream
//! connection; nothing is allocated per message.

pub mod buffers;
pub mod closer;
pub mod prepared;
mod sync;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::forward::buffers::Buffer;
use crate::forward::prepared::{ClientRewriter, ClientStatements, Plan, ServerRewriter};
use crate::protocol::framing::{FrameScanner, READY_FOR_QUERY};
use closer::Closer;
use sync::{Downward, Upward};
pub use sync::{SyncState, set_parameter};

/// How long closing the upstream side may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How an attached period ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The client sent Terminate (not forwarded).
    ClientTerminated,
    /// The client closed its socket.
    ClientClosed,
    /// Reading from or writing to the client failed, or it broke the framing.
    ClientError,
    /// The server closed its side.
    ServerClosed,
    /// Reading from or writing to the server failed, or it broke the framing.
    ServerError,
    /// The period ended at a ReadyForQuery as [`Detach`] asked: transaction mode gives the
    /// connection back to the pool, session mode keeps it and waits without buffers.
    Released,
    /// A cancel request asked to close the upstream connection (`--cancel-mode close`).
    Cancelled,
    /// The sidecar is shutting down and closed the session between transactions (set by the
    /// session, never by [`forward_attached`]).
    Shutdown,
}

/// When an attached period ends by itself, always right after a ReadyForQuery that leaves
/// both streams at a message boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    /// Only when a side closes or fails.
    Never,
    /// The client is owed nothing (session mode: it keeps its connection, even inside a
    /// transaction, but not the buffers).
    WhenQuiet,
    /// The connection is idle outside a transaction with nothing pending (transaction mode:
    /// it can serve another client).
    WhenIdle,
}

/// Byte counts of an attached period.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    pub to_server: u64,
    pub to_client: u64,
    /// ReadyForQuery messages outside a transaction: completed transactions.
    pub transactions: u64,
}

/// Per-client forwarding state that outlives one attached period.
#[derive(Debug, Default)]
pub struct ClientSide {
    scanner: FrameScanner,
    /// Header bytes of an unfinished client message, held back until it is complete.
    held: Vec<u8>,
}

impl ClientSide {
    /// The client's stream sits between two messages.
    pub fn at_boundary(&self) -> bool {
        self.scanner.at_boundary()
    }
}

/// Transaction mode's statement renaming for one client (see [`crate::forward::prepared`]).
pub struct Rewrite<'a> {
    pub client: &'a mut ClientRewriter,
    pub statements: &'a mut ClientStatements,
    /// The attached server connection's prepared statements.
    pub prepared: &'a std::sync::Mutex<std::collections::HashSet<String>>,
}

/// How the client's bytes go upstream during an attached period.
pub enum Pump<'a> {
    /// Session mode: unchanged, headers scanned (Terminate kept back); the scanner's state
    /// outlives the period.
    PassThrough(&'a mut ClientSide),
    /// Transaction mode: named prepared statements renamed for the attached connection.
    Rewriting(Rewrite<'a>),
}

/// One attached period: what the session hands the hot loop besides the two streams.
pub struct Period<'a> {
    /// What both directions know of the protocol's sync points.
    pub state: &'a SyncState,
    /// The server connection's ParameterStatus values, updated as they change.
    pub parameters: &'a mut Vec<(String, String)>,
    /// Bytes the client already sent: they go upstream first.
    pub first: &'a [u8],
    /// Bytes the server already sent: they go to the client first.
    pub pending: &'a [u8],
    /// When the period ends by itself ([`Outcome::Released`]).
    pub detach: Detach,
    /// What ends the period for a close-mode cancel.
    pub cancel: Option<&'a Closer>,
    /// How the client's bytes go upstream.
    pub pump: Pump<'a>,
}

impl Pump<'_> {
    /// Sends one chunk of the client's bytes upstream; `Some(outcome)` when the client
    /// terminated.
    async fn send<W: AsyncWrite + Unpin>(
        &mut self,
        chunk: &[u8],
        state: &SyncState,
        plan: &Plan,
        up_out: &mut Vec<u8>,
        server: &mut W,
    ) -> Result<Option<Outcome>, Outcome> {
        match self {
            Self::PassThrough(client_side) => send_upward(chunk, client_side, state, server).await,
            Self::Rewriting(rewrite) => {
                send_rewritten(chunk, rewrite, state, plan, up_out, server).await
            }
        }
    }
}

/// Forwards between `client` and `server` until an [`Outcome`], as `period` says.
pub async fn forward_attached<C, S>(
    client: &mut C,
    server: &mut S,
    period: Period<'_>,
) -> (Outcome, Traffic)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Period {
        state,
        parameters,
        first,
        pending,
        detach,
        cancel,
        mut pump,
    } = period;
    let plan = Plan::default();
    let prepared = match &pump {
        Pump::Rewriting(rewrite) => Some(rewrite.prepared),
        Pump::PassThrough(_) => None,
    };
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let mut traffic = Traffic::default();

    let mut down = Downward {
        state,
        parameters,
        last_tag: 0,
        transactions: 0,
    };
    let mut server_scanner = FrameScanner::new();
    if !pending.is_empty() {
        if server_scanner.scan(pending, &mut down).is_err() {
            return (Outcome::ServerError, traffic);
        }
        if write_flushed(&mut client_write, pending).await.is_err() {
            return (Outcome::ClientError, traffic);
        }
        traffic.to_client += pending.len() as u64;
    }
    // Sized for a typical batch up front in transaction mode (no regrowth per message);
    // session mode never writes to it.
    let mut up_out = Vec::with_capacity(if prepared.is_some() { 1024 } else { 0 });
    if !first.is_empty() {
        let sent = pump
            .send(first, state, &plan, &mut up_out, &mut server_write)
            .await;
        match sent {
            Ok(None) => traffic.to_server += first.len() as u64,
            Ok(Some(outcome)) | Err(outcome) => return (outcome, traffic),
        }
    }

    let mut to_server = 0u64;
    let mut to_client = 0u64;
    let upward = async {
        let mut buffer = Buffer::take();
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) => return Outcome::ClientClosed,
                Ok(n) => n,
                Err(_) => return Outcome::ClientError,
            };
            let sent = pump
                .send(&buffer[..n], state, &plan, &mut up_out, &mut server_write)
                .await;
            match sent {
                Ok(None) => to_server += n as u64,
                Ok(Some(outcome)) | Err(outcome) => return outcome,
            }
        }
    };
    let downward = async {
        let mut buffer = Buffer::take();
        let mut server_rewriter = ServerRewriter::default();
        let mut down_out = Vec::with_capacity(if prepared.is_some() { 2048 } else { 0 });
        loop {
            let read = tokio::select! {
                read = server_read.read(&mut buffer) => read,
                () = plan.wake.notified(), if prepared.is_some() => {
                    // The sidecar's own answers lead: the client waits for them, not the server.
                    down_out.clear();
                    plan.take_leading_synthetic(&mut down_out);
                    if write_flushed(&mut client_write, &down_out).await.is_err() {
                        return Outcome::ClientError;
                    }
                    continue;
                }
            };
            let n = match read {
                Ok(0) => return Outcome::ServerClosed,
                Ok(n) => n,
                // A TLS peer that closes without close_notify: a close, not a failure.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Outcome::ServerClosed;
                }
                Err(_) => return Outcome::ServerError,
            };
            let chunk = match prepared {
                Some(prepared) => {
                    down_out.clear();
                    if server_rewriter
                        .process(&buffer[..n], &plan, prepared, &mut down_out)
                        .is_err()
                    {
                        return Outcome::ServerError;
                    }
                    &down_out[..]
                }
                None => &buffer[..n],
            };
            if server_scanner.scan(chunk, &mut down).is_err() {
                return Outcome::ServerError;
            }
            if write_flushed(&mut client_write, chunk).await.is_err() {
                return Outcome::ClientError;
            }
            to_client += chunk.len() as u64;
            let detach = match detach {
                Detach::Never => false,
                Detach::WhenQuiet => state.owes_nothing(),
                Detach::WhenIdle => state.is_idle() && plan.is_empty(),
            };
            if detach && down.last_tag == READY_FOR_QUERY && server_scanner.at_boundary() {
                return Outcome::Released;
            }
        }
    };
    let cancelled = async {
        match cancel {
            Some(closer) => closer.closed().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        outcome = upward => outcome,
        outcome = downward => outcome,
        () = cancelled => Outcome::Cancelled,
    };
    traffic.to_server += to_server;
    traffic.to_client += to_client;
    traffic.transactions += down.transactions;
    if matches!(
        outcome,
        Outcome::Released | Outcome::ClientTerminated | Outcome::ClientClosed
    ) {
        return (outcome, traffic);
    }
    // The upstream connection is finished: close it politely (TLS close_notify), but never
    // wait on a server that stopped reading.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, server_write.shutdown()).await;
    (outcome, traffic)
}

/// Rewrites and forwards one chunk from the client (transaction mode); `Some(outcome)` when
/// the client terminated.
async fn send_rewritten<W: AsyncWrite + Unpin>(
    chunk: &[u8],
    rewrite: &mut Rewrite<'_>,
    state: &SyncState,
    plan: &Plan,
    out: &mut Vec<u8>,
    server: &mut W,
) -> Result<Option<Outcome>, Outcome> {
    out.clear();
    let report = rewrite
        .client
        .process(chunk, rewrite.statements, rewrite.prepared, plan, out)
        .map_err(|_| Outcome::ClientError)?;
    state
        .expected_ready
        .fetch_add(report.sync_points, Ordering::AcqRel);
    if !report.terminated {
        state.client_quiet.store(report.quiet, Ordering::Release);
    }
    if write_flushed(server, out).await.is_err() {
        return Err(Outcome::ServerError);
    }
    Ok(report.terminated.then_some(Outcome::ClientTerminated))
}

/// Scans and forwards one chunk from the client; `Some(outcome)` when the client terminated.
async fn send_upward<W: AsyncWrite + Unpin>(
    chunk: &[u8],
    client_side: &mut ClientSide,
    state: &SyncState,
    server: &mut W,
) -> Result<Option<Outcome>, Outcome> {
    let mut up = Upward {
        state,
        quiet: state.client_quiet.load(Ordering::Acquire),
        terminate_at: None,
    };
    if client_side.scanner.scan(chunk, &mut up).is_err() {
        return Err(Outcome::ClientError);
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
        return Ok(Some(Outcome::ClientTerminated));
    }
    // Before writing: while this chunk is on its way the server may answer an earlier sync
    // point, and the other direction must not see a quiet client then (it would detach and
    // drop this half mid-write).
    state.client_quiet.store(
        up.quiet && client_side.scanner.at_boundary(),
        Ordering::Release,
    );
    // Hold back the start of a header that is not complete yet: it might be Terminate.
    let tail = client_side.scanner.partial_header_len().min(chunk.len());
    if (!held.is_empty() && write_flushed(server, &held).await.is_err())
        || write_flushed(server, &chunk[..chunk.len() - tail])
            .await
            .is_err()
    {
        return Err(Outcome::ServerError);
    }
    let mut held = held;
    held.clear();
    held.extend_from_slice(&chunk[chunk.len() - tail..]);
    client_side.held = held;
    Ok(None)
}

async fn write_flushed<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    writer.write_all(bytes).await?;
    // TLS writers may keep encrypted records buffered until flushed.
    writer.flush().await
}

/// Forwards until either side closes, with nothing pooled (benchmarks, tests).
pub async fn forward<C, S>(mut client: C, mut server: S, pending: &[u8]) -> (Outcome, Traffic)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let state = SyncState::default();
    let mut parameters = Vec::new();
    let mut client_side = ClientSide::default();
    let period = Period {
        state: &state,
        parameters: &mut parameters,
        first: &[],
        pending,
        detach: Detach::Never,
        cancel: None,
        pump: Pump::PassThrough(&mut client_side),
    };
    forward_attached(&mut client, &mut server, period).await
}
