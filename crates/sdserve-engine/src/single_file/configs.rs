//! The diffusers component configs (`config.rs`' UNetConfig, VaeConfig,
//! TextEncoderConfig, SchedulerConfig) of a single file, so `model.rs` builds
//! the same modules as from a folder.
//!
//! UNet and VAE follow diffusers' `create_unet_diffusers_config_from_ldm` and
//! `create_vae_diffusers_config_from_ldm`, except that head counts follow
//! LDM's own rule (`num_head_channels` wins over `num_heads`) and the native
//! size comes from `model.params.image_size` when the yaml gives it. The text
//! encoder's sizes come from the tensors' shapes. The scheduler is what
//! diffusers' `from_single_file` builds for SD 1.x/2.x (the hub repos'
//! `scheduler_config.json`: scaled-linear betas 0.00085..0.012 over 1000
//! steps, `steps_offset` 1, no `set_alpha_to_one`, no clipping, no
//! `timestep_spacing`; SDXL base's says `leading`), with the yaml's `linear_start`, `linear_end`,
//! `timesteps` and `parameterization` in place of the defaults.
//! Each config is built as JSON and read by the same serde structs as a
//! folder's files, so an absent key means what it means to diffusers.

use serde_json::{json, Map, Value};

use super::detect::{Family, Refusal, Shapes};
use super::keys::{
    Part, TextEncoderKeys, TextLayout, HF_CLIP_PREFIX, OPEN_CLIP_PREFIX, SDXL_CLIP_PREFIX,
    SDXL_OPEN_CLIP_PREFIX,
};
use super::yaml::{FirstStageParams, ModelParams, UNetParams};
use crate::config::{PerBlock, SchedulerConfig, TextEncoderConfig, UNetConfig, VaeConfig};

/// Width of one attention head in the standard CLIP text encoders (768/12, 1024/16).
const CLIP_HEAD_WIDTH: usize = 64;

fn invalid(m: impl Into<String>) -> Refusal {
    Refusal::Invalid(m.into())
}

fn unsupported(m: impl Into<String>) -> Refusal {
    Refusal::Unsupported(m.into())
}

/// Deserializes a synthesized config, with `overrides` (diffusers keys) laid over it.
fn read<T: serde::de::DeserializeOwned>(
    mut base: Value,
    overrides: &Map<String, Value>,
    what: &str,
) -> Result<T, Refusal> {
    if let Value::Object(map) = &mut base {
        map.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    serde_json::from_value(base).map_err(|e| invalid(format!("{what}: {e}")))
}

/// A per-level value as diffusers writes it: a number or a list.
fn per_block(v: &PerBlock<usize>) -> Value {
    match v {
        PerBlock::One(n) => json!(n),
        PerBlock::Each(list) => json!(list),
    }
}

/// `UNetModel` params -> diffusers' `UNet2DConditionModel` config. SDXL's
/// `num_classes: sequential` is its `text_time` added conditioning, with
/// `time_embed_dim`-wide size embeddings; `overrides` (the yaml's
/// `diffusers.unet`) are laid over the result.
pub fn unet_config(
    u: &UNetParams,
    image_size: usize,
    time_embed_dim: usize,
    overrides: &Map<String, Value>,
) -> Result<UNetConfig, Refusal> {
    let sequential = u.num_classes.as_ref().and_then(|v| v.as_str()) == Some("sequential");
    let adm = match (&u.num_classes, u.adm_in_channels) {
        (None, _) => None,
        (Some(_), Some(adm)) if sequential => Some(adm),
        _ => {
            return Err(unsupported(
                "a class-conditioned UNet (num_classes other than SDXL's \"sequential\" with adm_in_channels) is not supported",
            ))
        }
    };
    let last_depth = match &u.transformer_depth {
        PerBlock::One(d) => Some(*d),
        PerBlock::Each(v) => v.last().copied(),
    };
    if u.transformer_depth_middle
        .is_some_and(|d| Some(d) != last_depth)
    {
        return Err(unsupported(
            "transformer_depth_middle differing from the last level's transformer_depth",
        ));
    }
    if u.disable_self_attentions.is_some() {
        return Err(unsupported("disable_self_attentions is not supported"));
    }
    let channels: Vec<usize> = u
        .channel_mult
        .iter()
        .map(|m| u.model_channels.saturating_mul(*m))
        .collect();
    let levels = channels.len();
    let mut resolution = 1;
    let mut down = Vec::with_capacity(levels);
    for i in 0..levels {
        let cross = u.attention_resolutions.contains(&resolution);
        down.push(if cross {
            "CrossAttnDownBlock2D"
        } else {
            "DownBlock2D"
        });
        if i + 1 < levels {
            resolution *= 2;
        }
    }
    let up: Vec<&str> = down
        .iter()
        .rev()
        .map(|d| {
            if d.starts_with("CrossAttn") {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            }
        })
        .collect();
    // LDM: heads = channels / num_head_channels when that is set, else num_heads.
    let heads = channels
        .iter()
        .map(|c| match (u.num_head_channels, u.num_heads) {
            (w, _) if w > 0 => match c % w as usize {
                0 => Ok(c / w as usize),
                _ => Err(invalid(format!(
                    "unet_config: {c} channels are not a multiple of num_head_channels {w}"
                ))),
            },
            (_, h) if h > 0 => Ok(h as usize),
            _ => Err(invalid(
                "unet_config: neither num_heads nor num_head_channels is set",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let context = u
        .context_dim
        .as_ref()
        .ok_or_else(|| invalid("unet_config: no context_dim (a UNet without cross-attention)"))?;
    let context = match context {
        PerBlock::One(c) => *c,
        PerBlock::Each(v) => *v
            .first()
            .ok_or_else(|| invalid("unet_config: context_dim is an empty list"))?,
    };
    let config = json!({
        "sample_size": image_size,
        "in_channels": u.in_channels,
        "out_channels": u.out_channels,
        "block_out_channels": channels,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "layers_per_block": per_block(&u.num_res_blocks),
        "attention_head_dim": heads,
        "cross_attention_dim": context,
        "use_linear_projection": u.use_linear_in_transformer,
        "transformer_layers_per_block": per_block(&u.transformer_depth),
        "addition_embed_type": adm.map(|_| "text_time"),
        "addition_time_embed_dim": adm.map(|_| time_embed_dim),
        "projection_class_embeddings_input_dim": adm,
    });
    read(config, overrides, "unet_config")
}

/// `AutoencoderKL` params -> diffusers' `AutoencoderKL` config; its
/// `sample_size` (the tile size) is the image size, as diffusers sets it.
pub fn vae_config(
    v: &FirstStageParams,
    image_size: usize,
    scale_factor: f64,
    overrides: &Map<String, Value>,
) -> Result<VaeConfig, Refusal> {
    let d = &v.ddconfig;
    if v.embed_dim != d.z_channels {
        return Err(unsupported(format!(
            "first_stage_config: embed_dim {} differs from z_channels {}",
            v.embed_dim, d.z_channels
        )));
    }
    let levels = d.ch_mult.len();
    let factor = 1usize << levels.saturating_sub(1).min(16);
    let config = json!({
        "in_channels": d.in_channels,
        "out_channels": d.out_ch,
        "block_out_channels": d.ch_mult.iter().map(|m| d.ch.saturating_mul(*m)).collect::<Vec<_>>(),
        "layers_per_block": d.num_res_blocks,
        "latent_channels": d.z_channels,
        "scaling_factor": scale_factor,
        "sample_size": image_size.saturating_mul(factor),
    });
    read(config, overrides, "first_stage_config")
}

/// One text encoder of a family: where its keys are, and how many of its
/// last layers the family skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextEncoderSpec {
    pub keys: TextEncoderKeys,
    pub skip: usize,
}

/// The text encoders of `family`. `layer` is the yaml's
/// `cond_stage_config.params.layer` (`None`: no yaml, the family's usual one:
/// `last` for SD 1.x, `penultimate` for SD 2.x, whose OpenCLIP embedder then
/// skips the last layer). SDXL keeps all layers of both encoders: the
/// pipeline reads their penultimate hidden states and the second's pooled output.
pub fn text_encoders(family: Family, layer: Option<&str>) -> Result<Vec<TextEncoderSpec>, Refusal> {
    let spec = |part, prefix, layout, skip| TextEncoderSpec {
        keys: TextEncoderKeys {
            part,
            prefix,
            layout,
        },
        skip,
    };
    Ok(match family {
        Family::Sd1 { text_model } => {
            if let Some(other) = layer.filter(|l| *l != "last") {
                return Err(unsupported(format!(
                    "cond_stage_config layer {other:?} (clip skip) is not supported for SD 1.x"
                )));
            }
            let layout = TextLayout::HfClip { text_model };
            vec![spec(Part::TextEncoder, HF_CLIP_PREFIX, layout, 0)]
        }
        Family::Sd2 => {
            let skip = match layer.unwrap_or("penultimate") {
                "last" => 0,
                "penultimate" => 1,
                other => {
                    return Err(unsupported(format!(
                        "cond_stage_config layer {other:?} is not supported"
                    )))
                }
            };
            let layout = TextLayout::OpenClip { projection: false };
            vec![spec(Part::TextEncoder, OPEN_CLIP_PREFIX, layout, skip)]
        }
        Family::Sdxl => vec![
            spec(
                Part::TextEncoder,
                SDXL_CLIP_PREFIX,
                TextLayout::HfClip { text_model: true },
                0,
            ),
            spec(
                Part::TextEncoder2,
                SDXL_OPEN_CLIP_PREFIX,
                TextLayout::OpenClip { projection: true },
                0,
            ),
        ],
    })
}

/// A text encoder's config from its tensors' shapes: transformers' CLIP is
/// quick_gelu (OpenAI's ViT-L), OpenCLIP's gelu (ViT-H, ViT-bigG); heads are
/// CLIP's 64 wide unless `overrides` (the yaml's `diffusers.text_encoder[_2]`)
/// give `num_attention_heads`.
pub fn text_encoder_config(
    shapes: &Shapes,
    spec: &TextEncoderSpec,
    overrides: &Map<String, Value>,
) -> Result<TextEncoderConfig, Refusal> {
    let prefix = spec.keys.prefix;
    let (token, position, layers, fc1, act, projection) = match spec.keys.layout {
        TextLayout::HfClip { text_model } => {
            let p = match text_model {
                true => format!("{prefix}text_model."),
                false => prefix.to_string(),
            };
            let token = format!("{p}embeddings.token_embedding.weight");
            let position = format!("{p}embeddings.position_embedding.weight");
            (
                token,
                position,
                format!("{p}encoder.layers."),
                "mlp.fc1.weight",
                "quick_gelu",
                None,
            )
        }
        TextLayout::OpenClip { projection } => {
            let token = format!("{prefix}token_embedding.weight");
            let position = format!("{prefix}positional_embedding");
            let projection = projection.then(|| format!("{prefix}text_projection"));
            let layers = format!("{prefix}transformer.resblocks.");
            (
                token,
                position,
                layers,
                "mlp.c_fc.weight",
                "gelu",
                projection,
            )
        }
    };
    let shape = |key: &str, rank: usize| match shapes.get(key) {
        Some(s) if s.len() == rank => Ok(s.clone()),
        Some(s) => Err(invalid(format!(
            "{key} has shape {s:?}, expected {rank} dimensions"
        ))),
        None => Err(invalid(format!("{key} is missing"))),
    };
    let token = shape(&token, 2)?;
    let positions = shape(&position, 2)?[0];
    let count = (0..)
        .take_while(|i| shapes.contains_key(&format!("{layers}{i}.{fc1}")))
        .count();
    if count <= spec.skip {
        return Err(invalid(format!(
            "{layers}0.{fc1} is missing (no text encoder layers)"
        )));
    }
    let intermediate = shape(&format!("{layers}0.{fc1}"), 2)?[0];
    let (vocab, hidden) = (token[0], token[1]);
    let mut config = json!({
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": count - spec.skip,
        "max_position_embeddings": positions,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
    });
    if let Some(key) = projection {
        // OpenCLIP's text_projection is (width, embed_dim).
        config["projection_dim"] = json!(shape(&key, 2)?[1]);
    }
    if !overrides.contains_key("num_attention_heads") {
        if hidden < CLIP_HEAD_WIDTH || !hidden.is_multiple_of(CLIP_HEAD_WIDTH) {
            let block = match spec.keys.part {
                Part::TextEncoder2 => "text_encoder_2",
                _ => "text_encoder",
            };
            return Err(invalid(format!(
                "the head count of {prefix}* cannot be derived: hidden size {hidden} is not a multiple of CLIP's {CLIP_HEAD_WIDTH}-wide heads; give diffusers.{block}.num_attention_heads in the original config (<name>.yaml)"
            )));
        }
        config["num_attention_heads"] = json!(hidden / CLIP_HEAD_WIDTH);
    }
    read(config, overrides, "text encoder")
}

/// The noise schedule: diffusers' SD defaults with the yaml's values in place.
pub fn scheduler_config(
    p: &ModelParams,
    family: Family,
    overrides: &Map<String, Value>,
) -> Result<SchedulerConfig, Refusal> {
    let prediction = match p.parameterization.as_deref().unwrap_or("eps") {
        "eps" => "epsilon",
        "v" => "v_prediction",
        "x0" => "sample",
        other => {
            return Err(invalid(format!(
                "model.params.parameterization {other:?} (expected eps, v or x0)"
            )))
        }
    };
    match p.beta_schedule.as_deref().unwrap_or("linear") {
        // LDM's "linear" is linspace(sqrt(start), sqrt(end))**2: diffusers' scaled_linear.
        "linear" => {}
        other => return Err(unsupported(format!("model.params.beta_schedule {other:?}"))),
    }
    let mut config = json!({
        "num_train_timesteps": p.timesteps.unwrap_or(1000),
        "beta_start": p.linear_start.unwrap_or(0.00085),
        "beta_end": p.linear_end.unwrap_or(0.012),
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction,
        "steps_offset": 1,
        "set_alpha_to_one": false,
        "clip_sample": false,
    });
    if family == Family::Sdxl {
        // stable-diffusion-xl-base-1.0's EulerDiscreteScheduler config.
        config["timestep_spacing"] = json!("leading");
    }
    read(config, overrides, "scheduler")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::single_file::detect::{standard, tests::standard_shapes};

    /// The standard architectures give the configs of the diffusers repos
    /// (stable-diffusion-v1-5, stable-diffusion-2-1).
    #[test]
    fn standard_configs_equal_the_hub_configs() {
        let sd1 = Family::Sd1 { text_model: true };
        let shapes = standard_shapes(sd1);
        let s = standard(&shapes, sd1).unwrap();
        let unet = unet_config(&s.unet, s.image_size, 256, &Map::new()).unwrap();
        assert_eq!(unet.block_out_channels, [320, 640, 1280, 1280]);
        assert_eq!(
            unet.down_block_types,
            [
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D"
            ]
        );
        assert_eq!(
            unet.up_block_types,
            [
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D"
            ]
        );
        assert_eq!(unet.attention_head_dim, Some(PerBlock::Each(vec![8; 4])));
        assert_eq!(unet.sample_size, Some(PerBlock::One(64)));
        let vae = vae_config(&s.vae, s.image_size, 0.18215, &Map::new()).unwrap();
        assert_eq!(
            (
                vae.block_out_channels.as_slice(),
                vae.layers_per_block,
                vae.sample_size()
            ),
            (&[128, 256, 512, 512][..], 2, 512)
        );
        let te = text_encoder_config(&shapes, &text_encoders(sd1, None).unwrap()[0], &Map::new())
            .unwrap();
        assert_eq!(
            (
                te.hidden_size,
                te.num_hidden_layers,
                te.num_attention_heads,
                te.intermediate_size
            ),
            (768, 12, 12, 3072)
        );
        assert_eq!(te.hidden_act, "quick_gelu");

        let shapes = standard_shapes(Family::Sd2);
        let s = standard(&shapes, Family::Sd2).unwrap();
        let unet = unet_config(&s.unet, s.image_size, 256, &Map::new()).unwrap();
        assert_eq!(
            unet.attention_head_dim,
            Some(PerBlock::Each(vec![5, 10, 20, 20]))
        );
        assert!(unet.use_linear_projection);
        assert_eq!(unet.sample_size, Some(PerBlock::One(96)));
        let te = text_encoder_config(
            &shapes,
            &text_encoders(Family::Sd2, None).unwrap()[0],
            &Map::new(),
        )
        .unwrap();
        // 24 OpenCLIP layers, the last skipped (penultimate), as diffusers' SD 2 text_encoder config.
        assert_eq!(
            (
                te.hidden_size,
                te.num_hidden_layers,
                te.num_attention_heads,
                te.intermediate_size
            ),
            (1024, 23, 16, 4096)
        );
        assert_eq!(te.hidden_act, "gelu");
        let params = ModelParams {
            parameterization: Some(s.parameterization.into()),
            ..Default::default()
        };
        let sched = scheduler_config(&params, Family::Sd2, &Map::new()).unwrap();
        assert_eq!(sched.prediction_type.as_deref(), Some("v_prediction"));
        assert_eq!(
            (sched.beta_start, sched.beta_end, sched.steps_offset),
            (Some(0.00085), Some(0.012), Some(1))
        );
        assert_eq!(sched.timestep_spacing, None);
    }

    /// SDXL base's shapes give stable-diffusion-xl-base-1.0's configs.
    #[test]
    fn standard_sdxl_configs_equal_the_hub_configs() {
        let shapes = standard_shapes(Family::Sdxl);
        let s = standard(&shapes, Family::Sdxl).unwrap();
        let unet = unet_config(&s.unet, s.image_size, 256, &Map::new()).unwrap();
        assert_eq!(unet.block_out_channels, [320, 640, 1280]);
        assert_eq!(
            unet.down_block_types,
            [
                "DownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D"
            ]
        );
        assert_eq!(
            unet.up_block_types,
            ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
        );
        assert_eq!(
            unet.attention_head_dim,
            Some(PerBlock::Each(vec![5, 10, 20]))
        );
        assert_eq!(
            unet.transformer_layers_per_block,
            PerBlock::Each(vec![1, 2, 10])
        );
        assert_eq!(unet.addition_embed_type.as_deref(), Some("text_time"));
        assert_eq!(
            (
                unet.addition_time_embed_dim,
                unet.projection_class_embeddings_input_dim
            ),
            (Some(256), Some(2816))
        );
        assert_eq!(unet.sample_size, Some(PerBlock::One(128)));
        let specs = text_encoders(Family::Sdxl, None).unwrap();
        let te = text_encoder_config(&shapes, &specs[0], &Map::new()).unwrap();
        assert_eq!(
            (
                te.hidden_size,
                te.num_hidden_layers,
                te.num_attention_heads,
                te.projection_dim
            ),
            (768, 12, 12, None)
        );
        let te2 = text_encoder_config(&shapes, &specs[1], &Map::new()).unwrap();
        assert_eq!(
            (
                te2.hidden_size,
                te2.num_hidden_layers,
                te2.num_attention_heads,
                te2.projection_dim
            ),
            (1280, 32, 20, Some(1280))
        );
        assert_eq!(
            (te2.hidden_act.as_str(), te2.intermediate_size),
            ("gelu", 5120)
        );
        let sched = scheduler_config(&ModelParams::default(), Family::Sdxl, &Map::new()).unwrap();
        assert_eq!(
            (
                sched.timestep_spacing.as_deref(),
                sched.prediction_type.as_deref()
            ),
            (Some("leading"), Some("epsilon"))
        );
        let mut bad = s.unet.clone();
        bad.num_classes = Some(serde_norway::Value::Number(1000.into()));
        assert!(
            matches!(unet_config(&bad, 128, 256, &Map::new()), Err(Refusal::Unsupported(m)) if m.contains("class-conditioned"))
        );
    }

    #[test]
    fn overrides_and_bad_values_are_reported() {
        let mut overrides = Map::new();
        overrides.insert("timestep_spacing".into(), json!("trailing"));
        let params = ModelParams {
            parameterization: Some("eps".into()),
            timesteps: Some(500),
            ..Default::default()
        };
        let sched = scheduler_config(&params, Family::Sd2, &overrides).unwrap();
        assert_eq!(
            (sched.timestep_spacing.as_deref(), sched.num_train_timesteps),
            (Some("trailing"), Some(500))
        );
        let bad = ModelParams {
            parameterization: Some("velocity".into()),
            ..Default::default()
        };
        assert!(
            matches!(scheduler_config(&bad, Family::Sd2, &Map::new()), Err(Refusal::Invalid(m)) if m.contains("velocity"))
        );
        overrides.insert("steps_offset".into(), json!("one"));
        assert!(
            matches!(scheduler_config(&params, Family::Sd2, &overrides), Err(Refusal::Invalid(m)) if m.contains("scheduler"))
        );
    }
}
