//! A [`Socket`]'s write side: a write copies the bytes into a send buffer of the ring's and
//! queues the `send` (at most one in flight), or into one of the outbox's, held until the end
//! of the turn; a flush does not wait for either, a shutdown does.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use super::Socket;
use crate::uring::outbox::with_outbox;
use crate::uring::ring::Completion;
use crate::uring::thread::{self, with_ring};

/// The most one `send` takes from one write.
const MAX_SEND: usize = 64 * 1024;

#[derive(Debug, Default)]
pub(super) enum Writing {
    #[default]
    Idle,
    /// A `send` of the slot's buffer (at most [`MAX_SEND`] bytes).
    InFlight(u32),
    /// The `send` failed with this errno, reported by the next write or flush.
    Failed(i32),
    /// Made on a thread without a ring or an outbox (a multi-thread runtime, a test's
    /// runtime): every write goes through tokio, for good, without asking for the ring each
    /// time (the asking cost 250 instructions a transaction, callgrind, issue 16).
    Tokio,
    /// Made on a thread without a ring that has an outbox (`main`'s runtime off io_uring: its
    /// writes are sent at the end of the turn): nothing held.
    Outbox,
    /// The outbox holds this socket's last write in this slot (queued for the end of the
    /// turn, or stalled for room: see `outbox/`).
    Held(u32),
}

impl Socket {
    /// Ready when the `send` in flight (if any) has finished: its error, if it failed.
    pub(super) fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.ops.write {
                Writing::Idle | Writing::Tokio | Writing::Outbox => return Poll::Ready(Ok(())),
                Writing::Held(slot) => {
                    let fd = self.tcp.as_raw_fd();
                    let sent = with_outbox(|outbox| outbox.poll(slot, fd, cx))
                        .unwrap_or(Poll::Ready(Err(libc::EBADF)));
                    let sent = std::task::ready!(sent);
                    self.ops.write = Writing::Outbox;
                    return Poll::Ready(sent.map_err(io::Error::from_raw_os_error));
                }
                Writing::Failed(errno) => {
                    self.ops.write = Writing::Idle;
                    return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
                }
                Writing::InFlight(slot) => {
                    match with_ring(|ring| ring.poll(slot, self.tcp.as_raw_fd(), cx.waker())) {
                        Some(Poll::Pending) => return Poll::Pending,
                        Some(Poll::Ready(done)) => self.ops.write = Self::sent(done),
                        None => self.ops.write = Writing::Failed(libc::EBADF),
                    }
                }
            }
        }
    }

    /// What a finished `send` leaves: done (all of it went; the ring sent what a partial
    /// send left), or its error.
    fn sent(done: Completion) -> Writing {
        let state = match done.result {
            errno if errno < 0 => Writing::Failed(-errno),
            0 if !done.owned.is_empty() => Writing::Failed(libc::EPIPE),
            _ => Writing::Idle,
        };
        with_ring(|ring| ring.recycle(done.owned));
        state
    }

    /// Writes through tokio's readiness and one `writev` (off a ring, [`Writing::Tokio`]).
    fn poll_write_by_tokio(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        use std::io::Write;
        loop {
            let mut ready = std::task::ready!(self.tcp.poll_write_ready(cx))?;
            if let Ok(written) = ready.try_io(|tcp| tcp.get_ref().write_vectored(bufs)) {
                return Poll::Ready(written);
            }
        }
    }

    /// Holds the slices' first bytes (up to [`MAX_SEND`]) in the thread's outbox, sent at the
    /// end of the turn: how many it took, or `None` with no outbox on this thread.
    fn hold(&mut self, cx: &Context<'_>, slices: &[io::IoSlice<'_>]) -> Option<usize> {
        let fd = self.tcp.as_raw_fd();
        let (slot, taken) = with_outbox(|outbox| {
            let mut bytes = outbox.buffer();
            copy_up_to_max(&mut bytes, slices);
            let taken = bytes.len();
            (outbox.queue(fd, bytes, cx.waker()), taken)
        })?;
        self.ops.write = Writing::Held(slot);
        Some(taken)
    }

    /// Writes through the outbox (see `outbox/`): added to the last write's buffer while it
    /// waits for the end of the turn, or held in a new one once that went.
    fn poll_write_held(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Writing::Held(slot) = self.ops.write {
            let fd = self.tcp.as_raw_fd();
            let appended = with_outbox(|outbox| outbox.append(slot, fd, bufs, MAX_SEND));
            if let Some(Some(taken)) = appended {
                return Poll::Ready(Ok(taken));
            }
        }
        std::task::ready!(self.poll_sent(cx))?;
        if bufs.iter().all(|slice| slice.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        self.hold(cx, bufs)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
            .into()
    }

    /// Submits a `send` of the slices' first bytes (up to [`MAX_SEND`]); how many it took, or
    /// `None` off a ring.
    fn submit_send(&mut self, slices: &[io::IoSlice<'_>]) -> Option<io::Result<usize>> {
        let fd = self.tcp.as_raw_fd();
        let submitted = with_ring(|ring| {
            let mut owned = ring.send_buffer();
            copy_up_to_max(&mut owned, slices);
            let taken = owned.len();
            ring.send(fd, owned).map(|slot| (slot, taken))
        })?;
        Some(submitted.map(|(slot, taken)| {
            self.ops.write = Writing::InFlight(slot);
            taken
        }))
    }
}

/// Appends the slices' first bytes to `owned`, up to [`MAX_SEND`] in all.
fn copy_up_to_max(owned: &mut Vec<u8>, slices: &[io::IoSlice<'_>]) {
    for slice in slices {
        let room = MAX_SEND - owned.len();
        owned.extend_from_slice(&slice[..slice.len().min(room)]);
        if owned.len() == MAX_SEND {
            break;
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.ops.write {
            Writing::Tokio => return this.poll_write_by_tokio(cx, bufs),
            Writing::Outbox | Writing::Held(_) => return this.poll_write_held(cx, bufs),
            _ => {}
        }
        match this.poll_sent(cx) {
            // Most likely queued, not refused: submit it now rather than hold this write
            // (a caller may leave bytes in a TLS buffer when its write waits).
            Poll::Pending => thread::submit_now(),
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Ready(Ok(())) => {}
        }
        std::task::ready!(this.poll_sent(cx))?;
        if bufs.iter().all(|slice| slice.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        // No ring on this thread any more (a socket polled off its ring's thread): registered
        // for reads only, it has no way to wait for room, as a `send` in flight there has none
        // to finish (`poll_sent`).
        this.submit_send(bufs)
            .unwrap_or_else(|| Err(io::Error::from_raw_os_error(libc::EBADF)))
            .into()
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Ready once the bytes are queued for the kernel, as a TCP socket's flush is once they
    /// are in its buffer: a caller that acts after a flush (a transaction-mode period ends at
    /// the ReadyForQuery it flushed) must not be held until the `send` completes, when the
    /// client may already have answered. A failed `send` is reported here or by the next call.
    /// The flush leaves no waker on the `send`: nobody waits for it, and its completion waking the task
    /// (most often idle by then, waiting for its peer) cost every transaction one more poll
    /// of it, 3.5 polls instead of 2 (callgrind, issue 16).
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Writing::Held(slot) = this.ops.write {
            let fd = this.tcp.as_raw_fd();
            let Some(sent) =
                with_outbox(|outbox| outbox.peek(slot, fd)).unwrap_or(Some(Err(libc::EBADF)))
            else {
                return Poll::Ready(Ok(()));
            };
            this.ops.write = Writing::Outbox;
            return Poll::Ready(sent.map_err(io::Error::from_raw_os_error));
        }
        if let Writing::InFlight(slot) = this.ops.write {
            let fd = this.tcp.as_raw_fd();
            this.ops.write = match with_ring(|ring| ring.peek(slot, fd)) {
                Some(Some(done)) => Self::sent(done),
                Some(None) => return Poll::Ready(Ok(())),
                None => Writing::Failed(libc::EBADF),
            };
        }
        match std::mem::take(&mut this.ops.write) {
            Writing::Failed(errno) => Poll::Ready(Err(io::Error::from_raw_os_error(errno))),
            state => {
                this.ops.write = state;
                Poll::Ready(Ok(()))
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_sent(cx))?;
        Poll::Ready(this.tcp.get_ref().shutdown(std::net::Shutdown::Write))
    }
}
