//! The thread's ring: made once per thread (`install`, or `spawn_reaper` for a runtime `main`
//! did not build), driven by tokio's park hook and by a reaper task woken through the ring's
//! eventfd, and reached by the sockets through [`with_ring`]. Also what the process decided
//! (`--socket-io`, whether the kernel refused io_uring) for the start-up log.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tracing::warn;

use super::ring::Ring;

thread_local! {
    static RING: RefCell<Option<Ring>> = const { RefCell::new(None) };
}

/// Enters in one park at most, while deferred completions may remain; then the eventfd is
/// signalled so the reaper runs another turn.
const MAX_ENTERS: usize = 8;
/// Deferred completions a kernel runs per enter at most (20 since 6.13), without setting the
/// taskrun flag or signalling for the rest: an enter that yields this many is followed by
/// another.
const KERNEL_BATCH: usize = 20;

/// `--socket-io io-uring` was asked for (what `describe` says when no ring came of it).
static REQUESTED: AtomicBool = AtomicBool::new(false);
/// `--socket-io epoll`: no ring on any thread.
static FORBIDDEN: AtomicBool = AtomicBool::new(false);
/// Whether `main` built the runtime with [`submit_before_park`] as its park hook.
static PARK_HOOK: AtomicBool = AtomicBool::new(false);
/// Why the kernel refused a ring, for the start-up log (set once).
static REFUSED: OnceLock<String> = OnceLock::new();

/// Gives this thread a ring (once). `batched`: the runtime calls [`submit_before_park`] before
/// it parks; otherwise each submission is handed to the kernel at once. Whether it worked.
pub fn install(batched: bool) -> bool {
    REQUESTED.store(true, Ordering::Relaxed);
    if !enabled() {
        return false;
    }
    if batched {
        PARK_HOOK.store(true, Ordering::Relaxed);
    }
    RING.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_some() {
            return true;
        }
        match Ring::new(batched && PARK_HOOK.load(Ordering::Relaxed)) {
            Ok(ring) => {
                *slot = Some(ring);
                true
            }
            Err(error) => {
                let _ = REFUSED.set(error.to_string());
                false
            }
        }
    })
}

/// Starts reading this thread's completions, giving it a ring first when it runs a
/// current-thread runtime, has none and `RDS_IAM_SIDECAR_SOCKET_IO=io-uring` asks for one
/// (the engine started on a runtime `main` did not build: tests, embedders; its submissions
/// are then made at once), unless [`forbid`] said not to.
pub fn spawn_reaper() {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread || !enabled() {
        return;
    }
    let ready = with_ring(|_| ()).is_some() || (asked_by_environment() && install(false));
    if !ready {
        return;
    }
    let Some(fd) = with_ring(|ring| {
        if ring.reaping {
            return None;
        }
        ring.reaping = true;
        Some(ring.wake.as_raw_fd())
    })
    .flatten() else {
        return;
    };
    tokio::spawn(reap_on_wake(fd));
}

/// How this thread's sockets do their I/O, for the start-up log: `io_uring`, or `epoll` and
/// why.
pub fn describe() -> String {
    if with_ring(|_| ()).is_some() {
        return "io_uring".to_owned();
    }
    let why = match REFUSED.get() {
        Some(error) => Some(format!("the kernel refused io_uring: {error}")),
        None if REQUESTED.load(Ordering::Relaxed) && enabled() => {
            Some("io_uring needs --worker-threads 1".to_owned())
        }
        None => None,
    };
    let notes: Vec<String> = why
        .into_iter()
        .chain(super::outbox::describe().map(str::to_owned))
        .collect();
    if notes.is_empty() {
        return "epoll".to_owned();
    }
    format!("epoll ({})", notes.join("; "))
}

/// The engine started in-process (tests, embedders: no `main` to read `--socket-io`) asks
/// for io_uring with the flag's variable, `RDS_IAM_SIDECAR_SOCKET_IO=io-uring`.
fn asked_by_environment() -> bool {
    std::env::var("RDS_IAM_SIDECAR_SOCKET_IO").is_ok_and(|io| io == "io-uring")
}

/// `--socket-io io-uring`, whether or not a ring comes of it (for [`describe`]).
pub fn request() {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// `--socket-io epoll`: no thread gets a ring from here on.
pub fn forbid() {
    FORBIDDEN.store(true, Ordering::Relaxed);
}

fn enabled() -> bool {
    !FORBIDDEN.load(Ordering::Relaxed)
}

/// Wakes on the ring's eventfd: a completion waiting while the thread slept in epoll_wait.
/// Each signal is a new edge for epoll, so the count is never read back.
async fn reap_on_wake(fd: RawFd) {
    // A runtime that ends drops this task: the next runtime on the thread starts its own.
    struct Reaping;
    impl Drop for Reaping {
        fn drop(&mut self) {
            with_ring(|ring| ring.reaping = false);
        }
    }
    let _reaping = Reaping;
    #[allow(deprecated)] // the eventfd outlives the task: the ring lives as long as the thread
    let readiness = match AsyncFd::with_interest(fd, Interest::READABLE) {
        Ok(readiness) => readiness,
        Err(error) => {
            warn!(%error, "cannot watch the io_uring eventfd");
            return;
        }
    };
    loop {
        let Ok(mut guard) = readiness.readable().await else {
            return;
        };
        guard.clear_ready();
        submit_before_park();
    }
}

/// Hands the queued submissions to the kernel and wakes the tasks whose operations completed,
/// or sends what the thread's outbox holds (off a ring). tokio's park hook.
pub fn submit_before_park() {
    submit_and_wake(false);
    super::outbox::send_at_park();
}

/// Hands the queued submissions to the kernel now, runs what completed and wakes its tasks: a
/// write that finds the socket's `send` still in flight (usually queued, not yet submitted)
/// learns whether the kernel takes it at once, as a TCP socket with room in its buffer would.
pub fn submit_now() {
    submit_and_wake(true);
}

fn submit_and_wake(always: bool) {
    let Some(mut wakers) = with_ring(|ring| {
        // Deferred completions (`taskrun`) run only in an enter, and a kernel runs a bounded
        // number per enter (20 since 6.13); so do completions the kernel could not fit in the
        // completion queue (a burst of thousands of clients at once), which wait in its
        // overflow list until one moves them over.
        let mut reaped = 0;
        for round in 0..=MAX_ENTERS {
            let queue = ring.uring.submission();
            let needed = (always && round == 0)
                || !queue.is_empty()
                || queue.taskrun()
                || queue.cq_overflow()
                || reaped >= KERNEL_BATCH;
            drop(queue);
            if !needed {
                break;
            }
            if round == MAX_ENTERS {
                ring.signal_self();
                break;
            }
            reaped = ring.enter_and_reap();
        }
        ring.reap();
        std::mem::take(&mut ring.wakers)
    }) else {
        return;
    };
    for waker in wakers.drain(..) {
        waker.wake();
    }
    with_ring(|ring| ring.wakers = wakers);
}

/// Runs `f` on this thread's ring; `None` when it has none.
pub fn with_ring<R>(f: impl FnOnce(&mut Ring) -> R) -> Option<R> {
    RING.try_with(|slot| slot.try_borrow_mut().ok()?.as_mut().map(f))
        .ok()
        .flatten()
}
