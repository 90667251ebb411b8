//! Why an upstream connection failed, and how each failure is told to the client: SQLSTATE,
//! a message naming what was dialled, and a hint that says what to fix.

use std::time::Duration;

use crate::error::{PgError, Severity, sqlstate};
use crate::iam::credentials::CredentialsUnavailable;

/// An upstream connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {target}: {source}")]
    Resolve {
        target: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("timed out after {after:?} while {stage} {target}")]
    Timeout {
        stage: &'static str,
        target: String,
        after: Duration,
    },
    #[error("{target} does not offer TLS (it answered the SSLRequest with 'N')")]
    TlsRefused { target: String },
    #[error("TLS handshake with {target} for name '{name}' failed: {reason}")]
    Tls {
        target: String,
        name: String,
        reason: String,
        kind: TlsFailure,
    },
    #[error(transparent)]
    Credentials(#[from] CredentialsUnavailable),
    #[error("{0}")]
    Sign(String),
    /// The server's ErrorResponse to the login (28000 / 28P01).
    #[error("upstream rejected the login: {}", .0.message)]
    AuthRejected(PgError),
    /// Logins are throttled: RDS Proxy's "The IAM authentication failed because of too many
    /// competing requests", or AWS throttling the credentials fetch. Not a credentials
    /// problem: the pool backs off and tries again within the client's wait
    /// ([`crate::pool`]); this is what is left when the wait runs out first.
    #[error(
        "{by} throttled the login ({attempts} {attempt_word} in {waited:.1?}): {message}",
        attempt_word = if *attempts == 1 { "attempt" } else { "attempts" }
    )]
    Throttled {
        by: ThrottledBy,
        message: String,
        attempts: u32,
        waited: Duration,
    },
    /// Any other ErrorResponse during login (a missing database, too many connections, ...).
    #[error("upstream refused the connection: {}", .0.message)]
    Server(PgError),
    #[error(
        "the upstream asked for {method} password authentication instead of the cleartext \
         password an IAM token is sent as: IAM authentication is not in effect for this user"
    )]
    IamNotEnabled { method: &'static str },
    #[error("upstream asked for an authentication method the sidecar does not support ({0})")]
    UnsupportedAuth(String),
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error("upstream connection lost during login: {0}")]
    Io(#[from] std::io::Error),
}

/// Who throttled a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottledBy {
    /// The endpoint (RDS Proxy's IAM authentication).
    Upstream,
    /// The AWS credentials source (STS, the ECS agent, IMDS).
    Credentials,
}

impl std::fmt::Display for ThrottledBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Upstream => "the upstream",
            Self::Credentials => "the AWS credentials source",
        })
    }
}

/// Whether a server's or AWS's message says "throttled": RDS Proxy's "too many competing
/// requests", STS's "Throttling: Rate exceeded", the SDK's "TooManyRequests".
pub fn says_throttled(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "too many competing requests",
        "throttl",
        "rate exceeded",
        "toomanyrequests",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// The stage of a [`ConnectError::Timeout`] spent waiting for AWS credentials.
pub const CREDENTIALS_STAGE: &str = "fetching AWS credentials for";

/// The kind of TLS failure, for the hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    NameMismatch,
    UnknownIssuer,
    Expired,
    /// The connection was reset or closed during the handshake: nothing about certificates.
    Cut,
    Other,
}

/// What the hints name: the endpoint, the user, the region.
#[derive(Debug, Clone)]
pub struct HintContext<'a> {
    pub endpoint: &'a str,
    pub user: &'a str,
    pub region: Option<&'a str>,
    pub iam: bool,
}

impl ConnectError {
    /// The server's ErrorResponse to a login: throttled (by its text), rejected (28000 /
    /// 28P01), or refused for another reason.
    pub fn refused_login(error: PgError) -> Self {
        if says_throttled(&error.message) {
            Self::Throttled {
                by: ThrottledBy::Upstream,
                message: error.message,
                attempts: 1,
                waited: Duration::ZERO,
            }
        } else if error.is_auth_failure() {
            Self::AuthRejected(error)
        } else {
            Self::Server(error)
        }
    }

    /// The `result` label of the upstream logins metric for this failure.
    pub fn metric_label(&self) -> &'static str {
        if self.throttled_by().is_some() {
            return "throttled";
        }
        match self {
            Self::AuthRejected(_) | Self::IamNotEnabled { .. } => "auth_rejected",
            Self::Timeout { .. } => "timeout",
            Self::Resolve { .. } | Self::Connect { .. } => "network",
            Self::TlsRefused { .. } | Self::Tls { .. } => "tls",
            Self::Credentials(_) | Self::Sign(_) => "credentials",
            Self::Server(_) => "server_error",
            _ => "other",
        }
    }

    /// This login attempt was throttled, by the upstream or by the credentials source: worth
    /// retrying after a backoff, never with freshly fetched credentials.
    pub fn throttled_by(&self) -> Option<ThrottledBy> {
        match self {
            Self::Throttled { by, .. } => Some(*by),
            Self::Credentials(error) if says_throttled(&error.reason) => {
                Some(ThrottledBy::Credentials)
            }
            _ => None,
        }
    }

    /// What a throttled attempt comes to once the client's wait has run out: `attempts` made
    /// over `waited`, the last answer's message kept.
    pub fn into_throttled(self, attempts: u32, waited: Duration) -> Self {
        let by = self.throttled_by();
        match (self, by) {
            (Self::Throttled { by, message, .. }, _) => Self::Throttled {
                by,
                message,
                attempts,
                waited,
            },
            (Self::Credentials(error), Some(by)) => Self::Throttled {
                by,
                message: error.reason,
                attempts,
                waited,
            },
            (other, _) => other,
        }
    }

    /// The way to the upstream is broken (DNS, network, TLS, credentials, signing), as opposed
    /// to this one login being refused (user, database, password).
    pub fn is_path_failure(&self) -> bool {
        // Throttling says nothing about the path (and must not fail readiness, which would
        // invite restarts and more logins).
        self.throttled_by().is_none()
            && matches!(
                self,
                Self::Resolve { .. }
                    | Self::Connect { .. }
                    | Self::Timeout { .. }
                    | Self::TlsRefused { .. }
                    | Self::Tls { .. }
                    | Self::Credentials(_)
                    | Self::Sign(_)
            )
    }

    /// The ErrorResponse a client gets for this failure.
    pub fn to_pg_error(&self, ctx: &HintContext<'_>) -> PgError {
        let prefix = "rds-iam-sidecar";
        match self {
            Self::Resolve { .. } => PgError::fatal(sqlstate::CONNECTION_FAILURE, format!("{prefix}: {self}"))
                .with_hint("check the --upstream host name (or --upstream-addr) and the DNS of this network (VPC DNS resolution for RDS endpoints)"),
            Self::Connect { .. } | Self::Timeout { stage: "connecting to", .. } => PgError::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("{prefix}: {self}"),
            )
            .with_hint("is the endpoint up, and do its security group and subnet routes allow this task to reach the port? RDS Proxy listens on 5432"),
            Self::Timeout { stage: CREDENTIALS_STAGE, .. } => PgError::fatal(sqlstate::CONNECTION_FAILURE, format!("{prefix}: {self}"))
                .with_hint("the AWS credentials source did not answer in time (nothing was sent to the endpoint): check the ECS agent (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI), the instance metadata service, or STS for web identity; `rds-iam-sidecar doctor` asks each source"),
            Self::Timeout { .. } => PgError::fatal(sqlstate::CONNECTION_FAILURE, format!("{prefix}: {self}"))
                .with_hint("the upstream accepted TCP but did not answer in time; raise --connect-timeout or check the proxy's health"),
            Self::TlsRefused { .. } => PgError::fatal(sqlstate::CONNECTION_FAILURE, format!("{prefix}: {self}"))
                .with_hint("RDS and RDS Proxy always offer TLS: check that --upstream names an RDS endpoint; a plain local Postgres needs --auth password --tls-mode disable"),
            Self::Tls { kind, name, .. } => {
                PgError::fatal(sqlstate::CONNECTION_FAILURE, format!("{prefix}: {self}"))
                    .with_hint(tls_hint(*kind, name))
            }
            Self::Credentials(_) => PgError::fatal(sqlstate::CONNECTION_FAILURE, format!("{prefix}: {self}"))
                .with_hint("give the sidecar AWS credentials: an ECS task role, an instance profile, AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
            Self::IamNotEnabled { .. } => PgError::fatal(sqlstate::INVALID_AUTHORIZATION, format!("{prefix}: {self}"))
                .with_hint(format!(
                    "grant the role: GRANT rds_iam TO \"{user}\"; and enable IAM database authentication on the instance/cluster (for RDS Proxy: IAMAuth REQUIRED). For a plain PostgreSQL use --auth password",
                    user = ctx.user
                )),
            Self::Sign(_) | Self::UnsupportedAuth(_) | Self::Protocol(_) | Self::Io(_) => {
                PgError::fatal(sqlstate::CONNECTION_FAILURE, format!("{prefix}: {self}"))
            }
            Self::AuthRejected(server) => {
                let mut error = PgError {
                    severity: Severity::Fatal,
                    hint: None,
                    ..server.clone()
                };
                error.hint = Some(auth_rejected_hint(ctx));
                error
            }
            Self::Throttled { by, .. } => PgError::fatal(
                sqlstate::CONNECTION_REJECTED,
                format!("{prefix}: {self}"),
            )
            .with_hint(throttled_hint(*by)),
            Self::Server(server) => PgError {
                severity: Severity::Fatal,
                ..server.clone()
            },
        }
    }
}

/// What to change when logins stay throttled for longer than a client waits.
pub fn throttled_hint(by: ThrottledBy) -> String {
    match by {
        ThrottledBy::Upstream => "too many new IAM connections per second reach this database \
            from all its clients (AWS asks for under ~200/s); this is not a credentials or \
            permissions problem, and the sidecar already backs off and slows its own logins. \
            Spread what the fleet does together: --warm-up-spread, a lower --max-connect-rate on \
            every task, pooled connections kept longer (--min-idle, --idle-timeout), deploys in \
            smaller batches; --pool-timeout lets clients wait longer"
            .to_owned(),
        ThrottledBy::Credentials => "AWS throttled the credentials requests of this task; \
            the sidecar caches credentials and backs off, so this is the account's STS or \
            metadata request rate: spread task starts, or raise --pool-timeout to wait longer"
            .to_owned(),
    }
}

/// What to check when TLS to the upstream fails.
fn tls_hint(kind: TlsFailure, name: &str) -> String {
    match kind {
        TlsFailure::NameMismatch => format!(
            "the certificate does not name '{name}': put the real RDS endpoint name in \
             --upstream and, for tunnels and IP addresses, the address to dial in --upstream-addr"
        ),
        TlsFailure::UnknownIssuer => "the certificate is not signed by a trusted CA: for RDS \
            instance/cluster endpoints pass the RDS bundle with --ca-file global-bundle.pem (RDS \
            Proxy certificates chain to Amazon Trust Services, trusted by default)"
            .to_owned(),
        TlsFailure::Expired => {
            "the upstream certificate is expired or not yet valid; check this machine's clock"
                .to_owned()
        }
        TlsFailure::Cut => CUT_HINT.to_owned(),
        TlsFailure::Other => "check --tls-mode and --ca-file".to_owned(),
    }
}

/// What to check when the path, not TLS, ended a handshake.
pub const CUT_HINT: &str = "the connection was reset or closed during the TLS handshake, before     any certificate was judged: check that the endpoint and port are a PostgreSQL or RDS Proxy     endpoint that accepts TLS, and that nothing on the path (a security group or network ACL, a     proxy restarting, a load balancer) cuts the connection";

/// What to check when the upstream rejects a login.
fn auth_rejected_hint(ctx: &HintContext<'_>) -> String {
    if ctx.iam {
        format!(
            "IAM login as '{user}' was rejected by {endpoint}. Check: (1) the sidecar's IAM role allows rds-db:connect on arn:aws:rds-db:{region}:ACCOUNT:dbuser:prx-RESOURCEID/{user} (cluster-RESOURCEID or db-RESOURCEID for direct endpoints); (2) the database user has the role (GRANT rds_iam TO \"{user}\") for direct endpoints and proxies with end-to-end IAM, or the proxy has a Secrets Manager secret for it; (3) --upstream is the endpoint actually dialled (tokens are signed for that host name, not a CNAME or IP); (4) IAM authentication is enabled (RDS Proxy: IAMAuth REQUIRED); (5) this machine's clock is right",
            user = ctx.user,
            endpoint = ctx.endpoint,
            region = ctx.region.unwrap_or("REGION"),
        )
    } else {
        format!(
            "password login as '{}' was rejected by {}: check --password-file / RDS_IAM_SIDECAR_PASSWORD",
            ctx.user, ctx.endpoint
        )
    }
}

/// Classifies a TLS error for the hint.
pub fn classify_tls(error: &std::io::Error) -> TlsFailure {
    use rustls::CertificateError as C;
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsFailure::NameMismatch,
            C::UnknownIssuer => TlsFailure::UnknownIssuer,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => TlsFailure::Expired,
            _ => TlsFailure::Other,
        },
        Some(_) => TlsFailure::Other,
        None if matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::BrokenPipe
        ) =>
        {
            TlsFailure::Cut
        }
        None => TlsFailure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_cut_by_the_path_does_not_blame_the_certificates() {
        for kind in [
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            assert_eq!(classify_tls(&std::io::Error::from(kind)), TlsFailure::Cut);
        }
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(classify_tls(&timed_out), TlsFailure::Other);
        let hint = tls_hint(TlsFailure::Cut, "db.example");
        assert!(hint.contains("reset or closed"), "{hint}");
        assert!(!hint.contains("--ca-file"), "{hint}");
    }

    #[test]
    fn a_credentials_timeout_does_not_blame_the_proxy() {
        let ctx = HintContext {
            endpoint: "db.proxy-x.us-east-1.rds.amazonaws.com",
            user: "app",
            region: Some("us-east-1"),
            iam: true,
        };
        let timeout = |stage| ConnectError::Timeout {
            stage,
            target: "db.proxy-x.us-east-1.rds.amazonaws.com:5432".to_owned(),
            after: Duration::from_secs(5),
        };
        let credentials = timeout(CREDENTIALS_STAGE).to_pg_error(&ctx);
        let hint = credentials.hint.unwrap_or_default();
        assert!(hint.contains("credentials source"), "{hint}");
        assert!(!hint.contains("proxy's health"), "{hint}");
        let login = timeout("logging in to").to_pg_error(&ctx);
        assert!(login.hint.unwrap_or_default().contains("proxy's health"));
    }
}
