//! What a socket does with its `send` on the ring: waits for it ([`Ring::poll`]), gives it up
//! when it is dropped ([`Ring::abandon`], then [`Ring::cancel`] if a flush did not finish it).

use std::task::{Poll, Waker};

use io_uring::opcode;
use tracing::debug;

use super::ring::{CANCEL, Completion, Ring, Slot};

impl Ring {
    /// Whether operation `index` is still waiting for its completion (after a [`Ring::flush`],
    /// which reaps).
    pub fn is_waiting(&self, index: u32) -> bool {
        matches!(self.slots.get(index as usize), Some(Slot::Waiting { .. }))
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

    /// The operation's completion if it came, leaving the waker kept (if any) as it is: for
    /// a caller that does not wait for it.
    pub fn peek(&mut self, index: u32) -> Option<Completion> {
        if let Some(Slot::Waiting { .. }) = self.slots.get(index as usize) {
            return None;
        }
        match self.poll(index, Waker::noop()) {
            Poll::Ready(done) => Some(done),
            Poll::Pending => None,
        }
    }

    /// The operation's completion, or `Pending` with `waker` kept to be woken by it.
    pub fn poll(&mut self, index: u32, waker: &Waker) -> Poll<Completion> {
        let gone = || Completion {
            result: -libc::EBADF,
            owned: Vec::new(),
        };
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return Poll::Ready(gone());
        };
        match slot {
            Slot::Waiting { waker: kept, .. } => {
                if !kept.as_ref().is_some_and(|kept| kept.will_wake(waker)) {
                    *kept = Some(waker.clone());
                }
                Poll::Pending
            }
            Slot::Done { .. } => {
                let Slot::Done { result, owned } = std::mem::replace(slot, Slot::Free) else {
                    return Poll::Pending;
                };
                self.free.push(index);
                Poll::Ready(Completion { result, owned })
            }
            Slot::Free => Poll::Ready(gone()),
        }
    }

    /// The owner of operation `index` is gone: a waiting operation is marked so (what it holds
    /// is given back once it completes), a completed one freed.
    pub fn abandon(&mut self, index: u32) {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        match std::mem::replace(slot, Slot::Free) {
            Slot::Waiting { owned, sending, .. } => {
                *slot = Slot::Waiting {
                    waker: None,
                    owned,
                    abandoned: true,
                    sending,
                };
            }
            Slot::Done { owned, .. } => {
                self.recycle(owned);
                self.free.push(index);
            }
            Slot::Free => {}
        }
    }
}
