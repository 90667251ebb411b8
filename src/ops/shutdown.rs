//! Graceful shutdown: one [`Shutdown`] per sidecar, asked for by SIGTERM/SIGINT or the admin
//! endpoint's `/quitquitquit`, then drained: readiness fails at once, new clients get FATAL
//! 57P01, transactions in flight run to their end, clients idle outside a transaction are
//! told 57P01 and closed; what is left when the grace period ends is closed by the caller.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::error::{PgError, Severity, sqlstate};
use crate::forward::closer::{CloseAsk, Closer};

/// Shared shutdown state.
#[derive(Debug, Default)]
pub struct Shutdown {
    requested: AtomicBool,
    draining: AtomicBool,
    /// Wakes whoever waits for a shutdown request (main).
    request: Notify,
    /// Wakes idle clients when draining starts.
    drain: Notify,
    /// Client connections being served, from accept to close.
    clients: AtomicUsize,
    /// The most client connections at once since [`Self::reset_peak_clients`].
    peak_clients: AtomicUsize,
    /// Client connections accepted since start.
    accepted: AtomicUsize,
    /// Wakes the drainer when the last session ended.
    clients_gone: Notify,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a shutdown; `false` when one was asked for already.
    pub fn request(&self) -> bool {
        let first = !self.requested.swap(true, Ordering::AcqRel);
        if first {
            self.request.notify_waiters();
        }
        first
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Waits until a shutdown is asked for.
    pub async fn requested(&self) {
        wait_for(&self.requested, &self.request).await;
    }

    /// Starts draining: idle clients are closed, new ones refused.
    pub fn begin_drain(&self) {
        self.requested.store(true, Ordering::Release);
        if !self.draining.swap(true, Ordering::AcqRel) {
            self.request.notify_waiters();
            self.drain.notify_waiters();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Waits until draining starts. Create the future before checking [`Self::is_draining`]
    /// elsewhere, or just await it: it returns at once when draining already.
    pub async fn draining(&self) {
        wait_for(&self.draining, &self.drain).await;
    }

    /// Waits, storing nothing but the task's waker, until `ready` is, or (with `watch_drain`)
    /// draining starts. `closer` is the client's own (the drainer wakes every client's, see
    /// [`crate::frontend::cancel::CancelRegistry::wake_all`]): waiting on one shared Notify would make
    /// every idle wait of every client take one shared lock twice, and store a 64-byte
    /// `Notified` per idle client. A close request (a cancel) for a client with nothing
    /// running is dropped here, as PostgreSQL ignores a cancel for an idle backend.
    /// A plain `poll_fn`, not an `async fn`: its state is the references it was given.
    pub fn idle_wait<'a>(
        &'a self,
        watch_drain: bool,
        closer: &'a Closer,
        mut ready: impl FnMut(&mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> + 'a,
    ) -> impl Future<Output = Woken> + 'a {
        use std::task::Poll;
        std::future::poll_fn(move |cx| {
            // Data that already arrived is served first: a query sent just before the drain
            // runs, and the client is closed at its next idle moment. (A close request is
            // never carried into an attached period: it was for what ran before.)
            if let Poll::Ready(result) = ready(cx) {
                return Poll::Ready(Woken::Ready(result));
            }
            // Registered before the drain flag is read, so a drain in between is not missed.
            // The grace period's end closes a session idle inside a transaction too.
            if let Poll::Ready(CloseAsk::Terminate) = closer.poll_close(cx) {
                return Poll::Ready(Woken::Draining);
            }
            if watch_drain && self.is_draining() {
                return Poll::Ready(Woken::Draining);
            }
            Poll::Pending
        })
    }

    /// Counts a client connection for as long as the guard lives.
    pub fn client(self: &std::sync::Arc<Self>) -> ClientGuard {
        let now = self.clients.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak_clients.fetch_max(now, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        ClientGuard {
            shutdown: self.clone(),
        }
    }

    /// Client connections being served right now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    /// The most client connections at once since the last reset.
    pub fn peak_clients(&self) -> usize {
        self.peak_clients.load(Ordering::Relaxed)
    }

    /// Client connections accepted since start.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Starts a new peak from the count now.
    pub fn reset_peak_clients(&self) {
        self.peak_clients.store(self.clients(), Ordering::Relaxed);
    }

    /// Waits until no client connection is left.
    pub async fn all_clients_gone(&self) {
        loop {
            let notified = self.clients_gone.notified();
            if self.clients() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Waits until `flag` is set; `notify` is woken (notify_waiters) right after it is. The future
/// is made before the flag is read, so a wake in between is not lost.
async fn wait_for(flag: &AtomicBool, notify: &Notify) {
    let notified = notify.notified();
    if flag.load(Ordering::Acquire) {
        return;
    }
    notified.await;
}

/// What ended [`Shutdown::idle_wait`].
#[derive(Debug)]
pub enum Woken {
    Ready(std::io::Result<()>),
    Draining,
}

/// One client connection, counted by [`Shutdown`].
#[derive(Debug)]
pub struct ClientGuard {
    shutdown: std::sync::Arc<Shutdown>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if self.shutdown.clients.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shutdown.clients_gone.notify_waiters();
        }
    }
}

/// What a client gets when the sidecar closes its connection for a shutdown (PostgreSQL's own
/// words for a smart shutdown, 57P01).
pub fn shutdown_error() -> PgError {
    PgError::new(
        Severity::Fatal,
        sqlstate::ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
    )
    .with_detail("rds-iam-sidecar is shutting down")
    .with_hint("reconnect: a new sidecar (or this one after its restart) will serve you")
}

/// What a client still running a statement or transaction is told when the shutdown's grace
/// period ends (PostgreSQL's words for a fast shutdown).
pub fn terminated_error() -> PgError {
    PgError::new(
        Severity::Fatal,
        sqlstate::ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
    )
    .with_detail(
        "rds-iam-sidecar is shutting down and its grace period (--shutdown-grace) ended before \
         this session's statement or transaction did; its upstream connection was closed",
    )
    .with_hint(
        "what ran may or may not have completed (an open transaction was rolled back): check \
         before retrying on a new connection",
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn draining_wakes_waiters_created_before_and_after() {
        let shutdown = Arc::new(Shutdown::new());
        let early = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.draining().await }
        });
        tokio::task::yield_now().await;
        assert!(!shutdown.is_draining());
        shutdown.begin_drain();
        tokio::time::timeout(Duration::from_secs(5), early)
            .await
            .expect("early waiter woken")
            .expect("no panic");
        // After the fact, it returns at once.
        tokio::time::timeout(Duration::from_secs(5), shutdown.draining())
            .await
            .expect("late waiter returns");
        assert!(shutdown.is_requested());
        assert!(!shutdown.request(), "a drain counts as the request");
    }

    #[tokio::test]
    async fn all_clients_gone_waits_for_the_last_guard() {
        let shutdown = Arc::new(Shutdown::new());
        let first = shutdown.client();
        let second = shutdown.client();
        assert_eq!(shutdown.clients(), 2);
        let waiter = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.all_clients_gone().await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when the last session ends")
            .expect("no panic");
        assert_eq!(shutdown.clients(), 0);
    }
}
