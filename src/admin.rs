//! The admin HTTP endpoint (`--admin-listen`): `/metrics` for Prometheus, `/startup`,
//! `/livez` and `/readyz` for orchestrators, and `POST /quitquitquit` (loopback clients only)
//! to start the same graceful shutdown as SIGTERM. Bodies are plain text saying what failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::client::SessionContext;

/// Credentials closer than this to their expiry (and not refreshed) make the sidecar unready.
const CREDENTIALS_MIN_LEFT: Duration = Duration::from_secs(60);
/// A successful upstream login this recent proves the upstream works.
const RECENT_LOGIN: Duration = Duration::from_secs(60);
/// How long the outcome of a readiness probe of the upstream is reused.
const PROBE_CACHE: Duration = Duration::from_secs(5);

/// What the endpoints look at.
pub struct Health {
    context: Arc<SessionContext>,
    started: AtomicBool,
    /// Last upstream probe: when, and its outcome.
    probe: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Health {
    pub fn new(context: Arc<SessionContext>) -> Arc<Self> {
        Arc::new(Self {
            context,
            started: AtomicBool::new(false),
            probe: Mutex::new(None),
        })
    }

    /// Listeners are bound and the configuration was accepted.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// `Ok` when the sidecar can serve a new client now; otherwise what is wrong. A saturated
    /// pool counts unless `ignore_saturation` (container health checks: a busy pool is not a
    /// broken sidecar, and replacing the task would not help).
    pub async fn readiness(&self) -> Result<(), String> {
        self.readiness_with(false).await
    }

    async fn readiness_with(&self, ignore_saturation: bool) -> Result<(), String> {
        if !self.is_started() {
            return Err("starting: the listeners are not open yet".to_owned());
        }
        if self.context.shutdown.is_requested() {
            return Err("shutting down: draining client connections".to_owned());
        }
        self.credentials().await?;
        let saturated = self.context.pools.saturated();
        if !ignore_saturation && let Some((pool, waiting)) = saturated.first() {
            return Err(format!(
                "pool {pool} is saturated: {waiting} clients wait for a connection (--pool-size)"
            ));
        }
        self.upstream().await
    }

    /// IAM mode: usable credentials, not about to expire.
    async fn credentials(&self) -> Result<(), String> {
        let Some(cache) = self.context.pools.connector().credentials() else {
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

    /// A recent successful login, else a live probe (DNS, TCP, TLS with the certificate
    /// checked), cached for a few seconds.
    async fn upstream(&self) -> Result<(), String> {
        let connector = self.context.pools.connector();
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

/// Serves the admin endpoint on `listener` until `stopped` turns true.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/startup", get(startup))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/quitquitquit", post(quit))
        .with_state(health);
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let stop = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    if let Err(error) = axum::serve(listener, service)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(%error, "the admin endpoint stopped");
    }
}

type Reply = (StatusCode, String);

async fn metrics(State(health): State<Arc<Health>>) -> Reply {
    let (idle, open, waiting) = health.context.pools.totals();
    crate::metrics::upstream_connections(idle, open.saturating_sub(idle), waiting);
    match crate::metrics::render() {
        Some(text) => (StatusCode::OK, text),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not recorded: another metrics recorder was installed first\n".to_owned(),
        ),
    }
}

async fn startup(State(health): State<Arc<Health>>) -> Reply {
    if health.is_started() {
        (StatusCode::OK, "started\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the listeners are not open yet\n".to_owned(),
        )
    }
}

async fn livez() -> Reply {
    (StatusCode::OK, "alive\n".to_owned())
}

/// `/readyz`; `?saturation=ignore` leaves pool saturation out (the `healthcheck` subcommand).
/// Only loopback clients are told the reason: it may name users, databases and hosts.
async fn readyz(
    State(health): State<Arc<Health>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
) -> Reply {
    let ignore_saturation = uri
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair == "saturation=ignore"));
    match health.readiness_with(ignore_saturation).await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) if is_local(&peer) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned()),
    }
}

fn is_local(peer: &SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

async fn quit(
    State(health): State<Arc<Health>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Reply {
    if !is_local(&peer) {
        return (
            StatusCode::FORBIDDEN,
            "/quitquitquit only answers clients on this host\n".to_owned(),
        );
    }
    if health.context.shutdown.request() {
        tracing::info!("shutdown requested over the admin endpoint");
    }
    (StatusCode::OK, "shutting down\n".to_owned())
}
