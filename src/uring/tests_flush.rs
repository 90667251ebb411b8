//! A flush on a ring: it does not wait for its `send`, leaves no waker on it (the completion
//! must not wake a task that went on to wait for something else), and the `send`'s buffer goes
//! back to the ring when the `send` completes, not when the socket next writes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::AsyncWrite;

use super::tests::{on_ring, pair, read_within_bound};
use super::thread::with_ring;

#[derive(Default)]
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

async fn a_flushed_send_wakes_nobody_and_gives_its_buffer_back() {
    let (mut ours, mut peer) = pair().await;
    let wakes = Arc::new(Wakes::default());
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let hello = b"hello, peer";
    let written = Pin::new(&mut ours).poll_write(&mut cx, hello);
    assert!(matches!(written, Poll::Ready(Ok(n)) if n == hello.len()));
    assert!(matches!(
        Pin::new(&mut ours).poll_flush(&mut cx),
        Poll::Ready(Ok(()))
    ));
    let got = read_within_bound(&mut peer, 11).await;
    assert_eq!(&got, hello);
    // A few turns of the event loop: the completion is read by now, whichever way.
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        0,
        "the send's completion woke the writer"
    );
    let recycled = with_ring(|ring| ring.send_buffer().capacity());
    assert!(
        recycled.is_some_and(|capacity| capacity >= hello.len()),
        "the send's buffer went back to the ring at its completion: {recycled:?}"
    );
    // The socket writes on as before.
    assert!(matches!(
        Pin::new(&mut ours).poll_write(&mut cx, b"!"),
        Poll::Ready(Ok(1))
    ));
    let bang = read_within_bound(&mut peer, 1).await;
    assert_eq!(&bang, b"!");
}

#[test]
fn a_flush_leaves_no_waker_and_a_whole_send_frees_its_buffer() {
    on_ring(false, a_flushed_send_wakes_nobody_and_gives_its_buffer_back);
    on_ring(true, a_flushed_send_wakes_nobody_and_gives_its_buffer_back);
}
