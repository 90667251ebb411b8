//! One client's life: SSL/GSS negotiation (answered 'N'), the startup packet, a CancelRequest
//! when that is what arrives, a pooled upstream connection for the client's pool (which proves
//! the login works), the login sequence the client expects (AuthenticationOk, ParameterStatus,
//! our BackendKeyData, ReadyForQuery), then forwarding in session or transaction mode. Every
//! failure reaches the client as an ErrorResponse before the socket closes.

pub mod cancel;
pub mod listener;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::error::{PgError, sqlstate};
use crate::forward::buffers::Buffer;
use crate::forward::prepared::{ClientRewriter, ClientStatements};
use crate::forward::{
    ClientSide, Detach, Outcome, Rewrite, SessionState, Traffic, forward_attached,
};
use crate::frontend::cancel::CancelMode;
use crate::frontend::cancel::{CancelKeyGuard, CancelRegistry, Closer, ServerKey};
use crate::ops::metrics::{ClientGauge, ClientState, UpstreamMetrics};
use crate::ops::shutdown::{Shutdown, Woken, shutdown_error};
use crate::pool::reset::reset;
use crate::pool::{CheckoutError, Lease, Pool, PoolKey, PoolMode, Pools};
use crate::protocol::framing::TransactionStatus;
use crate::protocol::messages;
use crate::protocol::startup::{InitialPacket, StartupError, StartupRequest, read_initial_packet};
use crate::stream::ClientStream;
use crate::upstream::{Connector, FORWARDED_PARAMETERS, ServerConnection};

/// Protocol 3.0 as a version number: what NegotiateProtocolVersion offers.
const PROTOCOL_3_0: i32 = 3 << 16;

/// How long a client may take to send its startup packet.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How one endpoint's listener treats its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendSettings {
    /// Log in upstream as this user instead of the client's.
    pub db_user: Option<String>,
    pub cancel_mode: CancelMode,
    /// Most client connections at once; more get 53300.
    pub max_client_connections: usize,
}

impl Default for FrontendSettings {
    fn default() -> Self {
        Self {
            db_user: None,
            cancel_mode: CancelMode::Forward,
            max_client_connections: 1000,
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
    pub shutdown: Arc<Shutdown>,
    pub metrics: &'static UpstreamMetrics,
    /// Clients past the startup packet, against `max_clients`.
    clients: AtomicUsize,
    max_clients: usize,
    next_id: AtomicU64,
}

impl Frontend {
    pub fn new(pools: Arc<Pools>, settings: &FrontendSettings, shutdown: Arc<Shutdown>) -> Self {
        Self {
            metrics: pools.connector().metrics(),
            pools,
            shutdown,
            cancels: CancelRegistry::new(),
            db_user: settings.db_user.clone(),
            cancel_mode: settings.cancel_mode,
            clients: AtomicUsize::new(0),
            max_clients: settings.max_client_connections,
            next_id: AtomicU64::new(1),
        }
    }

    fn connector(&self) -> &Connector {
        self.pools.connector()
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
    let id = context.next_id.fetch_add(1, Ordering::Relaxed);
    let span = match peer {
        Some(peer) => info_span!("client", conn = id, peer = %peer),
        None => info_span!("client", conn = id, peer = "unix"),
    };
    let counted = context.shutdown.session();
    let gauge = context.metrics.client_login();
    let login = Box::pin(login(stream, context, gauge));
    async move {
        // Held (not moved: a moved capture would take a second slot) until the client is gone.
        let _counted = &counted;
        let Some(mut session) = login.await else {
            return;
        };
        // One level, not a `serve` method: each nested async fn would keep its own copy of
        // its arguments in the task.
        let ending = match session.held.take() {
            Some(lease) => Box::pin(session.run_session_mode(*lease)).await,
            None => session.run_transaction_mode().await,
        };
        session.log_end(ending);
    }
    .instrument(span)
}

/// Negotiation, startup packet, pool checkout and greeting; the logged-in session and its
/// first upstream connection, or `None` when the client is gone or was refused.
async fn login(
    mut stream: ClientStream,
    context: Arc<Frontend>,
    gauge: ClientGauge,
) -> Option<Box<Session>> {
    let negotiated = tokio::select! {
        negotiated = tokio::time::timeout(STARTUP_TIMEOUT, negotiate(&mut stream, &context)) => negotiated,
        // A client that has not logged in yet does not hold up a drain.
        () = context.shutdown.draining() => {
            refuse_for_shutdown(&mut stream, &context).await;
            return None;
        }
    };
    let startup = match negotiated {
        Ok(Ok(Some(startup))) => startup,
        Ok(Ok(None)) => return None,
        Ok(Err(error)) => {
            debug!(%error, "client startup failed");
            if let Some(pg) = startup_error_to_pg(&error) {
                send_error(&mut stream, &pg).await;
            }
            return None;
        }
        Err(_) => {
            let pg = PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "rds-iam-sidecar: no startup packet within 30 s",
            );
            send_error(&mut stream, &pg).await;
            return None;
        }
    };
    greet(stream, startup, context, gauge).await
}

/// Answers SSL/GSS requests until the startup packet; `None` when the connection was a cancel.
async fn negotiate(
    stream: &mut ClientStream,
    context: &Frontend,
) -> Result<Option<StartupRequest>, StartupError> {
    loop {
        match read_initial_packet(stream).await? {
            InitialPacket::SslRequest | InitialPacket::GssEncRequest => {
                stream.write_all(b"N").await?;
            }
            InitialPacket::Cancel { pid, secret } => {
                handle_cancel(context, pid, &secret).await;
                return Ok(None);
            }
            InitialPacket::Startup(startup) => return Ok(Some(startup)),
        }
    }
}

async fn handle_cancel(context: &Frontend, pid: i32, secret: &[u8]) {
    let Ok(secret) = <[u8; 4]>::try_from(secret) else {
        debug!("cancel request with a key the sidecar never issued; ignored");
        context.metrics.cancel_request("unknown_key");
        return;
    };
    let Some(target) = context.cancels.lookup(pid, i32::from_be_bytes(secret)) else {
        debug!("cancel request for an unknown key; ignored");
        context.metrics.cancel_request("unknown_key");
        return;
    };
    let Some(server) = target.server else {
        debug!("cancel request for a client between transactions; nothing to cancel");
        context.metrics.cancel_request("not_running");
        return;
    };
    match context.cancel_mode {
        CancelMode::Forward => match context.connector().cancel(server.pid, server.secret).await {
            Ok(()) => {
                info!("cancel request forwarded upstream");
                context.metrics.cancel_request("forwarded");
            }
            Err(error) => {
                warn!(%error, "forwarding a cancel request failed");
                context.metrics.cancel_request("failed");
            }
        },
        CancelMode::Close => {
            info!("cancel request: closing the client's upstream connection (--cancel-mode close)");
            context.metrics.cancel_request("closed");
            target.close();
        }
    }
}

fn startup_error_to_pg(error: &StartupError) -> Option<PgError> {
    match error {
        StartupError::Closed | StartupError::Io(_) => None,
        StartupError::UnsupportedProtocol { .. } => Some(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("rds-iam-sidecar: {error}"),
        )),
        StartupError::BadLength(_) | StartupError::Invalid(_) => Some(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("rds-iam-sidecar: {error}"),
        )),
    }
}

/// Checks the startup packet, checks out an upstream connection (which proves the login
/// works) and sends the client its login sequence.
async fn greet(
    mut stream: ClientStream,
    startup: StartupRequest,
    context: Arc<Frontend>,
    mut gauge: ClientGauge,
) -> Option<Box<Session>> {
    if context.shutdown.is_draining() {
        refuse_for_shutdown(&mut stream, &context).await;
        return None;
    }
    let Some(client_user) = startup.get("user").filter(|u| !u.is_empty()) else {
        let pg = PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        );
        context.metrics.auth_failure(&pg.code);
        send_error(&mut stream, &pg).await;
        return None;
    };
    if startup
        .get("replication")
        .is_some_and(|v| v != "false" && v != "0" && v != "off")
    {
        let pg = PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "rds-iam-sidecar does not support replication connections",
        );
        send_error(&mut stream, &pg).await;
        return None;
    }
    let Some(admitted) = context.admit() else {
        let pg = PgError::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "sorry, too many clients already (rds-iam-sidecar --max-client-connections {})",
                context.max_clients
            ),
        );
        warn!("client refused: --max-client-connections reached");
        context.metrics.client_refused("max_clients");
        send_error(&mut stream, &pg).await;
        return None;
    };
    let user = context.db_user.as_deref().unwrap_or(client_user).to_owned();
    let database = startup.get("database").unwrap_or(client_user).to_owned();

    let mut forwarded = Vec::new();
    let mut dropped = Vec::new();
    let mut unsupported_protocol_options = Vec::new();
    for (name, value) in &startup.parameters {
        if name == "user" || name == "database" {
            continue;
        }
        if name.starts_with("_pq_.") {
            unsupported_protocol_options.push(name.clone());
        } else if FORWARDED_PARAMETERS
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
        {
            forwarded.push((name.clone(), value.clone()));
        } else {
            dropped.push(name.as_str());
        }
    }
    if !dropped.is_empty() {
        warn!(parameters = ?dropped, "startup parameters not forwarded (RDS Proxy rejects them)");
    }

    let pool = context
        .pools
        .pool(PoolKey::new(&user, &database, forwarded));
    let started = Instant::now();
    let checkout = tokio::select! {
        checkout = Box::pin(context.pools.checkout(&pool)) => checkout,
        // Waiting for a busy pool does not hold up a drain either.
        () = context.shutdown.draining() => {
            refuse_for_shutdown(&mut stream, &context).await;
            return None;
        }
    };
    let mut lease = match checkout {
        Ok(lease) => lease,
        Err(error) => {
            let pg = checkout_error_to_pg(&error, &context, &user);
            warn!(%error, sqlstate = %pg.code, pool = %pool.key, "no upstream connection for a new client");
            context.metrics.auth_failure(&pg.code);
            send_error(&mut stream, &pg).await;
            return None;
        }
    };
    let waited = started.elapsed();
    context.metrics.pool_wait(waited);
    let wait_ms = waited.as_secs_f64() * 1000.0;
    if context.shutdown.is_draining() {
        lease.release();
        refuse_for_shutdown(&mut stream, &context).await;
        return None;
    }

    let cancel_key = context.cancels.register(server_key(lease.server()));
    let mut greeting = BytesMut::with_capacity(512);
    if startup.minor > 0 || !unsupported_protocol_options.is_empty() {
        // Like PostgreSQL, the full newest version number (3.0), not just its minor part.
        messages::negotiate_protocol_version(
            &mut greeting,
            PROTOCOL_3_0,
            unsupported_protocol_options,
        );
    }
    messages::authentication_ok(&mut greeting);
    if !dropped.is_empty() {
        messages::warning(
            &mut greeting,
            "01000",
            &format!(
                "rds-iam-sidecar did not apply the startup parameters {}: RDS Proxy refuses \
                 connections that set them",
                dropped.join(", ")
            ),
            "set them after connecting with SET, or for the role or database with \
             ALTER ROLE ... SET / ALTER DATABASE ... SET",
        );
    }
    for (name, value) in &lease.server().parameters {
        messages::parameter_status(&mut greeting, name, value);
    }
    messages::backend_key_data(&mut greeting, cancel_key.pid, cancel_key.secret);
    messages::ready_for_query_idle(&mut greeting);
    if stream.write_all(&greeting).await.is_err() {
        return None;
    }
    info!(pool = %pool.key, wait_ms = format_args!("{wait_ms:.1}"), "client connected");
    let held = match context.pools.settings.mode {
        PoolMode::Session => Some(Box::new(lease)),
        PoolMode::Transaction => {
            cancel_key.set_server(None);
            lease.release();
            None
        }
    };
    gauge.set(ClientState::Idle);
    drop(context);
    Some(Box::new(Session {
        stream,
        context: admitted,
        pool,
        connected: Instant::now(),
        cancel_key,
        rewriter: ClientRewriter::new(),
        statements: ClientStatements::default(),
        state: SessionState::default(),
        bytes_to_server: 0,
        bytes_to_client: 0,
        held,
        gauge,
    }))
}

/// Turns away a client that is still logging in while the sidecar drains.
async fn refuse_for_shutdown(stream: &mut ClientStream, context: &Frontend) {
    info!("client refused: shutting down");
    context.metrics.client_refused("shutdown");
    send_shutdown_error(stream).await;
}

fn server_key(server: &ServerConnection) -> Option<ServerKey> {
    server
        .backend_key
        .map(|(pid, secret)| ServerKey { pid, secret })
}

fn checkout_error_to_pg(error: &CheckoutError, context: &Frontend, user: &str) -> PgError {
    match error {
        CheckoutError::Timeout { .. } => PgError::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!("rds-iam-sidecar: {error}"),
        )
        .with_hint(
            "raise --pool-size or --pool-timeout, or make clients hold connections for less time",
        ),
        CheckoutError::Connect(error) => error.to_pg_error(&context.connector().hint_context(user)),
    }
}

/// One logged-in client after the greeting: all that an idle client holds.
struct Session {
    stream: ClientStream,
    /// What sessions share; holding it is the client's place under --max-client-connections.
    context: Admitted,
    pool: Arc<Pool>,
    connected: Instant,
    cancel_key: CancelKeyGuard,
    /// Transaction mode: the client's messages and statements across transactions.
    rewriter: ClientRewriter,
    statements: ClientStatements,
    state: SessionState,
    /// Totals for the closing log line (the metrics are counted per attached period).
    bytes_to_server: u64,
    bytes_to_client: u64,
    /// Session mode: the upstream connection the client holds for its life.
    held: Option<Box<Lease>>,
    gauge: ClientGauge,
}

impl Session {
    fn log_end(&self, ending: Outcome) {
        info!(
            ending = ?ending,
            duration_ms = self.connected.elapsed().as_millis() as u64,
            bytes_to_server = self.bytes_to_server,
            bytes_to_client = self.bytes_to_client,
            "client disconnected"
        );
    }

    /// The client keeps `lease` until it leaves; the connection then goes back to the pool
    /// only if it is idle and the reset query succeeds. Between round trips the client holds
    /// no forwarding buffers.
    async fn run_session_mode(&mut self, mut lease: Lease) -> Outcome {
        // The client's stream as it passes through (in this boxed future, not the Session:
        // transaction mode keeps its own framing in the rewriter).
        let mut client_side = ClientSide::default();
        let mut pending = std::mem::take(&mut lease.server().pending);
        let outcome = loop {
            let server = lease.server();
            let mut first = None;
            if pending.is_empty() {
                // Idle: no buffers are held until either side sends something (the server may,
                // unasked: notifications, a shutdown).
                // A shutdown closes the session between transactions, never inside one.
                let outside_transaction = self.state.status() == TransactionStatus::Idle;
                let stream = &self.stream;
                let woken = self
                    .context
                    .shutdown
                    .idle_wait(outside_transaction, self.cancel_key.closer(), |cx| {
                        // The client's readiness is confirmed by the try_read below (one
                        // syscall); the server, which rarely speaks unasked, by a peek.
                        match (stream.poll_read_ready(cx), server.stream.poll_readable(cx)) {
                            (Poll::Pending, Poll::Pending) => Poll::Pending,
                            // Errors show in the attached period's reads.
                            _ => Poll::Ready(Ok(())),
                        }
                    })
                    .await;
                match woken {
                    Woken::Draining => break Outcome::Shutdown,
                    Woken::Ready(_) => {}
                }
                let mut buffer = Buffer::take();
                match self.stream.try_read(&mut buffer) {
                    Ok(0) => break Outcome::ClientClosed,
                    Ok(n) => first = Some((buffer, n)),
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        // Not the client: the server spoke, or the client's readiness was
                        // stale (then wait again, holding nothing).
                        let waker = std::task::Waker::noop();
                        let mut cx = std::task::Context::from_waker(waker);
                        if server.stream.poll_readable(&mut cx).is_pending() {
                            continue;
                        }
                    }
                    Err(_) => break Outcome::ClientError,
                }
            }
            let first_bytes = first.as_ref().map_or(&[][..], |(buffer, n)| &buffer[..*n]);
            // Boxed: the attached period's state lives on the heap only while it runs.
            self.gauge.set(ClientState::Active);
            let cancel = closer(self.context.cancel_mode, &self.cancel_key);
            let (outcome, traffic) = Box::pin(forward_attached(
                &mut self.stream,
                &mut server.stream,
                &mut client_side,
                &self.state,
                &mut server.parameters,
                first_bytes,
                &pending,
                Detach::WhenQuiet,
                cancel,
                None,
            ))
            .await;
            self.gauge.set(ClientState::Idle);
            pending = BytesMut::new();
            self.add(traffic);
            if outcome != Outcome::Released {
                break outcome;
            }
        };
        match outcome {
            Outcome::ClientTerminated | Outcome::ClientClosed if self.state.is_idle() => {
                let reset_query = self.context.pools.settings.reset_query.clone();
                match reset_query {
                    Some(query) => match Box::pin(reset(lease.server(), &query)).await {
                        Ok(()) => {
                            if let Ok(mut prepared) = lease.server().prepared.lock() {
                                prepared.clear();
                            }
                            lease.release()
                        }
                        Err(error) => {
                            debug!(%error, "upstream connection not reusable; closing it")
                        }
                    },
                    None => lease.release(),
                }
            }
            Outcome::Cancelled => {
                drop(lease);
                self.cancelled_fatal().await;
            }
            Outcome::Shutdown => {
                drop(lease);
                Box::pin(send_shutdown_error(&mut self.stream)).await;
            }
            _ => {
                debug!(?outcome, status = ?self.state.status(), "upstream connection not reusable; closing it")
            }
        }
        outcome
    }

    /// An upstream connection is attached for each transaction and released when it is idle.
    /// (A plain fn around an async block: an `async fn` would store `self` twice.)
    #[allow(clippy::manual_async_fn)]
    fn run_transaction_mode(&mut self) -> impl Future<Output = Outcome> + Send + '_ {
        async move {
            loop {
                // Detached: no upstream connection and no buffer until the client sends something.
                // poll_fn, not an async readiness future: nothing is stored for the wait but the
                // waker in the socket's registration.
                let stream = &self.stream;
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
        if self.rewriter.at_boundary() && first.starts_with(&[b'X', 0, 0, 0, 4]) {
            return Some(Outcome::ClientTerminated);
        }
        self.gauge.set(ClientState::Active);
        let ending = self.attached_transaction(first).await;
        self.gauge.set(ClientState::Idle);
        ending
    }

    async fn attached_transaction(&mut self, first: &[u8]) -> Option<Outcome> {
        let started = Instant::now();
        let mut lease = match self.context.pools.checkout(&self.pool).await {
            Ok(lease) => lease,
            Err(error) => {
                let pg = checkout_error_to_pg(&error, &self.context, &self.pool.key.user);
                warn!(%error, sqlstate = %pg.code, pool = %self.pool.key, "no upstream connection for a transaction");
                send_error(&mut self.stream, &pg).await;
                return Some(Outcome::ServerError);
            }
        };
        self.context.metrics.pool_wait(started.elapsed());
        self.cancel_key.set_server(server_key(lease.server()));
        let cancel = closer(self.context.cancel_mode, &self.cancel_key);
        let pending = std::mem::take(&mut lease.server().pending);
        let server = lease.server();
        let rewrite = Rewrite {
            client: &mut self.rewriter,
            statements: &mut self.statements,
            prepared: &server.prepared,
        };
        let (outcome, traffic) = forward_attached(
            &mut self.stream,
            &mut server.stream,
            // Unused when rewriting.
            &mut ClientSide::default(),
            &self.state,
            &mut server.parameters,
            first,
            &pending,
            Detach::WhenIdle,
            cancel,
            Some(rewrite),
        )
        .await;
        self.add(traffic);
        self.cancel_key.set_server(None);
        match outcome {
            Outcome::Released => {
                lease.release();
                None
            }
            Outcome::ClientTerminated | Outcome::ClientClosed => {
                if self.state.is_idle() {
                    lease.release();
                }
                Some(outcome)
            }
            Outcome::Cancelled => {
                drop(lease);
                if !self.state.awaiting_answer() {
                    self.cancelled_fatal().await;
                    return Some(outcome);
                }
                // The client waits for an answer: give it the one PostgreSQL would.
                let mut answer = BytesMut::new();
                messages::error_response(
                    &mut answer,
                    &cancelled_error(crate::error::Severity::Error),
                );
                messages::ready_for_query_idle(&mut answer);
                self.state.answered_locally();
                if self.stream.write_all(&answer).await.is_err() {
                    return Some(Outcome::ClientError);
                }
                None
            }
            Outcome::ServerClosed
            | Outcome::ServerError
            | Outcome::ClientError
            | Outcome::Shutdown => Some(outcome),
        }
    }

    async fn cancelled_fatal(&mut self) {
        send_error(
            &mut self.stream,
            &cancelled_error(crate::error::Severity::Fatal),
        )
        .await;
    }

    fn add(&mut self, traffic: Traffic) {
        self.bytes_to_server += traffic.to_server;
        self.bytes_to_client += traffic.to_client;
        self.context
            .metrics
            .forwarded(traffic.to_server, traffic.to_client, traffic.transactions);
    }
}

/// What wakes an attached period on a cancel, with `--cancel-mode close`.
fn closer(mode: CancelMode, key: &CancelKeyGuard) -> Option<&Closer> {
    (mode == CancelMode::Close).then(|| key.closer())
}

fn cancelled_error(severity: crate::error::Severity) -> PgError {
    PgError::new(
        severity,
        sqlstate::QUERY_CANCELED,
        "canceling statement due to user request",
    )
    .with_detail("rds-iam-sidecar closed the upstream connection (--cancel-mode close)")
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
        let session = size_of::<Session>();
        // 216 bytes in 2026-11 (a 224-byte malloc chunk).
        assert!(session <= 232, "Session is {session} bytes");
    }

    fn unreachable_context() -> Arc<Frontend> {
        unreachable!("only the future's type is used")
    }
}
