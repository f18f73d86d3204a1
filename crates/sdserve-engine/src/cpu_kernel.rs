//! What our CPU custom ops (conv/, attention_cpu.rs, attention_bf16.rs,
//! linear.rs) share: their inputs as contiguous slices, and an output buffer that several rayon tasks
//! write at disjoint places (the convolution's bands, the attention's rows).

use candle_core::{CpuStorage, Layout, Result};
use half::bf16;

use crate::bf16_gemm::Matrix;

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

/// The bf16 elements of a contiguous tensor; an error naming `op` otherwise.
pub(crate) fn contiguous_bf16<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [bf16]> {
    let CpuStorage::BF16(data) = storage else {
        candle_core::bail!("{op} takes bf16 tensors");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op} takes contiguous tensors");
    };
    Ok(&data[start..end])
}

/// The elements of a contiguous f32 or bf16 tensor, as the bf16 kernel takes them.
pub(crate) fn contiguous_matrix<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<Matrix<'a>> {
    Ok(match storage {
        CpuStorage::BF16(_) => Matrix::Bf16(contiguous_bf16(op, storage, layout)?),
        _ => Matrix::F32(contiguous_f32(op, storage, layout)?),
    })
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
