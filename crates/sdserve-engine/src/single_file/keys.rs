//! Names of a single file's tensors (the original LDM layout) mapped to the
//! diffusers names our modules load, per component: the inverse of what
//! diffusers' `loaders/single_file_utils.py` does when it converts
//! (`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
//! `convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`).
//!
//! Pure functions on names and shapes, so they are tested without files. A
//! fused OpenCLIP `in_proj` becomes three row ranges (q, k, v), SDXL's
//! OpenCLIP `text_projection` is transposed and its UNet's `label_emb` is
//! diffusers' `add_embedding`; 1x1-conv attention weights of the VAE are
//! reshaped when loaded (`weights.rs`).

use std::collections::HashMap;

/// The parts of a pipeline a single file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    TextEncoder,
    /// SDXL's second text encoder (OpenCLIP bigG, with projection).
    TextEncoder2,
    Unet,
    Vae,
}

/// Where a diffusers tensor comes from in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The whole tensor `key`.
    Whole(String),
    /// Rows `start..start + len` (first axis) of `key`: a third of a fused in_proj.
    Rows {
        key: String,
        start: usize,
        len: usize,
    },
    /// The transpose of 2-D `key`: OpenCLIP's `(width, embed)` text_projection.
    Transposed(String),
}

impl Source {
    /// The file's key.
    pub fn key(&self) -> &str {
        match self {
            Source::Whole(key) | Source::Rows { key, .. } | Source::Transposed(key) => key,
        }
    }
}

/// Which layout a text encoder's keys use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextLayout {
    /// transformers' CLIPTextModel (SD 1.x, SDXL's first encoder); `text_model`
    /// tells whether its keys keep the `text_model.` level.
    HfClip { text_model: bool },
    /// OpenCLIP's text transformer (SD 2.x, SDXL's second encoder); `projection`
    /// keeps its text_projection (SDXL's pooled output; SD 2.x does not use it).
    OpenClip { projection: bool },
}

/// One text encoder of the file: which part, under which prefix, in which layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextEncoderKeys {
    pub part: Part,
    pub prefix: &'static str,
    pub layout: TextLayout,
}

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
/// SD 1.x's text encoder (transformers' CLIP ViT-L).
pub const HF_CLIP_PREFIX: &str = "cond_stage_model.transformer.";
/// SD 2.x's text encoder (OpenCLIP ViT-H).
pub const OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";
/// SDXL's first text encoder (transformers' CLIP ViT-L).
pub const SDXL_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// SDXL's second text encoder (OpenCLIP ViT-bigG).
pub const SDXL_OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";

/// What the loader needs to know of the architecture to place the keys.
#[derive(Debug, Clone)]
pub struct Layout {
    /// UNet resnets per level (`num_res_blocks`).
    pub unet_layers_per_block: usize,
    /// VAE levels (`len(ch_mult)`): the decoder's `up.i` is `up_blocks.(n-1-i)`.
    pub vae_levels: usize,
    pub text: Vec<TextEncoderKeys>,
}

/// diffusers name -> source, per part.
pub type KeyMap = HashMap<Part, HashMap<String, Source>>;

/// Maps every tensor of the file that belongs to a part; others (EMA copies,
/// schedule buffers, position ids, OpenCLIP's `logit_scale`...) are left out.
pub fn map_keys<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    layout: &Layout,
) -> KeyMap {
    let mut map: KeyMap = HashMap::new();
    for (key, shape) in tensors {
        for (part, name, source) in map_key(key, shape, layout) {
            map.entry(part).or_default().insert(name, source);
        }
    }
    map
}

/// The diffusers name(s) of one file key.
fn map_key(key: &str, shape: &[usize], layout: &Layout) -> Vec<(Part, String, Source)> {
    let whole = |part, name: Option<String>| {
        name.map(|n| vec![(part, n, Source::Whole(key.to_string()))])
            .unwrap_or_default()
    };
    if let Some(rest) = key.strip_prefix(UNET_PREFIX) {
        return whole(Part::Unet, unet_name(rest, layout.unet_layers_per_block));
    }
    if let Some(rest) = key.strip_prefix(VAE_PREFIX) {
        return whole(Part::Vae, vae_name(rest, layout.vae_levels));
    }
    let Some((encoder, rest)) = layout
        .text
        .iter()
        .find_map(|e| key.strip_prefix(e.prefix).map(|rest| (e, rest)))
    else {
        return Vec::new();
    };
    match encoder.layout {
        TextLayout::HfClip { text_model } => {
            let rest = if text_model {
                rest.strip_prefix("text_model.")
            } else {
                Some(rest)
            };
            let name = rest
                .filter(|r| !r.ends_with("position_ids"))
                .map(|r| format!("{}{r}", if text_model { "text_model." } else { "" }));
            whole(encoder.part, name)
        }
        TextLayout::OpenClip { projection } => {
            open_clip_names(key, rest, shape, encoder.part, projection)
        }
    }
}

/// LDM `openaimodel.UNetModel` -> diffusers `UNet2DConditionModel`.
pub fn unet_name(rest: &str, layers_per_block: usize) -> Option<String> {
    let per = layers_per_block + 1;
    let (head, tail) = rest.split_once('.')?;
    match head {
        // SDXL's vector conditioning (pooled text + size embeddings).
        "label_emb" => {
            let linear = match tail.split_once('.')? {
                ("0", t) => match t.split_once('.')? {
                    ("0", p) => format!("linear_1.{p}"),
                    ("2", p) => format!("linear_2.{p}"),
                    _ => return None,
                },
                _ => return None,
            };
            Some(format!("add_embedding.{linear}"))
        }
        "time_embed" => {
            let (i, t) = tail.split_once('.')?;
            let linear = match i {
                "0" => "linear_1",
                "2" => "linear_2",
                _ => return None,
            };
            Some(format!("time_embedding.{linear}.{t}"))
        }
        "out" => {
            let (i, t) = tail.split_once('.')?;
            let name = match i {
                "0" => "conv_norm_out",
                "2" => "conv_out",
                _ => return None,
            };
            Some(format!("{name}.{t}"))
        }
        "input_blocks" => {
            let (i, t) = split_index(tail)?;
            let (j, t) = split_index(t)?;
            if i == 0 {
                return (j == 0).then(|| format!("conv_in.{t}"));
            }
            let (block, layer) = ((i - 1) / per, (i - 1) % per);
            match (j, t.strip_prefix("op.")) {
                (0, Some(op)) => Some(format!("down_blocks.{block}.downsamplers.0.conv.{op}")),
                (0, None) => Some(format!(
                    "down_blocks.{block}.resnets.{layer}.{}",
                    resnet(t)?
                )),
                (1, _) => Some(format!("down_blocks.{block}.attentions.{layer}.{t}")),
                _ => None,
            }
        }
        "middle_block" => {
            let (i, t) = split_index(tail)?;
            match i {
                0 | 2 => Some(format!("mid_block.resnets.{}.{}", i / 2, resnet(t)?)),
                1 => Some(format!("mid_block.attentions.0.{t}")),
                _ => None,
            }
        }
        "output_blocks" => {
            let (i, t) = split_index(tail)?;
            let (j, t) = split_index(t)?;
            let (block, layer) = (i / per, i % per);
            // An Upsample is the block's last child: `.1.conv` without attention, `.2.conv` with.
            match (j, t.strip_prefix("conv.")) {
                (0, _) => Some(format!("up_blocks.{block}.resnets.{layer}.{}", resnet(t)?)),
                (1 | 2, Some(conv)) => Some(format!("up_blocks.{block}.upsamplers.0.conv.{conv}")),
                (1, None) => Some(format!("up_blocks.{block}.attentions.{layer}.{t}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `12.rest` -> `(12, "rest")`.
fn split_index(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

/// A UNet ResBlock's children under their diffusers names.
fn resnet(t: &str) -> Option<String> {
    const NAMES: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."),
        ("skip_connection.", "conv_shortcut."),
    ];
    NAMES
        .iter()
        .find_map(|(old, new)| t.strip_prefix(old).map(|rest| format!("{new}{rest}")))
}

/// LDM `autoencoder.AutoencoderKL` -> diffusers `AutoencoderKL`.
pub fn vae_name(rest: &str, levels: usize) -> Option<String> {
    if rest.starts_with("quant_conv.") || rest.starts_with("post_quant_conv.") {
        return Some(rest.to_string());
    }
    let (coder, t) = rest.split_once('.')?;
    if coder != "encoder" && coder != "decoder" {
        return None;
    }
    let shortcut = |s: &str| s.replace("nin_shortcut.", "conv_shortcut.");
    let inner = if let Some(t) = t.strip_prefix("norm_out.") {
        format!("conv_norm_out.{t}")
    } else if t.starts_with("conv_in.") || t.starts_with("conv_out.") {
        t.to_string()
    } else if let Some(t) = t.strip_prefix("mid.block_1.") {
        format!("mid_block.resnets.0.{}", shortcut(t))
    } else if let Some(t) = t.strip_prefix("mid.block_2.") {
        format!("mid_block.resnets.1.{}", shortcut(t))
    } else if let Some(t) = t.strip_prefix("mid.attn_1.") {
        let (name, param) = t.split_once('.')?;
        let name = match name {
            "norm" => "group_norm",
            "q" => "to_q",
            "k" => "to_k",
            "v" => "to_v",
            "proj_out" => "to_out.0",
            _ => return None,
        };
        format!("mid_block.attentions.0.{name}.{param}")
    } else {
        let (kind, t) = t.split_once('.')?;
        let (i, t) = split_index(t)?;
        let (blocks, i) = match (coder, kind) {
            ("encoder", "down") => ("down_blocks", i),
            ("decoder", "up") => ("up_blocks", levels.checked_sub(i + 1)?),
            _ => return None,
        };
        if let Some(t) = t.strip_prefix("block.") {
            let (j, t) = split_index(t)?;
            format!("{blocks}.{i}.resnets.{j}.{}", shortcut(t))
        } else if let Some(t) = t
            .strip_prefix("downsample.")
            .or(t.strip_prefix("upsample."))
        {
            let sampler = if kind == "down" {
                "downsamplers"
            } else {
                "upsamplers"
            };
            format!("{blocks}.{i}.{sampler}.0.{t}")
        } else {
            return None;
        }
    };
    Some(format!("{coder}.{inner}"))
}

/// OpenCLIP's text transformer -> transformers' `CLIPTextModel` (with `text_model.`).
fn open_clip_names(
    key: &str,
    rest: &str,
    shape: &[usize],
    part: Part,
    projection: bool,
) -> Vec<(Part, String, Source)> {
    let one = |name: String| vec![(part, name, Source::Whole(key.to_string()))];
    let name = match rest {
        "text_projection" if projection => {
            let source = Source::Transposed(key.to_string());
            return vec![(part, "text_projection.weight".into(), source)];
        }
        "token_embedding.weight" => {
            return one("text_model.embeddings.token_embedding.weight".into())
        }
        "positional_embedding" => {
            return one("text_model.embeddings.position_embedding.weight".into())
        }
        _ => rest,
    };
    if let Some(t) = name.strip_prefix("ln_final.") {
        return one(format!("text_model.final_layer_norm.{t}"));
    }
    let Some((i, t)) = name
        .strip_prefix("transformer.resblocks.")
        .and_then(split_index)
    else {
        return Vec::new(); // text_projection, logit_scale: unused by SD 1.x/2.x
    };
    let layer = format!("text_model.encoder.layers.{i}");
    let fused = t.strip_prefix("attn.in_proj_");
    if let Some(param) = fused {
        let rows = shape.first().copied().unwrap_or(0) / 3;
        return ["q", "k", "v"]
            .iter()
            .enumerate()
            .map(|(n, x)| {
                let source = Source::Rows {
                    key: key.to_string(),
                    start: n * rows,
                    len: rows,
                };
                (part, format!("{layer}.self_attn.{x}_proj.{param}"), source)
            })
            .collect();
    }
    const NAMES: [(&str, &str); 5] = [
        ("attn.out_proj.", "self_attn.out_proj."),
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ];
    NAMES
        .iter()
        .find_map(|(old, new)| {
            t.strip_prefix(old)
                .map(|p| one(format!("{layer}.{new}{p}")))
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unet_keys_follow_diffusers_conversion() {
        // SD 1.5: 2 resnets per level, so input block 3 is level 0's downsampler.
        let cases = [
            ("time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("time_embed.2.bias", "time_embedding.linear_2.bias"),
            ("input_blocks.0.0.weight", "conv_in.weight"),
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.2.0.emb_layers.1.bias",
                "down_blocks.0.resnets.1.time_emb_proj.bias",
            ),
            (
                "input_blocks.2.1.proj_in.weight",
                "down_blocks.0.attentions.1.proj_in.weight",
            ),
            (
                "input_blocks.3.0.op.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
                "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "middle_block.0.out_layers.3.weight",
                "mid_block.resnets.0.conv2.weight",
            ),
            (
                "middle_block.1.norm.bias",
                "mid_block.attentions.0.norm.bias",
            ),
            (
                "middle_block.2.in_layers.2.weight",
                "mid_block.resnets.1.conv1.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.3.0.out_layers.0.bias",
                "up_blocks.1.resnets.0.norm2.bias",
            ),
            (
                "output_blocks.5.1.proj_out.weight",
                "up_blocks.1.attentions.2.proj_out.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            ("out.0.weight", "conv_norm_out.weight"),
            ("out.2.bias", "conv_out.bias"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(unet_name(ldm, 2).as_deref(), Some(diffusers), "{ldm}");
        }
        assert_eq!(
            unet_name("label_emb.0.2.bias", 2).as_deref(),
            Some("add_embedding.linear_2.bias")
        );
        for unknown in [
            "label_emb.0.1.weight",
            "input_blocks.x.0.weight",
            "time_embed.1.weight",
        ] {
            assert_eq!(unet_name(unknown, 2), None, "{unknown}");
        }
    }

    #[test]
    fn vae_keys_follow_diffusers_conversion() {
        let cases = [
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.down.0.downsample.conv.bias",
                "encoder.down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "decoder.up.3.block.2.norm1.weight",
                "decoder.up_blocks.0.resnets.2.norm1.weight",
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
            ),
            (
                "decoder.mid.block_2.conv2.bias",
                "decoder.mid_block.resnets.1.conv2.bias",
            ),
            (
                "decoder.mid.attn_1.proj_out.weight",
                "decoder.mid_block.attentions.0.to_out.0.weight",
            ),
            (
                "decoder.mid.attn_1.norm.bias",
                "decoder.mid_block.attentions.0.group_norm.bias",
            ),
            ("decoder.norm_out.weight", "decoder.conv_norm_out.weight"),
            ("decoder.conv_in.weight", "decoder.conv_in.weight"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(vae_name(ldm, 4).as_deref(), Some(diffusers), "{ldm}");
        }
        assert_eq!(vae_name("decoder.up.4.block.0.conv1.weight", 4), None);
    }

    #[test]
    fn open_clip_in_proj_splits_into_thirds() {
        let layout = Layout {
            unet_layers_per_block: 2,
            vae_levels: 4,
            text: vec![TextEncoderKeys {
                part: Part::TextEncoder,
                prefix: OPEN_CLIP_PREFIX,
                layout: TextLayout::OpenClip { projection: false },
            }],
        };
        let key = "cond_stage_model.model.transformer.resblocks.3.attn.in_proj_weight";
        let map = map_keys([(key, &[3072usize, 1024][..])], &layout);
        let text = &map[&Part::TextEncoder];
        let k = &text["text_model.encoder.layers.3.self_attn.k_proj.weight"];
        assert_eq!(
            k,
            &Source::Rows {
                key: key.into(),
                start: 1024,
                len: 1024
            }
        );
        assert_eq!(text.len(), 3);
        let skipped = map_keys(
            [
                (
                    "cond_stage_model.model.text_projection",
                    &[1024usize, 1024][..],
                ),
                ("cond_stage_model.model.logit_scale", &[][..]),
                ("model_ema.num_updates", &[][..]),
            ],
            &layout,
        );
        assert!(skipped.is_empty());

        // SDXL's second encoder keeps its projection, transposed to a Linear weight.
        let layout = Layout {
            text: vec![TextEncoderKeys {
                part: Part::TextEncoder2,
                prefix: SDXL_OPEN_CLIP_PREFIX,
                layout: TextLayout::OpenClip { projection: true },
            }],
            ..layout
        };
        let key = "conditioner.embedders.1.model.text_projection";
        let map = map_keys([(key, &[1280usize, 1280][..])], &layout);
        let source = &map[&Part::TextEncoder2]["text_projection.weight"];
        assert_eq!(source, &Source::Transposed(key.into()));
    }

    #[test]
    fn hf_clip_keys_keep_or_drop_text_model() {
        for (text_model, key, name) in [
            (
                true,
                "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
                Some("text_model.encoder.layers.0.mlp.fc1.weight"),
            ),
            (
                false,
                "cond_stage_model.transformer.final_layer_norm.bias",
                Some("final_layer_norm.bias"),
            ),
            (
                true,
                "cond_stage_model.transformer.text_model.embeddings.position_ids",
                None,
            ),
        ] {
            let layout = Layout {
                unet_layers_per_block: 2,
                vae_levels: 4,
                text: vec![TextEncoderKeys {
                    part: Part::TextEncoder,
                    prefix: HF_CLIP_PREFIX,
                    layout: TextLayout::HfClip { text_model },
                }],
            };
            let map = map_keys([(key, &[4usize][..])], &layout);
            let got = map
                .get(&Part::TextEncoder)
                .and_then(|m| m.keys().next().cloned());
            assert_eq!(got.as_deref(), name, "{key}");
        }
    }
}
