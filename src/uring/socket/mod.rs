//! [`Socket`]: a TCP connection whose writes go through the ring of the thread that made it
//! when that thread has one, through its outbox when it has that instead (`main`'s runtime
//! where io_uring is refused or `--socket-io epoll`: held until the end of the turn, then one
//! `send` each, `outbox/`), and through tokio otherwise (a multi-thread runtime, a test's).
//! Reads always go through tokio: its readiness, then one `recv`.
//!
//! A write copies the bytes into a send buffer of the ring's, submits the `send` and returns
//! at once (the kernel sends it at the thread's next park, in the same `io_uring_enter` as
//! everyone else's). At most one `send` is in flight: a write that finds one submits the
//! queue at once and waits only if the kernel could not take it (the socket's buffer is
//! full), as a TCP socket's write would; errors are reported by the call after the `send`. A
//! flush does not wait (see `poll_flush`); a shutdown does.
//!
//! Why reads do not use the ring too (they did in session 14): the sends batched into the
//! park's one enter are where io_uring saves, and a `recv` through the ring cost more than it
//! saved. It waits armed in the kernel, and its completion comes back through the eventfd, an
//! `epoll_wait` and the reaper task before the reader runs, where tokio's readiness wakes the
//! reader directly. Reading through tokio on the same ring (an A/B, `pgbench -S`, CPU µs a
//! transaction): 8 clients 16.0 -> 14.7 (session) and 16.2 -> 14.8 (transaction), a lone
//! client 56.8 -> 52.2 (epoll 53.6), a connection per transaction 67.4 -> 61.3 (epoll 62.2);
//! and an idle client holds no `recv` slot, and the ring no provided buffers (512 KiB).
//!
//! On a ring the socket is registered with epoll for reads only: a socket registered for
//! writes too is writable at once, and epoll said so after each new client's first `recv`,
//! one `epoll_wait` and one event for nothing a connection (strace, issue 16). The sends
//! never wait for epoll; off a ring, the writes go through tokio's readiness as before.
//!
//! A socket dropped with a `send` queued hands the queue to the kernel before its descriptor
//! closes: a queued entry names a descriptor number, which a socket accepted after the close
//! could reuse (where that cannot be done, the descriptor is kept open).

use std::io;
use std::mem::ManuallyDrop;
use std::net::TcpStream as StdTcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::outbox::with_outbox;
use super::thread::with_ring;
use super::tokio_io::{poll_peeked, poll_read_by, read_direct};
use write::Writing;

mod write;

/// A TCP connection writing through io_uring where it can (see the module's doc).
#[derive(Debug)]
pub struct Socket {
    ops: Ops,
    /// Closed in `Drop` only once no queued entry names its descriptor. Registered for reads
    /// only where the writes go through the ring.
    tcp: ManuallyDrop<AsyncFd<StdTcpStream>>,
}

/// 16 bytes: a client's login future and idle session hold one (src/frontend's size test).
#[derive(Debug, Default)]
struct Ops {
    /// Bytes read ahead and given back ([`Socket::unread`]): the next reads return them first.
    carried: Option<Box<Carried>>,
    write: Writing,
}

/// Bytes a reader took from the socket and gave back.
struct Carried {
    bytes: Box<[u8]>,
    /// How many of `bytes` were read again already.
    at: usize,
}

/// Only the count: the bytes are a client's, maybe a password.
impl std::fmt::Debug for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carried")
            .field("left", &(self.bytes.len() - self.at))
            .finish()
    }
}

impl Socket {
    /// A connected tokio stream (an upstream's), registered anew for this socket's interests.
    pub fn new(tcp: TcpStream) -> io::Result<Self> {
        Self::accepted(tcp.into_std()?)
    }

    /// A non-blocking connected socket (a client just accepted), registered with this thread's
    /// runtime: for reads only where its writes go through the ring or the outbox.
    pub fn accepted(tcp: StdTcpStream) -> io::Result<Self> {
        let (write, interest) = if with_ring(|_| ()).is_some() {
            (Writing::Idle, Interest::READABLE)
        } else if with_outbox(|_| ()).is_some() {
            (Writing::Outbox, Interest::READABLE)
        } else {
            (Writing::Tokio, Interest::READABLE | Interest::WRITABLE)
        };
        // SAFETY: a `TcpStream` owns its descriptor and answers the same one for its life; the
        // `AsyncFd` owns the stream, and nothing closes it while it does.
        let tcp = unsafe { AsyncFd::register_with_interest(tcp, interest) }?;
        Ok(Socket {
            ops: Ops {
                carried: None,
                write,
            },
            tcp: ManuallyDrop::new(tcp),
        })
    }

    /// Gives back `bytes` read ahead (what a client sent after its startup packet, read with
    /// it): the next reads return them before anything else.
    pub fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut joined = bytes.to_vec();
        if let Some(carried) = self.ops.carried.take() {
            joined.extend_from_slice(&carried.bytes[carried.at..]);
        }
        self.ops.carried = Some(Box::new(Carried {
            bytes: joined.into_boxed_slice(),
            at: 0,
        }));
    }

    /// The TCP stream (socket options, addresses).
    pub fn tcp(&self) -> &StdTcpStream {
        self.tcp.get_ref()
    }

    /// Looks at the first bytes without taking them, once there are some (before any read).
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp
            .async_io(Interest::READABLE, |tcp| tcp.peek(buf))
            .await
    }

    /// The TCP stream back, for a TLS handshake, once what was written has gone (the 'S'
    /// answering an SSLRequest); refused when bytes were read ahead (a client's bytes sent
    /// before its TLS handshake must not be trusted).
    pub async fn into_tcp(mut self) -> io::Result<TcpStream> {
        std::future::poll_fn(|cx| self.poll_sent(cx)).await?;
        let idle = matches!(
            self.ops.write,
            Writing::Idle | Writing::Tokio | Writing::Outbox
        );
        if self.ops.carried.is_none() && idle {
            // Nothing in flight or held: the operations' state is plain data.
            let mut this = ManuallyDrop::new(self);
            // SAFETY: `this` is never dropped, and its stream is taken once.
            let tcp = unsafe { ManuallyDrop::take(&mut this.tcp) };
            return TcpStream::from_std(tcp.into_inner());
        }
        // Dropped as a whole: what is in flight is released before the descriptor closes.
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bytes arrived before the TLS handshake",
        ))
    }

    /// Ready when a read may find something: bytes given back, or tokio saw the socket
    /// readable, which may be left over from an earlier read (a `try_read` clears it).
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ops.carried.is_some() {
            return Poll::Ready(Ok(()));
        }
        self.tcp.poll_read_ready(cx).map_ok(drop)
    }

    /// Reads what is there without waiting; `WouldBlock` when nothing is (then
    /// [`Socket::poll_read_ready`] waits).
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(carried) = &mut self.ops.carried else {
            return read_direct(&self.tcp, buf);
        };
        let left = &carried.bytes[carried.at..];
        let n = buf.len().min(left.len());
        buf[..n].copy_from_slice(&left[..n]);
        carried.at += n;
        if carried.at == carried.bytes.len() {
            self.ops.carried = None;
        }
        Ok(n)
    }

    /// Reads what is there without asking tokio whether the socket is readable: for the first
    /// read of a socket just accepted, which tokio has not seen readable yet (its own accept
    /// assumes that; a socket made from an accepted descriptor starts unready). `WouldBlock`
    /// when nothing is there; tokio's readiness is left as it was.
    pub fn read_unannounced(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ops.carried.is_some() {
            return self.try_read(buf);
        }
        use std::io::Read;
        self.tcp.get_ref().read(buf)
    }

    /// Ready when the peer sent something or closed: tokio's readiness confirmed by a one-byte
    /// peek (tokio keeps a socket marked readable after a read that did not drain it).
    pub fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ops.carried.is_some() {
            return Poll::Ready(Ok(()));
        }
        poll_peeked(&self.tcp, cx)
    }
}

impl Ops {
    /// Gives back what the socket holds in the ring or the outbox; whether its descriptor may
    /// close now (no queued entry names it). A `send` in flight gets the flush to finish and is
    /// cancelled if it has not (a peer that stopped reading); a held write gets one `send`.
    fn release(&mut self, fd: RawFd) -> bool {
        let slot = match std::mem::take(&mut self.write) {
            Writing::InFlight(slot) => slot,
            // Off the outbox's thread the slot cannot be freed: the descriptor is kept, as below.
            Writing::Held(slot) => {
                return with_outbox(|outbox| outbox.abandon(slot, fd)).is_some();
            }
            _ => return true,
        };
        with_ring(|ring| {
            ring.abandon(slot, fd);
            let flushed = ring.flush();
            if ring.is_waiting(slot, fd) {
                ring.cancel(slot);
                return ring.flush();
            }
            flushed
        })
        .unwrap_or(false)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let released = self.ops.release(self.tcp.as_raw_fd());
        // SAFETY: the stream is taken once, here, and not used after.
        let tcp = unsafe { ManuallyDrop::take(&mut self.tcp) };
        if !released {
            // An entry naming this descriptor may still be queued: closing it would let a
            // socket accepted next get the number and that entry. Rare (a failed enter, a
            // socket dropped off its ring's thread); the descriptor is kept instead.
            std::mem::forget(tcp.into_inner());
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        poll_read_by(this, cx, buf, Socket::poll_read_ready, Socket::try_read)
    }
}
