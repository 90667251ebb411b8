//! What stalled: a buffer its socket had no room for, which the sending task finishes as the
//! kernel finishes a ring's `send`, whether or not the socket's owner polls it again (see the
//! module above).

use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::task::{Context, Poll};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{Outbox, Sent, Slot};

impl Outbox {
    /// Hands slot `index` to the sending task, which waits for room.
    pub(super) fn stall(&mut self, index: u32) {
        if let Some(Slot::Held(held)) = self.slots.get_mut(index as usize)
            && !held.stalled
        {
            held.stalled = true;
            self.stalled.push(index);
            self.wake_sender();
        }
    }

    /// The sending task's part: sends on what stalled, as far as each socket has room (`cx`
    /// woken when one has more), and wakes the writers of those that went or failed.
    pub(super) fn finish_stalled(&mut self, cx: &mut Context<'_>) {
        let mut stalled = std::mem::take(&mut self.stalled);
        stalled.retain(|&index| {
            let is_stalled = matches!(
                self.slots.get(index as usize),
                Some(Slot::Held(held)) if held.stalled
            );
            is_stalled && self.finish(index, cx).is_pending()
        });
        stalled.append(&mut self.stalled);
        self.stalled = stalled;
    }

    /// Sends on stalled slot `index` until it went, failed, or found no room (then `Pending`,
    /// with `cx` woken when there is some).
    fn finish(&mut self, index: u32, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.attempt(index) {
                Sent::Whole(waker) | Sent::Failed(waker) => {
                    self.wakers.push(waker);
                    return Poll::Ready(());
                }
                Sent::Stalled => std::task::ready!(self.poll_room(index, cx)),
            }
        }
    }

    /// Ready when the stalled socket in slot `index` may have room (its readiness cleared, so
    /// the next `send` finding none waits for a new edge); `cx` is woken when it does.
    fn poll_room(&mut self, index: u32, cx: &mut Context<'_>) -> Poll<()> {
        let Some(Slot::Held(held)) = self.slots.get_mut(index as usize) else {
            return Poll::Ready(());
        };
        if held.room.is_none() {
            match watch_room(held.fd) {
                Ok(room) => held.room = Some(room),
                Err(error) => {
                    let waker = self.fail(index, error.raw_os_error().unwrap_or(libc::EIO));
                    self.wakers.push(waker);
                    return Poll::Pending;
                }
            }
        }
        let Some(room) = &held.room else {
            return Poll::Ready(());
        };
        match room.poll_write_ready(cx) {
            Poll::Ready(Ok(mut ready)) => {
                ready.clear_ready();
                Poll::Ready(())
            }
            // An error of the registration shows in the next `send`.
            Poll::Ready(Err(_)) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A duplicate of the socket's descriptor registered with the runtime for writes alone: how a
/// stalled socket, registered for reads only, is known to have room.
fn watch_room(fd: RawFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the socket keeps `fd` open while its slot names it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let duplicate = borrowed.as_fd().try_clone_to_owned()?;
    // SAFETY: the `AsyncFd` owns the duplicate, which nothing else closes.
    Ok(unsafe { AsyncFd::register_with_interest(duplicate, Interest::WRITABLE) }?)
}
