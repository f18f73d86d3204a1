//! Loading a diffusers-format Stable Diffusion folder: every architecture
//! number comes from the folder's own configs, mapped onto our UNet and VAE
//! decoder (built from candle's layers), and refused with a clear error where
//! they go beyond what those modules implement.

use std::path::Path;

use candle_core::{DType, Device};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};

use crate::attention::ScoreBlock;
use crate::config::{PerBlock, SchedulerConfig, UNetConfig, VaeConfig};
use crate::error::{EngineError, Result};
use crate::model_files::{ModelFiles, Part};
use crate::text_encoder::TextEncoder;
use crate::tokenizer::ClipTokenizer;
use crate::unet::UNet;
use crate::vae::{VaeDecoder, VaeShape};
use crate::vae_tiling::TileGeometry;

/// All parts of a loaded Stable Diffusion 1.x/2.x pipeline.
pub struct StableDiffusion {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: TextEncoder,
    pub unet: UNet,
    pub vae: VaeDecoder,
    /// dtype of the text encoder and UNet weights and activations.
    pub dtype: DType,
    /// dtype the VAE decodes in (f32 when `force_upcast` and `dtype` is f16, as diffusers).
    pub vae_dtype: DType,
    pub scheduler: SchedulerConfig,
    pub vae_scaling_factor: f64,
    pub vae_shift_factor: f64,
    pub vae_scale_factor: usize,
    pub latent_channels: usize,
    /// Native latent size (height, width) from the UNet's `sample_size`.
    pub sample_size: (usize, usize),
    /// The VAE config's `sample_size` and `block_out_channels` count: its tile geometry.
    pub vae_sample_size: usize,
    pub vae_blocks: usize,
    pub device: Device,
}

impl StableDiffusion {
    /// Training timesteps of the noise schedule (an upper bound for steps).
    pub fn num_train_timesteps(&self) -> usize {
        self.scheduler.num_train_timesteps.unwrap_or(1000)
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
        let tokenizer: ClipTokenizer = files.tokenizer()?;
        let scheduler: SchedulerConfig = files.scheduler()?;

        let te_cfg = files.text_encoder_config()?;
        let (vb, names, te_file) = files.weights(Part::TextEncoder, dtype, device)?;
        let has_prefix = names.iter().any(|n| n.starts_with("text_model."));
        let text_encoder = TextEncoder::new(vb, has_prefix, &te_cfg)
            .map_err(|e| EngineError::invalid_model(&te_file, crate::error::describe_candle(&e)))?;

        if tokenizer.max_length() > text_encoder.max_positions() {
            return Err(EngineError::invalid_model(
                files.config_path(Part::TextEncoder),
                format!(
                    "max_position_embeddings {} is shorter than the tokenizer's model_max_length {}",
                    text_encoder.max_positions(),
                    tokenizer.max_length()
                ),
            ));
        }

        let unet_cfg: UNetConfig = files.unet_config()?;
        let candle_unet_cfg = unet_config(&unet_cfg, &files.config_path(Part::Unet))?;
        if te_cfg.hidden_size != candle_unet_cfg.cross_attention_dim {
            return Err(EngineError::invalid_model(
                files.config_path(Part::Unet),
                format!(
                    "cross_attention_dim {} does not match the text encoder's hidden_size {}",
                    candle_unet_cfg.cross_attention_dim, te_cfg.hidden_size
                ),
            ));
        }
        let (vb, _, unet_file) = files.weights(Part::Unet, dtype, device)?;
        let unet = UNet::new(
            vb,
            unet_cfg.in_channels,
            unet_cfg.out_channels,
            &candle_unet_cfg,
            block,
        )
        .map_err(|e| EngineError::invalid_model(&unet_file, crate::error::describe_candle(&e)))?;

        let vae_cfg: VaeConfig = files.vae_config()?;
        check_vae(&vae_cfg, &files.config_path(Part::Vae))?;
        if vae_cfg.latent_channels != unet_cfg.in_channels {
            return Err(EngineError::invalid_model(
                files.config_path(Part::Vae),
                format!(
                    "latent_channels {} does not match the UNet's in_channels {}",
                    vae_cfg.latent_channels, unet_cfg.in_channels
                ),
            ));
        }
        let vae_dtype = vae_dtype(dtype, &vae_cfg);
        let (vb, _, vae_file) = files.weights(Part::Vae, vae_dtype, device)?;
        let vae_shape = VaeShape {
            latent_channels: vae_cfg.latent_channels,
            out_channels: vae_cfg.out_channels,
            block_out_channels: vae_cfg.block_out_channels.clone(),
            layers_per_block: vae_cfg.layers_per_block,
            norm_num_groups: vae_cfg.norm_num_groups,
            use_post_quant_conv: vae_cfg.use_post_quant_conv,
        };
        let vae = VaeDecoder::new(vb, &vae_shape, block).map_err(|e| {
            EngineError::invalid_model(&vae_file, crate::error::describe_candle(&e))
        })?;

        let vae_scale_factor = 1usize << (vae_cfg.block_out_channels.len().saturating_sub(1));
        let sample_size = match &unet_cfg.sample_size {
            Some(PerBlock::One(s)) => (*s, *s),
            Some(PerBlock::Each(v)) if v.len() == 2 => (v[0], v[1]),
            _ => (64, 64),
        };
        Ok(Self {
            tokenizer,
            text_encoder,
            unet,
            vae,
            dtype,
            vae_dtype,
            scheduler,
            vae_scaling_factor: vae_cfg.scaling_factor,
            vae_shift_factor: vae_cfg.shift_factor.unwrap_or(0.0),
            vae_scale_factor,
            latent_channels: vae_cfg.latent_channels,
            sample_size,
            vae_sample_size: vae_cfg.sample_size(),
            vae_blocks: vae_cfg.block_out_channels.len(),
            device: device.clone(),
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

/// Maps diffusers' UNet config onto candle's, refusing what candle's UNet lacks.
fn unet_config(c: &UNetConfig, path: &Path) -> Result<UNet2DConditionModelConfig> {
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
    for (name, value) in [
        ("addition_embed_type", &c.addition_embed_type),
        ("class_embed_type", &c.class_embed_type),
    ] {
        if let Some(v) = value {
            return Err(unsupported(format!(
                "{name} {v:?} (SDXL-style conditioning) is not supported yet"
            )));
        }
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
    Ok(UNet2DConditionModelConfig {
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
    use candle_core::Tensor;

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

            let ids = sd
                .tokenizer
                .encode("a photograph of an astronaut riding a horse");
            let ids = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
            let embeds = sd.text_encoder.forward(&ids).unwrap();
            assert!(
                max_diff(&embeds, &get("text_embeds")) < 1e-4,
                "{model}: text encoder"
            );

            let t = get("unet_t").to_vec1::<f32>().unwrap()[0] as f64;
            let noise = sd
                .unet
                .forward(&get("unet_in"), t, &get("unet_ctx"))
                .unwrap();
            assert!(max_diff(&noise, &get("unet_out")) < 1e-4, "{model}: unet");

            let pixels = sd.vae.decode(&get("vae_in")).unwrap();
            assert!(max_diff(&pixels, &get("vae_out")) < 1e-4, "{model}: vae");
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
}
