//! An output buffer that several rayon tasks write at disjoint places (the
//! CPU convolution's bands, the attention's query rows).

/// The buffer's start; each task derives its own part with [`SharedOut::at`].
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);

// SAFETY: callers write only the part of the buffer their task owns, and the
// buffer outlives the parallel loop that uses this pointer.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(buffer: &mut [f32]) -> Self {
        Self(buffer.as_mut_ptr())
    }

    /// The pointer `offset` elements in (a method, so closures capture the
    /// `Sync` wrapper, not the raw field).
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}
