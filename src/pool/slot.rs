//! What a checkout in progress holds of a [`Pool`], given back when the checkout is dropped
//! halfway (a drain stops a client waiting for a connection, or a client task ends): a place
//! in the queue of waiters, or one unit of the pool's `open` count (room to log in, or a
//! connection being checked). Without them, a checkout dropped mid-login or mid-probe left
//! `open` one too high for good, and a connection handed to a waiter that had just gone was
//! closed without being counted out: the pool shrank.

use tokio::sync::oneshot;

use super::keyed::{Handoff, Step};
use super::{Lease, Pool, PooledConnection};
use std::sync::Arc;

/// One unit of `open` owned by a checkout: given up ([`Pool::forget_one`]) when dropped,
/// unless it became a [`Lease`].
pub(super) struct Slot<'a>(&'a Arc<Pool>);

impl<'a> Slot<'a> {
    pub(super) fn held(pool: &'a Arc<Pool>) -> Self {
        Self(pool)
    }

    /// The slot is the lease's from now on.
    pub(super) fn lease(self, connection: PooledConnection) -> Lease {
        let lease = Lease::new(self.0, connection);
        std::mem::forget(self);
        lease
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.forget_one();
    }
}

/// A place in a pool's queue of waiters. Dropped after a handoff was sent but before it was
/// taken, it passes the handoff on (the connection back to the pool, the room to the next
/// waiter).
pub(super) struct Queued<'a> {
    pool: &'a Pool,
    receiver: oneshot::Receiver<Handoff>,
}

impl<'a> Queued<'a> {
    pub(super) fn new(pool: &'a Pool, receiver: oneshot::Receiver<Handoff>) -> Self {
        Self { pool, receiver }
    }

    /// The handoff, or `None` when the pool dropped its sender.
    pub(super) async fn handoff(&mut self) -> Option<Step> {
        (&mut self.receiver).await.ok().map(Step::from)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.receiver.close();
        match self.receiver.try_recv() {
            Ok(Handoff::Connection(connection)) => self.pool.give_back(*connection),
            Ok(Handoff::Room) => self.pool.forget_one(),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolKey;

    fn pool() -> Arc<Pool> {
        Arc::new(Pool::new(PoolKey::new("app", "db", Vec::new())))
    }

    #[test]
    fn a_slot_dropped_before_it_became_a_lease_is_counted_out() {
        let pool = pool();
        assert!(matches!(
            pool.take_or_queue(1, tokio::time::Instant::now()),
            Ok(Step::Room)
        ));
        assert_eq!(pool.counts(), (0, 1));
        drop(Slot::held(&pool));
        assert_eq!(pool.counts(), (0, 0), "the room went with the checkout");
    }

    #[test]
    fn room_handed_to_a_waiter_that_went_passes_to_the_next_one() {
        let pool = pool();
        assert!(matches!(
            pool.take_or_queue(1, tokio::time::Instant::now()),
            Ok(Step::Room)
        ));
        let Err(gone) = pool.take_or_queue(1, tokio::time::Instant::now()) else {
            panic!("the second checkout queues")
        };
        let Err(next) = pool.take_or_queue(1, tokio::time::Instant::now()) else {
            panic!("the third checkout queues")
        };
        let gone = Queued::new(&pool, gone);
        let mut next = Queued::new(&pool, next);
        // The first connection fails: its room goes to the first waiter, which has just gone.
        pool.forget_one();
        drop(gone);
        let handoff = next.receiver.try_recv();
        assert!(
            matches!(handoff, Ok(Handoff::Room)),
            "passed on to the next waiter"
        );
        assert_eq!(pool.counts(), (0, 1));
    }

    #[test]
    fn a_waiter_that_went_before_any_handoff_leaves_the_count_alone() {
        let pool = pool();
        assert!(matches!(
            pool.take_or_queue(1, tokio::time::Instant::now()),
            Ok(Step::Room)
        ));
        let Err(receiver) = pool.take_or_queue(1, tokio::time::Instant::now()) else {
            panic!("the second checkout queues")
        };
        drop(Queued::new(&pool, receiver));
        pool.forget_one();
        assert_eq!(pool.counts(), (0, 0));
    }
}
