//! The second and third floors of `benches/pgbench-compare.sh`'s CPU measure (issue 16): the
//! sidecar's own stack with none of the sidecar in it. A current-thread tokio runtime (the
//! sidecar's default), one task per client, each client with an upstream connection of its
//! own, and each read written to the other side at once: no pool, no protocol, no metrics.
//! With `--tls CA_FILE` the upstream connection is TLS through tokio-rustls and ring, as the
//! sidecar's (PostgreSQL's SSLRequest, then a handshake verifying `localhost` against
//! CA_FILE); without it, plaintext.
//!
//! Against `examples/copy_forwarder.rs` (mio, plaintext) it measures what tokio's readiness
//! and task machinery costs per transaction; with `--tls`, what tokio-rustls adds. With
//! `--io-uring` both sockets are the sidecar's `uring::Socket` on a ring set up as `main` sets
//! it up: what the sidecar's stack costs with completion I/O (`--socket-io io-uring`, its
//! default). The sidecar cannot go below these figures without leaving that stack.
//!
//! Run: `cargo run --release --example tokio_floor -- LISTEN_PORT UPSTREAM_PORT [--tls CA_FILE]
//! [--io-uring]` (both on 127.0.0.1). A benchmark tool, not a product.

use std::io::{Error, ErrorKind};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use rds_iam_sidecar::uring::{self, Socket};

/// PostgreSQL's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

fn main() -> std::io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let io_uring = args.last().is_some_and(|last| last == "--io-uring");
    if io_uring {
        args.pop();
    }
    let (listen, upstream, ca_file) = match &args[..] {
        [listen, upstream] => (listen, upstream, None),
        [listen, upstream, flag, ca] if flag == "--tls" => (listen, upstream, Some(ca)),
        _ => usage(),
    };
    let (Ok(listen), Ok(upstream)) = (listen.parse::<u16>(), upstream.parse::<u16>()) else {
        usage()
    };
    let connector = ca_file.map(|path| connector(path)).transpose()?;
    let mut builder = tokio::runtime::Builder::new_current_thread();
    if !io_uring {
        uring::forbid();
    } else {
        if !uring::install(true) {
            return Err(Error::other(uring::describe()));
        }
        builder.on_thread_park(uring::submit_before_park);
    }
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async move {
        uring::spawn_reaper();
        serve(listen, upstream, connector).await
    })
}

fn usage() -> ! {
    eprintln!("usage: tokio_floor LISTEN_PORT UPSTREAM_PORT [--tls CA_FILE] [--io-uring]");
    std::process::exit(2)
}

fn connector(ca_file: &str) -> std::io::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca_file).map_err(Error::other)? {
        roots
            .add(certificate.map_err(Error::other)?)
            .map_err(Error::other)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn serve(listen: u16, upstream: u16, connector: Option<TlsConnector>) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", listen)).await?;
    loop {
        let (client, _) = listener.accept().await?;
        let connector = connector.clone();
        tokio::spawn(async move {
            if let Err(error) = forward(client, upstream, connector).await {
                eprintln!("tokio_floor: {error}");
            }
        });
    }
}

async fn forward(
    client: TcpStream,
    upstream: u16,
    connector: Option<TlsConnector>,
) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let client = Socket::new(client)?;
    let mut server = TcpStream::connect(("127.0.0.1", upstream)).await?;
    server.set_nodelay(true)?;
    let Some(connector) = connector else {
        return copy_both_ways(client, Socket::new(server)?).await;
    };
    server.write_all(&SSL_REQUEST).await?;
    if server.read_u8().await? != b'S' {
        return Err(Error::new(ErrorKind::Unsupported, "the server refused TLS"));
    }
    let name = ServerName::try_from("localhost").map_err(Error::other)?;
    copy_both_ways(client, connector.connect(name, Socket::new(server)?).await?).await
}

/// Each read written to the other side at once, until either side ends. Without
/// `--io-uring` the sockets are tokio's (no ring was installed: `uring::Socket` uses tokio).
async fn copy_both_ways<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: Socket,
    mut server: S,
) -> std::io::Result<()> {
    let (mut up, mut down) = (vec![0; 32 * 1024], vec![0; 32 * 1024]);
    loop {
        tokio::select! {
            read = client.read(&mut up) => match read? {
                0 => return Ok(()),
                n => {
                    server.write_all(&up[..n]).await?;
                    server.flush().await?;
                }
            },
            read = server.read(&mut down) => match read? {
                0 => return Ok(()),
                n => client.write_all(&down[..n]).await?,
            },
        }
    }
}
