//! A tiny VAE decoder (TAESD-class: diffusers' `AutoencoderTiny`, e.g.
//! `madebyollin/taesd` or `taesdxl`) for `--fast-decode`: plain 3×3
//! convolutions and ReLUs at 64 channels instead of the SD VAE's group-normed
//! resnets at up to 512, so decoding costs a small fraction of the full VAE's
//! time. Its images approximate the full VAE's (it was distilled from it);
//! they are diffusers' own with the same decoder swapped in
//! (`pipe.vae = AutoencoderTiny...`), which the parity tests check.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn as nn;
use serde::Deserialize;

use crate::error::{describe_candle, EngineError, Result};
use crate::layers::Conv2d;

/// `config.json` of an `AutoencoderTiny` (defaults: diffusers' own).
#[derive(Debug, Clone, Deserialize)]
pub struct TinyVaeConfig {
    #[serde(default = "default_out_channels")]
    pub out_channels: usize,
    #[serde(default = "default_decoder_channels")]
    pub decoder_block_out_channels: Vec<usize>,
    #[serde(default = "default_decoder_blocks")]
    pub num_decoder_blocks: Vec<usize>,
    #[serde(default = "default_latent_channels")]
    pub latent_channels: usize,
    #[serde(default = "default_act_fn")]
    pub act_fn: String,
    #[serde(default = "default_upsample_fn")]
    pub upsample_fn: String,
    #[serde(default = "default_upsampling_factor")]
    pub upsampling_scaling_factor: usize,
    /// The pipelines decode `latents / scaling_factor` (TAESD's is 1.0).
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
}

fn default_out_channels() -> usize {
    3
}
fn default_decoder_channels() -> Vec<usize> {
    vec![64; 4]
}
fn default_decoder_blocks() -> Vec<usize> {
    vec![3, 3, 3, 1]
}
fn default_latent_channels() -> usize {
    4
}
fn default_act_fn() -> String {
    "relu".into()
}
fn default_upsample_fn() -> String {
    "nearest".into()
}
fn default_upsampling_factor() -> usize {
    2
}
fn default_scaling_factor() -> f64 {
    1.0
}

/// Largest per-stage upsampling factor accepted (TAESD's is 2).
const MAX_UPSAMPLING: usize = 8;

/// `torch.nn` activations `AutoencoderTiny` may be configured with that are supported here.
#[derive(Debug, Clone, Copy)]
enum Activation {
    Relu,
    Silu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "relu" => Some(Self::Relu),
            "silu" | "swish" => Some(Self::Silu),
            _ => None,
        }
    }

    fn apply(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Relu => xs.relu(),
            Self::Silu => nn::ops::silu(xs),
        }
    }
}

/// `AutoencoderTinyBlock`: three 3×3 convolutions, the input added back
/// (through a 1×1 convolution when the widths differ), ReLU.
struct Block {
    convs: [Conv2d; 3],
    skip: Option<Conv2d>,
    act: Activation,
}

impl Block {
    fn new(vb: nn::VarBuilder, channels: usize, act: Activation) -> candle_core::Result<Self> {
        let conv = |i: usize| Conv2d::new(vb.pp("conv").pp(i), (channels, channels), 3, padded());
        let skip = if vb.contains_tensor("skip.weight") {
            Some(Conv2d::without_bias(
                vb.pp("skip"),
                (channels, channels),
                1,
                nn::Conv2dConfig::default(),
            )?)
        } else {
            None
        };
        Ok(Self {
            convs: [conv(0)?, conv(2)?, conv(4)?],
            skip,
            act,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.act.apply(&self.convs[0].forward(xs)?)?;
        let h = self.act.apply(&self.convs[1].forward(&h)?)?;
        let h = self.convs[2].forward(&h)?;
        let skip = match &self.skip {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        (h + skip)?.relu()
    }
}

/// One entry of `decoder.layers` (a `torch.nn.Sequential`: its indices count
/// the parameter-free activations and upsamplings too).
enum Layer {
    Conv(Conv2d),
    Act(Activation),
    Block(Block),
    Upsample(usize),
}

fn padded() -> nn::Conv2dConfig {
    nn::Conv2dConfig {
        padding: 1,
        ..Default::default()
    }
}

/// The decoder of an `AutoencoderTiny`.
pub struct TinyVaeDecoder {
    layers: Vec<Layer>,
    /// What the pipelines divide the sampler's latents by before decoding.
    pub scaling_factor: f64,
    pub latent_channels: usize,
    /// Output pixels per latent cell along each side.
    pub upscale: usize,
    /// The folder's name, for the infotext.
    pub name: String,
}

impl TinyVaeDecoder {
    /// Loads `dir` (`config.json` + `diffusion_pytorch_model.safetensors`, as
    /// diffusers saves an `AutoencoderTiny`), weights in `dtype`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (config, files) = folder(dir)?;
        let act = check(&config, &dir.join("config.json"))?;
        let (vb, _) = crate::loader::var_builder(&files, dtype, device)?;
        let first: PathBuf = files.first().cloned().unwrap_or_else(|| dir.to_path_buf());
        let layers = build(vb.pp("decoder").pp("layers"), &config, act)
            .map_err(|e| EngineError::invalid_model(&first, describe_candle(&e)))?;
        let stages = config.num_decoder_blocks.len() as u32;
        Ok(Self {
            layers,
            scaling_factor: config.scaling_factor,
            latent_channels: config.latent_channels,
            upscale: config.upsampling_scaling_factor.pow(stages - 1),
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "tiny VAE".into()),
        })
    }

    /// `(n, latent_channels, h, w)` latents in the VAE's latent space (the
    /// sampler's divided by [`Self::scaling_factor`]) to pixels in [-1, 1]
    /// (unclamped), as `AutoencoderTiny.decode`.
    pub fn decode(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        // DecoderTiny's soft clamp of the latents to (-3, 3).
        let mut x = ((latents / 3.0)?.tanh()? * 3.0)?;
        for layer in &self.layers {
            x = match layer {
                Layer::Conv(conv) => conv.forward(&x)?,
                Layer::Act(act) => act.apply(&x)?,
                Layer::Block(block) => block.forward(&x)?,
                Layer::Upsample(factor) => {
                    let (_, _, h, w) = x.dims4()?;
                    crate::upsample::upsample_nearest(&x, h * factor, w * factor)?
                }
            };
        }
        (x * 2.0)? - 1.0
    }
}

/// A tiny VAE folder's config and weight files (the memory plan reads them
/// before the weights load).
pub fn folder(dir: &Path) -> Result<(TinyVaeConfig, Vec<PathBuf>)> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(EngineError::invalid_model(
            dir,
            "not a tiny VAE folder: no config.json (expected diffusers' AutoencoderTiny \
             layout, e.g. a download of madebyollin/taesd)",
        ));
    }
    let config: TinyVaeConfig = crate::config::read_json(&config_path)?;
    let files = crate::loader::component_weights(dir, &["diffusion_pytorch_model"])?;
    Ok((config, files))
}

/// The config's shape is one this decoder builds; its activation.
fn check(c: &TinyVaeConfig, path: &Path) -> Result<Activation> {
    let bad = |m: String| Err(EngineError::invalid_model(path, m));
    let stages = c.num_decoder_blocks.len();
    if stages == 0 || stages != c.decoder_block_out_channels.len() {
        return bad(format!(
            "num_decoder_blocks ({stages} stages) and decoder_block_out_channels ({}) must be \
             non-empty and of one length",
            c.decoder_block_out_channels.len()
        ));
    }
    if c.decoder_block_out_channels.contains(&0) || c.latent_channels == 0 {
        return bad("channel counts must be positive".into());
    }
    // DecoderTiny's blocks keep their width, so every stage must share it.
    if c.decoder_block_out_channels
        .windows(2)
        .any(|w| w[0] != w[1])
    {
        return bad(format!(
            "decoder_block_out_channels {:?} differ between stages (AutoencoderTiny's decoder \
             blocks keep one width)",
            c.decoder_block_out_channels
        ));
    }
    if c.upsample_fn != "nearest" {
        return bad(format!(
            "upsample_fn {:?} is not supported (only \"nearest\")",
            c.upsample_fn
        ));
    }
    if !(1..=MAX_UPSAMPLING).contains(&c.upsampling_scaling_factor) || stages > 8 {
        return bad(format!(
            "upsampling_scaling_factor {} over {stages} stages is out of range (1 to \
             {MAX_UPSAMPLING}, at most 8 stages)",
            c.upsampling_scaling_factor
        ));
    }
    if !(c.scaling_factor.is_finite() && c.scaling_factor > 0.0) {
        return bad(format!(
            "scaling_factor {} must be positive",
            c.scaling_factor
        ));
    }
    match Activation::parse(&c.act_fn) {
        Some(act) => Ok(act),
        None => bad(format!(
            "act_fn {:?} is not supported (relu, silu or swish)",
            c.act_fn
        )),
    }
}

/// `DecoderTiny.layers`: conv, act, then per stage its blocks, an upsampling
/// (all but the last stage) and a conv (with a bias only in the last stage,
/// which outputs the image's channels).
fn build(
    vb: nn::VarBuilder,
    c: &TinyVaeConfig,
    act: Activation,
) -> candle_core::Result<Vec<Layer>> {
    let width = c.decoder_block_out_channels[0];
    let mut layers = vec![
        Layer::Conv(Conv2d::new(
            vb.pp(0),
            (c.latent_channels, width),
            3,
            padded(),
        )?),
        Layer::Act(act),
    ];
    let stages = c.num_decoder_blocks.len();
    for (stage, &blocks) in c.num_decoder_blocks.iter().enumerate() {
        for _ in 0..blocks {
            layers.push(Layer::Block(Block::new(vb.pp(layers.len()), width, act)?));
        }
        let last = stage + 1 == stages;
        if !last {
            layers.push(Layer::Upsample(c.upsampling_scaling_factor));
        }
        let conv = vb.pp(layers.len());
        layers.push(Layer::Conv(if last {
            Conv2d::new(conv, (width, c.out_channels), 3, padded())?
        } else {
            Conv2d::without_bias(conv, (width, width), 3, padded())?
        }));
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> TinyVaeConfig {
        serde_json::from_str(json).expect("config parses")
    }

    /// The decoder against `AutoencoderTiny.decode` on the fixture's latents
    /// (`fixtures/make_tiny_vae_fixtures.py`).
    #[test]
    fn decodes_as_diffusers_autoencoder_tiny() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let dev = Device::Cpu;
        let decoder = TinyVaeDecoder::load(&fixtures.join("models/tiny-taesd"), DType::F32, &dev)
            .expect("tiny VAE loads");
        assert_eq!((decoder.upscale, decoder.latent_channels), (8, 4));
        assert_eq!(decoder.name, "tiny-taesd");
        let reference =
            candle_core::safetensors::load(fixtures.join("reference/tiny-vae.safetensors"), &dev)
                .expect("reference tensors");
        let got = decoder.decode(&reference["latents"]).expect("decodes");
        let want = &reference["image"];
        assert_eq!(got.dims(), &[1, 3, 48, 80]);
        let diff = crate::test_util::max_diff(&got, want);
        assert!(diff < 1e-4, "max diff {diff}");
    }

    #[test]
    fn taesd_defaults_upscale_by_eight_with_relu() {
        let c = config("{}");
        assert!(matches!(check(&c, Path::new("x")), Ok(Activation::Relu)));
        assert_eq!(c.upsampling_scaling_factor.pow(3), 8);
        assert_eq!(c.scaling_factor, 1.0);
    }

    #[test]
    fn unsupported_shapes_are_refused_by_name() {
        for (json, says) in [
            (r#"{"act_fn": "mish"}"#, "act_fn \"mish\""),
            (r#"{"upsample_fn": "bilinear"}"#, "upsample_fn \"bilinear\""),
            (r#"{"num_decoder_blocks": [1, 1]}"#, "of one length"),
            (
                r#"{"decoder_block_out_channels": [64, 32, 64, 64]}"#,
                "differ between stages",
            ),
            (r#"{"upsampling_scaling_factor": 1000}"#, "out of range"),
            (r#"{"scaling_factor": 0}"#, "must be positive"),
        ] {
            let err = check(&config(json), Path::new("x")).expect_err(json);
            assert!(err.to_string().contains(says), "{json}: {err}");
        }
    }
}
