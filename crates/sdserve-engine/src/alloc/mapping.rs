//! Weight files mapped copy-on-write, whose pages back tensors directly.
//!
//! [`MappedFile::adopt`] returns a `Vec` whose buffer is a stretch of the
//! mapping. The mapping is registered here with a reference count (one for
//! the `MappedFile`, one per adopted `Vec`); the global allocator asks
//! [`release`] about every pointer it frees and unmaps the file when the last
//! reference goes. The mapping is private, so a tensor written in place gets
//! its own copy of the page and the file is never modified.
//!
//! The file must not shrink while it is mapped (the kernel would kill the
//! process on touching a page past its end): replace model files by renaming
//! a new file over them, as downloads and package managers do.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::installed;

/// How many files may back tensors at once; more are read by copying.
const SLOTS: usize = 128;

struct Region {
    start: AtomicUsize,
    end: AtomicUsize,
    refs: AtomicUsize,
}

static REGIONS: [Region; SLOTS] = [const {
    Region {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        refs: AtomicUsize::new(0),
    }
}; SLOTS];
/// Bounds of every registered region: most frees are outside and cost two loads.
static LOW: AtomicUsize = AtomicUsize::new(usize::MAX);
static HIGH: AtomicUsize = AtomicUsize::new(0);

fn find(addr: usize) -> Option<&'static Region> {
    if addr < LOW.load(Ordering::Acquire) || addr >= HIGH.load(Ordering::Acquire) {
        return None;
    }
    REGIONS.iter().find(|r| {
        let start = r.start.load(Ordering::Acquire);
        start != 0 && addr >= start && addr < r.end.load(Ordering::Acquire)
    })
}

/// Whether `ptr` points into a registered mapping.
pub(super) fn contains(ptr: *mut u8) -> bool {
    find(ptr as usize).is_some()
}

/// Drops one reference to the mapping holding `ptr`; false if `ptr` is not in one.
pub(super) fn release(ptr: *mut u8) -> bool {
    match find(ptr as usize) {
        Some(region) => {
            unref(region);
            true
        }
        None => false,
    }
}

fn unref(region: &Region) {
    if region.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
        let start = region.start.load(Ordering::Acquire);
        let len = region.end.load(Ordering::Acquire) - start;
        region.end.store(0, Ordering::Release);
        region.start.store(0, Ordering::Release);
        // SAFETY: the last reference is gone; the region was mapped by `MappedFile::open`.
        unsafe { libc::munmap(start as *mut libc::c_void, len) };
    }
}

/// Number of registered mappings still alive (tests).
pub fn live_mappings() -> usize {
    REGIONS
        .iter()
        .filter(|r| r.start.load(Ordering::Acquire) != 0)
        .count()
}

/// A whole file mapped private and writable (copy-on-write).
pub struct MappedFile {
    ptr: *mut u8,
    len: usize,
    /// The registered region, when tensors may point into this mapping.
    region: Option<&'static Region>,
}

// SAFETY: the mapping lives until the last reference is dropped; `bytes` only
// hands out stretches that no adopted `Vec` owns (the caller's contract).
unsafe impl Send for MappedFile {}
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Maps all of `file` (`len` bytes, non-zero).
    pub fn open(file: &File, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "empty file"));
        }
        // SAFETY: a fresh private mapping of a file we hold open; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = ptr.cast::<u8>();
        let region = if installed() {
            register(ptr as usize, len)
        } else {
            None
        };
        Ok(Self { ptr, len, region })
    }

    /// The bytes `start..end`, or None past the end. They must not overlap
    /// a stretch handed to [`MappedFile::adopt`].
    pub fn bytes(&self, start: usize, end: usize) -> Option<&[u8]> {
        if start > end || end > self.len {
            return None;
        }
        // SAFETY: in bounds of the live mapping.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.add(start), end - start) })
    }

    /// `count` values of `T` at byte `start`, as a `Vec` over the mapping's
    /// pages: None (copy instead) unless [`super::EngineAllocator`] is the
    /// global allocator, the stretch is in bounds and aligned for `T`.
    ///
    /// # Safety
    /// The bytes must be valid values of `T` (any bit pattern, for the float
    /// types used), and the stretch must not overlap another adopted one or
    /// one read through [`MappedFile::bytes`] later.
    pub unsafe fn adopt<T: Copy>(&self, start: usize, count: usize) -> Option<Vec<T>> {
        let region = self.region?;
        let bytes = count.checked_mul(std::mem::size_of::<T>())?;
        let end = start.checked_add(bytes)?;
        if count == 0 || end > self.len {
            return None;
        }
        // SAFETY: in bounds (checked above).
        let ptr = unsafe { self.ptr.add(start) };
        if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return None;
        }
        region.refs.fetch_add(1, Ordering::AcqRel);
        // SAFETY: the allocator treats this buffer as allocated until the Vec
        // frees it (see `release`); length and capacity are the stretch's.
        Some(unsafe { Vec::from_raw_parts(ptr.cast::<T>(), count, count) })
    }

    /// Drops the page-cache pages wholly inside `start..end` from this
    /// process (they are read again if touched): used after converting a
    /// tensor, so loading never holds a file and its converted copy at once.
    /// Pages shared with a neighbouring tensor are kept, since that one may
    /// be adopted and written.
    pub fn dont_need(&self, start: usize, end: usize) {
        let page = page_size();
        let first = start.div_ceil(page) * page;
        let last = (end.min(self.len) / page) * page;
        if first < last {
            // SAFETY: whole pages inside the mapping, belonging to no adopted Vec.
            unsafe {
                libc::madvise(
                    self.ptr.add(first).cast(),
                    last - first,
                    libc::MADV_DONTNEED,
                )
            };
        }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        match self.region {
            Some(region) => unref(region),
            // SAFETY: unregistered, so nothing else refers to the mapping.
            None => unsafe {
                libc::munmap(self.ptr.cast(), self.len);
            },
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// Claims a free slot for `start..start + len` with one reference.
fn register(start: usize, len: usize) -> Option<&'static Region> {
    let region = REGIONS.iter().find(|r| {
        r.start
            .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    })?;
    region.refs.store(1, Ordering::Release);
    region.end.store(start + len, Ordering::Release);
    LOW.fetch_min(start, Ordering::AcqRel);
    HIGH.fetch_max(start + len, Ordering::AcqRel);
    region.start.store(start, Ordering::Release);
    Some(region)
}
