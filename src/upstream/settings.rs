//! What the upstream connector needs to know: the endpoint a token is signed for, where to
//! dial, how to check its certificate and how to log in. Built by [`crate::settings`] per
//! endpoint; the connector never sees the rest of the configuration.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::kind::{UpstreamKind, UpstreamKindSetting};
use super::tls::TlsMode;
use crate::iam::region::RegionSource;
use crate::secret::Secret;

const DEFAULT_PORT: u16 = 5432;

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

impl UpstreamAuth {
    pub fn is_iam(&self) -> bool {
        matches!(self, Self::Iam { .. })
    }

    /// The signing region, in IAM mode.
    pub fn region(&self) -> Option<&str> {
        match self {
            Self::Iam { region, .. } => Some(region),
            Self::Password(_) => None,
        }
    }
}

/// `--upstream-dead-after`'s default: a dead path ends within about a minute.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(60);
/// The shortest `--upstream-dead-after`: keepalive probes need seconds between them.
pub const MIN_DEAD_AFTER: Duration = Duration::from_secs(5);
/// The longest: the kernel takes keepalive timers up to 32,767 s, and a path dead for longer
/// than an hour is not a bound anyone wants.
pub const MAX_DEAD_AFTER: Duration = Duration::from_secs(3600);

/// One upstream endpoint's connection settings.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// The endpoint the token is signed for and the certificate must name.
    pub endpoint: Endpoint,
    /// Where to dial, when it differs from `endpoint` (tunnels, tests).
    pub upstream_addr: Option<Endpoint>,
    pub ca_file: Option<PathBuf>,
    pub tls_mode: TlsMode,
    pub auth: UpstreamAuth,
    /// Limit for TCP connect + TLS + login.
    pub connect_timeout: Duration,
    /// How long a silent path may last before the connection is given up (keepalive and
    /// TCP_USER_TIMEOUT).
    pub dead_after: Duration,
    /// What sits at the endpoint, and why the sidecar thinks so.
    pub kind: UpstreamKind,
    pub kind_reason: &'static str,
}

impl UpstreamSettings {
    /// Defaults (verify-full, 5 s) for everything but the endpoint and the login method.
    pub fn new(endpoint: Endpoint, auth: UpstreamAuth) -> Self {
        Self {
            upstream_addr: None,
            ca_file: None,
            tls_mode: TlsMode::VerifyFull,
            kind: UpstreamKind::resolve(UpstreamKindSetting::Auto, &endpoint.host).0,
            kind_reason: UpstreamKind::resolve(UpstreamKindSetting::Auto, &endpoint.host).1,
            endpoint,
            auth,
            connect_timeout: Duration::from_secs(5),
            dead_after: DEFAULT_DEAD_AFTER,
        }
    }

    /// The address the sidecar dials: `--upstream-addr`, else the endpoint.
    pub fn dial_endpoint(&self) -> &Endpoint {
        self.upstream_addr.as_ref().unwrap_or(&self.endpoint)
    }
}
