//! LoRA key names and where they point in our model.
//!
//! kohya/A1111 names a layer by its diffusers path with every `.` turned into
//! `_` (`lora_unet_down_blocks_0_attentions_0_proj_in`), which A1111's
//! `networks.py` resolves by applying the same replacement to each module's
//! name; we do the same over the names the model loaded. diffusers/PEFT files
//! carry the dotted path itself. Text-encoder paths are compared with the
//! `text_model.` prefix of `CLIPTextModel`, whether or not the model's own
//! file has it (transformers 5 drops it).

use std::collections::HashMap;

/// The model part a LoRA layer patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Unet,
    /// SD's text encoder, SDXL's first (`lora_te_`/`lora_te1_`, `text_encoder.`).
    TextEncoder,
    /// SDXL's second (`lora_te2_`, `text_encoder_2.`).
    TextEncoder2,
}

/// Which tensor of a LoRA layer a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Down,
    Up,
    Alpha,
}

/// How a key names its layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Module {
    /// kohya: the path with `_` for `.` (after the `lora_unet_`/`lora_te_` prefix).
    Underscored(String),
    /// diffusers/PEFT: the dotted path.
    Dotted(String),
}

/// One key of a LoRA file, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub component: Component,
    pub module: Module,
    pub role: Role,
    /// A kohya key (alpha/rank scaling); PEFT files scale by 1.
    pub kohya: bool,
}

const KOHYA_PREFIXES: [(&str, Component); 4] = [
    ("lora_unet_", Component::Unet),
    ("lora_te1_", Component::TextEncoder),
    ("lora_te2_", Component::TextEncoder2),
    ("lora_te_", Component::TextEncoder),
];

const PEFT_PREFIXES: [(&str, Component); 3] = [
    ("unet.", Component::Unet),
    ("text_encoder_2.", Component::TextEncoder2),
    ("text_encoder.", Component::TextEncoder),
];

/// diffusers' loader takes no `.alpha` from these files (only kohya's get
/// converted with their alphas), so one here is refused as unknown.
const PEFT_SUFFIXES: [(&str, Role); 8] = [
    (".lora_A.weight", Role::Down),
    (".lora_B.weight", Role::Up),
    (".lora.down.weight", Role::Down),
    (".lora.up.weight", Role::Up),
    (".lora_linear_layer.down.weight", Role::Down),
    (".lora_linear_layer.up.weight", Role::Up),
    // diffusers' older attention processors: `attn1.processor.to_q_lora.down.weight`.
    ("_lora.down.weight", Role::Down),
    ("_lora.up.weight", Role::Up),
];

/// Understands `key`, or `None` for a name neither format uses (DoRA's
/// `dora_scale`, LoHa's `hada_*`, biases...): the caller reports those.
pub fn parse(key: &str) -> Option<Key> {
    for (prefix, component) in KOHYA_PREFIXES {
        if let Some(rest) = key.strip_prefix(prefix) {
            let (module, suffix) = rest.split_once('.')?;
            let role = match suffix {
                "lora_down.weight" => Role::Down,
                "lora_up.weight" => Role::Up,
                "alpha" => Role::Alpha,
                _ => return None,
            };
            return Some(Key {
                component,
                module: Module::Underscored(module.to_string()),
                role,
                kohya: true,
            });
        }
    }
    for (prefix, component) in PEFT_PREFIXES {
        if let Some(rest) = key.strip_prefix(prefix) {
            for (suffix, role) in PEFT_SUFFIXES {
                if let Some(path) = rest.strip_suffix(suffix) {
                    return Some(Key {
                        component,
                        module: Module::Dotted(attn_processor_path(path)),
                        role,
                        kohya: false,
                    });
                }
            }
            return None;
        }
    }
    None
}

/// diffusers' older attention-processor names (`attn1.processor.to_q_lora`)
/// as the projection's own path (`attn1.to_q`).
fn attn_processor_path(path: &str) -> String {
    let Some((head, tail)) = path.split_once(".processor.") else {
        return path.to_string();
    };
    let tail = match tail {
        "to_out" => "to_out.0",
        t => t,
    };
    format!("{head}.{tail}")
}

/// The weight tensors (linear and convolution) of one model part that a LoRA
/// may patch, by every name a LoRA file may give them.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// Canonical dotted module path -> the model's weight name.
    dotted: HashMap<String, String>,
    /// Underscored path -> the model's weight name (`None`: two paths collide).
    underscored: HashMap<String, Option<String>>,
    /// UNet only: resnets per down block, for kohya's SDXL names (its SDXL
    /// training runs on the SGM UNet: `input_blocks_4_1_...`).
    layers_per_block: Option<usize>,
}

/// kohya's SGM (LDM) UNet path, underscored, as the diffusers path it names,
/// underscored: diffusers' `_maybe_map_sgm_blocks_to_diffusers` and
/// `_convert_unet_lora_key`. `None` when `module` is no SGM path.
pub fn sgm_to_diffusers(module: &str, layers_per_block: usize) -> Option<String> {
    let per = layers_per_block + 1;
    let number = |s: &str| s.parse::<usize>().ok();
    let fixed = [
        ("input_blocks_0_0", "conv_in"),
        ("out_2", "conv_out"),
        ("time_embed_0", "time_embedding_linear_1"),
        ("time_embed_2", "time_embedding_linear_2"),
        ("label_emb_0_0", "add_embedding_linear_1"),
        ("label_emb_0_2", "add_embedding_linear_2"),
    ];
    for (sgm, diffusers) in fixed {
        if module == sgm {
            return Some(diffusers.to_string());
        }
    }
    // Resnet layers inside a block, by their SGM names.
    let resnet = |rest: &str| -> String {
        match rest {
            "in_layers_2" => "conv1",
            "out_layers_3" => "conv2",
            "emb_layers_1" => "time_emb_proj",
            "skip_connection" => "conv_shortcut",
            other => other,
        }
        .to_string()
    };
    let parts: Vec<&str> = module.splitn(3, '_').collect();
    let (kind, rest) = match parts.as_slice() {
        ["input", "blocks", rest] => ("input", *rest),
        ["middle", "block", rest] => ("middle", *rest),
        ["output", "blocks", rest] => ("output", *rest),
        _ => return None,
    };
    let mut fields = rest.splitn(3, '_');
    let i = number(fields.next()?)?;
    if kind == "middle" {
        let tail = rest.split_once('_')?.1;
        return Some(match i {
            0 => format!("mid_block_resnets_0_{}", resnet(tail)),
            1 => format!("mid_block_attentions_0_{tail}"),
            2 => format!("mid_block_resnets_1_{}", resnet(tail)),
            _ => return None,
        });
    }
    let j = number(fields.next()?)?;
    let tail = fields.next()?;
    if kind == "input" {
        let block = i.checked_sub(1)? / per;
        let layer = (i - 1) % per;
        if tail == "op" {
            return Some(format!("down_blocks_{block}_downsamplers_0_conv"));
        }
        return Some(match j {
            0 => format!("down_blocks_{block}_resnets_{layer}_{}", resnet(tail)),
            1 => format!("down_blocks_{block}_attentions_{layer}_{tail}"),
            _ => return None,
        });
    }
    let (block, layer) = (i / per, i % per);
    Some(match j {
        0 => format!("up_blocks_{block}_resnets_{layer}_{}", resnet(tail)),
        1 => format!("up_blocks_{block}_attentions_{layer}_{tail}"),
        2 => format!("up_blocks_{block}_upsamplers_0_{tail}"),
        _ => return None,
    })
}

impl ModuleIndex {
    /// Indexes the `.weight` names of `component` (only 2-D and 4-D weights:
    /// linear layers and convolutions, what a LoRA can patch).
    pub fn new<'a>(component: Component, weights: impl Iterator<Item = (&'a str, usize)>) -> Self {
        let mut index = Self::default();
        for (name, rank) in weights {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            if rank != 2 && rank != 4 {
                continue;
            }
            let canonical = match component {
                Component::Unet => module.to_string(),
                _ if module.starts_with("text_model.") || module == "text_projection" => {
                    module.to_string()
                }
                _ => format!("text_model.{module}"),
            };
            let underscored = canonical.replace('.', "_");
            index
                .underscored
                .entry(underscored)
                .and_modify(|v| *v = None)
                .or_insert_with(|| Some(name.to_string()));
            index.dotted.insert(canonical, name.to_string());
        }
        if component == Component::Unet {
            index.layers_per_block = index
                .dotted
                .keys()
                .filter_map(|m| m.strip_prefix("down_blocks.0.resnets."))
                .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
                .max()
                .map(|k| k + 1);
        }
        index
    }

    /// The model's weight name that `module` patches, if any.
    pub fn resolve(&self, module: &Module) -> Option<&str> {
        match module {
            Module::Underscored(m) => match self.underscored.get(m) {
                Some(found) => found.as_deref(),
                None => {
                    let diffusers = sgm_to_diffusers(m, self.layers_per_block?)?;
                    self.underscored.get(&diffusers)?.as_deref()
                }
            },
            Module::Dotted(m) => self
                .dotted
                .get(m)
                .or_else(|| self.dotted.get(&format!("text_model.{m}")))
                .map(String::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_parse() {
        let k = parse("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight").unwrap();
        assert_eq!(
            (k.component, k.role, k.kohya),
            (Component::TextEncoder2, Role::Up, true)
        );
        assert_eq!(
            k.module,
            Module::Underscored("text_model_encoder_layers_0_mlp_fc1".into())
        );
        let k = parse("unet.mid_block.attentions.0.proj_in.lora_A.weight").unwrap();
        assert_eq!(
            k.module,
            Module::Dotted("mid_block.attentions.0.proj_in".into())
        );
        assert_eq!((k.role, k.kohya), (Role::Down, false));
        let k = parse("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight");
        assert_eq!(
            k.unwrap().module,
            Module::Dotted("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0".into())
        );
        let k = parse("text_encoder.text_model.encoder.layers.1.self_attn.q_proj.lora.down.weight");
        assert_eq!(
            k.unwrap().module,
            Module::Dotted("text_model.encoder.layers.1.self_attn.q_proj".into())
        );
        for unknown in [
            "lora_unet_x.dora_scale",
            "lora_unet_x.hada_w1_a",
            "unet.x.lora_A.bias",
            "something.else",
        ] {
            assert!(parse(unknown).is_none(), "{unknown}");
        }
    }

    #[test]
    fn sgm_names_map_as_diffusers_maps_them() {
        let cases = [
            (
                "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
            ),
            (
                "input_blocks_8_0_in_layers_2",
                "down_blocks_2_resnets_1_conv1",
            ),
            ("input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
            ("input_blocks_0_0", "conv_in"),
            ("middle_block_1_proj_in", "mid_block_attentions_0_proj_in"),
            (
                "middle_block_2_emb_layers_1",
                "mid_block_resnets_1_time_emb_proj",
            ),
            (
                "output_blocks_5_1_transformer_blocks_1_ff_net_2",
                "up_blocks_1_attentions_2_transformer_blocks_1_ff_net_2",
            ),
            ("output_blocks_2_2_conv", "up_blocks_0_upsamplers_0_conv"),
            (
                "output_blocks_0_0_skip_connection",
                "up_blocks_0_resnets_0_conv_shortcut",
            ),
            ("label_emb_0_2", "add_embedding_linear_2"),
        ];
        for (sgm, diffusers) in cases {
            assert_eq!(
                sgm_to_diffusers(sgm, 2).as_deref(),
                Some(diffusers),
                "{sgm}"
            );
        }
        assert_eq!(
            sgm_to_diffusers("down_blocks_0_attentions_0_proj_in", 2),
            None
        );
        assert_eq!(sgm_to_diffusers("middle_block_7_proj_in", 2), None);
        // Resolved through the model's own underscored names.
        let names = [
            (
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                2,
            ),
            ("down_blocks.0.resnets.0.conv1.weight", 4),
            ("down_blocks.0.resnets.1.conv1.weight", 4),
        ];
        let index = ModuleIndex::new(Component::Unet, names.into_iter());
        let sgm = Module::Underscored("input_blocks_4_1_transformer_blocks_0_attn1_to_q".into());
        assert_eq!(
            index.resolve(&sgm),
            Some("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight")
        );
    }

    #[test]
    fn text_encoder_names_resolve_with_or_without_the_prefix() {
        let names = [
            ("encoder.layers.0.self_attn.q_proj.weight", 2),
            ("encoder.layers.0.layer_norm1.weight", 1),
        ];
        let index = ModuleIndex::new(Component::TextEncoder, names.into_iter());
        let kohya = Module::Underscored("text_model_encoder_layers_0_self_attn_q_proj".into());
        assert_eq!(
            index.resolve(&kohya),
            Some("encoder.layers.0.self_attn.q_proj.weight")
        );
        let peft = Module::Dotted("encoder.layers.0.self_attn.q_proj".into());
        assert_eq!(
            index.resolve(&peft),
            Some("encoder.layers.0.self_attn.q_proj.weight")
        );
        let norm = Module::Underscored("text_model_encoder_layers_0_layer_norm1".into());
        assert_eq!(index.resolve(&norm), None);
    }
}
