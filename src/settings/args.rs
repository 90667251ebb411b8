//! The settings of `run`, each written once: every field is a flag (clap), reads the
//! environment variable `RDS_IAM_SIDECAR_<FLAG>` (clap) and is a key of the TOML file and of
//! an endpoint's own settings (serde, kebab-case). Two levels: [`EndpointArgs`] may differ per
//! upstream endpoint, [`ProcessArgs`] holds what the whole process shares. Everything is
//! optional here; [`super::Settings::from_args`] layers flags > environment > file > defaults
//! and validates.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

pub use super::process_args::ProcessArgs;
use super::values::{number, one_or_many, text};

use crate::frontend::cancel::CancelMode;
use crate::frontend::client_auth::ClientAuthMode;
use crate::frontend::client_tls::ClientTlsMode;
use crate::pool::PoolMode;
use crate::upstream::kind::UpstreamKindSetting;
use crate::upstream::tls::TlsMode;

/// How the sidecar logs in upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// A freshly signed IAM auth token per connection (default).
    Iam,
    /// A fixed password (md5, SCRAM-SHA-256 or cleartext), for local development.
    Password,
}

/// Flags of `rds-iam-sidecar run`.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML file with any of these settings (keys are the flag names).
    #[arg(long, env = "RDS_IAM_SIDECAR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// RDS Proxy / cluster / instance endpoint HOST:PORT; the token is signed for this host
    /// name. Repeat (or separate with commas) for several endpoints, each on its own listener;
    /// per-endpoint settings go after a `?`: HOST:PORT?listen=127.0.0.1:6432&pool-size=10
    /// (a comma inside a value as %2C).
    #[arg(
        long,
        env = "RDS_IAM_SIDECAR_UPSTREAM",
        value_name = "HOST:PORT[?KEY=VALUE&...]",
        value_delimiter = ','
    )]
    pub upstream: Vec<String>,

    #[command(flatten)]
    pub endpoint: EndpointArgs,

    #[command(flatten)]
    pub process: ProcessArgs,
}

/// Settings each endpoint may have of its own; as flags they apply to every endpoint that
/// does not set them itself.
#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct EndpointArgs {
    /// Where to actually connect (tunnel, test), keeping --upstream for TLS name and token.
    #[arg(long, env = "RDS_IAM_SIDECAR_UPSTREAM_ADDR", value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_addr: Option<String>,

    /// Address to accept PostgreSQL clients on [default: 127.0.0.1:5432; the next endpoints
    /// the following ports]; may be repeated.
    #[arg(
        long,
        env = "RDS_IAM_SIDECAR_LISTEN",
        value_name = "ADDR:PORT",
        value_delimiter = ','
    )]
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub listen: Vec<String>,

    /// Directory for a unix socket `.s.PGSQL.<port>` (so `psql -h DIR` works).
    #[arg(long, env = "RDS_IAM_SIDECAR_UNIX_SOCKET", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket: Option<PathBuf>,

    /// AWS region for signing [default: from the endpoint name, then AWS_REGION, then AWS_DEFAULT_REGION].
    #[arg(long, env = "RDS_IAM_SIDECAR_REGION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,

    /// PEM file of extra trusted CAs (e.g. the RDS global-bundle.pem for instance endpoints).
    #[arg(long, env = "RDS_IAM_SIDECAR_CA_FILE", value_name = "PEM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,

    /// Upstream certificate check [default: verify-full].
    #[arg(long, env = "RDS_IAM_SIDECAR_TLS_MODE", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_mode: Option<TlsMode>,

    /// What the endpoint is: rds-proxy or postgres; auto tells by its name
    /// (*.proxy-*.rds.amazonaws.com is rds-proxy) [default: auto].
    #[arg(long, env = "RDS_IAM_SIDECAR_UPSTREAM_KIND", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_kind: Option<UpstreamKindSetting>,

    /// Upstream login method [default: iam].
    #[arg(long, env = "RDS_IAM_SIDECAR_AUTH", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMode>,

    /// File holding the upstream password (--auth password); or set RDS_IAM_SIDECAR_PASSWORD.
    #[arg(long, env = "RDS_IAM_SIDECAR_PASSWORD_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,

    /// Log in upstream as this database user, whatever user the client sent.
    #[arg(long, env = "RDS_IAM_SIDECAR_DB_USER", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_user: Option<String>,

    /// Limit for TCP connect + TLS + login upstream [default: 5s].
    #[arg(long, env = "RDS_IAM_SIDECAR_CONNECT_TIMEOUT", value_name = "DURATION")]
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<String>,

    /// An upstream connection whose path stops carrying data (unacknowledged bytes, keepalive
    /// probes unanswered) ends after about this long [default: 60s].
    #[arg(
        long,
        env = "RDS_IAM_SIDECAR_UPSTREAM_DEAD_AFTER",
        value_name = "DURATION"
    )]
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream_dead_after: Option<String>,

    /// session: a client keeps one upstream connection; transaction: one per transaction
    /// [default: session].
    #[arg(long, env = "RDS_IAM_SIDECAR_POOL_MODE", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_mode: Option<PoolMode>,

    /// Most upstream connections per pool (user + database + parameters) [default: 20].
    #[arg(long, env = "RDS_IAM_SIDECAR_POOL_SIZE", value_name = "N")]
    #[serde(
        default,
        deserialize_with = "number",
        skip_serializing_if = "Option::is_none"
    )]
    pub pool_size: Option<usize>,

    /// Idle upstream connections kept open per pool once it exists [default: 0].
    #[arg(long, env = "RDS_IAM_SIDECAR_MIN_IDLE", value_name = "N")]
    #[serde(
        default,
        deserialize_with = "number",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_idle: Option<usize>,

    /// A pool to open at start with --min-idle connections: user@database?name=value&...
    /// as the log line "new pool" shows it (repeat the flag; commas in the variable).
    #[arg(
        long = "warm-pool",
        env = "RDS_IAM_SIDECAR_WARM_POOLS",
        value_name = "SPEC",
        value_delimiter = ','
    )]
    #[serde(
        default,
        alias = "warm-pool",
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub warm_pools: Vec<String>,

    /// Open the --min-idle connections (at start, and after the upstream dropped them) at
    /// random moments over this window, so a fleet does not log in at once; 0 for all at
    /// once [default: 5s].
    #[arg(long, env = "RDS_IAM_SIDECAR_WARM_UP_SPREAD", value_name = "DURATION")]
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub warm_up_spread: Option<String>,

    /// Most client connections at once, counted from the moment they are accepted (logging in
    /// or logged in); more get 53300 at once [default: 1000].
    #[arg(long, env = "RDS_IAM_SIDECAR_MAX_CLIENT_CONNECTIONS", value_name = "N")]
    #[serde(
        default,
        deserialize_with = "number",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_client_connections: Option<usize>,

    /// How long a new client connection may take to send its startup packet, then 08P01
    /// [default: 30s].
    #[arg(
        long,
        env = "RDS_IAM_SIDECAR_CLIENT_LOGIN_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_login_timeout: Option<String>,

    /// How long a client waits for a free upstream connection, then 53300 [default: 30s].
    #[arg(long, env = "RDS_IAM_SIDECAR_POOL_TIMEOUT", value_name = "DURATION")]
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub pool_timeout: Option<String>,

    /// Idle upstream connections are closed after this [default: 600s, below RDS Proxy's 1800s].
    #[arg(long, env = "RDS_IAM_SIDECAR_IDLE_TIMEOUT", value_name = "DURATION")]
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<String>,

    /// Upstream connections are closed after about this long, ±10 % [default: 3600s].
    #[arg(long, env = "RDS_IAM_SIDECAR_MAX_LIFETIME", value_name = "DURATION")]
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_lifetime: Option<String>,

    /// Run on a session-mode connection its client left with session state (SET, LISTEN,
    /// PREPARE, temporary tables...) before another client gets it; empty to close such
    /// connections instead [default: DISCARD ALL against postgres; close against rds-proxy,
    /// where DISCARD would pin].
    #[arg(long, env = "RDS_IAM_SIDECAR_RESET_QUERY", value_name = "SQL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_query: Option<String>,

    /// What a client's cancel request does [default: forward].
    #[arg(long, env = "RDS_IAM_SIDECAR_CANCEL_MODE", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_mode: Option<CancelMode>,

    /// How long a forwarded cancel may take to end the statement; after it the upstream
    /// connection is closed and the client told 57014 [default: 10s].
    #[arg(long, env = "RDS_IAM_SIDECAR_CANCEL_GRACE", value_name = "DURATION")]
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub cancel_grace: Option<String>,

    /// TLS on the listener for clients that ask for it: off, self-signed (made at start) or
    /// files [default: off].
    #[arg(long, env = "RDS_IAM_SIDECAR_CLIENT_TLS", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<ClientTlsMode>,

    /// A name the self-signed certificate also holds, besides localhost and the listen
    /// addresses (repeat the flag; commas in the variable).
    #[arg(
        long = "client-tls-name",
        env = "RDS_IAM_SIDECAR_CLIENT_TLS_NAMES",
        value_name = "NAME",
        value_delimiter = ','
    )]
    #[serde(
        default,
        alias = "client-tls-name",
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub client_tls_names: Vec<String>,

    /// Where to write the self-signed certificate (PEM), for clients that verify it.
    #[arg(long, env = "RDS_IAM_SIDECAR_CLIENT_TLS_CERT_OUT", value_name = "PEM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tls_cert_out: Option<PathBuf>,

    /// The listener's certificate chain (PEM), with --client-tls files; read again when it
    /// changes or on SIGHUP.
    #[arg(long, env = "RDS_IAM_SIDECAR_CLIENT_TLS_CERT", value_name = "PEM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tls_cert: Option<PathBuf>,

    /// The listener's private key (PEM), with --client-tls files.
    #[arg(long, env = "RDS_IAM_SIDECAR_CLIENT_TLS_KEY", value_name = "PEM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tls_key: Option<PathBuf>,

    /// How clients are authenticated: trust, or scram-sha-256 against --client-auth-file or
    /// the RDS_IAM_SIDECAR_CLIENT_PASSWORD variable [default: trust].
    #[arg(long, env = "RDS_IAM_SIDECAR_CLIENT_AUTH", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthMode>,

    /// Lines `user:SCRAM-SHA-256$...` (as pg_authid stores them) or `user:password`; read
    /// again when it changes.
    #[arg(long, env = "RDS_IAM_SIDECAR_CLIENT_AUTH_FILE", value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_auth_file: Option<PathBuf>,

    /// Start a listener beyond loopback with --client-auth trust (anyone who reaches it logs
    /// in) [default: false].
    #[arg(
        long,
        env = "RDS_IAM_SIDECAR_ALLOW_UNAUTHENTICATED_CLIENTS",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_unauthenticated_clients: Option<bool>,
}
