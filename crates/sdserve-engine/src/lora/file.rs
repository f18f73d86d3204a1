//! One LoRA file read into layers: each patched weight's down and up
//! matrices (f32) and its scale. The scale is diffusers' PEFT `scaling`:
//! kohya files give each layer `alpha / rank` (diffusers converts their
//! `.alpha` keys to `network_alphas`, `get_peft_kwargs`); diffusers/PEFT files
//! give 1 (alpha = rank) unless their `lora_adapter_metadata` says otherwise.
//! Every key must be understood and every layer must land on a weight of the
//! model: a LoRA that silently patches nothing is an error naming the keys.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::names::{self, Component, Module, ModuleIndex, Role};
use crate::error::{EngineError, Result};
use crate::loader::{safetensors_metadata, tensor_shapes, MappedWeights};

/// One weight's low-rank update.
#[derive(Debug, Clone)]
pub struct LoraLayer {
    pub component: Component,
    /// The model's weight name (`down_blocks.0.attentions.0.proj_in.weight`).
    pub target: String,
    /// `(rank, in)` or `(rank, in, kh, kw)`.
    pub down: Tensor,
    /// `(out, rank)` or `(out, rank, 1, 1)`.
    pub up: Tensor,
    /// `alpha / rank` (kohya), or PEFT's `lora_alpha / r`.
    pub scale: f64,
}

#[derive(Default)]
struct Parts {
    down: Option<String>,
    up: Option<String>,
    alpha: Option<String>,
    kohya: bool,
}

/// Reads LoRA `name` at `path`, resolving its layers with `index` (the
/// model's weights of a component; `None` for a part the model lacks).
pub fn read_layers<'a>(
    name: &str,
    path: &Path,
    index: impl Fn(Component) -> Option<&'a ModuleIndex>,
    device: &Device,
) -> Result<Vec<LoraLayer>> {
    let bad = |message: String| EngineError::InvalidLora {
        name: name.to_string(),
        message,
    };
    let shapes = tensor_shapes(path).map_err(|e| bad(e.to_string()))?;
    let mut unknown = Vec::new();
    let mut groups: BTreeMap<(Component, String), (Module, Parts)> = BTreeMap::new();
    for (key, _, _) in &shapes {
        let Some(parsed) = names::parse(key) else {
            unknown.push(key.clone());
            continue;
        };
        let id = format!("{:?}", parsed.module);
        let (_, parts) = groups
            .entry((parsed.component, id))
            .or_insert_with(|| (parsed.module.clone(), Parts::default()));
        parts.kohya = parsed.kohya;
        let slot = match parsed.role {
            Role::Down => &mut parts.down,
            Role::Up => &mut parts.up,
            Role::Alpha => &mut parts.alpha,
        };
        *slot = Some(key.clone());
    }
    if !unknown.is_empty() {
        return Err(bad(format!(
            "keys of no supported LoRA format (kohya lora_down/lora_up/alpha, diffusers lora_A/lora_B; \
             DoRA, LoHa, LoKr and full diffs are not supported): {}",
            listing(&unknown)
        )));
    }
    if groups.is_empty() {
        return Err(bad("the file holds no LoRA layers".into()));
    }
    let peft =
        peft_scales(&safetensors_metadata(path).map_err(|e| bad(e.to_string()))?).map_err(bad)?;
    let file = MappedWeights::open(&[path.to_path_buf()]).map_err(|e| bad(e.to_string()))?;
    let load = |key: &str| {
        file.load(key, DType::F32, device)
            .map_err(|e| bad(format!("{key}: {}", crate::error::describe_candle(&e))))
    };
    let mut unmatched = Vec::new();
    let mut layers = Vec::with_capacity(groups.len());
    for ((component, _), (module, parts)) in groups {
        let (Some(down_key), Some(up_key)) = (&parts.down, &parts.up) else {
            let some = parts.down.or(parts.up).or(parts.alpha).unwrap_or_default();
            return Err(bad(format!(
                "{some}: the layer lacks its down or up matrix"
            )));
        };
        let Some(target) = index(component).and_then(|i| i.resolve(&module)) else {
            unmatched.push(down_key.clone());
            continue;
        };
        let down = load(down_key)?;
        let up = load(up_key)?;
        let rank = down.dims().first().copied().unwrap_or(0);
        if rank == 0 || up.dims().get(1) != Some(&rank) || !matches!(down.rank(), 2 | 4) {
            return Err(bad(format!(
                "{down_key} {:?} and {up_key} {:?} are not a rank-r pair",
                down.dims(),
                up.dims()
            )));
        }
        let scale = match (&parts.alpha, parts.kohya) {
            (Some(alpha_key), true) => {
                let alpha = load(alpha_key)?.flatten_all()?.to_vec1::<f32>()?;
                match alpha.as_slice() {
                    [a] if a.is_finite() => f64::from(*a) / rank as f64,
                    _ => return Err(bad(format!("{alpha_key}: not one finite number"))),
                }
            }
            (_, true) => 1.0,
            (_, false) => peft.get(&component).map_or(1.0, |s| s.scale(rank)),
        };
        layers.push(LoraLayer {
            component,
            target: target.to_string(),
            down,
            up,
            scale,
        });
    }
    if !unmatched.is_empty() {
        return Err(bad(format!(
            "layers that match no weight of this model (another model family?): {}",
            listing(&unmatched)
        )));
    }
    Ok(layers)
}

/// A component's PEFT `LoraConfig` as diffusers' `lora_adapter_metadata` stores it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PeftScale {
    alpha: f64,
    rslora: bool,
}

impl PeftScale {
    /// PEFT's `scaling`: `lora_alpha / r`, or `/ sqrt(r)` with rsLoRA.
    fn scale(&self, rank: usize) -> f64 {
        if self.rslora {
            self.alpha / (rank as f64).sqrt()
        } else {
            self.alpha / rank as f64
        }
    }
}

/// Per component, the scaling its `lora_adapter_metadata` config sets
/// (keys `unet.lora_alpha`, `text_encoder.use_rslora`...); what PEFT would
/// apply per module (alpha/rank patterns) or differently (DoRA) is refused.
fn peft_scales(
    metadata: &BTreeMap<String, String>,
) -> std::result::Result<HashMap<Component, PeftScale>, String> {
    let mut out = HashMap::new();
    let Some(raw) = metadata.get("lora_adapter_metadata") else {
        return Ok(out);
    };
    let config: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw)
        .map_err(|e| format!("lora_adapter_metadata is not a JSON object: {e}"))?;
    for (prefix, component) in [
        ("unet", Component::Unet),
        ("text_encoder", Component::TextEncoder),
        ("text_encoder_2", Component::TextEncoder2),
    ] {
        let get = |k: &str| config.get(&format!("{prefix}.{k}"));
        let Some(alpha) = get("lora_alpha") else {
            continue;
        };
        let alpha = alpha
            .as_f64()
            .filter(|a| a.is_finite())
            .ok_or_else(|| format!("{prefix}.lora_alpha is not a number"))?;
        for pattern in ["alpha_pattern", "rank_pattern"] {
            if get(pattern)
                .and_then(|p| p.as_object())
                .is_some_and(|p| !p.is_empty())
            {
                return Err(format!(
                    "{prefix}.{pattern} (per-module scaling) is not supported"
                ));
            }
        }
        if get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
            return Err(format!("{prefix}.use_dora: DoRA is not supported"));
        }
        let rslora = get("use_rslora").and_then(|v| v.as_bool()) == Some(true);
        out.insert(component, PeftScale { alpha, rslora });
    }
    Ok(out)
}

/// The first few of `keys`, then how many more.
fn listing(keys: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = keys
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        text.push_str(&format!(" and {} more", keys.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_metadata_sets_the_peft_scale() {
        let meta =
            |json: &str| BTreeMap::from([("lora_adapter_metadata".to_string(), json.to_string())]);
        let scales =
            peft_scales(&meta(r#"{"unet.lora_alpha": 8, "unet.r": 4, "text_encoder.lora_alpha": 4, "text_encoder.use_rslora": true}"#))
                .unwrap();
        assert_eq!(scales[&Component::Unet].scale(4), 2.0);
        assert_eq!(scales[&Component::TextEncoder].scale(4), 2.0);
        assert!(!scales.contains_key(&Component::TextEncoder2));
        let err = peft_scales(&meta(
            r#"{"unet.lora_alpha": 8, "unet.alpha_pattern": {"x": 2}}"#,
        ));
        assert!(err.unwrap_err().contains("alpha_pattern"));
        assert!(peft_scales(&BTreeMap::new()).unwrap().is_empty());
    }
}
