//! A client session's wake-up: the hot loop and the idle waits listen to it; a cancel done by
//! closing the upstream connection, a shutdown drain, or the end of the drain's grace period
//! pulls it. It lives here, below the frontend, because the hot loop must not import from the
//! layer that drives it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// No close asked for.
const NONE: u64 = 0;
/// Close whatever runs.
const ANY: u64 = 1 << 32;
/// Close only if the client got no answer since the mark in the low 32 bits.
const MARKED: u64 = 2 << 32;
/// End the session, whatever it does: the shutdown's grace period is over. It stays.
const TERMINATE: u64 = 3 << 32;

/// What a close request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAsk {
    /// Close the upstream connection if the client is owed an answer (no server key,
    /// `--cancel-mode close`).
    Any,
    /// Close it only if the client's count of answers still stands at this mark: the statement
    /// the cancel was for still runs (a cancel whose forwarding failed, or whose grace ran out).
    /// A statement that ended meanwhile is not the cancel's, nor is the next one.
    UnlessAnsweredSince(u32),
    /// End the session now (the shutdown's grace period is over), telling the client 57P01
    /// where it stands between two messages.
    Terminate,
}

/// Wakes one client's session: to close its upstream connection (a cancel) or to look at a
/// shutdown drain. It holds one waker, the client task's, so an idle client's wait stores
/// nothing of its own.
#[derive(Debug, Default)]
pub struct Closer {
    request: AtomicU64,
    waker: AtomicWaker,
}

impl Closer {
    /// Asks the session to close its upstream connection.
    pub(crate) fn close(&self) {
        self.ask(|_| Some(ANY));
    }

    /// Asks the session to close its upstream connection unless the client got an answer since
    /// `mark` (an unconditional request already made stays).
    pub(crate) fn close_unless_answered(&self, mark: u32) {
        self.ask(|now| (now != ANY).then_some(MARKED | u64::from(mark)));
    }

    /// Asks the session to end now (the shutdown's grace period is over).
    pub(crate) fn terminate(&self) {
        self.ask(|_| Some(TERMINATE));
    }

    /// Drops a request not yet seen (never a termination).
    pub(crate) fn forget(&self) {
        let _ = self
            .request
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now != TERMINATE).then_some(NONE)
            });
    }

    /// Replaces the request with what `next` makes of it (never a termination), and wakes
    /// the session.
    fn ask(&self, next: impl Fn(u64) -> Option<u64>) {
        let _ = self
            .request
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now != TERMINATE).then(|| next(now)).flatten()
            });
        self.waker.wake();
    }

    /// Wakes the session so that it looks at the shutdown state.
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    /// Ready, once per request (a termination: every time), with what it asks; either way
    /// the task is woken by the next request or drain.
    pub fn poll_close(&self, cx: &mut Context<'_>) -> Poll<CloseAsk> {
        self.waker.register(cx.waker());
        let request = self
            .request
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now != TERMINATE).then_some(NONE)
            })
            .unwrap_or_else(|kept| kept);
        match request & !u64::from(u32::MAX) {
            TERMINATE => Poll::Ready(CloseAsk::Terminate),
            ANY => Poll::Ready(CloseAsk::Any),
            MARKED => Poll::Ready(CloseAsk::UnlessAnsweredSince(request as u32)),
            _ => Poll::Pending,
        }
    }

    /// Waits for a close request.
    pub async fn closed(&self) -> CloseAsk {
        std::future::poll_fn(|cx| self.poll_close(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(closer: &Closer) -> Poll<CloseAsk> {
        closer.poll_close(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn a_termination_stays_whatever_comes_after_it() {
        let closer = Closer::default();
        closer.close();
        assert_eq!(poll(&closer), Poll::Ready(CloseAsk::Any));
        assert_eq!(poll(&closer), Poll::Pending, "once per request");
        closer.terminate();
        closer.close_unless_answered(3);
        closer.forget();
        closer.close();
        for _ in 0..2 {
            assert_eq!(poll(&closer), Poll::Ready(CloseAsk::Terminate));
        }
    }
}
