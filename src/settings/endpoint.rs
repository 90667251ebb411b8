//! One endpoint's settings, validated: what its listener, frontend, pools and upstream
//! connector each take. Errors name the flag and its variable, or, for a value the endpoint
//! set itself, the endpoint and the key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::args::{AuthMode, EndpointArgs};
use super::blame::Blame;
use super::frontend::frontend_settings;
use super::{ConfigError, EnvLookup, PASSWORD_ENV};
use crate::frontend::FrontendSettings;
use crate::iam::region::resolve_region;
use crate::pool::{PoolKey, PoolSettings};
use crate::secret::Secret;
use crate::upstream::kind::UpstreamKind;
use crate::upstream::tls::{TlsMode, VERIFY_CA_NEEDS_CA_FILE, load_ca_file};
use crate::upstream::{
    DEFAULT_DEAD_AFTER, Endpoint, MAX_DEAD_AFTER, MIN_DEAD_AFTER, UpstreamAuth, UpstreamSettings,
};

/// The longest `--warm-up-spread`: beyond it, warm pools are not warm when the app starts.
const MAX_WARM_UP_SPREAD: Duration = Duration::from_secs(600);

/// Everything one endpoint's engine takes, each part its own piece.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    pub upstream: UpstreamSettings,
    /// TCP addresses its clients connect to.
    pub listen: Vec<SocketAddr>,
    /// Directory for its unix socket `.s.PGSQL.<port>`.
    pub unix_socket: Option<PathBuf>,
    pub frontend: FrontendSettings,
    pub pool: PoolSettings,
    /// Pools opened at start with `--min-idle` connections (`--warm-pool`).
    pub warm_pools: Vec<PoolKey>,
}

impl EndpointSettings {
    /// Defaults for everything but the upstream; listens on an ephemeral loopback port
    /// (for embedding and tests).
    pub fn new(upstream: UpstreamSettings) -> Self {
        let mut pool = PoolSettings::default();
        if upstream.kind == UpstreamKind::RdsProxy {
            // A reset would pin: connections left with session state are closed.
            pool.reset_query = None;
        }
        Self {
            upstream,
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            unix_socket: None,
            frontend: FrontendSettings::default(),
            pool,
            warm_pools: Vec::new(),
        }
    }

    /// The endpoint's name in logs, errors and metric labels: HOST:PORT.
    pub fn name(&self) -> String {
        self.upstream.endpoint.to_string()
    }
}

/// Validates one endpoint's merged settings; `default_listen` is used when it names none.
pub(super) fn endpoint_settings(
    args: EndpointArgs,
    blame: &Blame<'_>,
    default_listen: &[SocketAddr],
    env: EnvLookup<'_>,
) -> Result<EndpointSettings, ConfigError> {
    let endpoint = Endpoint::parse(blame.address).map_err(|e| ConfigError::new("--upstream", e))?;
    let (kind, _) = UpstreamKind::resolve(args.upstream_kind.unwrap_or_default(), &endpoint.host);
    let pool = pool_settings(&args, kind, blame)?;
    let listen = listen_addresses(&args.listen, blame, default_listen)?;
    if let Some(dir) = &args.unix_socket
        && !dir.is_dir()
    {
        let message = format!("{} is not a directory", dir.display());
        return Err(blame.error("--unix-socket", message));
    }
    let unix_socket = args.unix_socket.clone();
    let frontend = frontend_settings(&args, blame, &listen, env)?;
    let warm_pools = warm_pools(
        &args.warm_pools,
        blame,
        frontend.db_user.as_deref(),
        pool.min_idle,
    )?;
    let upstream = upstream_settings(args, endpoint, blame, env)?;
    Ok(EndpointSettings {
        upstream,
        listen,
        unix_socket,
        frontend,
        pool,
        warm_pools,
    })
}

fn listen_addresses(
    texts: &[String],
    blame: &Blame<'_>,
    default_listen: &[SocketAddr],
) -> Result<Vec<SocketAddr>, ConfigError> {
    if texts.is_empty() {
        return Ok(default_listen.to_vec());
    }
    parse_addresses(texts, |message| blame.error("--listen", message))
}

/// `ADDR:PORT` texts as addresses; `error` names the setting a bad one came from.
pub(super) fn parse_addresses(
    texts: &[String],
    error: impl Fn(String) -> ConfigError,
) -> Result<Vec<SocketAddr>, ConfigError> {
    texts
        .iter()
        .map(|text| {
            text.trim().parse::<SocketAddr>().map_err(|_| {
                error(format!(
                    "'{text}' is not an ADDR:PORT such as 127.0.0.1:5432"
                ))
            })
        })
        .collect()
}

fn upstream_settings(
    args: EndpointArgs,
    endpoint: Endpoint,
    blame: &Blame<'_>,
    env: EnvLookup<'_>,
) -> Result<UpstreamSettings, ConfigError> {
    let upstream_addr = args
        .upstream_addr
        .as_deref()
        .map(Endpoint::parse)
        .transpose()
        .map_err(|e| blame.error("--upstream-addr", e))?;
    if let Some(path) = &args.ca_file {
        load_ca_file(path).map_err(|e| blame.error("--ca-file", e))?;
    }
    let tls_mode = args.tls_mode.unwrap_or(TlsMode::VerifyFull);
    if tls_mode == TlsMode::VerifyCa && args.ca_file.is_none() {
        return Err(blame.error("--tls-mode", VERIFY_CA_NEEDS_CA_FILE));
    }
    let auth = match args.auth.unwrap_or(AuthMode::Iam) {
        AuthMode::Iam => iam_auth(&args, &endpoint, tls_mode, blame, env)?,
        AuthMode::Password => password_auth(args.password_file.as_deref(), blame, env)?,
    };
    let connect_timeout = blame.positive_duration(
        "--connect-timeout",
        args.connect_timeout.as_deref(),
        Duration::from_secs(5),
    )?;
    let dead_after = blame.positive_duration(
        "--upstream-dead-after",
        args.upstream_dead_after.as_deref(),
        DEFAULT_DEAD_AFTER,
    )?;
    if !(MIN_DEAD_AFTER..=MAX_DEAD_AFTER).contains(&dead_after) {
        return Err(blame.error(
            "--upstream-dead-after",
            "must be from 5s (keepalive probes need room between them) to 1h",
        ));
    }
    let (kind, kind_reason) =
        UpstreamKind::resolve(args.upstream_kind.unwrap_or_default(), &endpoint.host);
    Ok(UpstreamSettings {
        endpoint,
        upstream_addr,
        ca_file: args.ca_file,
        tls_mode,
        auth,
        connect_timeout,
        dead_after,
        kind,
        kind_reason,
    })
}

fn iam_auth(
    args: &EndpointArgs,
    endpoint: &Endpoint,
    tls_mode: TlsMode,
    blame: &Blame<'_>,
    env: EnvLookup<'_>,
) -> Result<UpstreamAuth, ConfigError> {
    if tls_mode == TlsMode::Disable {
        return Err(blame.error(
            "--tls-mode",
            "'disable' would send the IAM token in clear text; it is only allowed with --auth \
             password (local development)",
        ));
    }
    if args.password_file.is_some() {
        return Err(blame.error("--password-file", "is only used with --auth password"));
    }
    let (region, region_source) = resolve_region(args.region.as_deref(), &endpoint.host, env)
        .ok_or_else(|| {
            blame.error(
                "--region",
                format!(
                    "cannot tell the AWS region: '{}' is not an *.REGION.rds.amazonaws.com \
                     name and AWS_REGION is not set; pass --region",
                    endpoint.host
                ),
            )
        })?;
    Ok(UpstreamAuth::Iam {
        region,
        region_source,
    })
}

fn password_auth(
    password_file: Option<&std::path::Path>,
    blame: &Blame<'_>,
    env: EnvLookup<'_>,
) -> Result<UpstreamAuth, ConfigError> {
    let password = match password_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| {
                blame.error(
                    "--password-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        None => env(PASSWORD_ENV).ok_or_else(|| {
            blame.error(
                "--password-file",
                format!("--auth password needs --password-file or the {PASSWORD_ENV} variable"),
            )
        })?,
    };
    Ok(UpstreamAuth::Password(Secret::new(password)))
}

/// The `--warm-pool` specs as pool keys; each opens `--min-idle` connections at start, so
/// they need `--min-idle` of 1 or more.
fn warm_pools(
    specs: &[String],
    blame: &Blame<'_>,
    db_user: Option<&str>,
    min_idle: usize,
) -> Result<Vec<PoolKey>, ConfigError> {
    let mut keys: Vec<PoolKey> = Vec::new();
    for spec in specs
        .iter()
        .map(|spec| spec.trim())
        .filter(|s| !s.is_empty())
    {
        let key = PoolKey::parse_spec(spec, db_user).map_err(|e| blame.error("--warm-pool", e))?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    if !keys.is_empty() && min_idle == 0 {
        return Err(blame.error(
            "--warm-pool",
            "opens --min-idle connections per pool at start: set --min-idle to 1 or more",
        ));
    }
    Ok(keys)
}

fn pool_settings(
    args: &EndpointArgs,
    kind: UpstreamKind,
    blame: &Blame<'_>,
) -> Result<PoolSettings, ConfigError> {
    let defaults = PoolSettings::default();
    let size = args.pool_size.unwrap_or(defaults.size);
    if size == 0 {
        return Err(blame.error("--pool-size", "must be at least 1"));
    }
    let min_idle = args.min_idle.unwrap_or(defaults.min_idle);
    if min_idle > size {
        let message = format!("{min_idle} is more than --pool-size {size}");
        return Err(blame.error("--min-idle", message));
    }
    // A connection left with session state is reset, or closed where a reset would pin it.
    let reset_query = match &args.reset_query {
        Some(text) if text.trim().is_empty() => None,
        Some(text) => Some(text.clone()),
        None if kind == UpstreamKind::RdsProxy => None,
        None => defaults.reset_query,
    };
    Ok(PoolSettings {
        mode: args.pool_mode.unwrap_or(defaults.mode),
        size,
        min_idle,
        timeout: blame.positive_duration(
            "--pool-timeout",
            args.pool_timeout.as_deref(),
            defaults.timeout,
        )?,
        idle_timeout: blame.positive_duration(
            "--idle-timeout",
            args.idle_timeout.as_deref(),
            defaults.idle_timeout,
        )?,
        max_lifetime: blame.positive_duration(
            "--max-lifetime",
            args.max_lifetime.as_deref(),
            defaults.max_lifetime,
        )?,
        reset_query,
        probe_after: defaults.probe_after,
        warm_up_spread: blame.bounded_duration(
            "--warm-up-spread",
            args.warm_up_spread.as_deref(),
            defaults.warm_up_spread,
            MAX_WARM_UP_SPREAD,
        )?,
    })
}
