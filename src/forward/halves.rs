//! One stream's read and write halves for the two directions of a forwarding period, both
//! borrowing a mutex on the period's stack. `tokio::io::split` puts the stream behind an `Arc`:
//! two allocations and two frees per attached period (per transaction in transaction mode, of
//! the 9 allocations a select-only transaction made; measured with an allocation log). Both
//! halves are polled by the one task that runs the period, one after the other, so the lock is
//! never contended: it only makes the sharing safe (and the period's future `Send`).

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The half that reads.
pub(super) struct ReadHalf<'a, S>(&'a Mutex<S>);

/// The half that writes.
pub(super) struct WriteHalf<'a, S>(&'a Mutex<S>);

/// Both halves of the stream in `shared`.
pub(super) fn halves<S>(shared: &Mutex<S>) -> (ReadHalf<'_, S>, WriteHalf<'_, S>) {
    (ReadHalf(shared), WriteHalf(shared))
}

/// The stream for one poll. A poisoned lock (a panic inside a poll) still holds a usable
/// stream: the period ends on that panic anyway.
fn lock<S>(shared: &Mutex<S>) -> MutexGuard<'_, S> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadHalf<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *lock(self.0)).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteHalf<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *lock(self.0)).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *lock(self.0)).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        lock(self.0).is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *lock(self.0)).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *lock(self.0)).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Reading and writing one duplex stream at once through the two halves, as a forwarding
    /// period does: every byte written arrives, every byte sent arrives.
    #[tokio::test]
    async fn both_directions_at_once() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let shared = Mutex::new(ours);
        let (mut read, mut write) = halves(&shared);
        let sent: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let peer = async {
            let mut echoed = vec![0; sent.len()];
            theirs.write_all(&sent).await.expect("peer writes");
            theirs.read_exact(&mut echoed).await.expect("peer reads");
            echoed
        };
        let ours = async {
            let mut got = vec![0; sent.len()];
            read.read_exact(&mut got).await.expect("read half");
            write.write_all(&got).await.expect("write half");
            write.flush().await.expect("flush");
            got
        };
        let (echoed, got) = tokio::join!(peer, ours);
        assert_eq!(got, sent);
        assert_eq!(echoed, sent);
    }
}
