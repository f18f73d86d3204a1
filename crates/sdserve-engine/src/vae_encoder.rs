//! The VAE encoder of diffusers' `AutoencoderKL` (`encoder.*`, then
//! `quant_conv`) and the diagonal Gaussian it outputs, for image-to-image and
//! inpainting. The mid-block attention runs in bounded blocks like the decoder's.

use candle_core::{Module, Result, Tensor};
use candle_nn as nn;

use crate::attention::ScoreBlock;
use crate::layers::{Conv2d, GroupNorm, ResnetBlock};
use crate::rng::TorchRng;
use crate::unet_blocks::Downsample;
use crate::vae::{vae_resnet, SelfAttention, VaeShape};

/// One `DownEncoderBlock2D`: resnets, then a stride-2 convolution except in the last block.
struct DownEncoderBlock {
    resnets: Vec<ResnetBlock>,
    downsampler: Option<Downsample>,
}

/// Pixels in [-1, 1] to the latent distribution's moments.
pub struct VaeEncoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock>,
    mid_first: ResnetBlock,
    mid_attention: SelfAttention,
    mid_second: ResnetBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
}

/// `DiagonalGaussianDistribution`: mean and standard deviation per latent cell.
pub struct LatentDistribution {
    pub mean: Tensor,
    pub std: Tensor,
}

impl LatentDistribution {
    /// `latent_dist.sample(generator)`: mean + std * noise, the noise drawn
    /// from `rng` in the mean's shape (one draw, as diffusers' `randn_tensor`).
    pub fn sample(&self, rng: &mut TorchRng) -> Result<Tensor> {
        let noise = Tensor::from_vec(
            rng.randn(self.mean.elem_count()),
            self.mean.shape(),
            self.mean.device(),
        )?
        .to_dtype(self.mean.dtype())?;
        &self.mean + (&self.std * noise)?
    }
}

impl VaeEncoder {
    /// `vb` is the VAE's root (keys `encoder.*` and `quant_conv.*`); `in_channels` from the config.
    pub fn new(
        vb: nn::VarBuilder,
        s: &VaeShape,
        in_channels: usize,
        use_quant_conv: bool,
        block: ScoreBlock,
    ) -> Result<Self> {
        let groups = s.norm_num_groups;
        let conv3 = nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let resnet =
            |vb, in_channels, out_channels| vae_resnet(vb, in_channels, out_channels, groups);
        let (Some(&first), Some(&deepest)) =
            (s.block_out_channels.first(), s.block_out_channels.last())
        else {
            return Err(candle_core::Error::Msg(
                "VAE block_out_channels is empty".into(),
            ));
        };
        let moments = 2 * s.latent_channels;
        let quant_conv = use_quant_conv
            .then(|| {
                Conv2d::new(
                    vb.pp("quant_conv"),
                    (moments, moments),
                    1,
                    Default::default(),
                )
            })
            .transpose()?;
        let vb = vb.pp("encoder");
        let mut down_blocks = Vec::with_capacity(s.block_out_channels.len());
        for (i, &out) in s.block_out_channels.iter().enumerate() {
            let input = if i == 0 {
                first
            } else {
                s.block_out_channels[i - 1]
            };
            let vb = vb.pp("down_blocks").pp(i.to_string());
            let resnets = (0..s.layers_per_block)
                .map(|j| {
                    let input = if j == 0 { input } else { out };
                    resnet(vb.pp("resnets").pp(j.to_string()), input, out)
                })
                .collect::<Result<Vec<_>>>()?;
            let downsampler = (i + 1 < s.block_out_channels.len())
                .then(|| Downsample::new(vb.pp("downsamplers").pp("0"), out, 0))
                .transpose()?;
            down_blocks.push(DownEncoderBlock {
                resnets,
                downsampler,
            });
        }
        let mid = vb.pp("mid_block");
        Ok(Self {
            conv_in: Conv2d::new(vb.pp("conv_in"), (in_channels, first), 3, conv3)?,
            down_blocks,
            mid_first: resnet(mid.pp("resnets").pp("0"), deepest, deepest)?,
            mid_attention: SelfAttention::new(
                mid.pp("attentions").pp("0"),
                deepest,
                groups,
                block,
            )?,
            mid_second: resnet(mid.pp("resnets").pp("1"), deepest, deepest)?,
            norm_out: GroupNorm::new(vb.pp("conv_norm_out"), groups, deepest, 1e-6)?,
            conv_out: Conv2d::new(vb.pp("conv_out"), (deepest, moments), 3, conv3)?,
            quant_conv,
        })
    }

    /// `vae.encode(pixels).latent_dist` for `(batch, in_channels, h, w)` pixels in [-1, 1].
    pub fn encode(&self, pixels: &Tensor) -> Result<LatentDistribution> {
        LatentDistribution::from_moments(&self.moments(pixels)?)
    }

    /// diffusers' `_encode` without tiling: the encoder, then `quant_conv`;
    /// mean and log-variance stacked on the channel axis.
    pub fn moments(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(pixels)?;
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                xs = resnet.forward(&xs, None)?;
            }
            if let Some(down) = &block.downsampler {
                xs = down.forward(&xs)?;
            }
        }
        let xs = self.mid_first.forward(&xs, None)?;
        let xs = self.mid_attention.forward(&xs)?;
        let xs = self.mid_second.forward(&xs, None)?;
        let xs = self.norm_out.forward(&xs, true)?;
        let moments = self.conv_out.forward(&xs)?;
        match &self.quant_conv {
            Some(conv) => conv.forward(&moments),
            None => Ok(moments),
        }
    }
}

impl LatentDistribution {
    /// `DiagonalGaussianDistribution(moments)`: the log-variance clamped to
    /// [-30, 20], std = exp(logvar / 2).
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let channels = moments.dim(1)? / 2;
        let mean = moments.narrow(1, 0, channels)?;
        let logvar = moments
            .narrow(1, channels, channels)?
            .clamp(-30f32, 20f32)?;
        let std = (logvar * 0.5)?.exp()?;
        Ok(Self { mean, std })
    }
}
