//! Every Prometheus metric the sidecar exports, named and described in one place, and the
//! process-wide recorder that renders them for `/metrics`.
//!
//! Labels only take values from small fixed sets (states, results, directions, SQLSTATE codes);
//! never a client address, a query or a user-supplied string. Hot-path counters are added once
//! per attached period, not per message.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CLIENT_CONNECTIONS: &str = "rds_iam_sidecar_client_connections";
pub const CLIENT_CONNECTIONS_ACCEPTED: &str = "rds_iam_sidecar_client_connections_accepted_total";
pub const CLIENT_CONNECTIONS_REFUSED: &str = "rds_iam_sidecar_client_connections_refused_total";
pub const UPSTREAM_CONNECTIONS: &str = "rds_iam_sidecar_upstream_connections";
pub const UPSTREAM_LOGINS: &str = "rds_iam_sidecar_upstream_logins_total";
pub const UPSTREAM_LOGIN_BACKOFF: &str = "rds_iam_sidecar_upstream_login_backoff_seconds";
pub const UPSTREAM_LOGIN_RATE: &str = "rds_iam_sidecar_upstream_login_rate_limit";
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
pub const SESSION_STATE: &str = "rds_iam_sidecar_session_state_connections_total";
pub const UPSTREAM_LOST: &str = "rds_iam_sidecar_upstream_connections_lost_total";
pub const CLIENT_AUTH_FAILURES: &str = "rds_iam_sidecar_client_auth_failures_total";
pub const BUILD_INFO: &str = "rds_iam_sidecar_build_info";

/// Histogram buckets in seconds: 100 µs to 30 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The label every per-endpoint metric carries: the endpoint's host name.
pub const UPSTREAM_LABEL: &str = "upstream";

/// One upstream endpoint's metric handles, looked up once (a lookup hashes the name and
/// labels; the per-transaction ones are hit tens of thousands of times a second). Every
/// metric about clients, pools and logins carries the endpoint in its `upstream` label.
#[derive(Debug)]
pub struct UpstreamMetrics {
    upstream: String,
    clients_login: Gauge,
    clients_idle: Gauge,
    clients_active: Gauge,
    pool_wait: Histogram,
    to_server: Counter,
    to_client: Counter,
    transactions: Counter,
    /// Counted per connection: a handle, not a key built and looked up each time (an
    /// allocation and a SipHash of the labels per accept, seen in a `-C` profile).
    accepted: Counter,
}

/// The handles of every endpoint named so far: one per label for the life of the process
/// (a handful of endpoints), so clients can hold a plain `&'static` to theirs.
static BY_UPSTREAM: Mutex<Vec<&'static UpstreamMetrics>> = Mutex::new(Vec::new());

/// The metric handles for the endpoint labelled `upstream`, made on first use. Call it after
/// [`install`]: handles bind to the recorder installed when they are made.
pub fn for_upstream(upstream: &str) -> &'static UpstreamMetrics {
    let mut known = BY_UPSTREAM.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = known.iter().find(|m| m.upstream == upstream) {
        return found;
    }
    let label = upstream.to_owned();
    let made: &'static UpstreamMetrics = Box::leak(Box::new(UpstreamMetrics {
        clients_login: gauge!(CLIENT_CONNECTIONS, UPSTREAM_LABEL => label.clone(), "state" => "login"),
        clients_idle: gauge!(CLIENT_CONNECTIONS, UPSTREAM_LABEL => label.clone(), "state" => "idle"),
        clients_active: gauge!(CLIENT_CONNECTIONS, UPSTREAM_LABEL => label.clone(), "state" => "active"),
        pool_wait: histogram!(POOL_WAIT_SECONDS, UPSTREAM_LABEL => label.clone()),
        to_server: counter!(BYTES_FORWARDED, UPSTREAM_LABEL => label.clone(), "direction" => "to_server"),
        to_client: counter!(BYTES_FORWARDED, UPSTREAM_LABEL => label.clone(), "direction" => "to_client"),
        transactions: counter!(TRANSACTIONS, UPSTREAM_LABEL => label.clone()),
        accepted: counter!(CLIENT_CONNECTIONS_ACCEPTED, UPSTREAM_LABEL => label.clone()),
        upstream: label,
    }));
    known.push(made);
    made
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
        "Upstream login attempts by result: ok, throttled (RDS Proxy's or AWS's throttling; retried after a backoff), auth_rejected, timeout, network, tls, credentials, server_error, other"
    );
    describe_gauge!(
        UPSTREAM_LOGIN_BACKOFF,
        "The backoff before the latest throttled upstream login's next attempt, 0 once a login succeeds"
    );
    describe_gauge!(
        UPSTREAM_LOGIN_RATE,
        "New upstream logins per second the process allows now: --max-connect-rate, halved while logins are throttled, climbing back after"
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
    describe_logins_and_traffic();
}

/// The descriptions of the login, credential, traffic and cancel metrics.
fn describe_logins_and_traffic() {
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
        "Cancel requests by result: forwarded, emulated (the upstream connection closed, no server key or forwarding failed), closed (--cancel-mode close), waiting (a statement waiting for a pooled connection, answered without running), not_running, unknown_key; unanswered counts forwarded ones whose statement still ran, its server silent, after --cancel-grace (the connection was then closed)"
    );
    describe_counter!(
        CLIENT_AUTH_FAILURES,
        "Clients refused by --client-auth scram-sha-256, by reason (password: wrong password or unknown user; protocol: not a SCRAM exchange)"
    );
    describe_counter!(
        UPSTREAM_LOST,
        "Upstream connections lost under a client, by what the client was doing (statement, transaction, idle)"
    );
    describe_counter!(
        SESSION_STATE,
        "Session-mode upstream connections a client left with session state, by action (reset, closed) and the state seen (setting, prepared_statement, listen, cursor, temp_object, advisory_lock, other, named_statement)"
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

/// A client moves from `from` (or nowhere) to `to` (or away) at `upstream`.
fn client_state(upstream: &UpstreamMetrics, from: Option<ClientState>, to: Option<ClientState>) {
    if let Some(from) = from {
        upstream.gauge(from).decrement(1.0);
    }
    if let Some(to) = to {
        upstream.gauge(to).increment(1.0);
    }
}

/// A client connection's state, for [`CLIENT_CONNECTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Login,
    Idle,
    Active,
}

/// A client's place in [`CLIENT_CONNECTIONS`], kept exact by construction: counted as `login`
/// when made, moved with [`ClientGauge::set`], uncounted when dropped (whatever ends the client,
/// a panic included).
#[derive(Debug)]
pub struct ClientGauge {
    upstream: &'static UpstreamMetrics,
    state: ClientState,
}

impl ClientGauge {
    pub fn set(&mut self, to: ClientState) {
        if self.state != to {
            client_state(self.upstream, Some(self.state), Some(to));
            self.state = to;
        }
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        client_state(self.upstream, Some(self.state), None);
    }
}

/// The login rate the process allows now (shared by every endpoint).
pub fn login_rate(per_second: f64) {
    gauge!(UPSTREAM_LOGIN_RATE).set(per_second);
}

/// A credential fetch (credentials are shared by every endpoint); `expiry` of the credentials
/// now in use, when they have one.
pub fn credential_refresh(ok: bool, expiry: Option<SystemTime>) {
    counter!(CREDENTIAL_REFRESHES, "result" => if ok { "ok" } else { "error" }).increment(1);
    if let Some(at) = expiry.and_then(|e| e.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        gauge!(CREDENTIALS_EXPIRY).set(at.as_secs_f64());
    }
}

impl UpstreamMetrics {
    /// The endpoint's label value.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    fn gauge(&self, state: ClientState) -> &Gauge {
        match state {
            ClientState::Login => &self.clients_login,
            ClientState::Idle => &self.clients_idle,
            ClientState::Active => &self.clients_active,
        }
    }

    /// A new client, counted as logging in until its gauge moves on.
    pub fn client_login(&'static self) -> ClientGauge {
        client_state(self, None, Some(ClientState::Login));
        ClientGauge {
            upstream: self,
            state: ClientState::Login,
        }
    }

    pub fn client_accepted(&self) {
        self.accepted.increment(1);
    }

    pub fn client_auth_failure(&self, reason: &'static str) {
        counter!(CLIENT_AUTH_FAILURES, UPSTREAM_LABEL => self.upstream.clone(), "reason" => reason)
            .increment(1);
    }

    pub fn client_refused(&self, reason: &'static str) {
        counter!(CLIENT_CONNECTIONS_REFUSED, UPSTREAM_LABEL => self.upstream.clone(), "reason" => reason)
            .increment(1);
    }

    /// Upstream connection counts summed over the endpoint's pools (set when scraped).
    pub fn upstream_connections(&self, idle: usize, in_use: usize, waiting: usize) {
        let upstream = self.upstream.clone();
        gauge!(UPSTREAM_CONNECTIONS, UPSTREAM_LABEL => upstream.clone(), "state" => "idle")
            .set(idle as f64);
        gauge!(UPSTREAM_CONNECTIONS, UPSTREAM_LABEL => upstream.clone(), "state" => "in_use")
            .set(in_use as f64);
        gauge!(POOL_WAITING_CLIENTS, UPSTREAM_LABEL => upstream).set(waiting as f64);
    }

    /// One upstream login attempt (after its retry, if any): `result` is `ok` or the failure's
    /// label (see [`UPSTREAM_LOGINS`]'s description).
    pub fn upstream_login(&self, result: &'static str, took: Duration) {
        counter!(UPSTREAM_LOGINS, UPSTREAM_LABEL => self.upstream.clone(), "result" => result)
            .increment(1);
        histogram!(UPSTREAM_LOGIN_SECONDS, UPSTREAM_LABEL => self.upstream.clone())
            .record(took.as_secs_f64());
    }

    /// The backoff a throttled login waits before its next attempt (zero after a success).
    pub fn login_backoff(&self, backoff: Duration) {
        gauge!(UPSTREAM_LOGIN_BACKOFF, UPSTREAM_LABEL => self.upstream.clone())
            .set(backoff.as_secs_f64());
    }

    pub fn pool_wait(&self, waited: Duration) {
        self.pool_wait.record(waited.as_secs_f64());
    }

    pub fn token_signed(&self) {
        counter!(TOKENS_SIGNED, UPSTREAM_LABEL => self.upstream.clone()).increment(1);
    }

    /// A client login that failed with `sqlstate` (only well-formed codes become labels).
    pub fn auth_failure(&self, sqlstate: &str) {
        let well_formed = sqlstate.len() == 5
            && sqlstate
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
        let code = if well_formed {
            sqlstate.to_owned()
        } else {
            "other".to_owned()
        };
        counter!(AUTH_FAILURES, UPSTREAM_LABEL => self.upstream.clone(), "sqlstate" => code)
            .increment(1);
    }

    /// What one attached period moved.
    pub fn forwarded(&self, to_server: u64, to_client: u64, transactions: u64) {
        if to_server > 0 {
            self.to_server.increment(to_server);
        }
        if to_client > 0 {
            self.to_client.increment(to_client);
        }
        if transactions > 0 {
            self.transactions.increment(transactions);
        }
    }

    /// An upstream connection was lost under a client.
    pub fn upstream_lost(&self, during: &'static str) {
        counter!(UPSTREAM_LOST, UPSTREAM_LABEL => self.upstream.clone(), "during" => during)
            .increment(1);
    }

    /// A session-mode connection left with session state was reset or closed.
    pub fn session_state(&self, action: &'static str, reason: &'static str) {
        counter!(SESSION_STATE, UPSTREAM_LABEL => self.upstream.clone(), "action" => action, "reason" => reason)
            .increment(1);
    }

    pub fn cancel_request(&self, result: &'static str) {
        counter!(CANCEL_REQUESTS, UPSTREAM_LABEL => self.upstream.clone(), "result" => result)
            .increment(1);
    }
}
