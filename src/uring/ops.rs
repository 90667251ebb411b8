//! What a socket does with its `send` on the ring: waits for it ([`Ring::poll`]), gives it up
//! when it is dropped ([`Ring::abandon`], then [`Ring::cancel`] if a flush did not finish it).
//!
//! A socket names its `send` by the slot's index and its own descriptor: a `send` that went
//! whole frees its slot at its completion (see `Ring::finish`), and another socket's `send`
//! may take the index before this socket looks. No other open socket has this descriptor, so
//! a slot holding it is this socket's; any other state of the slot means its `send` went.

use std::os::fd::RawFd;
use std::task::{Poll, Waker};

use io_uring::opcode;
use tracing::debug;

use super::ring::{CANCEL, Completion, Ring, Slot};

/// What a `send` that went whole reads as (its slot freed, its buffer given back).
fn went_whole() -> Completion {
    Completion {
        result: 0,
        owned: Vec::new(),
    }
}

impl Ring {
    /// Whether the socket with descriptor `fd` has its `send` in slot `index`, still waiting
    /// (after a [`Ring::flush`], which reaps).
    pub fn is_waiting(&self, index: u32, fd: RawFd) -> bool {
        matches!(
            self.slots.get(index as usize),
            Some(Slot::Waiting { sending, .. }) if sending.fd == fd
        )
    }

    /// Asks the kernel to end operation `index` now; its completion frees the slot.
    pub fn cancel(&mut self, index: u32) {
        let entry = opcode::AsyncCancel::new(u64::from(index))
            .build()
            .user_data(CANCEL);
        if let Err(error) = self.queue(entry) {
            debug!(%error, "cannot queue a cancel");
        }
    }

    /// The `send`'s completion if it came, leaving the waker kept (if any) as it is: for a
    /// caller that does not wait for it.
    pub fn peek(&mut self, index: u32, fd: RawFd) -> Option<Completion> {
        if self.is_waiting(index, fd) {
            return None;
        }
        match self.poll(index, fd, Waker::noop()) {
            Poll::Ready(done) => Some(done),
            Poll::Pending => None,
        }
    }

    /// The completion of the `send` the socket with descriptor `fd` has in slot `index`, or
    /// `Pending` with `waker` kept to be woken by it.
    pub fn poll(&mut self, index: u32, fd: RawFd, waker: &Waker) -> Poll<Completion> {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return Poll::Ready(went_whole());
        };
        match slot {
            Slot::Waiting {
                waker: kept,
                sending,
                ..
            } if sending.fd == fd => {
                if !kept.as_ref().is_some_and(|kept| kept.will_wake(waker)) {
                    *kept = Some(waker.clone());
                }
                Poll::Pending
            }
            Slot::Done { fd: failed, .. } if *failed == fd => {
                let Slot::Done { result, owned, .. } = std::mem::replace(slot, Slot::Free) else {
                    return Poll::Pending;
                };
                self.free.push(index);
                Poll::Ready(Completion { result, owned })
            }
            _ => Poll::Ready(went_whole()),
        }
    }

    /// The socket with descriptor `fd` is gone: its `send` in slot `index`, if still waiting,
    /// is marked abandoned (what it holds is given back once it completes); a failed one is
    /// freed.
    pub fn abandon(&mut self, index: u32, fd: RawFd) {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        match slot {
            Slot::Waiting {
                waker,
                abandoned,
                sending,
                ..
            } if sending.fd == fd => {
                *waker = None;
                *abandoned = true;
            }
            Slot::Done { fd: failed, .. } if *failed == fd => {
                if let Slot::Done { owned, .. } = std::mem::replace(slot, Slot::Free) {
                    self.recycle(owned);
                }
                self.free.push(index);
            }
            _ => {}
        }
    }
}
