//! Loading a diffusers-format Stable Diffusion folder: every architecture
//! number comes from the folder's own configs, mapped onto our UNet and VAE
//! decoder (built from candle's layers), and refused with a clear error where
//! they go beyond what those modules implement.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};

use crate::attention::ScoreBlock;
use crate::conditioning::{PromptEncoder, TextConditioner};
use crate::config::{PerBlock, SchedulerConfig, UNetConfig, VaeConfig};
use crate::error::{EngineError, Result};
use crate::lora::{Rebuild, UnetRecipe};
use crate::model_files::{ModelFiles, Part};
use crate::unet::{TextTimeShape, UNet, UNetShape};
use crate::vae::{VaeDecoder, VaeShape};
use crate::vae_encoder::VaeEncoder;
use crate::vae_tiling::TileGeometry;

/// Model families, told apart by their components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x / 2.x: one text encoder.
    Sd,
    /// SDXL base: two text encoders and `text_time` added conditioning.
    Sdxl,
}

/// All parts of a loaded Stable Diffusion 1.x/2.x or SDXL pipeline. Cloning
/// shares every module (a LoRA set's model replaces the UNet or text side).
#[derive(Clone)]
pub struct StableDiffusion {
    pub family: Family,
    pub text: TextConditioner,
    pub unet: Arc<UNet>,
    pub vae: Arc<VaeDecoder>,
    /// `--tiny-vae`: a tiny VAE decoder for live previews (set by the
    /// engine after loading).
    pub tiny_vae: Option<Arc<crate::tiny_vae::TinyVaeDecoder>>,
    /// `--fast-decode`: [`Self::tiny_vae`] decodes the final images instead
    /// of [`Self::vae`].
    pub fast_decode: bool,
    /// `--step-cache N`: DeepCache's interval (every N-th UNet call of a job
    /// is full, the others shallow); `None` runs every call in full.
    pub step_cache: Option<usize>,
    /// The VAE encoder, for image-to-image (absent from decoder-only files).
    pub vae_encoder: Option<Arc<VaeEncoder>>,
    /// The UNet takes `2 * latent_channels + 1` inputs: latents, mask and the
    /// masked image's latents (an inpainting model).
    pub inpainting: bool,
    /// dtype of the text encoder and UNet weights (and text encoder activations).
    pub dtype: DType,
    /// dtype of the UNet's activations ([`compute_dtype`]).
    pub unet_dtype: DType,
    /// dtype of the VAE's activations (f32 when `force_upcast` and `dtype` is f16, as
    /// diffusers, and for bf16 on a CPU with AVX512-BF16: [`vae_compute_dtype`]).
    pub vae_dtype: DType,
    pub scheduler: SchedulerConfig,
    pub vae_scaling_factor: f64,
    pub vae_shift_factor: f64,
    /// Per-channel latent mean and std (`(1, C, 1, 1)`) when the VAE config declares them.
    pub vae_latents_stats: Option<(Tensor, Tensor)>,
    pub vae_scale_factor: usize,
    pub latent_channels: usize,
    /// Native latent size (height, width) from the UNet's `sample_size`.
    pub sample_size: (usize, usize),
    /// The VAE config's `sample_size` and `block_out_channels` count: its tile geometry.
    pub vae_sample_size: usize,
    pub vae_blocks: usize,
    pub device: Device,
    /// The loaded weights and how the UNet and text encoders were built, so
    /// a LoRA set can build patched copies (`lora::rebuild`).
    pub lora_base: Arc<Rebuild>,
}

impl StableDiffusion {
    /// Training timesteps of the noise schedule (an upper bound for steps).
    pub fn num_train_timesteps(&self) -> usize {
        self.scheduler.num_train_timesteps.unwrap_or(1000)
    }

    /// SDXL-Turbo's configs: SDXL's architecture trained at 512 px (a 64-cell
    /// latent where SDXL base has 128) with "trailing" timesteps, which
    /// 1-step sampling needs. Such a model gets Turbo's defaults whatever its name.
    pub fn has_turbo_configs(&self) -> bool {
        self.family == Family::Sdxl
            && self.sample_size == (64, 64)
            && self.scheduler.timestep_spacing.as_deref() == Some("trailing")
    }

    /// The VAE's tile sizes, as diffusers derives them when tiling is enabled.
    pub fn vae_tile_geometry(&self) -> Result<TileGeometry> {
        TileGeometry::new(self.vae_sample_size, self.vae_blocks)
    }

    /// Refuses a path that is neither a diffusers folder nor a single file (a pickle says why it is unsafe).
    pub fn check_folder(dir: &Path) -> Result<()> {
        ModelFiles::open(dir).map(|_| ())
    }

    /// Loads every component of the diffusers folder or single-file checkpoint `dir`
    /// (`model_files.rs`), with weights in `dtype` and attention scores computed in blocks
    /// of at most `block` bytes. Weights are converted tensor by tensor from
    /// the mapped files, so half-precision files loaded as half are never
    /// widened in memory.
    pub fn load_with(dir: &Path, device: &Device, block: ScoreBlock, dtype: DType) -> Result<Self> {
        let files = ModelFiles::open(dir)?;
        let scheduler: SchedulerConfig = files.scheduler()?;
        let family = if files.has(Part::TextEncoder2) {
            Family::Sdxl
        } else {
            Family::Sd
        };
        if family == Family::Sdxl && !files.has(Part::TextEncoder) {
            return Err(EngineError::Unsupported(format!(
                "{}: a text_encoder_2 without text_encoder (the SDXL refiner) is not supported",
                dir.display()
            )));
        }
        let (first, first_recipe) = PromptEncoder::load(&files, Part::TextEncoder, dtype, device)?;
        let mut text_recipes = vec![first_recipe];
        let text = match family {
            Family::Sd => TextConditioner::Single(Box::new(first)),
            Family::Sdxl => {
                let (second, recipe) =
                    PromptEncoder::load(&files, Part::TextEncoder2, dtype, device)?;
                text_recipes.push(recipe);
                if !second.encoder.has_projection() {
                    return Err(EngineError::invalid_model(
                        files.config_path(Part::TextEncoder2),
                        "no text_projection (SDXL's second text encoder is a CLIPTextModelWithProjection)",
                    ));
                }
                let force_zeros = files.force_zeros_for_empty_prompt()?;
                TextConditioner::Dual {
                    first: Box::new(first),
                    second: Box::new(second),
                    force_zeros_for_empty_prompt: force_zeros,
                }
            }
        };

        let unet_cfg: UNetConfig = files.unet_config()?;
        let unet_shape = unet_config(&unet_cfg, &files.config_path(Part::Unet))?;
        check_conditioning(&text, &unet_shape, &files.config_path(Part::Unet))?;
        let (vb, _, unet_file) = files.weights(Part::Unet, dtype, device)?;
        let (vb, unet_weights) = crate::lora::recording(vb);
        let unet_recipe = UnetRecipe {
            in_channels: unet_cfg.in_channels,
            out_channels: unet_cfg.out_channels,
            shape: unet_shape,
            block,
        };
        let unet = unet_recipe.build(vb).map_err(|e| {
            EngineError::invalid_model(&unet_file, crate::error::describe_candle(&e))
        })?;
        let lora_base = Rebuild::new(unet_recipe, unet_weights, text_recipes);

        let vae_cfg: VaeConfig = files.vae_config()?;
        check_vae(&vae_cfg, &files.config_path(Part::Vae))?;
        // An inpainting UNet also takes the mask and the masked image's latents.
        let latent = vae_cfg.latent_channels;
        let inpainting = unet_cfg.in_channels == 2 * latent + 1;
        if (unet_cfg.in_channels != latent && !inpainting) || unet_cfg.out_channels != latent {
            return Err(EngineError::invalid_model(
                files.config_path(Part::Vae),
                format!(
                    "latent_channels {latent} does not match the UNet's in_channels {} / out_channels {} \
                     (expected {latent}, or {} for an inpainting UNet, and {latent} out)",
                    unet_cfg.in_channels,
                    unet_cfg.out_channels,
                    2 * latent + 1
                ),
            ));
        }
        let (vb, _, vae_file) = files.weights(Part::Vae, vae_dtype(dtype, &vae_cfg), device)?;
        let vae_dtype = vae_compute_dtype(dtype, &vae_cfg, device);
        let vae_shape = VaeShape {
            latent_channels: vae_cfg.latent_channels,
            out_channels: vae_cfg.out_channels,
            block_out_channels: vae_cfg.block_out_channels.clone(),
            layers_per_block: vae_cfg.layers_per_block,
            norm_num_groups: vae_cfg.norm_num_groups,
            use_post_quant_conv: vae_cfg.use_post_quant_conv,
        };
        let bad_vae = |e: candle_core::Error| {
            EngineError::invalid_model(&vae_file, crate::error::describe_candle(&e))
        };
        // Files holding only a decoder (rare) still serve text-to-image.
        let vae_encoder = if vb.contains_tensor("encoder.conv_in.weight") {
            let encoder = VaeEncoder::new(
                vb.clone(),
                &vae_shape,
                vae_cfg.in_channels,
                vae_cfg.use_quant_conv,
                block,
            );
            Some(Arc::new(encoder.map_err(bad_vae)?))
        } else {
            None
        };
        let vae = Arc::new(VaeDecoder::new(vb, &vae_shape, block).map_err(bad_vae)?);

        let vae_scale_factor = 1usize << (vae_cfg.block_out_channels.len().saturating_sub(1));
        let sample_size = match &unet_cfg.sample_size {
            Some(PerBlock::One(s)) => (*s, *s),
            Some(PerBlock::Each(v)) if v.len() == 2 => (v[0], v[1]),
            _ => (64, 64),
        };
        let vae_latents_stats = latents_stats(&vae_cfg, &files.config_path(Part::Vae), device)?;
        Ok(Self {
            family,
            text,
            unet: Arc::new(unet),
            vae,
            tiny_vae: None,
            fast_decode: false,
            step_cache: None,
            vae_encoder,
            inpainting,
            dtype,
            unet_dtype: compute_dtype(dtype, device),
            vae_dtype,
            scheduler,
            vae_scaling_factor: vae_cfg.scaling_factor,
            vae_shift_factor: vae_cfg.shift_factor.unwrap_or(0.0),
            vae_latents_stats,
            vae_scale_factor,
            latent_channels: vae_cfg.latent_channels,
            sample_size,
            vae_sample_size: vae_cfg.sample_size(),
            vae_blocks: vae_cfg.block_out_channels.len(),
            device: device.clone(),
            lora_base: Arc::new(lora_base),
        })
    }
}

/// The dtype the VAE runs in: f32 when the model runs in f16 and the VAE's
/// config says `force_upcast` (the SD VAE overflows in f16), as diffusers.
pub fn vae_dtype(dtype: DType, vae: &VaeConfig) -> DType {
    if dtype == DType::F16 && vae.force_upcast {
        DType::F32
    } else {
        dtype
    }
}

/// The dtype of the VAE's activations ([`compute_dtype`] of its weights').
pub fn vae_compute_dtype(dtype: DType, vae: &VaeConfig, device: &Device) -> DType {
    compute_dtype(vae_dtype(dtype, vae), device)
}

/// The dtype of activations over weights of `weights`: f32 for bf16 weights
/// on a CPU with AVX512-BF16 (mixed precision, as under autocast: products
/// in bf16 with f32 sums, every element-wise op on f32 without conversions),
/// the weights' own otherwise.
pub fn compute_dtype(weights: DType, device: &Device) -> DType {
    if weights == DType::BF16 && device.is_cpu() && crate::bf16_gemm::available() {
        DType::F32
    } else {
        weights
    }
}

/// Why `dtype` is a poor choice on `device`, for a warning at load: half
/// precision on a CPU without the bf16 products runs candle's generic
/// half-precision ops, measured slower than f32 (bf16 ~50 s against ~45 s per
/// SD 1.5 step at 512x512 on an AVX2 machine) and further from diffusers.
pub fn slow_precision(dtype: DType, device: &Device) -> Option<String> {
    let half = matches!(dtype, DType::BF16 | DType::F16);
    if !device.is_cpu() || !half || compute_dtype(dtype, device) == DType::F32 {
        return None;
    }
    Some(format!(
        "{dtype:?} on this CPU runs generic half-precision ops (its fast path needs AVX512-BF16 and bf16 \
         weights): slower than f32 and less exact; --dtype f32 is the faster choice here"
    ))
}

/// The UNet's context width must be the text side's; SDXL's added conditioning
/// must take the pooled width plus six time ids.
fn check_conditioning(text: &TextConditioner, unet: &UNetShape, path: &Path) -> Result<()> {
    let bad = |m: String| Err(EngineError::invalid_model(path, m));
    let context = text.context_dim();
    if context != unet.blocks.cross_attention_dim {
        return bad(format!(
            "cross_attention_dim {} does not match the text encoders' hidden size {context}",
            unet.blocks.cross_attention_dim
        ));
    }
    match (text, &unet.text_time) {
        (TextConditioner::Single(_), None) => Ok(()),
        (TextConditioner::Dual { second, .. }, Some(tt)) => {
            let pooled = second.encoder.projection_dim().unwrap_or(0);
            let expected = pooled + 6 * tt.time_embed_dim;
            if tt.input_dim != expected {
                return bad(format!(
                    "projection_class_embeddings_input_dim {} is not text_encoder_2's projection_dim {pooled} + 6 x addition_time_embed_dim {}",
                    tt.input_dim, tt.time_embed_dim
                ));
            }
            Ok(())
        }
        (TextConditioner::Single(_), Some(_)) => bad(
            "addition_embed_type \"text_time\" needs a second text encoder (text_encoder_2/)"
                .into(),
        ),
        (TextConditioner::Dual { .. }, None) => {
            bad("a pipeline with text_encoder_2 needs addition_embed_type \"text_time\"".into())
        }
    }
}

/// The VAE config's `latents_mean` / `latents_std` as `(1, C, 1, 1)` tensors.
fn latents_stats(c: &VaeConfig, path: &Path, device: &Device) -> Result<Option<(Tensor, Tensor)>> {
    match (&c.latents_mean, &c.latents_std) {
        (Some(mean), Some(std)) => {
            let n = c.latent_channels;
            if mean.len() != n || std.len() != n {
                return Err(EngineError::invalid_model(
                    path,
                    format!("latents_mean and latents_std need {n} values each (latent_channels)"),
                ));
            }
            let t = |v: &[f64]| {
                let v: Vec<f32> = v.iter().map(|x| *x as f32).collect();
                Tensor::from_vec(v, (1, n, 1, 1), device)
            };
            Ok(Some((t(mean)?, t(std)?)))
        }
        _ => Ok(None),
    }
}

/// Maps diffusers' UNet config onto our UNet's shape, refusing what it lacks.
fn unet_config(c: &UNetConfig, path: &Path) -> Result<UNetShape> {
    let bad = |m: String| EngineError::invalid_model(path, m);
    let unsupported = |m: String| EngineError::Unsupported(format!("{}: {m}", path.display()));
    let n = c.block_out_channels.len();
    if n == 0 || c.down_block_types.len() != n || c.up_block_types.len() != n {
        return Err(bad(format!(
            "block_out_channels, down_block_types and up_block_types must have the same non-zero length (got {}, {}, {})",
            n,
            c.down_block_types.len(),
            c.up_block_types.len()
        )));
    }
    if let Some(v) = &c.class_embed_type {
        return Err(unsupported(format!(
            "class_embed_type {v:?} is not supported"
        )));
    }
    let text_time = match c.addition_embed_type.as_deref() {
        None => None,
        Some("text_time") => {
            let (Some(time_embed_dim), Some(input_dim)) = (
                c.addition_time_embed_dim,
                c.projection_class_embeddings_input_dim,
            ) else {
                return Err(bad("addition_embed_type \"text_time\" needs addition_time_embed_dim and projection_class_embeddings_input_dim".into()));
            };
            if time_embed_dim == 0 || time_embed_dim % 2 == 1 {
                return Err(unsupported(format!(
                    "addition_time_embed_dim {time_embed_dim} (an even, non-zero width is supported)"
                )));
            }
            Some(TextTimeShape {
                time_embed_dim,
                input_dim,
            })
        }
        Some(other) => {
            return Err(unsupported(format!(
                "addition_embed_type {other:?} (only \"text_time\", SDXL's, is supported)"
            )))
        }
    };
    let unsupported_set = [
        (
            "reverse_transformer_layers_per_block",
            c.reverse_transformer_layers_per_block
                .as_ref()
                .is_some_and(|v| !v.is_null()),
        ),
        ("time_embedding_dim", c.time_embedding_dim.is_some()),
        ("time_embedding_act_fn", c.time_embedding_act_fn.is_some()),
        ("timestep_post_act", c.timestep_post_act.is_some()),
        (
            "attention_type",
            c.attention_type.as_deref().is_some_and(|v| v != "default"),
        ),
        ("cross_attention_norm", c.cross_attention_norm.is_some()),
        ("class_embeddings_concat", c.class_embeddings_concat),
        ("resnet_skip_time_act", c.resnet_skip_time_act),
        (
            "resnet_out_scale_factor",
            c.resnet_out_scale_factor.is_some_and(|v| v != 1.0),
        ),
        ("conv_in_kernel", c.conv_in_kernel.is_some_and(|k| k != 3)),
        ("conv_out_kernel", c.conv_out_kernel.is_some_and(|k| k != 3)),
    ];
    if let Some((name, _)) = unsupported_set.iter().find(|(_, set)| *set) {
        return Err(unsupported(format!(
            "{name} other than the default is not supported"
        )));
    }
    if c.time_cond_proj_dim.is_some() || c.encoder_hid_dim.is_some() {
        return Err(unsupported(
            "time_cond_proj_dim / encoder_hid_dim are not supported".into(),
        ));
    }
    if c.only_cross_attention.any() || c.dual_cross_attention {
        return Err(unsupported(
            "only_cross_attention / dual_cross_attention are not supported".into(),
        ));
    }
    if c.resnet_time_scale_shift
        .as_deref()
        .is_some_and(|v| v != "default")
        || c.time_embedding_type
            .as_deref()
            .is_some_and(|v| v != "positional")
        || c.act_fn != "silu"
    {
        return Err(unsupported(
            "only silu, positional time embedding and default time scale shift are supported"
                .into(),
        ));
    }
    if let Some(mid) = c.mid_block_type.as_deref() {
        if mid != "UNetMidBlock2DCrossAttn" {
            return Err(unsupported(format!("mid_block_type {mid:?}")));
        }
    }
    let heads = c
        .num_attention_heads
        .as_ref()
        .or(c.attention_head_dim.as_ref())
        .unwrap_or(&PerBlock::One(8))
        .expand(n)
        .ok_or_else(|| {
            bad("attention_head_dim / num_attention_heads: one value per block expected".into())
        })?;
    let transformer_layers = c
        .transformer_layers_per_block
        .expand(n)
        .ok_or_else(|| bad("transformer_layers_per_block: one value per block expected".into()))?;
    let layers = c
        .layers_per_block
        .expand(n)
        .ok_or_else(|| bad("layers_per_block: one value per block expected".into()))?;
    if layers.iter().any(|l| *l != layers[0]) {
        return Err(unsupported("layers_per_block differing per block".into()));
    }
    let cross_dims = c
        .cross_attention_dim
        .expand(n)
        .ok_or_else(|| bad("cross_attention_dim: one value per block expected".into()))?;
    if cross_dims.iter().any(|d| *d != cross_dims[0]) {
        return Err(unsupported(
            "cross_attention_dim differing per block".into(),
        ));
    }
    let mut blocks = Vec::with_capacity(n);
    for i in 0..n {
        let cross = match c.down_block_types[i].as_str() {
            "CrossAttnDownBlock2D" => true,
            "DownBlock2D" => false,
            other => return Err(unsupported(format!("down block type {other:?}"))),
        };
        let expected_up = if cross {
            "CrossAttnUpBlock2D"
        } else {
            "UpBlock2D"
        };
        if c.up_block_types[n - 1 - i] != expected_up {
            return Err(unsupported(format!(
                "up_block_types must mirror down_block_types (expected {expected_up:?} at {})",
                n - 1 - i
            )));
        }
        let channels = c.block_out_channels[i];
        if heads[i] == 0
            || !channels.is_multiple_of(heads[i])
            || !channels.is_multiple_of(c.norm_num_groups)
        {
            return Err(bad(format!(
                "block {i}: {channels} channels are not divisible by {} heads and {} norm groups",
                heads[i], c.norm_num_groups
            )));
        }
        blocks.push(BlockConfig {
            out_channels: channels,
            use_cross_attn: cross.then_some(transformer_layers[i]),
            attention_head_dim: heads[i],
        });
    }
    let blocks = UNet2DConditionModelConfig {
        center_input_sample: c.center_input_sample,
        flip_sin_to_cos: c.flip_sin_to_cos,
        freq_shift: c.freq_shift,
        blocks,
        layers_per_block: layers[0],
        downsample_padding: c.downsample_padding,
        mid_block_scale_factor: c.mid_block_scale_factor,
        norm_num_groups: c.norm_num_groups,
        norm_eps: c.norm_eps,
        cross_attention_dim: cross_dims[0],
        sliced_attention_size: None,
        use_linear_projection: c.use_linear_projection,
    };
    Ok(UNetShape {
        blocks,
        // diffusers' mid block takes the last entry whatever the last block's type.
        mid_transformer_layers: transformer_layers[n - 1],
        text_time,
        upcast_attention: c.upcast_attention,
    })
}

fn check_vae(c: &VaeConfig, path: &Path) -> Result<()> {
    if c.block_out_channels.is_empty() {
        return Err(EngineError::invalid_model(
            path,
            "block_out_channels is empty",
        ));
    }
    if c.act_fn != "silu" || !c.mid_block_add_attention {
        return Err(EngineError::Unsupported(format!(
            "{}: only silu VAEs with mid-block attention are supported",
            path.display()
        )));
    }
    if c.block_out_channels
        .iter()
        .any(|ch| ch % c.norm_num_groups != 0)
    {
        return Err(EngineError::invalid_model(
            path,
            format!(
                "block_out_channels {:?} not divisible by norm_num_groups {}",
                c.block_out_channels, c.norm_num_groups
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_diff;
    use crate::vae_encoder::LatentDistribution;
    use candle_core::Tensor;

    #[test]
    fn half_precision_without_bf16_products_is_flagged_on_the_cpu_only() {
        let cpu = Device::Cpu;
        assert_eq!(slow_precision(DType::F32, &cpu), None);
        // f16 never has a fast CPU path; bf16 has one where the CPU has the products.
        let f16 = slow_precision(DType::F16, &cpu).expect("f16 on a CPU is flagged");
        assert!(f16.contains("F16") && f16.contains("--dtype f32"), "{f16}");
        assert_eq!(
            slow_precision(DType::BF16, &cpu).is_some(),
            !crate::bf16_gemm::available()
        );
    }

    /// Each component against the outputs diffusers recorded for the same inputs
    /// (`fixtures/reference/debug.safetensors`), so a parity failure of the
    /// whole image can be traced to one part.
    #[test]
    fn components_match_diffusers_outputs() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let debug = candle_core::safetensors::load(
            fixtures.join("reference/debug.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        // The default block holds these tiny models' scores whole; 256 bytes
        // splits every attention call into runs of query rows.
        let cases = [("tiny-sd1", "sd1"), ("tiny-sd2", "sd2")];
        for ((model, key), block) in cases
            .into_iter()
            .flat_map(|c| [ScoreBlock::DEFAULT, ScoreBlock(256)].map(|b| (c, b)))
        {
            let dir = fixtures.join("models").join(model);
            let sd = StableDiffusion::load_with(&dir, &Device::Cpu, block, DType::F32).unwrap();
            let get = |name: &str| debug[&format!("{key}.{name}")].clone();

            let embeds = sd
                .text
                .encode(
                    "a photograph of an astronaut riding a horse",
                    Default::default(),
                    &Device::Cpu,
                )
                .unwrap()
                .context;
            assert!(
                max_diff(&embeds, &get("text_embeds")) < 1e-4,
                "{model}: text encoder"
            );

            let t = get("unet_t").to_vec1::<f32>().unwrap()[0] as f64;
            let noise = sd
                .unet
                .forward(&get("unet_in"), t, &get("unet_ctx"), None)
                .unwrap();
            assert!(max_diff(&noise, &get("unet_out")) < 1e-4, "{model}: unet");

            let pixels = sd.vae.decode(&get("vae_in")).unwrap();
            assert!(max_diff(&pixels, &get("vae_out")) < 1e-4, "{model}: vae");
        }
    }

    /// SDXL's parts against `StableDiffusionXLPipeline.encode_prompt` and one
    /// UNet call with added conditioning (`fixtures/reference/sdxl-debug.safetensors`).
    #[test]
    fn sdxl_components_match_diffusers_outputs() {
        use crate::unet::AddedConditioning;
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let debug = candle_core::safetensors::load(
            fixtures.join("reference/sdxl-debug.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        for model in ["tiny-sdxl", "tiny-sdxl-fast"] {
            let dir = fixtures.join("models").join(model);
            let sd = StableDiffusion::load_with(&dir, &Device::Cpu, ScoreBlock(256), DType::F32)
                .unwrap();
            assert_eq!(sd.family, Family::Sdxl);
            let get = |name: &str| debug[&format!("{}.{name}", model.replace('-', "_"))].clone();
            let dev = &Device::Cpu;
            let prompt = sd
                .text
                .encode(
                    "a photograph of an astronaut riding a horse",
                    Default::default(),
                    dev,
                )
                .unwrap();
            let negative = sd
                .text
                .encode_negative("blurry", Default::default(), dev)
                .unwrap();
            let pairs = [
                (prompt.context.clone(), "prompt_embeds"),
                (prompt.pooled.clone().unwrap(), "pooled_prompt_embeds"),
                (negative.context.clone(), "negative_prompt_embeds"),
                (
                    negative.pooled.clone().unwrap(),
                    "negative_pooled_prompt_embeds",
                ),
            ];
            for (ours, key) in pairs {
                let d = max_diff(&ours, &get(key));
                assert!(d < 1e-4, "{model}: {key} differs by {d}");
            }
            // An empty negative prompt is zeros (force_zeros_for_empty_prompt).
            let empty = sd
                .text
                .encode_negative("", Default::default(), dev)
                .unwrap();
            assert_eq!(empty.context.dims(), prompt.context.dims());
            let zero = |t: &Tensor| {
                t.abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            assert_eq!(zero(&empty.context), 0.0);
            assert_eq!(zero(empty.pooled.as_ref().unwrap()), 0.0);

            let t = get("unet_t").to_vec1::<f32>().unwrap()[0] as f64;
            let added = AddedConditioning {
                text_embeds: get("unet_text_embeds"),
                time_ids: get("unet_time_ids"),
            };
            let out = sd
                .unet
                .forward(&get("unet_in"), t, &get("unet_ctx"), Some(&added))
                .unwrap();
            let d = max_diff(&out, &get("unet_out"));
            assert!(d < 1e-4, "{model}: unet differs by {d}");
            // Without the added conditioning the SDXL UNet refuses to run.
            assert!(sd
                .unet
                .forward(&get("unet_in"), t, &get("unet_ctx"), None)
                .is_err());
        }
    }

    /// Tiled decode against diffusers' `vae.enable_tiling()` on a (1, 4, 12, 20)
    /// latent (2 x 4 tiles, partial tiles at the bottom and right edges), and
    /// the untiled decode of the same latent, which must differ from it.
    #[test]
    fn tiled_vae_decode_matches_diffusers_enable_tiling() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let refs = candle_core::safetensors::load(
            fixtures.join("reference/vae-tiling.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        for (model, key) in [("tiny-sd1", "sd1"), ("tiny-sd2", "sd2")] {
            let sd = StableDiffusion::load_with(
                &fixtures.join("models").join(model),
                &Device::Cpu,
                ScoreBlock::DEFAULT,
                DType::F32,
            )
            .unwrap();
            let get = |name: &str| refs[&format!("{key}.{name}")].clone();
            let z = get("vae_tiled_in");
            assert_eq!(z.dims(), &[1, 4, 12, 20]);
            let geometry = sd.vae_tile_geometry().unwrap();
            assert_eq!((geometry.sample, geometry.latent), (64, 8), "{model}");

            let tiled = crate::vae_tiling::decode(&sd.vae, &geometry, &z).unwrap();
            assert_eq!(tiled.dims(), &[1, 3, 96, 160]);
            let tiled_diff = max_diff(&tiled, &get("vae_tiled_out"));
            let untiled = sd.vae.decode(&z).unwrap();
            let untiled_diff = max_diff(&untiled, &get("vae_untiled_out"));
            let apart = max_diff(&get("vae_tiled_out"), &get("vae_untiled_out"));
            eprintln!(
                "{model}: tiled {tiled_diff:e}, untiled {untiled_diff:e}, tiled vs untiled {apart}"
            );
            assert!(tiled_diff < 1e-4, "{model}: tiled vae {tiled_diff}");
            assert!(untiled_diff < 1e-4, "{model}: untiled vae {untiled_diff}");
            assert!(
                apart > 0.05,
                "{model}: tiling should change the pixels ({apart})"
            );

            // A latent of one tile or less is decoded whole, as diffusers' `_decode`.
            let small = z.narrow(2, 0, 8).unwrap().narrow(3, 0, 8).unwrap();
            let whole = sd.vae.decode(&small).unwrap();
            let through = crate::vae_tiling::decode(&sd.vae, &geometry, &small).unwrap();
            assert_eq!(max_diff(&whole, &through), 0.0, "{model}: small latent");
        }
    }

    /// Tiled encode against diffusers' `vae._encode` after `enable_tiling()`
    /// on a 128x96 image (3 x 2 tiles of 64 px, partial at the right and
    /// bottom; `fixtures/make_tiled_encode_fixtures.py`), and the untiled
    /// moments of the same image, which must differ from them.
    #[test]
    fn tiled_vae_encode_matches_diffusers_enable_tiling() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let refs = candle_core::safetensors::load(
            fixtures.join("reference/vae-tiled-encode.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        for model in ["tiny-sd1", "tiny-sdxl"] {
            let sd = StableDiffusion::load_with(
                &fixtures.join("models").join(model),
                &Device::Cpu,
                ScoreBlock::DEFAULT,
                DType::F32,
            )
            .unwrap();
            let get = |name: &str| refs[&format!("{model}.{name}")].clone();
            let encoder = sd.vae_encoder.as_ref().expect("an encoder");
            let geometry = sd.vae_tile_geometry().unwrap();
            let x = get("image");
            assert_eq!(x.dims(), &[1, 3, 96, 128]);

            let tiled = crate::vae_tiling::encode(encoder, &geometry, &x).unwrap();
            let expected = LatentDistribution::from_moments(&get("tiled_moments")).unwrap();
            assert_eq!(tiled.mean.dims(), &[1, 4, 12, 16]);
            let mean = max_diff(&tiled.mean, &expected.mean);
            let std = max_diff(&tiled.std, &expected.std);
            let untiled = max_diff(&encoder.moments(&x).unwrap(), &get("untiled_moments"));
            let apart = max_diff(&get("tiled_moments"), &get("untiled_moments"));
            eprintln!(
                "{model}: tiled mean {mean:e} std {std:e}, untiled {untiled:e}, apart {apart}"
            );
            assert!(mean < 1e-4 && std < 1e-4, "{model}: tiled {mean} {std}");
            assert!(untiled < 1e-4, "{model}: untiled {untiled}");
            assert!(
                apart > 0.05,
                "{model}: tiling should change the moments ({apart})"
            );

            // An image of one tile or less is encoded whole, as diffusers' `_encode`.
            let small = x.narrow(2, 0, 64).unwrap().narrow(3, 0, 64).unwrap();
            let whole = encoder.encode(&small).unwrap();
            let through = crate::vae_tiling::encode(encoder, &geometry, &small).unwrap();
            assert_eq!(
                max_diff(&whole.mean, &through.mean),
                0.0,
                "{model}: small image"
            );
        }
    }
}
