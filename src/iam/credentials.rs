//! AWS credentials behind our own cache. aws-config's provider is not cached (each call may
//! hit ECS, IMDS or STS), so this cache refreshes ahead of expiry, lets one caller refresh while
//! the others wait (single flight), and keeps serving the old credentials while a refresh fails
//! until they truly expire.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

/// Refresh credentials this long before they expire.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);
/// Credentials without an expiry (env, static profile) are re-read this often.
const STATIC_RECHECK: Duration = Duration::from_secs(5 * 60);
/// Old credentials are not handed out when they expire within this margin.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// After a failed fetch with nothing usable cached, callers get that error for this long
/// instead of each asking the provider again.
const FAILURE_BACKOFF: Duration = Duration::from_secs(2);

/// The sources the default chain tries, in order, for error messages.
pub const CHAIN_SOURCES: &str = "environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), \
    shared profile (AWS_PROFILE, ~/.aws/credentials and ~/.aws/config: static keys, SSO, \
    credential_process, assume role), web identity (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN), \
    ECS container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI / _FULL_URI), EC2 \
    instance metadata (IMDS)";

/// No usable credentials: what was tried and what the chain said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no AWS credentials: {reason}. Sources tried: {CHAIN_SOURCES}")]
pub struct CredentialsUnavailable {
    pub reason: String,
}

struct Cached {
    credentials: Credentials,
    fetched_at: Instant,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// The last failed fetch, while nothing usable is cached.
    last_failure: Option<(Instant, CredentialsUnavailable)>,
    /// A background refresh is under way.
    refreshing: bool,
    /// Counts completed fetches, so callers that queued behind one can use its result.
    fetches: u64,
}

/// A refresh-ahead, single-flight cache in front of a credentials provider.
///
/// - Fresh credentials (more than [`REFRESH_AHEAD`] left) are returned at once.
/// - Credentials inside the refresh window are still returned at once while one background
///   task refreshes them; if that fails they keep being served until they truly expire.
/// - With nothing usable, one caller fetches and the others wait for and share its result; a
///   failure is remembered for [`FAILURE_BACKOFF`] so a broken provider is not hammered.
pub struct CredentialCache {
    provider: SharedCredentialsProvider,
    state: Mutex<State>,
    fetch_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialCache")
            .field("expiry", &self.expiry())
            .finish_non_exhaustive()
    }
}

impl CredentialCache {
    pub fn new(provider: impl ProvideCredentials + 'static) -> Self {
        Self {
            provider: SharedCredentialsProvider::new(provider),
            state: Mutex::new(State::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The standard AWS chain (env, profile, web identity, ECS, IMDS) with a rustls/ring HTTP
    /// client, which the ECS, IMDS, SSO and STS providers need at run time.
    pub async fn from_default_chain(region: &str) -> Result<Self, CredentialsUnavailable> {
        let http_client = http_client();
        let sdk_config = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .region(Region::new(region.to_owned()))
            .load()
            .await;
        let provider = sdk_config
            .credentials_provider()
            .ok_or_else(|| CredentialsUnavailable {
                reason: "the AWS SDK configured no credentials provider".to_owned(),
            })?;
        Ok(Self::new(provider))
    }

    /// Expiry of the credentials currently held, if they have one.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.lock()
            .cached
            .as_ref()
            .and_then(|c| c.credentials.expiry())
    }

    /// Whether usable credentials are held: `Some(expiry)` (the inner `None` for keys that
    /// never expire), or `None` with nothing usable.
    pub fn held(&self) -> Option<Option<SystemTime>> {
        self.lock()
            .cached
            .as_ref()
            .filter(|c| is_usable(c))
            .map(|c| c.credentials.expiry())
    }

    /// Credentials to sign with now.
    pub async fn get(self: &Arc<Self>) -> Result<Credentials, CredentialsUnavailable> {
        let seen_fetches = {
            let mut state = self.lock();
            if let Some(cached) = &state.cached {
                if is_fresh(cached) {
                    return Ok(cached.credentials.clone());
                }
                if is_usable(cached) {
                    let credentials = cached.credentials.clone();
                    if !state.refreshing {
                        state.refreshing = true;
                        let cache = self.clone();
                        tokio::spawn(async move { cache.refresh_in_background().await });
                    }
                    return Ok(credentials);
                }
            }
            if let Some((at, error)) = &state.last_failure
                && at.elapsed() < FAILURE_BACKOFF
            {
                return Err(error.clone());
            }
            state.fetches
        };
        let _single_flight = self.fetch_lock.lock().await;
        {
            let state = self.lock();
            if state.fetches != seen_fetches {
                // Another caller fetched while we waited: share its outcome.
                if let Some(cached) = state.cached.as_ref().filter(|c| is_usable(c)) {
                    return Ok(cached.credentials.clone());
                }
                if let Some((_, error)) = &state.last_failure {
                    return Err(error.clone());
                }
            }
        }
        self.fetch().await
    }

    /// Fetches new credentials now (after the server rejected a token signed with the old ones).
    pub async fn refresh(&self) -> Result<Credentials, CredentialsUnavailable> {
        let _single_flight = self.fetch_lock.lock().await;
        self.fetch().await
    }

    /// After the server rejected a token signed with `used`: whether a second login is worth
    /// it, with the credentials held now. When `used` is still held, they are fetched again
    /// (single-flight), and only another key is worth it; when the cache already moved on to
    /// another key (another rejected login's fetch), that one is. Rejections for other reasons
    /// (a user without `rds_iam`, a proxy with no secret for the user) then cost one fetch and
    /// one login each, instead of a fetch and two logins.
    pub async fn refresh_after_rejection(
        &self,
        used: &Credentials,
    ) -> Result<bool, CredentialsUnavailable> {
        let _single_flight = self.fetch_lock.lock().await;
        if !self.holds(used) {
            return Ok(true);
        }
        let fresh = self.fetch().await?;
        Ok(!same_key(used, &fresh))
    }

    /// `credentials` are the ones held.
    fn holds(&self, credentials: &Credentials) -> bool {
        self.lock()
            .cached
            .as_ref()
            .is_some_and(|cached| same_key(&cached.credentials, credentials))
    }

    async fn refresh_in_background(&self) {
        let _single_flight = self.fetch_lock.lock().await;
        if let Err(error) = self.fetch().await {
            tracing::warn!(reason = %error.reason, "refreshing AWS credentials failed; using the current ones until they expire");
        }
        self.lock().refreshing = false;
    }

    /// Asks the provider; must be called with `fetch_lock` held.
    async fn fetch(&self) -> Result<Credentials, CredentialsUnavailable> {
        let result = self.provider.provide_credentials().await;
        let mut state = self.lock();
        state.fetches += 1;
        match result {
            Ok(credentials) => {
                tracing::debug!(
                    access_key_id = %mask_access_key(credentials.access_key_id()),
                    expiry = ?credentials.expiry(),
                    "fetched AWS credentials"
                );
                state.cached = Some(Cached {
                    credentials: credentials.clone(),
                    fetched_at: Instant::now(),
                });
                state.last_failure = None;
                crate::ops::metrics::credential_refresh(true, credentials.expiry());
                Ok(credentials)
            }
            Err(error) => {
                let error = CredentialsUnavailable {
                    reason: error_chain(&error),
                };
                crate::ops::metrics::credential_refresh(false, None);
                if let Some(cached) = state.cached.as_ref().filter(|c| is_usable(c)) {
                    return Ok(cached.credentials.clone());
                }
                state.last_failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// More than [`REFRESH_AHEAD`] left (or a static key re-read recently).
fn is_fresh(cached: &Cached) -> bool {
    match cached.credentials.expiry() {
        Some(expiry) => expiry
            .duration_since(SystemTime::now())
            .is_ok_and(|left| left > REFRESH_AHEAD),
        None => cached.fetched_at.elapsed() < STATIC_RECHECK,
    }
}

/// Not expired yet (with a small margin): still good to sign with.
fn is_usable(cached: &Cached) -> bool {
    match cached.credentials.expiry() {
        Some(expiry) => expiry
            .duration_since(SystemTime::now())
            .is_ok_and(|left| left > EXPIRY_MARGIN),
        None => true,
    }
}

/// `AKIA…WXYZ` → `****************WXYZ`: enough to tell keys apart, never the whole id.
/// The same key: access key id, secret and session token (expiry and provider aside).
fn same_key(a: &Credentials, b: &Credentials) -> bool {
    a.access_key_id() == b.access_key_id()
        && a.secret_access_key() == b.secret_access_key()
        && a.session_token() == b.session_token()
}

pub fn mask_access_key(id: &str) -> String {
    let keep = id.len().saturating_sub(4);
    id.char_indices()
        .map(|(i, c)| if i < keep { '*' } else { c })
        .collect()
}

/// The HTTP client the credential providers use (rustls on ring, like the rest).
pub(super) fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// An error and all its sources, joined with ": ".
pub(super) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[path = "credentials_tests.rs"]
mod tests;
