//! Linux AIO (`io_submit`) for the outbox: the buffers a turn queued go to the kernel in one
//! system call, a `write` each, where io_uring is refused. The default seccomp profiles of
//! Docker and containerd, which block io_uring, allow the AIO calls. A socket's write is
//! synchronous inside `io_submit` (`sock_write_iter`; our sockets are non-blocking, so a full
//! one answers `EAGAIN`), and its result is read from the completion ring the kernel maps into
//! the process, as libaio does, with no second system call.
//!
//! What it saves, measured: docs/ARCHITECTURE.md, "Sends batched by io_submit, off a ring".
//! One `send` a buffer put each buffer's system-call exit in the turn, and each exit is a point
//! where a peer the `send` woke can preempt the sidecar; one `io_submit` has one exit.
//!
//! Not used (the outbox sends one `send` each) when `io_setup` fails (a seccomp profile that
//! blocks it, `fs.aio-max-nr` used up), when the ring's layout is not the one known here, when
//! a first write on a socket pair is not done inside the call (a sandbox that emulates AIO),
//! or when SIGPIPE is not ignored: a `write` (unlike `send` with `MSG_NOSIGNAL`) to a peer
//! that closed raises it, and Rust's runtime ignores it in every binary. A later `io_submit`
//! refused, or a write not done inside it, ends its use the same way.

use std::os::fd::{AsRawFd, RawFd};

/// Writes in one batch at most (the outbox submits at [`super::SEND_EARLY`] queued).
pub const CAPACITY: usize = 128;
/// `IOCB_CMD_PWRITE` (`linux/aio_abi.h`).
const PWRITE: u16 = 1;
/// The completion ring's header (`struct aio_ring` in `fs/aio.c`): its magic, and the only
/// layout (no incompatible features, a 32-byte header) read here.
const RING_MAGIC: u32 = 0xa10a_10a1;
const RING_HEADER: u32 = 32;
/// How long a write the kernel did not complete inside `io_submit` is waited for. A socket's
/// never is; this bounds the wait if a kernel ever did so.
const LATE_COMPLETION: libc::timespec = libc::timespec {
    tv_sec: 1,
    tv_nsec: 0,
};

/// `struct iocb` of `linux/aio_abi.h` (little-endian order of `aio_key` and `aio_rw_flags`).
#[repr(C)]
#[derive(Default)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: i32,
    opcode: u16,
    priority: i16,
    fd: u32,
    buffer: u64,
    length: u64,
    offset: i64,
    reserved: u64,
    flags: u32,
    result_fd: u32,
}

/// `struct io_event`: `data` is the write's place in its batch; `result` the bytes written
/// or a negated errno.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Event {
    data: u64,
    object: u64,
    result: i64,
    result2: i64,
}

/// The header of the completion ring, followed by its events.
#[repr(C)]
struct RingHeader {
    id: u32,
    entries: u32,
    head: u32,
    tail: u32,
    magic: u32,
    compatible: u32,
    incompatible: u32,
    length: u32,
}

pub struct Aio {
    /// The AIO context: the address of its completion ring.
    context: u64,
    batch: Vec<Iocb>,
    pointers: Vec<*mut Iocb>,
}

impl Aio {
    /// A context for this thread's outbox; `None` where AIO cannot be used (see the module).
    pub fn new() -> Option<Aio> {
        if !sigpipe_ignored() {
            return None;
        }
        let mut context: u64 = 0;
        // SAFETY: io_setup writes the new context to the pointer it is given.
        let made =
            unsafe { libc::syscall(libc::SYS_io_setup, CAPACITY as libc::c_long, &mut context) };
        if made != 0 || context == 0 {
            return None;
        }
        let aio = Aio {
            context,
            batch: Vec::with_capacity(CAPACITY),
            pointers: Vec::with_capacity(CAPACITY),
        };
        // SAFETY: the context's address is its ring, mapped by io_setup for the context's life.
        let header = unsafe { std::ptr::read_volatile(aio.header()) };
        let known = header.magic == RING_MAGIC
            && header.incompatible == 0
            && header.length == RING_HEADER
            && header.entries as usize > CAPACITY;
        let mut aio = known.then_some(aio)?;
        aio.writes_inline().then_some(aio)
    }

    /// Whether a socket's write is done inside `io_submit`, its result in the ring when the
    /// call returns, as Linux does (a sandbox that did it later would make every turn wait).
    fn writes_inline(&mut self) -> bool {
        let Ok((ours, peer)) = std::os::unix::net::UnixStream::pair() else {
            return false;
        };
        if ours.set_nonblocking(true).is_err() {
            return false;
        }
        self.push(ours.as_raw_fd(), b"?");
        let mut results = Vec::with_capacity(1);
        self.submit(&mut results);
        drop(peer);
        self.usable() && results == [Some(1)]
    }

    /// Adds a write of `bytes` to `fd` to the batch. `bytes` must stay where it is until
    /// [`Aio::submit`] returns.
    pub fn push(&mut self, fd: RawFd, bytes: &[u8]) {
        self.batch.push(Iocb {
            data: self.batch.len() as u64,
            opcode: PWRITE,
            fd: fd as u32,
            buffer: bytes.as_ptr() as u64,
            length: bytes.len() as u64,
            ..Iocb::default()
        });
    }

    /// Submits the batch in one `io_submit` and empties it; `results` gets each write's
    /// result, in the order pushed: bytes written, or a negated errno; `None` for one not
    /// submitted (the kernel refused it or the call), which the caller sends itself.
    pub fn submit(&mut self, results: &mut Vec<Option<i64>>) {
        results.clear();
        results.resize(self.batch.len(), None);
        self.pointers.clear();
        self.pointers
            .extend(self.batch.iter_mut().map(|iocb| iocb as *mut Iocb));
        // SAFETY: the iocbs and the buffers they name live until this returns; a socket's
        // write is done inside the call (see `reap_late` for one that is not).
        let submitted = unsafe {
            libc::syscall(
                libc::SYS_io_submit,
                self.context,
                self.pointers.len() as libc::c_long,
                self.pointers.as_mut_ptr(),
            )
        };
        let Ok(submitted) = usize::try_from(submitted) else {
            // None went: each is sent by the caller. A kernel or sandbox that refuses the
            // call itself would refuse it every turn, so the context goes.
            let errno = std::io::Error::last_os_error().raw_os_error();
            if !matches!(errno, Some(libc::EAGAIN | libc::EINTR)) {
                self.destroy();
            }
            self.batch.clear();
            return;
        };
        let reaped = self.reap(results);
        if reaped < submitted {
            self.reap_late(submitted - reaped, submitted, results);
        }
        self.batch.clear();
    }

    /// Reads the completions waiting in the ring into `results`, without a system call; how
    /// many.
    fn reap(&mut self, results: &mut [Option<i64>]) -> usize {
        let header = self.header();
        // SAFETY: the ring is mapped for the context's life; the kernel writes events before
        // it moves the tail, and reads the head to know what was consumed.
        unsafe {
            let entries = std::ptr::read_volatile(&raw const (*header).entries);
            let mut head = std::ptr::read_volatile(&raw const (*header).head);
            let tail = std::ptr::read_volatile(&raw const (*header).tail);
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            let events = header
                .cast::<u8>()
                .add(RING_HEADER as usize)
                .cast::<Event>();
            let mut reaped = 0;
            while head != tail && head < entries {
                let event = std::ptr::read_volatile(events.add(head as usize));
                record(results, event);
                reaped += 1;
                head = (head + 1) % entries;
            }
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            std::ptr::write_volatile(&raw mut (*header).head, head);
            reaped
        }
    }

    /// Waits (bounded) for `missing` completions the kernel did not post inside `io_submit`,
    /// then destroys the context, which waits for any still in flight (their buffers are the
    /// kernel's until then): a kernel or sandbox that completes a socket's write later would
    /// make each turn wait, so the outbox sends one `send` each from then on. A write whose
    /// completion never came counts as failed (`EIO`), since how far it went is unknown.
    fn reap_late(&mut self, missing: usize, submitted: usize, results: &mut [Option<i64>]) {
        let mut events = vec![Event::default(); missing];
        let mut timeout = LATE_COMPLETION;
        // SAFETY: `events` holds `missing` events; the timeout outlives the call.
        let got = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                self.context,
                missing as libc::c_long,
                missing as libc::c_long,
                events.as_mut_ptr(),
                &mut timeout,
            )
        };
        let got = usize::try_from(got).unwrap_or(0).min(missing);
        for event in &events[..got] {
            record(results, *event);
        }
        let submitted = submitted.min(results.len());
        for result in results[..submitted]
            .iter_mut()
            .filter(|result| result.is_none())
        {
            *result = Some(-i64::from(libc::EIO));
        }
        self.destroy();
    }

    fn header(&self) -> *mut RingHeader {
        self.context as *mut RingHeader
    }

    fn destroy(&mut self) {
        if self.context != 0 {
            // SAFETY: the context is ours; io_destroy waits for what it has in flight.
            unsafe { libc::syscall(libc::SYS_io_destroy, self.context) };
            self.context = 0;
        }
    }

    /// Whether the context still works (one whose write went astray was destroyed).
    pub fn usable(&self) -> bool {
        self.context != 0
    }
}

impl Drop for Aio {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Puts a completion's result in its write's place.
fn record(results: &mut [Option<i64>], event: Event) {
    if let Some(result) = results.get_mut(event.data as usize) {
        *result = Some(event.result);
    }
}

/// SIGPIPE is ignored: a `write` to a closed peer is then only an error (`EPIPE`).
fn sigpipe_ignored() -> bool {
    // SAFETY: a query of the current action into a zeroed struct of ours.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut action) == 0
            && action.sa_sigaction == libc::SIG_IGN
    }
}

/// A socket's error as the kernel's result gives it (a negated errno).
pub fn errno_of(result: i64) -> i32 {
    i32::try_from(-result).unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_iocb_and_event_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<Iocb>(), 64);
        assert_eq!(std::mem::size_of::<Event>(), 32);
        assert_eq!(std::mem::size_of::<RingHeader>(), RING_HEADER as usize);
    }

    #[test]
    fn a_context_is_made_where_sigpipe_is_ignored() {
        // Rust's test harness, like every Rust binary, ignores SIGPIPE.
        assert!(sigpipe_ignored());
        let aio = Aio::new();
        assert!(
            aio.as_ref().is_some_and(Aio::usable),
            "io_setup refused here"
        );
    }
}
