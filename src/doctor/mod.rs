//! `rds-iam-sidecar doctor`: walks the chain a login goes through (configuration, AWS
//! credentials, DNS, TCP, TLS, IAM login, a query), one check at a time, and says which step
//! failed, what it saw and how to fix it. The checks stop at the first failure; later ones are
//! reported as skipped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::iam::credentials::{CHAIN_SOURCES, CredentialCache, mask_access_key};
use crate::iam::region::RegionSource;
use crate::iam::token::sign_token;
use crate::stream::UpstreamStream;
use crate::upstream::error::{ConnectError, TlsFailure};
use crate::upstream::tls::TlsMode;
use crate::upstream::{Authenticator, Connector, ServerConnection, UpstreamAuth, UpstreamSettings};

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    Skipped,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub step: u8,
    pub name: &'static str,
    pub status: Status,
    /// What was seen (never a secret).
    pub detail: String,
    /// Things that work but deserve attention.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// For a failure: the likely causes, most likely first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<String>,
    /// For a failure: what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    /// The endpoint checked (HOST:PORT), unless the configuration could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub user: String,
    pub database: String,
    pub checks: Vec<Check>,
}

const NAMES: [&str; 7] = [
    "configuration",
    "AWS credentials",
    "DNS",
    "TCP connect",
    "TLS",
    "IAM login",
    "query",
];

/// Collects checks; after a failure the rest are skipped.
struct Checks {
    checks: Vec<Check>,
    upstream: Option<String>,
}

impl Checks {
    fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Failed)
    }

    fn next_step(&self) -> u8 {
        self.checks.len() as u8 + 1
    }

    fn push(&mut self, status: Status, detail: impl Into<String>) -> &mut Check {
        let step = self.next_step();
        self.checks.push(Check {
            step,
            name: NAMES[usize::from(step - 1)],
            status,
            detail: detail.into(),
            warnings: Vec::new(),
            causes: Vec::new(),
            fix: None,
        });
        let last = self.checks.len() - 1;
        &mut self.checks[last]
    }

    fn ok(&mut self, detail: impl Into<String>) -> &mut Check {
        self.push(Status::Ok, detail)
    }

    fn fail(
        &mut self,
        detail: impl Into<String>,
        causes: Vec<String>,
        fix: impl Into<String>,
    ) -> &mut Check {
        let check = self.push(Status::Failed, detail);
        check.causes = causes;
        check.fix = Some(fix.into());
        check
    }

    fn skip(&mut self, detail: impl Into<String>) {
        self.push(Status::Skipped, detail);
    }

    fn finish(mut self, user: String, database: String) -> Report {
        while self.checks.len() < NAMES.len() {
            self.skip("an earlier check failed");
        }
        Report {
            ok: !self.failed(),
            upstream: self.upstream,
            user,
            database,
            checks: self.checks,
        }
    }
}

/// Runs every check for `user@database` with `config` (or the configuration error).
pub async fn run(config: Result<UpstreamSettings, String>, user: &str, database: &str) -> Report {
    let mut checks = Checks {
        checks: Vec::new(),
        upstream: config.as_ref().ok().map(|c| c.endpoint.to_string()),
    };
    let (user, database) = (user.to_owned(), database.to_owned());
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            checks.fail(
                error,
                vec!["a flag, RDS_IAM_SIDECAR_* variable or --config key has a bad value".into()],
                "fix the setting named above (rds-iam-sidecar --help lists them all)",
            );
            return checks.finish(user, database);
        }
    };
    configuration(&mut checks, &config);

    let credentials = credentials(&mut checks, &config).await;
    if checks.failed() {
        return checks.finish(user, database);
    }
    let Some(addresses) = dns(&mut checks, &config).await else {
        return checks.finish(user, database);
    };
    if !tcp(&mut checks, &config, &addresses).await {
        return checks.finish(user, database);
    }
    let authenticator = match Authenticator::new(&config.auth, credentials.clone()) {
        Ok(authenticator) => authenticator,
        Err(error) => {
            checks.fail(error, Vec::new(), "check the TLS and auth settings");
            return checks.finish(user, database);
        }
    };
    let connector = match Connector::new(
        &config,
        authenticator,
        crate::ops::metrics::for_upstream(&config.endpoint.host),
    ) {
        Ok(connector) => connector,
        Err(error) => {
            checks.fail(error, Vec::new(), "check --tls-mode and --ca-file");
            return checks.finish(user, database);
        }
    };
    if !tls(&mut checks, &config, &connector).await {
        return checks.finish(user, database);
    }
    let Some(mut server) = login(
        &mut checks,
        &config,
        &connector,
        &credentials,
        &user,
        &database,
    )
    .await
    else {
        return checks.finish(user, database);
    };
    query(&mut checks, &mut server).await;
    checks.finish(user, database)
}

/// 1. The endpoint name and the region.
fn configuration(checks: &mut Checks, config: &UpstreamSettings) {
    let host = &config.endpoint.host;
    let kind = endpoint_kind(host);
    let region = match &config.auth {
        UpstreamAuth::Iam {
            region,
            region_source,
        } => format!(
            "; region {region} ({})",
            match region_source {
                RegionSource::Flag => "from --region",
                RegionSource::EndpointName => "from the endpoint name",
                RegionSource::Environment => "from AWS_REGION / AWS_DEFAULT_REGION",
            }
        ),
        UpstreamAuth::Password(_) => "; --auth password (no IAM)".to_owned(),
    };
    let dial = config
        .upstream_addr
        .as_ref()
        .map(|addr| format!(", dialled at {}", addr.dial_target()))
        .unwrap_or_default();
    let check = checks.ok(format!(
        "{} is {}{dial}{region}",
        config.endpoint.dial_target(),
        kind.describe()
    ));
    match kind {
        EndpointKind::Ip => check.warnings.push(
            "tokens are signed for the host name in --upstream, and RDS checks them against its \
             own endpoint name: put the RDS endpoint name in --upstream and this address in \
             --upstream-addr"
                .to_owned(),
        ),
        EndpointKind::Other => check.warnings.push(
            "not an RDS host name: if it is a CNAME or alias, tokens signed for it are rejected \
             and the certificate will not match; put the real RDS endpoint name in --upstream and \
             this name in --upstream-addr"
                .to_owned(),
        ),
        _ => {}
    }
    if let UpstreamAuth::Iam { region, .. } = &config.auth
        && let Some(named) = crate::iam::region::region_from_host(host)
        && named != *region
    {
        check.warnings.push(format!(
            "the endpoint is in {named} but tokens are signed for {region}: RDS rejects them; \
             drop --region / AWS_REGION or set it to {named}"
        ));
    }
    if matches!(kind, EndpointKind::Instance | EndpointKind::Cluster)
        && config.ca_file.is_none()
        && config.tls_mode != TlsMode::Disable
    {
        check.warnings.push(
            "direct instance and cluster endpoints present certificates of the RDS CA, which is \
             not among the default roots: pass --ca-file global-bundle.pem (RDS Proxy needs none)"
                .to_owned(),
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndpointKind {
    Proxy,
    Cluster,
    Instance,
    Ip,
    Other,
}

impl EndpointKind {
    fn describe(self) -> &'static str {
        match self {
            Self::Proxy => "an RDS Proxy endpoint",
            Self::Cluster => "an Aurora cluster endpoint",
            Self::Instance => "an RDS instance endpoint",
            Self::Ip => "an IP address",
            Self::Other => "not an RDS endpoint name",
        }
    }
}

fn endpoint_kind(host: &str) -> EndpointKind {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<std::net::IpAddr>().is_ok() {
        return EndpointKind::Ip;
    }
    if crate::iam::region::region_from_host(&host).is_none() {
        return EndpointKind::Other;
    }
    // name.proxy-xyz.REGION..., custom proxy endpoints name.endpoint.proxy-xyz.REGION...,
    // name.cluster-[ro-|custom-]xyz.REGION...
    let labels: Vec<&str> = host.split('.').collect();
    if labels.iter().skip(1).any(|l| l.starts_with("proxy-")) {
        EndpointKind::Proxy
    } else if labels.iter().skip(1).any(|l| l.starts_with("cluster-")) {
        EndpointKind::Cluster
    } else {
        EndpointKind::Instance
    }
}

/// 2. Which provider of the chain supplies credentials, and until when.
async fn credentials(
    checks: &mut Checks,
    config: &UpstreamSettings,
) -> Option<Arc<CredentialCache>> {
    let UpstreamAuth::Iam { region, .. } = &config.auth else {
        checks.skip("--auth password: no AWS credentials needed");
        return None;
    };
    let cache = match CredentialCache::from_default_chain(region).await {
        Ok(cache) => Arc::new(cache),
        Err(error) => {
            checks.fail(
                error.to_string(),
                vec![error.reason.clone()],
                "give the sidecar AWS credentials",
            );
            return None;
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), cache.get()).await {
        Ok(Ok(credentials)) => {
            let expiry = match credentials.expiry() {
                Some(at) => {
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    format!("expire in {} min", left.as_secs() / 60)
                }
                None => "do not expire".to_owned(),
            };
            let check = checks.ok(format!(
                "from {} (access key {}), {expiry}",
                provider_description(&provider_name(&credentials)),
                mask_access_key(credentials.access_key_id())
            ));
            if credentials
                .expiry()
                .is_some_and(|at| at < SystemTime::now() + Duration::from_secs(300))
            {
                check
                    .warnings
                    .push("they expire within 5 minutes and must be refreshed".to_owned());
            }
            Some(cache)
        }
        Ok(Err(error)) => {
            let said = crate::iam::credentials::each_source_said(region, Duration::from_secs(5))
                .await
                .into_iter()
                .map(|(source, answer)| format!("{source}: {answer}"))
                .collect::<Vec<_>>()
                .join("; ");
            checks.fail(
                format!(
                    "none found: {}. What each source said: {said}",
                    error.reason
                ),
                vec![
                    format!("every source of the chain was tried: {CHAIN_SOURCES}"),
                    "on ECS: the task definition has no taskRoleArn, or the container cannot reach \
                     the ECS agent (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI unset)"
                        .to_owned(),
                    "on a laptop: no AWS_PROFILE / expired SSO session (aws sso login)".to_owned(),
                ],
                "give the sidecar AWS credentials: an ECS task role, an instance profile, \
                 AWS_PROFILE, or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
            );
            None
        }
        Err(_) => {
            checks.fail(
                "the credential chain did not answer within 30 s",
                vec!["an IMDS or ECS endpoint that does not answer".to_owned()],
                "set AWS_EC2_METADATA_DISABLED=true off EC2, or check the ECS agent",
            );
            None
        }
    }
}

/// The name of the provider that supplied `credentials`. aws-credential-types keeps it private
/// and shows it only in `Debug` (which redacts the secret key and omits the session token).
fn provider_name(credentials: &aws_credential_types::Credentials) -> String {
    let debug = format!("{credentials:?}");
    debug
        .split_once("provider_name: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(name, _)| name.to_owned())
        .unwrap_or_else(|| "an unnamed provider".to_owned())
}

fn provider_description(name: &str) -> String {
    let known = match name {
        "EnvironmentVariable" => "environment variables (AWS_ACCESS_KEY_ID)",
        "ProfileFile" => "the AWS profile (~/.aws/config, credentials)",
        "WebIdentityToken" => "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)",
        "EcsContainer" => "the ECS task role",
        "Ec2InstanceMetadata" | "IMDSv2" => "the EC2 instance profile (IMDS)",
        "SSO" | "Sso" => "AWS SSO",
        _ => "",
    };
    if known.is_empty() {
        name.to_owned()
    } else {
        format!("{known} [{name}]")
    }
}

/// 3. The dialled name resolves, to which addresses.
async fn dns(checks: &mut Checks, config: &UpstreamSettings) -> Option<Vec<SocketAddr>> {
    let target = config.dial_endpoint().dial_target();
    let lookup = tokio::time::timeout(config.connect_timeout, tokio::net::lookup_host(&target));
    match lookup.await {
        Ok(Ok(addresses)) => {
            let addresses: Vec<SocketAddr> = addresses.collect();
            if addresses.is_empty() {
                checks.fail(
                    format!("{target} resolves to no address"),
                    vec!["the DNS record is empty".to_owned()],
                    "check --upstream / --upstream-addr",
                );
                return None;
            }
            let list = addresses
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let check = checks.ok(format!("{target} resolves to {list}"));
            if addresses
                .iter()
                .all(|a| is_private(a.ip()) && !a.ip().is_loopback())
            {
                check.warnings.push(
                    "private addresses only: reachable from inside the VPC (or through a tunnel \
                     with --upstream-addr)"
                        .to_owned(),
                );
            }
            Some(addresses)
        }
        Ok(Err(error)) => {
            checks.fail(
                format!("{target} does not resolve: {error}"),
                vec![
                    "a typo in the endpoint name".to_owned(),
                    "the VPC has DNS resolution / DNS hostnames turned off".to_owned(),
                    "this machine is outside the VPC and its DNS cannot see the name".to_owned(),
                ],
                "check --upstream; from outside the VPC use a tunnel and --upstream-addr",
            );
            None
        }
        Err(_) => {
            checks.fail(
                format!(
                    "resolving {target} took longer than {:?}",
                    config.connect_timeout
                ),
                vec!["the DNS server does not answer".to_owned()],
                "check this machine's DNS settings",
            );
            None
        }
    }
}

fn is_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// 4. A TCP connection to one of the addresses within the timeout.
async fn tcp(checks: &mut Checks, config: &UpstreamSettings, addresses: &[SocketAddr]) -> bool {
    let mut failures = Vec::new();
    let mut timed_out = false;
    for address in addresses {
        let started = std::time::Instant::now();
        match tokio::time::timeout(config.connect_timeout, TcpStream::connect(address)).await {
            Ok(Ok(_)) => {
                checks.ok(format!(
                    "connected to {address} in {:.1} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                ));
                return true;
            }
            Ok(Err(error)) => failures.push(format!("{address}: {error}")),
            Err(_) => {
                timed_out = true;
                failures.push(format!(
                    "{address}: no answer within {:?}",
                    config.connect_timeout
                ));
            }
        }
    }
    let (causes, fix) = if timed_out {
        (
            vec![
            "a security group does not let this machine in: the endpoint's security group needs \
             an inbound rule for the port from this task's security group"
                .to_owned(),
            "no route: subnets, route tables or network ACLs; RDS Proxy is reachable only from \
             inside its VPC"
                .to_owned(),
        ],
            "allow the port in the endpoint's security group from this task, or use a tunnel and \
         --upstream-addr from outside the VPC",
        )
    } else {
        (
            vec![
                "nothing listens on that port: a wrong port in --upstream / --upstream-addr \
                 (RDS Proxy: 5432), the endpoint is stopped or being replaced, or a tunnel is \
                 not running"
                    .to_owned(),
                "(a timeout instead would point at a security group)".to_owned(),
            ],
            "check the port and that the endpoint (or the tunnel) is up",
        )
    };
    checks.fail(failures.join("; "), causes, fix);
    false
}

/// 5. SSLRequest answered 'S', the handshake, the certificate under the configured roots.
async fn tls(checks: &mut Checks, config: &UpstreamSettings, connector: &Connector) -> bool {
    if config.tls_mode == TlsMode::Disable {
        checks.skip("--tls-mode disable");
        return true;
    }
    let seen = peek_certificate(config).await;
    match connector.probe().await {
        Ok(()) => {
            let detail = match &seen {
                Ok(cert) if config.tls_mode == TlsMode::Require => {
                    format!("TLS, certificate not checked (--tls-mode require): {cert}")
                }
                Ok(cert) => format!(
                    "TLS with the certificate checked ({:?}): {}",
                    config.tls_mode, cert
                ),
                Err(_) => format!("TLS ({:?})", config.tls_mode),
            };
            let check = checks.ok(detail);
            if config.tls_mode == TlsMode::Require {
                check.warnings.push(
                    "--tls-mode require does not check the certificate: prefer verify-full"
                        .to_owned(),
                );
            }
            true
        }
        Err(ConnectError::TlsRefused { target }) => {
            checks.fail(
                format!("{target} answered the SSLRequest with 'N': it does not offer TLS"),
                vec![
                    "--upstream is not an RDS endpoint (RDS and RDS Proxy always offer TLS)"
                        .to_owned(),
                    "a plain PostgreSQL or a TCP forwarder that strips TLS is in the way"
                        .to_owned(),
                ],
                "point --upstream (or --upstream-addr) at the RDS endpoint; a local PostgreSQL \
                 without TLS needs --auth password --tls-mode disable",
            );
            false
        }
        Err(ConnectError::Tls { kind, reason, .. }) => {
            let cert = seen.unwrap_or_else(|_| "certificate not readable".to_owned());
            let (causes, fix) = match kind {
                TlsFailure::UnknownIssuer => (
                    vec![format!(
                        "the certificate's issuer is not trusted here ({cert}): direct RDS \
                         instance and cluster endpoints use the RDS CA, which is not among the \
                         default roots"
                    )],
                    "download https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem \
                     and pass --ca-file global-bundle.pem",
                ),
                TlsFailure::NameMismatch => (
                    vec![format!(
                        "the certificate does not name {} ({cert}): --upstream is a CNAME, an IP \
                         address or a tunnel address",
                        config.endpoint.host
                    )],
                    "put the real RDS endpoint name in --upstream and the address to dial in \
                     --upstream-addr",
                ),
                TlsFailure::Expired => (
                    vec![format!(
                        "the certificate is outside its validity period ({cert}), or this \
                         machine's clock is wrong"
                    )],
                    "check the clock (timedatectl) and the endpoint's certificate",
                ),
                TlsFailure::Other => (
                    vec![format!("{reason} ({cert})")],
                    "check --tls-mode and --ca-file",
                ),
            };
            checks.fail(format!("the handshake failed: {reason}"), causes, fix);
            false
        }
        Err(error) => {
            checks.fail(
                error.to_string(),
                vec!["the endpoint stopped answering during the handshake".to_owned()],
                "retry; check the endpoint's health",
            );
            false
        }
    }
}

/// The server certificate's names and issuer, read over a handshake that checks nothing (no
/// token or password is ever sent over it).
async fn peek_certificate(config: &UpstreamSettings) -> Result<String, String> {
    let tls = crate::upstream::tls::client_config(TlsMode::Require, None)?
        .ok_or_else(|| "no TLS configuration".to_owned())?;
    let target = config.dial_endpoint().dial_target();
    let handshake = async {
        let mut tcp = TcpStream::connect(&target)
            .await
            .map_err(|e| e.to_string())?;
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        tcp.write_all(&request).await.map_err(|e| e.to_string())?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        if answer[0] != b'S' {
            return Err("no TLS".to_owned());
        }
        let name = rustls::pki_types::ServerName::try_from(config.endpoint.host.clone())
            .map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (_, connection) = stream.get_ref();
        let leaf = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or_else(|| "no certificate".to_owned())?;
        describe_certificate(leaf.as_ref())
    };
    tokio::time::timeout(config.connect_timeout, handshake)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// "certificate for a, b; issued by X".
fn describe_certificate(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => Some(format!("{ip:?}")),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
            .collect();
    }
    let issuer = cert
        .issuer()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .next()
        .map(str::to_owned)
        .unwrap_or_else(|| cert.issuer().to_string());
    let mut out = String::new();
    let _ = write!(
        out,
        "certificate for {}; issued by {issuer}",
        names.join(", ")
    );
    Ok(out)
}

/// 6. A token signed and a login with it.
async fn login(
    checks: &mut Checks,
    config: &UpstreamSettings,
    connector: &Connector,
    credentials: &Option<Arc<CredentialCache>>,
    user: &str,
    database: &str,
) -> Option<ServerConnection> {
    let token_note = match (&config.auth, credentials) {
        (UpstreamAuth::Iam { region, .. }, Some(cache)) => match cache.get().await {
            Ok(creds) => match sign_token(
                &creds,
                &config.endpoint.host,
                config.endpoint.port,
                user,
                region,
                SystemTime::now(),
            ) {
                Ok(token) => format!(
                    "token signed for {user}@{} ({} characters, valid 15 minutes)",
                    config.endpoint.dial_target(),
                    token.expose().len()
                ),
                Err(error) => {
                    checks.fail(
                        format!("signing a token failed: {error}"),
                        Vec::new(),
                        "check the credentials",
                    );
                    return None;
                }
            },
            Err(error) => {
                checks.fail(
                    error.to_string(),
                    Vec::new(),
                    "give the sidecar AWS credentials",
                );
                return None;
            }
        },
        _ => "password login".to_owned(),
    };
    let parameters = [("user", user), ("database", database)];
    match connector.connect(user, &parameters).await {
        Ok(server) => {
            checks.ok(format!("{token_note}; logged in as {user} to {database}"));
            Some(server)
        }
        Err(error) => {
            let (causes, fix) = login_causes(&error, config, user);
            checks.fail(format!("{token_note}; {error}"), causes, fix);
            None
        }
    }
}

/// The likely causes of a failed login, most likely first.
fn login_causes(
    error: &ConnectError,
    config: &UpstreamSettings,
    user: &str,
) -> (Vec<String>, String) {
    let host = &config.endpoint.host;
    let region = match &config.auth {
        UpstreamAuth::Iam { region, .. } => region.as_str(),
        UpstreamAuth::Password(_) => "REGION",
    };
    let kind = endpoint_kind(host);
    let resource = match kind {
        EndpointKind::Proxy => "prx-RESOURCEID",
        EndpointKind::Cluster => "cluster-RESOURCEID",
        _ => "db-RESOURCEID / cluster-RESOURCEID / prx-RESOURCEID",
    };
    let partition = if host.ends_with(".cn") {
        "aws-cn"
    } else {
        "aws"
    };
    let now = humantime_utc(SystemTime::now());
    match error {
        ConnectError::AuthRejected(server) => {
            let message = server.message.to_ascii_lowercase();
            if message.contains("throttl")
                || message.contains("rate exceeded")
                || message.contains("too many competing requests")
            {
                return (
                    vec![
                        "IAM authentication is being throttled (too many new connections per \
                          second for this account and region)"
                            .to_owned(),
                    ],
                    "lower --max-connect-rate, keep connections pooled (--min-idle, longer \
                     --idle-timeout), or request a quota increase"
                        .to_owned(),
                );
            }
            if matches!(config.auth, UpstreamAuth::Password(_)) {
                return (
                    vec!["the password is wrong".to_owned()],
                    "check --password-file / RDS_IAM_SIDECAR_PASSWORD".to_owned(),
                );
            }
            if message.contains("no credentials for the role") {
                return (
                    vec![format!(
                        "the proxy has no Secrets Manager secret for the user {user} (and \
                         end-to-end IAM is not enabled for it)"
                    )],
                    "add the user's secret to the proxy's authentication settings, or enable \
                     end-to-end IAM authentication on the proxy"
                        .to_owned(),
                );
            }
            // A PAM failure comes from a database whose user has rds_iam (otherwise it asks for
            // a password): the token itself was refused.
            let mut causes = vec![
                format!(
                    "the IAM policy of these credentials lacks rds-db:connect on \
                     arn:{partition}:rds-db:{region}:ACCOUNT:dbuser:{resource}/{user} (the \
                     resource id, not the name)"
                ),
                format!(
                    "the token was signed for {host}, but the server expected another host name: \
                     --upstream must be the endpoint's own name (not a CNAME, IP or tunnel \
                     address; use --upstream-addr for those)"
                ),
                format!(
                    "the database user lacks the rds_iam role: GRANT rds_iam TO \"{user}\" \
                     (direct endpoints, and proxies with end-to-end IAM)"
                ),
                "IAM authentication is not enabled on the cluster / proxy (RDS Proxy: IAMAuth \
                 REQUIRED), or the proxy has no Secrets Manager secret for this user"
                    .to_owned(),
                format!(
                    "this machine's clock is off (tokens are checked against AWS time; now here: \
                     {now})"
                ),
                "the access key was deactivated or the secret key is wrong".to_owned(),
            ];
            if message.contains("pam") {
                // The user has the role: that cause is out.
                causes.remove(2);
            }
            if matches!(kind, EndpointKind::Ip | EndpointKind::Other) {
                // check 1 already warned: a name that is not the endpoint's own.
                causes.swap(0, 1);
            }
            (
                causes,
                "fix the first cause that applies; `aws rds generate-db-auth-token` with the same \
                 credentials plus psql shows whether the problem is the sidecar or the grant"
                    .to_owned(),
            )
        }
        ConnectError::IamNotEnabled { .. } if kind == EndpointKind::Proxy => (
            vec![
                "the proxy does not require IAM authentication, so it asked for the user's \
                 password"
                    .to_owned(),
            ],
            "set the proxy's authentication to IAMAuth REQUIRED (for this user's secret)"
                .to_owned(),
        ),
        ConnectError::IamNotEnabled { .. } => (
            vec![
                format!("the database user lacks the rds_iam role: GRANT rds_iam TO \"{user}\""),
                "IAM database authentication is not enabled on the instance / cluster".to_owned(),
            ],
            "grant rds_iam and enable IAM database authentication; a plain PostgreSQL needs \
             --auth password"
                .to_owned(),
        ),
        ConnectError::Timeout { .. } => (
            vec![
                "the proxy accepted the connection but could not reach its database in time: \
                 the database's security group must admit the proxy, and its targets must be \
                 healthy (aws rds describe-db-proxy-targets)"
                    .to_owned(),
                "the proxy waits for a free database connection: MaxConnectionsPercent reached, \
                 or ConnectionBorrowTimeout"
                    .to_owned(),
                "the database is at max_connections or starting up".to_owned(),
            ],
            "check the proxy's target health; raise --connect-timeout if logins are just slow"
                .to_owned(),
        ),
        ConnectError::Server(server) if server.code == "3D000" => (
            vec![format!("the database does not exist: {}", server.message)],
            "pass the right --database (clients choose theirs with dbname)".to_owned(),
        ),
        other => (
            vec![other.to_string()],
            "see the message above; `rds-iam-sidecar run --log-level debug` shows each step"
                .to_owned(),
        ),
    }
}

/// A UTC time as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, proleptic Gregorian).
fn humantime_utc(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// 7. `select current_user, version()` and membership of rds_iam.
async fn query(checks: &mut Checks, server: &mut ServerConnection) {
    let sql = "select current_user, version(), case when exists (select 1 from pg_roles where \
               rolname = 'rds_iam') then pg_has_role(current_user, 'rds_iam', 'member')::text \
               else 'no rds_iam role' end";
    match tokio::time::timeout(
        Duration::from_secs(10),
        simple_query(&mut server.stream, sql),
    )
    .await
    {
        Ok(Ok(row)) if row.len() == 3 => {
            let member = match row[2].as_str() {
                "true" => "member of rds_iam",
                "false" => "not a member of rds_iam (fine through RDS Proxy with a secret)",
                _ => "no rds_iam role on this server (not RDS)",
            };
            checks.ok(format!("current_user {}, {member}; {}", row[0], row[1]));
        }
        Ok(Ok(row)) => {
            checks.fail(
                format!("unexpected answer with {} columns", row.len()),
                Vec::new(),
                "report this",
            );
        }
        Ok(Err(error)) => {
            checks.fail(
                format!("the query failed: {error}"),
                vec!["the user may lack privileges to read pg_roles".to_owned()],
                "logins work; check the user's privileges",
            );
        }
        Err(_) => {
            checks.fail(
                "no answer to a query within 10 s",
                vec!["the server or proxy is overloaded".to_owned()],
                "retry; check the database's health",
            );
        }
    }
}

/// Runs one simple query and returns the first row's columns as text.
async fn simple_query(stream: &mut UpstreamStream, sql: &str) -> Result<Vec<String>, String> {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out).map_err(|e| e.to_string())?;
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut buffer = BytesMut::with_capacity(4096);
    let mut row = None;
    let mut error = None;
    loop {
        let message = loop {
            match Message::parse(&mut buffer).map_err(|e| e.to_string())? {
                Some(message) => break message,
                None => {
                    if stream
                        .read_buf(&mut buffer)
                        .await
                        .map_err(|e| e.to_string())?
                        == 0
                    {
                        return Err("the server closed the connection".to_owned());
                    }
                }
            }
        };
        match message {
            Message::DataRow(data) if row.is_none() => {
                let mut values = Vec::new();
                let buf = data.buffer();
                let mut ranges = data.ranges();
                while let Ok(Some(range)) = fallible_iterator::FallibleIterator::next(&mut ranges) {
                    values.push(
                        range
                            .map(|r| String::from_utf8_lossy(&buf[r]).into_owned())
                            .unwrap_or_else(|| "NULL".to_owned()),
                    );
                }
                row = Some(values);
            }
            Message::ErrorResponse(body) => {
                let mut fields = body.fields();
                let mut text = String::new();
                while let Ok(Some(field)) = fallible_iterator::FallibleIterator::next(&mut fields) {
                    if field.type_() == b'M' {
                        text = String::from_utf8_lossy(field.value_bytes()).into_owned();
                    }
                }
                error = Some(text);
            }
            Message::ReadyForQuery(_) => break,
            _ => {}
        }
    }
    let _ = buffer.remaining();
    match (error, row) {
        (Some(error), _) => Err(error),
        (None, Some(row)) => Ok(row),
        (None, None) => Err("no row".to_owned()),
    }
}

impl Report {
    /// The reports of every endpoint checked: each as [`Report::to_text`], headed by its
    /// endpoint when there are several.
    pub fn all_to_text(reports: &[Report]) -> String {
        if let [report] = reports {
            return report.to_text();
        }
        let mut out = String::new();
        for report in reports {
            let upstream = report.upstream.as_deref().unwrap_or("?");
            let _ = writeln!(out, "upstream {upstream}:");
            out.push_str(&report.to_text());
        }
        out
    }

    /// One report as its JSON object; several as `{"ok", "endpoints": [report, ...]}`.
    pub fn all_to_json(reports: &[Report]) -> Result<String, serde_json::Error> {
        if let [report] = reports {
            return serde_json::to_string_pretty(report);
        }
        let ok = reports.iter().all(|r| r.ok);
        serde_json::to_string_pretty(&serde_json::json!({ "ok": ok, "endpoints": reports }))
    }

    /// The text report: one line per check, causes and fix under the failure.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let status = match check.status {
                Status::Ok => "ok",
                Status::Failed => "FAILED",
                Status::Skipped => "skipped",
            };
            let _ = writeln!(
                out,
                "{:<8} {}. {}: {}",
                status, check.step, check.name, check.detail
            );
            for warning in &check.warnings {
                let _ = writeln!(out, "         warning: {warning}");
            }
            if !check.causes.is_empty() {
                let _ = writeln!(out, "         likely causes:");
                for cause in &check.causes {
                    let _ = writeln!(out, "           - {cause}");
                }
            }
            if let Some(fix) = &check.fix {
                let _ = writeln!(out, "         fix: {fix}");
            }
        }
        let _ = writeln!(
            out,
            "{}",
            if self.ok {
                format!("all checks passed for {}@{}", self.user, self.database)
            } else {
                "a check failed (see above)".to_owned()
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_kinds() {
        assert_eq!(
            endpoint_kind("app.proxy-abc123.us-east-1.rds.amazonaws.com"),
            EndpointKind::Proxy
        );
        assert_eq!(
            endpoint_kind("app.cluster-ro-abc123.eu-west-1.rds.amazonaws.com"),
            EndpointKind::Cluster
        );
        assert_eq!(
            endpoint_kind("app.abc123.eu-west-1.rds.amazonaws.com"),
            EndpointKind::Instance
        );
        assert_eq!(
            endpoint_kind("reader.endpoint.proxy-abc123.us-east-1.rds.amazonaws.com"),
            EndpointKind::Proxy
        );
        assert_eq!(endpoint_kind("10.0.0.5"), EndpointKind::Ip);
        assert_eq!(endpoint_kind("db.example.com"), EndpointKind::Other);
    }

    #[test]
    fn utc_times() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_398_245);
        assert_eq!(humantime_utc(at), "2026-11-23 01:44:05 UTC");
        assert_eq!(
            humantime_utc(SystemTime::UNIX_EPOCH),
            "1970-01-01 00:00:00 UTC"
        );
    }
}
