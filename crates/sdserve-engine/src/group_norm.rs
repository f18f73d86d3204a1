//! `torch.nn.GroupNorm` (affine), optionally followed by SiLU.
//!
//! candle's GroupNorm is five out-of-place ops (centre, square, divide,
//! scale, shift) and SiLU a sixth, so at full VAE resolution a resnet held
//! five copies of its input. On the CPU in f32 ours is one op writing one
//! buffer, vectorised: the statistics are summed in f64 over independent
//! lanes (a single f64 running sum cannot be vectorised: each add waits for
//! the last), and SiLU uses the softmax's vectorised `exp`. The scalar
//! version was 10% of a full-resolution VAE decode, and its `expf` calls
//! another 3%.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use candle_nn as nn;
use rayon::prelude::*;

use crate::cpu_kernel::contiguous_f32;
use crate::softmax::exp;

/// `torch.nn.GroupNorm` (affine), optionally followed by SiLU.
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(vb: nn::VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("{channels} channels do not split into {groups} groups");
        }
        Ok(Self {
            weight: vb.get(channels, "weight")?,
            bias: vb.get(channels, "bias")?,
            groups,
            eps,
        })
    }

    /// Normalises `xs` (`(batch, channels, ...)`), then applies SiLU when `silu`.
    pub fn forward(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        let fused = xs.device().is_cpu() && xs.dtype() == DType::F32 && xs.rank() >= 3;
        if fused {
            let op = FusedGroupNorm {
                groups: self.groups,
                eps: self.eps,
                silu,
            };
            // bf16 weights under f32 activations (mixed precision): widened
            // per call, `channels` values.
            let f32 = |t: &Tensor| t.to_dtype(DType::F32);
            return xs
                .contiguous()?
                .apply_op3_no_bwd(&f32(&self.weight)?, &f32(&self.bias)?, &op);
        }
        let norm = nn::GroupNorm::new(
            self.weight.clone(),
            self.bias.clone(),
            self.weight.dim(0)?,
            self.groups,
            self.eps,
        )?;
        let out = nn::Module::forward(&norm, xs)?;
        if silu {
            nn::ops::silu(&out)
        } else {
            Ok(out)
        }
    }
}

/// One task per (image, group): mean, then variance about it (two passes
/// over the group's contiguous run), then `x · scale + shift` per channel,
/// with SiLU, written into the one output buffer.
struct FusedGroupNorm {
    groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp3 for FusedGroupNorm {
    fn name(&self) -> &'static str {
        "fused-group-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), xs, xs_layout)?;
        let w = contiguous_f32(self.name(), weight, weight_layout)?;
        let b = contiguous_f32(self.name(), bias, bias_layout)?;
        let dims = xs_layout.dims();
        let channels = dims[1];
        let cells: usize = dims[2..].iter().product();
        let per_group = channels / self.groups;
        let run = per_group * cells;
        if run == 0 || w.len() != channels || b.len() != channels {
            candle_core::bail!("fused group norm: bad shapes {dims:?}, {} weights", w.len());
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(run)
            .zip(x.par_chunks(run))
            .enumerate()
            .for_each(|(i, (out, x))| {
                let channels = (i % self.groups) * per_group..(i % self.groups + 1) * per_group;
                let group = Group {
                    cells,
                    weight: &w[channels.clone()],
                    bias: &b[channels],
                    eps: self.eps,
                    silu: self.silu,
                };
                group.normalize(x, out);
            });
        Ok((CpuStorage::F32(out), xs_layout.shape().clone()))
    }
}

/// One group's parameters: its channels' weights and biases, each channel
/// `cells` values long.
struct Group<'a> {
    cells: usize,
    weight: &'a [f32],
    bias: &'a [f32],
    eps: f64,
    silu: bool,
}

impl Group<'_> {
    /// `out` = the group `x` normalised (and SiLU'd), compiled for the
    /// widest vectors the CPU has.
    fn normalize(&self, x: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked above).
                return unsafe { self.normalize_avx512(x, out) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                return unsafe { self.normalize_avx2(x, out) };
            }
        }
        self.normalize_any(x, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn normalize_avx512(&self, x: &[f32], out: &mut [f32]) {
        self.normalize_any(x, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn normalize_avx2(&self, x: &[f32], out: &mut [f32]) {
        self.normalize_any(x, out)
    }

    #[inline(always)]
    fn normalize_any(&self, x: &[f32], out: &mut [f32]) {
        let n = x.len() as f64;
        let mean = lane_sum(x, f64::from) / n;
        let var = lane_sum(x, |v| (f64::from(v) - mean).powi(2)) / n;
        let inv = 1.0 / (var + self.eps).sqrt();
        let rows = out.chunks_mut(self.cells).zip(x.chunks(self.cells));
        for ((out, x), (w, b)) in rows.zip(self.weight.iter().zip(self.bias)) {
            let scale = (inv * f64::from(*w)) as f32;
            let shift = (f64::from(*b) - mean * inv * f64::from(*w)) as f32;
            if self.silu {
                for (o, v) in out.iter_mut().zip(x) {
                    let y = v * scale + shift;
                    *o = y / (1.0 + exp(-y));
                }
            } else {
                for (o, v) in out.iter_mut().zip(x) {
                    *o = v * scale + shift;
                }
            }
        }
    }
}

/// Independent f64 sums per lane, so the adds vectorise.
const LANES: usize = 16;

/// `Σ term(v)` over `x` in f64, summed lane by lane.
#[inline(always)]
fn lane_sum(x: &[f32], term: impl Fn(f32) -> f64) -> f64 {
    let mut sums = [0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (s, v) in sums.iter_mut().zip(chunk) {
            *s += term(*v);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|v| term(*v)).sum();
    sums.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Against candle's GroupNorm (+ SiLU) run in f64, on groups whose
    /// length is and is not a whole number of lanes, with a mean far from
    /// zero (where a one-pass variance would lose digits).
    ///
    /// The inputs are random, so the bound is each element's own: `x·scale`
    /// and `shift` are each about mean/std and cancel, so the error is a few
    /// f32 roundings of `|x·scale| + |shift|` (large where a short group
    /// happens to have a small std), plus a few of the output for SiLU.
    #[test]
    fn fused_group_norm_equals_the_f64_group_norm_and_silu() {
        let dev = Device::Cpu;
        let f64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (channels, groups, h, w) in [(12, 3, 5, 7), (8, 2, 16, 16), (6, 6, 3, 1)] {
            let xs = (Tensor::randn(0f32, 3.0, (2, channels, h, w), &dev).unwrap() + 40.0).unwrap();
            let weight = Tensor::rand(0.5f32, 1.5, channels, &dev).unwrap();
            let bias = Tensor::randn(0f32, 0.5, channels, &dev).unwrap();
            let ours = GroupNorm {
                weight: weight.clone(),
                bias: bias.clone(),
                groups,
                eps: 1e-6,
            };
            let reference =
                nn::GroupNorm::new(f64(&weight), f64(&bias), channels, groups, 1e-6).unwrap();
            // Each element's cancelling magnitude |x·scale| + |shift|.
            let (x, wv, bv) = (
                values(&f64(&xs)),
                values(&f64(&weight)),
                values(&f64(&bias)),
            );
            let cells = h * w;
            let run = channels / groups * cells;
            let stats: Vec<(f64, f64)> = x
                .chunks(run)
                .map(|group| {
                    let n = group.len() as f64;
                    let mean = group.iter().sum::<f64>() / n;
                    let var = group.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                    (mean, 1.0 / (var + 1e-6).sqrt())
                })
                .collect();
            let magnitude: Vec<f64> = x
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let ((mean, inv), c) = (stats[i / run], (i / cells) % channels);
                    (v * inv * wv[c]).abs() + (bv[c] - mean * inv * wv[c]).abs()
                })
                .collect();
            for silu in [false, true] {
                let mut expected = nn::Module::forward(&reference, &f64(&xs)).unwrap();
                if silu {
                    expected = nn::ops::silu(&expected).unwrap();
                }
                let got = values(&f64(&ours.forward(&xs, silu).unwrap()));
                let expected = values(&expected);
                let largest = expected.iter().fold(0f64, |m, v| m.max(v.abs()));
                assert!(largest > 0.3, "the check must see real values: {largest}");
                let ulp = f64::from(f32::EPSILON);
                for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                    let bound = 4.0 * ulp * (magnitude[i] + e.abs()) + 1e-7;
                    assert!(
                        (g - e).abs() < bound,
                        "{channels}/{groups} {h}x{w} silu {silu} at {i}: {g} vs {e}, bound {bound}"
                    );
                }
            }
        }
        // bf16 (weights and input) takes candle's path.
        let xs = Tensor::randn(0f32, 1.0, (1, 4, 3, 3), &dev).unwrap();
        let bf16 = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let half = GroupNorm {
            weight: bf16(&Tensor::ones(4, DType::F32, &dev).unwrap()),
            bias: bf16(&Tensor::zeros(4, DType::F32, &dev).unwrap()),
            groups: 2,
            eps: 1e-6,
        };
        assert_eq!(half.forward(&bf16(&xs), true).unwrap().dtype(), DType::BF16);
    }
}
