//! A logged-in client ("session"): what it holds while idle, and what both pooling modes do
//! with it (count its traffic, log its end, tell it its statement was cancelled).

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::error::{PgError, sqlstate};
use crate::forward::buffers::Buffer;
use crate::forward::closer::Closer;
use crate::forward::prepared::{ClientRewriter, ClientStatements};
use crate::forward::{Outcome, Traffic};
use crate::frontend::cancel::CancelKeyGuard;
use crate::ops::metrics::ClientGauge;
use crate::pool::{Lease, Parameters, Pool};
use crate::stream::ClientStream;

use super::{Admitted, send_error};

/// How long a client whose message was refused may go on sending before its connection closes.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// One logged-in client after the greeting: all that an idle client holds.
pub(super) struct Session {
    pub(super) stream: ClientStream,
    /// What sessions share; holding it is the client's place under --max-client-connections.
    pub(super) context: Admitted,
    pub(super) pool: Arc<Pool>,
    pub(super) connected: Instant,
    /// The client's number, for its log lines.
    pub(super) conn: u64,
    pub(super) cancel_key: CancelKeyGuard,
    /// Transaction mode: the client's messages and statements across transactions.
    pub(super) rewriter: ClientRewriter,
    pub(super) statements: ClientStatements,
    /// Totals for the closing log line (the metrics are counted per attached period).
    pub(super) bytes_to_server: u64,
    pub(super) bytes_to_client: u64,
    /// Session mode: the upstream connection the client holds for its life, or what it was
    /// greeted with until it gets one at its first message.
    pub(super) held: Option<Box<Held>>,
    pub(super) gauge: ClientGauge,
}

/// What a session-mode client starts with (boxed in the session: a connection is large).
#[allow(clippy::large_enum_variant)]
pub(super) enum Held {
    Connection(Lease),
    /// The ParameterStatus set it was greeted with (its pool's, no connection was free).
    Greeted(Parameters),
}

impl Session {
    pub(super) fn log_end(&self, ending: Outcome) {
        info!(
            conn = self.conn,
            ending = ?ending,
            duration_ms = self.connected.elapsed().as_millis() as u64,
            bytes_to_server = self.bytes_to_server,
            bytes_to_client = self.bytes_to_client,
            "client disconnected"
        );
    }

    /// The client cannot go on after a cancel closed its upstream connection: its session
    /// state went with it, or what it is owed cannot be told.
    pub(super) async fn cancelled_fatal(&mut self) {
        let mut error = cancelled_error(crate::error::Severity::Fatal);
        if let Some(change) = self.cancel_key.state().session_change() {
            error = error.with_detail(format!(
                "the session's state ({}) was lost with the upstream connection the cancel \
                 closed; reconnect",
                change.label().replace('_', " ")
            ));
        }
        send_error(&mut self.stream, &error).await;
    }

    /// The client's session could not be built again on another connection after `closed_by`
    /// (a cancel, or the server closing while the client was idle) closed its own: FATAL.
    pub(super) async fn not_rebuilt_fatal(&mut self, closed_by: Outcome) {
        if closed_by == Outcome::Cancelled {
            return self.cancelled_fatal().await;
        }
        let error = PgError::fatal(
            sqlstate::CONNECTION_FAILURE_LOST,
            format!(
                "rds-iam-sidecar: the connection to {} was closed by the server while idle, \
                 and the session's settings or prepared statements could not be set up again \
                 on another",
                self.context.connector().upstream()
            ),
        )
        .with_hint("reconnect; nothing was running");
        send_error(&mut self.stream, &error).await;
    }

    pub(super) fn add(&mut self, traffic: Traffic) {
        self.bytes_to_server += traffic.to_server;
        self.bytes_to_client += traffic.to_client;
        self.context
            .metrics
            .forwarded(traffic.to_server, traffic.to_client, traffic.transactions);
    }
}

impl Session {
    /// Tells the client why its session ends when it would otherwise see only a closed socket:
    /// the upstream connection was lost (FATAL 08006, a WARN line, a metric), its own bytes
    /// were not PostgreSQL messages (FATAL 08P01), or the shutdown's grace period ended under
    /// it (FATAL 57P01). Nothing is written when the client holds part
    /// of a server message, nor after the server's own ErrorResponse.
    pub(super) async fn tell_ending(&mut self, outcome: Outcome, traffic: &Traffic) {
        let error = match outcome {
            Outcome::ServerClosed | Outcome::ServerClosedIdle | Outcome::ServerError => {
                let during = self.lost_during();
                warn!(
                    conn = self.conn,
                    during,
                    ?outcome,
                    "the upstream connection was lost under a client"
                );
                self.context.metrics.upstream_lost(during);
                if traffic.server_said_error {
                    return;
                }
                let (when, hint) = match during {
                    "statement" => (
                        "while a statement ran",
                        "the statement may or may not have completed: check before retrying",
                    ),
                    "transaction" => (
                        "inside a transaction",
                        "the transaction did not commit: run it again on a new connection",
                    ),
                    _ => ("while idle", "reconnect; nothing was running"),
                };
                PgError::fatal(
                    sqlstate::CONNECTION_FAILURE_LOST,
                    format!(
                        "rds-iam-sidecar: the connection to {} was lost {when}",
                        self.context.connector().upstream()
                    ),
                )
                .with_hint(hint)
            }
            Outcome::Terminated => crate::ops::shutdown::terminated_error(),
            Outcome::ClientProtocolError => PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "rds-iam-sidecar: invalid message from the client (a length below 4 or above \
                 1 GiB, or a message that cannot be read)",
            ),
            Outcome::ClientMessageTooLarge => PgError::fatal(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                "rds-iam-sidecar: a Parse, Bind, Describe or Close message over 64 MiB in \
                 transaction mode (each is read whole to rename its prepared statement)",
            )
            .with_hint(
                "send values that large with --pool-mode session, or in smaller pieces; \
                 nothing of this message reached the database",
            ),
            _ => return,
        };
        if traffic.client_at_boundary {
            send_error(&mut self.stream, &error).await;
        }
        if outcome == Outcome::ClientMessageTooLarge {
            self.linger().await;
        }
    }

    /// Closes the sending side and reads what the client still sends (the rest of its large
    /// message) for up to [`LINGER`]: a socket closed with unread bytes resets the connection,
    /// and the client would see that instead of the error just sent.
    async fn linger(&mut self) {
        let _ = self.stream.shutdown().await;
        let mut scratch = Buffer::take();
        let drain = async { while let Ok(1..) = self.stream.read(&mut scratch).await {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// What the client was doing when its upstream connection went: the metric label.
    fn lost_during(&self) -> &'static str {
        if !self.cancel_key.state().owes_nothing() {
            "statement"
        } else if self.cancel_key.state().inside_transaction() {
            "transaction"
        } else {
            "idle"
        }
    }
}

/// What wakes an attached period for a cancel done by closing the upstream connection.
pub(super) fn closer(key: &CancelKeyGuard) -> Option<&Closer> {
    Some(key.closer())
}

pub(super) fn cancelled_error(severity: crate::error::Severity) -> PgError {
    PgError::new(
        severity,
        sqlstate::QUERY_CANCELED,
        "canceling statement due to user request",
    )
    .with_detail(
        "rds-iam-sidecar closed the upstream connection that ran it; the statement may run on \
         in the database until it notices the closed connection",
    )
}
