//! The Stable Diffusion UNet (diffusers' `UNet2DConditionModel`), assembled
//! from candle-transformers' public blocks with one change to its top-level
//! forward: the timestep embedding is computed once, as a single row, and
//! broadcast over the batch.
//!
//! Why: every job of a batch shares the step's timestep. candle's UNet builds
//! one embedding row per batch entry, and its CPU matrix kernels round a
//! product of 1-2 rows differently from one of 3+ rows, so a job's image
//! changed (by 1/255 here and there) with the size of the batch it ran in.
//! With one row the embedding, and so the image, no longer depends on the batch.

use candle_core::{Module, Result, Tensor};
use candle_nn as nn;
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    CrossAttnDownBlock2D, CrossAttnDownBlock2DConfig, CrossAttnUpBlock2D, CrossAttnUpBlock2DConfig,
    DownBlock2D, DownBlock2DConfig, UNetMidBlock2DCrossAttn, UNetMidBlock2DCrossAttnConfig,
    UpBlock2D, UpBlock2DConfig,
};

enum Down {
    Plain(DownBlock2D),
    CrossAttn(CrossAttnDownBlock2D),
}

enum Up {
    Plain(UpBlock2D),
    CrossAttn(CrossAttnUpBlock2D),
}

/// The denoising UNet; weights are looked up under diffusers' key names.
pub struct UNet {
    conv_in: nn::Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    down: Vec<Down>,
    mid: UNetMidBlock2DCrossAttn,
    up: Vec<Up>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2d,
    center_input_sample: bool,
}

impl UNet {
    /// Builds the UNet for `config` (already checked against candle's blocks by `model.rs`).
    pub fn new(
        vb: nn::VarBuilder,
        in_channels: usize,
        out_channels: usize,
        config: &UNet2DConditionModelConfig,
    ) -> Result<Self> {
        let c = config;
        let n = c.blocks.len();
        let channels = |i: usize| c.blocks[i].out_channels;
        let time_dim = channels(0) * 4;
        let conv3 = nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };

        let down_vb = vb.pp("down_blocks");
        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            let BlockConfig {
                out_channels: out,
                use_cross_attn,
                attention_head_dim: heads,
            } = c.blocks[i];
            let input = if i == 0 { channels(0) } else { channels(i - 1) };
            let block = DownBlock2DConfig {
                num_layers: c.layers_per_block,
                resnet_eps: c.norm_eps,
                resnet_groups: c.norm_num_groups,
                add_downsample: i + 1 < n,
                downsample_padding: c.downsample_padding,
                ..Default::default()
            };
            let vb = down_vb.pp(i.to_string());
            down.push(match use_cross_attn {
                Some(layers) => {
                    let cfg = CrossAttnDownBlock2DConfig {
                        downblock: block,
                        attn_num_head_channels: heads,
                        cross_attention_dim: c.cross_attention_dim,
                        sliced_attention_size: None,
                        use_linear_projection: c.use_linear_projection,
                        transformer_layers_per_block: layers,
                    };
                    Down::CrossAttn(CrossAttnDownBlock2D::new(
                        vb,
                        input,
                        out,
                        Some(time_dim),
                        false,
                        cfg,
                    )?)
                }
                None => Down::Plain(DownBlock2D::new(vb, input, out, Some(time_dim), block)?),
            });
        }

        let last = c.blocks[n - 1];
        let mid = UNetMidBlock2DCrossAttn::new(
            vb.pp("mid_block"),
            last.out_channels,
            Some(time_dim),
            false,
            UNetMidBlock2DCrossAttnConfig {
                resnet_eps: c.norm_eps,
                output_scale_factor: c.mid_block_scale_factor,
                cross_attn_dim: c.cross_attention_dim,
                attn_num_head_channels: last.attention_head_dim,
                resnet_groups: Some(c.norm_num_groups),
                use_linear_projection: c.use_linear_projection,
                transformer_layers_per_block: last.use_cross_attn.unwrap_or(1),
                ..Default::default()
            },
        )?;

        let up_vb = vb.pp("up_blocks");
        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            // Up block i mirrors down block n-1-i.
            let mirrored = n - 1 - i;
            let BlockConfig {
                out_channels: out,
                use_cross_attn,
                attention_head_dim: heads,
            } = c.blocks[mirrored];
            let previous = if i == 0 {
                last.out_channels
            } else {
                channels(n - i)
            };
            let skip = channels(mirrored.saturating_sub(1));
            let block = UpBlock2DConfig {
                num_layers: c.layers_per_block + 1,
                resnet_eps: c.norm_eps,
                resnet_groups: c.norm_num_groups,
                add_upsample: i + 1 < n,
                ..Default::default()
            };
            let vb = up_vb.pp(i.to_string());
            up.push(match use_cross_attn {
                Some(layers) => {
                    let cfg = CrossAttnUpBlock2DConfig {
                        upblock: block,
                        attn_num_head_channels: heads,
                        cross_attention_dim: c.cross_attention_dim,
                        sliced_attention_size: None,
                        use_linear_projection: c.use_linear_projection,
                        transformer_layers_per_block: layers,
                    };
                    Up::CrossAttn(CrossAttnUpBlock2D::new(
                        vb,
                        skip,
                        previous,
                        out,
                        Some(time_dim),
                        false,
                        cfg,
                    )?)
                }
                None => Up::Plain(UpBlock2D::new(
                    vb,
                    skip,
                    previous,
                    out,
                    Some(time_dim),
                    block,
                )?),
            });
        }

        Ok(Self {
            conv_in: nn::conv2d(in_channels, channels(0), 3, conv3, vb.pp("conv_in"))?,
            time_proj: Timesteps::new(channels(0), c.flip_sin_to_cos, c.freq_shift),
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), channels(0), time_dim)?,
            down,
            mid,
            up,
            norm_out: nn::group_norm(
                c.norm_num_groups,
                channels(0),
                c.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: nn::conv2d(channels(0), out_channels, 3, conv3, vb.pp("conv_out"))?,
            center_input_sample: c.center_input_sample,
        })
    }

    /// Predicts noise (or v, or x0) for latents `xs` at `timestep`, conditioned on `context`.
    pub fn forward(&self, xs: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        let (_, _, height, width) = xs.dims4()?;
        let xs = if self.center_input_sample {
            ((xs * 2.0)? - 1.0)?
        } else {
            xs.clone()
        };
        // One embedding row, broadcast by every resnet over the batch.
        let t = (Tensor::ones(1, xs.dtype(), xs.device())? * timestep)?;
        let emb = self.time_embedding.forward(&self.time_proj.forward(&t)?)?;

        let mut xs = self.conv_in.forward(&xs)?;
        let mut skips = vec![xs.clone()];
        for block in &self.down {
            let (out, res) = match block {
                Down::Plain(b) => b.forward(&xs, Some(&emb))?,
                Down::CrossAttn(b) => b.forward(&xs, Some(&emb), Some(context))?,
            };
            skips.extend(res);
            xs = out;
        }
        xs = self.mid.forward(&xs, Some(&emb), Some(context))?;

        // Sizes that do not divide by the total downsampling need explicit upsample targets.
        let factor = 1usize << (self.up.len() - 1);
        let explicit_sizes = height % factor != 0 || width % factor != 0;
        for (i, block) in self.up.iter().enumerate() {
            let n_res = match block {
                Up::Plain(b) => b.resnets.len(),
                Up::CrossAttn(b) => b.upblock.resnets.len(),
            };
            let res = skips.split_off(skips.len().saturating_sub(n_res));
            let upsample_size = match skips.last() {
                Some(next) if explicit_sizes && i + 1 < self.up.len() => {
                    let (_, _, h, w) = next.dims4()?;
                    Some((h, w))
                }
                _ => None,
            };
            xs = match block {
                Up::Plain(b) => b.forward(&xs, &res, Some(&emb), upsample_size)?,
                Up::CrossAttn(b) => {
                    b.forward(&xs, &res, Some(&emb), upsample_size, Some(context))?
                }
            };
        }
        let xs = nn::ops::silu(&self.norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}
