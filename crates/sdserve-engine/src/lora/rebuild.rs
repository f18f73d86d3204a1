//! A model with a LoRA set applied: the UNet and the text encoders the set
//! touches are built again (cheap: no weight is read or copied) from the
//! base weights with the patched tensors laid over them; every other module,
//! the VAE included, is the base model's own.

use std::collections::HashMap;
use std::sync::Arc;

use candle_nn::VarBuilder;

use super::file::LoraLayer;
use super::names::Component;
use super::patch::{BaseWeights, Overlay, PartWeights, Recorder};
use crate::attention::ScoreBlock;
use crate::conditioning::{PromptEncoder, TextConditioner, TextRecipe};
use crate::error::{describe_candle, EngineError, Result};
use crate::model::StableDiffusion;
use crate::text_encoder::TextEncoder;
use crate::unet::{UNet, UNetShape};

/// How the UNet was built.
pub struct UnetRecipe {
    pub in_channels: usize,
    pub out_channels: usize,
    pub shape: UNetShape,
    pub block: ScoreBlock,
}

impl UnetRecipe {
    pub fn build(&self, vb: VarBuilder) -> candle_core::Result<UNet> {
        UNet::new(
            vb,
            self.in_channels,
            self.out_channels,
            &self.shape,
            self.block,
        )
    }
}

/// Everything needed to build a LoRA set's modules.
pub struct Rebuild {
    pub base: BaseWeights,
    unet: UnetRecipe,
    /// The first and (SDXL) second text encoder's configs.
    text: Vec<(crate::config::TextEncoderConfig, bool)>,
}

impl Rebuild {
    /// Takes what the recorders collected while the model was built.
    pub fn new(unet: UnetRecipe, unet_weights: Recorder, text: Vec<TextRecipe>) -> Self {
        let mut parts = text.into_iter();
        let mut next = |component| {
            parts.next().map(|r: TextRecipe| {
                (
                    PartWeights::new(component, r.weights.take()),
                    (r.cfg, r.has_prefix),
                )
            })
        };
        let (te1, cfg1) = next(Component::TextEncoder).unzip();
        let (te2, cfg2) = next(Component::TextEncoder2).unzip();
        let base = BaseWeights {
            unet: PartWeights::new(Component::Unet, unet_weights.take()),
            text_encoder: te1
                .unwrap_or_else(|| PartWeights::new(Component::TextEncoder, HashMap::new())),
            text_encoder_2: te2,
        };
        Self {
            base,
            unet,
            text: cfg1.into_iter().chain(cfg2).collect(),
        }
    }

    /// Bytes of the weights a set of layers replaces (what its patched copy costs).
    pub fn patched_bytes(&self, layers: &[(String, LoraLayer, f64)]) -> u64 {
        let mut seen = std::collections::HashSet::new();
        layers
            .iter()
            .filter(|(_, l, _)| seen.insert((l.component, l.target.as_str())))
            .filter_map(|(_, l, _)| self.base.part(l.component)?.weights.get(&l.target))
            .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
            .sum()
    }
}

/// `model` with `layers` (LoRA name, layer, multiplier) applied.
pub fn apply(
    model: &StableDiffusion,
    layers: &[(String, LoraLayer, f64)],
) -> Result<StableDiffusion> {
    let rebuild = &model.lora_base;
    let mut patched = rebuild.base.patch(layers)?;
    let mut out = model.clone();
    let failed = |e: candle_core::Error| {
        EngineError::Unsupported(format!(
            "building the LoRA-patched model: {}",
            describe_candle(&e)
        ))
    };
    if let Some(weights) = patched.remove(&Component::Unet) {
        let vb = Overlay::var_builder(
            rebuild.base.unet.weights.clone(),
            weights,
            model.dtype,
            &model.device,
        );
        out.unet = Arc::new(rebuild.unet.build(vb).map_err(failed)?);
    }
    let mut encoder =
        |component: Component, index: usize, current: &PromptEncoder| -> Result<PromptEncoder> {
            let (Some(weights), Some(part), Some((cfg, prefix))) = (
                patched.remove(&component),
                rebuild.base.part(component),
                rebuild.text.get(index),
            ) else {
                return Ok(current.clone());
            };
            let vb =
                Overlay::var_builder(part.weights.clone(), weights, model.dtype, &model.device);
            let encoder = TextEncoder::new(vb, *prefix, cfg).map_err(failed)?;
            Ok(current.with_encoder(Arc::new(encoder)))
        };
    out.text = match &model.text {
        TextConditioner::Single(first) => {
            TextConditioner::Single(Box::new(encoder(Component::TextEncoder, 0, first)?))
        }
        TextConditioner::Dual {
            first,
            second,
            force_zeros_for_empty_prompt,
        } => TextConditioner::Dual {
            first: Box::new(encoder(Component::TextEncoder, 0, first)?),
            second: Box::new(encoder(Component::TextEncoder2, 1, second)?),
            force_zeros_for_empty_prompt: *force_zeros_for_empty_prompt,
        },
    };
    Ok(out)
}
