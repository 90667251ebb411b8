//! A [`super::Socket`]'s reads, ring or not: tokio's readiness and one syscall per read; and
//! the read loop both kinds of client socket share.

use std::io;
use std::mem::MaybeUninit;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, ReadBuf};

/// A read made of a wait for readiness (`ready`) and a read that does not wait (`try_read`,
/// `WouldBlock` when the readiness was stale: then the wait again, which registers the waker).
pub fn poll_read_by<S>(
    stream: &mut S,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
    ready: impl Fn(&mut S, &mut Context<'_>) -> Poll<io::Result<()>>,
    try_read: impl Fn(&mut S, &mut [u8]) -> io::Result<usize>,
) -> Poll<io::Result<()>> {
    loop {
        std::task::ready!(ready(stream, cx))?;
        match try_read(stream, buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Poll::Ready(Err(error)),
        }
    }
}

/// Ready when the peer sent something or closed: tokio's readiness confirmed by a one-byte
/// peek (tokio keeps a socket marked readable after a read that did not drain it, which would
/// wake a waiter for nothing; a `WouldBlock` peek clears that mark, and the wait goes on).
pub fn poll_peeked(tcp: &AsyncFd<TcpStream>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    loop {
        if let Err(error) = std::task::ready!(tcp.poll_read_ready(cx)) {
            return Poll::Ready(Err(error));
        }
        match tcp.try_io(Interest::READABLE, peek_one) {
            // Data, or end of stream (0): either way the reader has something to see.
            Ok(_) => return Poll::Ready(Ok(())),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Poll::Ready(Err(error)),
        }
    }
}

/// One `recv` through tokio; a short one (some bytes, fewer than asked for) also clears
/// tokio's read readiness, so the read after it waits for the peer instead of costing a `recv`
/// that answers `EAGAIN`. The readiness cleared is the one seen *before* the read: data that
/// arrives after it is a newer event, which tokio keeps (see `try_io`).
pub fn read_direct(tcp: &AsyncFd<TcpStream>, buf: &mut [u8]) -> io::Result<usize> {
    let mut short = None;
    let result = tcp.try_io(Interest::READABLE, |tcp| {
        read_noting_short(tcp, buf, &mut short)
    });
    match (result, short) {
        (Err(error), Some(n)) if error.kind() == io::ErrorKind::WouldBlock => Ok(n),
        (result, _) => result,
    }
}

/// One `recv`; a short one is reported through `short` and answered `WouldBlock`, which
/// makes `try_io` clear the readiness.
pub fn read_noting_short<S: AsFd>(
    socket: &S,
    buf: &mut [u8],
    short: &mut Option<usize>,
) -> io::Result<usize> {
    use std::io::Read;
    let n = (&*SockRef::from(socket)).read(buf)?;
    if n > 0 && n < buf.len() {
        *short = Some(n);
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Ok(n)
}

/// Peeks at one byte without taking it.
pub fn peek_one<S: AsFd>(socket: &S) -> io::Result<usize> {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    SockRef::from(socket).peek(&mut byte)
}
