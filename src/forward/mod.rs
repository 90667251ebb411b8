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
mod copy_state;
mod downward;
mod halves;
pub mod prepared;
pub mod replay;
pub mod session_state;
mod sync;
mod upward;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::forward::prepared::{ClientRewriter, ClientStatements, Plan};
use crate::protocol::framing::FrameScanner;
use closer::{CloseAsk, Closer};
use downward::ToClient;
pub use sync::SyncState;
use upward::ToServer;

/// How long closing the upstream side may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How an attached period ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The client sent Terminate (not forwarded).
    ClientTerminated,
    /// The client closed its socket.
    ClientClosed,
    /// Reading from or writing to the client failed.
    ClientError,
    /// The client sent bytes that are not PostgreSQL messages (a length below 4, a message
    /// the transaction-mode rewriter cannot read).
    ClientProtocolError,
    /// Transaction mode: the client sent a Parse, Bind, Describe or Close over the rewriter's
    /// limit (each is read whole to rename its statement).
    ClientMessageTooLarge,
    /// The server closed its side.
    ServerClosed,
    /// Reading from or writing to the server failed, or it broke the framing.
    ServerError,
    /// The period ended at a ReadyForQuery as [`Detach`] asked: transaction mode gives the
    /// connection back to the pool, session mode keeps it and waits without buffers.
    Released,
    /// A cancel closed the upstream connection, with the client's stream between two
    /// messages: the sidecar may answer it.
    Cancelled,
    /// A cancel closed the upstream connection while the client had part of a server message:
    /// nothing more can be written to it.
    CancelledMidAnswer,
    /// The sidecar is shutting down and closed the session between transactions (set by the
    /// session, never by [`forward_attached`]).
    Shutdown,
    /// Session mode: the server closed the connection (or said FATAL) while its client was
    /// idle outside a transaction (set by the session, never by [`forward_attached`]).
    ServerClosedIdle,
    /// The shutdown's grace period ended with the session still attached: the upstream
    /// connection is closed whatever runs on it.
    Terminated,
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
    /// When the period ended, the client's stream was between two messages (the sidecar may
    /// still write it an ErrorResponse).
    pub client_at_boundary: bool,
    /// The last message the server sent was an ErrorResponse (its own words about an end).
    pub server_said_error: bool,
}

/// Per-client forwarding state that outlives one attached period.
#[derive(Debug, Default)]
pub struct ClientSide {
    scanner: FrameScanner,
    /// Header bytes of an unfinished client message, held back until it is complete.
    held: Vec<u8>,
    /// What the client built on its upstream connection that can be built again.
    pub replay: replay::SessionReplay,
    /// Syncs since the client's last Execute, Query or FunctionCall ([`sync::Upward`]).
    syncs_after_execute: u32,
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
    pub prepared: &'a std::sync::Mutex<prepared::ServerStatements>,
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
    pub parameters: &'a mut std::sync::Arc<Vec<(String, String)>>,
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
        pump,
    } = period;
    let plan = Plan::default();
    let prepared = match &pump {
        Pump::Rewriting(rewrite) => Some(rewrite.prepared),
        Pump::PassThrough(_) => None,
    };
    let (client, server) = (std::sync::Mutex::new(client), std::sync::Mutex::new(server));
    let (mut client_read, client_write) = halves::halves(&client);
    let (mut server_read, server_write) = halves::halves(&server);
    let mut down = ToClient::new(client_write, state, parameters, &plan, prepared, detach);
    let mut up = ToServer::new(server_write, pump, state, &plan);
    if let Err(outcome) = down.send_pending(pending).await {
        return (outcome, down.traffic(&up));
    }
    let mut outcome = tokio::select! {
        // Bytes already read are forwarded before a cancel is looked at.
        biased;
        outcome = up.run(&mut client_read, first) => outcome,
        outcome = down.run(&mut server_read) => outcome,
        outcome = cancel_requested(cancel, state) => outcome,
    };
    if outcome == Outcome::Cancelled && !down.client_at_boundary() {
        outcome = Outcome::CancelledMidAnswer;
    }
    let traffic = down.traffic(&up);
    if matches!(
        outcome,
        Outcome::Released | Outcome::ClientTerminated | Outcome::ClientClosed
    ) {
        return (outcome, traffic);
    }
    // The upstream connection is finished: close it politely (TLS close_notify), but never
    // wait on a server that stopped reading.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, up.server.shutdown()).await;
    (outcome, traffic)
}

/// Resolves with [`Outcome::Cancelled`] when a cancel asks to close the upstream connection
/// while the client is owed an answer (for a marked request: the answer it was owed when the
/// cancel came), and with [`Outcome::Terminated`] when the shutdown's grace period ends; a
/// cancel for a connection with nothing running is dropped, as PostgreSQL drops one for an
/// idle backend (idle in a transaction too).
async fn cancel_requested(cancel: Option<&Closer>, state: &SyncState) -> Outcome {
    let Some(closer) = cancel else {
        return std::future::pending().await;
    };
    // A close asked for before this period began was for what ran then.
    closer.forget();
    loop {
        let still_running = match closer.closed().await {
            CloseAsk::Any => true,
            CloseAsk::UnlessAnsweredSince(mark) => state.answered() == mark,
            CloseAsk::Terminate => return Outcome::Terminated,
        };
        if still_running && !state.owes_nothing() {
            return Outcome::Cancelled;
        }
    }
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
    let mut parameters = std::sync::Arc::new(Vec::new());
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
