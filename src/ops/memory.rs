//! Memory given back after a burst of clients. glibc's allocator keeps what it freed in its
//! arenas (one per thread that allocated), and a burst of thousands of clients leaves those
//! arenas large and fragmented: a burst of logins leaves the freed login buffers between the
//! idle clients' allocations, and after the clients are gone the process keeps its peak RSS for
//! good, which on Fargate or Lambda is memory the app does not get. `malloc_trim(0)` hands the
//! free pages of every arena back to the kernel (`MADV_DONTNEED`), and jemalloc's purge does
//! the same for the blocks it serves (`allocator.rs`), so this task calls both once a burst
//! is over: at least [`BURST`] clients came or left since the last trim, and the last
//! few seconds were quiet (so a steady stream of connections is never trimmed after each one).
//! It costs a few milliseconds of one thread, only after a burst; builds on other C libraries
//! (musl) or other systems skip it, their allocators return memory on their own terms.
//! Measured with `benches/memory.sh` (5,000 transaction-mode clients at once): RSS a minute
//! after they left went from 2.2× the figure at start to 1.1×.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::ops::allocator::give_back_free_pages;
use crate::ops::shutdown::Shutdown;

/// How often the client count is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// A burst worth trimming after: this many clients more at the peak than now.
const BURST: usize = 256;

/// Trims the allocator after bursts until `stop`.
pub async fn give_back_after_bursts(shutdown: Arc<Shutdown>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut at_trim) = (shutdown.accepted(), shutdown.accepted());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let accepted = shutdown.accepted();
        let quiet = accepted - seen < BURST / 8;
        seen = accepted;
        let (peak, now) = (shutdown.peak_clients(), shutdown.clients());
        let burst = accepted - at_trim >= BURST || peak.saturating_sub(now) >= BURST;
        // On a blocking thread: the trim holds the allocator's locks while it walks the heap.
        if quiet
            && burst
            && tokio::task::spawn_blocking(give_back_free_pages)
                .await
                .unwrap_or(false)
        {
            tracing::debug!(
                peak,
                now,
                "gave freed memory back to the system after a burst"
            );
            shutdown.reset_peak_clients();
            at_trim = accepted;
        }
    }
}
