//! The VAE decoder of diffusers' `AutoencoderKL` (`post_quant_conv`, then
//! `decoder.*`), our own so that its mid-block attention runs in bounded blocks
//! ([`crate::attention`]): at 1024x1024 the latent has 16,384 cells and the
//! naive single-head score matrix alone takes 1 GiB. Only the decoder's weights
//! are built here; the encoder (image-to-image) is in [`crate::vae_encoder`].

use candle_core::{Module, Result, Tensor};
use candle_nn as nn;

use crate::attention::{attention, ScoreBlock};
use crate::layers::{Conv2d, GroupNorm, ResnetBlock, ResnetShape};
use crate::unet_blocks::Upsample;

/// A decoded `(1, 3, h, w)` image in [-1, 1] as diffusers' postprocessing
/// gives it: `(x / 2 + 0.5).clamp(0, 1)`, rounded to 8 bits as
/// `numpy_to_pil`: (width, height, RGB bytes).
pub(crate) fn to_rgb(pixels: &Tensor) -> Result<(usize, usize, Vec<u8>)> {
    let pixels = pixels.to_dtype(candle_core::DType::F32)?;
    let pixels = ((pixels / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    let (_, _, h, w) = pixels.dims4()?;
    let hwc: Vec<f32> = pixels
        .squeeze(0)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1()?;
    let rgb = hwc
        .iter()
        .map(|v| (v * 255.0).round_ties_even() as u8)
        .collect();
    Ok((w, h, rgb))
}

/// What the decoder is built from (the VAE's `config.json`).
#[derive(Debug, Clone)]
pub struct VaeShape {
    pub latent_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub use_post_quant_conv: bool,
}

/// The mid-block's single-head self-attention over all latent cells
/// (`to_q`/`to_k`/`to_v`/`to_out.0`, or the older `query`/`key`/`value`/`proj_attn`).
pub(crate) struct SelfAttention {
    group_norm: GroupNorm,
    to_q: crate::linear::Linear,
    to_k: crate::linear::Linear,
    to_v: crate::linear::Linear,
    to_out: crate::linear::Linear,
    block: ScoreBlock,
}

impl SelfAttention {
    pub(crate) fn new(
        vb: nn::VarBuilder,
        channels: usize,
        groups: usize,
        block: ScoreBlock,
    ) -> Result<Self> {
        let names = if vb.contains_tensor("to_q.weight") {
            ["to_q", "to_k", "to_v", "to_out.0"]
        } else {
            ["query", "key", "value", "proj_attn"]
        };
        let linear = |name: &str| crate::linear::linear(channels, channels, vb.pp(name));
        Ok(Self {
            group_norm: GroupNorm::new(vb.pp("group_norm"), groups, channels, 1e-6)?,
            to_q: linear(names[0])?,
            to_k: linear(names[1])?,
            to_v: linear(names[2])?,
            to_out: linear(names[3])?,
            block,
        })
    }
}

impl Module for SelfAttention {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let tokens = self
            .group_norm
            .forward(xs, false)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        let scale = 1.0 / (c as f64).sqrt();
        // Scores in f32 whatever the dtype: one layer, and the VAE is the
        // part of SD most prone to f16 overflow.
        let out = attention(
            &q,
            &k,
            &v,
            scale,
            self.block,
            self.to_q.weight_dtype(),
            true,
        )?;
        let out = self
            .to_out
            .forward(&out)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        out + xs
    }
}

/// A VAE resnet: no time embedding, eps 1e-6 (encoder and decoder alike).
pub(crate) fn vae_resnet(
    vb: nn::VarBuilder,
    in_channels: usize,
    out_channels: usize,
    groups: usize,
) -> Result<ResnetBlock> {
    let shape = ResnetShape {
        in_channels,
        out_channels,
        temb_channels: None,
        groups,
        eps: 1e-6,
        output_scale_factor: 1.0,
    };
    ResnetBlock::new(vb, shape)
}

/// One `UpDecoderBlock2D`: resnets (no time embedding), then an optional upsampler.
struct UpDecoderBlock {
    resnets: Vec<ResnetBlock>,
    upsampler: Option<Upsample>,
}

impl Module for UpDecoderBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = xs.clone();
        for resnet in &self.resnets {
            xs = resnet.forward(&xs, None)?;
        }
        match &self.upsampler {
            Some(up) => up.forward(&xs, None),
            None => Ok(xs),
        }
    }
}

/// Latents (already divided by the scaling factor) to pixels in [-1, 1].
pub struct VaeDecoder {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_first: ResnetBlock,
    mid_attention: SelfAttention,
    mid_second: ResnetBlock,
    up_blocks: Vec<UpDecoderBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl VaeDecoder {
    /// `vb` is the VAE's root (keys `post_quant_conv.*` and `decoder.*`).
    pub fn new(vb: nn::VarBuilder, s: &VaeShape, block: ScoreBlock) -> Result<Self> {
        let groups = s.norm_num_groups;
        let conv3 = nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let resnet =
            |vb, in_channels, out_channels| vae_resnet(vb, in_channels, out_channels, groups);
        let reversed: Vec<usize> = s.block_out_channels.iter().rev().copied().collect();
        let (Some(&deepest), Some(&first)) = (reversed.first(), s.block_out_channels.first())
        else {
            return Err(candle_core::Error::Msg(
                "VAE block_out_channels is empty".into(),
            ));
        };
        let post_quant_conv = s
            .use_post_quant_conv
            .then(|| {
                let c = s.latent_channels;
                Conv2d::new(vb.pp("post_quant_conv"), (c, c), 1, Default::default())
            })
            .transpose()?;
        let vb = vb.pp("decoder");
        let mid = vb.pp("mid_block");
        let mut up_blocks = Vec::with_capacity(reversed.len());
        for (i, &out) in reversed.iter().enumerate() {
            let input = if i == 0 { deepest } else { reversed[i - 1] };
            let vb = vb.pp("up_blocks").pp(i.to_string());
            let resnets = (0..s.layers_per_block + 1)
                .map(|j| {
                    let input = if j == 0 { input } else { out };
                    resnet(vb.pp("resnets").pp(j.to_string()), input, out)
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = (i + 1 < reversed.len())
                .then(|| Upsample::new(vb.pp("upsamplers").pp("0"), out))
                .transpose()?;
            up_blocks.push(UpDecoderBlock { resnets, upsampler });
        }
        Ok(Self {
            post_quant_conv,
            conv_in: Conv2d::new(vb.pp("conv_in"), (s.latent_channels, deepest), 3, conv3)?,
            mid_first: resnet(mid.pp("resnets").pp("0"), deepest, deepest)?,
            mid_attention: SelfAttention::new(
                mid.pp("attentions").pp("0"),
                deepest,
                groups,
                block,
            )?,
            mid_second: resnet(mid.pp("resnets").pp("1"), deepest, deepest)?,
            up_blocks,
            norm_out: GroupNorm::new(vb.pp("conv_norm_out"), groups, first, 1e-6)?,
            conv_out: Conv2d::new(vb.pp("conv_out"), (first, s.out_channels), 3, conv3)?,
        })
    }

    /// Decodes `(batch, latent_channels, h, w)` latents to `(batch, out_channels, 8h, 8w)`-style pixels.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let xs = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents)?,
            None => latents.clone(),
        };
        let xs = self.conv_in.forward(&xs)?;
        let xs = self.mid_first.forward(&xs, None)?;
        let xs = self.mid_attention.forward(&xs)?;
        let mut xs = self.mid_second.forward(&xs, None)?;
        for block in &self.up_blocks {
            xs = block.forward(&xs)?;
        }
        let xs = self.norm_out.forward(&xs, true)?;
        self.conv_out.forward(&xs)
    }
}
