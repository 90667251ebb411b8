//! The admin HTTP endpoint (`--admin-listen`): `/metrics` for Prometheus, `/startup`,
//! `/livez` and `/readyz` for orchestrators, and `POST /quitquitquit` (loopback clients only)
//! to start the same graceful shutdown as SIGTERM. Bodies are plain text saying what failed.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use super::health::Health;

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
    health.record_pool_metrics();
    match crate::ops::metrics::render() {
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
    if health.shutdown.request() {
        tracing::info!("shutdown requested over the admin endpoint");
    }
    (StatusCode::OK, "shutting down\n".to_owned())
}
