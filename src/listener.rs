//! Starting the sidecar: bind every `--listen` address and the optional unix socket, build the
//! connector, and accept clients until stopped. [`start`] is the library entry point used by
//! `main`, the tests and the demo.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::admin::Health;
use crate::cli::TlsMode;
use crate::client::{SessionContext, serve_client};
use crate::config::{Config, UpstreamAuth};
use crate::iam::credentials::CredentialCache;
use crate::pool::Pools;
use crate::shutdown::Shutdown;
use crate::stream::ClientStream;
use crate::upstream::{Authenticator, Connector};

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

/// A started sidecar. Dropping it stops accepting new clients.
pub struct RunningSidecar {
    /// The bound TCP addresses (with the real ports when 0 was asked for).
    pub tcp_addrs: Vec<SocketAddr>,
    /// The unix socket path, when one was asked for.
    pub unix_socket: Option<PathBuf>,
    /// The admin endpoint's address, unless `--admin-listen off`.
    pub admin_addr: Option<SocketAddr>,
    health: Arc<Health>,
    stop: watch::Sender<bool>,
    accept_loops: JoinSet<()>,
    context: Arc<SessionContext>,
}

impl RunningSidecar {
    /// The first TCP address (handy in tests).
    pub fn addr(&self) -> SocketAddr {
        self.tcp_addrs[0]
    }

    /// How many clients currently hold a cancel key (i.e. are connected and logged in).
    pub fn connected_clients(&self) -> usize {
        self.context.cancels.len()
    }

    /// (idle, open) upstream connections of the pools for `user@database` (whatever the other
    /// startup parameters), if any exist.
    pub fn pool_counts(&self, user: &str, database: &str) -> Option<(usize, usize)> {
        self.context.pools.counts_for(user, database)
    }

    /// Why the sidecar is not ready to serve a new client, if it is not (what `/readyz` says).
    pub async fn readiness(&self) -> Result<(), String> {
        self.health.readiness().await
    }

    /// The sidecar's shutdown state: ask for a shutdown with [`Shutdown::request`].
    pub fn shutdown(&self) -> &Arc<Shutdown> {
        &self.context.shutdown
    }

    /// Graceful shutdown: draining starts (new clients get 57P01, idle ones are closed with
    /// it, transactions in flight run to their end) and lasts until every client is gone or
    /// `grace` has passed; then the listeners close. What is still open is closed when the
    /// runtime stops. The number of client connections left open at the end is returned.
    pub async fn drain(self, grace: Duration) -> usize {
        let shutdown = self.context.shutdown.clone();
        shutdown.begin_drain();
        // Idle clients wait on their own closer, not on the shutdown: wake each.
        self.context.cancels.wake_all();
        info!(
            clients = shutdown.sessions(),
            grace_s = grace.as_secs_f64(),
            "draining: closing idle clients, letting transactions finish"
        );
        let _ = tokio::time::timeout(grace, shutdown.all_sessions_gone()).await;
        let left = shutdown.sessions();
        if left > 0 {
            warn!(
                clients = left,
                "shutdown grace period over: closing the remaining client connections"
            );
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
        let joined = async { while self.accept_loops.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(2), joined)
            .await
            .is_err()
        {
            self.accept_loops.abort_all();
        }
        self.remove_socket_file();
    }

    fn remove_socket_file(&self) {
        if let Some(path) = &self.unix_socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for RunningSidecar {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.remove_socket_file();
    }
}

/// Binds the listeners and starts accepting. With IAM auth and `credentials` = None, the
/// standard AWS credentials chain is used.
pub async fn start(
    config: Config,
    credentials: Option<Arc<CredentialCache>>,
) -> Result<RunningSidecar, StartError> {
    crate::metrics::install();
    let admin_listener = match config.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: format!("{addr} (--admin-listen)"),
                    source,
                })?,
        ),
        None => None,
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(|e| StartError::Setup(e.to_string()))?;
    let mut tcp_listeners = Vec::new();
    for addr in &config.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        tcp_listeners.push(listener);
    }
    let tcp_addrs = tcp_listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Setup(e.to_string()))?;

    let mut unix = None;
    if let Some(dir) = &config.unix_socket {
        let port = tcp_addrs.first().map_or(5432, |a| a.port());
        let path = dir.join(format!(".s.PGSQL.{port}"));
        remove_stale_socket(&path)?;
        let listener = UnixListener::bind(&path).map_err(|source| StartError::Bind {
            addr: path.display().to_string(),
            source,
        })?;
        unix = Some((listener, path));
    }

    let credentials = match (&config.auth, credentials) {
        (UpstreamAuth::Iam { region, .. }, None) => Some(Arc::new(
            CredentialCache::from_default_chain(region)
                .await
                .map_err(|e| StartError::Setup(e.to_string()))?,
        )),
        (_, given) => given,
    };
    let authenticator =
        Authenticator::from_config(&config, credentials).map_err(StartError::Setup)?;
    let connector = Connector::new(&config, authenticator).map_err(StartError::Setup)?;
    let pools = Pools::new(Arc::new(connector), config.pool.clone());
    let shutdown = Arc::new(Shutdown::new());
    let context = Arc::new(SessionContext::new(pools.clone(), &config, shutdown));

    let (stop, stopped) = watch::channel(false);
    let mut accept_loops = JoinSet::new();
    for key in &config.warm_pools {
        pools.warm(key.clone());
    }
    accept_loops.spawn(pools.maintain(stopped.clone()));
    accept_loops.spawn(crate::metrics::upkeep(stopped.clone()));
    for listener in tcp_listeners {
        accept_loops.spawn(accept_tcp(listener, context.clone(), stopped.clone()));
    }
    let unix_socket = unix.map(|(listener, path)| {
        accept_loops.spawn(accept_unix(listener, context.clone(), stopped.clone()));
        path
    });
    let health = Health::new(context.clone());
    if let Some(listener) = admin_listener {
        accept_loops.spawn(crate::admin::serve(
            listener,
            health.clone(),
            stopped.clone(),
        ));
    }
    health.mark_started();
    warn_about_exposure(&config, &tcp_addrs);
    info!(
        listen = ?tcp_addrs,
        unix_socket = ?unix_socket,
        admin = ?admin_addr,
        upstream = %config.upstream,
        upstream_addr = ?config.upstream_addr.as_ref().map(|e| e.to_string()),
        auth = match &config.auth {
            UpstreamAuth::Iam { .. } => "iam",
            UpstreamAuth::Password(_) => "password",
        },
        region = match &config.auth {
            UpstreamAuth::Iam { region, .. } => region.as_str(),
            UpstreamAuth::Password(_) => "-",
        },
        tls_mode = ?config.tls_mode,
        pool_mode = ?config.pool.mode,
        pool_size = config.pool.size,
        "rds-iam-sidecar ready"
    );
    Ok(RunningSidecar {
        tcp_addrs,
        unix_socket,
        admin_addr,
        health,
        stop,
        accept_loops,
        context,
    })
}

/// Warnings for settings that are allowed but weaken the defaults.
fn warn_about_exposure(config: &Config, tcp_addrs: &[SocketAddr]) {
    if tcp_addrs.iter().any(|a| !a.ip().is_loopback()) {
        warn!(
            listen = ?tcp_addrs,
            "listening beyond loopback: clients are not authenticated by the sidecar, so anyone who can reach this port logs in as the database users the sidecar's IAM role may use"
        );
    }
    if config.pool.idle_timeout >= crate::config::RDS_PROXY_IDLE_CLIENT_TIMEOUT {
        warn!(idle_timeout = ?config.pool.idle_timeout, "--idle-timeout is not below RDS Proxy's default IdleClientTimeout (1800 s): the proxy may close idle pooled connections first (they are replaced, but each costs a new IAM login)");
    }
    if matches!(config.auth, UpstreamAuth::Iam { .. }) && config.tls_mode == TlsMode::Require {
        warn!(
            "--tls-mode require does not check the upstream certificate: a man in the middle could capture IAM tokens (valid 15 minutes); prefer verify-full"
        );
    }
}

/// Removes a socket file left by a sidecar that is gone; a live one is an error.
fn remove_stale_socket(path: &std::path::Path) -> Result<(), StartError> {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StartError::Bind {
                addr: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process is listening on this socket",
                ),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

async fn accept_tcp(
    listener: TcpListener,
    context: Arc<SessionContext>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = async { let _ = stopped.wait_for(|s| *s).await; } => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    crate::metrics::client_accepted();
                    let _ = socket.set_nodelay(true);
                    tokio::spawn(serve_client(ClientStream::Tcp(socket), Some(peer), context.clone()));
                }
                Err(e) => {
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

async fn accept_unix(
    listener: UnixListener,
    context: Arc<SessionContext>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = async { let _ = stopped.wait_for(|s| *s).await; } => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    crate::metrics::client_accepted();
                    tokio::spawn(serve_client(ClientStream::Unix(socket), None, context.clone()));
                }
                Err(e) => {
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}
