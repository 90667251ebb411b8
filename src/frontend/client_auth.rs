//! Client authentication on the listener (`--client-auth scram-sha-256`), for listeners beyond
//! loopback: without it anyone who reaches the port gets an IAM-authenticated session. The
//! sidecar is the SCRAM-SHA-256 server (pgwire's state machine, verifier-based, with
//! `tls-server-end-point` channel binding when the client came over TLS). Verifiers come from
//! `--client-auth-file` (lines `user:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
//! as `pg_authid` stores them, or `user:password`, turned into a verifier at load; read again
//! when the file changes or on SIGHUP) and/or one password for every user from
//! `RDS_IAM_SIDECAR_CLIENT_PASSWORD`. An unknown user goes through the same exchange against a
//! made-up verifier, so the answer does not tell which users exist. Every failure is answered
//! after the same delay with `28P01 password authentication failed for user "…"`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use pgwire::api::auth::sasl::scram::ScramServerAuth;
use tokio::sync::watch;

use super::client_tls::ClientTls;
use super::sasl::{
    AuthFailure, SCRAM, SCRAM_PLUS, pem_of, protocol_error, read_initial_response, read_response,
    sasl_message, sasl_request, send,
};
use super::verifiers::{Verifier, load_file, unknown_user_secret, verifier_of};
use crate::error::{PgError, sqlstate};
use crate::ops::metrics::UpstreamMetrics;
use crate::secret::Secret;
use crate::stream::ClientStream;

/// How long a failed authentication waits before it is answered.
pub const FAILURE_DELAY: Duration = Duration::from_secs(1);
/// How often the verifier file's modification time is looked at.
const CHECK_FILE_EVERY: Duration = Duration::from_secs(5);

/// How the listener authenticates its clients.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuthMode {
    /// Any client is let in (loopback and unix-socket listeners).
    #[default]
    Trust,
    /// SCRAM-SHA-256 against `--client-auth-file` or `RDS_IAM_SIDECAR_CLIENT_PASSWORD`.
    #[value(name = "scram-sha-256")]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

/// The listener's authentication settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAuthSettings {
    pub mode: ClientAuthMode,
    pub file: Option<PathBuf>,
    /// One password for every user (`RDS_IAM_SIDECAR_CLIENT_PASSWORD`).
    pub password: Option<Secret>,
}

/// The verifiers a listener checks clients against.
pub struct ClientAuth {
    file: Option<PathBuf>,
    verifiers: RwLock<HashMap<String, Arc<Verifier>>>,
    /// From `RDS_IAM_SIDECAR_CLIENT_PASSWORD`, for users the file does not name.
    everyone: Option<Arc<Verifier>>,
    /// Made at start: what unknown users' made-up verifiers derive from.
    mock_key: [u8; 32],
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("file", &self.file)
            .field("shared_password", &self.everyone.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    /// The listener's authentication, `None` with `trust`.
    pub fn new(settings: &ClientAuthSettings) -> Result<Option<Arc<Self>>, String> {
        if settings.mode == ClientAuthMode::Trust {
            return Ok(None);
        }
        let verifiers = match &settings.file {
            Some(path) => load_file(path)?,
            None => HashMap::new(),
        };
        let everyone = settings
            .password
            .as_ref()
            .map(|password| Arc::new(verifier_of(password.expose())));
        if everyone.is_none() && settings.file.is_none() {
            return Err("--client-auth scram-sha-256 needs --client-auth-file or \
                        RDS_IAM_SIDECAR_CLIENT_PASSWORD"
                .to_owned());
        }
        Ok(Some(Arc::new(Self {
            file: settings.file.clone(),
            verifiers: RwLock::new(verifiers),
            everyone,
            mock_key: rand::random(),
        })))
    }

    /// The verifier for `user`, or a made-up one that no password matches.
    fn secret_for(&self, user: &str) -> Arc<Verifier> {
        let known = self
            .verifiers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .cloned();
        known
            .or_else(|| self.everyone.clone())
            .unwrap_or_else(|| Arc::new(unknown_user_secret(&self.mock_key, user)))
    }

    /// Authenticates a client logging in as `user`; a failure is logged and counted and
    /// gives the error to answer (28P01 after [`FAILURE_DELAY`], or 08P01), or `None` when the
    /// client is gone.
    pub async fn let_in(
        &self,
        stream: &mut ClientStream,
        user: &str,
        tls: Option<&ClientTls>,
        metrics: &UpstreamMetrics,
        conn: u64,
    ) -> Result<(), Option<PgError>> {
        let certificate = match stream {
            ClientStream::Tls(_) => tls.map(ClientTls::certificate_der),
            _ => None,
        };
        let error = match self
            .authenticate(stream, user, certificate.as_deref())
            .await
        {
            Ok(()) => return Ok(()),
            Err(AuthFailure::Gone) => return Err(None),
            Err(AuthFailure::Password(error)) => {
                tracing::warn!(
                    conn,
                    ?user,
                    "client authentication failed: wrong password or unknown user"
                );
                metrics.client_auth_failure("password");
                tokio::time::sleep(FAILURE_DELAY).await;
                error
            }
            Err(AuthFailure::Protocol(error)) => {
                let message: String = error.message.chars().take(200).collect();
                tracing::warn!(
                    conn,
                    ?user,
                    ?message,
                    "client authentication failed: not a SCRAM exchange"
                );
                metrics.client_auth_failure("protocol");
                error
            }
        };
        Err(Some(error))
    }

    /// Runs the SASL exchange with a client that logs in as `user`; `certificate` is the
    /// listener's certificate (DER) when the client came over TLS, for channel binding.
    pub async fn authenticate(
        &self,
        stream: &mut ClientStream,
        user: &str,
        certificate: Option<&[u8]>,
    ) -> Result<(), AuthFailure> {
        let mut server = ScramServerAuth::new();
        if let Some(der) = certificate {
            // Without it the client is offered SCRAM-SHA-256 only, which stays correct.
            let _ = server.configure_certificate(pem_of(der).as_bytes());
        }
        let mechanisms: &[&str] = if server.supports_channel_binding() {
            &[SCRAM_PLUS, SCRAM]
        } else {
            &[SCRAM]
        };
        send(stream, &sasl_request(mechanisms)).await?;
        let (mechanism, first) = read_initial_response(stream).await?;
        if !mechanisms.contains(&mechanism.as_str()) {
            return Err(protocol_error(format!(
                "SASL mechanism '{mechanism}' was not offered"
            )));
        }
        let secret = self.secret_for(user).secret();
        let (server_first, waiting) = server
            .on_client_first_message_with_secret(&first, secret)
            .map_err(|e| protocol_error(format!("SCRAM client-first message: {e}")))?;
        send(stream, &sasl_message(11, server_first.as_bytes())).await?;
        let last = read_response(stream).await?;
        match waiting.on_client_final_message(&last) {
            Ok(server_final) => send(stream, &sasl_message(12, server_final.as_bytes())).await,
            Err(_) => Err(password_failure(user)),
        }
    }

    /// Reads the verifier file again whenever it changes or SIGHUP comes, until `stop`.
    pub async fn keep_fresh(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut seen: Option<SystemTime> = modified(&path);
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(CHECK_FILE_EVERY);
        loop {
            let asked = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
                _ = stop.wait_for(|s| *s) => return,
            };
            let now = modified(&path);
            if now == seen && !asked {
                continue;
            }
            // PBKDF2 for plain-password lines: off the runtime's worker threads.
            let reading = path.clone();
            let loaded = tokio::task::spawn_blocking(move || load_file(&reading)).await;
            match loaded.unwrap_or_else(|e| Err(format!("loading the verifier file failed: {e}"))) {
                Ok(verifiers) => {
                    // Only a file that loaded counts as seen: one caught mid-write is read
                    // again at the next look.
                    seen = now;
                    let users = verifiers.len();
                    *self.verifiers.write().unwrap_or_else(|p| p.into_inner()) = verifiers;
                    tracing::info!(users, file = %path.display(), "client verifiers loaded again");
                }
                Err(error) => tracing::warn!(
                    %error,
                    "client verifier file not reloaded; the previous verifiers are still used"
                ),
            }
        }
    }
}

fn password_failure(user: &str) -> AuthFailure {
    AuthFailure::Password(PgError::fatal(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    ))
}
