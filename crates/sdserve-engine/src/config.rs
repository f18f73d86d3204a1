//! The model's own configuration files (diffusers `config.json`,
//! `scheduler_config.json`, transformers' CLIP `config.json`) as serde structs.
//!
//! Field names and defaults follow diffusers' `UNet2DConditionModel`,
//! `AutoencoderKL` and schedulers, and transformers' `CLIPTextConfig`, so a
//! key missing from a file means what it means to diffusers.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// Reads and parses one JSON config file, naming the file in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::invalid_model(path, format!("cannot read config: {e}")))?;
    serde_json::from_str(&python_floats_as_null(&text))
        .map_err(|e| EngineError::invalid_model(path, format!("malformed config: {e}")))
}

/// Python's `json.dump` writes the floats JSON lacks as bare `NaN`,
/// `Infinity` and `-Infinity` (diffusers' DPM-Solver configs carry
/// `"lambda_min_clipped": -Infinity`). They become `null`, which every
/// optional config field reads as absent: its default.
fn python_floats_as_null(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("Infinity") && !text.contains("NaN") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        if let Some(token) = token {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    std::borrow::Cow::Owned(out)
}

/// A config value that diffusers accepts either once for all blocks or per block.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Copy> PerBlock<T> {
    /// The value for each of `n` blocks; `None` when a list has the wrong length.
    pub fn expand(&self, n: usize) -> Option<Vec<T>> {
        match self {
            PerBlock::One(v) => Some(vec![*v; n]),
            PerBlock::Each(v) if v.len() == n => Some(v.clone()),
            PerBlock::Each(_) => None,
        }
    }
}

fn default_4() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_groups() -> usize {
    32
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_one_f64() -> f64 {
    1.0
}
fn default_one_usize() -> usize {
    1
}
fn default_silu() -> String {
    "silu".into()
}

/// `unet/config.json` of a `UNet2DConditionModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "default_4")]
    pub in_channels: usize,
    #[serde(default = "default_4")]
    pub out_channels: usize,
    pub sample_size: Option<PerBlock<usize>>,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    #[serde(default = "default_2_per_block")]
    pub layers_per_block: PerBlock<usize>,
    pub attention_head_dim: Option<PerBlock<usize>>,
    pub num_attention_heads: Option<PerBlock<usize>>,
    pub cross_attention_dim: PerBlock<usize>,
    #[serde(default = "default_one_per_block")]
    pub transformer_layers_per_block: PerBlock<usize>,
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Attention scores in f32 even when the model runs in half precision
    /// (SD 2.x sets it: its scores overflow f16).
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "default_one_usize")]
    pub downsample_padding: usize,
    #[serde(default = "default_one_f64")]
    pub mid_block_scale_factor: f64,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "default_silu")]
    pub act_fn: String,
    pub addition_embed_type: Option<String>,
    pub class_embed_type: Option<String>,
    pub time_cond_proj_dim: Option<usize>,
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub only_cross_attention: PerBlockBool,
    #[serde(default)]
    pub dual_cross_attention: bool,
    pub resnet_time_scale_shift: Option<String>,
    pub time_embedding_type: Option<String>,
    /// SDXL's `text_time` conditioning: width of each add_time_id's sinusoidal embedding.
    pub addition_time_embed_dim: Option<usize>,
    /// SDXL's `text_time` conditioning: pooled text width + 6 x `addition_time_embed_dim`.
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Up-block depths when they are not the reverse of the down blocks' (nested lists).
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    pub time_embedding_dim: Option<usize>,
    pub time_embedding_act_fn: Option<String>,
    pub timestep_post_act: Option<String>,
    pub attention_type: Option<String>,
    pub cross_attention_norm: Option<String>,
    #[serde(default)]
    pub class_embeddings_concat: bool,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    pub resnet_out_scale_factor: Option<f64>,
    pub conv_in_kernel: Option<usize>,
    pub conv_out_kernel: Option<usize>,
}

fn default_2_per_block() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn default_one_per_block() -> PerBlock<usize> {
    PerBlock::One(1)
}

/// `only_cross_attention`: a bool or a per-block list of bools.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlockBool {
    One(bool),
    Each(Vec<bool>),
}

impl Default for PerBlockBool {
    fn default() -> Self {
        PerBlockBool::One(false)
    }
}

impl PerBlockBool {
    /// True when any block uses the feature.
    pub fn any(&self) -> bool {
        match self {
            PerBlockBool::One(b) => *b,
            PerBlockBool::Each(v) => v.iter().any(|b| *b),
        }
    }
}

/// `vae/config.json` of an `AutoencoderKL`.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "default_3")]
    pub in_channels: usize,
    #[serde(default = "default_3")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_one_usize")]
    pub layers_per_block: usize,
    #[serde(default = "default_4")]
    pub latent_channels: usize,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
    /// Decode in f32 when the rest runs in f16 (the SD VAE overflows in f16).
    #[serde(default = "default_true")]
    pub force_upcast: bool,
    #[serde(default = "default_silu")]
    pub act_fn: String,
    /// Training image size; diffusers' tile size when tiling is enabled.
    #[serde(default = "default_vae_sample_size")]
    pub sample_size: PerBlock<usize>,
    /// Per-channel latent statistics some SDXL-family VAEs declare: the
    /// pipeline then decodes `latents * std / scaling_factor + mean`.
    pub latents_mean: Option<Vec<f64>>,
    pub latents_std: Option<Vec<f64>>,
}

impl VaeConfig {
    /// `sample_size` as one number: diffusers derives the latent tile from the
    /// first entry of a list (and fails on a list for the pixel tile).
    pub fn sample_size(&self) -> usize {
        match &self.sample_size {
            PerBlock::One(s) => *s,
            PerBlock::Each(v) => v.first().copied().unwrap_or(32),
        }
    }
}

/// diffusers' `AutoencoderKL` default `sample_size`.
fn default_vae_sample_size() -> PerBlock<usize> {
    PerBlock::One(32)
}

fn default_3() -> usize {
    3
}
fn default_scaling_factor() -> f64 {
    0.18215
}

/// `text_encoder/config.json` of a transformers `CLIPTextModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct TextEncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "default_norm_eps")]
    pub layer_norm_eps: f64,
    /// Width of `text_projection` (a `CLIPTextModelWithProjection`'s pooled output).
    pub projection_dim: Option<usize>,
    /// transformers pools at the first `eos_token_id`; the legacy value 2 means
    /// "at the highest id" (argmax), which is where CLIP's eos sits.
    #[serde(default = "default_eos")]
    pub eos_token_id: i64,
    #[serde(default)]
    pub architectures: Vec<String>,
}

fn default_eos() -> i64 {
    2
}

/// `model_index.json`: the pipeline class and its own flags.
#[derive(Debug, Clone, Deserialize)]
pub struct PipelineIndex {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// SDXL: an empty negative prompt is all-zero embeddings (diffusers' default `true`).
    pub force_zeros_for_empty_prompt: Option<bool>,
}

fn default_quick_gelu() -> String {
    "quick_gelu".into()
}

/// `scheduler/scheduler_config.json`. Every field is optional: an absent key
/// takes the default of the scheduler class that reads it, as `from_config` does.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SchedulerConfig {
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<String>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<String>,
    pub timestep_spacing: Option<String>,
    pub steps_offset: Option<usize>,
    pub set_alpha_to_one: Option<bool>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    pub rescale_betas_zero_snr: Option<bool>,
    pub thresholding: Option<bool>,
    pub interpolation_type: Option<String>,
    pub timestep_type: Option<String>,
    pub final_sigmas_type: Option<String>,
    /// Sigma schedule switches (Karras et al., exponential, beta), honoured
    /// by the samplers whose diffusers class has them when the request asks
    /// for the automatic schedule.
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    /// Multistep solvers (DPM-Solver, UniPC).
    pub solver_order: Option<usize>,
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub lambda_min_clipped: Option<f64>,
    pub variance_type: Option<String>,
    pub predict_x0: Option<bool>,
    pub disable_corrector: Option<Vec<usize>>,
    /// Euler and UniPC: Karras-style sigma bounds overriding the schedule's.
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// LCM.
    pub original_inference_steps: Option<usize>,
    pub timestep_scaling: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_block_values_expand() {
        let one: PerBlock<usize> = serde_json::from_str("8").unwrap();
        assert_eq!(one.expand(3), Some(vec![8, 8, 8]));
        let each: PerBlock<usize> = serde_json::from_str("[5, 10]").unwrap();
        assert_eq!(each.expand(2), Some(vec![5, 10]));
        assert_eq!(each.expand(3), None);
    }

    #[test]
    fn python_infinities_read_as_absent() {
        let text = r#"{"lambda_min_clipped": -Infinity, "x": NaN, "name": "NaN -Infinity \"q\"", "y": Infinity}"#;
        let v: serde_json::Value = serde_json::from_str(&python_floats_as_null(text)).unwrap();
        assert!(v["lambda_min_clipped"].is_null() && v["x"].is_null() && v["y"].is_null());
        assert_eq!(v["name"], "NaN -Infinity \"q\"");
        let c: SchedulerConfig = serde_json::from_str(&python_floats_as_null(
            r#"{"lambda_min_clipped": -Infinity}"#,
        ))
        .unwrap();
        assert_eq!(c.lambda_min_clipped, None);
    }

    #[test]
    fn scheduler_config_leaves_absent_keys_unset() {
        let c: SchedulerConfig = serde_json::from_str(
            r#"{"_class_name": "PNDMScheduler", "steps_offset": 1, "skip_prk_steps": true}"#,
        )
        .unwrap();
        assert_eq!(c.steps_offset, Some(1));
        assert_eq!(c.timestep_spacing, None);
        assert_eq!(c.prediction_type, None);
    }
}
