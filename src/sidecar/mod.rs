//! Starting the sidecar from its [`Settings`]: bind every listener first (so a port in use
//! fails the start before anything else happens), then start one engine per upstream endpoint
//! (connector → pools → frontend → accept loops) sharing the AWS credentials cache, the IAM
//! login rate limit, the admin endpoint and the shutdown state. [`start`] is the library entry
//! point used by `main`, the tests and the demo.

mod bind;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::frontend::Frontend;
use crate::frontend::client_auth::{ClientAuth, ClientAuthMode};
use crate::frontend::client_tls::ClientTls;
use crate::frontend::listener::{Listener, accept_loop};
use crate::iam::credentials::CredentialCache;
use crate::ops::health::Health;
use crate::ops::metrics;
use crate::ops::shutdown::Shutdown;
use crate::pool::{Pools, RateLimiter};
use crate::settings::{EndpointSettings, RDS_PROXY_IDLE_CLIENT_TIMEOUT, Settings};
use crate::upstream::tls::TlsMode;
use crate::upstream::{Authenticator, Connector, UpstreamAuth};
use bind::{bind_admin, bind_endpoint};

/// How long sessions get to tell 57P01 and close upstream once the grace period is over.
const TERMINATE_WAIT: Duration = Duration::from_secs(2);

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// Where one endpoint's clients connect.
#[derive(Debug, Clone)]
pub struct EndpointListeners {
    /// The upstream endpoint, HOST:PORT.
    pub upstream: String,
    /// The bound TCP addresses (with the real ports when 0 was asked for).
    pub tcp_addrs: Vec<SocketAddr>,
    /// The unix socket path, when one was asked for.
    pub unix_socket: Option<PathBuf>,
}

/// A started sidecar. Dropping it stops accepting new clients.
pub struct RunningSidecar {
    /// Every endpoint's listeners, in the order of the settings.
    pub endpoints: Vec<EndpointListeners>,
    /// The admin endpoint's address, unless `--admin-listen off`.
    pub admin_addr: Option<SocketAddr>,
    health: Arc<Health>,
    shutdown: Arc<Shutdown>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    frontends: Vec<Arc<Frontend>>,
}

impl RunningSidecar {
    /// The first TCP address (handy in tests).
    pub fn addr(&self) -> SocketAddr {
        self.tcp_addrs()[0]
    }

    /// The first endpoint's bound TCP addresses (with the real ports when 0 was asked for).
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.endpoints[0].tcp_addrs
    }

    /// Every endpoint's bound TCP addresses, in the order of the settings.
    pub fn endpoint_addrs(&self) -> Vec<Vec<SocketAddr>> {
        self.endpoints.iter().map(|e| e.tcp_addrs.clone()).collect()
    }

    /// The first endpoint's unix socket path, when one was asked for.
    pub fn unix_socket(&self) -> Option<&PathBuf> {
        self.endpoints[0].unix_socket.as_ref()
    }

    /// How many clients currently hold a cancel key (i.e. are connected and logged in).
    pub fn connected_clients(&self) -> usize {
        self.frontends.iter().map(|f| f.cancels.len()).sum()
    }

    /// (idle, open) upstream connections of the pools for `user@database` (whatever the other
    /// startup parameters) of the first endpoint that has them.
    pub fn pool_counts(&self, user: &str, database: &str) -> Option<(usize, usize)> {
        self.frontends
            .iter()
            .find_map(|f| f.pools.counts_for(user, database))
    }

    /// Why the sidecar is not ready to serve a new client, if it is not (what `/readyz` says).
    pub async fn readiness(&self) -> Result<(), String> {
        self.health.readiness().await
    }

    /// The sidecar's shutdown state: ask for a shutdown with [`Shutdown::request`].
    pub fn shutdown(&self) -> &Arc<Shutdown> {
        &self.shutdown
    }

    /// Graceful shutdown: draining starts (new clients get 57P01, idle ones are closed with
    /// it, transactions in flight run to their end) and lasts until every client is gone or
    /// `grace` has passed; then the listeners close. What is still open is closed when the
    /// runtime stops. The number of client connections left open at the end is returned.
    pub async fn drain(self, grace: Duration) -> usize {
        let shutdown = self.shutdown.clone();
        shutdown.begin_drain();
        // Idle clients wait on their own closer, not on the shutdown: wake each.
        for frontend in &self.frontends {
            frontend.cancels.wake_all();
        }
        info!(
            clients = shutdown.clients(),
            grace_s = grace.as_secs_f64(),
            "draining: closing idle clients, letting transactions finish"
        );
        let _ = tokio::time::timeout(grace, shutdown.all_clients_gone()).await;
        let left = shutdown.clients();
        if left > 0 {
            warn!(
                clients = left,
                "shutdown grace period over: closing the remaining client connections"
            );
            // Each told 57P01 where it stands between two messages, not just closed.
            for frontend in &self.frontends {
                frontend.cancels.terminate_all();
            }
            let _ = tokio::time::timeout(TERMINATE_WAIT, shutdown.all_clients_gone()).await;
        } else {
            info!("drained: no client connection left");
        }
        self.stop().await;
        left
    }

    /// Stops accepting clients; sessions already running continue to their end.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        // The admin server finishes its requests first; never wait on it for long.
        let joined = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(2), joined)
            .await
            .is_err()
        {
            self.tasks.abort_all();
        }
        self.remove_socket_files();
    }

    fn remove_socket_files(&self) {
        for path in self.endpoints.iter().filter_map(|e| e.unix_socket.as_ref()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for RunningSidecar {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.remove_socket_files();
    }
}

/// Binds the listeners and starts accepting. With IAM auth and `credentials` = None, the
/// standard AWS credentials chain is used.
pub async fn start(
    settings: Settings,
    credentials: Option<Arc<CredentialCache>>,
) -> Result<RunningSidecar, StartError> {
    if settings.endpoints.is_empty() {
        return Err(StartError::Setup(
            "no upstream endpoint to serve".to_owned(),
        ));
    }
    metrics::install();
    let (admin_listener, admin_addr) = bind_admin(settings.admin_listen).await?;
    let mut bound = Vec::with_capacity(settings.endpoints.len());
    for endpoint in &settings.endpoints {
        bound.push(bind_endpoint(endpoint).await?);
    }
    let credentials = shared_credentials(&settings, credentials).await?;
    let engine = Engine {
        credentials: credentials.clone(),
        limiter: Arc::new(RateLimiter::new(settings.max_connect_rate)),
        shutdown: Arc::new(Shutdown::new()),
    };
    let shutdown = engine.shutdown.clone();
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let labels = metric_labels(&settings.endpoints);
    let mut frontends = Vec::with_capacity(bound.len());
    let mut endpoints = Vec::with_capacity(bound.len());
    for ((endpoint, bound), label) in settings.endpoints.iter().zip(bound).zip(labels) {
        let frontend = engine.build(endpoint, metrics::for_upstream(&label))?;
        engine_tasks(&mut tasks, &frontend, endpoint, bound.listeners, &stopped);
        log_endpoint(endpoint, &bound.addresses);
        frontends.push(frontend);
        endpoints.push(bound.addresses);
    }
    let pools = frontends.iter().map(|f| f.pools.clone()).collect();
    let health = Health::new(pools, credentials, shutdown.clone());
    process_tasks(&mut tasks, &health, &shutdown, admin_listener, &stopped);
    health.mark_started();
    info!(
        endpoints = endpoints.len(),
        admin = ?admin_addr,
        io = %crate::uring::describe(),
        "rds-iam-sidecar ready"
    );
    Ok(RunningSidecar {
        endpoints,
        admin_addr,
        health,
        shutdown,
        stop,
        tasks,
        frontends,
    })
}

/// What the process runs besides the endpoints: metrics upkeep, the memory trim after bursts,
/// the admin endpoint.
fn process_tasks(
    tasks: &mut JoinSet<()>,
    health: &Arc<Health>,
    shutdown: &Arc<Shutdown>,
    admin_listener: Option<tokio::net::TcpListener>,
    stopped: &watch::Receiver<bool>,
) {
    tasks.spawn(metrics::upkeep(stopped.clone()));
    let memory = crate::ops::memory::give_back_after_bursts(shutdown.clone(), stopped.clone());
    tasks.spawn(memory);
    crate::uring::spawn_reaper();
    if let Some(listener) = admin_listener {
        tasks.spawn(crate::ops::admin::serve(
            listener,
            health.clone(),
            stopped.clone(),
        ));
    }
}

/// One endpoint's running parts: its warm pools opened, its pool upkeep and accept loops.
fn engine_tasks(
    tasks: &mut JoinSet<()>,
    frontend: &Arc<Frontend>,
    endpoint: &EndpointSettings,
    listeners: Vec<Listener>,
    stopped: &watch::Receiver<bool>,
) {
    for key in &endpoint.warm_pools {
        frontend.pools.warm(key.clone());
    }
    if let Some(tls) = &frontend.tls {
        tasks.spawn(tls.clone().keep_fresh(stopped.clone()));
    }
    if let Some(auth) = &frontend.auth {
        tasks.spawn(auth.clone().keep_fresh(stopped.clone()));
    }
    tasks.spawn(frontend.pools.clone().maintain(stopped.clone()));
    for listener in listeners {
        tasks.spawn(accept_loop(listener, frontend.clone(), stopped.clone()));
    }
}

/// What every endpoint's engine shares.
struct Engine {
    credentials: Option<Arc<CredentialCache>>,
    limiter: Arc<RateLimiter>,
    shutdown: Arc<Shutdown>,
}

impl Engine {
    /// Connector → pools → frontend for one endpoint, reporting to `metrics`.
    fn build(
        &self,
        endpoint: &EndpointSettings,
        metrics: &'static metrics::UpstreamMetrics,
    ) -> Result<Arc<Frontend>, StartError> {
        let upstream = &endpoint.upstream;
        let authenticator = Authenticator::new(&upstream.auth, self.credentials.clone())
            .map_err(StartError::Setup)?;
        let connector = Connector::new(upstream, authenticator, metrics)
            .map_err(|e| StartError::Setup(format!("upstream {}: {e}", upstream.endpoint)))?;
        let pools = Pools::new(
            Arc::new(connector),
            endpoint.pool.clone(),
            self.limiter.clone(),
        );
        let tls = ClientTls::new(&endpoint.frontend.tls, &endpoint.listen).map_err(|e| {
            StartError::Setup(format!("upstream {}: listener TLS: {e}", upstream.endpoint))
        })?;
        let auth = ClientAuth::new(&endpoint.frontend.auth).map_err(|e| {
            StartError::Setup(format!(
                "upstream {}: client authentication: {e}",
                upstream.endpoint
            ))
        })?;
        Ok(Arc::new(Frontend::new(
            pools,
            &endpoint.frontend,
            self.shutdown.clone(),
            tls,
            auth,
        )))
    }
}

/// One credentials cache for every IAM endpoint (its region only picks the STS endpoint the
/// chain may call; each endpoint signs for its own region).
async fn shared_credentials(
    settings: &Settings,
    given: Option<Arc<CredentialCache>>,
) -> Result<Option<Arc<CredentialCache>>, StartError> {
    let region = settings
        .endpoints
        .iter()
        .find_map(|e| e.upstream.auth.region());
    match (region, given) {
        (Some(region), None) => Ok(Some(Arc::new(
            CredentialCache::from_default_chain(region)
                .await
                .map_err(|e| StartError::Setup(e.to_string()))?,
        ))),
        (_, given) => Ok(given),
    }
}

/// The `upstream` label of each endpoint's metrics: its host name; HOST:PORT where two
/// endpoints share a host; HOST:PORT#N (its place in the list) where they share that too.
fn metric_labels(endpoints: &[EndpointSettings]) -> Vec<String> {
    let count =
        |same: &dyn Fn(&EndpointSettings) -> bool| endpoints.iter().filter(|e| same(e)).count();
    endpoints
        .iter()
        .enumerate()
        .map(|(index, endpoint)| {
            let target = &endpoint.upstream.endpoint;
            if count(&|e| e.upstream.endpoint == *target) > 1 {
                format!("{target}#{}", index + 1)
            } else if count(&|e| e.upstream.endpoint.host == target.host) > 1 {
                target.to_string()
            } else {
                target.host.clone()
            }
        })
        .collect()
}

/// The start-up line of one endpoint, and warnings for settings that weaken the defaults.
fn log_endpoint(endpoint: &EndpointSettings, listeners: &EndpointListeners) {
    let upstream = &endpoint.upstream;
    info!(
        upstream = %upstream.endpoint,
        listen = ?listeners.tcp_addrs,
        unix_socket = ?listeners.unix_socket,
        upstream_addr = ?upstream.upstream_addr.as_ref().map(|e| e.to_string()),
        auth = if upstream.auth.is_iam() { "iam" } else { "password" },
        region = upstream.auth.region().unwrap_or("-"),
        tls_mode = ?upstream.tls_mode,
        kind = upstream.kind.name(),
        kind_reason = upstream.kind_reason,
        pool_mode = ?endpoint.pool.mode,
        pool_size = endpoint.pool.size,
        "serving upstream endpoint"
    );
    if endpoint.frontend.auth.mode == ClientAuthMode::Trust
        && listeners
            .tcp_addrs
            .iter()
            .any(|a| !a.ip().to_canonical().is_loopback())
    {
        warn!(
            listen = ?listeners.tcp_addrs,
            "listening beyond loopback without client authentication (--allow-unauthenticated-clients): anyone who can reach this port logs in as the database users the sidecar's IAM role may use"
        );
    }
    if endpoint.pool.idle_timeout >= RDS_PROXY_IDLE_CLIENT_TIMEOUT {
        warn!(idle_timeout = ?endpoint.pool.idle_timeout, "--idle-timeout is not below RDS Proxy's default IdleClientTimeout (1800 s): the proxy may close idle pooled connections first (they are replaced, but each costs a new IAM login)");
    }
    if matches!(upstream.auth, UpstreamAuth::Iam { .. }) && upstream.tls_mode == TlsMode::Require {
        warn!(
            "--tls-mode require does not check the upstream certificate: a man in the middle could capture IAM tokens (valid 15 minutes); prefer verify-full"
        );
    }
}
