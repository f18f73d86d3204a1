//! The UNet's down, mid and up blocks (diffusers' `DownBlock2D`,
//! `CrossAttnDownBlock2D`, `UNetMidBlock2DCrossAttn`, `UpBlock2D`,
//! `CrossAttnUpBlock2D`): our resnets and transformers, so that attention is
//! bounded ([`crate::attention`]), bf16 runs on the CPU ([`crate::layers`]) and
//! the resnets use the model's own group count (candle's plain blocks assume 32).

use candle_core::{Module, Result, Tensor};
use candle_nn as nn;

use crate::layers::{Conv2d, ResnetBlock, ResnetShape};
use crate::transformer::{SpatialTransformer, SpatialTransformerConfig};

/// What every block of one UNet shares.
#[derive(Debug, Clone, Copy)]
pub struct BlockShape {
    pub temb_channels: usize,
    pub norm_groups: usize,
    pub norm_eps: f64,
    /// Set for cross-attention blocks (layers, heads, context...); `None` for plain ones.
    pub transformer: Option<SpatialTransformerConfig>,
}

impl BlockShape {
    fn resnet(
        &self,
        vb: nn::VarBuilder,
        (in_channels, out_channels): (usize, usize),
        output_scale_factor: f64,
    ) -> Result<ResnetBlock> {
        let shape = ResnetShape {
            in_channels,
            out_channels,
            temb_channels: Some(self.temb_channels),
            groups: self.norm_groups,
            eps: self.norm_eps,
            output_scale_factor,
        };
        ResnetBlock::new(vb, shape)
    }

    fn transformer(
        &self,
        vb: nn::VarBuilder,
        channels: usize,
    ) -> Result<Option<SpatialTransformer>> {
        self.transformer
            .map(|t| SpatialTransformer::new(vb, SpatialTransformerConfig { channels, ..t }))
            .transpose()
    }
}

/// A stride-2 3x3 convolution (`downsamplers.0.conv`); padding 0 pads right and bottom by one.
pub(crate) struct Downsample {
    conv: Conv2d,
    padding: usize,
}

impl Downsample {
    pub(crate) fn new(vb: nn::VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        let cfg = nn::Conv2dConfig {
            stride: 2,
            padding,
            ..Default::default()
        };
        Ok(Self {
            conv: Conv2d::new(vb.pp("conv"), (channels, channels), 3, cfg)?,
            padding,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.padding == 0 {
            let padded = xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&padded)
        } else {
            self.conv.forward(xs)
        }
    }
}

/// Nearest-neighbour 2x (or to an explicit size) then a 3x3 convolution.
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(vb: nn::VarBuilder, channels: usize) -> Result<Self> {
        let cfg = nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            conv: Conv2d::new(vb.pp("conv"), (channels, channels), 3, cfg)?,
        })
    }

    pub fn forward(&self, xs: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let (h, w) = size.unwrap_or((2 * h, 2 * w));
        self.conv
            .forward(&crate::upsample::upsample_nearest(xs, h, w)?)
    }
}

/// A down block: resnets, each followed by a transformer in cross-attention
/// blocks, then an optional downsampler. Returns the skip connections too.
pub struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    downsampler: Option<Downsample>,
}

impl DownBlock {
    pub fn new(
        vb: nn::VarBuilder,
        shape: &BlockShape,
        layers: usize,
        (in_channels, out_channels): (usize, usize),
        downsample_padding: Option<usize>,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::with_capacity(layers);
        for i in 0..layers {
            let input = if i == 0 { in_channels } else { out_channels };
            let vb_res = vb.pp("resnets").pp(i.to_string());
            resnets.push(shape.resnet(vb_res, (input, out_channels), 1.0)?);
            let vb_attn = vb.pp("attentions").pp(i.to_string());
            attentions.extend(shape.transformer(vb_attn, out_channels)?);
        }
        let downsampler = downsample_padding
            .map(|p| Downsample::new(vb.pp("downsamplers").pp("0"), out_channels, p))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    pub fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut xs = xs.clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context)?;
            }
            skips.push(xs.clone());
        }
        if let Some(down) = &self.downsampler {
            xs = down.forward(&xs)?;
            skips.push(xs.clone());
        }
        Ok((xs, skips))
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) per layer.
pub struct MidBlock {
    first: ResnetBlock,
    layers: Vec<(SpatialTransformer, ResnetBlock)>,
}

impl MidBlock {
    pub fn new(
        vb: nn::VarBuilder,
        shape: &BlockShape,
        channels: usize,
        output_scale_factor: f64,
    ) -> Result<Self> {
        let resnet = |i: usize| {
            let vb = vb.pp("resnets").pp(i.to_string());
            shape.resnet(vb, (channels, channels), output_scale_factor)
        };
        let first = resnet(0)?;
        let mut layers = Vec::new();
        if let Some(attn) = shape.transformer(vb.pp("attentions").pp("0"), channels)? {
            layers.push((attn, resnet(1)?));
        }
        Ok(Self { first, layers })
    }

    pub fn forward(&self, xs: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let mut xs = self.first.forward(xs, Some(temb))?;
        for (attn, resnet) in &self.layers {
            xs = resnet.forward(&attn.forward(&xs, context)?, Some(temb))?;
        }
        Ok(xs)
    }
}

/// An up block: (concat a skip, resnet, transformer in cross-attention blocks)
/// per layer, then an optional upsampler.
pub struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    upsampler: Option<Upsample>,
}

/// Channels entering an up block: its skip source, the previous block's output, its own output.
pub struct UpChannels {
    pub skip: usize,
    pub previous: usize,
    pub out: usize,
}

impl UpBlock {
    pub fn new(
        vb: nn::VarBuilder,
        shape: &BlockShape,
        layers: usize,
        ch: UpChannels,
        add_upsample: bool,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::with_capacity(layers);
        for i in 0..layers {
            let skip = if i + 1 == layers { ch.skip } else { ch.out };
            let input = if i == 0 { ch.previous } else { ch.out };
            let vb_res = vb.pp("resnets").pp(i.to_string());
            resnets.push(shape.resnet(vb_res, (input + skip, ch.out), 1.0)?);
            let vb_attn = vb.pp("attentions").pp(i.to_string());
            attentions.extend(shape.transformer(vb_attn, ch.out)?);
        }
        let upsampler = add_upsample
            .then(|| Upsample::new(vb.pp("upsamplers").pp("0"), ch.out))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// How many skip connections the block consumes.
    pub fn layers(&self) -> usize {
        self.resnets.len()
    }

    /// The block's layers, then its upsampler; the input of its last layer
    /// is also handed out when `last_input` is given (the step cache keeps it).
    pub fn forward(
        &self,
        xs: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(usize, usize)>,
        mut last_input: Option<&mut Option<Tensor>>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        let layers = self.layers();
        for i in 0..layers {
            if i + 1 == layers {
                if let Some(slot) = last_input.as_deref_mut() {
                    *slot = Some(xs.clone());
                }
            }
            xs = self.layer(i, &xs, &skips[skips.len() - 1 - i], temb, context)?;
        }
        match &self.upsampler {
            Some(up) => up.forward(&xs, upsample_size),
            None => Ok(xs),
        }
    }

    /// Layer `i`: the skip concatenated, the resnet, the attention if any.
    pub fn layer(
        &self,
        i: usize,
        xs: &Tensor,
        skip: &Tensor,
        temb: &Tensor,
        context: &Tensor,
    ) -> Result<Tensor> {
        let xs = Tensor::cat(&[xs, skip], 1)?;
        let xs = self.resnets[i].forward(&xs, Some(temb))?;
        match self.attentions.get(i) {
            Some(attn) => attn.forward(&xs, context),
            None => Ok(xs),
        }
    }
}
