//! Sends held until the end of the turn, off a ring: where io_uring is refused (ECS Fargate's
//! and the default Docker and containerd seccomp profiles, gVisor, kernels before 6.1) or
//! `--socket-io epoll` turns it off. A [`super::Socket`]'s write copies its bytes into a buffer
//! here and returns; the buffers a turn of the event loop queued are sent together once the
//! tasks that ran have written: by a task the turn's first write wakes (it runs after the
//! tasks already in the run queue) or by the park hook, whichever comes first. Together means
//! one `io_submit` for all of them where Linux AIO is allowed (`aio.rs`, `together.rs`; the
//! seccomp profiles that refuse io_uring allow it), one `send` each where not. Two writes of
//! one socket in a turn share a buffer; a write that finds its socket's last buffer still
//! queued sends it first. What it saves: docs/ARCHITECTURE.md, "Sends held until the end of
//! the turn" and "Sends batched by io_submit, off a ring".
//!
//! The task, not the park alone: tokio skips the park hook (`park_yield`) while a task that
//! used up its budget waits to run again, and held writes would wait for as long as any task
//! stays busy (the end-to-end test with four clients at once hung so).
//!
//! A buffer the socket cannot take whole (its send buffer full: a peer not reading) is stalled,
//! and the same task finishes it, as the kernel finishes a ring's `send`: it waits for room on
//! a duplicate of the socket's descriptor registered for writes alone, whether or not the
//! socket's owner polls it again (an owner forwarding a result waits on the server, not on the
//! client it wrote to), and wakes the owner if it waits. The socket's own registration is for
//! reads only: one registered for writes too is writable at once, and epoll said so once per
//! connection for nothing (strace, issue 16).
//!
//! A socket names its buffer by the slot's index and its descriptor, as on the ring (`ops.rs`):
//! a buffer that went whole frees its slot, which another socket may take; a slot naming this
//! socket's descriptor is this socket's, since no other open socket has that descriptor.

use std::cell::RefCell;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::task::{Context, Poll, Waker};

use tokio::io::unix::AsyncFd;

#[cfg(all(target_os = "linux", target_endian = "little"))]
mod aio;
#[cfg(not(all(target_os = "linux", target_endian = "little")))]
#[path = "no_aio.rs"]
mod aio;
mod room;
mod sender;
mod together;

pub use sender::send_at_park;

thread_local! {
    static OUTBOX: RefCell<Option<Outbox>> = const { RefCell::new(None) };
}

/// Buffers queued that are sent at once: bounds what a busy turn holds.
const SEND_EARLY: usize = 64;
/// Send buffers kept for reuse, at most, and the largest kept.
const MAX_FREE: usize = 32;
const MAX_KEPT: usize = 64 * 1024;
/// Never wait; never raise SIGPIPE (a peer that closed is an error of the write).
#[cfg(any(target_os = "linux", target_os = "android"))]
const FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const FLAGS: libc::c_int = libc::MSG_DONTWAIT;

#[derive(Default)]
pub struct Outbox {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots to send at the end of the turn, in order (an index sent early may appear twice:
    /// harmless, a slot sends only what it still holds).
    queued: Vec<u32>,
    /// Slots whose socket had no room, which the sending task finishes.
    stalled: Vec<u32>,
    buffers: Vec<Vec<u8>>,
    /// Writers to wake once the outbox is released (their stalled buffer went, or failed).
    wakers: Vec<Waker>,
    /// The sending task ([`send_after_the_turn`]), once it ran.
    sender: Option<Waker>,
    /// That task was spawned on this thread's runtime and has not ended with it.
    sending: bool,
    /// Sends a turn's buffers in one `io_submit` where the kernel allows it (`aio.rs`).
    aio: Option<aio::Aio>,
    /// Reused by [`Outbox::submit_together`]: the slots in its batch, and their results.
    batch: Vec<u32>,
    results: Vec<Option<i64>>,
    /// `io_submit` calls made (for the tests).
    #[cfg(test)]
    pub(super) submits: usize,
}

enum Slot {
    Free,
    Held(Held),
    /// The socket with this descriptor failed its `send` with this errno (until it reads it).
    Failed {
        fd: RawFd,
        errno: i32,
    },
}

struct Held {
    fd: RawFd,
    bytes: Vec<u8>,
    sent: usize,
    /// The writer: woken when its stalled buffer goes or fails.
    waker: Waker,
    /// The socket had no room: the sending task finishes this buffer.
    stalled: bool,
    room: Option<AsyncFd<OwnedFd>>,
}

/// What one attempt at a held buffer came to.
enum Sent {
    /// With the writer's waker.
    Whole(Waker),
    Stalled,
    /// With the writer's waker.
    Failed(Waker),
}

/// Gives this thread an outbox (once): the sockets made on it from then on write through it.
pub fn install() {
    install_with(true);
}

/// [`install`], with `io_submit` batching where the kernel allows it or never (tests of the
/// one-`send`-each path, which a kernel refusing AIO takes).
pub(super) fn install_with(batching: bool) {
    OUTBOX.with(|slot| {
        slot.borrow_mut().get_or_insert_with(|| Outbox {
            aio: aio::Aio::new().filter(|_| batching),
            ..Outbox::default()
        });
    });
}

/// How this thread's outbox sends, for the start-up log; `None` without one.
pub fn describe() -> Option<&'static str> {
    with_outbox(|outbox| match &outbox.aio {
        Some(_) => "sends batched by io_submit",
        None => "one send a buffer",
    })
}

/// Runs `f` on this thread's outbox; `None` when it has none.
pub fn with_outbox<R>(f: impl FnOnce(&mut Outbox) -> R) -> Option<R> {
    OUTBOX
        .try_with(|slot| slot.try_borrow_mut().ok()?.as_mut().map(f))
        .ok()
        .flatten()
}

impl Outbox {
    /// An empty buffer for a write.
    pub fn buffer(&mut self) -> Vec<u8> {
        self.buffers.pop().unwrap_or_default()
    }

    /// Holds `bytes` for the socket with descriptor `fd` until the end of the turn; its slot.
    pub fn queue(&mut self, fd: RawFd, bytes: Vec<u8>, waker: &Waker) -> u32 {
        let held = Slot::Held(Held {
            fd,
            bytes,
            sent: 0,
            waker: waker.clone(),
            stalled: false,
            room: None,
        });
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index as usize] = held;
                index
            }
            None => {
                self.slots.push(held);
                (self.slots.len() - 1) as u32
            }
        };
        self.queued.push(index);
        if self.queued.len() == 1 {
            self.wake_sender();
        }
        if self.queued.len() >= SEND_EARLY {
            self.send_queued();
        }
        index
    }

    /// Adds `slices` (up to `max` bytes in all) to the socket's buffer in slot `index` if it is
    /// still queued, untouched: two writes in one turn go in one `send`. How many it took;
    /// `None` when the buffer is not there to add to.
    pub fn append(
        &mut self,
        index: u32,
        fd: RawFd,
        slices: &[io::IoSlice<'_>],
        max: usize,
    ) -> Option<usize> {
        let Some(Slot::Held(held)) = self.slots.get_mut(index as usize) else {
            return None;
        };
        if held.fd != fd || held.stalled || held.sent > 0 || held.bytes.len() >= max {
            return None;
        }
        let before = held.bytes.len();
        for slice in slices {
            let room = max - held.bytes.len();
            held.bytes
                .extend_from_slice(&slice[..slice.len().min(room)]);
            if held.bytes.len() == max {
                break;
            }
        }
        Some(held.bytes.len() - before)
    }

    /// Done when the socket's buffer in slot `index` went whole (sending it now if it is still
    /// queued; a stalled one wakes `cx` when the sending task finished it); the errno of a
    /// failed `send`.
    pub fn poll(&mut self, index: u32, fd: RawFd, cx: &mut Context<'_>) -> Poll<Result<(), i32>> {
        let Some(Slot::Held(held)) = self.slots.get_mut(index as usize) else {
            return Poll::Ready(self.peek(index, fd).unwrap_or(Ok(())));
        };
        if held.fd != fd {
            return Poll::Ready(Ok(()));
        }
        if held.stalled {
            if !held.waker.will_wake(cx.waker()) {
                held.waker = cx.waker().clone();
            }
            return Poll::Pending;
        }
        match self.attempt(index) {
            Sent::Whole(_) => Poll::Ready(Ok(())),
            Sent::Failed(_) => Poll::Ready(self.peek(index, fd).unwrap_or(Ok(()))),
            Sent::Stalled => {
                self.stall(index);
                self.poll(index, fd, cx)
            }
        }
    }

    /// The outcome of the socket's buffer in slot `index` if it has one: `None` while held;
    /// the errno of a failed `send` (the slot freed).
    pub fn peek(&mut self, index: u32, fd: RawFd) -> Option<Result<(), i32>> {
        match self.slots.get(index as usize) {
            Some(Slot::Held(held)) if held.fd == fd => None,
            Some(Slot::Failed { fd: failed, errno }) if *failed == fd => {
                let errno = *errno;
                self.release(index);
                Some(Err(errno))
            }
            _ => Some(Ok(())),
        }
    }

    /// The socket with descriptor `fd` closes: its held buffer gets one more `send` (a socket
    /// with room takes it, as a closing socket's buffer would go), then its slot is freed.
    pub fn abandon(&mut self, index: u32, fd: RawFd) {
        match self.slots.get(index as usize) {
            Some(Slot::Held(held)) if held.fd == fd => {
                if let Sent::Whole(_) = self.attempt(index) {
                    return;
                }
            }
            Some(Slot::Failed { fd: failed, .. }) if *failed == fd => {}
            _ => return,
        }
        self.release(index);
    }

    /// Sends every queued buffer once: together in one `io_submit` where there are two or
    /// more and AIO works, then each the rest of the way (a buffer that went whole is freed
    /// without another system call).
    fn send_queued(&mut self) {
        let mut queued = std::mem::take(&mut self.queued);
        self.submit_together(&queued);
        for &index in &queued {
            let waiting = matches!(
                self.slots.get(index as usize),
                Some(Slot::Held(held)) if !held.stalled
            );
            if !waiting {
                continue;
            }
            match self.attempt(index) {
                Sent::Whole(_) => {}
                Sent::Failed(waker) => self.wakers.push(waker),
                Sent::Stalled => self.stall(index),
            }
        }
        queued.clear();
        self.queued = queued;
    }

    /// Sends what slot `index` still holds, without waiting: a buffer that goes whole frees
    /// the slot; a failed `send` leaves its errno there.
    fn attempt(&mut self, index: u32) -> Sent {
        let Some(Slot::Held(held)) = self.slots.get_mut(index as usize) else {
            return Sent::Whole(Waker::noop().clone());
        };
        while held.sent < held.bytes.len() {
            let rest = &held.bytes[held.sent..];
            // SAFETY: a send from a live buffer of ours on a descriptor its socket keeps open
            // while the slot names it (`Socket`'s drop abandons the slot first).
            let n = unsafe { libc::send(held.fd, rest.as_ptr().cast(), rest.len(), FLAGS) };
            if n > 0 {
                held.sent += n as usize;
                continue;
            }
            let error = io::Error::last_os_error();
            let errno = match error.kind() {
                _ if n == 0 => libc::EPIPE,
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Sent::Stalled,
                _ => error.raw_os_error().unwrap_or(libc::EIO),
            };
            return Sent::Failed(self.fail(index, errno));
        }
        Sent::Whole(self.release(index).unwrap_or_else(|| Waker::noop().clone()))
    }

    /// Leaves `errno` in slot `index` for its socket to read; the writer's waker.
    fn fail(&mut self, index: u32, errno: i32) -> Waker {
        let noop = Waker::noop().clone();
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return noop;
        };
        let Slot::Held(held) = std::mem::replace(slot, Slot::Free) else {
            return noop;
        };
        *slot = Slot::Failed { fd: held.fd, errno };
        self.recycle(held.bytes);
        held.waker
    }

    /// Frees slot `index` and keeps its buffer for reuse; the writer's waker if it held one.
    fn release(&mut self, index: u32) -> Option<Waker> {
        let slot = self.slots.get_mut(index as usize)?;
        let waker = match std::mem::replace(slot, Slot::Free) {
            Slot::Free => return None,
            Slot::Held(held) => {
                self.recycle(held.bytes);
                Some(held.waker)
            }
            Slot::Failed { .. } => None,
        };
        self.free.push(index);
        waker
    }

    /// Keeps a send buffer for the next write.
    fn recycle(&mut self, mut bytes: Vec<u8>) {
        if bytes.capacity() > 0 && bytes.capacity() <= MAX_KEPT && self.buffers.len() < MAX_FREE {
            bytes.clear();
            self.buffers.push(bytes);
        }
    }

    /// Slots holding a buffer or a failure.
    #[cfg(test)]
    pub(super) fn slots_in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}
