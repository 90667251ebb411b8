//! A turn's buffers written together: the outbox's side of `aio.rs`. Two or more queued
//! buffers go to the kernel in one `io_submit`; what each wrote is counted in its slot, and
//! `send_queued`'s loop then finishes each one as it would after its own `send` (freeing a
//! buffer that went whole, sending the rest of one that did not, stalling on no room).

use super::{Outbox, Slot, aio};

impl Outbox {
    /// Writes the queued buffers in one `io_submit` (two or more, and AIO available) and
    /// counts what each wrote; a failure is left for its socket. What is left of a buffer (a
    /// socket with no room for all of it) is for [`Outbox::send_queued`]'s `send`.
    pub(super) fn submit_together(&mut self, queued: &[u32]) {
        let Some(aio) = self.aio.as_mut().filter(|aio| aio.usable()) else {
            return;
        };
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        for &index in queued {
            if let Some(Slot::Held(held)) = self.slots.get(index as usize)
                && !held.stalled
                && held.sent < held.bytes.len()
                // An index queued twice (sent early, then reused) is written once.
                && !batch.contains(&index)
                && batch.len() < aio::CAPACITY
            {
                batch.push(index);
            }
        }
        // One buffer: a plain `send` costs no less a system call and less bookkeeping.
        if batch.len() >= 2 {
            for &index in &batch {
                if let Some(Slot::Held(held)) = self.slots.get(index as usize) {
                    aio.push(held.fd, &held.bytes[held.sent..]);
                }
            }
            let mut results = std::mem::take(&mut self.results);
            aio.submit(&mut results);
            #[cfg(test)]
            {
                self.submits += 1;
            }
            for (&index, &result) in batch.iter().zip(&results) {
                self.count_written(index, result);
            }
            self.results = results;
        }
        self.batch = batch;
    }

    /// Applies one write's result from `io_submit` to slot `index`: bytes it took; a failure
    /// (not `EAGAIN`, which the next `send` finds again and stalls on) left for the socket.
    fn count_written(&mut self, index: u32, result: Option<i64>) {
        let Some(result) = result else {
            return;
        };
        if result > 0 {
            if let Some(Slot::Held(held)) = self.slots.get_mut(index as usize) {
                held.sent = (held.sent + result as usize).min(held.bytes.len());
            }
            return;
        }
        let errno = aio::errno_of(result);
        if result < 0 && errno != libc::EAGAIN && errno != libc::EINTR {
            let waker = self.fail(index, errno);
            self.wakers.push(waker);
        }
    }
}
