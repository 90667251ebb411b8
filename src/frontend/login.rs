//! A client's login: admission under `--max-client-connections`, the packets before the
//! startup packet (`negotiate.rs`: SSL/GSS, TLS, cancels), client authentication
//! (`--client-auth`), a pooled upstream connection for the client's pool (which proves the
//! login works) and the greeting the client expects (AuthenticationOk, ParameterStatus, our
//! BackendKeyData, ReadyForQuery).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tracing::{info, warn};

use crate::error::{PgError, sqlstate};
use crate::forward::prepared::{ClientRewriter, ClientStatements};
use crate::frontend::cancel::{CancelKeyGuard, Serving};
use crate::frontend::client_auth::ClientAuth;
use crate::ops::metrics::{ClientGauge, ClientState};
use crate::pool::{CheckoutError, KeyView, Lease, Parameters, Pool, PoolMode};
use crate::protocol::messages;
use crate::protocol::startup::StartupRequest;
use crate::stream::ClientStream;

use super::negotiate::first_packets;
use super::session::{Held, Session};
use super::{Admitted, Client, Frontend, refuse_for_shutdown, send_error};

/// Protocol 3.0 as a version number: what NegotiateProtocolVersion offers.
const PROTOCOL_3_0: i32 = 3 << 16;

/// Negotiation, startup packet, pool checkout and greeting; the logged-in session and its
/// first upstream connection, or `None` when the client is gone or was refused.
pub(super) async fn login(
    mut stream: ClientStream,
    client: Client,
    context: Arc<Frontend>,
    gauge: ClientGauge,
) -> Option<Box<Session>> {
    // Counted from accept: silent sockets cannot pile up past the limit.
    let Some(admitted) = context.admit() else {
        refuse_too_many(&mut stream, &context, client).await;
        return None;
    };
    let (stream, startup) = first_packets(stream, &context).await?;
    // Boxed on its own: a connection waiting for its startup packet holds only the small
    // future above. The greeting's (2 KiB with the pool checkout) lives only while it runs, so
    // a burst of connections does not leave 5,000 of them as holes between the sessions'
    // allocations (benches/memory.sh).
    Box::pin(greet(stream, startup, admitted, gauge, client)).await
}

/// Turns away a connection over `--max-client-connections`, at once and within a bound.
async fn refuse_too_many(stream: &mut ClientStream, context: &Frontend, client: Client) {
    let pg = PgError::fatal(
        sqlstate::TOO_MANY_CONNECTIONS,
        format!(
            "sorry, too many clients already (rds-iam-sidecar --max-client-connections {})",
            context.max_clients
        ),
    );
    warn!(
        conn = client.conn,
        peer = %client.peer(),
        "client refused: --max-client-connections reached"
    );
    context.metrics.client_refused("max_clients");
    let _ = tokio::time::timeout(Duration::from_secs(1), send_error(stream, &pg)).await;
}

/// Checks the startup packet, checks out an upstream connection (which proves the login
/// works) and sends the client its login sequence.
async fn greet(
    mut stream: ClientStream,
    startup: Box<StartupRequest>,
    admitted: Admitted,
    mut gauge: ClientGauge,
    client: Client,
) -> Option<Box<Session>> {
    let context = admitted.frontend().clone();
    let client_user = admit(&mut stream, &startup, &context).await?;
    // Before any pool is touched: an unknown client never causes an upstream login. Boxed
    // only when there is an authentication to run: its future boxed for nothing cost a login
    // ~800 instructions (a malloc and free past glibc's per-thread cache; callgrind).
    if let Some(auth) = &context.auth {
        Box::pin(authenticate(
            &mut stream,
            &context,
            auth,
            client_user,
            client.conn,
        ))
        .await?;
    }
    // Looked up with the packet's own strings: a key is built only for a new pool.
    let pool = context.pools.pool(KeyView {
        user: context.db_user.as_deref().unwrap_or(client_user),
        database: startup.get("database").unwrap_or(client_user),
        parameters: startup.parameters().filter(|(name, _)| is_forwarded(name)),
    });
    let user = pool.key.user.as_str();
    let start = start(&mut stream, &context, &pool, user, client.conn).await?;
    let (serving, parameters) = start.served();
    let cancel_key = context.cancels.register(serving);
    let greeting = greeting(
        startup.minor,
        unsupported_protocol_options(&startup),
        &pool.parameter_status_messages(&parameters),
        &cancel_key,
    );
    if stream.write_flushed(&greeting).await.is_err() {
        return None;
    }
    let held = hold(start, parameters, &context, &pool, &cancel_key, client);
    gauge.set(ClientState::Idle);
    drop(context);
    Some(Box::new(Session {
        stream,
        context: admitted,
        pool,
        connected: Instant::now(),
        conn: client.conn,
        cancel_key,
        rewriter: ClientRewriter::new(),
        statements: ClientStatements::default(),
        bytes_to_server: 0,
        bytes_to_client: 0,
        held,
        gauge,
    }))
}

/// `--client-auth` (other than `trust`): lets the client in, or tells it why not and gives
/// `None`. Bounded by `--client-login-timeout` and ended by a drain: a client that never
/// answers must not keep its place under `--max-client-connections`.
async fn authenticate(
    stream: &mut ClientStream,
    context: &Frontend,
    auth: &ClientAuth,
    user: &str,
    conn: u64,
) -> Option<()> {
    let tls = context.tls.as_deref();
    let ended = {
        let let_in = auth.let_in(stream, user, tls, context.metrics, conn);
        tokio::select! {
            done = tokio::time::timeout(context.login_timeout, let_in) => Some(done),
            () = context.shutdown.draining() => None,
        }
    };
    let refusal = match ended {
        Some(Ok(Ok(()))) => return Some(()),
        Some(Ok(Err(refusal))) => refusal,
        Some(Err(_)) => Some(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "rds-iam-sidecar: authentication did not finish within --client-login-timeout",
        )),
        None => {
            refuse_for_shutdown(stream, context).await;
            return None;
        }
    };
    if let Some(error) = refusal {
        send_error(stream, &error).await;
    }
    None
}

/// What the session keeps of its start: session mode, its connection or the parameters it was
/// greeted with; transaction mode, nothing (the connection goes back to the pool).
fn hold(
    start: Start,
    greeted: Parameters,
    context: &Frontend,
    pool: &Pool,
    cancel_key: &CancelKeyGuard,
    client: Client,
) -> Option<Box<Held>> {
    let (conn, peer) = (client.conn, client.peer());
    match (start, context.pools.settings.mode) {
        (Start::Attached(lease, waited), PoolMode::Session) => {
            let wait_ms = waited.as_secs_f64() * 1000.0;
            info!(conn, %peer, pool = %pool.key, wait_ms = format_args!("{wait_ms:.1}"), "client connected");
            Some(Box::new(Held::Connection(*lease)))
        }
        (Start::Attached(lease, _), PoolMode::Transaction) => {
            info!(conn, %peer, pool = %pool.key, "client connected");
            cancel_key.set_serving(Serving::Nothing);
            cancel_key.release(*lease);
            None
        }
        (Start::Greeted(_), PoolMode::Session) => {
            info!(conn, %peer, pool = %pool.key, "client connected; it gets an upstream connection at its first message");
            Some(Box::new(Held::Greeted(greeted)))
        }
        (Start::Greeted(_), PoolMode::Transaction) => {
            info!(conn, %peer, pool = %pool.key, "client connected");
            None
        }
    }
}

/// The client's user name, or `None` after telling it why it cannot log in (draining, no user,
/// a replication connection).
async fn admit<'s>(
    stream: &mut ClientStream,
    startup: &'s StartupRequest,
    context: &Arc<Frontend>,
) -> Option<&'s str> {
    if context.shutdown.is_draining() {
        refuse_for_shutdown(stream, context).await;
        return None;
    }
    let Some(client_user) = startup.get("user").filter(|u| !u.is_empty()) else {
        let pg = PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        );
        context.metrics.auth_failure(&pg.code);
        send_error(stream, &pg).await;
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
        send_error(stream, &pg).await;
        return None;
    }
    Some(client_user)
}

/// How a client's session starts: with an upstream connection (and how long it waited for
/// it), or greeted from what its pool knows, to get a connection at its first message.
enum Start {
    Attached(Box<Lease>, Duration),
    Greeted(Parameters),
}

impl Start {
    /// What serves the client from the start, for its cancel key, and the ParameterStatus set
    /// it is greeted with.
    fn served(&self) -> (Serving, Parameters) {
        match self {
            Self::Attached(lease, _) => (
                Serving::connection(lease.backend_key()),
                lease.shared_parameters(),
            ),
            Self::Greeted(parameters) => (Serving::Nothing, parameters.clone()),
        }
    }
}

/// A pool that has had a connection answers a login at once: with an idle connection when one
/// is free (session mode), else from the ParameterStatus set it knows, so that a client never
/// waits for a busy pool before its first message (a client that connects synchronously, as
/// pgbench -C does, would otherwise never send the Terminate that frees a connection). A pool's
/// first login happens during the client's, so a bad IAM setup is a login error.
async fn start(
    stream: &mut ClientStream,
    context: &Arc<Frontend>,
    pool: &Arc<Pool>,
    user: &str,
    conn: u64,
) -> Option<Start> {
    if let Some(parameters) = pool.known_parameters() {
        if context.pools.settings.mode == PoolMode::Session
            && let Some(lease) = context.pools.checkout_idle(pool)
        {
            return Some(Start::Attached(Box::new(lease), Duration::ZERO));
        }
        return Some(Start::Greeted(parameters));
    }
    // Boxed: only a pool's first logins wait here, and inline its future made the greeting's
    // 1,120 bytes, past glibc's per-thread cache (1,032), for every login.
    let (lease, waited) = Box::pin(first_checkout(stream, context, pool, user, conn)).await?;
    Some(Start::Attached(Box::new(lease), waited))
}

/// The client's first upstream connection and how long it waited for it, or `None` after
/// telling the client why not (the login failed, the pool stayed busy, a drain began).
async fn first_checkout(
    stream: &mut ClientStream,
    context: &Arc<Frontend>,
    pool: &Arc<Pool>,
    user: &str,
    conn: u64,
) -> Option<(Lease, Duration)> {
    let started = Instant::now();
    let checkout = tokio::select! {
        checkout = Box::pin(context.pools.checkout(pool)) => checkout,
        // Waiting for a busy pool does not hold up a drain either.
        () = context.shutdown.draining() => {
            refuse_for_shutdown(stream, context).await;
            return None;
        }
    };
    let lease = match checkout {
        Ok(lease) => lease,
        Err(error) => {
            let pg = checkout_error_to_pg(&error, context, user);
            warn!(conn, %error, sqlstate = %pg.code, pool = %pool.key, "no upstream connection for a new client");
            context.metrics.auth_failure(&pg.code);
            send_error(stream, &pg).await;
            return None;
        }
    };
    let waited = started.elapsed();
    context.metrics.pool_wait(waited);
    if context.shutdown.is_draining() {
        lease.release();
        refuse_for_shutdown(stream, context).await;
        return None;
    }
    Some((lease, waited))
}

/// The login sequence a client expects: NegotiateProtocolVersion when it asked for more than
/// the sidecar speaks, AuthenticationOk, the server's ParameterStatus set, our BackendKeyData
/// and ReadyForQuery.
fn greeting(
    minor: u16,
    unsupported_protocol_options: Vec<String>,
    parameter_status: &[u8],
    cancel_key: &CancelKeyGuard,
) -> BytesMut {
    // AuthenticationOk, BackendKeyData and ReadyForQuery, and room for a
    // NegotiateProtocolVersion.
    let mut greeting = BytesMut::with_capacity(parameter_status.len() + 128);
    if minor > 0 || !unsupported_protocol_options.is_empty() {
        // Like PostgreSQL, the full newest version number (3.0), not just its minor part.
        messages::negotiate_protocol_version(
            &mut greeting,
            PROTOCOL_3_0,
            unsupported_protocol_options,
        );
    }
    messages::authentication_ok(&mut greeting);
    greeting.extend_from_slice(parameter_status);
    messages::backend_key_data(&mut greeting, cancel_key.pid, cancel_key.secret);
    messages::ready_for_query_idle(&mut greeting);
    greeting
}

/// A startup parameter that is part of the pool key, applied upstream (in the startup packet,
/// or after login where RDS Proxy would refuse it there): all but the user and database (the
/// key's own), `replication` (false/0/off only: anything else was refused at admission) and
/// the `_pq_.*` protocol options.
fn is_forwarded(name: &str) -> bool {
    !matches!(name, "user" | "database" | "replication") && !name.starts_with("_pq_.")
}

/// The `_pq_.*` protocol options the client asked for, declined with NegotiateProtocolVersion.
fn unsupported_protocol_options(startup: &StartupRequest) -> Vec<String> {
    startup
        .parameters()
        .filter(|(name, _)| name.starts_with("_pq_."))
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// The ErrorResponse for a client that got no upstream connection, its hint naming `user`.
pub(super) fn checkout_error_to_pg(
    error: &CheckoutError,
    context: &Frontend,
    user: &str,
) -> PgError {
    error.to_pg_error(&context.connector().hint_context(user))
}
