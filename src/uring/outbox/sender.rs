//! The task that sends what a turn queued and finishes what stalled, and the park hook's part
//! (see the module above for why both).

use std::task::{Context, Poll};

use super::{Outbox, with_outbox};

/// Sends what is queued and wakes the writers whose stalled buffers went or failed: the park
/// hook, and the sending task's work (which also waits for room, with `cx`).
pub fn send_at_park() {
    send_and_wake(None);
}

fn send_and_wake(cx: Option<&mut Context<'_>>) {
    let Some(mut wakers) = with_outbox(|outbox| {
        outbox.send_queued();
        if let Some(cx) = cx {
            outbox.finish_stalled(cx);
        }
        std::mem::take(&mut outbox.wakers)
    }) else {
        return;
    };
    for waker in wakers.drain(..) {
        waker.wake();
    }
    with_outbox(|outbox| outbox.wakers = wakers);
}

/// The task that sends what a turn queued and finishes what stalled (see the module's doc).
async fn send_after_the_turn() {
    // A runtime that ends drops this task: the next runtime on the thread spawns its own.
    struct Sending;
    impl Drop for Sending {
        fn drop(&mut self) {
            with_outbox(|outbox| {
                outbox.sending = false;
                outbox.sender = None;
            });
        }
    }
    let _sending = Sending;
    std::future::poll_fn(|cx| {
        with_outbox(|outbox| {
            if !outbox
                .sender
                .as_ref()
                .is_some_and(|kept| kept.will_wake(cx.waker()))
            {
                outbox.sender = Some(cx.waker().clone());
            }
        });
        send_and_wake(Some(cx));
        Poll::<()>::Pending
    })
    .await;
}

impl Outbox {
    /// Has the sending task run after the tasks queued now (spawning it on this thread's
    /// runtime the first time).
    pub(super) fn wake_sender(&mut self) {
        if let Some(sender) = &self.sender {
            sender.wake_by_ref();
            return;
        }
        if !self.sending && tokio::runtime::Handle::try_current().is_ok() {
            self.sending = true;
            tokio::spawn(send_after_the_turn());
        }
    }
}
