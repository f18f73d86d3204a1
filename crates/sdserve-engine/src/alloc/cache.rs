//! Large blocks: our own anonymous mappings, reused within a job.
//!
//! Every allocation of at least [`MIN_BLOCK`] bytes is a private anonymous
//! mapping of its page-rounded size, counted while in use (`live`). Inside a
//! [`BlockReuse`] scope (a job) a freed one is kept and handed to the next
//! request it can hold (the smallest such; its tail past the request is
//! unmapped), which then costs no page faults and no zeroing by the kernel. What is kept is bounded by the scope's own
//! high-water mark: `live + kept` never exceeds the most that was ever live
//! at once, so reuse never raises the process's peak memory and the memory
//! plan's estimate of that peak stays true (a new high evicts the oldest
//! kept blocks first). Being our own mappings, large blocks never land in
//! glibc's heap, where freed memory would stay resident uncounted. When the
//! last scope ends every kept block is unmapped, so an idle server holds
//! only its weights.
//!
//! Nothing in here may allocate: it runs inside the global allocator.

use std::alloc::Layout;
use std::sync::{Mutex, MutexGuard};

/// Smallest block mapped on its own: below it glibc's heap serves better.
const MIN_BLOCK: usize = 1 << 20;
/// Alignment every mapping has (the smallest page size Linux uses).
const PAGE: usize = 4096;
/// How many blocks may be kept at once.
const SLOTS: usize = 256;

static STATE: Mutex<State> = Mutex::new(State::new());

/// Whether this layout is served here (always the same answer for the
/// layout an allocation and its free share).
pub(super) fn eligible(layout: Layout) -> bool {
    layout.size() >= MIN_BLOCK && layout.align() <= PAGE
}

/// Bytes of the mapping behind a block of `size` bytes.
fn mapped_len(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

/// A block for an eligible `layout`: a kept one of the same size if reuse
/// is on (zeroed if asked), else a fresh mapping (zero already). Null on failure.
pub(super) fn alloc(layout: Layout, zeroed: bool) -> *mut u8 {
    let len = mapped_len(layout.size());
    let kept = lock().take(len);
    if let Some((addr, kept_len)) = kept {
        // A larger block gives up its tail: what stays has been faulted in.
        if kept_len > len {
            unmap(addr + len, kept_len - len);
        }
        let ptr = addr as *mut u8;
        if zeroed {
            // SAFETY: the kept block is `len >= layout.size()` bytes of our mapping.
            unsafe { ptr.write_bytes(0, layout.size()) };
        }
        return ptr;
    }
    // SAFETY: a fresh anonymous mapping; checked below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let evicted = lock().allocated(len);
    evicted.unmap();
    ptr.cast()
}

/// Frees an eligible block: kept for reuse, or unmapped.
pub(super) fn dealloc(ptr: *mut u8, layout: Layout) {
    let len = mapped_len(layout.size());
    let (kept, evicted) = lock().freed(ptr as usize, len);
    evicted.unmap();
    if !kept {
        unmap(ptr as usize, len);
    }
}

fn unmap(addr: usize, len: usize) {
    // SAFETY: a mapping of ours that nothing refers to any more.
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

/// Bytes of freed blocks kept right now.
pub fn cached_bytes() -> usize {
    lock().blocks.bytes
}

/// Keeps freed blocks for reuse while it lives (a job's run), within the
/// high-water mark of what the job has held; when the last one is dropped
/// every kept block is unmapped.
pub struct BlockReuse(());

impl BlockReuse {
    pub fn begin() -> Self {
        let mut state = lock();
        if state.scopes == 0 {
            state.high = state.live;
        }
        state.scopes += 1;
        Self(())
    }
}

impl Drop for BlockReuse {
    fn drop(&mut self) {
        let mut state = lock();
        state.scopes = state.scopes.saturating_sub(1);
        let evicted = if state.scopes == 0 {
            state.blocks.evict_while(|_| true)
        } else {
            Evicted::none()
        };
        drop(state);
        evicted.unmap();
    }
}

fn lock() -> MutexGuard<'static, State> {
    // Nothing panics while the lock is held; recover rather than abort if it did.
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

struct State {
    blocks: Blocks,
    /// Bytes of counted blocks in use.
    live: usize,
    /// The most `live` has been since the first open scope began.
    high: usize,
    /// Open [`BlockReuse`] scopes.
    scopes: usize,
}

impl State {
    const fn new() -> Self {
        Self {
            blocks: Blocks::new(),
            live: 0,
            high: 0,
            scopes: 0,
        }
    }

    /// A kept block of at least `len` bytes as (address, its length); the
    /// caller unmaps the tail past `len`, which is no longer counted.
    fn take(&mut self, len: usize) -> Option<(usize, usize)> {
        if self.scopes == 0 {
            return None;
        }
        let block = self.blocks.take(len)?;
        self.live += len;
        Some(block)
    }

    fn allocated(&mut self, size: usize) -> Evicted {
        self.live += size;
        self.high = self.high.max(self.live);
        self.within_high()
    }

    fn freed(&mut self, addr: usize, size: usize) -> (bool, Evicted) {
        self.live = self.live.saturating_sub(size);
        if self.scopes == 0 || self.live + self.blocks.bytes + size > self.high {
            return (false, Evicted::none());
        }
        let evicted = if self.blocks.len == SLOTS {
            let mut first = true;
            self.blocks.evict_while(|_| std::mem::take(&mut first))
        } else {
            Evicted::none()
        };
        self.blocks.push(addr, size);
        (true, evicted)
    }

    /// Evicts the oldest kept blocks until `live + kept <= high`.
    fn within_high(&mut self) -> Evicted {
        let (live, high) = (self.live, self.high);
        self.blocks.evict_while(|bytes| live + bytes > high)
    }
}

/// Blocks taken out of the cache, unmapped after its lock is dropped.
struct Evicted {
    /// (address, length) of each block.
    addrs: [(usize, usize); SLOTS],
    len: usize,
}

impl Evicted {
    fn none() -> Self {
        Self {
            addrs: [(0, 0); SLOTS],
            len: 0,
        }
    }

    fn unmap(&self) {
        for &(addr, len) in &self.addrs[..self.len] {
            unmap(addr, len);
        }
    }
}

/// The kept blocks, oldest first, as (address, mapped length).
struct Blocks {
    slots: [(usize, usize); SLOTS],
    len: usize,
    bytes: usize,
}

impl Blocks {
    const fn new() -> Self {
        Self {
            slots: [(0, 0); SLOTS],
            len: 0,
            bytes: 0,
        }
    }

    /// Removes and returns the smallest block of at least `len` bytes (the
    /// newest of equals), as (address, its length).
    fn take(&mut self, len: usize) -> Option<(usize, usize)> {
        let (index, _) = self.slots[..self.len]
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, &(_, l))| l >= len)
            .min_by_key(|(_, &(_, l))| l)?;
        Some(self.remove(index))
    }

    /// Adds a block (there must be a free slot).
    fn push(&mut self, addr: usize, len: usize) {
        self.slots[self.len] = (addr, len);
        self.len += 1;
        self.bytes += len;
    }

    /// Evicts the oldest blocks while `more(bytes kept)` holds.
    fn evict_while(&mut self, mut more: impl FnMut(usize) -> bool) -> Evicted {
        let mut evicted = Evicted::none();
        while self.len > 0 && more(self.bytes) {
            evicted.addrs[evicted.len] = self.remove(0);
            evicted.len += 1;
        }
        evicted
    }

    /// Removes slot `index`, keeping the others in age order.
    fn remove(&mut self, index: usize) -> (usize, usize) {
        let block = self.slots[index];
        self.slots.copy_within(index + 1..self.len, index);
        self.len -= 1;
        self.bytes -= block.1;
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn addrs(e: Evicted) -> Vec<usize> {
        e.addrs[..e.len].iter().map(|&(addr, _)| addr).collect()
    }

    #[test]
    fn takes_the_smallest_block_that_holds_the_request() {
        let mut b = Blocks::new();
        b.push(1, 4 * MIB);
        b.push(2, 2 * MIB);
        b.push(3, 4 * MIB);
        assert_eq!(b.take(3 * MIB), Some((3, 4 * MIB)));
        assert_eq!(b.take(5 * MIB), None);
        assert_eq!(b.take(MIB), Some((2, 2 * MIB)));
        assert_eq!((b.len, b.bytes), (1, 4 * MIB));
        assert_eq!(mapped_len(MIB + 1), MIB + PAGE);
    }

    #[test]
    fn kept_blocks_never_take_live_bytes_past_the_high_water_mark() {
        let mut s = State::new();
        // Outside a scope nothing is kept, but use is counted.
        assert_eq!(s.allocated(4 * MIB).len, 0);
        assert!(!s.freed(10, 4 * MIB).0);
        assert_eq!(s.take(4 * MIB), None);
        s.scopes = 1;
        s.high = s.live;
        // A job holds A and B (4 MiB each) at once: high 8. Freeing A keeps it.
        s.allocated(4 * MIB);
        s.allocated(4 * MIB);
        assert_eq!((s.live, s.high), (8 * MIB, 8 * MIB));
        assert!(s.freed(1, 4 * MIB).0);
        // C reuses A: nothing new is allocated.
        assert_eq!(s.take(4 * MIB), Some((1, 4 * MIB)));
        assert_eq!((s.live, s.blocks.bytes), (8 * MIB, 0));
        // Freeing B and C keeps both (live 0 + kept 8 <= high 8).
        assert!(s.freed(2, 4 * MIB).0 && s.freed(3, 4 * MIB).0);
        // No kept block holds 6 MiB: a fresh one, and live 6 + kept 8 > 8
        // evicts the oldest until it fits.
        assert_eq!(s.take(6 * MIB), None);
        assert_eq!(addrs(s.allocated(6 * MIB)), vec![2, 3]);
        assert_eq!((s.live, s.blocks.bytes, s.high), (6 * MIB, 0, 8 * MIB));
        // Freeing it keeps it again: live + kept can only return to a past high.
        assert!(s.freed(4, 6 * MIB).0);
        assert_eq!((s.live, s.blocks.bytes), (0, 6 * MIB));
    }
}
