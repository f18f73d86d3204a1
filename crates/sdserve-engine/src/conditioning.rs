//! Prompt text to what the UNet is conditioned on, per model family:
//!
//! * SD 1.x/2.x: one CLIP text encoder's `last_hidden_state`;
//! * SDXL (`StableDiffusionXLPipeline.encode_prompt`): the penultimate hidden
//!   states of both encoders concatenated on the feature axis, plus the second
//!   encoder's pooled, projected output; an empty negative prompt is all zeros
//!   when the pipeline's `force_zeros_for_empty_prompt` says so.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::config::TextEncoderConfig;
use crate::error::{describe_candle, EngineError, Result};
use crate::model_files::{ModelFiles, Part};
use crate::text_encoder::{HiddenLayer, TextEncoder};
use crate::tokenizer::ClipTokenizer;

/// One tokenizer and the text encoder it feeds (shared, so a LoRA set's
/// copy with a patched encoder costs no tokenizer).
#[derive(Clone)]
pub struct PromptEncoder {
    pub tokenizer: Arc<ClipTokenizer>,
    pub encoder: Arc<TextEncoder>,
}

/// How a text encoder was built, to build it again from patched weights (LoRA).
pub struct TextRecipe {
    pub cfg: TextEncoderConfig,
    pub has_prefix: bool,
    /// The tensors it was built from, by name.
    pub weights: crate::lora::Recorder,
}

impl PromptEncoder {
    /// Loads a text encoder `part` (`TextEncoder` or `TextEncoder2`) and its tokenizer.
    pub fn load(
        files: &ModelFiles,
        part: Part,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, TextRecipe)> {
        let tokenizer = Arc::new(files.tokenizer(part)?);
        let cfg: TextEncoderConfig = files.text_encoder_config(part)?;
        let (vb, names, file) = files.weights(part, dtype, device)?;
        let (vb, weights) = crate::lora::recording(vb);
        let has_prefix = names.iter().any(|n| n.starts_with("text_model."));
        let encoder = TextEncoder::new(vb, has_prefix, &cfg)
            .map_err(|e| EngineError::invalid_model(&file, describe_candle(&e)))?;
        let encoder = Arc::new(encoder);
        if tokenizer.max_length() > encoder.max_positions() {
            return Err(EngineError::invalid_model(
                files.config_path(part),
                format!(
                    "max_position_embeddings {} is shorter than the tokenizer's model_max_length {}",
                    encoder.max_positions(),
                    tokenizer.max_length()
                ),
            ));
        }
        let recipe = TextRecipe {
            cfg,
            has_prefix,
            weights,
        };
        Ok((Self { tokenizer, encoder }, recipe))
    }

    fn encode(&self, text: &str, layer: HiddenLayer, device: &Device) -> Result<TextOut> {
        let ids = self.tokenizer.encode(text);
        let total = self.tokenizer.count_tokens(text);
        if total + 2 > ids.len() {
            tracing::warn!(
                tokens = total,
                limit = ids.len().saturating_sub(2),
                "prompt is longer than CLIP's context and was truncated"
            );
        }
        let ids = Tensor::from_vec(ids.clone(), (1, ids.len()), device)?;
        let out = self.encoder.encode(&ids, layer)?;
        Ok(TextOut {
            hidden: out.hidden,
            pooled: out.pooled,
        })
    }
}

struct TextOut {
    hidden: Tensor,
    pooled: Option<Tensor>,
}

/// What one prompt conditions the UNet with.
#[derive(Clone)]
pub struct Conditioning {
    /// `(1, seq, cross_attention_dim)` for the cross-attentions.
    pub context: Tensor,
    /// `(1, projection_dim)` for SDXL's added conditioning; `None` for SD 1.x/2.x.
    pub pooled: Option<Tensor>,
}

/// The text side of a pipeline.
#[derive(Clone)]
pub enum TextConditioner {
    /// SD 1.x/2.x.
    Single(Box<PromptEncoder>),
    /// SDXL: the pooled output comes from `second`, which must have a projection.
    Dual {
        first: Box<PromptEncoder>,
        second: Box<PromptEncoder>,
        force_zeros_for_empty_prompt: bool,
    },
}

impl TextConditioner {
    /// Width of the context the cross-attentions read.
    pub fn context_dim(&self) -> usize {
        match self {
            Self::Single(e) => e.encoder.hidden_size(),
            Self::Dual { first, second, .. } => {
                first.encoder.hidden_size() + second.encoder.hidden_size()
            }
        }
    }

    /// Encodes a prompt.
    pub fn encode(&self, text: &str, device: &Device) -> Result<Conditioning> {
        match self {
            Self::Single(e) => Ok(Conditioning {
                context: e.encode(text, HiddenLayer::Last, device)?.hidden,
                pooled: None,
            }),
            Self::Dual { first, second, .. } => {
                let a = first.encode(text, HiddenLayer::Penultimate, device)?;
                let b = second.encode(text, HiddenLayer::Penultimate, device)?;
                let context = Tensor::cat(&[&a.hidden, &b.hidden.to_dtype(a.hidden.dtype())?], 2)?;
                let pooled = b.pooled.ok_or_else(|| {
                    EngineError::Unsupported("text_encoder_2 has no text_projection".into())
                })?;
                Ok(Conditioning {
                    context,
                    pooled: Some(pooled),
                })
            }
        }
    }

    /// Encodes a negative prompt: as a prompt, except that SDXL turns an empty
    /// one into zeros when `force_zeros_for_empty_prompt` (diffusers does so
    /// for `negative_prompt=None`, which is what an empty field means here).
    pub fn encode_negative(&self, text: &str, device: &Device) -> Result<Conditioning> {
        match self {
            Self::Dual {
                first,
                second,
                force_zeros_for_empty_prompt: true,
            } if text.is_empty() => {
                // The shapes an encoding would have; nothing is encoded.
                let dtype = first.encoder.dtype();
                let seq = first.tokenizer.max_length();
                let pooled = second.encoder.projection_dim().ok_or_else(|| {
                    EngineError::Unsupported("text_encoder_2 has no text_projection".into())
                })?;
                Ok(Conditioning {
                    context: Tensor::zeros((1, seq, self.context_dim()), dtype, device)?,
                    pooled: Some(Tensor::zeros((1, pooled), dtype, device)?),
                })
            }
            _ => self.encode(text, device),
        }
    }
}
