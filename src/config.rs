//! One validated configuration for `run`, merged from flags > environment > TOML file >
//! defaults. Every problem is reported as a [`ConfigError`] naming the flag and its variable,
//! before anything listens.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{AuthMode, CancelMode, LogFormat, RunArgs, TlsMode};
use crate::duration::parse_duration;
use crate::iam::region::{RegionSource, resolve_region};
use crate::pool::{PoolKey, PoolMode, PoolSettings};
use crate::secret::Secret;

/// Environment variable holding the upstream password in `--auth password` mode.
pub const PASSWORD_ENV: &str = "RDS_IAM_SIDECAR_PASSWORD";
const DEFAULT_LISTEN: &str = "127.0.0.1:5432";
const DEFAULT_PORT: u16 = 5432;
const DEFAULT_MAX_CLIENTS: usize = 1000;
/// RDS Proxy closes client connections idle this long (IdleClientTimeout default).
pub const RDS_PROXY_IDLE_CLIENT_TIMEOUT: Duration = Duration::from_secs(1800);

/// A host name and port: what the token is signed for and the TLS certificate must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `host:port`, `host` (port 5432) or `[v6]:port`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("'{text}': missing ']'"))?;
            let port = after.strip_prefix(':').unwrap_or("");
            (host, port)
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, port),
                Some(_) => return Err(format!("'{text}': write IPv6 addresses as [addr]:port")),
                None => (text, ""),
            }
        };
        if host.is_empty() {
            return Err(format!("'{text}' has no host name (expected HOST:PORT)"));
        }
        let port = if port.is_empty() {
            DEFAULT_PORT
        } else {
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("'{text}': '{port}' is not a port number"))?
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// `host:port` as a dial target (IPv6 hosts bracketed).
    pub fn dial_target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dial_target())
    }
}

/// How the sidecar authenticates upstream.
#[derive(Debug, Clone)]
pub enum UpstreamAuth {
    /// IAM token signed for `region`.
    Iam {
        region: String,
        region_source: RegionSource,
    },
    /// A fixed password (local development).
    Password(Secret),
}

/// The validated configuration of `run`.
#[derive(Debug, Clone)]
pub struct Config {
    pub upstream: Endpoint,
    /// Where to dial, when it differs from `upstream` (tunnels, tests).
    pub upstream_addr: Option<Endpoint>,
    pub listen: Vec<SocketAddr>,
    pub unix_socket: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub tls_mode: TlsMode,
    pub auth: UpstreamAuth,
    pub db_user: Option<String>,
    pub connect_timeout: Duration,
    pub pool: PoolSettings,
    /// Pools opened at start with `--min-idle` connections (`--warm-pool`).
    pub warm_pools: Vec<PoolKey>,
    pub max_client_connections: usize,
    pub cancel_mode: CancelMode,
    /// Where the admin HTTP endpoint listens; `None` when turned off.
    pub admin_listen: Option<SocketAddr>,
    pub lifecycle: Lifecycle,
    pub log_format: LogFormat,
    pub log_level: String,
}

/// Shutdown behaviour (see [`crate::shutdown`]).
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

/// The admin endpoint's default address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

impl Config {
    /// A configuration with defaults for everything but the upstream (for embedding and tests).
    pub fn new(upstream: Endpoint, auth: UpstreamAuth) -> Self {
        Self {
            upstream,
            upstream_addr: None,
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            unix_socket: None,
            ca_file: None,
            tls_mode: TlsMode::VerifyFull,
            auth,
            db_user: None,
            connect_timeout: Duration::from_secs(5),
            pool: PoolSettings::default(),
            warm_pools: Vec::new(),
            max_client_connections: DEFAULT_MAX_CLIENTS,
            cancel_mode: CancelMode::Forward,
            admin_listen: None,
            lifecycle: Lifecycle::default(),
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
        }
    }

    /// The address the sidecar dials: `--upstream-addr`, else `--upstream`.
    pub fn dial_endpoint(&self) -> &Endpoint {
        self.upstream_addr.as_ref().unwrap_or(&self.upstream)
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
            flag.trim_start_matches('-')
                .replace('-', "_")
                .to_uppercase()
        );
        Self {
            setting: format!("{flag} ({var})"),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The TOML file: every key is a `run` flag name.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub upstream: Option<String>,
    pub upstream_addr: Option<String>,
    pub listen: Option<Vec<String>>,
    pub unix_socket: Option<PathBuf>,
    pub region: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub tls_mode: Option<TlsMode>,
    pub auth: Option<AuthMode>,
    pub password_file: Option<PathBuf>,
    pub db_user: Option<String>,
    pub connect_timeout: Option<String>,
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<usize>,
    pub min_idle: Option<usize>,
    pub warm_pools: Option<Vec<String>>,
    pub max_client_connections: Option<usize>,
    pub pool_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_lifetime: Option<String>,
    pub max_connect_rate: Option<u32>,
    pub reset_query: Option<String>,
    pub cancel_mode: Option<CancelMode>,
    pub admin_listen: Option<String>,
    pub min_shutdown_delay: Option<String>,
    pub shutdown_grace: Option<String>,
    pub exit_code_on_signal: Option<u8>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        toml::from_str(&text).map_err(|e| {
            ConfigError::new(
                "--config",
                format!("{}: {}", path.display(), e.message().trim()),
            )
        })
    }
}

/// Reads an environment variable; injectable so tests need not touch the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment as an [`EnvLookup`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Merges flags (clap already folded in the environment), the TOML file and defaults.
    pub fn from_args(args: RunArgs, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let pool = pool_settings(&args, &file)?;

        let upstream_text = args.upstream.or(file.upstream).ok_or_else(|| {
            ConfigError::new(
                "--upstream",
                "is required: the RDS Proxy or database endpoint, e.g. \
                 mydb.proxy-abc123.us-east-1.rds.amazonaws.com:5432",
            )
        })?;
        let upstream =
            Endpoint::parse(&upstream_text).map_err(|e| ConfigError::new("--upstream", e))?;
        let upstream_addr = args
            .upstream_addr
            .or(file.upstream_addr)
            .map(|text| Endpoint::parse(&text))
            .transpose()
            .map_err(|e| ConfigError::new("--upstream-addr", e))?;

        let listen_texts = if !args.listen.is_empty() {
            args.listen
        } else {
            file.listen
                .unwrap_or_else(|| vec![DEFAULT_LISTEN.to_owned()])
        };
        let listen = listen_texts
            .iter()
            .map(|text| {
                text.trim().parse::<SocketAddr>().map_err(|_| {
                    ConfigError::new(
                        "--listen",
                        format!("'{text}' is not an ADDR:PORT such as 127.0.0.1:5432"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if listen.is_empty() {
            return Err(ConfigError::new("--listen", "needs at least one address"));
        }

        let unix_socket = args.unix_socket.or(file.unix_socket);
        if let Some(dir) = &unix_socket
            && !dir.is_dir()
        {
            return Err(ConfigError::new(
                "--unix-socket",
                format!("{} is not a directory", dir.display()),
            ));
        }

        let ca_file = args.ca_file.or(file.ca_file);
        if let Some(path) = &ca_file {
            crate::upstream::tls::load_ca_file(path)
                .map_err(|e| ConfigError::new("--ca-file", e))?;
        }

        let auth_mode = args.auth.or(file.auth).unwrap_or(AuthMode::Iam);
        let tls_mode = args
            .tls_mode
            .or(file.tls_mode)
            .unwrap_or(TlsMode::VerifyFull);
        if tls_mode == TlsMode::VerifyCa && ca_file.is_none() {
            return Err(ConfigError::new(
                "--tls-mode",
                crate::upstream::tls::VERIFY_CA_NEEDS_CA_FILE,
            ));
        }
        // Flag or its variable > RDS_IAM_SIDECAR_PASSWORD > the file's password-file.
        let password_file = args.password_file.or_else(|| {
            if env(PASSWORD_ENV).is_some() {
                None
            } else {
                file.password_file
            }
        });
        let auth = match auth_mode {
            AuthMode::Iam => {
                if tls_mode == TlsMode::Disable {
                    return Err(ConfigError::new(
                        "--tls-mode",
                        "'disable' would send the IAM token in clear text; it is only allowed \
                         with --auth password (local development)",
                    ));
                }
                if password_file.is_some() {
                    return Err(ConfigError::new(
                        "--password-file",
                        "is only used with --auth password",
                    ));
                }
                let region_flag = args.region.or(file.region);
                let (region, region_source) =
                    resolve_region(region_flag.as_deref(), &upstream.host, env).ok_or_else(
                        || {
                            ConfigError::new(
                                "--region",
                                format!(
                                    "cannot tell the AWS region: '{}' is not an \
                                     *.REGION.rds.amazonaws.com name and AWS_REGION is not set; \
                                     pass --region",
                                    upstream.host
                                ),
                            )
                        },
                    )?;
                UpstreamAuth::Iam {
                    region,
                    region_source,
                }
            }
            AuthMode::Password => {
                let password = match &password_file {
                    Some(path) => {
                        let text = std::fs::read_to_string(path).map_err(|e| {
                            ConfigError::new(
                                "--password-file",
                                format!("cannot read {}: {e}", path.display()),
                            )
                        })?;
                        text.trim_end_matches(['\r', '\n']).to_owned()
                    }
                    None => env(PASSWORD_ENV).ok_or_else(|| {
                        ConfigError::new(
                            "--password-file",
                            format!(
                                "--auth password needs --password-file or the {PASSWORD_ENV} \
                                 variable"
                            ),
                        )
                    })?,
                };
                UpstreamAuth::Password(Secret::new(password))
            }
        };

        let db_user = args.db_user.or(file.db_user);
        if db_user.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::new("--db-user", "must not be empty"));
        }

        let warm_pools = warm_pools(
            if args.warm_pools.is_empty() {
                file.warm_pools.as_deref().unwrap_or_default()
            } else {
                &args.warm_pools
            },
            db_user.as_deref(),
            pool.min_idle,
        )?;

        let connect_timeout = match args.connect_timeout.or(file.connect_timeout) {
            Some(text) => {
                parse_duration(&text).map_err(|e| ConfigError::new("--connect-timeout", e))?
            }
            None => Duration::from_secs(5),
        };
        if connect_timeout.is_zero() {
            return Err(ConfigError::new("--connect-timeout", "must be more than 0"));
        }

        let max_client_connections = args
            .max_client_connections
            .or(file.max_client_connections)
            .unwrap_or(DEFAULT_MAX_CLIENTS);
        if max_client_connections == 0 {
            return Err(ConfigError::new(
                "--max-client-connections",
                "must be at least 1",
            ));
        }

        let admin_listen = match args.admin_listen.as_ref().or(file.admin_listen.as_ref()) {
            Some(text) if text.eq_ignore_ascii_case("off") => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    "--admin-listen",
                    format!("'{text}' is not an IP:port address (or 'off')"),
                )
            })?),
            None => DEFAULT_ADMIN_LISTEN.parse().ok(),
        };
        let defaults = Lifecycle::default();
        let lifecycle = Lifecycle {
            min_shutdown_delay: optional_duration(
                "--min-shutdown-delay",
                &args.min_shutdown_delay,
                &file.min_shutdown_delay,
                defaults.min_shutdown_delay,
            )?,
            shutdown_grace: optional_duration(
                "--shutdown-grace",
                &args.shutdown_grace,
                &file.shutdown_grace,
                defaults.shutdown_grace,
            )?,
            exit_code_on_signal: args
                .exit_code_on_signal
                .or(file.exit_code_on_signal)
                .unwrap_or(defaults.exit_code_on_signal),
        };

        let log_level = args
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info".to_owned());
        crate::logging::validate_filter(&log_level)
            .map_err(|e| ConfigError::new("--log-level", e))?;

        Ok(Self {
            upstream,
            upstream_addr,
            listen,
            unix_socket,
            ca_file,
            tls_mode,
            auth,
            db_user,
            connect_timeout,
            pool,
            warm_pools,
            max_client_connections,
            cancel_mode: args
                .cancel_mode
                .or(file.cancel_mode)
                .unwrap_or(CancelMode::Forward),
            admin_listen,
            lifecycle,
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            log_level,
        })
    }
}

/// A duration setting that may be zero: flag/env, else file, else `default`.
fn optional_duration(
    flag: &str,
    from_args: &Option<String>,
    from_file: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match from_args.as_ref().or(from_file.as_ref()) {
        Some(text) => parse_duration(text).map_err(|e| ConfigError::new(flag, e)),
        None => Ok(default),
    }
}

/// A duration setting: flag/env, else file, else `default`; must be more than zero.
fn duration_setting(
    flag: &str,
    from_args: &Option<String>,
    from_file: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let value = optional_duration(flag, from_args, from_file, default)?;
    if value.is_zero() {
        return Err(ConfigError::new(flag, "must be more than 0"));
    }
    Ok(value)
}

/// The `--warm-pool` specs as pool keys; each opens `--min-idle` connections at start, so
/// they need `--min-idle` of 1 or more.
fn warm_pools(
    specs: &[String],
    db_user: Option<&str>,
    min_idle: usize,
) -> Result<Vec<PoolKey>, ConfigError> {
    let error = |message: String| ConfigError {
        setting: "--warm-pool (RDS_IAM_SIDECAR_WARM_POOLS)".to_owned(),
        message,
    };
    let mut keys: Vec<PoolKey> = Vec::new();
    for spec in specs
        .iter()
        .map(|spec| spec.trim())
        .filter(|s| !s.is_empty())
    {
        let key = PoolKey::parse_spec(spec, db_user).map_err(&error)?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    if !keys.is_empty() && min_idle == 0 {
        return Err(error(
            "opens --min-idle connections per pool at start: set --min-idle to 1 or more"
                .to_owned(),
        ));
    }
    Ok(keys)
}

fn pool_settings(args: &RunArgs, file: &FileConfig) -> Result<PoolSettings, ConfigError> {
    let defaults = PoolSettings::default();
    let size = args.pool_size.or(file.pool_size).unwrap_or(defaults.size);
    if size == 0 {
        return Err(ConfigError::new("--pool-size", "must be at least 1"));
    }
    let min_idle = args.min_idle.or(file.min_idle).unwrap_or(defaults.min_idle);
    if min_idle > size {
        return Err(ConfigError::new(
            "--min-idle",
            format!("{min_idle} is more than --pool-size {size}"),
        ));
    }
    let idle_timeout = duration_setting(
        "--idle-timeout",
        &args.idle_timeout,
        &file.idle_timeout,
        defaults.idle_timeout,
    )?;
    let max_connect_rate = args
        .max_connect_rate
        .or(file.max_connect_rate)
        .unwrap_or(defaults.max_connect_rate);
    if max_connect_rate == 0 {
        return Err(ConfigError::new("--max-connect-rate", "must be at least 1"));
    }
    let reset_query = match args.reset_query.as_ref().or(file.reset_query.as_ref()) {
        Some(text) if text.trim().is_empty() => None,
        Some(text) => Some(text.clone()),
        None => defaults.reset_query,
    };
    Ok(PoolSettings {
        mode: args.pool_mode.or(file.pool_mode).unwrap_or(defaults.mode),
        size,
        min_idle,
        timeout: duration_setting(
            "--pool-timeout",
            &args.pool_timeout,
            &file.pool_timeout,
            defaults.timeout,
        )?,
        idle_timeout,
        max_lifetime: duration_setting(
            "--max-lifetime",
            &args.max_lifetime,
            &file.max_lifetime,
            defaults.max_lifetime,
        )?,
        reset_query,
        max_connect_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn args(upstream: &str) -> RunArgs {
        RunArgs {
            upstream: Some(upstream.to_owned()),
            ..RunArgs::default()
        }
    }

    #[test]
    fn endpoint_parsing() {
        assert_eq!(
            Endpoint::parse("db.example.com:6432"),
            Ok(Endpoint {
                host: "db.example.com".into(),
                port: 6432
            })
        );
        assert_eq!(Endpoint::parse("db.example.com").map(|e| e.port), Ok(5432));
        assert_eq!(
            Endpoint::parse("[::1]:5433").map(|e| e.dial_target()),
            Ok("[::1]:5433".to_owned())
        );
        assert!(Endpoint::parse(":5432").is_err());
        assert!(Endpoint::parse("db:notaport").is_err());
        assert!(Endpoint::parse("db:0").is_err());
    }

    #[test]
    fn region_comes_from_the_endpoint_name() {
        let config = Config::from_args(
            args("mydb.proxy-abc123.eu-west-2.rds.amazonaws.com:5432"),
            &no_env,
        )
        .expect("valid");
        match config.auth {
            UpstreamAuth::Iam {
                region,
                region_source,
            } => {
                assert_eq!(region, "eu-west-2");
                assert_eq!(region_source, RegionSource::EndpointName);
            }
            other => panic!("unexpected auth {other:?}"),
        }
        assert_eq!(config.listen, vec!["127.0.0.1:5432".parse().expect("addr")]);
        assert_eq!(config.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn warm_pools_come_from_repeated_flags_or_one_comma_separated_variable() {
        use clap::Parser;
        let endpoint = "mydb.proxy-abc123.eu-west-2.rds.amazonaws.com";
        let parse = |argv: &[&str]| {
            let cli = crate::cli::Cli::try_parse_from(
                ["rds-iam-sidecar", "--upstream", endpoint]
                    .iter()
                    .chain(argv),
            )
            .expect("flags parse");
            Config::from_args(cli.run, &no_env)
        };
        let config = parse(&[
            "--min-idle",
            "2",
            "--warm-pool",
            "app@orders?application_name=api",
            "--warm-pool",
            "app@orders,app@billing",
        ])
        .expect("valid");
        let specs: Vec<String> = config.warm_pools.iter().map(PoolKey::spec).collect();
        assert_eq!(
            specs,
            [
                "app@orders?application_name=api",
                "app@orders",
                "app@billing"
            ]
        );
        let err = parse(&["--warm-pool", "app@orders"]).expect_err("no --min-idle");
        assert!(
            err.setting
                .starts_with("--warm-pool (RDS_IAM_SIDECAR_WARM_POOLS)")
        );
        assert!(err.message.contains("--min-idle"), "{err}");
        let err = parse(&[
            "--min-idle",
            "1",
            "--db-user",
            "svc",
            "--warm-pool",
            "app@db",
        ])
        .expect_err("user differs from --db-user");
        assert!(err.message.contains("--db-user"), "{err}");
        let config = parse(&["--min-idle", "1", "--db-user", "svc", "--warm-pool", "db"])
            .expect("the user defaults to --db-user");
        assert_eq!(config.warm_pools[0].to_string(), "svc@db");
    }

    #[test]
    fn iam_with_tls_disabled_is_refused() {
        let mut a = args("mydb.proxy-abc123.eu-west-2.rds.amazonaws.com:5432");
        a.tls_mode = Some(TlsMode::Disable);
        let err = Config::from_args(a, &no_env).expect_err("must fail");
        assert!(
            err.setting
                .starts_with("--tls-mode (RDS_IAM_SIDECAR_TLS_MODE)")
        );
    }

    #[test]
    fn verify_ca_needs_its_own_roots() {
        let mut a = args("mydb.proxy-abc123.eu-west-2.rds.amazonaws.com:5432");
        a.tls_mode = Some(TlsMode::VerifyCa);
        let err = Config::from_args(a, &no_env).expect_err("must fail");
        assert!(err.message.contains("--ca-file"), "{err}");
    }

    #[test]
    fn password_variable_beats_the_files_password_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sidecar.toml");
        std::fs::write(
            &path,
            "upstream = \"localhost:5432\"\nauth = \"password\"\ntls-mode = \"disable\"\n\
             password-file = \"/nonexistent/password\"\n",
        )
        .expect("write");
        let a = RunArgs {
            config: Some(path),
            ..RunArgs::default()
        };
        assert!(
            Config::from_args(a.clone(), &no_env).is_err(),
            "file's password-file used"
        );
        let env = |name: &str| (name == PASSWORD_ENV).then(|| "from-env".to_owned());
        let config = Config::from_args(a, &env).expect("valid");
        assert!(matches!(config.auth, UpstreamAuth::Password(ref p) if p.expose() == "from-env"));
    }

    #[test]
    fn unknown_region_is_an_error_naming_the_flag() {
        let err = Config::from_args(args("10.0.0.5:5432"), &no_env).expect_err("must fail");
        assert_eq!(err.setting, "--region (RDS_IAM_SIDECAR_REGION)");
        let env = |name: &str| (name == "AWS_REGION").then(|| "us-west-1".to_owned());
        assert!(Config::from_args(args("10.0.0.5:5432"), &env).is_ok());
    }

    #[test]
    fn password_mode_reads_the_environment() {
        let mut a = args("localhost:5432");
        a.auth = Some(AuthMode::Password);
        a.tls_mode = Some(TlsMode::Disable);
        assert!(Config::from_args(a.clone(), &no_env).is_err());
        let env = |name: &str| (name == PASSWORD_ENV).then(|| "pw".to_owned());
        let config = Config::from_args(a, &env).expect("valid");
        assert!(matches!(config.auth, UpstreamAuth::Password(ref p) if p.expose() == "pw"));
        assert!(!format!("{config:?}").contains("pw\""));
    }

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sidecar.toml");
        std::fs::write(
            &path,
            "upstream = \"a.proxy-x.us-east-1.rds.amazonaws.com:5432\"\n\
             connect-timeout = \"2s\"\nlisten = [\"127.0.0.1:6000\"]\n",
        )
        .expect("write");
        let a = RunArgs {
            config: Some(path.clone()),
            connect_timeout: Some("7s".into()),
            ..RunArgs::default()
        };
        let config = Config::from_args(a, &no_env).expect("valid");
        assert_eq!(config.connect_timeout, Duration::from_secs(7));
        assert_eq!(config.listen, vec!["127.0.0.1:6000".parse().expect("addr")]);

        std::fs::write(&path, "upstreem = \"x\"\n").expect("write");
        let a = RunArgs {
            config: Some(path),
            ..RunArgs::default()
        };
        let err = Config::from_args(a, &no_env).expect_err("unknown key");
        assert!(err.message.contains("upstreem"), "{err}");
    }
}

#[cfg(test)]
mod shipped_example {
    use super::*;

    /// `config/sidecar.toml` documents every key: it must load and validate.
    #[test]
    fn config_example_loads_into_the_real_struct() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sidecar.toml");
        let file = FileConfig::load(&path).expect("config/sidecar.toml parses");
        assert!(file.upstream.is_some());
        let args = RunArgs {
            config: Some(path),
            ..RunArgs::default()
        };
        Config::from_args(args, &|_| None).expect("config/sidecar.toml validates");
    }
}
