//! diffusers' `Transformer2DModel` (self-attention, cross-attention to the
//! prompt, GEGLU feed-forward) as the SD UNet uses it, with weights under
//! diffusers' key names. Our own rather than candle's so attention runs in
//! bounded blocks ([`crate::attention`]) and the GEGLU uses the exact (erf)
//! GELU, as diffusers does.

use candle_core::{Module, Result, Tensor};
use candle_nn as nn;

use crate::attention::{attention, ScoreBlock};
use crate::layers::{Conv2d, GroupNorm};
use crate::linear::{linear, linear_no_bias, Linear};

/// Multi-head attention of `Attention` (`to_q`, `to_k`, `to_v`, `to_out.0`).
struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
    block: ScoreBlock,
    upcast: bool,
}

impl CrossAttention {
    fn new(
        vb: nn::VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        block: ScoreBlock,
        upcast: bool,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: linear(inner, query_dim, vb.pp("to_out.0"))?,
            heads,
            scale: 1.0 / (head_dim as f64).sqrt(),
            block,
            upcast,
        })
    }

    /// `(batch, tokens, heads × d)` → `(batch × heads, tokens, d)`.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, t, c) = xs.dims3()?;
        xs.reshape((b, t, self.heads, c / self.heads))?
            .transpose(1, 2)?
            .reshape((b * self.heads, t, c / self.heads))
    }

    fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = match context {
            Some(c) => c.contiguous()?,
            None => xs.clone(),
        };
        let q = self.split_heads(&self.to_q.forward(xs)?)?;
        let k = self.split_heads(&self.to_k.forward(&context)?)?;
        let v = self.split_heads(&self.to_v.forward(&context)?)?;
        let weights = self.to_q.weight_dtype();
        let out = attention(&q, &k, &v, self.scale, self.block, weights, self.upcast)?;
        let (bh, t, d) = out.dims3()?;
        let out = out
            .reshape((bh / self.heads, self.heads, t, d))?
            .transpose(1, 2)?
            .reshape((bh / self.heads, t, self.heads * d))?;
        self.to_out.forward(&out)
    }
}

/// `FeedForward` with a GEGLU input projection (`net.0.proj`, `net.2`).
struct FeedForward {
    project_in: Linear,
    project_out: Linear,
}

impl FeedForward {
    fn new(vb: nn::VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        let vb = vb.pp("net");
        Ok(Self {
            project_in: linear(dim, inner * 2, vb.pp("0").pp("proj"))?,
            project_out: linear(inner, dim, vb.pp("2"))?,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gated = crate::geglu::geglu(&self.project_in.forward(xs)?)?;
        self.project_out.forward(&gated)
    }
}

/// `nn::LayerNorm` that also takes activations of another dtype than its
/// weights (f32 over bf16: the weights, `dim` values, convert per call).
struct LayerNorm(nn::LayerNorm);

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        if self.0.weight().dtype() == dtype {
            return self.0.forward(xs);
        }
        let weight = self.0.weight().to_dtype(dtype)?;
        let norm = match self.0.bias() {
            Some(bias) => nn::LayerNorm::new(weight, bias.to_dtype(dtype)?, self.0.eps()),
            None => nn::LayerNorm::new_no_bias(weight, self.0.eps()),
        };
        norm.forward(xs)
    }
}

/// `BasicTransformerBlock`: pre-norm self-attention, cross-attention, feed-forward.
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl TransformerBlock {
    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = (self.attn1.forward(&self.norm1.forward(xs)?, None)? + xs)?;
        let xs = (self
            .attn2
            .forward(&self.norm2.forward(&xs)?, Some(context))?
            + xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?)? + xs
    }
}

/// Shape of one `Transformer2DModel`, from the UNet config.
#[derive(Debug, Clone, Copy)]
pub struct SpatialTransformerConfig {
    pub channels: usize,
    pub heads: usize,
    pub depth: usize,
    pub norm_groups: usize,
    pub context_dim: usize,
    pub use_linear_projection: bool,
    pub block: ScoreBlock,
    /// The UNet config's `upcast_attention`.
    pub upcast_attention: bool,
}

enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// `Transformer2DModel`: group norm, project in, transformer blocks over the
/// `h × w` tokens, project out, residual.
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    pub fn new(vb: nn::VarBuilder, c: SpatialTransformerConfig) -> Result<Self> {
        let dim = c.channels;
        let head_dim = dim / c.heads.max(1);
        let projection = |vb: nn::VarBuilder| -> Result<Projection> {
            Ok(if c.use_linear_projection {
                Projection::Linear(linear(dim, dim, vb)?)
            } else {
                Projection::Conv(Conv2d::new(vb, (dim, dim), 1, Default::default())?)
            })
        };
        let blocks_vb = vb.pp("transformer_blocks");
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let vb = blocks_vb.pp(i.to_string());
            blocks.push(TransformerBlock {
                norm1: LayerNorm(nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?),
                attn1: CrossAttention::new(
                    vb.pp("attn1"),
                    dim,
                    dim,
                    c.heads,
                    head_dim,
                    c.block,
                    c.upcast_attention,
                )?,
                norm2: LayerNorm(nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?),
                attn2: CrossAttention::new(
                    vb.pp("attn2"),
                    dim,
                    c.context_dim,
                    c.heads,
                    head_dim,
                    c.block,
                    c.upcast_attention,
                )?,
                norm3: LayerNorm(nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?),
                ff: FeedForward::new(vb.pp("ff"), dim)?,
            });
        }
        Ok(Self {
            norm: GroupNorm::new(vb.pp("norm"), c.norm_groups, dim, 1e-6)?,
            proj_in: projection(vb.pp("proj_in"))?,
            blocks,
            proj_out: projection(vb.pp("proj_out"))?,
        })
    }

    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let to_tokens = |t: &Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let normed = self.norm.forward(xs, false)?;
        let mut tokens = match &self.proj_in {
            Projection::Conv(p) => to_tokens(&p.forward(&normed)?)?,
            Projection::Linear(p) => p.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let to_map = |t: &Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2));
        let out = match &self.proj_out {
            Projection::Conv(p) => p.forward(&to_map(&tokens)?.contiguous()?)?,
            Projection::Linear(p) => to_map(&p.forward(&tokens)?)?,
        };
        out + xs
    }
}
