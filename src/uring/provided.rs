//! The provided buffers of a thread's ring: one block of `COUNT` buffers of `SIZE` bytes and
//! the ring of their ids the kernel takes from when a `recv` finds data. A socket waiting for
//! data holds no buffer; one with data holds its buffer until the reader has copied it out,
//! then gives it back here. When every buffer is held the kernel answers `ENOBUFS` and that
//! read falls back to tokio's (see `socket.rs`).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// Buffers in the set: held only between a completion and the reader copying it out, so a
/// few per busy socket at most (2 MiB of address space, touched as used).
pub const COUNT: u16 = 128;
/// One buffer: a TLS record's worth.
pub const SIZE: usize = 16 * 1024;
/// The buffer group the sockets' `recv`s select from.
pub const GROUP: u16 = 0;

pub struct Provided {
    entries: *mut BufRingEntry,
    layout: Layout,
    memory: Vec<u8>,
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
        let mut provided = Provided {
            entries,
            layout,
            memory: vec![0; usize::from(COUNT) * SIZE],
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
        let start = usize::from(id) * SIZE;
        &self.memory[start..start + length.min(SIZE)]
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
        let start = usize::from(id) * SIZE;
        entry.set_addr(self.memory[start..].as_ptr() as u64);
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
        // SAFETY: allocated in `register` with this layout.
        unsafe { dealloc(self.entries.cast(), self.layout) }
    }
}
