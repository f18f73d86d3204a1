//! What our CPU custom ops (conv/, attention_cpu.rs) share: their inputs
//! as contiguous f32 slices, and an output buffer that several rayon tasks
//! write at disjoint places (the convolution's bands, the attention's rows).

use candle_core::{CpuStorage, Layout, Result};

/// The f32 elements of a contiguous tensor; an error naming `op` otherwise.
pub(crate) fn contiguous_f32<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op} takes f32 tensors");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op} takes contiguous tensors");
    };
    Ok(&data[start..end])
}

/// The buffer's start; each task derives its own part with [`SharedOut::at`].
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);

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
