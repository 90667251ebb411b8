//! One client's life: SSL/GSS negotiation (answered 'N'), the startup packet, a CancelRequest
//! when that is what arrives, the upstream login on the client's behalf, the login sequence the
//! client expects (AuthenticationOk, ParameterStatus, our BackendKeyData, ReadyForQuery), then
//! forwarding. Every failure reaches the client as an ErrorResponse before the socket closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::cancel::{CancelRegistry, ServerKey};
use crate::error::{PgError, sqlstate};
use crate::forward::forward;
use crate::protocol::messages;
use crate::protocol::startup::{InitialPacket, StartupError, StartupRequest, read_initial_packet};
use crate::stream::ClientStream;
use crate::upstream::{Connector, FORWARDED_PARAMETERS};

/// Protocol 3.0 as a version number: what NegotiateProtocolVersion offers.
const PROTOCOL_3_0: i32 = 3 << 16;

/// How long a client may take to send its startup packet.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What every client session shares.
pub struct SessionContext {
    pub connector: Connector,
    pub cancels: Arc<CancelRegistry>,
    /// Log in upstream as this user instead of the client's.
    pub db_user: Option<String>,
    next_id: AtomicU64,
}

impl SessionContext {
    pub fn new(connector: Connector, db_user: Option<String>) -> Self {
        Self {
            connector,
            cancels: CancelRegistry::new(),
            db_user,
            next_id: AtomicU64::new(1),
        }
    }
}

/// Serves one accepted client connection to its end.
pub async fn serve_client(stream: ClientStream, peer: String, context: Arc<SessionContext>) {
    let id = context.next_id.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("client", conn = id, peer = %peer);
    run(stream, context).instrument(span).await;
}

async fn run(mut stream: ClientStream, context: Arc<SessionContext>) {
    let startup =
        match tokio::time::timeout(STARTUP_TIMEOUT, negotiate(&mut stream, &context)).await {
            Ok(Ok(Some(startup))) => startup,
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                debug!(%error, "client startup failed");
                if let Some(pg) = startup_error_to_pg(&error) {
                    send_error(&mut stream, &pg).await;
                }
                return;
            }
            Err(_) => {
                let pg = PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    "rds-iam-sidecar: no startup packet within 30 s",
                );
                send_error(&mut stream, &pg).await;
                return;
            }
        };
    session(stream, startup, context).await;
}

/// Answers SSL/GSS requests until the startup packet; `None` when the connection was a cancel.
async fn negotiate(
    stream: &mut ClientStream,
    context: &SessionContext,
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

async fn handle_cancel(context: &SessionContext, pid: i32, secret: &[u8]) {
    let Ok(secret) = <[u8; 4]>::try_from(secret) else {
        debug!("cancel request with a key the sidecar never issued; ignored");
        return;
    };
    let Some(server) = context.cancels.lookup(pid, i32::from_be_bytes(secret)) else {
        debug!("cancel request for an unknown key; ignored");
        return;
    };
    match context.connector.cancel(server.pid, server.secret).await {
        Ok(()) => info!("cancel request forwarded upstream"),
        Err(error) => warn!(%error, "forwarding a cancel request failed"),
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

async fn session(mut stream: ClientStream, startup: StartupRequest, context: Arc<SessionContext>) {
    let Some(client_user) = startup.get("user").filter(|u| !u.is_empty()) else {
        let pg = PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        );
        send_error(&mut stream, &pg).await;
        return;
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
        return;
    }
    let user = context.db_user.as_deref().unwrap_or(client_user).to_owned();
    let database = startup.get("database").unwrap_or(client_user).to_owned();

    let mut parameters: Vec<(&str, &str)> = vec![("user", &user), ("database", &database)];
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
            parameters.push((name, value));
        } else {
            dropped.push(name.as_str());
        }
    }
    if !dropped.is_empty() {
        warn!(parameters = ?dropped, "startup parameters not forwarded (RDS Proxy rejects them)");
    }

    let started = Instant::now();
    let server = match context.connector.connect(&user, &parameters).await {
        Ok(server) => server,
        Err(error) => {
            let pg = error.to_pg_error(&context.connector.hint_context(&user));
            warn!(%error, sqlstate = %pg.code, %user, %database, "upstream login failed");
            send_error(&mut stream, &pg).await;
            return;
        }
    };
    let login_ms = started.elapsed().as_secs_f64() * 1000.0;

    let cancel_key = context.cancels.register(
        server
            .backend_key
            .map(|(pid, secret)| ServerKey { pid, secret }),
    );
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
    for (name, value) in &server.parameters {
        messages::parameter_status(&mut greeting, name, value);
    }
    messages::backend_key_data(&mut greeting, cancel_key.pid, cancel_key.secret);
    messages::ready_for_query_idle(&mut greeting);
    if stream.write_all(&greeting).await.is_err() {
        return;
    }
    info!(%user, %database, login_ms = format_args!("{login_ms:.1}"), "client connected");

    let connected = Instant::now();
    let summary = forward(&mut stream, server.stream, &server.pending).await;
    drop(cancel_key);
    info!(
        ending = ?summary.ending,
        duration_ms = connected.elapsed().as_millis() as u64,
        bytes_to_server = summary.bytes_to_server,
        bytes_to_client = summary.bytes_to_client,
        "client disconnected"
    );
}

/// Writes an ErrorResponse and closes the write side; failures here are the client's loss.
pub async fn send_error<W: AsyncWrite + Unpin>(writer: &mut W, error: &PgError) {
    let mut buf = BytesMut::new();
    messages::error_response(&mut buf, error);
    let _ = writer.write_all(&buf).await;
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}
