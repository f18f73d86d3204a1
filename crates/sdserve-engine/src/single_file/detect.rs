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
//! * SDXL base: `conditioner.embedders.0.transformer.*` (CLIP ViT-L) and
//!   `conditioner.embedders.1.model.*` (OpenCLIP ViT-bigG); the standard
//!   architecture is `sd_xl_base.yaml` (epsilon, 1024 px).
//! * The SDXL refiner (only an OpenCLIP embedder), inpainting (9 input
//!   channels) and other layouts are refused by name.

use std::collections::HashMap;

use super::keys::{
    HF_CLIP_PREFIX, OPEN_CLIP_PREFIX, SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX, UNET_PREFIX,
    VAE_PREFIX,
};
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
    /// SDXL base: `conditioner.embedders.0` (CLIP ViT-L) and `.1` (OpenCLIP bigG).
    Sdxl,
}

/// Why a file cannot be loaded: not a model we know, or a known one we do not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Invalid(String),
    Unsupported(String),
}

/// The family of a checkpoint with these tensors.
pub fn family(shapes: &Shapes) -> Result<Family, Refusal> {
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
    if shapes
        .keys()
        .any(|k| k.starts_with("conditioner.embedders."))
    {
        let clip = format!("{SDXL_CLIP_PREFIX}text_model.embeddings.token_embedding.weight");
        let open_clip = format!("{SDXL_OPEN_CLIP_PREFIX}token_embedding.weight");
        if shapes.contains_key(&clip) && shapes.contains_key(&open_clip) {
            return Ok(Family::Sdxl);
        }
        return Err(Refusal::Unsupported(format!(
            "SGM conditioners other than SDXL base's ({clip} and {open_clip}), e.g. the SDXL refiner's, are not supported"
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

/// The first of `expected` whose shape differs, as a refusal naming it.
fn differs(
    shapes: &Shapes,
    expected: &[(String, Vec<usize>)],
    family: &str,
) -> Result<(), Refusal> {
    for (key, shape) in expected {
        let found = shapes.get(key);
        if found != Some(shape) {
            let found = found.map_or("absent".to_string(), |s| format!("{s:?}"));
            return Err(Refusal::Invalid(format!(
                "not a standard {family} architecture ({key} is {found}, the standard shape is {shape:?}), so it cannot be detected from its shapes"
            )));
        }
    }
    Ok(())
}

/// The SD/SDXL VAE (`ddconfig` of every reference yaml).
fn standard_vae() -> FirstStageParams {
    FirstStageParams {
        embed_dim: 4,
        ddconfig: DdConfig {
            z_channels: 4,
            in_channels: 3,
            out_ch: 3,
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
        },
    }
}

/// SDXL base (`sd_xl_base.yaml`'s `network_config`): 3 levels (320, 640, 1280),
/// transformer depths 2 and 10, context 2048, 2816-wide vector conditioning.
fn standard_sdxl(shapes: &Shapes) -> Result<Standard, Refusal> {
    let u = |k: &str| format!("{UNET_PREFIX}{k}");
    let expected = [
        (u("input_blocks.0.0.weight"), vec![320, 4, 3, 3]),
        (u("label_emb.0.0.weight"), vec![1280, 2816]),
        (u("input_blocks.4.1.proj_in.weight"), vec![640, 640]),
        (
            u("input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight"),
            vec![640, 2048],
        ),
        (
            u("input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight"),
            vec![1280, 2048],
        ),
        (
            u("input_blocks.8.0.out_layers.3.weight"),
            vec![1280, 1280, 3, 3],
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
    differs(shapes, &expected, "SDXL base")?;
    if shapes.keys().any(|k| k.starts_with(&u("input_blocks.9."))) {
        return Err(Refusal::Invalid(
            "not a standard SDXL base architecture: more than 3 levels of input blocks".into(),
        ));
    }
    let unet = UNetParams {
        in_channels: 4,
        out_channels: 4,
        model_channels: 320,
        attention_resolutions: vec![4, 2],
        num_res_blocks: PerBlock::One(2),
        channel_mult: vec![1, 2, 4],
        num_heads: -1,
        num_head_channels: 64,
        use_linear_in_transformer: true,
        transformer_depth: PerBlock::Each(vec![1, 2, 10]),
        context_dim: Some(PerBlock::One(2048)),
        num_classes: Some(serde_norway::Value::String("sequential".into())),
        adm_in_channels: Some(2816),
        transformer_depth_middle: None,
        disable_self_attentions: None,
    };
    Ok(Standard {
        name: "SDXL base (sd_xl_base.yaml)",
        unet,
        vae: standard_vae(),
        image_size: 128,
        parameterization: "eps",
    })
}

/// The standard architecture of `family` whose shapes these tensors have; an
/// error names the first tensor that differs.
pub fn standard(shapes: &Shapes, family: Family) -> Result<Standard, Refusal> {
    let (context, linear) = match family {
        Family::Sd1 { .. } => (768, false),
        Family::Sd2 => (1024, true),
        Family::Sdxl => return standard_sdxl(shapes),
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
    let name = if linear { "SD 2.x" } else { "SD 1.x" };
    differs(shapes, &expected, name)?;
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
        adm_in_channels: None,
        transformer_depth_middle: None,
        disable_self_attentions: None,
    };
    let vae = standard_vae();
    Ok(match family {
        Family::Sd1 { .. } => Standard {
            name: "SD 1.x (v1-inference.yaml)",
            unet,
            vae,
            image_size: 64,
            parameterization: "eps",
        },
        // (SDXL returned above.)
        Family::Sd2 | Family::Sdxl => Standard {
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
        if family == Family::Sdxl {
            return sdxl_shapes();
        }
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

    /// SDXL base's (sd_xl_base_1.0.safetensors) tensors that detection reads.
    fn sdxl_shapes() -> Shapes {
        let mut s: Shapes = HashMap::new();
        let mut put = |k: String, v: Vec<usize>| {
            s.insert(k, v);
        };
        put(
            format!("{UNET_PREFIX}input_blocks.0.0.weight"),
            vec![320, 4, 3, 3],
        );
        put(
            format!("{UNET_PREFIX}label_emb.0.0.weight"),
            vec![1280, 2816],
        );
        put(
            format!("{UNET_PREFIX}input_blocks.4.1.proj_in.weight"),
            vec![640, 640],
        );
        for (i, c, depth) in [(4, 640, 2), (5, 640, 2), (7, 1280, 10), (8, 1280, 10)] {
            for d in 0..depth {
                let k = format!(
                    "{UNET_PREFIX}input_blocks.{i}.1.transformer_blocks.{d}.attn2.to_k.weight"
                );
                put(k, vec![c, 2048]);
            }
        }
        put(
            format!("{UNET_PREFIX}input_blocks.8.0.out_layers.3.weight"),
            vec![1280, 1280, 3, 3],
        );
        put(
            format!("{VAE_PREFIX}decoder.conv_in.weight"),
            vec![512, 4, 3, 3],
        );
        put(
            format!("{VAE_PREFIX}post_quant_conv.weight"),
            vec![4, 4, 1, 1],
        );
        let p = format!("{SDXL_CLIP_PREFIX}text_model.");
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
        let p = SDXL_OPEN_CLIP_PREFIX;
        put(format!("{p}token_embedding.weight"), vec![49408, 1280]);
        put(format!("{p}positional_embedding"), vec![77, 1280]);
        put(format!("{p}text_projection"), vec![1280, 1280]);
        for i in 0..32 {
            put(
                format!("{p}transformer.resblocks.{i}.mlp.c_fc.weight"),
                vec![5120, 1280],
            );
        }
        s
    }

    #[test]
    fn standard_architectures_are_detected() {
        for (family, name, pred, size) in [
            (Family::Sd1 { text_model: true }, "SD 1.x", "eps", 64),
            (Family::Sd2, "SD 2.x 768-v", "v", 96),
            (Family::Sdxl, "SDXL base", "eps", 128),
        ] {
            let shapes = standard_shapes(family);
            assert_eq!(super::family(&shapes), Ok(family));
            let s = standard(&shapes, family).unwrap();
            assert!(s.name.starts_with(name), "{}", s.name);
            assert_eq!((s.parameterization, s.image_size), (pred, size));
            let linear = family != Family::Sd1 { text_model: true };
            assert_eq!(s.unet.use_linear_in_transformer, linear);
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

        // The SDXL refiner: one OpenCLIP embedder.
        let mut shapes = standard_shapes(Family::Sd2);
        shapes.insert(
            "conditioner.embedders.0.model.ln_final.weight".into(),
            vec![1280],
        );
        let err = family(&shapes).unwrap_err();
        assert!(
            matches!(&err, Refusal::Unsupported(m) if m.contains("refiner")),
            "{err:?}"
        );

        let mut shapes = standard_shapes(Family::Sdxl);
        let key = format!("{UNET_PREFIX}label_emb.0.0.weight");
        shapes.insert(key.clone(), vec![1280, 2560]);
        let err = standard(&shapes, Family::Sdxl).unwrap_err();
        let named =
            matches!(&err, Refusal::Invalid(m) if m.contains(&key) && m.contains("SDXL base"));
        assert!(named, "{err:?}");

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
