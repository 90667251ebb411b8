//! The provided buffers of a thread's ring: one block of `COUNT` buffers of `SIZE` bytes and
//! the ring of their ids the kernel takes from when a `recv` finds data. A socket waiting for
//! data holds no buffer; one with data holds its buffer until the reader has copied it out,
//! then gives it back here. When every buffer is held the kernel answers `ENOBUFS` and that
//! read falls back to tokio's (see `socket/mod.rs`).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// Buffers in the set: held only between a completion and the reader copying it out, so one
/// per socket with data in a turn of the event loop (more fall back to tokio's reads). The
/// kernel takes them in ring order, so all end up touched: 512 KiB of RSS, which 128 of them
/// (2 MiB) made 0.5 KiB per idle client of a 4,000-client burst.
pub const COUNT: u16 = 32;
/// One buffer: a TLS record's worth.
pub const SIZE: usize = 16 * 1024;
/// The buffer group the sockets' `recv`s select from.
pub const GROUP: u16 = 0;

pub struct Provided {
    entries: *mut BufRingEntry,
    layout: Layout,
    /// The buffers, written by the kernel: only ever reached through raw pointers, and a
    /// buffer is read only between its completion and its `give_back` (the kernel does not
    /// touch a buffer that is out of the ring).
    memory: *mut u8,
    memory_layout: Layout,
    tail: u16,
}

impl Provided {
    /// Allocates the set and registers it with `uring`.
    pub fn register(uring: &IoUring) -> io::Result<Self> {
        let layout = Layout::array::<BufRingEntry>(usize::from(COUNT))
            .and_then(|layout| layout.align_to(4096))
            .map_err(io::Error::other)?;
        // SAFETY: a non-zero size, freed in Drop with the same layout.
        let entries = unsafe { alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let memory_layout =
            Layout::from_size_align(usize::from(COUNT) * SIZE, 4096).map_err(io::Error::other)?;
        // SAFETY: a non-zero size, freed in Drop with the same layout.
        let memory = unsafe { alloc_zeroed(memory_layout) };
        if memory.is_null() {
            // SAFETY: allocated just above with this layout.
            unsafe { dealloc(entries.cast(), layout) };
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut provided = Provided {
            entries,
            layout,
            memory,
            memory_layout,
            tail: 0,
        };
        // SAFETY: the entries stay allocated until Drop, which runs after the ring is gone
        // (`Ring` drops its `IoUring` first).
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(entries as u64, COUNT, GROUP, 0)?;
        }
        for id in 0..COUNT {
            provided.give_back(id);
        }
        Ok(provided)
    }

    /// The first `length` bytes of buffer `id`, as the kernel wrote them.
    pub fn bytes(&self, id: u16, length: usize) -> &[u8] {
        if id >= COUNT {
            return &[];
        }
        // SAFETY: within the allocation (id < COUNT, length at most SIZE), and out of the
        // ring: the kernel filled it and does not write it again until `give_back`.
        unsafe {
            std::slice::from_raw_parts(self.memory.add(usize::from(id) * SIZE), length.min(SIZE))
        }
    }

    /// Puts buffer `id` back in the ring for the kernel to fill.
    pub fn give_back(&mut self, id: u16) {
        if id >= COUNT {
            return;
        }
        let index = usize::from(self.tail & (COUNT - 1));
        // SAFETY: index < COUNT, within the allocation; the kernel reads an entry only once
        // the tail published below covers it.
        let entry = unsafe { &mut *self.entries.add(index) };
        // SAFETY: id < COUNT: the start of buffer `id`, within the allocation.
        entry.set_addr(unsafe { self.memory.add(usize::from(id) * SIZE) } as u64);
        entry.set_len(SIZE as u32);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field of the first entry, shared with the kernel: published with
        // release ordering after the entry is written.
        let tail = unsafe { &*BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for Provided {
    fn drop(&mut self) {
        // SAFETY: allocated in `register` with these layouts.
        unsafe {
            dealloc(self.entries.cast(), self.layout);
            dealloc(self.memory, self.memory_layout);
        }
    }
}
