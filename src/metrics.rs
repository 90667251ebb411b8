//! Every Prometheus metric the sidecar exports, named and described in one place, and the
//! process-wide recorder that renders them for `/metrics`.
//!
//! Labels only take values from small fixed sets (states, results, directions, SQLSTATE codes);
//! never a client address, a query or a user-supplied string. Hot-path counters are added once
//! per attached period, not per message.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::upstream::error::ConnectError;

pub const CLIENT_CONNECTIONS: &str = "rds_iam_sidecar_client_connections";
pub const CLIENT_CONNECTIONS_ACCEPTED: &str = "rds_iam_sidecar_client_connections_accepted_total";
pub const CLIENT_CONNECTIONS_REFUSED: &str = "rds_iam_sidecar_client_connections_refused_total";
pub const UPSTREAM_CONNECTIONS: &str = "rds_iam_sidecar_upstream_connections";
pub const UPSTREAM_LOGINS: &str = "rds_iam_sidecar_upstream_logins_total";
pub const UPSTREAM_LOGIN_SECONDS: &str = "rds_iam_sidecar_upstream_login_duration_seconds";
pub const POOL_WAIT_SECONDS: &str = "rds_iam_sidecar_pool_wait_duration_seconds";
pub const POOL_WAITING_CLIENTS: &str = "rds_iam_sidecar_pool_waiting_clients";
pub const TOKENS_SIGNED: &str = "rds_iam_sidecar_iam_tokens_signed_total";
pub const CREDENTIAL_REFRESHES: &str = "rds_iam_sidecar_credential_refreshes_total";
pub const CREDENTIALS_EXPIRY: &str = "rds_iam_sidecar_credentials_expiry_timestamp_seconds";
pub const AUTH_FAILURES: &str = "rds_iam_sidecar_auth_failures_total";
pub const BYTES_FORWARDED: &str = "rds_iam_sidecar_bytes_forwarded_total";
pub const TRANSACTIONS: &str = "rds_iam_sidecar_transactions_total";
pub const CANCEL_REQUESTS: &str = "rds_iam_sidecar_cancel_requests_total";
pub const BUILD_INFO: &str = "rds_iam_sidecar_build_info";

/// Histogram buckets in seconds: 100 µs to 30 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The metrics touched on every transaction, looked up once (a lookup hashes the name and
/// labels; these are hit tens of thousands of times a second).
struct Hot {
    clients_login: Gauge,
    clients_idle: Gauge,
    clients_active: Gauge,
    pool_wait: Histogram,
    to_server: Counter,
    to_client: Counter,
    transactions: Counter,
}

static HOT: OnceLock<Hot> = OnceLock::new();

/// Handles for the hot metrics, from the recorder installed when first asked (which is after
/// [`install`] in a running sidecar).
fn hot() -> &'static Hot {
    HOT.get_or_init(|| Hot {
        clients_login: gauge!(CLIENT_CONNECTIONS, "state" => "login"),
        clients_idle: gauge!(CLIENT_CONNECTIONS, "state" => "idle"),
        clients_active: gauge!(CLIENT_CONNECTIONS, "state" => "active"),
        pool_wait: histogram!(POOL_WAIT_SECONDS),
        to_server: counter!(BYTES_FORWARDED, "direction" => "to_server"),
        to_client: counter!(BYTES_FORWARDED, "direction" => "to_client"),
        transactions: counter!(TRANSACTIONS),
    })
}

/// Installs the process-wide recorder (once; later calls share it) and describes every metric.
/// `None` when another recorder was installed first (an embedding program's own).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe_all();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            hot();
            Some(handle)
        })
        .as_ref()
}

fn describe_all() {
    describe_gauge!(
        CLIENT_CONNECTIONS,
        "Client connections by state: login (before the greeting), idle, active (attached to an upstream connection)"
    );
    describe_counter!(CLIENT_CONNECTIONS_ACCEPTED, "Client connections accepted");
    describe_counter!(
        CLIENT_CONNECTIONS_REFUSED,
        "Client connections refused, by reason (max_clients, shutdown)"
    );
    describe_gauge!(
        UPSTREAM_CONNECTIONS,
        "Upstream connections by state: idle (pooled), in_use (leased or being opened)"
    );
    describe_counter!(
        UPSTREAM_LOGINS,
        "Upstream logins by result: ok, auth_rejected, timeout, network, tls, credentials, server_error, other"
    );
    describe_histogram!(
        UPSTREAM_LOGIN_SECONDS,
        "Time to open an upstream connection: TCP, TLS and login"
    );
    describe_histogram!(
        POOL_WAIT_SECONDS,
        "Time a client waited for an upstream connection from the pool"
    );
    describe_gauge!(
        POOL_WAITING_CLIENTS,
        "Clients waiting for a busy pool to free a connection"
    );
    describe_counter!(TOKENS_SIGNED, "IAM authentication tokens signed");
    describe_counter!(
        CREDENTIAL_REFRESHES,
        "AWS credential fetches from the provider chain, by result (ok, error)"
    );
    describe_gauge!(
        CREDENTIALS_EXPIRY,
        "Expiry of the AWS credentials in use, as a Unix timestamp (absent for static keys)"
    );
    describe_counter!(
        AUTH_FAILURES,
        "Failed client logins by the SQLSTATE the client was sent"
    );
    describe_counter!(
        BYTES_FORWARDED,
        "Bytes forwarded, by direction (to_server, to_client)"
    );
    describe_counter!(
        TRANSACTIONS,
        "Transactions completed (ReadyForQuery outside a transaction), statements in autocommit included"
    );
    describe_counter!(
        CANCEL_REQUESTS,
        "Cancel requests by result: forwarded, closed, failed, not_running, unknown_key"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version in a label");
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every few seconds until `stop`:
/// without it, samples pile up between scrapes (forever with the admin endpoint off).
pub async fn upkeep(mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(handle) = install() else { return };
    let mut tick = tokio::time::interval(UPKEEP_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Renders the exposition text, `None` without our recorder.
pub fn render() -> Option<String> {
    let handle = install()?;
    handle.run_upkeep();
    Some(handle.render())
}

pub fn client_accepted() {
    counter!(CLIENT_CONNECTIONS_ACCEPTED).increment(1);
}

pub fn client_refused(reason: &'static str) {
    counter!(CLIENT_CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

/// A client connection's state, for [`CLIENT_CONNECTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Login,
    Idle,
    Active,
}

impl ClientState {
    fn gauge(self) -> &'static Gauge {
        let hot = hot();
        match self {
            Self::Login => &hot.clients_login,
            Self::Idle => &hot.clients_idle,
            Self::Active => &hot.clients_active,
        }
    }
}

/// A client's place in [`CLIENT_CONNECTIONS`], kept exact by construction: counted as `login`
/// when made, moved with [`ClientGauge::set`], uncounted when dropped (whatever ends the client,
/// a panic included).
#[derive(Debug)]
pub struct ClientGauge {
    state: ClientState,
}

impl ClientGauge {
    pub fn login() -> Self {
        client_state(None, Some(ClientState::Login));
        Self {
            state: ClientState::Login,
        }
    }

    pub fn set(&mut self, to: ClientState) {
        if self.state != to {
            client_state(Some(self.state), Some(to));
            self.state = to;
        }
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        client_state(Some(self.state), None);
    }
}

/// A client moves from `from` (or nowhere) to `to` (or away).
pub fn client_state(from: Option<ClientState>, to: Option<ClientState>) {
    if let Some(from) = from {
        from.gauge().decrement(1.0);
    }
    if let Some(to) = to {
        to.gauge().increment(1.0);
    }
}

/// Upstream connection counts summed over the pools (set when scraped).
pub fn upstream_connections(idle: usize, in_use: usize, waiting: usize) {
    gauge!(UPSTREAM_CONNECTIONS, "state" => "idle").set(idle as f64);
    gauge!(UPSTREAM_CONNECTIONS, "state" => "in_use").set(in_use as f64);
    gauge!(POOL_WAITING_CLIENTS).set(waiting as f64);
}

/// One upstream login attempt (after its retry, if any).
pub fn upstream_login(result: Result<(), &ConnectError>, took: Duration) {
    let label = match result {
        Ok(()) => "ok",
        Err(error) => login_failure_label(error),
    };
    counter!(UPSTREAM_LOGINS, "result" => label).increment(1);
    histogram!(UPSTREAM_LOGIN_SECONDS).record(took.as_secs_f64());
}

fn login_failure_label(error: &ConnectError) -> &'static str {
    match error {
        ConnectError::AuthRejected(_) | ConnectError::IamNotEnabled { .. } => "auth_rejected",
        ConnectError::Timeout { .. } => "timeout",
        ConnectError::Resolve { .. } | ConnectError::Connect { .. } => "network",
        ConnectError::TlsRefused { .. } | ConnectError::Tls { .. } => "tls",
        ConnectError::Credentials(_) | ConnectError::Sign(_) => "credentials",
        ConnectError::Server(_) => "server_error",
        _ => "other",
    }
}

pub fn pool_wait(waited: Duration) {
    hot().pool_wait.record(waited.as_secs_f64());
}

pub fn token_signed() {
    counter!(TOKENS_SIGNED).increment(1);
}

/// A credential fetch; `expiry` of the credentials now in use, when they have one.
pub fn credential_refresh(ok: bool, expiry: Option<SystemTime>) {
    counter!(CREDENTIAL_REFRESHES, "result" => if ok { "ok" } else { "error" }).increment(1);
    if let Some(at) = expiry.and_then(|e| e.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        gauge!(CREDENTIALS_EXPIRY).set(at.as_secs_f64());
    }
}

/// A client login that failed with `sqlstate` (only well-formed codes become labels).
pub fn auth_failure(sqlstate: &str) {
    let well_formed = sqlstate.len() == 5
        && sqlstate
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    let code = if well_formed {
        sqlstate.to_owned()
    } else {
        "other".to_owned()
    };
    counter!(AUTH_FAILURES, "sqlstate" => code).increment(1);
}

/// What one attached period moved.
pub fn forwarded(to_server: u64, to_client: u64, transactions: u64) {
    let hot = hot();
    if to_server > 0 {
        hot.to_server.increment(to_server);
    }
    if to_client > 0 {
        hot.to_client.increment(to_client);
    }
    if transactions > 0 {
        hot.transactions.increment(transactions);
    }
}

pub fn cancel_request(result: &'static str) {
    counter!(CANCEL_REQUESTS, "result" => result).increment(1);
}
