//! CLIP text transformer, as transformers' `CLIPTextModel` returns
//! `last_hidden_state` (after the final layer norm) with a causal mask and no
//! padding mask, which is what diffusers' Stable Diffusion pipelines feed the UNet.
//! SDXL reads the penultimate layer's hidden states instead, and the pooled,
//! projected output of a `CLIPTextModelWithProjection` ([`TextEncoder::encode`]).
//!
//! Written here rather than taken from candle-transformers because its CLIP
//! config has private fields (stable_diffusion::clip) or only QuickGELU
//! (models::clip), while SD 2.x uses exact GELU.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};

use crate::config::TextEncoderConfig;
use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
    GeluTanh,
}

impl Activation {
    fn parse(name: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            other => Err(EngineError::Unsupported(format!(
                "text_encoder hidden_act {other:?}"
            ))),
        }
    }

    fn forward(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
        }
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The CLIP text encoder of a Stable Diffusion pipeline.
pub struct TextEncoder {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    heads: usize,
    activation: Activation,
    max_positions: usize,
    /// `text_projection` (no bias) of a `CLIPTextModelWithProjection`.
    projection: Option<Linear>,
    eos_token_id: i64,
}

/// Which hidden states [`TextEncoder::encode`] returns; `skip` more layers
/// left out is diffusers' `clip_skip` (A1111's "Clip skip" less one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenLayer {
    /// `hidden_states[-(skip + 1)]` after the final layer norm (SD 1.x/2.x;
    /// skip 0 is `last_hidden_state`).
    Last { skip: usize },
    /// `hidden_states[-(skip + 2)]`, not normed (SDXL; skip 0 is the
    /// next-to-last layer's output).
    Penultimate { skip: usize },
}

impl HiddenLayer {
    /// How many encoder layers produce these states, out of `layers`; `None`
    /// when `skip` leaves none.
    pub fn layers_run(self, layers: usize) -> Option<usize> {
        let (skip, extra) = match self {
            Self::Last { skip } => (skip, 0),
            Self::Penultimate { skip } => (skip, 1),
        };
        layers.checked_sub(skip + extra).filter(|&n| n > 0)
    }

    fn normed(self) -> bool {
        matches!(self, Self::Last { .. })
    }
}

/// Hidden states `(batch, seq, hidden)` and, for a model with a projection,
/// the projected pooled output `(batch, projection_dim)`.
pub struct TextOutput {
    pub hidden: Tensor,
    pub pooled: Option<Tensor>,
}

impl TextEncoder {
    /// Builds from weights with or without the `text_model.` key prefix
    /// (transformers 4 writes it, transformers 5 does not).
    pub fn new(
        vb: VarBuilder,
        has_prefix: bool,
        cfg: &TextEncoderConfig,
    ) -> candle_core::Result<Self> {
        let root = vb.clone();
        let vb = if has_prefix { vb.pp("text_model") } else { vb };
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let emb = vb.pp("embeddings");
        let token_embedding = embedding(cfg.vocab_size, h, emb.pp("token_embedding"))?;
        let position_embedding =
            embedding(cfg.max_position_embeddings, h, emb.pp("position_embedding"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = vb.pp("encoder.layers").pp(i.to_string());
                let attn = l.pp("self_attn");
                Ok(EncoderLayer {
                    layer_norm1: layer_norm(h, eps, l.pp("layer_norm1"))?,
                    q_proj: linear(h, h, attn.pp("q_proj"))?,
                    k_proj: linear(h, h, attn.pp("k_proj"))?,
                    v_proj: linear(h, h, attn.pp("v_proj"))?,
                    out_proj: linear(h, h, attn.pp("out_proj"))?,
                    layer_norm2: layer_norm(h, eps, l.pp("layer_norm2"))?,
                    fc1: linear(h, cfg.intermediate_size, l.pp("mlp.fc1"))?,
                    fc2: linear(cfg.intermediate_size, h, l.pp("mlp.fc2"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm = layer_norm(h, eps, vb.pp("final_layer_norm"))?;
        let activation = Activation::parse(&cfg.hidden_act)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        // transformers writes `text_projection` at the top level, beside `text_model`.
        let projection = match cfg.projection_dim {
            Some(dim) if root.contains_tensor("text_projection.weight") => Some(
                candle_nn::linear_no_bias(h, dim, root.pp("text_projection"))?,
            ),
            _ => None,
        };
        if cfg.num_hidden_layers < 2 {
            return Err(candle_core::Error::Msg(format!(
                "num_hidden_layers {} is fewer than 2",
                cfg.num_hidden_layers
            )));
        }
        if cfg.num_attention_heads == 0 || !h.is_multiple_of(cfg.num_attention_heads) {
            return Err(candle_core::Error::Msg(format!(
                "hidden_size {h} is not divisible by num_attention_heads {}",
                cfg.num_attention_heads
            )));
        }
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            heads: cfg.num_attention_heads,
            activation,
            max_positions: cfg.max_position_embeddings,
            projection,
            eos_token_id: cfg.eos_token_id,
        })
    }

    /// Whether the model has a `text_projection` (gives a pooled output).
    pub fn has_projection(&self) -> bool {
        self.projection.is_some()
    }

    /// Width of the pooled output (`projection_dim`), when there is a projection.
    pub fn projection_dim(&self) -> Option<usize> {
        self.projection
            .as_ref()
            .map(|p| p.weight().dim(0).unwrap_or(0))
    }

    /// dtype of the weights and so of the outputs.
    pub fn dtype(&self) -> DType {
        self.final_layer_norm.weight().dtype()
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.final_layer_norm.weight().dim(0).unwrap_or(0)
    }

    /// Longest token sequence the position embedding covers.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Number of transformer layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The hidden states `which` asks for and, with a projection, the pooled
    /// output: the final-normed last state at each row's eos token, projected.
    /// `fixes` put vectors in place of token embeddings: (row, first
    /// position, vectors `(n, hidden)`), for textual-inversion embeddings.
    pub fn encode(
        &self,
        ids: &Tensor,
        fixes: &[(usize, usize, Tensor)],
        which: HiddenLayer,
    ) -> candle_core::Result<TextOutput> {
        let (batch, seq) = ids.dims2()?;
        let run = which.layers_run(self.layers.len()).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{which:?} leaves none of the text encoder's {} layers",
                self.layers.len()
            ))
        })?;
        let positions = Tensor::arange(0u32, seq as u32, ids.device())?;
        let mut tokens = self.token_embedding.forward(ids)?;
        for (row, at, vectors) in fixes {
            let (n, width) = vectors.dims2()?;
            let vectors = vectors.to_dtype(tokens.dtype())?.unsqueeze(0)?;
            tokens = tokens.slice_assign(&[*row..row + 1, *at..at + n, 0..width], &vectors)?;
        }
        let mut xs = tokens.broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(seq, xs.dtype(), ids.device())?;
        let mut hidden = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if i == run {
                hidden = Some(xs.clone());
                // The later layers only matter for the pooled output.
                if self.projection.is_none() {
                    break;
                }
            }
            let residual = xs.clone();
            let normed = layer.layer_norm1.forward(&xs)?;
            xs = (self.attention(layer, &normed, &mask, batch, seq)? + residual)?;
            let residual = xs.clone();
            let normed = layer.layer_norm2.forward(&xs)?;
            let hidden = self.activation.forward(&layer.fc1.forward(&normed)?)?;
            xs = (layer.fc2.forward(&hidden)? + residual)?;
        }
        let raw = hidden.unwrap_or_else(|| xs.clone());
        let hidden = if which.normed() {
            self.final_layer_norm.forward(&raw)?
        } else {
            raw
        };
        let pooled = match &self.projection {
            Some(projection) => {
                let last = self.final_layer_norm.forward(&xs)?;
                let rows = self
                    .eos_positions(ids)?
                    .into_iter()
                    .enumerate()
                    .map(|(row, pos)| last.get(row)?.get(pos)?.unsqueeze(0))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Some(projection.forward(&Tensor::cat(&rows, 0)?)?)
            }
            None => None,
        };
        Ok(TextOutput { hidden, pooled })
    }

    /// Where each row is pooled, as transformers' `CLIPTextTransformer`: the
    /// first `eos_token_id`, or with the legacy id 2 the first highest id.
    fn eos_positions(&self, ids: &Tensor) -> candle_core::Result<Vec<usize>> {
        let rows = ids.to_vec2::<u32>()?;
        Ok(rows
            .iter()
            .map(|row| {
                if self.eos_token_id == 2 {
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&id| id == max).unwrap_or(0)
                } else {
                    row.iter()
                        .position(|&id| i64::from(id) == self.eos_token_id)
                        .unwrap_or(0)
                }
            })
            .collect())
    }

    fn attention(
        &self,
        layer: &EncoderLayer,
        xs: &Tensor,
        mask: &Tensor,
        batch: usize,
        seq: usize,
    ) -> candle_core::Result<Tensor> {
        let hidden = xs.dim(D::Minus1)?;
        let head_dim = hidden / self.heads;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((batch, seq, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split((layer.q_proj.forward(xs)? * (head_dim as f64).powf(-0.5))?)?;
        let k = split(layer.k_proj.forward(xs)?)?;
        let v = split(layer.v_proj.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, seq, hidden))?;
        layer.out_proj.forward(&out)
    }
}

/// Additive mask that hides later positions: 0 on and below the diagonal, -inf above.
fn causal_mask(seq: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (seq, seq), device)?.to_dtype(dtype)
}
