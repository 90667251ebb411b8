//! One client's life: SSL/GSS negotiation (answered 'N'), the startup packet, a CancelRequest
//! when that is what arrives, a pooled upstream connection for the client's pool (which proves
//! the login works), the login sequence the client expects (AuthenticationOk, ParameterStatus,
//! our BackendKeyData, ReadyForQuery), then forwarding in session or transaction mode. Every
//! failure reaches the client as an ErrorResponse before the socket closes.

pub mod cancel;
mod cancel_request;
mod cancelled;
pub mod client_auth;
pub mod client_tls;
pub mod listener;
mod login;
mod negotiate;
mod sasl;
mod session;
mod session_idle;
mod session_mode;
mod transaction_mode;
mod verifiers;
mod waiting;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{Instrument, debug_span};

use crate::error::PgError;
use crate::frontend::cancel::{CancelMode, CancelRegistry};
use crate::frontend::client_auth::{ClientAuth, ClientAuthSettings};
use crate::frontend::client_tls::{ClientTls, ClientTlsSettings};
use crate::ops::metrics::UpstreamMetrics;
use crate::ops::shutdown::{Shutdown, shutdown_error};
use crate::pool::Pools;
use crate::protocol::messages;
use crate::stream::ClientStream;
use crate::upstream::Connector;

use login::login;

/// How one endpoint's listener treats its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendSettings {
    /// Log in upstream as this user instead of the client's.
    pub db_user: Option<String>,
    pub cancel_mode: CancelMode,
    /// How long a forwarded cancel may take to end the statement before the upstream
    /// connection is closed instead.
    pub cancel_grace: Duration,
    /// Most client connections at once, counted from accept; more get 53300.
    pub max_client_connections: usize,
    /// How long a new connection may take to send its startup packet.
    pub login_timeout: Duration,
    /// TLS for clients that ask for it.
    pub tls: ClientTlsSettings,
    /// How clients are authenticated.
    pub auth: ClientAuthSettings,
}

impl Default for FrontendSettings {
    fn default() -> Self {
        Self {
            db_user: None,
            cancel_mode: CancelMode::Forward,
            cancel_grace: Duration::from_secs(10),
            max_client_connections: 1000,
            login_timeout: Duration::from_secs(30),
            tls: ClientTlsSettings::default(),
            auth: ClientAuthSettings::default(),
        }
    }
}

/// What every client of one endpoint shares.
pub struct Frontend {
    pub pools: Arc<Pools>,
    pub cancels: Arc<CancelRegistry>,
    /// Log in upstream as this user instead of the client's.
    pub db_user: Option<String>,
    pub cancel_mode: CancelMode,
    pub cancel_grace: Duration,
    pub shutdown: Arc<Shutdown>,
    pub metrics: &'static UpstreamMetrics,
    /// TLS for clients that ask for it (`--client-tls`).
    pub tls: Option<Arc<ClientTls>>,
    /// Client authentication (`--client-auth scram-sha-256`).
    pub auth: Option<Arc<ClientAuth>>,
    /// When a client last asked for TLS the listener does not offer (seconds since start of
    /// the Unix epoch), to say so once a minute.
    tls_refusal_logged: AtomicU64,
    /// Client connections from accept to close, against `max_clients`.
    clients: AtomicUsize,
    max_clients: usize,
    login_timeout: Duration,
    next_id: AtomicU64,
}

impl Frontend {
    pub fn new(
        pools: Arc<Pools>,
        settings: &FrontendSettings,
        shutdown: Arc<Shutdown>,
        tls: Option<Arc<ClientTls>>,
        auth: Option<Arc<ClientAuth>>,
    ) -> Self {
        Self {
            tls,
            auth,
            tls_refusal_logged: AtomicU64::new(0),
            metrics: pools.connector().metrics(),
            pools,
            shutdown,
            cancels: CancelRegistry::new(),
            db_user: settings.db_user.clone(),
            cancel_mode: settings.cancel_mode,
            cancel_grace: settings.cancel_grace,
            clients: AtomicUsize::new(0),
            max_clients: settings.max_client_connections,
            login_timeout: settings.login_timeout,
            next_id: AtomicU64::new(1),
        }
    }

    fn connector(&self) -> &Connector {
        self.pools.connector()
    }

    /// A client asked for TLS and the listener has none: says so at most once a minute.
    fn note_tls_refused(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.tls_refusal_logged.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .tls_refusal_logged
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            tracing::info!(
                "a client asked for TLS and was answered 'N' (--client-tls off): it went on in plaintext if it allows that, but clients with sslmode=require (JDBC ssl=true, node-postgres ssl) fail; --client-tls self-signed fixes it (said at most once a minute)"
            );
        }
    }

    /// A place under `--max-client-connections`, or `None` when all are taken.
    fn admit(self: &Arc<Self>) -> Option<Admitted> {
        if self.clients.fetch_add(1, Ordering::AcqRel) >= self.max_clients {
            self.clients.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admitted(self.clone()))
    }
}

/// A client's place under `--max-client-connections`, given back on drop; also the session's
/// handle on what all sessions share (one pointer for both).
struct Admitted(Arc<Frontend>);

impl Admitted {
    /// What the endpoint's clients share.
    fn frontend(&self) -> &Arc<Frontend> {
        &self.0
    }
}

impl std::ops::Deref for Admitted {
    type Target = Frontend;

    fn deref(&self) -> &Frontend {
        &self.0
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one accepted client connection to its end: the future to spawn for it.
///
/// What an idle client costs is this future (inline in its tokio task, which tokio rounds up
/// to 128 bytes), the boxed [`Session`], tokio's registration of the socket and the cancel
/// key: the login's state is boxed and freed once the client is logged in, and the idle
/// waits store nothing but references.
pub fn serve_client(
    stream: ClientStream,
    peer: Option<SocketAddr>,
    context: Arc<Frontend>,
) -> impl Future<Output = ()> + Send {
    let client = Client {
        conn: context.next_id.fetch_add(1, Ordering::Relaxed),
        peer,
    };
    // At debug, not info: the subscriber keeps every live span (a slot and its formatted
    // fields), which at info cost each idle client ~1.5 KiB and kept a burst's memory after
    // it left (benches/memory.sh). The info and warn lines of a client name `conn` themselves.
    let span = debug_span!("client", conn = client.conn, peer = %client.peer());
    let counted = context.shutdown.client();
    let gauge = context.metrics.client_login();
    let login = Box::pin(login(stream, client, context, gauge));
    async move {
        // Held (not moved: a moved capture would take a second slot) until the client is gone.
        let _counted = &counted;
        let Some(mut session) = login.await else {
            return;
        };
        // One level, not a `serve` method: each nested async fn would keep its own copy of
        // its arguments in the task.
        let ending = match session.held.take() {
            Some(held) => Box::pin(session.run_held(held)).await,
            None => session.run_transaction_mode().await,
        };
        session.log_end(ending);
    }
    .instrument(span)
}

/// Who a client connection is, for the log lines that name it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Client {
    /// Numbered from 1 per endpoint, in accept order.
    pub(super) conn: u64,
    /// `None` for a unix socket.
    pub(super) peer: Option<SocketAddr>,
}

impl Client {
    /// The peer's address for a log field, formatted only when the line is written: formatting
    /// it eagerly cost ~0.6 µs of each connect-per-transaction client with `info` off (perf).
    pub(super) fn peer(&self) -> PeerText {
        PeerText(self.peer)
    }
}

/// A client's address as log lines show it: `unix` for a unix socket.
pub(super) struct PeerText(Option<SocketAddr>);

impl std::fmt::Display for PeerText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(peer) => peer.fmt(f),
            None => f.write_str("unix"),
        }
    }
}

/// Turns away a client that is still logging in while the sidecar drains.
async fn refuse_for_shutdown(stream: &mut ClientStream, context: &Frontend) {
    tracing::info!("client refused: shutting down");
    context.metrics.client_refused("shutdown");
    send_shutdown_error(stream).await;
}

/// Tells a client that the sidecar closes its connection for a shutdown.
async fn send_shutdown_error(stream: &mut ClientStream) {
    send_error(stream, &shutdown_error()).await;
}

/// Writes an ErrorResponse and closes the write side; failures here are the client's loss.
pub async fn send_error<W: AsyncWrite + Unpin>(writer: &mut W, error: &PgError) {
    let mut buf = BytesMut::new();
    messages::error_response(&mut buf, error);
    let _ = writer.write_all(&buf).await;
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, F: FnOnce(A) -> Fut, Fut>(_f: F) -> usize {
        size_of::<Fut>()
    }

    /// What an idle client holds is its task (the future below, inline) and the boxed
    /// [`Session`]; DESIGN.md aims at 1 KiB per idle client in all, so these must stay small.
    /// Grown? Box the new state, or keep it out of the idle wait (`RUSTC_BOOTSTRAP=1 cargo
    /// rustc --release --lib -- -Zprint-type-sizes` shows what each await point holds).
    #[test]
    fn an_idle_client_holds_little() {
        let task =
            future_size(|stream: ClientStream| serve_client(stream, None, unreachable_context()));
        // 144 bytes in 2026-11: tokio's task cell is this plus 104, rounded up to 128, so up
        // to 152 bytes make a 256-byte task.
        assert!(task <= 152, "a client task's future is {task} bytes");
        // The login's own future lives from accept until the startup packet: a burst of
        // connections holds one each (2,368 bytes before the greeting and the cancel
        // forwarding were boxed apart, 760 after, 848 with the TLS negotiation, 832 with the
        // startup packet boxed).
        let login = future_size(|stream: ClientStream| {
            login::login(
                stream,
                Client {
                    conn: 0,
                    peer: None,
                },
                unreachable_context(),
                unreachable_gauge(),
            )
        });
        assert!(login <= 880, "a login's future is {login} bytes");
        let session = size_of::<session::Session>();
        // 216 bytes in 2026-11 (a 224-byte malloc chunk); 240 with the io_uring socket's
        // 16 bytes of state (src/uring/socket).
        assert!(session <= 240, "Session is {session} bytes");
    }

    fn unreachable_context() -> Arc<Frontend> {
        unreachable!("only the future's type is used")
    }

    fn unreachable_gauge() -> crate::ops::metrics::ClientGauge {
        unreachable!("only the future's type is used")
    }
}
