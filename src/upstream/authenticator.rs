//! How the sidecar proves who it is upstream: an [`Authenticator`] (IAM credentials and the
//! signing region, or a configured password), and the password of one login, an IAM token
//! signed at the moment the server asks for it.

use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::Credentials;

use super::Connector;
use super::error::ConnectError;
use super::login::PasswordSource;
use super::settings::UpstreamAuth;
use crate::iam::credentials::CredentialCache;
use crate::iam::token::sign_token;
use crate::secret::Secret;

/// How the sidecar proves who it is upstream.
pub enum Authenticator {
    Iam {
        credentials: Arc<CredentialCache>,
        region: String,
    },
    Password(Secret),
}

/// The password for one login: a freshly signed IAM token, or the configured password.
pub(super) struct LoginPassword<'a> {
    pub(super) connector: &'a Connector,
    pub(super) credentials: Option<Credentials>,
    pub(super) user: &'a str,
}

impl PasswordSource for LoginPassword<'_> {
    fn is_iam_token(&self) -> bool {
        matches!(self.connector.auth, Authenticator::Iam { .. })
    }

    async fn password(&self) -> Result<Secret, ConnectError> {
        match &self.connector.auth {
            Authenticator::Password(secret) => Ok(secret.clone()),
            Authenticator::Iam { region, .. } => {
                let creds = self
                    .credentials
                    .as_ref()
                    .ok_or_else(|| ConnectError::Sign("no credentials fetched".to_owned()))?;
                let upstream = &self.connector.upstream;
                let token = sign_token(
                    creds,
                    &upstream.host,
                    upstream.port,
                    self.user,
                    region,
                    SystemTime::now(),
                )
                .map_err(|e| ConnectError::Sign(e.to_string()))?;
                self.connector.metrics.token_signed();
                Ok(token)
            }
        }
    }
}

impl Authenticator {
    /// The authenticator `auth` asks for; IAM credentials come from `credentials`.
    pub fn new(
        auth: &UpstreamAuth,
        credentials: Option<Arc<CredentialCache>>,
    ) -> Result<Self, String> {
        match auth {
            UpstreamAuth::Password(secret) => Ok(Self::Password(secret.clone())),
            UpstreamAuth::Iam { region, .. } => Ok(Self::Iam {
                credentials: credentials.ok_or("IAM mode needs a credentials source")?,
                region: region.clone(),
            }),
        }
    }
}
