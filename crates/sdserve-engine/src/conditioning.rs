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
use crate::embeddings::EmbeddingLibrary;
use crate::error::{describe_candle, EngineError, Result};
use crate::model_files::{ModelFiles, Part};
use crate::prompt::{self, EmbeddingName, PromptSyntax};
use crate::text_encoder::{HiddenLayer, TextEncoder};
use crate::tokenizer::ClipTokenizer;

/// One tokenizer and the text encoder it feeds (shared, so a LoRA set's
/// copy with a patched encoder costs no tokenizer).
#[derive(Clone)]
pub struct PromptEncoder {
    pub tokenizer: Arc<ClipTokenizer>,
    pub encoder: Arc<TextEncoder>,
    /// Textual-inversion embeddings: the names prompts use and, in the same
    /// order, their vectors `(n, hidden)` for this encoder.
    embedding_names: Vec<EmbeddingName>,
    embedding_vectors: Vec<Tensor>,
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
        if tokenizer.max_length() < 3 {
            return Err(EngineError::invalid_model(
                files.config_path(part),
                format!(
                    "model_max_length {} leaves no room for a token between bos and eos",
                    tokenizer.max_length()
                ),
            ));
        }
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
        let encoder = Self {
            tokenizer,
            encoder,
            embedding_names: Vec::new(),
            embedding_vectors: Vec::new(),
        };
        Ok((encoder, recipe))
    }

    /// `text` in 75-token chunks (see [`crate::prompt`]), each encoded on its
    /// own and weighted, concatenated along the sequence; the pooled output
    /// is the first chunk's, as A1111's.
    fn encode(
        &self,
        text: &str,
        options: TextOptions,
        layer: HiddenLayer,
        device: &Device,
    ) -> Result<TextOut> {
        let chunks =
            prompt::tokenize(text, options.syntax, &self.tokenizer, &self.embedding_names)?;
        let width = self.tokenizer.max_length();
        let ids: Vec<u32> = chunks.iter().flat_map(|c| c.ids.iter().copied()).collect();
        let ids = Tensor::from_vec(ids, (chunks.len(), width), device)?;
        let fixes: Vec<(usize, usize, Tensor)> = chunks
            .iter()
            .enumerate()
            .flat_map(|(row, c)| c.fixes.iter().map(move |&(at, e)| (row, at, e)))
            .map(|(row, at, e)| (row, at, self.embedding_vectors[e].clone()))
            .collect();
        let out = self.encoder.encode(&ids, &fixes, layer)?;
        let rows = chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| {
                let hidden = out.hidden.get(i)?;
                if chunk.is_plain() {
                    Ok(hidden)
                } else {
                    emphasize(&hidden, &chunk.weights)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let hidden = Tensor::cat(&rows, 0)?.unsqueeze(0)?;
        let pooled = out.pooled.map(|p| p.narrow(0, 0, 1)).transpose()?;
        Ok(TextOut { hidden, pooled })
    }

    /// This tokenizer and its embeddings over another encoder (a LoRA's
    /// patched copy).
    pub fn with_encoder(&self, encoder: Arc<TextEncoder>) -> Self {
        Self {
            encoder,
            ..self.clone()
        }
    }

    /// Makes `library`'s embeddings usable in prompts: each one's name as
    /// this tokenizer cuts it, and its vectors for encoder `index`.
    fn set_embeddings(&mut self, library: &EmbeddingLibrary, index: usize) {
        let (names, vectors) = library
            .loaded
            .values()
            .filter_map(|e| {
                let vectors = e.per_encoder.get(index)?.clone();
                let name = EmbeddingName {
                    ids: self.tokenizer.content_ids(&e.name),
                    vectors: e.vectors,
                };
                Some((name, vectors))
            })
            .unzip();
        self.embedding_names = names;
        self.embedding_vectors = vectors;
    }

    /// How many final layers clip skip may leave out of this encoder.
    fn max_skip(&self, layer: fn(usize) -> HiddenLayer) -> usize {
        let layers = self.encoder.num_layers();
        (0..layers)
            .take_while(|&skip| layer(skip).layers_run(layers).is_some())
            .last()
            .unwrap_or(0)
    }
}

/// A1111's "Original" emphasis on one chunk's hidden states `(seq, width)`:
/// each token's row scaled by its weight, then the whole rescaled so its mean
/// is the unweighted mean again (in f32 whatever the model's dtype).
fn emphasize(hidden: &Tensor, weights: &[f32]) -> Result<Tensor> {
    let dtype = hidden.dtype();
    let z = hidden.to_dtype(DType::F32)?;
    let before = z.mean_all()?;
    let w = Tensor::from_slice(weights, (weights.len(), 1), z.device())?;
    let z = z.broadcast_mul(&w)?;
    let after = z.mean_all()?;
    Ok(z.broadcast_mul(&before.div(&after)?)?.to_dtype(dtype)?)
}

/// How prompt text is read and which encoder layer conditions the UNet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextOptions {
    pub syntax: PromptSyntax,
    /// Final encoder layers left out (diffusers' `clip_skip`; 0: none).
    pub clip_skip: usize,
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

    /// The widths of the encoders' hidden states, in order (what a
    /// textual-inversion embedding must match).
    pub fn encoder_widths(&self) -> Vec<usize> {
        match self {
            Self::Single(e) => vec![e.encoder.hidden_size()],
            Self::Dual { first, second, .. } => {
                vec![first.encoder.hidden_size(), second.encoder.hidden_size()]
            }
        }
    }

    /// Uses `library`'s embeddings wherever a prompt names them.
    pub fn set_embeddings(&mut self, library: &EmbeddingLibrary) {
        match self {
            Self::Single(e) => e.set_embeddings(library, 0),
            Self::Dual { first, second, .. } => {
                first.set_embeddings(library, 0);
                second.set_embeddings(library, 1);
            }
        }
    }

    /// The largest clip skip the encoders allow (each keeps at least one layer).
    pub fn max_clip_skip(&self) -> usize {
        match self {
            Self::Single(e) => e.max_skip(|skip| HiddenLayer::Last { skip }),
            Self::Dual { first, second, .. } => {
                let layer = |skip| HiddenLayer::Penultimate { skip };
                first.max_skip(layer).min(second.max_skip(layer))
            }
        }
    }

    /// Encodes a prompt. Clip skip applies to negative prompts too (as in
    /// A1111; diffusers' pipelines apply `clip_skip` to the prompt only).
    pub fn encode(
        &self,
        text: &str,
        options: TextOptions,
        device: &Device,
    ) -> Result<Conditioning> {
        let skip = options.clip_skip;
        match self {
            Self::Single(e) => Ok(Conditioning {
                context: e
                    .encode(text, options, HiddenLayer::Last { skip }, device)?
                    .hidden,
                pooled: None,
            }),
            Self::Dual { first, second, .. } => {
                let layer = HiddenLayer::Penultimate { skip };
                let a = first.encode(text, options, layer, device)?;
                let b = second.encode(text, options, layer, device)?;
                if a.hidden.dim(1)? != b.hidden.dim(1)? {
                    return Err(EngineError::Unsupported(
                        "the two tokenizers cut this prompt into different numbers of chunks"
                            .into(),
                    ));
                }
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
    pub fn encode_negative(
        &self,
        text: &str,
        options: TextOptions,
        device: &Device,
    ) -> Result<Conditioning> {
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
            _ => self.encode(text, options, device),
        }
    }
}
