//! The convolution and resnet layers of the UNet and VAE, ours so that bf16
//! runs on the CPU: candle's CPU convolution has no bf16 kernel (without MKL),
//! so a bf16 convolution on the CPU widens its input and weight to f32 for the
//! call and narrows the result back. Weights stay bf16 in memory; only one
//! layer's weight is ever widened at a time.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn as nn;

/// A 2-D convolution (`weight`, optional `bias`) that also runs bf16 on the CPU.
pub struct Conv2d {
    inner: nn::Conv2d,
}

impl Conv2d {
    pub fn new(
        vb: nn::VarBuilder,
        (in_channels, out_channels): (usize, usize),
        kernel: usize,
        cfg: nn::Conv2dConfig,
    ) -> Result<Self> {
        Ok(Self {
            inner: nn::conv2d(in_channels, out_channels, kernel, cfg, vb)?,
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if !(xs.dtype() == DType::BF16 && xs.device().is_cpu()) {
            return self.inner.forward(xs);
        }
        let cfg = self.inner.config();
        let weight = self.inner.weight().to_dtype(DType::F32)?;
        let out = xs.to_dtype(DType::F32)?.conv2d(
            &weight,
            cfg.padding,
            cfg.stride,
            cfg.dilation,
            cfg.groups,
        )?;
        let out = match self.inner.bias() {
            Some(bias) => {
                let bias = bias.to_dtype(DType::F32)?.reshape((1, (), 1, 1))?;
                out.broadcast_add(&bias)?
            }
            None => out,
        };
        out.to_dtype(DType::BF16)
    }
}

/// diffusers' `ResnetBlock2D` (default time-scale shift, silu): norm, conv,
/// add the projected time embedding, norm, conv, add the (projected) input.
pub struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<nn::Linear>,
    norm2: nn::GroupNorm,
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
            norm1: nn::group_norm(s.groups, i, s.eps, vb.pp("norm1"))?,
            conv1: Conv2d::new(vb.pp("conv1"), (i, o), 3, conv3)?,
            time_emb_proj: s
                .temb_channels
                .map(|t| nn::linear(t, o, vb.pp("time_emb_proj")))
                .transpose()?,
            norm2: nn::group_norm(s.groups, o, s.eps, vb.pp("norm2"))?,
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
        let h = self
            .conv1
            .forward(&nn::ops::silu(&self.norm1.forward(xs)?)?)?;
        let h = match (temb, &self.time_emb_proj) {
            (Some(temb), Some(proj)) => proj
                .forward(&nn::ops::silu(temb)?)?
                .unsqueeze(D::Minus1)?
                .unsqueeze(D::Minus1)?
                .broadcast_add(&h)?,
            _ => h,
        };
        let h = self
            .conv2
            .forward(&nn::ops::silu(&self.norm2.forward(&h)?)?)?;
        (shortcut + h)? / self.output_scale_factor
    }
}
