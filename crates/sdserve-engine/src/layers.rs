//! The convolution, group norm and resnet layers of the UNet and VAE.
//!
//! Ours for three reasons. Speed: on the CPU convolutions run `conv/`'s
//! banded im2col + gemm (Winograd for large 3×3 layers) instead of candle's.
//! bf16 on the CPU: candle has no bf16 convolution kernel (without MKL), so a
//! bf16 convolution on the CPU widens its input and weight to f32 for the
//! call, runs its products in bf16 where the CPU has AVX512-BF16, and
//! narrows the result back (weights stay bf16 in memory; one layer's weight
//! is widened at a time). The group norm (with the SiLU that always follows
//! it in a resnet) is [`crate::group_norm`]'s.

use candle_core::{DType, Module, Result, Tensor, D};

use crate::conv::{conv2d, ConvGeometry, Precision};
pub use crate::group_norm::GroupNorm;
use candle_nn as nn;

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
        let sum = (shortcut + h)?;
        // Every SD VAE and UNet has 1: the division would be a full
        // single-threaded pass over the block's output for nothing.
        if self.output_scale_factor == 1.0 {
            Ok(sum)
        } else {
            sum / self.output_scale_factor
        }
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
