//! Readiness, as `/readyz` and the `healthcheck` subcommand report it: started, no shutdown
//! requested, AWS credentials held (shared by every endpoint), and for each endpoint a pool
//! that is not saturated and a recent login or a live probe of the path to the upstream.
//! [`Health`] holds exactly what it checks: each endpoint's pools (and through them its
//! connector), the credentials cache and the shutdown state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::shutdown::Shutdown;
use crate::iam::credentials::CredentialCache;
use crate::pool::Pools;

/// Credentials closer than this to their expiry (and not refreshed) make the sidecar unready.
const CREDENTIALS_MIN_LEFT: Duration = Duration::from_secs(60);
/// A successful upstream login this recent proves the upstream works.
const RECENT_LOGIN: Duration = Duration::from_secs(60);
/// How long the outcome of a readiness probe of the upstream is reused.
const PROBE_CACHE: Duration = Duration::from_secs(5);

/// What readiness looks at.
pub struct Health {
    endpoints: Vec<Arc<EndpointHealth>>,
    credentials: Option<Arc<CredentialCache>>,
    pub(super) shutdown: Arc<Shutdown>,
    started: AtomicBool,
}

/// One endpoint's part of readiness.
struct EndpointHealth {
    pools: Arc<Pools>,
    /// Last upstream probe: when, and its outcome.
    probe: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Health {
    /// Readiness of the endpoints served by `pools` (one per endpoint), with the shared
    /// credentials cache (IAM mode) and shutdown state.
    pub fn new(
        pools: Vec<Arc<Pools>>,
        credentials: Option<Arc<CredentialCache>>,
        shutdown: Arc<Shutdown>,
    ) -> Arc<Self> {
        let endpoints = pools
            .into_iter()
            .map(|pools| {
                Arc::new(EndpointHealth {
                    pools,
                    probe: Mutex::new(None),
                })
            })
            .collect();
        Arc::new(Self {
            endpoints,
            credentials,
            shutdown,
            started: AtomicBool::new(false),
        })
    }

    /// Upstream connection counts per endpoint, as metrics (at scrape time).
    pub fn record_pool_metrics(&self) {
        for endpoint in &self.endpoints {
            let (idle, open, waiting) = endpoint.pools.totals();
            let metrics = endpoint.pools.connector().metrics();
            metrics.upstream_connections(idle, open.saturating_sub(idle), waiting);
            crate::ops::metrics::login_rate(endpoint.pools.login_rate());
        }
    }

    /// Listeners are bound and the configuration was accepted.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    pub(super) fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// `Ok` when the sidecar can serve a new client now; otherwise what is wrong. A saturated
    /// pool counts unless `ignore_saturation` (container health checks: a busy pool is not a
    /// broken sidecar, and replacing the task would not help).
    pub async fn readiness(&self) -> Result<(), String> {
        self.readiness_with(false).await
    }

    /// Like [`Health::readiness`]; with several endpoints, every one that is not ready is
    /// named with its reason.
    pub(super) async fn readiness_with(&self, ignore_saturation: bool) -> Result<(), String> {
        if !self.is_started() {
            return Err("starting: the listeners are not open yet".to_owned());
        }
        if self.shutdown.is_requested() {
            return Err("shutting down: draining client connections".to_owned());
        }
        self.credentials().await?;
        // Concurrently: each unreachable endpoint's probe may take its connect timeout.
        let mut checks = tokio::task::JoinSet::new();
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let endpoint = endpoint.clone();
            checks.spawn(async move { (index, endpoint.readiness(ignore_saturation).await) });
        }
        let mut outcomes: Vec<Result<(), String>> =
            vec![Err("its readiness check failed".to_owned()); self.endpoints.len()];
        while let Some(joined) = checks.join_next().await {
            if let Ok((index, outcome)) = joined
                && let Some(slot) = outcomes.get_mut(index)
            {
                *slot = outcome;
            }
        }
        let several = self.endpoints.len() > 1;
        let mut not_ready = Vec::new();
        for (endpoint, outcome) in self.endpoints.iter().zip(outcomes) {
            if let Err(reason) = outcome {
                let name = endpoint.pools.connector().upstream();
                not_ready.push(if several {
                    format!("upstream {name}: {reason}")
                } else {
                    reason
                });
            }
        }
        if not_ready.is_empty() {
            Ok(())
        } else {
            Err(not_ready.join("; "))
        }
    }

    /// IAM mode: usable credentials, not about to expire.
    async fn credentials(&self) -> Result<(), String> {
        let Some(cache) = &self.credentials else {
            return Ok(());
        };
        if cache.held().is_none() {
            // Nothing fetched yet (credentials are fetched at the first login): fetch now.
            match tokio::time::timeout(Duration::from_secs(5), cache.get()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Err(format!("AWS credentials: {error}")),
                Err(_) => {
                    return Err(
                        "AWS credentials: the provider chain did not answer within 5 s".to_owned(),
                    );
                }
            }
        }
        match cache.held() {
            None => Err("AWS credentials: none held".to_owned()),
            Some(Some(expiry)) => {
                let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
                if left < CREDENTIALS_MIN_LEFT {
                    Err(format!(
                        "AWS credentials expire in {} s and could not be refreshed",
                        left.as_secs()
                    ))
                } else {
                    Ok(())
                }
            }
            Some(None) => Ok(()),
        }
    }
}

impl EndpointHealth {
    async fn readiness(&self, ignore_saturation: bool) -> Result<(), String> {
        let saturated = self.pools.saturated();
        if !ignore_saturation && let Some((pool, waiting)) = saturated.first() {
            return Err(format!(
                "pool {pool} is saturated: {waiting} clients wait for a connection (--pool-size)"
            ));
        }
        self.upstream().await
    }

    /// A recent successful login, else a live probe (DNS, TCP, TLS with the certificate
    /// checked), cached for a few seconds.
    async fn upstream(&self) -> Result<(), String> {
        let connector = self.pools.connector();
        let history = connector.login_history();
        let now = Instant::now();
        // A failure counts while it is recent and not followed by a success; after that a
        // probe decides.
        let failed_last = match (&history.last_failure, history.last_ok) {
            (Some((failed_at, _)), _) if now.duration_since(*failed_at) >= RECENT_LOGIN => false,
            (Some((failed_at, _)), Some(ok_at)) => *failed_at > ok_at,
            (Some(_), None) => true,
            _ => false,
        };
        if failed_last && let Some((failed_at, error)) = &history.last_failure {
            return Err(format!(
                "the last upstream login failed {} s ago: {error}",
                now.duration_since(*failed_at).as_secs()
            ));
        }
        if history
            .last_ok
            .is_some_and(|at| now.duration_since(at) < RECENT_LOGIN)
        {
            return Ok(());
        }
        let mut probe = self.probe.lock().await;
        if let Some((at, outcome)) = probe.as_ref()
            && now.duration_since(*at) < PROBE_CACHE
        {
            return outcome.clone();
        }
        let outcome = connector
            .probe()
            .await
            .map_err(|error| format!("upstream not reachable: {error}"));
        *probe = Some((Instant::now(), outcome.clone()));
        outcome
    }
}
