//! The convolution, group norm and resnet layers of the UNet and VAE.
//!
//! Ours for three reasons. Speed: on the CPU convolutions run `conv/`'s
//! banded im2col + gemm (Winograd for large 3×3 layers) instead of candle's.
//! bf16 on the CPU: candle has no bf16 convolution kernel (without MKL), so a
//! bf16 convolution on the CPU widens its input and weight to f32 for the
//! call, runs its products in bf16 where the CPU has AVX512-BF16, and
//! narrows the result back (weights stay bf16 in memory; one layer's weight
//! is widened at a time). Memory: candle's GroupNorm is five
//! out-of-place ops (centre, square, divide, scale, shift) and SiLU a sixth,
//! so at full VAE resolution a resnet held five copies of its input; on the
//! CPU in f32 our GroupNorm (with the SiLU that always follows it in a
//! resnet) is one pass writing one buffer.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor, D};

use crate::conv::{conv2d, ConvGeometry, Precision};
use crate::cpu_kernel::contiguous_f32;
use candle_nn as nn;
use rayon::prelude::*;

/// A 2-D convolution (`weight`, optional `bias`). On the CPU it runs our
/// banded im2col + gemm or Winograd (`conv/`), in f32 (bf16 widens for the
/// call); input and weight may differ in dtype (f32 activations over bf16
/// weights), the output has the input's.
pub struct Conv2d {
    inner: nn::Conv2d,
    /// The bias, or zeros: the CPU kernel starts its sums from it.
    bias: Tensor,
}

impl Conv2d {
    pub fn new(
        vb: nn::VarBuilder,
        (in_channels, out_channels): (usize, usize),
        kernel: usize,
        cfg: nn::Conv2dConfig,
    ) -> Result<Self> {
        Self::from_inner(nn::conv2d(in_channels, out_channels, kernel, cfg, vb)?)
    }

    /// A convolution without a bias (`weight` only).
    pub fn without_bias(
        vb: nn::VarBuilder,
        (in_channels, out_channels): (usize, usize),
        kernel: usize,
        cfg: nn::Conv2dConfig,
    ) -> Result<Self> {
        Self::from_inner(nn::conv2d_no_bias(
            in_channels,
            out_channels,
            kernel,
            cfg,
            vb,
        )?)
    }

    fn from_inner(inner: nn::Conv2d) -> Result<Self> {
        let out_channels = inner.weight().dim(0)?;
        let bias = match inner.bias() {
            Some(bias) => bias.clone(),
            None => Tensor::zeros(
                out_channels,
                inner.weight().dtype(),
                inner.weight().device(),
            )?,
        };
        Ok(Self { inner, bias })
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let cfg = self.inner.config();
        let dtype = xs.dtype();
        let weight_dtype = self.inner.weight().dtype();
        let ours = [dtype, weight_dtype]
            .iter()
            .all(|d| matches!(d, DType::F32 | DType::BF16));
        if !xs.device().is_cpu() || cfg.groups != 1 || !ours {
            return self.inner.forward(xs);
        }
        let geometry = ConvGeometry {
            padding: cfg.padding,
            stride: cfg.stride,
            dilation: cfg.dilation,
        };
        // bf16 models: the values are bf16 already, so bf16 products lose
        // nothing but Winograd's rounding of its transformed input.
        let bf16 = dtype == DType::BF16 || weight_dtype == DType::BF16;
        let precision = if bf16 && crate::bf16_gemm::available() {
            Precision::Bf16
        } else {
            Precision::F32
        };
        // bf16 products pack a bf16 weight as it is; f32 ones widen it.
        let weight = match precision {
            Precision::Bf16 => self.inner.weight().clone(),
            Precision::F32 => self.inner.weight().to_dtype(DType::F32)?,
        };
        let out = conv2d(
            &xs.to_dtype(DType::F32)?,
            &weight,
            &self.bias.to_dtype(DType::F32)?,
            geometry,
            precision,
        )?;
        out.to_dtype(dtype)
    }
}

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
        let out = norm.forward(xs)?;
        if silu {
            nn::ops::silu(&out)
        } else {
            Ok(out)
        }
    }
}

/// One pass per (image, group): mean and variance in f64 (two passes over the
/// group's contiguous run), then `(x - mean) / sqrt(var + eps) * w + b` and
/// SiLU written into the one output buffer.
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
                let n = x.len() as f64;
                let mean = x.iter().map(|v| *v as f64).sum::<f64>() / n;
                let var = x.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
                let inv = 1.0 / (var + self.eps).sqrt();
                let first_channel = (i % self.groups) * per_group;
                for (c, (out, x)) in out.chunks_mut(cells).zip(x.chunks(cells)).enumerate() {
                    let scale = (inv * w[first_channel + c] as f64) as f32;
                    let shift = (b[first_channel + c] as f64
                        - mean * inv * w[first_channel + c] as f64)
                        as f32;
                    for (o, v) in out.iter_mut().zip(x) {
                        let y = v * scale + shift;
                        *o = if self.silu { y / (1.0 + (-y).exp()) } else { y };
                    }
                }
            });
        Ok((CpuStorage::F32(out), xs_layout.shape().clone()))
    }
}

/// diffusers' `ResnetBlock2D` (default time-scale shift, silu): norm, conv,
/// add the projected time embedding, norm, conv, add the (projected) input.
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<nn::Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

/// The numbers a resnet is built from.
#[derive(Debug, Clone, Copy)]
pub struct ResnetShape {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding; `None` in the VAE.
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub output_scale_factor: f64,
}

impl ResnetBlock {
    pub fn new(vb: nn::VarBuilder, s: ResnetShape) -> Result<Self> {
        let conv3 = nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let (i, o) = (s.in_channels, s.out_channels);
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), s.groups, i, s.eps)?,
            conv1: Conv2d::new(vb.pp("conv1"), (i, o), 3, conv3)?,
            time_emb_proj: s
                .temb_channels
                .map(|t| nn::linear(t, o, vb.pp("time_emb_proj")))
                .transpose()?,
            norm2: GroupNorm::new(vb.pp("norm2"), s.groups, o, s.eps)?,
            conv2: Conv2d::new(vb.pp("conv2"), (o, o), 3, conv3)?,
            shortcut: (i != o)
                .then(|| Conv2d::new(vb.pp("conv_shortcut"), (i, o), 1, Default::default()))
                .transpose()?,
            output_scale_factor: s.output_scale_factor,
        })
    }

    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let shortcut = match &self.shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        let h = self.conv1.forward(&self.norm1.forward(xs, true)?)?;
        let h = match (temb, &self.time_emb_proj) {
            (Some(temb), Some(proj)) => project_rows(proj, &nn::ops::silu(temb)?)?
                .to_dtype(h.dtype())?
                .unsqueeze(D::Minus1)?
                .unsqueeze(D::Minus1)?
                .broadcast_add(&h)?,
            _ => h,
        };
        let h = self.conv2.forward(&self.norm2.forward(&h, true)?)?;
        (shortcut + h)? / self.output_scale_factor
    }
}

/// `proj` applied to each row of `xs` on its own: the CPU matrix kernels round
/// a product of 1-2 rows differently from one of 3+, and a job's image must
/// not depend on the batch it runs in (SDXL gives each image its own row).
fn project_rows(proj: &nn::Linear, xs: &Tensor) -> Result<Tensor> {
    // In the weight's dtype (the activations' may be f32 over bf16 weights).
    let xs = &xs.to_dtype(proj.weight().dtype())?;
    let rows = xs.dim(0)?;
    if rows == 1 {
        return proj.forward(xs);
    }
    let out = (0..rows)
        .map(|r| proj.forward(&xs.narrow(0, r, 1)?))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&out, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_group_norm_equals_candles_group_norm_and_silu() {
        let dev = Device::Cpu;
        let xs = (Tensor::randn(0f32, 3.0, (2, 12, 5, 7), &dev).unwrap() + 1.5).unwrap();
        let weight = Tensor::randn(1f32, 0.5, 12, &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.5, 12, &dev).unwrap();
        let ours = GroupNorm {
            weight: weight.clone(),
            bias: bias.clone(),
            groups: 3,
            eps: 1e-6,
        };
        let candle = nn::GroupNorm::new(weight, bias, 12, 3, 1e-6).unwrap();
        for silu in [false, true] {
            let mut expected = candle.forward(&xs).unwrap();
            if silu {
                expected = nn::ops::silu(&expected).unwrap();
            }
            let got = ours.forward(&xs, silu).unwrap();
            let diff = crate::test_util::max_diff(&got, &expected);
            assert!(diff < 1e-5, "silu {silu}: {diff}");
        }
        // bf16 (weights and input) takes candle's path.
        let bf16 = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let half = GroupNorm {
            weight: bf16(&ours.weight),
            bias: bf16(&ours.bias),
            ..ours
        };
        assert_eq!(half.forward(&bf16(&xs), true).unwrap().dtype(), DType::BF16);
    }
}
