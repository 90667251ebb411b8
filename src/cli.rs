//! The command line: subcommands and flags (clap). Every `run` flag also reads from an
//! environment variable `RDS_IAM_SIDECAR_<FLAG>`; [`crate::config`] merges them with the TOML
//! file and the defaults. Nothing here validates meaning; that is `config`'s job.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::pool::PoolMode;

/// Local PostgreSQL endpoint that logs in to AWS RDS / RDS Proxy with IAM authentication.
#[derive(Debug, Parser)]
#[command(
    name = "rds-iam-sidecar",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Flags of `run`, which is also what runs when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Listen for PostgreSQL clients and connect them to the upstream with IAM (the default).
    Run(Box<RunArgs>),
    /// Print one IAM auth token, exactly like `aws rds generate-db-auth-token`.
    Token(TokenArgs),
    /// Exit 0 when a running sidecar is ready (or, with --live, alive), 1 otherwise with the
    /// reason on one line: a container health check for images without curl.
    Healthcheck(HealthcheckArgs),
    /// Wait until a running sidecar is ready (for application entrypoints); exit 1 on timeout.
    Wait(WaitArgs),
    /// Ask a running sidecar to shut down gracefully (like SIGTERM), e.g. at the end of a job.
    Shutdown(AdminArgs),
    /// Check each step of an IAM login (configuration, credentials, DNS, TCP, TLS, login,
    /// query) and explain the first one that fails. Takes the same settings as `run`.
    Doctor(Box<DoctorArgs>),
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Database user to log in as [default: --db-user].
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Database to log in to [default: the user name].
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
}

/// How `doctor` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// One line per check, causes and fix under the failure.
    Text,
    /// One JSON object (`ok`, `checks`: step, name, status, detail, warnings, causes, fix).
    Json,
}

/// Where the running sidecar's admin endpoint is.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The sidecar's admin endpoint [default: from RDS_IAM_SIDECAR_ADMIN_LISTEN, else from the
    /// RDS_IAM_SIDECAR_CONFIG file, else http://127.0.0.1:9090].
    #[arg(long, env = "RDS_IAM_SIDECAR_ADMIN_URL", value_name = "URL")]
    pub admin: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Check liveness (/livez) instead of readiness (/readyz).
    #[arg(long)]
    pub live: bool,
    /// How long to wait for an answer [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Give up after this long [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
}

/// How the upstream certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Chain to a trusted root and the certificate names the upstream host (default).
    VerifyFull,
    /// Chain to a trusted root; the host name is not checked.
    VerifyCa,
    /// TLS without any certificate check (like libpq's sslmode=require).
    Require,
    /// No TLS at all; only allowed with `--auth password` (local development).
    Disable,
}

/// How the sidecar logs in upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// A freshly signed IAM auth token per connection (default).
    Iam,
    /// A fixed password (md5, SCRAM-SHA-256 or cleartext), for local development.
    Password,
}

/// What a cancel request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CancelMode {
    /// Send a CancelRequest to the upstream connection serving the client (default).
    Forward,
    /// Close that upstream connection and tell the client 57014 (for upstreams that ignore
    /// cancels, like RDS Proxy for PostgreSQL).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags of `rds-iam-sidecar run`. All optional here: defaults are applied after the TOML file.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML file with any of these settings (keys are the flag names).
    #[arg(long, env = "RDS_IAM_SIDECAR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// RDS Proxy / cluster / instance endpoint HOST:PORT; the token is signed for this host name.
    #[arg(long, env = "RDS_IAM_SIDECAR_UPSTREAM", value_name = "HOST:PORT")]
    pub upstream: Option<String>,

    /// Where to actually connect (tunnel, test), keeping --upstream for TLS name and token.
    #[arg(long, env = "RDS_IAM_SIDECAR_UPSTREAM_ADDR", value_name = "HOST:PORT")]
    pub upstream_addr: Option<String>,

    /// Address to accept PostgreSQL clients on [default: 127.0.0.1:5432]; may be repeated.
    #[arg(
        long,
        env = "RDS_IAM_SIDECAR_LISTEN",
        value_name = "ADDR:PORT",
        value_delimiter = ','
    )]
    pub listen: Vec<String>,

    /// Directory for a unix socket `.s.PGSQL.<port>` (so `psql -h DIR` works).
    #[arg(long, env = "RDS_IAM_SIDECAR_UNIX_SOCKET", value_name = "DIR")]
    pub unix_socket: Option<PathBuf>,

    /// AWS region for signing [default: from the endpoint name, then AWS_REGION].
    #[arg(long, env = "RDS_IAM_SIDECAR_REGION")]
    pub region: Option<String>,

    /// PEM file of extra trusted CAs (e.g. the RDS global-bundle.pem for instance endpoints).
    #[arg(long, env = "RDS_IAM_SIDECAR_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// Upstream certificate check [default: verify-full].
    #[arg(long, env = "RDS_IAM_SIDECAR_TLS_MODE", value_enum)]
    pub tls_mode: Option<TlsMode>,

    /// Upstream login method [default: iam].
    #[arg(long, env = "RDS_IAM_SIDECAR_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// File holding the upstream password (--auth password); or set RDS_IAM_SIDECAR_PASSWORD.
    #[arg(long, env = "RDS_IAM_SIDECAR_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    /// Log in upstream as this database user, whatever user the client sent.
    #[arg(long, env = "RDS_IAM_SIDECAR_DB_USER", value_name = "NAME")]
    pub db_user: Option<String>,

    /// Limit for TCP connect + TLS + login upstream [default: 5s].
    #[arg(long, env = "RDS_IAM_SIDECAR_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<String>,

    /// session: a client keeps one upstream connection; transaction: one per transaction
    /// [default: session].
    #[arg(long, env = "RDS_IAM_SIDECAR_POOL_MODE", value_enum)]
    pub pool_mode: Option<PoolMode>,

    /// Most upstream connections per pool (user + database + parameters) [default: 20].
    #[arg(long, env = "RDS_IAM_SIDECAR_POOL_SIZE", value_name = "N")]
    pub pool_size: Option<usize>,

    /// Idle upstream connections kept open per pool once it exists [default: 0].
    #[arg(long, env = "RDS_IAM_SIDECAR_MIN_IDLE", value_name = "N")]
    pub min_idle: Option<usize>,

    /// A pool to open at start with --min-idle connections: user@database?name=value&...
    /// as the log line "new pool" shows it (repeat the flag; commas in the variable).
    #[arg(
        long = "warm-pool",
        env = "RDS_IAM_SIDECAR_WARM_POOLS",
        value_name = "SPEC",
        value_delimiter = ','
    )]
    pub warm_pools: Vec<String>,

    /// Most client connections at once; more get 53300 [default: 1000].
    #[arg(long, env = "RDS_IAM_SIDECAR_MAX_CLIENT_CONNECTIONS", value_name = "N")]
    pub max_client_connections: Option<usize>,

    /// How long a client waits for a free upstream connection, then 53300 [default: 30s].
    #[arg(long, env = "RDS_IAM_SIDECAR_POOL_TIMEOUT", value_name = "DURATION")]
    pub pool_timeout: Option<String>,

    /// Idle upstream connections are closed after this [default: 600s, below RDS Proxy's 1800s].
    #[arg(long, env = "RDS_IAM_SIDECAR_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,

    /// Upstream connections are closed after about this long, ±10 % [default: 3600s].
    #[arg(long, env = "RDS_IAM_SIDECAR_MAX_LIFETIME", value_name = "DURATION")]
    pub max_lifetime: Option<String>,

    /// New upstream logins per second across all pools [default: 20].
    #[arg(long, env = "RDS_IAM_SIDECAR_MAX_CONNECT_RATE", value_name = "N")]
    pub max_connect_rate: Option<u32>,

    /// Run before a session-mode connection serves another client; empty to skip
    /// [default: DISCARD ALL].
    #[arg(long, env = "RDS_IAM_SIDECAR_RESET_QUERY", value_name = "SQL")]
    pub reset_query: Option<String>,

    /// What a client's cancel request does [default: forward].
    #[arg(long, env = "RDS_IAM_SIDECAR_CANCEL_MODE", value_enum)]
    pub cancel_mode: Option<CancelMode>,

    /// Admin HTTP endpoint (/metrics, /startup, /livez, /readyz, /quitquitquit), or `off`
    /// [default: 127.0.0.1:9090].
    #[arg(long, env = "RDS_IAM_SIDECAR_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,

    /// On SIGTERM/SIGINT, keep serving this long before draining (for apps that stop after
    /// the sidecar) [default: 0s].
    #[arg(
        long,
        env = "RDS_IAM_SIDECAR_MIN_SHUTDOWN_DELAY",
        value_name = "DURATION"
    )]
    pub min_shutdown_delay: Option<String>,

    /// How long a shutdown lets transactions finish before closing every connection; keep it
    /// below ECS's stopTimeout (30 s by default) [default: 25s].
    #[arg(long, env = "RDS_IAM_SIDECAR_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<String>,

    /// Exit code after a clean drain started by a signal [default: 0].
    #[arg(long, env = "RDS_IAM_SIDECAR_EXIT_CODE_ON_SIGNAL", value_name = "CODE")]
    pub exit_code_on_signal: Option<u8>,

    /// Log format [default: text].
    #[arg(long, env = "RDS_IAM_SIDECAR_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log level or tracing filter, e.g. `info`, `debug` [default: info].
    #[arg(long, env = "RDS_IAM_SIDECAR_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// Flags of `rds-iam-sidecar token`, named like `aws rds generate-db-auth-token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Endpoint host name the token is for.
    #[arg(long, alias = "hostname")]
    pub host: String,
    /// Endpoint port.
    #[arg(long, default_value_t = 5432)]
    pub port: u16,
    /// Database user name.
    #[arg(long, alias = "username")]
    pub user: String,
    /// AWS region [default: from the host name, then AWS_REGION].
    #[arg(long, env = "RDS_IAM_SIDECAR_REGION")]
    pub region: Option<String>,
}
