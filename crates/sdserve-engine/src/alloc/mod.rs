//! The process's allocator: glibc's, plus two things candle's CPU backend
//! needs to be fast. The binary installs it (`#[global_allocator]`); without
//! it (library users, the engine's own tests) everything still works, only
//! without these two savings.
//!
//! * **Reuse of large freed blocks** ([`cache`]). Every candle op allocates
//!   its output; a large buffer is a fresh mapping that the kernel faults in
//!   and zeroes page by page, and unmaps when it is dropped: about a fifth
//!   of a 512x512 generation went there. Blocks of 1 MiB and more are our
//!   own mappings; within a job a freed one is kept (never past the job's
//!   own peak) and handed to the next request of its size.
//! * **Tensors backed by a weight file's pages** ([`mapping`]). A weight file
//!   is mapped copy-on-write and a tensor whose runtime dtype is the file's
//!   owns a `Vec` that points into the mapping, so loading copies nothing;
//!   this allocator recognises such pointers when the `Vec` is dropped.

mod cache;
mod mapping;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

pub use cache::{cached_bytes, BlockReuse};
pub use mapping::{live_mappings, MappedFile};

/// A layout no one else asks for: [`installed`] allocates it through the
/// global allocator and sees whether [`EngineAllocator`] answered.
const PROBE: Layout = match Layout::from_size_align(8, 1 << 16) {
    Ok(layout) => layout,
    Err(_) => panic!("probe layout"),
};
static PROBED: AtomicBool = AtomicBool::new(false);

/// Whether [`EngineAllocator`] is the process's global allocator (a direct
/// call to its methods, as in tests, does not count).
pub fn installed() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        // SAFETY: a valid non-zero layout, freed straight away. (black_box:
        // the compiler may otherwise drop an allocation that is never used.)
        unsafe {
            let ptr = std::hint::black_box(std::alloc::alloc(PROBE));
            if !ptr.is_null() {
                std::alloc::dealloc(ptr, PROBE);
            }
        }
        PROBED.load(Ordering::Acquire)
    })
}

/// The allocator the `sdserve` binary installs; see the module docs.
pub struct EngineAllocator;

unsafe impl GlobalAlloc for EngineAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout == PROBE {
            PROBED.store(true, Ordering::Release);
        }
        if cache::eligible(layout) {
            return cache::alloc(layout, false);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if cache::eligible(layout) {
            return cache::alloc(layout, true);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapping::release(ptr) {
            return;
        }
        if cache::eligible(layout) {
            return cache::dealloc(ptr, layout);
        }
        // SAFETY: `ptr` came from `System` (the layout decides, as it did at allocation).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `new_size` is non-zero and fits `layout`'s alignment (caller's contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let ours = mapping::contains(ptr) || cache::eligible(layout);
        if !ours && !cache::eligible(new_layout) {
            // SAFETY: forwarded unchanged (a heap block staying on the heap).
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Moving into, out of or between our blocks (or off a weight file's
        // pages, when a Vec over them grows): copy and free the old one.
        // SAFETY: as above.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both hold at least the smaller size; they cannot overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_installed_in_the_engine_tests() {
        // The engine's test binary keeps the system allocator: the zero-copy
        // path must then stay off (see `MappedFile::adopt`).
        assert!(!installed());
    }

    #[test]
    fn allocator_round_trips_small_large_zeroed_and_grown_blocks() {
        let a = EngineAllocator;
        let _reuse = BlockReuse::begin();
        for size in [8usize, 4096, 1 << 20, 3 << 20] {
            let layout = Layout::from_size_align(size, 8).unwrap();
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                p.write_bytes(0xAB, size);
                a.dealloc(p, layout);
                // A reused (dirty) block must come back zeroed.
                let z = a.alloc_zeroed(layout);
                assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                z.write_bytes(7, size);
                let g = a.realloc(z, layout, size * 2);
                assert!(std::slice::from_raw_parts(g, size).iter().all(|&b| b == 7));
                a.dealloc(g, Layout::from_size_align(size * 2, 8).unwrap());
            }
        }
    }
}
