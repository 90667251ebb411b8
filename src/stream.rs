//! The two kinds of socket a session joins: a client stream (TCP or unix socket, plaintext on
//! the local side unless `--client-tls` is on and the client asked for it) and an upstream
//! stream (TLS over TCP, or plain TCP in password mode with `--tls-mode disable`). Both are
//! enums so the hot loop is monomorphic, with no boxing on the plaintext paths.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::server::TlsStream as ServerTlsStream;

use crate::uring::{Socket, peek_one, poll_read_by, read_noting_short};

/// Implements AsyncRead + AsyncWrite for an enum by delegating to each variant.
macro_rules! delegate_io {
    ($name:ident { $($variant:ident),+ }) => {
        impl AsyncRead for $name {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }

        delegate_write!($name { $($variant),+ });
    };
}

/// Implements AsyncWrite for an enum by delegating to each variant.
macro_rules! delegate_write {
    ($name:ident { $($variant:ident),+ }) => {
        impl AsyncWrite for $name {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $(Self::$variant(s) => s.is_write_vectored(),)+
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

/// A local client's connection.
#[derive(Debug)]
pub enum ClientStream {
    /// TCP, its reads and writes through io_uring where the thread has a ring.
    Tcp(Socket),
    Unix(UnixStream),
    /// TCP with TLS (`--client-tls`); boxed, its buffers are large.
    Tls(Box<ServerTlsStream<TcpStream>>),
}

delegate_write!(ClientStream { Tcp, Unix, Tls });

/// Reads through [`ClientStream::try_read`]: a short read also clears the readiness, so the
/// read after it waits for the client instead of asking the kernel for nothing.
impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Self::Tls(tls) = this {
            return Pin::new(tls).poll_read(cx, buf);
        }
        poll_read_by(
            this,
            cx,
            buf,
            ClientStream::poll_read_ready,
            ClientStream::try_read,
        )
    }
}

/// A connection to the upstream database or proxy.
#[derive(Debug)]
pub enum UpstreamStream {
    Tls(Box<TlsStream<Socket>>),
    /// Boxed too: rare (`--tls-mode disable`), and a pooled connection stays small.
    Plain(Box<Socket>),
}

delegate_io!(UpstreamStream { Tls, Plain });

impl ClientStream {
    /// Ready when a read will find something (on a ring, a `recv` completed) or when tokio saw
    /// the socket readable, which may be left over from an earlier read that did not drain it
    /// (follow with a `try_read`, which clears it). Over TLS, also ready when the TLS layer
    /// holds plaintext already, or the client closed.
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Tcp(s) => s.poll_read_ready(cx),
            Self::Unix(s) => s.poll_read_ready(cx),
            Self::Tls(tls) => {
                let (tcp, connection) = tls.get_mut();
                match connection.process_new_packets() {
                    Ok(state)
                        if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() =>
                    {
                        tcp.poll_read_ready(cx)
                    }
                    // Data, a close, or an error: the next read reports it.
                    _ => Poll::Ready(Ok(())),
                }
            }
        }
    }

    /// Whether the client has left (closed or reset its end), by what its socket holds now,
    /// without taking anything: one `recv` peek. Bytes waiting (a client that pipelines) count
    /// as a client still there.
    pub fn is_gone(&self) -> bool {
        let peeked = match self {
            Self::Tcp(socket) => peek_one(socket.tcp()),
            Self::Unix(socket) => peek_one(socket),
            Self::Tls(tls) => peek_one(tls.get_ref().0),
        };
        match peeked {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) => !matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ),
        }
    }

    /// Writes all of `bytes` and flushes: over TLS a write may leave the end of the bytes in
    /// rustls's buffer, which only a flush sends (a no-op on plain sockets).
    pub async fn write_flushed(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write_all(bytes).await?;
        self.flush().await
    }

    /// Reads what is there without waiting; `WouldBlock` when nothing is.
    ///
    /// A read that returns less than `buf` holds emptied the socket's receive queue, so it
    /// also clears tokio's read readiness (tokio clears it only on `WouldBlock`): the next
    /// read then waits for the next event instead of costing a `recv` that answers `EAGAIN`,
    /// one syscall per round trip. The readiness cleared is the one seen *before* the read:
    /// data that arrives after it is a newer event, which tokio keeps (see `try_io`).
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.try_read(buf),
            Self::Unix(s) => {
                let mut short = None;
                let result = s.try_io(Interest::READABLE, || read_noting_short(s, buf, &mut short));
                match (result, short) {
                    (Err(error), Some(n)) if error.kind() == io::ErrorKind::WouldBlock => Ok(n),
                    (result, _) => result,
                }
            }
            Self::Tls(tls) => try_read_tls(tls, buf),
        }
    }
}

/// Reads what the TLS layer can give without waiting: a poll with a waker that does nothing
/// (the caller waits with [`ClientStream::poll_read_ready`], which registers its own).
fn try_read_tls(tls: &mut ServerTlsStream<TcpStream>, buf: &mut [u8]) -> io::Result<usize> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut read = ReadBuf::new(buf);
    match Pin::new(tls).poll_read(&mut cx, &mut read) {
        Poll::Ready(Ok(())) => Ok(read.filled().len()),
        Poll::Ready(Err(error)) => Err(error),
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl UpstreamStream {
    /// Whether a read would find something now, as far as is known without a syscall (TLS-
    /// buffered data not counted); on a ring, asking may submit the `recv` that waits.
    pub fn poll_socket_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(s) => s.poll_read_ready(cx),
            Self::Tls(tls) => tls.get_mut().0.poll_read_ready(cx),
        }
    }

    /// Ready when the server sent something (or closed), including plaintext or TLS records
    /// the TLS layer already holds; needs no buffer.
    pub fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(s) => s.poll_readable(cx),
            Self::Tls(tls) => {
                let (socket, connection) = tls.get_mut();
                match connection.process_new_packets() {
                    Ok(state)
                        if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() =>
                    {
                        socket.poll_readable(cx)
                    }
                    // Data, a close, or an error: the next read reports it.
                    _ => Poll::Ready(Ok(())),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_short_read_clears_readiness_and_misses_nothing_after_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut peer = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let mut client = ClientStream::Tcp(
            Socket::new(listener.accept().await.expect("accept").0).expect("register"),
        );
        let mut buf = [0u8; 64];

        peer.write_all(b"hello").await.expect("write");
        assert_eq!(client.read(&mut buf).await.expect("read"), 5);
        // The short read emptied the socket and cleared tokio's readiness: the next read
        // waits for the client without a recv.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(client.poll_read_ready(&mut cx).is_pending());

        peer.write_all(b"again!").await.expect("write");
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("data sent after a cleared readiness still wakes the reader")
            .expect("read");
        assert_eq!(&buf[..n], b"again!");

        // A full read leaves readiness as it was: more may be waiting.
        peer.write_all(&[7u8; 100]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(client.read(&mut buf).await.expect("read"), 64);
        assert_eq!(client.read(&mut buf).await.expect("read"), 36);
        drop(peer);
        assert_eq!(client.read(&mut buf).await.expect("end of stream"), 0);
    }
}
