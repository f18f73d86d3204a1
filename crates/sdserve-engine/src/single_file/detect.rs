//! What a single file is, from its tensor names and shapes alone (no data is
//! read): the family from the text encoder's keys, and, when no original
//! config lies next to it, the standard architecture its shapes match.
//!
//! * SD 1.x: `cond_stage_model.transformer.*` (transformers' CLIP, ViT-L/14);
//!   the standard architecture is SD 1.5's `v1-inference.yaml`.
//! * SD 2.x: `cond_stage_model.model.*` (OpenCLIP ViT-H/14); shapes are the
//!   same for 512-base (epsilon) and 768-v (v-prediction), so the shapes
//!   cannot tell them apart. As diffusers' `from_single_file` does (its
//!   `infer_diffusers_model_type` maps every SD 2.x file to
//!   `stabilityai/stable-diffusion-2-1`'s configs), a file without a yaml is
//!   taken as 768-v: v-prediction, 768 px. diffusers' older loader looked at
//!   `global_step == 875000` (2.0-base), which safetensors files do not carry;
//!   A1111 runs the UNet once on a test input. A 512-base file needs its
//!   `v2-inference.yaml` next to it (`parameterization` absent = epsilon).
//! * SDXL (`conditioner.embedders.*`), inpainting (9 input channels) and
//!   other layouts are refused by name.

use std::collections::HashMap;

use super::keys::{HF_CLIP_PREFIX, OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX};
use super::yaml::{DdConfig, FirstStageParams, UNetParams};
use crate::config::PerBlock;

/// Tensor name -> shape, from the safetensors header.
pub type Shapes = HashMap<String, Vec<usize>>;

/// The model family, from the text encoder's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// HF CLIP text encoder; `text_model` when its keys keep that level.
    Sd1 { text_model: bool },
    /// OpenCLIP text encoder.
    Sd2,
}

/// Why a file cannot be loaded: not a model we know, or a known one we do not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Invalid(String),
    Unsupported(String),
}

/// The family of a checkpoint with these tensors.
pub fn family(shapes: &Shapes) -> Result<Family, Refusal> {
    if shapes
        .keys()
        .any(|k| k.starts_with("conditioner.embedders."))
    {
        return Err(Refusal::Unsupported(
            "SDXL single-file checkpoints (conditioner.embedders.*) are not supported yet; use the diffusers folder".into(),
        ));
    }
    if !shapes.keys().any(|k| k.starts_with(UNET_PREFIX)) {
        return Err(Refusal::Invalid(format!(
            "no {UNET_PREFIX}* tensors: not a Stable Diffusion checkpoint in the original (LDM) layout"
        )));
    }
    if !shapes.keys().any(|k| k.starts_with(VAE_PREFIX)) {
        return Err(Refusal::Invalid(format!(
            "no {VAE_PREFIX}* tensors: the checkpoint has no VAE"
        )));
    }
    let token = |p: &str| shapes.contains_key(&format!("{p}embeddings.token_embedding.weight"));
    if token(&format!("{HF_CLIP_PREFIX}text_model.")) {
        Ok(Family::Sd1 { text_model: true })
    } else if token(HF_CLIP_PREFIX) {
        Ok(Family::Sd1 { text_model: false })
    } else if shapes.contains_key(&format!("{OPEN_CLIP_PREFIX}token_embedding.weight")) {
        Ok(Family::Sd2)
    } else {
        Err(Refusal::Invalid(format!(
            "no text encoder: expected {HF_CLIP_PREFIX}text_model.embeddings.token_embedding.weight (SD 1.x) or {OPEN_CLIP_PREFIX}token_embedding.weight (SD 2.x)"
        )))
    }
}

/// A standard architecture: the UNet, VAE and latent size of a family's
/// reference yaml, plus its prediction type.
#[derive(Debug, Clone)]
pub struct Standard {
    pub name: &'static str,
    pub unet: UNetParams,
    pub vae: FirstStageParams,
    /// Latent size (`model.params.image_size`).
    pub image_size: usize,
    /// `eps` or `v`.
    pub parameterization: &'static str,
}

/// The standard architecture of `family` whose shapes these tensors have; an
/// error names the first tensor that differs.
pub fn standard(shapes: &Shapes, family: Family) -> Result<Standard, Refusal> {
    let (context, linear) = match family {
        Family::Sd1 { .. } => (768, false),
        Family::Sd2 => (1024, true),
    };
    let u = |k: &str| format!("{UNET_PREFIX}{k}");
    let proj_in = if linear {
        vec![320, 320]
    } else {
        vec![320, 320, 1, 1]
    };
    let expected: [(String, Vec<usize>); 7] = [
        (u("input_blocks.0.0.weight"), vec![320, 4, 3, 3]),
        (u("input_blocks.1.1.proj_in.weight"), proj_in),
        (
            u("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"),
            vec![320, context],
        ),
        (
            u("input_blocks.11.0.out_layers.3.weight"),
            vec![1280, 1280, 3, 3],
        ),
        (
            u("output_blocks.11.1.proj_out.weight"),
            if linear {
                vec![320, 320]
            } else {
                vec![320, 320, 1, 1]
            },
        ),
        (
            format!("{VAE_PREFIX}decoder.conv_in.weight"),
            vec![512, 4, 3, 3],
        ),
        (
            format!("{VAE_PREFIX}post_quant_conv.weight"),
            vec![4, 4, 1, 1],
        ),
    ];
    if let Some(input) = shapes.get(&u("input_blocks.0.0.weight")) {
        if input.get(1).is_some_and(|c| *c != 4) {
            return Err(Refusal::Unsupported(format!(
                "a UNet with {} input channels (inpainting or other conditioned models) is not supported",
                input[1]
            )));
        }
    }
    for (key, shape) in &expected {
        let found = shapes.get(key);
        if found != Some(shape) {
            let found = found.map_or("absent".to_string(), |s| format!("{s:?}"));
            return Err(Refusal::Invalid(format!(
                "not a standard {} architecture ({key} is {found}, the standard shape is {shape:?}), so it cannot be detected from its shapes",
                if linear { "SD 2.x" } else { "SD 1.x" }
            )));
        }
    }
    // 4 levels of 2 resnets: input blocks 3, 6 and 9 are the downsamplers.
    let resnets = [1, 2, 4, 5, 7, 8, 10, 11]
        .iter()
        .all(|i| shapes.contains_key(&u(&format!("input_blocks.{i}.0.in_layers.0.weight"))));
    if !resnets || shapes.keys().any(|k| k.starts_with(&u("input_blocks.12."))) {
        return Err(Refusal::Invalid(
            "not a standard architecture: input_blocks are not 4 levels of 2 resnets".into(),
        ));
    }
    let unet = UNetParams {
        in_channels: 4,
        out_channels: 4,
        model_channels: 320,
        attention_resolutions: vec![4, 2, 1],
        num_res_blocks: PerBlock::One(2),
        channel_mult: vec![1, 2, 4, 4],
        num_heads: if linear { -1 } else { 8 },
        num_head_channels: if linear { 64 } else { -1 },
        use_linear_in_transformer: linear,
        transformer_depth: PerBlock::One(1),
        context_dim: Some(PerBlock::One(context)),
        num_classes: None,
        disable_self_attentions: None,
    };
    let vae = FirstStageParams {
        embed_dim: 4,
        ddconfig: DdConfig {
            z_channels: 4,
            in_channels: 3,
            out_ch: 3,
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
        },
    };
    Ok(match family {
        Family::Sd1 { .. } => Standard {
            name: "SD 1.x (v1-inference.yaml)",
            unet,
            vae,
            image_size: 64,
            parameterization: "eps",
        },
        Family::Sd2 => Standard {
            name: "SD 2.x 768-v (v2-inference-v.yaml)",
            unet,
            vae,
            image_size: 96,
            parameterization: "v",
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The UNet, VAE and text-encoder tensors that the detection reads, with
    /// the shapes of the real checkpoints (v1-5-pruned-emaonly, v2-1_768-ema-pruned).
    pub fn standard_shapes(family: Family) -> Shapes {
        let sd2 = family == Family::Sd2;
        let ctx = if sd2 { 1024 } else { 768 };
        let proj = if sd2 {
            vec![320, 320]
        } else {
            vec![320, 320, 1, 1]
        };
        let mut s: Shapes = HashMap::new();
        let mut put = |k: String, v: Vec<usize>| {
            s.insert(k, v);
        };
        put(
            format!("{UNET_PREFIX}input_blocks.0.0.weight"),
            vec![320, 4, 3, 3],
        );
        let level = [320, 640, 1280, 1280];
        for i in [1, 2, 4, 5, 7, 8, 10, 11] {
            let c = level[(i - 1) / 3];
            put(
                format!("{UNET_PREFIX}input_blocks.{i}.0.in_layers.0.weight"),
                vec![c],
            );
            put(
                format!("{UNET_PREFIX}input_blocks.{i}.0.out_layers.3.weight"),
                vec![c, c, 3, 3],
            );
        }
        put(
            format!("{UNET_PREFIX}input_blocks.1.1.proj_in.weight"),
            proj.clone(),
        );
        put(
            format!("{UNET_PREFIX}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"),
            vec![320, ctx],
        );
        put(
            format!("{UNET_PREFIX}output_blocks.11.1.proj_out.weight"),
            proj,
        );
        put(
            format!("{VAE_PREFIX}decoder.conv_in.weight"),
            vec![512, 4, 3, 3],
        );
        put(
            format!("{VAE_PREFIX}post_quant_conv.weight"),
            vec![4, 4, 1, 1],
        );
        if sd2 {
            put(
                format!("{OPEN_CLIP_PREFIX}token_embedding.weight"),
                vec![49408, 1024],
            );
            put(
                format!("{OPEN_CLIP_PREFIX}positional_embedding"),
                vec![77, 1024],
            );
            for i in 0..24 {
                put(
                    format!("{OPEN_CLIP_PREFIX}transformer.resblocks.{i}.mlp.c_fc.weight"),
                    vec![4096, 1024],
                );
            }
        } else {
            let p = format!("{HF_CLIP_PREFIX}text_model.");
            put(
                format!("{p}embeddings.token_embedding.weight"),
                vec![49408, 768],
            );
            put(
                format!("{p}embeddings.position_embedding.weight"),
                vec![77, 768],
            );
            for i in 0..12 {
                put(
                    format!("{p}encoder.layers.{i}.mlp.fc1.weight"),
                    vec![3072, 768],
                );
            }
        }
        s
    }

    #[test]
    fn standard_architectures_are_detected() {
        for (family, name, pred, size) in [
            (Family::Sd1 { text_model: true }, "SD 1.x", "eps", 64),
            (Family::Sd2, "SD 2.x 768-v", "v", 96),
        ] {
            let shapes = standard_shapes(family);
            assert_eq!(super::family(&shapes), Ok(family));
            let s = standard(&shapes, family).unwrap();
            assert!(s.name.starts_with(name), "{}", s.name);
            assert_eq!((s.parameterization, s.image_size), (pred, size));
            assert_eq!(s.unet.use_linear_in_transformer, family == Family::Sd2);
        }
    }

    #[test]
    fn other_shapes_are_refused_by_name() {
        let mut shapes = standard_shapes(Family::Sd1 { text_model: true });
        shapes.insert(
            format!("{UNET_PREFIX}input_blocks.0.0.weight"),
            vec![320, 9, 3, 3],
        );
        let err = standard(&shapes, Family::Sd1 { text_model: true }).unwrap_err();
        assert!(
            matches!(&err, Refusal::Unsupported(m) if m.contains("9 input channels")),
            "{err:?}"
        );

        let mut shapes = standard_shapes(Family::Sd1 { text_model: true });
        let key = format!("{UNET_PREFIX}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight");
        shapes.insert(key.clone(), vec![320, 1024]);
        let err = standard(&shapes, Family::Sd1 { text_model: true }).unwrap_err();
        assert!(
            matches!(&err, Refusal::Invalid(m) if m.contains(&key) && m.contains("[320, 1024]")),
            "{err:?}"
        );

        let mut shapes = standard_shapes(Family::Sd2);
        shapes.insert(
            "conditioner.embedders.1.model.ln_final.weight".into(),
            vec![1280],
        );
        assert!(matches!(family(&shapes), Err(Refusal::Unsupported(m)) if m.contains("SDXL")));

        let shapes: Shapes = [
            (format!("{UNET_PREFIX}out.0.weight"), vec![320]),
            (format!("{VAE_PREFIX}x"), vec![1]),
        ]
        .into_iter()
        .collect();
        assert!(
            matches!(family(&shapes), Err(Refusal::Invalid(m)) if m.contains("no text encoder"))
        );
    }
}
