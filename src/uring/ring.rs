//! The ring of one thread and its operations. An operation is a slot: pushed with the buffer it
//! owns (a `send`'s bytes) and the waker of the task awaiting it, completed when its entry
//! comes back from the completion queue. A socket dropped with an operation in flight
//! abandons the slot: its `send` gets the one enter that follows to finish (a socket with
//! room takes it at once) and is cancelled if it has not, so a peer that stops
//! reading cannot hold the connection open; the slot's buffers are freed when the completion
//! comes.
//!
//! Submissions wait in the queue until the thread's park hook (`thread.rs`) hands them all to
//! the kernel in one `io_uring_enter`, or go at once when the thread has no such hook (a
//! runtime not built by `main`, such as a test's), or when [`SUBMIT_EARLY`] of them wait.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::Waker;

use io_uring::{IoUring, opcode, squeue, types};
use tracing::debug;

/// Submission queue entries; a full queue is submitted at once.
const ENTRIES: u32 = 1024;
/// Queued submissions that are handed to the kernel without waiting for the park: bounds the
/// delay a busy thread (one that never parks) puts on them.
const SUBMIT_EARLY: usize = 64;
/// The user data of a cancellation's own completion, which nobody awaits.
pub(super) const CANCEL: u64 = u64::MAX;
/// `IORING_ENTER_GETEVENTS` (the crate keeps its `sys` module private).
const ENTER_GETEVENTS: u32 = 1;
/// Send buffers kept for reuse, at most, and the largest kept.
const MAX_FREE_SENDS: usize = 32;
const MAX_KEPT_SEND: usize = 64 * 1024;

pub struct Ring {
    pub(super) uring: IoUring,
    /// Signalled by the kernel when a completion waits to be run (see `new`).
    pub(super) wake: OwnedFd,
    pub(super) slots: Vec<Slot>,
    pub(super) free: Vec<u32>,
    sends: Vec<Vec<u8>>,
    batched: bool,
    /// A reaper task runs for this ring (src/uring/thread.rs).
    pub(super) reaping: bool,
    /// Reused between turns: no allocation per park.
    reaped: Vec<(u64, i32)>,
    pub(super) wakers: Vec<Waker>,
}

pub(super) enum Slot {
    Free,
    Waiting {
        waker: Option<Waker>,
        owned: Vec<u8>,
        abandoned: bool,
        /// A `send`: its socket and how much of `owned` went in earlier completions (the
        /// ring sends the rest itself, as a socket buffer would, whether or not its writer
        /// polls again: a flush does not wait for it).
        sending: Sending,
    },
    /// A `send` that failed (one that went whole frees its slot at once: see `finish`),
    /// kept until its socket, the one with descriptor `fd`, reads the error.
    Done {
        result: i32,
        owned: Vec<u8>,
        fd: RawFd,
    },
}

#[derive(Clone, Copy)]
pub(super) struct Sending {
    pub(super) fd: RawFd,
    sent: usize,
}

/// A finished `send` as its socket reads it: the kernel's result (bytes, or a negated errno)
/// and the buffer the operation owned; a `send` that went whole reads as a result of 0 and no
/// buffer (its slot and buffer went back to the ring at its completion).
pub struct Completion {
    pub result: i32,
    pub owned: Vec<u8>,
}

/// A `send` of `bytes` on `fd` (owned by its slot until it completes).
fn send_entry(fd: RawFd, bytes: &[u8]) -> squeue::Entry {
    opcode::Send::new(types::Fd(fd), bytes.as_ptr(), bytes.len() as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build()
}

impl Ring {
    /// `DEFER_TASKRUN`: a completion that arrives while the thread is elsewhere (in
    /// epoll_wait, running tasks) waits as deferred work until this thread's next enter, which
    /// runs it; the kernel signals the eventfd when such work is queued, so a parked thread
    /// wakes. (`COOP_TASKRUN` without it left a completion waiting until the thread woke for
    /// another reason: its wake-up does not interrupt epoll_wait.)
    pub(super) fn new(batched: bool) -> io::Result<Self> {
        let uring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(ENTRIES * 4)
            .build(ENTRIES)?;
        // SAFETY: a plain eventfd; `OwnedFd` closes it with the ring.
        let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created, owned by nothing else.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        uring.submitter().register_eventfd(wake.as_raw_fd())?;
        Ok(Ring {
            uring,
            wake,
            slots: Vec::new(),
            free: Vec::new(),
            sends: Vec::new(),
            batched,
            reaping: false,
            reaped: Vec::new(),
            wakers: Vec::new(),
        })
    }

    /// Queues `entry`, which may use `owned` until it completes; its slot.
    fn push(&mut self, entry: squeue::Entry, owned: Vec<u8>, sending: Sending) -> io::Result<u32> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot::Free);
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[index as usize] = Slot::Waiting {
            waker: None,
            owned,
            abandoned: false,
            sending,
        };
        if let Err(error) = self.queue(entry.user_data(u64::from(index))) {
            self.slots[index as usize] = Slot::Free;
            self.free.push(index);
            return Err(error);
        }
        Ok(index)
    }

    /// A `send` on `fd` of all of `owned`, which the operation owns until it completes: a
    /// partial send is followed by the rest, and the completion comes when all went or one
    /// failed.
    pub fn send(&mut self, fd: RawFd, owned: Vec<u8>) -> io::Result<u32> {
        let entry = send_entry(fd, &owned);
        self.push(entry, owned, Sending { fd, sent: 0 })
    }

    pub(super) fn queue(&mut self, entry: squeue::Entry) -> io::Result<()> {
        // SAFETY: what the entry points at is owned by its slot (a send's bytes) or is nothing
        // (a cancel), alive until its completion.
        while unsafe { self.uring.submission().push(&entry) }.is_err() {
            self.uring.submit()?;
        }
        if !self.batched || self.uring.submission().len() >= SUBMIT_EARLY {
            self.enter();
        }
        Ok(())
    }

    /// Hands what is queued to the kernel now (a socket about to close its descriptor).
    /// Whether the queue is empty after it; a failed enter (no room in the completion queue)
    /// is retried after reaping.
    pub fn flush(&mut self) -> bool {
        // Reaped first: a completion waiting there (a partial send) settles its slot.
        self.reap();
        for _ in 0..4 {
            if self.uring.submission().is_empty() {
                return true;
            }
            self.enter();
            self.reap();
        }
        self.uring.submission().is_empty()
    }

    /// Submits what is queued and runs completions waiting as task work.
    pub(super) fn enter(&mut self) {
        let queued = self.uring.submission().len() as u32;
        // SAFETY: no argument; GETEVENTS with no minimum waits for nothing.
        let entered = unsafe {
            self.uring
                .submitter()
                .enter::<libc::sigset_t>(queued, 0, ENTER_GETEVENTS, None)
        };
        if let Err(error) = entered {
            debug!(%error, "io_uring_enter failed");
        }
    }

    /// [`Ring::enter`] with the eventfd off, then [`Ring::reap`]: for a caller that wakes the
    /// reaped tasks itself (the park hook, the reaper). What completes in the enter itself (a
    /// `send` the socket takes at once, the usual case) is reaped right after it, and its
    /// signal woke the thread for nothing from the `epoll_wait` it parked in next: one more
    /// `epoll_wait` a round trip for a lone client (strace, issue 16). Nothing is missed: a
    /// completion posted while the eventfd is off is in the queue when this reaps (once it is
    /// on again), and task work queued meanwhile sets the `taskrun` flag, which the caller
    /// checks before it lets the thread park.
    pub(super) fn enter_and_reap(&mut self) -> usize {
        self.uring.completion().disable_eventfd();
        self.enter();
        self.uring.completion().enable_eventfd();
        self.reap()
    }

    /// Moves completions into their slots and the wakers to call (once the ring is released)
    /// into `self.wakers`.
    /// How many completions it read.
    pub(super) fn reap(&mut self) -> usize {
        let mut reaped = std::mem::take(&mut self.reaped);
        reaped.extend(
            self.uring
                .completion()
                .map(|entry| (entry.user_data(), entry.result())),
        );
        for &(data, result) in &reaped {
            if data != CANCEL {
                self.complete(data as usize, result);
            }
        }
        let count = reaped.len();
        reaped.clear();
        self.reaped = reaped;
        count
    }

    /// Makes the reaper run once more (the kernel ran part of the deferred work only).
    pub(super) fn signal_self(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a local array to the ring's own eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    fn complete(&mut self, index: usize, result: i32) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        let (waker, owned, abandoned, sending) = match std::mem::replace(slot, Slot::Free) {
            Slot::Waiting {
                waker,
                owned,
                abandoned,
                sending,
            } => (waker, owned, abandoned, sending),
            other => {
                *slot = other;
                return;
            }
        };
        let mut result = result;
        let mut owned = owned;
        // An abandoned send is not continued: its socket may close its descriptor at once,
        // and the number may go to another connection.
        let mut rest = sending;
        if result > 0 && !abandoned {
            rest.sent += result as usize;
            if rest.sent >= owned.len() {
                // All of it went: the buffer is free now, not when its socket next writes (an
                // idle client's last answer, its greeting, would hold it: 0.4 KiB of every
                // idle client in a burst, benches/memory.sh).
                self.recycle(std::mem::take(&mut owned));
            } else {
                let entry = send_entry(rest.fd, &owned[rest.sent..]).user_data(index as u64);
                self.slots[index] = Slot::Waiting {
                    waker,
                    owned,
                    abandoned,
                    sending: rest,
                };
                let Err(error) = self.queue(entry) else {
                    return;
                };
                let Slot::Waiting { waker, owned, .. } =
                    std::mem::replace(&mut self.slots[index], Slot::Free)
                else {
                    return;
                };
                result = -error.raw_os_error().unwrap_or(libc::EIO);
                return self.finish(index, waker, owned, abandoned, result, rest.fd);
            }
        }
        self.finish(index, waker, owned, abandoned, result, rest.fd);
    }

    /// Ends a finished operation: a `send` that went whole (a positive result, its buffer
    /// given back) frees its slot at once, and one that failed keeps its result there for its
    /// socket; either wakes the task waiting for it, if one is. An abandoned one frees what it
    /// held.
    ///
    /// Freed at once because an idle client's last `send` held its slot until the client's
    /// next write: 72 bytes (in a vector that doubles) of every idle client in a burst, which
    /// kept io_uring over the 1 KiB target (1.03 KiB, `benches/memory.sh`, issue 16). The
    /// socket still holds the index, which another `send` may take: [`Ring::poll`] tells its
    /// own from another's by the descriptor, which no other open socket has.
    fn finish(
        &mut self,
        index: usize,
        waker: Option<Waker>,
        owned: Vec<u8>,
        abandoned: bool,
        result: i32,
        fd: RawFd,
    ) {
        if abandoned || (result > 0 && owned.is_empty()) {
            self.recycle(owned);
            self.free.push(index as u32);
        } else {
            self.slots[index] = Slot::Done { result, owned, fd };
        }
        if !abandoned {
            self.wakers.extend(waker);
        }
    }

    /// Slots holding an operation (a `send` in flight, or one that failed and was not read).
    #[cfg(test)]
    pub(super) fn slots_in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Keeps a send buffer for the next send.
    pub fn recycle(&mut self, mut owned: Vec<u8>) {
        if owned.capacity() > 0
            && owned.capacity() <= MAX_KEPT_SEND
            && self.sends.len() < MAX_FREE_SENDS
        {
            owned.clear();
            self.sends.push(owned);
        }
    }

    /// An empty send buffer.
    pub fn send_buffer(&mut self) -> Vec<u8> {
        self.sends.pop().unwrap_or_default()
    }
}

impl Drop for Ring {
    /// Only a thread that ends drops its ring (a test's): the kernel tears the ring down after
    /// the descriptor closes, so a buffer a `send` still reads from is leaked, not freed.
    fn drop(&mut self) {
        for slot in self.slots.drain(..) {
            if let Slot::Waiting { owned, .. } = slot {
                std::mem::forget(owned);
            }
        }
    }
}
