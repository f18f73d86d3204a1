//! Nearest-neighbour 2x upsampling of f32 NCHW tensors on the CPU: every
//! input row doubled along x, written twice, planes split across threads.
//!
//! candle's `upsample_nearest2d` computes a source index per output element
//! on one thread; before each decoder level's 3x3 convolution that was a
//! serial pass over the level's largest tensor (256 channels at 512x512 for
//! a 512x512 image).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_kernel::contiguous_f32;

/// `xs` (`b, c, h, w`) resized to `(out_h, out_w)` by nearest neighbour,
/// as torch's `interpolate(mode="nearest")`: f32 CPU tensors doubled in
/// both directions here, anything else by candle.
pub fn upsample_nearest(xs: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if xs.device().is_cpu() && xs.dtype() == DType::F32 && out_h == 2 * h && out_w == 2 * w {
        return xs.contiguous()?.apply_op1_no_bwd(&NearestDouble);
    }
    xs.upsample_nearest2d(out_h, out_w)
}

struct NearestDouble;

impl CustomOp1 for NearestDouble {
    fn name(&self) -> &'static str {
        "sdserve-upsample-nearest-2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = contiguous_f32(self.name(), storage, layout)?;
        let (b, c, h, w) = layout.shape().dims4()?;
        let shape = Shape::from((b, c, 2 * h, 2 * w));
        let mut out: Vec<f32> = Vec::with_capacity(4 * xs.len());
        if w > 0 && h > 0 {
            out.spare_capacity_mut()
                .par_chunks_mut(4 * h * w)
                .zip(xs.par_chunks(h * w))
                .for_each(|(plane, input)| double_plane(plane, input, w));
        }
        // SAFETY: the planes above wrote every one of the 4·len elements
        // (empty shapes have none to write).
        unsafe { out.set_len(4 * xs.len()) };
        Ok((CpuStorage::F32(out), shape))
    }
}

/// One plane: each input row of `w` values becomes two output rows of `2w`.
fn double_plane(plane: &mut [MaybeUninit<f32>], input: &[f32], w: usize) {
    for (rows, row) in plane.chunks_exact_mut(4 * w).zip(input.chunks_exact(w)) {
        let (first, second) = rows.split_at_mut(2 * w);
        for (pair, value) in first.chunks_exact_mut(2).zip(row) {
            pair[0].write(*value);
            pair[1].write(*value);
        }
        second.copy_from_slice(first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equals_candles_nearest_upsampling() -> Result<()> {
        let device = Device::Cpu;
        for (b, c, h, w) in [(1, 3, 5, 7), (2, 4, 1, 1), (1, 1, 8, 3)] {
            let xs = Tensor::randn(0f32, 1., (b, c, h, w), &device)?;
            let ours = upsample_nearest(&xs, 2 * h, 2 * w)?;
            let theirs = xs.upsample_nearest2d(2 * h, 2 * w)?;
            assert_eq!(ours.dims(), theirs.dims());
            let (ours, theirs) = (ours.flatten_all()?, theirs.flatten_all()?);
            assert_eq!(ours.to_vec1::<f32>()?, theirs.to_vec1::<f32>()?);
        }
        // Not a doubling, or a view: candle's result either way.
        let xs = Tensor::arange(0f32, 24., &device)?.reshape((1, 2, 3, 4))?;
        let odd = upsample_nearest(&xs, 5, 7)?;
        assert_eq!(
            odd.flatten_all()?.to_vec1::<f32>()?,
            xs.upsample_nearest2d(5, 7)?
                .flatten_all()?
                .to_vec1::<f32>()?
        );
        let view = xs.transpose(2, 3)?;
        let doubled = upsample_nearest(&view, 8, 6)?;
        assert_eq!(
            doubled.flatten_all()?.to_vec1::<f32>()?,
            view.contiguous()?
                .upsample_nearest2d(8, 6)?
                .flatten_all()?
                .to_vec1::<f32>()?
        );
        Ok(())
    }
}
