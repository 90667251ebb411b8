//! Connections to the upstream (RDS Proxy / RDS / Aurora, or a plain Postgres in password
//! mode): TCP connect with a deadline, SSLRequest answered by exactly one byte read from the raw
//! socket, rustls with SNI and the configured verification, then the login ([`login`]).
//! [`Connector`] holds everything needed to open one, so a pool can call it at will.

mod authenticator;
mod close;
mod dead_path;
pub mod error;
pub mod kind;
pub mod login;
pub mod settings;
pub mod startup;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::iam::credentials::CredentialCache;
use crate::ops::metrics::UpstreamMetrics;
use crate::stream::UpstreamStream;
pub use authenticator::Authenticator;
use authenticator::LoginPassword;
use error::{ConnectError, HintContext, classify_tls};
use kind::UpstreamKind;
use login::LoginOutcome;
pub use settings::{
    DEFAULT_DEAD_AFTER, Endpoint, MAX_DEAD_AFTER, MIN_DEAD_AFTER, UpstreamAuth, UpstreamSettings,
};

/// A logged-in upstream connection.
#[derive(Debug)]
pub struct ServerConnection {
    pub stream: UpstreamStream,
    /// ParameterStatus values from login, in order (shared with the pool's other
    /// connections while equal).
    pub parameters: std::sync::Arc<Vec<(String, String)>>,
    /// The server's cancel key (pid, secret).
    pub backend_key: Option<(i32, i32)>,
    /// Bytes already read past ReadyForQuery, to hand to the client first.
    pub pending: BytesMut,
    /// Server-side names of the prepared statements this connection holds (transaction mode).
    pub prepared: std::sync::Mutex<crate::forward::prepared::ServerStatements>,
    /// Startup parameters were applied after login (RDS Proxy refuses them in the startup
    /// packet): a reset query would undo them, so a connection with session state is closed.
    pub settings_after_login: bool,
}

/// Opens upstream connections.
pub struct Connector {
    upstream: Endpoint,
    dial: Endpoint,
    tls: Option<Arc<ClientConfig>>,
    server_name: ServerName<'static>,
    timeout: Duration,
    dead_after: Duration,
    kind: UpstreamKind,
    auth: Authenticator,
    history: std::sync::Mutex<LoginHistory>,
    metrics: &'static UpstreamMetrics,
}

/// When upstream logins last succeeded and last failed for a reason that is not the client's
/// (for readiness).
#[derive(Debug, Clone, Default)]
pub struct LoginHistory {
    pub last_ok: Option<Instant>,
    /// When, and the error (no secrets: ConnectError never holds one). Only failures of the
    /// path to the upstream count (network, TLS, credentials), not a rejected user or a
    /// missing database, which say nothing about other clients.
    pub last_failure: Option<(Instant, String)>,
}

impl Connector {
    pub fn new(
        settings: &UpstreamSettings,
        auth: Authenticator,
        metrics: &'static UpstreamMetrics,
    ) -> Result<Self, String> {
        let tls = tls::client_config(settings.tls_mode, settings.ca_file.as_deref())?;
        if tls.is_none() && matches!(auth, Authenticator::Iam { .. }) {
            return Err(
                "IAM tokens are never sent without TLS: --tls-mode disable is only \
                        for --auth password"
                    .to_owned(),
            );
        }
        let host = &settings.endpoint.host;
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| format!("'{host}' is not a valid TLS server name: {e}"))?;
        Ok(Self {
            upstream: settings.endpoint.clone(),
            dial: settings.dial_endpoint().clone(),
            tls,
            server_name,
            timeout: settings.connect_timeout,
            dead_after: settings.dead_after,
            kind: settings.kind,
            auth,
            history: Default::default(),
            metrics,
        })
    }

    /// The latest login outcomes.
    pub fn login_history(&self) -> LoginHistory {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The AWS credentials cache, in IAM mode.
    pub fn credentials(&self) -> Option<&Arc<CredentialCache>> {
        match &self.auth {
            Authenticator::Iam { credentials, .. } => Some(credentials),
            Authenticator::Password(_) => None,
        }
    }

    /// DNS, TCP and TLS (certificate checked) to the upstream, without logging in.
    pub async fn probe(&self) -> Result<(), ConnectError> {
        let mut stream = self.open_transport(Instant::now() + self.timeout).await?;
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        Ok(())
    }

    /// What sits at the endpoint.
    pub fn kind(&self) -> UpstreamKind {
        self.kind
    }

    pub fn upstream(&self) -> &Endpoint {
        &self.upstream
    }

    /// This endpoint's metric handles.
    pub fn metrics(&self) -> &'static UpstreamMetrics {
        self.metrics
    }

    /// What hints in error messages name.
    pub fn hint_context<'a>(&'a self, user: &'a str) -> HintContext<'a> {
        HintContext {
            endpoint: &self.upstream.host,
            user,
            region: match &self.auth {
                Authenticator::Iam { region, .. } => Some(region),
                Authenticator::Password(_) => None,
            },
            iam: matches!(self.auth, Authenticator::Iam { .. }),
        }
    }

    /// Opens, secures and logs in one connection as `user` with the given startup parameters
    /// (which must include `user`), each attempt within the connect timeout. An IAM login the
    /// server rejects is tried once more with freshly fetched credentials: keys rotate, and a
    /// cached key may have been revoked before it expired.
    pub async fn connect(
        &self,
        user: &str,
        parameters: &[(&str, &str)],
    ) -> Result<ServerConnection, ConnectError> {
        let started = Instant::now();
        let result = self.connect_with_retry(user, parameters).await;
        let label = result
            .as_ref()
            .map_or_else(ConnectError::metric_label, |_| "ok");
        self.metrics.upstream_login(label, started.elapsed());
        {
            let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
            match &result {
                Ok(_) => history.last_ok = Some(Instant::now()),
                Err(error) if error.is_path_failure() => {
                    history.last_failure = Some((Instant::now(), error.to_string()));
                }
                Err(_) => {}
            }
        }
        result
    }

    async fn connect_with_retry(
        &self,
        user: &str,
        parameters: &[(&str, &str)],
    ) -> Result<ServerConnection, ConnectError> {
        let Authenticator::Iam { credentials, .. } = &self.auth else {
            return self.connect_once(user, parameters, &mut None).await;
        };
        let mut used = None;
        let rejected = match self.connect_once(user, parameters, &mut used).await {
            Err(ConnectError::AuthRejected(error)) => error,
            other => return other,
        };
        let Some(used) = used else {
            return Err(ConnectError::AuthRejected(rejected));
        };
        // Once more only with another key: a rejection for another reason (no rds_iam grant,
        // no secret for the user at the proxy) would be rejected again.
        let refreshed =
            tokio::time::timeout(self.timeout, credentials.refresh_after_rejection(&used)).await;
        if !matches!(refreshed, Ok(Ok(true))) {
            tracing::warn!(%user, message = %rejected.message, "IAM login rejected; the credentials fetched again hold the same key, so not retried");
            return Err(ConnectError::AuthRejected(rejected));
        }
        tracing::warn!(
            %user,
            message = %rejected.message,
            "IAM login rejected; retrying once with freshly fetched credentials"
        );
        self.connect_once(user, parameters, &mut None).await
    }

    /// One login; `used` gets the AWS credentials its token was signed with.
    async fn connect_once(
        &self,
        user: &str,
        parameters: &[(&str, &str)],
        used: &mut Option<Credentials>,
    ) -> Result<ServerConnection, ConnectError> {
        let deadline = Instant::now() + self.timeout;
        // Credentials first: without them there is no point in dialling.
        let credentials = match &self.auth {
            Authenticator::Iam { credentials, .. } => {
                let fetch = credentials.get();
                Some(
                    timeout_at(deadline, fetch)
                        .await
                        .map_err(|_| self.timeout_error(error::CREDENTIALS_STAGE))??,
                )
            }
            Authenticator::Password(_) => None,
        };
        used.clone_from(&credentials);
        let plan = startup::plan(self.kind, parameters).map_err(ConnectError::Server)?;
        let mut stream = self.open_transport(deadline).await?;
        let password = LoginPassword {
            connector: self,
            credentials,
            user,
        };
        let login = async {
            let mut outcome = login::login(&mut stream, &plan.packet, user, &password).await?;
            if !plan.settings.is_empty() {
                if !outcome.pending.is_empty() {
                    return Err(ConnectError::Protocol(
                        "the server spoke before the startup settings were applied".to_owned(),
                    ));
                }
                outcome.pending =
                    startup::apply(&mut stream, &plan.settings, &mut outcome.parameters).await?;
            }
            Ok::<LoginOutcome, ConnectError>(outcome)
        };
        let outcome = timeout_at(deadline, login)
            .await
            .map_err(|_| self.timeout_error("logging in to"))??;
        Ok(ServerConnection {
            stream,
            parameters: std::sync::Arc::new(outcome.parameters),
            backend_key: outcome.backend_key,
            pending: outcome.pending,
            prepared: Default::default(),
            settings_after_login: !plan.settings.is_empty(),
        })
    }

    /// Sends a CancelRequest for the server key over a new connection (TLS if configured),
    /// once that connection is open and `claim` says it is still wanted (its guard marks the
    /// cancel in flight). `Some(guard)` when the server got it: it closed the connection, which
    /// it does after signalling its backend; `None` when it was not wanted. An error drops the
    /// guard: whether the server got the request is then unknown.
    pub async fn cancel<G>(
        &self,
        pid: i32,
        secret: i32,
        claim: impl FnOnce() -> Option<G>,
    ) -> Result<Option<G>, ConnectError> {
        let deadline = Instant::now() + self.timeout;
        let mut stream = self.open_transport(deadline).await?;
        let Some(in_flight) = claim() else {
            return Ok(None);
        };
        let mut out = BytesMut::new();
        frontend::cancel_request(pid, secret, &mut out);
        let send = async {
            stream.write_all(&out).await?;
            stream.flush().await?;
            // The server closes the connection once it has read the request, with or without
            // TLS close_notify (an unexpected EOF or a reset here is that close, not a failure).
            let mut sink = [0u8; 64];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            Ok::<_, std::io::Error>(())
        };
        timeout_at(deadline, send)
            .await
            .map_err(|_| self.timeout_error("sending a cancel request to"))??;
        Ok(Some(in_flight))
    }

    fn timeout_error(&self, stage: &'static str) -> ConnectError {
        ConnectError::Timeout {
            stage,
            target: self.dial.to_string(),
            after: self.timeout,
        }
    }

    /// TCP connect, SSLRequest, TLS handshake.
    async fn open_transport(&self, deadline: Instant) -> Result<UpstreamStream, ConnectError> {
        let target = self.dial.to_string();
        let tcp = timeout_at(deadline, connect_tcp(&self.dial, deadline, self.dead_after))
            .await
            .map_err(|_| self.timeout_error("connecting to"))??;
        let Some(tls) = &self.tls else {
            let socket = crate::uring::Socket::new(tcp).map_err(ConnectError::Io)?;
            return Ok(UpstreamStream::Plain(Box::new(socket)));
        };
        let negotiate = tls::start_tls(tcp, tls.clone(), self.server_name.clone());
        let tls_stream = timeout_at(deadline, negotiate)
            .await
            .map_err(|_| self.timeout_error("negotiating TLS with"))?
            .map_err(|error| match error {
                tls::StartTlsError::Refused => ConnectError::TlsRefused { target },
                tls::StartTlsError::Io(error) => ConnectError::Io(error),
                tls::StartTlsError::Handshake(e) => ConnectError::Tls {
                    name: self.upstream.host.clone(),
                    kind: classify_tls(&e),
                    reason: e.to_string(),
                    target,
                },
            })?;
        Ok(UpstreamStream::Tls(Box::new(tls_stream)))
    }
}

/// Resolves the dial endpoint and connects to the first address that answers, giving each
/// address a fair share of the time left (a black-holed IPv6 address must not eat it all).
async fn connect_tcp(
    dial: &Endpoint,
    deadline: Instant,
    dead_after: Duration,
) -> Result<TcpStream, ConnectError> {
    let target = dial.dial_target();
    let addresses: Vec<_> = tokio::net::lookup_host(&target)
        .await
        .map_err(|source| ConnectError::Resolve {
            target: target.clone(),
            source,
        })?
        .collect();
    let mut last_error = None;
    for (index, address) in addresses.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / (addresses.len() - index) as u32;
        match tokio::time::timeout(share, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true)?;
                dead_path::bound_dead_path(&stream, dead_after);
                return Ok(stream);
            }
            Ok(Err(e)) => last_error = Some(e),
            Err(_) => {
                last_error = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{address} did not answer"),
                ))
            }
        }
    }
    Err(ConnectError::Connect {
        target,
        source: last_error
            .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses")),
    })
}
