//! The Stable Diffusion UNet (diffusers' `UNet2DConditionModel`), assembled
//! from our blocks (`unet_blocks.rs`: resnets, bounded attention) and candle's
//! timestep embedding. The timestep embedding is computed once, as a single
//! row, and broadcast over the batch.
//!
//! Why one row: every job of a batch shares the step's timestep. candle's UNet builds
//! one embedding row per batch entry, and its CPU matrix kernels round a
//! product of 1-2 rows differently from one of 3+ rows, so a job's image
//! changed (by 1/255 here and there) with the size of the batch it ran in.
//! With one row the embedding, and so the image, no longer depends on the batch.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn as nn;
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};

use crate::attention::ScoreBlock;
use crate::layers::{Conv2d, GroupNorm};
use crate::transformer::SpatialTransformerConfig;
use crate::unet_blocks::{BlockShape, DownBlock, MidBlock, UpBlock, UpChannels};

/// SDXL's `text_time` added conditioning: each of the six time ids gets a
/// sinusoidal embedding of `time_embed_dim`; with the pooled text they feed
/// `add_embedding` (`input_dim` wide), whose output is added to the timestep's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTimeShape {
    pub time_embed_dim: usize,
    pub input_dim: usize,
}

/// Everything the UNet's shape takes from its config.
#[derive(Debug, Clone)]
pub struct UNetShape {
    pub blocks: UNet2DConditionModelConfig,
    /// Transformer depth of the mid block (the last `transformer_layers_per_block`).
    pub mid_transformer_layers: usize,
    pub text_time: Option<TextTimeShape>,
    /// The config's `upcast_attention`: scores in f32 on a GPU in f16/bf16.
    pub upcast_attention: bool,
}

/// Per-image inputs of SDXL's added conditioning, one row per UNet batch entry.
pub struct AddedConditioning {
    /// `(batch, projection_dim)`: the pooled, projected prompt embedding.
    pub text_embeds: Tensor,
    /// `(batch, 6)`: original size, crop top-left, target size (each height, width).
    pub time_ids: Tensor,
}

struct TextTimeEmbedding {
    time_proj: Timesteps,
    embedding: TimestepEmbedding,
}

impl TextTimeEmbedding {
    /// One row at a time, so a row's embedding does not depend on the batch
    /// it is computed in (see the module doc).
    fn forward(&self, added: &AddedConditioning, dtype: DType) -> Result<Tensor> {
        let rows = added.time_ids.dim(0)?;
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            let ids = added.time_ids.get(row)?.to_dtype(DType::F32)?;
            let time = self.time_proj.forward(&ids)?.flatten_all()?.unsqueeze(0)?;
            let text = added.text_embeds.narrow(0, row, 1)?.to_dtype(dtype)?;
            let input = Tensor::cat(&[&text, &time.to_dtype(dtype)?], 1)?;
            out.push(self.embedding.forward(&input)?);
        }
        Tensor::cat(&out, 0)
    }
}

/// The denoising UNet; weights are looked up under diffusers' key names.
pub struct UNet {
    /// dtype of the weights; activations may be f32 over bf16 weights.
    weight_dtype: DType,
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    text_time: Option<TextTimeEmbedding>,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    center_input_sample: bool,
}

impl UNet {
    /// Builds the UNet for `config` (already checked by `model.rs`); attention
    /// scores are computed in blocks of at most `block` bytes.
    pub fn new(
        vb: nn::VarBuilder,
        in_channels: usize,
        out_channels: usize,
        shape: &UNetShape,
        block: ScoreBlock,
    ) -> Result<Self> {
        let c = &shape.blocks;
        let n = c.blocks.len();
        let channels = |i: usize| c.blocks[i].out_channels;
        let time_dim = channels(0) * 4;
        let conv3 = nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let transformer = |b: &BlockConfig, depth: usize| SpatialTransformerConfig {
            channels: b.out_channels,
            heads: b.attention_head_dim,
            depth,
            norm_groups: c.norm_num_groups,
            context_dim: c.cross_attention_dim,
            use_linear_projection: c.use_linear_projection,
            block,
            upcast_attention: shape.upcast_attention,
        };
        let block_shape = |b: &BlockConfig, attention: Option<usize>| BlockShape {
            temb_channels: time_dim,
            norm_groups: c.norm_num_groups,
            norm_eps: c.norm_eps,
            transformer: attention.map(|depth| transformer(b, depth)),
        };

        let down_vb = vb.pp("down_blocks");
        let mut down = Vec::with_capacity(n);
        for (i, b) in c.blocks.iter().enumerate() {
            let input = if i == 0 { channels(0) } else { channels(i - 1) };
            down.push(DownBlock::new(
                down_vb.pp(i.to_string()),
                &block_shape(b, b.use_cross_attn),
                c.layers_per_block,
                (input, b.out_channels),
                (i + 1 < n).then_some(c.downsample_padding),
            )?);
        }

        let last = &c.blocks[n - 1];
        // The mid block always attends, with the last block's heads.
        let mid_shape = block_shape(last, Some(shape.mid_transformer_layers));
        let mid = MidBlock::new(
            vb.pp("mid_block"),
            &mid_shape,
            last.out_channels,
            c.mid_block_scale_factor,
        )?;

        let up_vb = vb.pp("up_blocks");
        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            // Up block i mirrors down block n-1-i.
            let mirrored = n - 1 - i;
            let b = &c.blocks[mirrored];
            let previous = if i == 0 {
                last.out_channels
            } else {
                channels(n - i)
            };
            let ch = UpChannels {
                skip: channels(mirrored.saturating_sub(1)),
                previous,
                out: b.out_channels,
            };
            up.push(UpBlock::new(
                up_vb.pp(i.to_string()),
                &block_shape(b, b.use_cross_attn),
                c.layers_per_block + 1,
                ch,
                i + 1 < n,
            )?);
        }

        Ok(Self {
            weight_dtype: vb.dtype(),
            conv_in: Conv2d::new(vb.pp("conv_in"), (in_channels, channels(0)), 3, conv3)?,
            time_proj: Timesteps::new(channels(0), c.flip_sin_to_cos, c.freq_shift),
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), channels(0), time_dim)?,
            text_time: shape
                .text_time
                .map(|tt| -> Result<_> {
                    Ok(TextTimeEmbedding {
                        time_proj: Timesteps::new(
                            tt.time_embed_dim,
                            c.flip_sin_to_cos,
                            c.freq_shift,
                        ),
                        embedding: TimestepEmbedding::new(
                            vb.pp("add_embedding"),
                            tt.input_dim,
                            time_dim,
                        )?,
                    })
                })
                .transpose()?,
            down,
            mid,
            up,
            norm_out: GroupNorm::new(
                vb.pp("conv_norm_out"),
                c.norm_num_groups,
                channels(0),
                c.norm_eps,
            )?,
            conv_out: Conv2d::new(vb.pp("conv_out"), (channels(0), out_channels), 3, conv3)?,
            center_input_sample: c.center_input_sample,
        })
    }

    /// Predicts noise (or v, or x0) for latents `xs` at `timestep`, conditioned
    /// on `context` (and, for SDXL, on `added`, which it then requires).
    /// (The pipeline calls [`Self::forward_cached`].)
    #[cfg(test)]
    pub fn forward(
        &self,
        xs: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        Ok(self
            .forward_cached(xs, timestep, context, added, StepCache::Off)?
            .0)
    }

    /// The UNet's prediction with DeepCache's step caching: the prediction, and
    /// with [`StepCache::Record`] the feature a later [`StepCache::Reuse`]
    /// call takes.
    pub fn forward_cached(
        &self,
        xs: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
        cache: StepCache,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (_, _, height, width) = xs.dims4()?;
        let xs = if self.center_input_sample {
            ((xs * 2.0)? - 1.0)?
        } else {
            xs.clone()
        };
        // One embedding row, broadcast by every resnet over the batch.
        // In the weights' dtype (candle's embedding layers), then the activations'.
        let t = (Tensor::ones(1, self.weight_dtype, xs.device())? * timestep)?;
        let emb = self.time_embedding.forward(&self.time_proj.forward(&t)?)?;
        let emb = match (&self.text_time, added) {
            (Some(tt), Some(added)) => emb.broadcast_add(&tt.forward(added, emb.dtype())?)?,
            (None, None) => emb,
            (Some(_), None) => candle_core::bail!("this UNet needs SDXL's added conditioning"),
            (None, Some(_)) => candle_core::bail!("this UNet takes no added conditioning"),
        };
        let emb = emb.to_dtype(xs.dtype())?;

        let mut xs = self.conv_in.forward(&xs)?;
        let last_up = self.up.len().saturating_sub(1);
        if let StepCache::Reuse(deep) = cache {
            // The shallow call: the last up block's last layer over the kept
            // feature, with this call's conv_in output as its skip.
            let block = &self.up[last_up];
            let xs = block.layer(block.layers() - 1, deep, &xs, &emb, context)?;
            let xs = self.norm_out.forward(&xs, true)?;
            return Ok((self.conv_out.forward(&xs)?, None));
        }
        let mut recorded = None;
        let mut skips = vec![xs.clone()];
        for block in &self.down {
            let (out, res) = block.forward(&xs, &emb, context)?;
            skips.extend(res);
            xs = out;
        }
        xs = self.mid.forward(&xs, &emb, context)?;

        // Sizes that do not divide by the total downsampling need explicit upsample targets.
        let factor = 1usize << (self.up.len() - 1);
        let explicit_sizes = height % factor != 0 || width % factor != 0;
        for (i, block) in self.up.iter().enumerate() {
            let n_res = block.layers();
            let res = skips.split_off(skips.len().saturating_sub(n_res));
            let upsample_size = match skips.last() {
                Some(next) if explicit_sizes && i + 1 < self.up.len() => {
                    let (_, _, h, w) = next.dims4()?;
                    Some((h, w))
                }
                _ => None,
            };
            let record =
                (i == last_up && matches!(cache, StepCache::Record)).then_some(&mut recorded);
            xs = block.forward(&xs, &res, &emb, context, upsample_size, record)?;
        }
        let xs = self.norm_out.forward(&xs, true)?;
        Ok((self.conv_out.forward(&xs)?, recorded))
    }
}

/// DeepCache-style step caching (`--step-cache`, the `DeepCache` package's
/// `cache_branch_id=0`): on a shallow call every block's output is the last
/// full call's, except the last up block's last layer, whose skip is this
/// call's `conv_in` output; so only `conv_in`, that layer and the output
/// layers run. What a full call keeps is that layer's input.
#[derive(Clone, Copy)]
pub enum StepCache<'a> {
    /// A plain call.
    Off,
    /// A full call that also returns the feature to keep.
    Record,
    /// A shallow call over a kept feature (same batch rows as `xs`).
    Reuse(&'a Tensor),
}
