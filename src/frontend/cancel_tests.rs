//! The cancel-key registry: keys map to their own server only, a close request, cancels in
//! flight held against a connection's release.
use std::future::Future;
use std::sync::atomic::Ordering;
use std::task::Context;

use super::*;
use crate::forward::closer::CloseAsk;

#[test]
fn keys_map_to_their_own_server_only() {
    let registry = CancelRegistry::new();
    let a = registry.register(Serving::connection(Some((1, 10))));
    let b = registry.register(Serving::connection(Some((2, 20))));
    let serving = |pid, secret| registry.lookup(pid, secret).map(|t| t.serving);
    assert_eq!(
        serving(a.pid, a.secret),
        Some(Serving::Key(ServerKey { pid: 1, secret: 10 }))
    );
    assert_eq!(
        serving(b.pid, b.secret),
        Some(Serving::Key(ServerKey { pid: 2, secret: 20 }))
    );
    assert!(registry.lookup(a.pid, b.secret).is_none());
    a.set_serving(Serving::Keyless);
    assert_eq!(serving(a.pid, a.secret), Some(Serving::Keyless));
    a.set_serving(Serving::Nothing);
    assert_eq!(serving(a.pid, a.secret), Some(Serving::Nothing));
    assert!(registry.lookup(a.pid, a.secret).is_some());
    drop(b);
    assert_eq!(registry.len(), 1);
}

#[test]
fn a_close_request_is_seen_once_and_wakes_the_waiting_task() {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let registry = CancelRegistry::new();
    let key = registry.register(Serving::Keyless);
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(key.closer().poll_close(&mut cx).is_pending());

    registry.wake_all();
    assert_eq!(
        count.0.load(Ordering::SeqCst),
        1,
        "a drain wakes the session"
    );
    assert!(
        key.closer().poll_close(&mut cx).is_pending(),
        "but asks no close"
    );

    let target = registry.lookup(key.pid, key.secret).expect("registered");
    target.close();
    assert_eq!(count.0.load(Ordering::SeqCst), 2);
    assert!(key.closer().poll_close(&mut cx).is_ready());
    assert!(
        key.closer().poll_close(&mut cx).is_pending(),
        "one request closes once"
    );
    target.close();
    target.close_unless_answered(Mark {
        answered: 7,
        heard: 0,
    });
    assert_eq!(
        key.closer().poll_close(&mut cx),
        std::task::Poll::Ready(CloseAsk::Any),
        "an unconditional close is not narrowed by a marked one"
    );
    target.close_unless_answered(Mark {
        answered: 7,
        heard: 0,
    });
    assert_eq!(
        key.closer().poll_close(&mut cx),
        std::task::Poll::Ready(CloseAsk::UnlessAnsweredSince(7))
    );
}

/// A cancel in flight as `claim` makes one (its statement's state aside).
fn in_flight(key: &CancelKeyGuard) -> InFlight {
    key.slot.pointing().cancels += 1;
    InFlight {
        slot: key.slot.clone(),
        delivered: false,
    }
}

#[tokio::test]
async fn a_release_waits_for_cancels_in_flight_and_learns_whether_they_were_delivered() {
    let registry = CancelRegistry::new();
    let key = registry.register(Serving::Nothing);
    assert!(
        key.slot.settled().await,
        "none in flight: settled, delivered"
    );

    let (delivered, lost) = (in_flight(&key), in_flight(&key));
    let settled = key.slot.settled();
    tokio::pin!(settled);
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(settled.as_mut().poll(&mut cx).is_pending(), "two in flight");
    delivered.delivered();
    assert!(settled.as_mut().poll(&mut cx).is_pending(), "one in flight");
    drop(lost);
    assert_eq!(
        settled.as_mut().poll(&mut cx),
        std::task::Poll::Ready(false),
        "one settled without knowing whether its server got it"
    );
    assert!(
        key.slot.settled().await,
        "read once: the next release pools"
    );
}

/// An idle client's slot (behind its `Arc`) stays in glibc's 96-byte chunk: 16 bytes more a
/// client showed in `benches/memory.sh`'s burst figure.
#[test]
fn a_client_slot_stays_small() {
    assert!(
        std::mem::size_of::<ClientSlot>() <= 72,
        "{}",
        std::mem::size_of::<ClientSlot>()
    );
    for serving in [
        Serving::Nothing,
        Serving::Waiting,
        Serving::Keyless,
        Serving::Key(ServerKey { pid: 7, secret: -3 }),
    ] {
        let mut pointing = Pointing::default();
        pointing.point_at(serving);
        assert_eq!(pointing.serving(), serving);
    }
}
