//! [`Socket`]: a TCP connection whose reads and writes go through the ring of the thread that
//! made it when that thread has one, and through tokio when it has not (another platform,
//! another runtime, a kernel without io_uring, `--socket-io epoll`) or every provided buffer
//! is held. The socket stays registered with tokio
//! throughout, so either way works at any moment, one read or write at a time.
//!
//! A read submits a `recv` and waits for its completion, which names the provided buffer the
//! kernel filled; the reader copies out of it and gives it back. A write copies the bytes into
//! a send buffer of the ring's, submits the `send` and returns at once (the kernel sends it at
//! the thread's next park, in the same `io_uring_enter` as everyone else's). At most one
//! `send` is in flight: a write that finds one submits the queue at once and waits only if
//! the kernel could not take it (the socket's buffer is full), as a TCP socket's write
//! would; errors are reported by the call after the `send`. A flush does not wait (see
//! `poll_flush`); a shutdown does.
//!
//! A socket dropped with an operation queued hands the queue to the kernel before its
//! descriptor closes: a queued entry names a descriptor number, which a socket accepted after
//! the close could reuse (where that cannot be done, the descriptor is kept open).

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

use super::ring::{self, Completion};
use super::thread::with_ring;
use super::tokio_io::{poll_peeked, poll_read_by, read_direct};
use write::Writing;

mod write;

/// A TCP connection doing its I/O through io_uring where it can (see the module's doc).
#[derive(Debug)]
pub struct Socket {
    ops: Ops,
    /// Closed in `Drop` only once no queued entry names its descriptor.
    tcp: ManuallyDrop<TcpStream>,
}

/// 24 bytes (a read state of 16, the boxed carried bytes' pointer setting its alignment): a
/// client's login future and idle session hold one (src/frontend's size test).
#[derive(Debug, Default)]
struct Ops {
    read: Reading,
    write: Writing,
}

#[derive(Debug, Default)]
enum Reading {
    /// Nothing in flight: the next read submits a `recv` (or reads through tokio).
    #[default]
    Idle,
    InFlight(u32),
    /// Provided buffer `id`, its bytes `at..end` not read yet (a buffer is 16 KiB).
    Holding {
        id: u16,
        at: u16,
        end: u16,
    },
    /// The peer closed its side: every read answers 0.
    Ended,
    /// The `recv` failed with this errno, reported by the next read.
    Failed(i32),
    /// This read goes through tokio: every provided buffer was held, or the socket is a
    /// client just accepted (its first packet is usually there already, and a `recv` through
    /// the ring would cost a park and a wake-up to find it).
    Direct,
    /// Made on a thread without a ring (`--socket-io epoll`, the default; a multi-thread
    /// runtime; a kernel that refused io_uring): every read and write goes through tokio, for
    /// good, without asking for the ring each time (the asking cost 250 instructions a
    /// transaction, callgrind, issue 16).
    Tokio,
    /// Bytes read ahead and given back ([`Socket::unread`]): the next reads return them
    /// first, then the socket goes on as `then` says.
    Carried(Box<Carried>),
}

/// Bytes a reader took from the socket and gave back, and the reading state behind them.
struct Carried {
    bytes: Box<[u8]>,
    /// How many of `bytes` were read again already.
    at: usize,
    then: Reading,
}

/// Only the count: the bytes are a client's, maybe a password.
impl std::fmt::Debug for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carried")
            .field("left", &(self.bytes.len() - self.at))
            .field("then", &self.then)
            .finish()
    }
}

impl Socket {
    pub fn new(tcp: TcpStream) -> Self {
        let read = match with_ring(|_| ()) {
            Some(()) => Reading::Idle,
            None => Reading::Tokio,
        };
        Socket {
            ops: Ops {
                read,
                write: Writing::Idle,
            },
            tcp: ManuallyDrop::new(tcp),
        }
    }

    /// A client just accepted: its first read goes through tokio (see [`Reading::Direct`]).
    pub fn accepted(tcp: TcpStream) -> Self {
        let mut socket = Self::new(tcp);
        if matches!(socket.ops.read, Reading::Idle) {
            socket.ops.read = Reading::Direct;
        }
        socket
    }

    /// Gives back `bytes` read ahead (what a client sent after its startup packet, read with
    /// it): the next reads return them before anything else.
    pub fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let then = std::mem::take(&mut self.ops.read);
        self.ops.read = Reading::Carried(Box::new(Carried {
            bytes: bytes.into(),
            at: 0,
            then,
        }));
    }

    /// The TCP stream (socket options, addresses, a peek before the first read).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The TCP stream back, for a TLS handshake, once what was written has gone (the 'S'
    /// answering an SSLRequest); refused when bytes were read ahead or are in flight (a
    /// client's bytes sent before its TLS handshake must not be trusted).
    pub async fn into_tcp(mut self) -> io::Result<TcpStream> {
        std::future::poll_fn(|cx| self.poll_sent(cx)).await?;
        if matches!(
            self.ops.read,
            Reading::Idle | Reading::Direct | Reading::Tokio
        ) && matches!(self.ops.write, Writing::Idle)
        {
            // Nothing in flight or held: the operations' state is plain data.
            let mut this = ManuallyDrop::new(self);
            // SAFETY: `this` is never dropped, and its stream is taken once.
            return Ok(unsafe { ManuallyDrop::take(&mut this.tcp) });
        }
        // Dropped as a whole: what is in flight is released before the descriptor closes.
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bytes arrived before the TLS handshake",
        ))
    }

    /// Ready when a read will find something: bytes, the peer's close, or an error. On a ring
    /// this is a `recv` in flight (no buffer held while it waits); otherwise tokio's
    /// readiness, which may be left over from an earlier read (a `try_read` clears it).
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.ops.read {
                Reading::Holding { .. }
                | Reading::Ended
                | Reading::Failed(_)
                | Reading::Carried(_) => {
                    return Poll::Ready(Ok(()));
                }
                Reading::Direct | Reading::Tokio => return self.tcp.poll_read_ready(cx),
                Reading::InFlight(slot) => match with_ring(|ring| ring.poll(slot, cx.waker())) {
                    Some(Poll::Pending) => return Poll::Pending,
                    Some(Poll::Ready(done)) => self.ops.read = received(done),
                    None => self.ops.read = Reading::Failed(libc::EBADF),
                },
                Reading::Idle => {
                    let fd = self.tcp.as_raw_fd();
                    match with_ring(|ring| ring.recv(fd)) {
                        Some(Ok(slot)) => self.ops.read = Reading::InFlight(slot),
                        Some(Err(error)) => return Poll::Ready(Err(error)),
                        None => return self.tcp.poll_read_ready(cx),
                    }
                }
            }
        }
    }

    /// Watches for what the peer sends unasked (a close of a connection idle in its pool),
    /// waking nobody: on a ring, the `recv` that sees it is queued now rather than at the next
    /// checkout, and the waker of the task that used the socket last is dropped (it would be
    /// woken for nothing, and keep a finished session's task allocated). On tokio, where the
    /// readiness already watches, nothing is done: replacing that waker cost 150 instructions
    /// a transaction-mode transaction (callgrind); it stays until the next checkout's check,
    /// one per idle pooled connection at most.
    pub fn watch_reads(&mut self) {
        if !matches!(self.ops.read, Reading::Tokio | Reading::Direct) {
            let _ = self.poll_read_ready(&mut Context::from_waker(std::task::Waker::noop()));
        }
    }

    /// Reads what is there without waiting; `WouldBlock` when nothing is (then
    /// [`Socket::poll_read_ready`] waits).
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.ops.read {
            Reading::Holding { id, at, end } => {
                self.copy_out(id, usize::from(at), usize::from(end), buf)
            }
            Reading::Ended => Ok(0),
            Reading::Failed(errno) => {
                self.ops.read = Reading::Idle;
                Err(io::Error::from_raw_os_error(errno))
            }
            Reading::Tokio => read_direct(&self.tcp, buf),
            Reading::Direct => {
                let read = read_direct(&self.tcp, buf);
                if !matches!(&read, Err(error) if error.kind() == io::ErrorKind::WouldBlock) {
                    self.ops.read = Reading::Idle;
                }
                read
            }
            Reading::InFlight(_) => Err(io::ErrorKind::WouldBlock.into()),
            Reading::Carried(ref mut carried) => {
                let left = &carried.bytes[carried.at..];
                let n = buf.len().min(left.len());
                buf[..n].copy_from_slice(&left[..n]);
                carried.at += n;
                if carried.at == carried.bytes.len() {
                    self.ops.read = std::mem::take(&mut carried.then);
                }
                Ok(n)
            }
            Reading::Idle if with_ring(|_| ()).is_some() => Err(io::ErrorKind::WouldBlock.into()),
            Reading::Idle => read_direct(&self.tcp, buf),
        }
    }

    fn copy_out(&mut self, id: u16, at: usize, end: usize, buf: &mut [u8]) -> io::Result<usize> {
        let copied = with_ring(|ring| {
            let bytes = ring.provided.bytes(id, end);
            let n = buf.len().min(end - at);
            buf[..n].copy_from_slice(&bytes[at..at + n]);
            if at + n == end {
                ring.provided.give_back(id);
            }
            n
        });
        let Some(n) = copied else {
            self.ops.read = Reading::Idle;
            return Err(io::Error::other("io_uring buffer read off its thread"));
        };
        self.ops.read = match (u16::try_from(at + n), u16::try_from(end)) {
            (Ok(at), Ok(end)) if at < end => Reading::Holding { id, at, end },
            _ => Reading::Idle,
        };
        Ok(n)
    }

    /// Ready when the peer sent something or closed; holds no buffer while it waits. Without a
    /// ring, tokio's readiness confirmed by a one-byte peek (tokio keeps a socket marked
    /// readable after a read that did not drain it).
    pub fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if matches!(self.ops.read, Reading::Carried(_)) {
            return Poll::Ready(Ok(()));
        }
        if !matches!(self.ops.read, Reading::Direct | Reading::Tokio) && with_ring(|_| ()).is_some()
        {
            return self.poll_read_ready(cx);
        }
        poll_peeked(&self.tcp, cx)
    }
}

/// The reading state a finished `recv` leaves.
fn received(done: Completion) -> Reading {
    let buffer = ring::buffer_of(done.flags);
    match (done.result, buffer) {
        (length, Some(id)) if length > 0 => Reading::Holding {
            id,
            at: 0,
            end: u16::try_from(length).unwrap_or(u16::MAX),
        },
        (result, buffer) => {
            if let Some(id) = buffer {
                with_ring(|ring| ring.provided.give_back(id));
            }
            match result {
                0 => Reading::Ended,
                errno if -errno == libc::ENOBUFS => Reading::Direct,
                errno if errno < 0 => Reading::Failed(-errno),
                _ => Reading::Failed(libc::EIO),
            }
        }
    }
}

impl Ops {
    /// Gives back what the socket holds in the ring; whether its descriptor may close now (no
    /// queued entry names it). A `send` in flight gets the flush to finish and is cancelled if
    /// it has not (a peer that stopped reading).
    fn release(&mut self) -> bool {
        if matches!(self.read, Reading::Tokio) {
            return true;
        }
        let mut read = std::mem::take(&mut self.read);
        while let Reading::Carried(carried) = read {
            read = carried.then;
        }
        let write = std::mem::take(&mut self.write);
        let in_flight =
            matches!(read, Reading::InFlight(_)) || matches!(write, Writing::InFlight(_));
        let released = with_ring(|ring| {
            match read {
                Reading::InFlight(slot) => ring.abandon(slot, true),
                Reading::Holding { id, .. } => ring.provided.give_back(id),
                _ => {}
            }
            let Writing::InFlight(slot) = write else {
                return ring.flush();
            };
            ring.abandon(slot, false);
            let flushed = ring.flush();
            if ring.is_waiting(slot) {
                ring.cancel(slot);
                return ring.flush();
            }
            flushed
        });
        released.unwrap_or(!in_flight)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let released = self.ops.release();
        // SAFETY: the stream is taken once, here, and not used after.
        let tcp = unsafe { ManuallyDrop::take(&mut self.tcp) };
        if !released {
            // An entry naming this descriptor may still be queued: closing it would let a
            // socket accepted next get the number and that entry. Rare (a failed enter, a
            // socket dropped off its ring's thread); the descriptor is kept instead.
            std::mem::forget(tcp);
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
