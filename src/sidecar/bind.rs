//! Binding the sockets before anything starts: each endpoint's TCP addresses and unix socket
//! (a stale socket file of a dead sidecar is replaced, a live one is an error) and the admin
//! listener, so that a port in use is a start-up error naming the flag.

use std::net::SocketAddr;

use tokio::net::{TcpListener, UnixListener};

use super::{EndpointListeners, StartError};
use crate::frontend::listener::Listener;
use crate::settings::EndpointSettings;

/// One endpoint's bound sockets, before its engine starts.
pub(super) struct Bound {
    pub(super) listeners: Vec<Listener>,
    pub(super) addresses: EndpointListeners,
}

/// The admin listener (`--admin-listen`) and its bound address, when there is one.
pub(super) async fn bind_admin(
    addr: Option<SocketAddr>,
) -> Result<(Option<TcpListener>, Option<SocketAddr>), StartError> {
    let Some(addr) = addr else {
        return Ok((None, None));
    };
    let listener = bind_tcp(addr, " (--admin-listen)").await?;
    let bound = listener
        .local_addr()
        .map_err(|e| StartError::Setup(e.to_string()))?;
    Ok((Some(listener), Some(bound)))
}

async fn bind_tcp(addr: SocketAddr, what: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: format!("{addr}{what}"),
            source,
        })
}

/// Binds one endpoint's TCP addresses and its unix socket, named after its first port.
pub(super) async fn bind_endpoint(endpoint: &EndpointSettings) -> Result<Bound, StartError> {
    let what = format!(" (listener of upstream {})", endpoint.name());
    let mut listeners = Vec::new();
    let mut tcp_addrs = Vec::new();
    for addr in &endpoint.listen {
        let listener = bind_tcp(*addr, &what).await?;
        tcp_addrs.push(
            listener
                .local_addr()
                .map_err(|e| StartError::Setup(e.to_string()))?,
        );
        listeners.push(Listener::tcp(listener).map_err(|e| StartError::Setup(e.to_string()))?);
    }
    let mut unix_socket = None;
    if let Some(dir) = &endpoint.unix_socket {
        let port = tcp_addrs.first().map_or(5432, |a| a.port());
        let path = dir.join(format!(".s.PGSQL.{port}"));
        remove_stale_socket(&path)?;
        let listener = UnixListener::bind(&path).map_err(|source| StartError::Bind {
            addr: path.display().to_string(),
            source,
        })?;
        listeners.push(Listener::Unix(listener));
        unix_socket = Some(path);
    }
    Ok(Bound {
        listeners,
        addresses: EndpointListeners {
            upstream: endpoint.name(),
            tcp_addrs,
            unix_socket,
        },
    })
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
