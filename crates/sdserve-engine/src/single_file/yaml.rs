//! The original (LDM) config a single-file checkpoint was trained with, as
//! A1111 reads it from `<name>.yaml` next to the file: `model.params` holds the
//! noise schedule (`linear_start`, `linear_end`, `timesteps`,
//! `parameterization`), the latent size and VAE scale, and the three
//! components' configs (`unet_config` or SGM's `network_config`,
//! `first_stage_config`, `cond_stage_config`). Only what sdserve uses is read;
//! other keys are ignored, as by diffusers' `from_single_file`.
//!
//! A top-level `diffusers:` block is sdserve's own (LDM, A1111 and diffusers
//! read `model:` only): keys of diffusers' `scheduler_config.json` and of the
//! text encoder's `config.json` that an LDM config cannot express (the head
//! count of a non-standard text encoder, a `timestep_spacing`), laid over what
//! the LDM config and the family give.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::PerBlock;
use crate::error::{EngineError, Result};

/// Largest original config read (Stability's are about 3 KB).
const MAX_YAML_BYTES: u64 = 1 << 20;

/// A parsed `<name>.yaml`.
#[derive(Debug, Clone, Deserialize)]
pub struct OriginalConfig {
    pub model: ModelSection,
    /// sdserve's overrides, in diffusers' key names.
    #[serde(default)]
    pub diffusers: Overrides,
}

/// `model:`.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelSection {
    pub params: ModelParams,
}

/// `model.params`: the LatentDiffusion (or SGM DiffusionEngine) arguments.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelParams {
    pub linear_start: Option<f64>,
    pub linear_end: Option<f64>,
    pub timesteps: Option<usize>,
    /// `eps` (default), `v` or `x0`.
    pub parameterization: Option<String>,
    /// LDM's `beta_schedule`: `linear` (default, diffusers' `scaled_linear`).
    pub beta_schedule: Option<String>,
    /// Latent size (64 for 512 px models, 96 for 768-v).
    pub image_size: Option<usize>,
    /// The VAE's latent scaling (diffusers' `scaling_factor`).
    pub scale_factor: Option<f64>,
    #[serde(alias = "network_config")]
    pub unet_config: Option<Component<UNetParams>>,
    pub first_stage_config: Option<Component<FirstStageParams>>,
    pub cond_stage_config: Option<CondStage>,
    /// SGM's conditioners (SDXL): the size embedder's `outdim` is read from it.
    pub conditioner_config: Option<Conditioner>,
}

/// `{target, params}` of one component (its target is implied by the key).
#[derive(Debug, Clone, Deserialize)]
pub struct Component<P> {
    pub params: P,
}

/// `cond_stage_config`, whose `params` may be absent.
#[derive(Debug, Clone, Deserialize)]
pub struct CondStage {
    /// `...FrozenCLIPEmbedder` (SD 1.x) or `...FrozenOpenCLIPEmbedder` (SD 2.x).
    pub target: Option<String>,
    #[serde(default)]
    pub params: CondStageParams,
}

/// `unet_config.params` (ldm.modules.diffusionmodules.openaimodel.UNetModel).
#[derive(Debug, Clone, Deserialize)]
pub struct UNetParams {
    pub in_channels: usize,
    pub out_channels: usize,
    pub model_channels: usize,
    /// Downsampling factors (1, 2, 4...) of the levels that have attention.
    pub attention_resolutions: Vec<usize>,
    pub num_res_blocks: PerBlock<usize>,
    pub channel_mult: Vec<usize>,
    /// Heads per attention; -1 (LDM's default) when `num_head_channels` is used.
    #[serde(default = "minus_one")]
    pub num_heads: i64,
    /// Width of each head; -1 (default) when `num_heads` is used.
    #[serde(default = "minus_one")]
    pub num_head_channels: i64,
    #[serde(default)]
    pub use_linear_in_transformer: bool,
    #[serde(default = "one_per_block")]
    pub transformer_depth: PerBlock<usize>,
    pub context_dim: Option<PerBlock<usize>>,
    /// Class or vector conditioning (SDXL's `sequential`, upscalers).
    pub num_classes: Option<serde_norway::Value>,
    /// Width of SDXL's vector conditioning (pooled text + size embeddings).
    pub adm_in_channels: Option<usize>,
    /// Depth of the mid block's transformer (SGM; default: the last level's).
    pub transformer_depth_middle: Option<usize>,
    pub disable_self_attentions: Option<serde_norway::Value>,
}

fn minus_one() -> i64 {
    -1
}
fn one_per_block() -> PerBlock<usize> {
    PerBlock::One(1)
}

/// SGM's `conditioner_config` (sgm.modules.GeneralConditioner).
#[derive(Debug, Clone, Deserialize)]
pub struct Conditioner {
    pub params: ConditionerParams,
}

/// `conditioner_config.params`.
#[derive(Debug, Clone, Deserialize)]
pub struct ConditionerParams {
    #[serde(default)]
    pub emb_models: Vec<Embedder>,
}

/// One of SGM's embedders: a text encoder or a size embedder.
#[derive(Debug, Clone, Deserialize)]
pub struct Embedder {
    pub target: Option<String>,
    #[serde(default)]
    pub params: Map<String, Value>,
}

impl Conditioner {
    /// `outdim` of the `ConcatTimestepEmbedderND` size embedders (SDXL: 256).
    pub fn time_embed_dim(&self) -> Option<usize> {
        self.params
            .emb_models
            .iter()
            .filter(|e| {
                e.target
                    .as_deref()
                    .is_some_and(|t| t.ends_with("ConcatTimestepEmbedderND"))
            })
            .find_map(|e| e.params.get("outdim").and_then(Value::as_u64))
            .map(|d| d as usize)
    }
}

/// `first_stage_config.params` (ldm.models.autoencoder.AutoencoderKL).
#[derive(Debug, Clone, Deserialize)]
pub struct FirstStageParams {
    pub embed_dim: usize,
    pub ddconfig: DdConfig,
}

/// `first_stage_config.params.ddconfig`: encoder/decoder shape.
#[derive(Debug, Clone, Deserialize)]
pub struct DdConfig {
    pub z_channels: usize,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_ch: usize,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
}

fn three() -> usize {
    3
}

/// `cond_stage_config.params` (FrozenCLIPEmbedder / FrozenOpenCLIPEmbedder).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CondStageParams {
    /// `last` (default), `penultimate` (SD 2.x), `hidden`, `pooled`.
    pub layer: Option<String>,
}

/// The `diffusers:` block: per component, diffusers config keys.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Overrides {
    #[serde(default)]
    pub scheduler: Map<String, Value>,
    #[serde(default)]
    pub text_encoder: Map<String, Value>,
    #[serde(default)]
    pub text_encoder_2: Map<String, Value>,
    #[serde(default)]
    pub unet: Map<String, Value>,
    #[serde(default)]
    pub vae: Map<String, Value>,
}

impl OriginalConfig {
    /// Reads and parses `path`, naming it (and serde's location) in errors.
    pub fn read(path: &Path) -> Result<Self> {
        let bad = |m: String| EngineError::invalid_model(path, m);
        let size = std::fs::metadata(path)
            .map_err(|e| bad(format!("cannot read: {e}")))?
            .len();
        if size > MAX_YAML_BYTES {
            return Err(bad(format!(
                "{size} bytes is too large for an original config (at most {MAX_YAML_BYTES})"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        Self::parse(&text).map_err(bad)
    }

    /// Parses the text of an original config.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        serde_norway::from_str(text).map_err(|e| format!("malformed original config: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stability's `v2-inference-v.yaml`, trimmed of keys sdserve ignores.
    const V2_INFERENCE_V: &str = r#"
model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.0120
    num_timesteps_cond: 1
    timesteps: 1000
    image_size: 96
    channels: 4
    scale_factor: 0.18215
    use_ema: False
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        use_checkpoint: True
        use_fp16: True
        image_size: 32 # unused
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2, 4, 4 ]
        num_head_channels: 64 # need to fix for flash-attn
        use_spatial_transformer: True
        use_linear_in_transformer: True
        transformer_depth: 1
        context_dim: 1024
        legacy: False
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult:
          - 1
          - 2
          - 4
          - 4
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate"
"#;

    #[test]
    fn stability_v2_config_parses() {
        let c = OriginalConfig::parse(V2_INFERENCE_V).unwrap();
        let p = &c.model.params;
        assert_eq!(p.parameterization.as_deref(), Some("v"));
        assert_eq!(
            (p.linear_start, p.linear_end, p.timesteps),
            (Some(0.00085), Some(0.012), Some(1000))
        );
        assert_eq!(p.image_size, Some(96));
        let unet = &p.unet_config.as_ref().unwrap().params;
        assert_eq!(unet.channel_mult, [1, 2, 4, 4]);
        assert_eq!((unet.num_heads, unet.num_head_channels), (-1, 64));
        assert!(unet.use_linear_in_transformer);
        assert_eq!(unet.context_dim, Some(PerBlock::One(1024)));
        let vae = &p.first_stage_config.as_ref().unwrap().params.ddconfig;
        assert_eq!((vae.ch, vae.num_res_blocks, vae.z_channels), (128, 2, 4));
        let cond = p.cond_stage_config.as_ref().unwrap();
        assert_eq!(cond.params.layer.as_deref(), Some("penultimate"));
        assert!(c.diffusers.scheduler.is_empty());
    }

    #[test]
    fn malformed_config_names_the_place() {
        let bad = V2_INFERENCE_V.replace("channel_mult: [ 1, 2, 4, 4 ]", "channel_mult: four");
        let err = OriginalConfig::parse(&bad).unwrap_err();
        assert!(err.contains("channel_mult"), "{err}");
        let err = OriginalConfig::parse("model: [1, 2]").unwrap_err();
        assert!(err.contains("malformed original config"), "{err}");
    }
}
