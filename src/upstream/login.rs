//! The upstream login exchange after TLS: StartupMessage, then whatever the server asks —
//! cleartext (RDS / RDS Proxy with IAM: the token), md5 or SCRAM-SHA-256 (a plain Postgres in
//! password mode) — then ParameterStatus and BackendKeyData up to the first ReadyForQuery.
//! Built on postgres-protocol's frontend encoders and backend parser.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::error::ConnectError;
use crate::protocol::server::{ReadError, ServerReader, error_response};
use crate::secret::Secret;

/// A login message larger than this is not a login message.
const MAX_LOGIN_BUFFER: usize = 1 << 20;

/// What the server told us during login.
#[derive(Debug, Default)]
pub struct LoginOutcome {
    /// ParameterStatus values in the order the server sent them.
    pub parameters: Vec<(String, String)>,
    /// The server's BackendKeyData (pid, secret), for forwarding cancels.
    pub backend_key: Option<(i32, i32)>,
    /// Bytes read past the first ReadyForQuery (normally empty).
    pub pending: BytesMut,
}

/// Supplies the password when the server asks for one (IAM: signs a token at that moment).
pub trait PasswordSource {
    fn password(&self) -> impl Future<Output = Result<Secret, ConnectError>> + Send;
    /// True for IAM tokens, which only ever go as a cleartext password: a server asking for
    /// md5 or SCRAM is not doing IAM authentication for this user.
    fn is_iam_token(&self) -> bool;
}

/// Runs the login on an established (normally TLS) stream.
pub async fn login<S, P>(
    stream: &mut S,
    parameters: &[(&str, &str)],
    user: &str,
    password: &P,
) -> Result<LoginOutcome, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: PasswordSource + Sync,
{
    let mut out = BytesMut::new();
    frontend::startup_message(parameters.iter().copied(), &mut out)?;
    // Flushed: over TLS a write may leave the end of a record in rustls's buffer.
    stream.write_all(&out).await?;
    stream.flush().await?;

    let mut reader = ServerReader::new(MAX_LOGIN_BUFFER);
    let mut exchange = Exchange {
        password,
        user,
        scram: None,
        scram_verified: false,
    };
    let mut outcome = LoginOutcome::default();
    loop {
        let message = reader.next(stream).await.map_err(read_error)?;
        out.clear();
        match message {
            backend::Message::ParameterStatus(body) => {
                outcome
                    .parameters
                    .push((body.name()?.to_owned(), body.value()?.to_owned()));
            }
            backend::Message::BackendKeyData(body) => {
                outcome.backend_key = Some((body.process_id(), body.secret_key()));
            }
            backend::Message::NoticeResponse(_) => {}
            backend::Message::ErrorResponse(body) => {
                return Err(ConnectError::refused_login(error_response(&body)?));
            }
            backend::Message::ReadyForQuery(_) => {
                outcome.pending = reader.into_rest();
                return Ok(outcome);
            }
            request => exchange.answer(request, &mut out).await?,
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            stream.flush().await?;
        }
    }
}

/// The authentication part of the login: answers what the server asks for.
struct Exchange<'a, P> {
    password: &'a P,
    user: &'a str,
    scram: Option<ScramSha256>,
    /// The server proved it knows the password (SCRAM's final message checked).
    scram_verified: bool,
}

impl<P: PasswordSource + Sync> Exchange<'_, P> {
    /// Writes the answer to one authentication request into `out` (nothing when none is due).
    async fn answer(
        &mut self,
        request: backend::Message,
        out: &mut BytesMut,
    ) -> Result<(), ConnectError> {
        let iam = self.password.is_iam_token();
        match request {
            backend::Message::AuthenticationCleartextPassword => {
                let secret = self.password.password().await?;
                frontend::password_message(secret.expose().as_bytes(), out)?;
            }
            backend::Message::AuthenticationMd5Password(_) if iam => {
                return Err(ConnectError::IamNotEnabled { method: "md5" });
            }
            backend::Message::AuthenticationSasl(_) if iam => {
                return Err(ConnectError::IamNotEnabled {
                    method: "SCRAM-SHA-256",
                });
            }
            backend::Message::AuthenticationMd5Password(body) => {
                let secret = self.password.password().await?;
                let hash = md5_hash(
                    self.user.as_bytes(),
                    secret.expose().as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), out)?;
            }
            backend::Message::AuthenticationSasl(body) => self.start_scram(body, out).await?,
            backend::Message::AuthenticationSaslContinue(body) => {
                let client = self.scram_started("SASL continue without SASL start")?;
                client.update(body.data())?;
                frontend::sasl_response(client.message(), out)?;
            }
            backend::Message::AuthenticationSaslFinal(body) => {
                let client = self.scram_started("SASL final without SASL start")?;
                client.finish(body.data())?;
                self.scram_verified = true;
            }
            backend::Message::AuthenticationOk if self.scram.is_some() && !self.scram_verified => {
                return Err(protocol(
                    "the server ended SCRAM authentication without proving it knows the password",
                ));
            }
            backend::Message::AuthenticationOk => {}
            backend::Message::AuthenticationKerberosV5
            | backend::Message::AuthenticationScmCredential
            | backend::Message::AuthenticationGss
            | backend::Message::AuthenticationSspi
            | backend::Message::AuthenticationGssContinue(_) => {
                return Err(ConnectError::UnsupportedAuth(
                    "Kerberos/GSS/SSPI/SCM".to_owned(),
                ));
            }
            _ => return Err(protocol("unexpected message during login")),
        }
        Ok(())
    }

    async fn start_scram(
        &mut self,
        body: backend::AuthenticationSaslBody,
        out: &mut BytesMut,
    ) -> Result<(), ConnectError> {
        let mut mechanisms = body.mechanisms();
        let mut offers_scram = false;
        while let Some(mechanism) = mechanisms.next()? {
            offers_scram |= mechanism == SCRAM_SHA_256;
        }
        if !offers_scram {
            return Err(ConnectError::UnsupportedAuth(
                "SASL without SCRAM-SHA-256".to_owned(),
            ));
        }
        let secret = self.password.password().await?;
        let client = ScramSha256::new(secret.expose().as_bytes(), ChannelBinding::unsupported());
        frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), out)?;
        self.scram = Some(client);
        Ok(())
    }

    fn scram_started(&mut self, otherwise: &str) -> Result<&mut ScramSha256, ConnectError> {
        self.scram.as_mut().ok_or_else(|| protocol(otherwise))
    }
}

fn protocol(text: &str) -> ConnectError {
    ConnectError::Protocol(text.to_owned())
}

fn read_error(error: ReadError) -> ConnectError {
    match error {
        ReadError::TooLarge(..) => protocol("login message too large"),
        ReadError::Closed => ConnectError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        )),
        ReadError::Io(error) => ConnectError::Io(error),
    }
}
