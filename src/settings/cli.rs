//! The command line: subcommands and their flags (clap). The settings of `run` (shared by
//! `doctor`) are in [`super::args`], where each is written once for flags, environment and TOML.
//! Nothing here validates meaning; that is [`crate::settings`]' job.

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use super::args::RunArgs;

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
    /// Start the sidecar, wait until it is ready, then run COMMAND with PGHOST/PGPORT set,
    /// passing it SIGTERM/SIGINT/SIGHUP; when it exits, drain and exit with its code. Takes the
    /// same settings as `run`: `rds-iam-sidecar exec --upstream … -- npm start`.
    Exec(Box<ExecArgs>),
    /// Run as an AWS Lambda external extension (what Lambda starts from /opt/extensions/):
    /// listen, register with the Extensions API, drain on SHUTDOWN. Settings come from the
    /// function's RDS_IAM_SIDECAR_* variables.
    LambdaExtension(Box<RunArgs>),
    /// Check each step of an IAM login (configuration, credentials, DNS, TCP, TLS, login,
    /// query) and explain the first one that fails. Takes the same settings as `run`.
    Doctor(Box<DoctorArgs>),
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// How long the sidecar may take to become ready before COMMAND runs; then exit 2 and
    /// COMMAND never starts [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub ready_timeout: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
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
    /// AWS region [default: from the host name, then AWS_REGION, then AWS_DEFAULT_REGION].
    #[arg(long, env = "RDS_IAM_SIDECAR_REGION")]
    pub region: Option<String>,
}
