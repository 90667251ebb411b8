//! A client session's wake-up: the hot loop and the idle waits listen to it; a cancel with
//! `--cancel-mode close` or a shutdown drain pulls it. It lives here, below the frontend, because
//! the hot loop must not import from the layer that drives it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// Wakes one client's session: to close its upstream connection (a cancel with
/// `--cancel-mode close`) or to look at a shutdown drain. It holds one waker, the client
/// task's, so an idle client's wait stores nothing of its own.
#[derive(Debug, Default)]
pub struct Closer {
    close: AtomicBool,
    waker: AtomicWaker,
}

impl Closer {
    /// Asks the session to close its upstream connection.
    pub(crate) fn close(&self) {
        self.close.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Drops a close request not yet seen.
    pub(crate) fn forget(&self) {
        self.close.store(false, Ordering::Release);
    }

    /// Wakes the session so that it looks at the shutdown state.
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    /// Ready, once per request, when a close was asked for; either way the task is woken by
    /// the next [`Self::close`] or drain.
    pub fn poll_close(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.close.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits for a close request.
    pub async fn closed(&self) {
        std::future::poll_fn(|cx| self.poll_close(cx)).await;
    }
}
