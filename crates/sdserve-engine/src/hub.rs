//! Models from the Hugging Face hub, kept in the standard HF cache
//! (`$HF_HOME/hub`, shared with Python tools). A model already in the cache
//! loads with no network access at all; `HF_HUB_OFFLINE=1` forbids downloads;
//! `HF_TOKEN` authenticates gated repos. Only configs, tokenizer files and
//! safetensors weights are fetched: never code, never pickles.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};

use crate::error::{EngineError, Result};
use crate::loader::component_weights;

/// The pipeline components sdserve needs, in diffusers' folder names (the
/// `_2` ones are SDXL's and absent from SD 1.x/2.x repos).
const COMPONENTS: [&str; 7] = [
    "unet",
    "vae",
    "text_encoder",
    "tokenizer",
    "scheduler",
    "text_encoder_2",
    "tokenizer_2",
];

/// Returns the local snapshot folder of `repo`, downloading what is missing.
pub fn resolve(repo: &str) -> Result<PathBuf> {
    let cache = Cache::from_env();
    let cached = cache.model(repo.to_string());
    if let Some(index) = cached.get("model_index.json") {
        let snapshot = index.parent().map(Path::to_path_buf).unwrap_or_default();
        if snapshot_complete(&snapshot) {
            tracing::info!(repo, path = %snapshot.display(), "using cached model");
            return Ok(snapshot);
        }
    }
    if offline() {
        return Err(EngineError::Hub {
            repo: repo.into(),
            message: "HF_HUB_OFFLINE is set and the model is not (completely) in the local cache"
                .into(),
        });
    }
    download(repo, &cache)
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// True when every component has a config and, where needed, weights that
/// the loader would accept (the same lookup `model.rs` uses); SDXL's second
/// text encoder and tokenizer when `model_index.json` names them.
fn snapshot_complete(dir: &Path) -> bool {
    let has_weights = |sub: &str, stem: &str| component_weights(&dir.join(sub), &[stem]).is_ok();
    let has_tokenizer = |sub: &str| {
        dir.join(sub).join("vocab.json").is_file() || dir.join(sub).join("tokenizer.json").is_file()
    };
    let has_encoder =
        |sub: &str| dir.join(sub).join("config.json").is_file() && has_weights(sub, "model");
    let second_needed = std::fs::read_to_string(dir.join("model_index.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|index| index.get("text_encoder_2").cloned())
        .is_some_and(|entry| entry.get(0).is_some_and(|lib| !lib.is_null()));
    has_tokenizer("tokenizer")
        && dir.join("scheduler/scheduler_config.json").is_file()
        && ["unet", "vae"]
            .iter()
            .all(|c| dir.join(c).join("config.json").is_file())
        && has_weights("unet", "diffusion_pytorch_model")
        && has_weights("vae", "diffusion_pytorch_model")
        && has_encoder("text_encoder")
        && (!second_needed || (has_encoder("text_encoder_2") && has_tokenizer("tokenizer_2")))
}

/// Picks the files sdserve loads from a repo listing: configs, tokenizer files
/// and one safetensors weight file per component (full precision when offered).
pub fn select_files(listing: &[String]) -> Vec<String> {
    let mut chosen = vec!["model_index.json".to_string()];
    for component in COMPONENTS {
        let prefix = format!("{component}/");
        let files: Vec<&String> = listing
            .iter()
            .filter(|f| f.starts_with(&prefix) && !f[prefix.len()..].contains('/'))
            .collect();
        for f in &files {
            if f.ends_with(".json") && !f.ends_with(".index.json") || f.ends_with(".txt") {
                chosen.push((*f).clone());
            }
        }
        let weights: Vec<&&String> = files
            .iter()
            .filter(|f| f.ends_with(".safetensors"))
            .collect();
        let full = weights.iter().find(|f| !f.ends_with(".fp16.safetensors"));
        if let Some(w) = full.or(weights.first()) {
            chosen.push((**w).clone());
        }
    }
    chosen
}

fn download(repo: &str, cache: &Cache) -> Result<PathBuf> {
    let hub = |message: String| EngineError::Hub {
        repo: repo.into(),
        message,
    };
    let token = std::env::var("HF_TOKEN").ok().or_else(|| cache.token());
    let api = ApiBuilder::from_cache(cache.clone())
        .with_token(token)
        .with_progress(true)
        .build()
        .map_err(|e| hub(e.to_string()))?;
    let api_repo = api.repo(Repo::model(repo.to_string()));
    let info = api_repo.info().map_err(|e| hub(e.to_string()))?;
    let listing: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    if !listing.iter().any(|f| f == "model_index.json") {
        return Err(hub(
            "not a diffusers repository (no model_index.json)".into()
        ));
    }
    let mut snapshot = None;
    for file in select_files(&listing) {
        let path = api_repo
            .get(&file)
            .map_err(|e| hub(format!("{file}: {e}")))?;
        if file == "model_index.json" {
            snapshot = path.parent().map(Path::to_path_buf);
        }
    }
    snapshot.ok_or_else(|| hub("download produced no snapshot folder".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_prefers_full_precision_safetensors_and_skips_pickles() {
        let listing: Vec<String> = [
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.bin",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "text_encoder/pytorch_model.bin",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "scheduler/scheduler_config.json",
            "safety_checker/model.safetensors",
            "sd_xl_base.ckpt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let chosen = select_files(&listing);
        assert!(chosen.contains(&"unet/diffusion_pytorch_model.safetensors".to_string()));
        assert!(!chosen.contains(&"unet/diffusion_pytorch_model.fp16.safetensors".to_string()));
        assert!(chosen.contains(&"vae/diffusion_pytorch_model.fp16.safetensors".to_string()));
        assert!(chosen
            .iter()
            .all(|f| !f.ends_with(".bin") && !f.ends_with(".ckpt")));
        assert!(!chosen.iter().any(|f| f.starts_with("safety_checker")));
        // SDXL's second text encoder and tokenizer come along when the repo has them.
        let sdxl: Vec<String> = [
            "model_index.json",
            "text_encoder_2/config.json",
            "text_encoder_2/model.safetensors",
            "text_encoder_2/model.fp16.safetensors",
            "tokenizer_2/merges.txt",
            "tokenizer_2/vocab.json",
            "tokenizer_2/special_tokens_map.json",
        ]
        .map(String::from)
        .to_vec();
        let chosen = select_files(&sdxl);
        for f in [
            "text_encoder_2/config.json",
            "text_encoder_2/model.safetensors",
            "tokenizer_2/merges.txt",
            "tokenizer_2/vocab.json",
            "tokenizer_2/special_tokens_map.json",
        ] {
            assert!(chosen.contains(&f.to_string()), "{f}");
        }
    }
}
