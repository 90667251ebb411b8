//! The process's allocator on Linux with glibc: jemalloc for cache-line-aligned blocks, glibc's
//! malloc for everything else.
//!
//! Why: every client connection costs tokio two blocks aligned to 128 bytes (its task cell and
//! its socket registration, both padded against false sharing), allocated at accept. glibc
//! serves an aligned block by cutting it out of a bigger free chunk, so in a burst of
//! thousands of connections these long-lived blocks land between the logins' short-lived
//! memory (each connection's boxed login state, 824 bytes) and, once the logins are over,
//! pin every page of that memory: after 5,000 transaction-mode clients arrived at once an
//! idle client cost 1.68 KiB of RSS, with 3.1 MB of the heap's 4.3 MB of holes left by freed
//! login boxes (traced with an `LD_PRELOAD` log of every allocation). jemalloc keeps each size
//! class in pages of its own, so the aligned blocks pack 16 to a page away from the rest:
//! 0.92–0.96 KiB per client after the same burst, 0.79 when clients come one after the other (0.92
//! with glibc alone), for ~1.3 MiB more at start (`benches/memory.sh`).
//!
//! Why not jemalloc for everything: it cost session-mode clients more memory (17.95 vs 16.77
//! KiB each in a burst, measured 2026-11-29) and no less CPU per transaction; mimalloc cost
//! more everywhere (22 MiB at start, 2.18 KiB per client in a burst). Only allocation sites
//! that ask for 64-byte alignment or more take this path: tokio's and crossbeam's padded
//! blocks, a handful per connection, and session mode's one box per transaction, the attached
//! period's state, which [`CacheAligned`] sends here on purpose: glibc serves that block from
//! its bins rather than its per-thread cache, and jemalloc's thread cache takes 180 fewer
//! instructions a transaction (13,210 -> 13,030 in all, callgrind, issue 16; transaction
//! mode's box measured no different and stays with glibc). It lives only while the
//! transaction runs, so idle clients' memory is as before.
//!
//! The binary installs it (`#[global_allocator]` in `main.rs`), so tests that need an
//! allocator of their own (the fuzz harness counts bytes) can have one. Elsewhere (macOS,
//! musl) the system allocator serves everything.

use std::pin::Pin;
use std::task::{Context, Poll};

#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub use split::{MALLOC_CONF, Split};

pin_project_lite::pin_project! {
    /// A future aligned to a cache line, so that its box comes from jemalloc (see the module
    /// comment): for the state boxed anew for every transaction.
    #[repr(align(64))]
    pub struct CacheAligned<F> {
        #[pin]
        future: F,
    }
}

impl<F> CacheAligned<F> {
    pub fn new(future: F) -> Self {
        Self { future }
    }
}

impl<F: Future> Future for CacheAligned<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod split {
    use std::alloc::{GlobalAlloc, Layout, System};

    use tikv_jemallocator::Jemalloc;

    /// Blocks aligned to this or more are cache-line padded, made to live apart.
    const CACHE_LINE: usize = 64;

    /// jemalloc's settings, read before `main` (the binary exports them as `malloc_conf`):
    /// one arena (the default is four per CPU), since only a few kinds of block come here and
    /// each arena keeps pages of its own.
    pub const MALLOC_CONF: &std::ffi::CStr = c"narenas:1";

    /// Sends each block to one of the two allocators by its alignment, which a block keeps
    /// for life (`realloc` and `dealloc` are given the layout it was allocated with).
    pub struct Split;

    /// Whether jemalloc serves blocks of this layout.
    pub(super) fn to_jemalloc(layout: Layout) -> bool {
        layout.align() >= CACHE_LINE
    }

    // SAFETY: each call is forwarded unchanged to the allocator `to_jemalloc` picks for the
    // layout, and a block is always given back with the layout (so to the allocator) it came
    // from; both allocators uphold GlobalAlloc's contract themselves.
    unsafe impl GlobalAlloc for Split {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if to_jemalloc(layout) {
                unsafe { Jemalloc.alloc(layout) }
            } else {
                unsafe { System.alloc(layout) }
            }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if to_jemalloc(layout) {
                unsafe { Jemalloc.alloc_zeroed(layout) }
            } else {
                unsafe { System.alloc_zeroed(layout) }
            }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if to_jemalloc(layout) {
                unsafe { Jemalloc.dealloc(ptr, layout) }
            } else {
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if to_jemalloc(layout) {
                unsafe { Jemalloc.realloc(ptr, layout, new_size) }
            } else {
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }
    }

    /// Hands jemalloc's free pages back to the kernel at once.
    pub(super) fn purge() {
        // MALLCTL_ARENAS_ALL (4096): every arena.
        let name = c"arena.4096.purge";
        // SAFETY: a documented mallctl name that reads and writes nothing.
        unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
        }
    }
}

/// Hands the free pages of both allocators back to the kernel (`malloc_trim` and jemalloc's
/// purge); false where there is no such call.
pub fn give_back_free_pages() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        split::purge();
        // SAFETY: malloc_trim only walks the allocator's own free lists under its locks; it
        // takes no pointer from us.
        unsafe { libc::malloc_trim(0) };
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use std::alloc::Layout;

    use super::Split;
    use super::split::to_jemalloc;

    #[test]
    fn only_cache_line_aligned_blocks_go_to_jemalloc() {
        let layout = |size, align| Layout::from_size_align(size, align).unwrap();
        assert!(to_jemalloc(layout(256, 128)));
        assert!(to_jemalloc(layout(64, 64)));
        assert!(!to_jemalloc(layout(824, 8)));
        assert!(!to_jemalloc(layout(32 * 1024, 16)));
        let boxed = Layout::new::<super::CacheAligned<[u8; 3000]>>();
        assert!(to_jemalloc(boxed), "{boxed:?}");
    }

    /// Blocks of both kinds, grown, shrunk and freed from several threads at once, keep their
    /// contents and alignment (a block given back to the wrong allocator would crash here).
    #[test]
    fn blocks_of_both_kinds_survive_growth_and_threads() {
        let threads: Vec<_> = (0..4u8)
            .map(|t| std::thread::spawn(move || (0..2_000).for_each(|round| one_round(t, round))))
            .collect();
        for thread in threads {
            assert!(thread.join().is_ok());
        }
        assert!(super::give_back_free_pages());
    }

    /// Allocates, fills, grows, checks and frees one block of each kind through [`Split`].
    fn one_round(fill: u8, round: usize) {
        use std::alloc::GlobalAlloc;
        for align in [8, 128] {
            let layout = Layout::from_size_align(200 + round % 64, align).unwrap();
            let grown = 4_000 + round;
            // SAFETY: each block is used within the sizes it was given and freed once, with
            // the layout it has at that moment.
            unsafe {
                let block = Split.alloc(layout);
                assert!(!block.is_null() && (block as usize).is_multiple_of(align));
                block.write_bytes(fill, layout.size());
                let block = Split.realloc(block, layout, grown);
                assert!(!block.is_null() && (block as usize).is_multiple_of(align));
                assert_eq!(*block.add(layout.size() - 1), fill);
                Split.dealloc(block, Layout::from_size_align(grown, align).unwrap());
            }
        }
    }
}
