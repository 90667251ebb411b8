//! One validated [`Settings`] for `run` (and `doctor`), layered from flags > environment >
//! TOML file > defaults. Each setting is written once, in [`args`]; [`file`] reads the TOML file
//! and the endpoints' own settings; [`endpoint`] validates what one endpoint's engine takes.
//! Every problem is a [`ConfigError`] naming the flag and its variable (or the endpoint and
//! key), reported before anything listens.

pub mod admin;
pub mod args;
mod blame;
pub mod cli;
pub mod duration;
pub mod endpoint;
pub mod file;
mod frontend;
mod layers;
pub mod process_args;
mod values;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use crate::iam::region::EnvLookup;
use crate::ops::logging::LogFormat;
use crate::uring::SocketIo;
pub use args::{AuthMode, EndpointArgs, ProcessArgs, RunArgs};
use blame::Blame;
use duration::parse_duration;
pub use endpoint::EndpointSettings;
use endpoint::{endpoint_settings, parse_addresses};
pub use file::{FileSettings, UpstreamSpec};
use file::{as_table, overlay};
use layers::{Layers, endpoint_sources};

/// Environment variable holding the upstream password in `--auth password` mode.
pub const PASSWORD_ENV: &str = "RDS_IAM_SIDECAR_PASSWORD";
/// The admin endpoint's default address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_LISTEN: &str = "127.0.0.1:5432";
const DEFAULT_MAX_CONNECT_RATE: u32 = 20;
/// One event loop: the least CPU per transaction (docs/ARCHITECTURE.md, issue 16).
const DEFAULT_WORKER_THREADS: usize = 1;
/// More threads than this is a typo, not a host.
const MAX_WORKER_THREADS: usize = 256;
/// RDS Proxy closes client connections idle this long (IdleClientTimeout default).
pub const RDS_PROXY_IDLE_CLIENT_TIMEOUT: Duration = Duration::from_secs(1800);

/// The validated settings of `run`: one entry per upstream endpoint, and what the process
/// shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoints: Vec<EndpointSettings>,
    /// New upstream logins per second across all endpoints (one IAM login budget).
    pub max_connect_rate: u32,
    /// Where the admin HTTP endpoint listens; `None` when turned off.
    pub admin_listen: Option<SocketAddr>,
    pub lifecycle: Lifecycle,
    pub log_format: LogFormat,
    pub log_level: String,
}

/// Shutdown behaviour (see [`crate::ops::shutdown`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// Serving goes on this long after a signal before draining starts.
    pub min_shutdown_delay: Duration,
    /// Draining lasts at most this long.
    pub shutdown_grace: Duration,
    /// Exit code after a clean drain that a signal started.
    pub exit_code_on_signal: u8,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            min_shutdown_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(25),
            exit_code_on_signal: 0,
        }
    }
}

impl Settings {
    /// Defaults for everything the process shares, the admin endpoint off (for embedding and
    /// tests).
    pub fn new(endpoints: Vec<EndpointSettings>) -> Self {
        Self {
            endpoints,
            max_connect_rate: DEFAULT_MAX_CONNECT_RATE,
            admin_listen: None,
            lifecycle: Lifecycle::default(),
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
        }
    }
}

/// A configuration problem, naming the setting it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    fn new(flag: &str, message: impl Into<String>) -> Self {
        let var = format!(
            "RDS_IAM_SIDECAR_{}",
            key_of_flag(flag).replace('-', "_").to_uppercase()
        );
        Self {
            setting: format!("{flag} ({var})"),
            message: message.into(),
        }
    }
}

/// The TOML key (and variable name) of a flag: its name, except `--warm-pool`, whose
/// variable and key are plural because they take a list.
fn key_of_flag(flag: &str) -> &str {
    match flag.trim_start_matches('-') {
        "warm-pool" => "warm-pools",
        key => key,
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The process environment as an [`EnvLookup`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Settings {
    /// Layers flags (clap already folded in the environment) over the TOML file and the
    /// defaults, then each endpoint's own settings over those.
    pub fn from_args(args: RunArgs, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => FileSettings::load(path).map_err(|e| ConfigError::new("--config", e))?,
            None => FileSettings::default(),
        };
        let mut file_shared = file.endpoint;
        let mut sources = endpoint_sources(&args.upstream, file.upstreams)?;
        // Flag or its variable > RDS_IAM_SIDECAR_PASSWORD > the file's password-file.
        if env(PASSWORD_ENV).is_some() {
            file_shared.password_file = None;
            for source in &mut sources {
                source.file_own.remove("password-file");
            }
        }
        let layer = |e: String| ConfigError::new("--config", e);
        let process =
            overlay(&file.process, &as_table(&args.process).map_err(layer)?).map_err(layer)?;
        let layers = Layers::new(file_shared, &args.endpoint)?;
        let base_listen = base_listen(&layers.listen)?;
        let several = sources.len() > 1;
        let mut endpoints: Vec<EndpointSettings> = Vec::with_capacity(sources.len());
        for (index, source) in sources.iter().enumerate() {
            let (merged, own) = layers.merge(source)?;
            let blame = Blame {
                address: &source.address,
                own: &own,
                several,
            };
            let default_listen = following_ports(&base_listen, index);
            let endpoint = endpoint_settings(merged, &blame, &default_listen, env)?;
            check_listeners_distinct(&endpoints, &endpoint, &blame)?;
            endpoints.push(endpoint);
        }
        process_settings(process, endpoints)
    }
}

/// The threads of the runtime, which exist before [`Settings::from_args`] runs: the flag or
/// its variable, else the file's `worker-threads`, else 1.
pub fn worker_threads(args: &RunArgs) -> Result<usize, ConfigError> {
    let chosen = before_runtime(args, |process| process.worker_threads)?;
    match chosen.unwrap_or(DEFAULT_WORKER_THREADS) {
        n @ 1..=MAX_WORKER_THREADS => Ok(n),
        n => Err(ConfigError::new(
            "--worker-threads",
            format!("{n} is not between 1 and {MAX_WORKER_THREADS}"),
        )),
    }
}

/// How sockets do their I/O, chosen with the runtime (before [`Settings::from_args`]): the
/// flag or its variable, else the file's `socket-io`, else epoll.
pub fn socket_io(args: &RunArgs) -> Result<SocketIo, ConfigError> {
    Ok(before_runtime(args, |process| process.socket_io)?.unwrap_or_default())
}

/// A process setting read before the runtime exists: the flag (or its variable), else the
/// file's.
fn before_runtime<T>(
    args: &RunArgs,
    setting: impl Fn(&ProcessArgs) -> Option<T>,
) -> Result<Option<T>, ConfigError> {
    match (setting(&args.process), &args.config) {
        (Some(value), _) => Ok(Some(value)),
        (None, Some(path)) => {
            let file = FileSettings::load(path).map_err(|e| ConfigError::new("--config", e))?;
            Ok(setting(&file.process))
        }
        (None, None) => Ok(None),
    }
}

/// The first endpoint's listen addresses: `--listen`, else 127.0.0.1:5432.
fn base_listen(texts: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    let default = [DEFAULT_LISTEN.to_owned()];
    let texts = if texts.is_empty() {
        &default[..]
    } else {
        texts
    };
    parse_addresses(texts, |message| ConfigError::new("--listen", message))
}

/// Endpoint `index` listens on the first endpoint's addresses, `index` ports further on
/// (5432, 5433, ...); port 0 (any free port) stays 0.
fn following_ports(base: &[SocketAddr], index: usize) -> Vec<SocketAddr> {
    base.iter()
        .map(|addr| {
            let mut addr = *addr;
            if addr.port() != 0 {
                let offset = u16::try_from(index).unwrap_or(u16::MAX);
                addr.set_port(addr.port().saturating_add(offset));
            }
            addr
        })
        .collect()
}

/// Two endpoints cannot share a listen address (a fixed port, not 0), nor a unix socket file.
fn check_listeners_distinct(
    earlier: &[EndpointSettings],
    endpoint: &EndpointSettings,
    blame: &Blame<'_>,
) -> Result<(), ConfigError> {
    let taken = |other: &EndpointSettings| {
        let tcp = endpoint
            .listen
            .iter()
            .find(|addr| addr.port() != 0 && other.listen.contains(addr))
            .map(|addr| (addr.to_string(), "listen"));
        tcp.or_else(|| {
            let path = socket_path(endpoint)?;
            (socket_path(other).as_ref() == Some(&path))
                .then(|| (path.display().to_string(), "unix-socket"))
        })
    };
    for other in earlier {
        if let Some((what, key)) = taken(other) {
            let message = format!(
                "{what} is already the {key} of upstream {}; give this endpoint its own \
                 (e.g. ?listen=127.0.0.1:6432)",
                other.name()
            );
            return Err(ConfigError {
                setting: format!("--upstream {}: {key}", blame.address),
                message,
            });
        }
    }
    Ok(())
}

/// The unix socket an endpoint will bind, when its name is known now (a fixed first port).
fn socket_path(endpoint: &EndpointSettings) -> Option<std::path::PathBuf> {
    let port = endpoint.listen.first()?.port();
    let dir = endpoint.unix_socket.as_ref()?;
    (port != 0).then(|| dir.join(format!(".s.PGSQL.{port}")))
}

/// The settings the process shares, around the validated endpoints.
fn process_settings(
    args: ProcessArgs,
    endpoints: Vec<EndpointSettings>,
) -> Result<Settings, ConfigError> {
    let max_connect_rate = args.max_connect_rate.unwrap_or(DEFAULT_MAX_CONNECT_RATE);
    if max_connect_rate == 0 {
        return Err(ConfigError::new("--max-connect-rate", "must be at least 1"));
    }
    let admin_listen = match &args.admin_listen {
        Some(text) if text.eq_ignore_ascii_case("off") => None,
        Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                "--admin-listen",
                format!("'{text}' is not an IP:port address (or 'off')"),
            )
        })?),
        None => DEFAULT_ADMIN_LISTEN.parse().ok(),
    };
    let duration = |flag: &str, text: &Option<String>, default: Duration| match text {
        Some(text) => parse_duration(text).map_err(|e| ConfigError::new(flag, e)),
        None => Ok(default),
    };
    let defaults = Lifecycle::default();
    let lifecycle = Lifecycle {
        min_shutdown_delay: duration(
            "--min-shutdown-delay",
            &args.min_shutdown_delay,
            defaults.min_shutdown_delay,
        )?,
        shutdown_grace: duration(
            "--shutdown-grace",
            &args.shutdown_grace,
            defaults.shutdown_grace,
        )?,
        exit_code_on_signal: args
            .exit_code_on_signal
            .unwrap_or(defaults.exit_code_on_signal),
    };
    let log_level = args.log_level.unwrap_or_else(|| "info".to_owned());
    crate::ops::logging::validate_filter(&log_level)
        .map_err(|e| ConfigError::new("--log-level", e))?;
    Ok(Settings {
        endpoints,
        max_connect_rate,
        admin_listen,
        lifecycle,
        log_format: args.log_format.unwrap_or(LogFormat::Text),
        log_level,
    })
}

#[cfg(test)]
mod tests;
