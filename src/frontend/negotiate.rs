//! What a client connection sends before its startup packet, within `--client-login-timeout`:
//! SSLRequest (answered `S` and a TLS handshake when `--client-tls` is on, else `N`),
//! GSSENCRequest (`N`), PostgreSQL 17's direct TLS (a ClientHello as the first bytes, ALPN
//! `postgresql` required), a CancelRequest (handed to the cancel handler; the connection ends),
//! and the errors of first packets that cannot be read.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, timeout_at};
use tracing::debug;

use crate::error::{PgError, sqlstate};
use crate::forward::buffers::Buffer;
use crate::protocol::startup::{
    InitialPacket, StartupError, StartupRequest, decode_initial_packet, initial_packet_length,
    read_initial_packet, read_rest_of_packet,
};
use crate::stream::ClientStream;
use crate::uring::Socket;

use super::Frontend;
use super::cancel_request::handle_cancel;
use super::client_tls::{ALPN_POSTGRESQL, ClientTls};

/// The first byte of a TLS handshake record: a client starting TLS directly.
const TLS_HANDSHAKE: u8 = 0x16;

/// What the packets before the startup packet came to.
enum Negotiated {
    Startup(Box<StartupRequest>),
    /// A CancelRequest was handled; the connection ends.
    Cancelled,
    /// TLS next: after `S` to an SSLRequest, or directly (`direct`: ALPN is required).
    Tls {
        direct: bool,
    },
}

/// Reads up to the startup packet, upgrading to TLS when asked and offered; `None` when the
/// connection ends first (a cancel, a refusal, a drain, the login timeout: the client was told
/// where it can be).
pub(super) async fn first_packets(
    mut stream: ClientStream,
    context: &Frontend,
) -> Option<(ClientStream, Box<StartupRequest>)> {
    let deadline = Instant::now() + context.login_timeout;
    loop {
        let read = tokio::select! {
            read = timeout_at(deadline, negotiate(&mut stream, context)) => read,
            // A client that has not logged in yet does not hold up a drain.
            () = context.shutdown.draining() => {
                super::refuse_for_shutdown(&mut stream, context).await;
                return None;
            }
        };
        match read {
            Ok(Ok(Negotiated::Startup(startup))) => return Some((stream, startup)),
            Ok(Ok(Negotiated::Cancelled)) => return None,
            Ok(Ok(Negotiated::Tls { direct })) => {
                let tls = context.tls.as_deref()?;
                // Boxed: the handshake's state is large and lives only while it runs.
                let upgraded = timeout_at(deadline, Box::pin(upgrade(stream, tls, direct)));
                stream = upgraded.await.ok()??;
            }
            Ok(Err(error)) => {
                debug!(%error, "client startup failed");
                if let Some(pg) = startup_error_to_pg(&error) {
                    super::send_error(&mut stream, &pg).await;
                }
                return None;
            }
            Err(_) => {
                super::send_error(&mut stream, &login_timeout_error(context.login_timeout)).await;
                return None;
            }
        }
    }
}

/// Answers SSL/GSS requests until the startup packet, a cancel, or TLS to start.
async fn negotiate(
    stream: &mut ClientStream,
    context: &Frontend,
) -> Result<Negotiated, StartupError> {
    // Boxed: only a listener with TLS looks, and a connection waiting carries the look's state.
    if context.tls.is_some() && Box::pin(starts_tls_directly(stream)).await? {
        return Ok(Negotiated::Tls { direct: true });
    }
    // The first read of a TCP client is tried before epoll says the socket is readable (see
    // `read_first_packet`); not after the look for TLS, which waited for it.
    let mut unannounced = context.tls.is_none();
    loop {
        let packet = match stream {
            ClientStream::Tcp(socket) => {
                read_first_packet(socket, std::mem::take(&mut unannounced)).await
            }
            _ => read_initial_packet(stream).await,
        };
        match packet? {
            InitialPacket::SslRequest => match (&context.tls, &*stream) {
                (Some(_), ClientStream::Tcp(_)) => {
                    stream.write_all(b"S").await?;
                    return Ok(Negotiated::Tls { direct: false });
                }
                (_, ClientStream::Tls(_)) => {
                    return Err(StartupError::Invalid(
                        "SSLRequest over a connection already encrypted".to_owned(),
                    ));
                }
                // No TLS over a unix socket (as PostgreSQL): only a listener without TLS
                // says why.
                (tls, _) => {
                    if tls.is_none() {
                        context.note_tls_refused();
                    }
                    stream.write_all(b"N").await?;
                }
            },
            InitialPacket::GssEncRequest => stream.write_flushed(b"N").await?,
            InitialPacket::Cancel { pid, secret } => {
                // Boxed: forwarding holds a TLS connection's future, which a connection waiting
                // for its startup packet must not carry.
                Box::pin(handle_cancel(context, pid, &secret)).await;
                return Ok(Negotiated::Cancelled);
            }
            InitialPacket::Startup(startup) => return Ok(Negotiated::Startup(startup)),
        }
    }
}

/// Reads one initial packet from a plain TCP client, in one read where it can. The packet is
/// usually all there: reading its length and its body apart cost two `recv`s, and a third that
/// answered `EAGAIN` after the greeting (the readiness two exact reads leave), about 1 µs of a
/// connect-per-transaction connection's ~50 (strace, issue 16). What the client sent after
/// the packet, read with it, goes back to the socket for the next read.
///
/// `unannounced`: the socket was just accepted and nothing waited for it yet. The packet is
/// then read before epoll has said the socket is readable: it usually came with the
/// connection, and waiting for epoll to say so first cost a turn of the event loop and the
/// login timeout's timer (~700 instructions a connection, callgrind, issue 16).
async fn read_first_packet(
    socket: &mut Socket,
    mut unannounced: bool,
) -> Result<InitialPacket, StartupError> {
    let start = loop {
        if !unannounced {
            std::future::poll_fn(|cx| socket.poll_read_ready(cx)).await?;
        }
        // Taken only once the bytes are (or may be) there: a client slow to send holds none.
        let mut buffer = Buffer::take();
        let read = if std::mem::take(&mut unannounced) {
            socket.read_unannounced(&mut buffer)
        } else {
            socket.try_read(&mut buffer)
        };
        match read {
            Ok(0) => return Err(StartupError::Closed),
            Ok(n) => match whole_packet(socket, &buffer[..n]) {
                Some(decoded) => return decoded,
                // Cut (a large packet, a slow client): the rest is read exactly.
                None => break buffer[..n].to_vec(),
            },
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error.into()),
        }
    };
    // Boxed: rare, and a connection waiting for its startup packet must not carry its state.
    Box::pin(read_rest_of_packet(socket, &start)).await
}

/// The packet at the start of `read` when all of it is there (what follows it goes back to
/// `socket`); `None` when the read holds only part of it.
fn whole_packet(socket: &mut Socket, read: &[u8]) -> Option<Result<InitialPacket, StartupError>> {
    if read.len() < 4 {
        return None;
    }
    let length = match initial_packet_length(read) {
        Ok(length) => length,
        Err(error) => return Some(Err(error)),
    };
    let packet = read.get(..length)?;
    socket.unread(&read[length..]);
    Some(decode_initial_packet(packet))
}

/// The first byte of a plaintext TCP connection is a TLS handshake record (looked at without
/// taking it; only when the listener has TLS).
async fn starts_tls_directly(stream: &ClientStream) -> std::io::Result<bool> {
    let ClientStream::Tcp(socket) = stream else {
        return Ok(false);
    };
    let mut first = [0u8; 1];
    // Before any read: nothing has gone through the socket's ring yet.
    let n = socket.peek(&mut first).await?;
    Ok(n == 1 && first[0] == TLS_HANDSHAKE)
}

/// The TLS handshake; `None` when it fails (nothing can be said to the client in plaintext).
async fn upgrade(stream: ClientStream, tls: &ClientTls, direct: bool) -> Option<ClientStream> {
    let ClientStream::Tcp(socket) = stream else {
        return None;
    };
    let tcp = match socket.into_tcp().await {
        Ok(tcp) => tcp,
        Err(error) => {
            debug!(%error, "client TLS refused");
            return None;
        }
    };
    let upgraded = match tls.accept(tcp).await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            debug!(%error, "client TLS handshake failed");
            return None;
        }
    };
    // PostgreSQL 17 refuses direct TLS without ALPN `postgresql`, so that a TLS client of
    // another protocol is never taken for a PostgreSQL client.
    if direct && upgraded.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
        debug!("direct TLS without ALPN 'postgresql' refused");
        return None;
    }
    Some(ClientStream::Tls(Box::new(upgraded)))
}

fn login_timeout_error(timeout: Duration) -> PgError {
    PgError::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        format!(
            "rds-iam-sidecar: no startup packet within {} (--client-login-timeout)",
            humantime::format_duration(timeout)
        ),
    )
}

/// The ErrorResponse for a first packet that cannot be read (none when the client is gone).
fn startup_error_to_pg(error: &StartupError) -> Option<PgError> {
    match error {
        StartupError::Closed | StartupError::Io(_) => None,
        StartupError::UnsupportedProtocol { .. } => Some(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("rds-iam-sidecar: {error}"),
        )),
        StartupError::BadLength(_) | StartupError::Invalid(_) => Some(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("rds-iam-sidecar: {error}"),
        )),
    }
}
