//! Forwarding buffers, reused: a client holds one only while bytes move between it and an
//! upstream connection, and taking one costs a pop from a short free list instead of a fresh
//! zeroed allocation (which, at 32 KiB per direction per transaction, cost more CPU in
//! transaction mode than the forwarding itself). The transaction-mode rewriters' output
//! vectors are reused the same way ([`OutVec`]): two allocations and two frees fewer per
//! transaction.
//!
//! The free lists are the thread's own, not shared under a lock: a transaction-mode
//! transaction takes and gives back four of these, and the eight uncontended lock round trips
//! cost ~160 instructions of the ~16,000 a transaction (callgrind, issue 16). The sidecar runs
//! one runtime thread by default; with `--worker-threads N` each keeps at most [`MAX_FREE`]
//! of each kind (a task that moves threads takes from one list and gives back to another, so
//! the lists fill unevenly, each within that bound).

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Size of one buffer: large enough for a COPY chunk or a batch of DataRows per read.
pub const BUFFER_SIZE: usize = 32 * 1024;

/// Free buffers kept for reuse at most, per thread (2 MiB); more are freed when given back.
const MAX_FREE: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    /// Free output vectors, kept with their capacity.
    static FREE_VECS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Pops from a thread's free list (`None` while the thread ends).
pub(crate) fn pop_free<T>(list: &'static std::thread::LocalKey<RefCell<Vec<T>>>) -> Option<T> {
    list.try_with(|free| free.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten()
}

/// Pushes onto a thread's free list while it has room ([`MAX_FREE`]; else `item` is dropped).
pub(crate) fn push_free<T>(list: &'static std::thread::LocalKey<RefCell<Vec<T>>>, item: T) {
    let _ = list.try_with(|free| {
        if let Ok(mut free) = free.try_borrow_mut()
            && free.len() < MAX_FREE
        {
            free.push(item);
        }
    });
}

/// A [`BUFFER_SIZE`] byte buffer that goes back to the free list when dropped. Its contents
/// are whatever the previous user left: read into it before reading from it.
pub struct Buffer {
    bytes: Option<Box<[u8]>>,
}

impl Buffer {
    /// A buffer from the free list, or a new one.
    pub fn take() -> Self {
        let bytes = pop_free(&FREE).unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice());
        Self { bytes: Some(bytes) }
    }
}

impl Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes.as_deref().unwrap_or_default()
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.bytes.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(bytes) = self.bytes.take() {
            push_free(&FREE, bytes);
        }
    }
}

/// A vector kept for reuse only up to this capacity: a typical batch needs 1–2 KiB, and a
/// vector grown by a large result is not kept (a thread's free list holds at most 512 KiB).
const MAX_KEPT_CAPACITY: usize = 8 * 1024;

/// A byte vector that goes back to a free list, emptied, when dropped.
#[derive(Debug, Default)]
pub struct OutVec(Vec<u8>);

impl OutVec {
    /// An empty vector that can hold at least `capacity` bytes (none taken for 0).
    pub fn take(capacity: usize) -> Self {
        if capacity == 0 {
            return Self::default();
        }
        let mut bytes = pop_free(&FREE_VECS).unwrap_or_default();
        bytes.reserve(capacity);
        Self(bytes)
    }
}

impl Deref for OutVec {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for OutVec {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for OutVec {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0);
        if bytes.capacity() == 0 || bytes.capacity() > MAX_KEPT_CAPACITY {
            return;
        }
        bytes.clear();
        push_free(&FREE_VECS, bytes);
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer").field("len", &self.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_have_the_full_size_and_are_reused() {
        let mut first = Buffer::take();
        assert_eq!(first.len(), BUFFER_SIZE);
        first[0] = 42;
        let address = first.as_ptr();
        drop(first);
        // The thread's list: one of a few takes gets ours back.
        let taken: Vec<Buffer> = (0..MAX_FREE).map(|_| Buffer::take()).collect();
        assert!(taken.iter().all(|b| b.len() == BUFFER_SIZE));
        assert!(taken.iter().any(|b| b.as_ptr() == address));
    }

    #[test]
    fn output_vectors_come_back_empty_with_their_capacity() {
        let mut first = OutVec::take(1024);
        assert!(first.is_empty() && first.capacity() >= 1024);
        first.extend_from_slice(b"leftover");
        let address = first.as_ptr();
        drop(first);
        let taken: Vec<OutVec> = (0..MAX_FREE).map(|_| OutVec::take(16)).collect();
        assert!(taken.iter().all(|v| v.is_empty() && v.capacity() >= 16));
        assert!(taken.iter().any(|v| v.as_ptr() == address));
        assert_eq!(OutVec::take(0).capacity(), 0, "nothing taken for 0");
    }
}
