//! The flags the whole process shares, whatever the number of endpoints (see `args.rs` for
//! how every field is a flag, an environment variable and a key of the TOML file).

use clap::Args;
use serde::{Deserialize, Serialize};

use super::values::{number, text};

use crate::ops::logging::LogFormat;
use crate::uring::SocketIo;

/// Settings the whole process shares, whatever the number of endpoints.
#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ProcessArgs {
    /// New upstream logins per second across all endpoints and pools [default: 20].
    #[arg(long, env = "RDS_IAM_SIDECAR_MAX_CONNECT_RATE", value_name = "N")]
    #[serde(
        default,
        deserialize_with = "number",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connect_rate: Option<u32>,

    /// Admin HTTP endpoint (/metrics, /startup, /livez, /readyz, /quitquitquit), or `off`
    /// [default: 127.0.0.1:9090].
    #[arg(long, env = "RDS_IAM_SIDECAR_ADMIN_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,

    /// On SIGTERM/SIGINT, keep serving this long before draining (for apps that stop after
    /// the sidecar) [default: 0s].
    #[arg(
        long,
        env = "RDS_IAM_SIDECAR_MIN_SHUTDOWN_DELAY",
        value_name = "DURATION"
    )]
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_shutdown_delay: Option<String>,

    /// How long a shutdown lets transactions finish before closing every connection; keep it
    /// below ECS's stopTimeout (30 s by default) [default: 25s].
    #[arg(long, env = "RDS_IAM_SIDECAR_SHUTDOWN_GRACE", value_name = "DURATION")]
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub shutdown_grace: Option<String>,

    /// Exit code after a clean drain started by a signal or /quitquitquit [default: 0].
    #[arg(long, env = "RDS_IAM_SIDECAR_EXIT_CODE_ON_SIGNAL", value_name = "CODE")]
    #[serde(
        default,
        deserialize_with = "number",
        skip_serializing_if = "Option::is_none"
    )]
    pub exit_code_on_signal: Option<u8>,

    /// Log format [default: text].
    #[arg(long, env = "RDS_IAM_SIDECAR_LOG_FORMAT", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,

    /// Log level or tracing filter, e.g. `info`, `debug` [default: info].
    #[arg(long, env = "RDS_IAM_SIDECAR_LOG_LEVEL", value_name = "FILTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,

    /// Threads that run the sidecar: 1 is one event loop, as PgBouncer's (the least CPU per
    /// transaction); more is a work-stealing pool of N, for hosts where one core is not
    /// enough [default: 1].
    #[arg(long, env = "RDS_IAM_SIDECAR_WORKER_THREADS", value_name = "N")]
    #[serde(
        default,
        deserialize_with = "number",
        skip_serializing_if = "Option::is_none"
    )]
    pub worker_threads: Option<usize>,

    /// How sockets write: `io-uring` (the writes of each turn of the event loop in one system
    /// call; reads are a readiness wait and a system call each either way; `epoll` where the
    /// kernel refuses io_uring or with more than one worker thread) or `epoll` (a system call
    /// per write) [default: io-uring].
    #[arg(long, env = "RDS_IAM_SIDECAR_SOCKET_IO", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_io: Option<SocketIo>,
}
