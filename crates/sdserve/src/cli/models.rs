//! The served models of `sdserve serve`: `--models-dir` scanned into a
//! catalog, `--model` as its default (a name in the folder, or a path or hub
//! repo id as before), and the loader each device's pool calls to turn a
//! catalog entry into an engine on that device whose infotexts name the model
//! and its short hash.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use sdserve_engine::png::ModelLabel;
use sdserve_engine::{DeviceSet, Engine, EngineOptions, ModelSource};
use sdserve_server::backend::Backend;
use sdserve_server::models::{
    Catalog, DevicePool, HashStore, Listed, Loader, ModelEntry, ModelPool, Models,
};

/// Characters of A1111's short hash.
const SHORT_HASH_LEN: usize = 10;

/// The catalog and default model for `--models-dir` and `--model`
/// (`default_model` when neither names one). Reads the folder; hashes come later,
/// cached in `hash_dir` (`--hash-cache-dir`, else the output directory). One
/// pool of at most `max_loaded` models per device of `devices`.
#[allow(clippy::too_many_arguments)]
pub fn models(
    models_dir: Option<&Path>,
    model: Option<&str>,
    default_model: &str,
    hash_dir: &Path,
    max_loaded: usize,
    options: EngineOptions,
    devices: &DeviceSet,
) -> anyhow::Result<Models> {
    std::fs::create_dir_all(hash_dir)
        .with_context(|| format!("creating the hash cache folder {}", hash_dir.display()))?;
    let hashes = HashStore::open(hash_dir);
    let (catalog, default) = match models_dir {
        Some(dir) => {
            let open = |extra| {
                Catalog::open(Some(dir.to_path_buf()), extra, hashes.clone())
                    .with_context(|| format!("reading --models-dir {}", dir.display()))
            };
            let scanned = open(Vec::new())?;
            match model {
                Some(id) if scanned.find(id).is_some() => (scanned, id.to_string()),
                Some(source) => {
                    let entry = ModelEntry::from_source(source);
                    let name = entry.name.clone();
                    (open(vec![entry])?, name)
                }
                None => {
                    let first = scanned.names().into_iter().next().with_context(|| {
                        format!(
                            "--models-dir {} holds no model (diffusers folders or *.safetensors) and no --model was given",
                            dir.display()
                        )
                    })?;
                    (scanned, first)
                }
            }
        }
        None => {
            let entry = ModelEntry::from_source(model.unwrap_or(default_model));
            let name = entry.name.clone();
            (Catalog::fixed(vec![entry], hashes.clone()), name)
        }
    };
    let pools = devices
        .resolve()
        .into_iter()
        .map(|device| {
            let options = EngineOptions {
                device,
                ..options.clone()
            };
            DevicePool {
                label: device.label(),
                pool: ModelPool::new(max_loaded, Some(loader(hashes.clone(), options))),
            }
        })
        .collect();
    Models::new(catalog, pools, &default).map_err(anyhow::Error::msg)
}

/// Loads a catalog entry with `options`; hashes its file first if the
/// background thread has not yet (on the loader thread, once: the hash is cached).
fn loader(hashes: Arc<HashStore>, options: EngineOptions) -> Loader {
    Arc::new(move |model: &Listed| {
        let sha256 = model.sha256.clone().or_else(|| {
            let key = model.entry.hash_file.as_ref()?;
            hashes
                .hash_now(key)
                .map_err(|e| tracing::warn!(file = %key.path.display(), error = %e, "cannot hash"))
                .ok()
        });
        let source = ModelSource::parse(&model.entry.source);
        let mut engine = Engine::load_with(&source, options.clone()).map_err(|e| e.to_string())?;
        engine.set_label(label(&model.entry, sha256.as_deref()));
        Ok(Arc::new(engine) as Arc<dyn Backend>)
    })
}

/// The hash cache of `sdserve generate`, which has no output directory:
/// `$XDG_CACHE_HOME/sdserve`, else `~/.cache/sdserve`; in memory only (every
/// run hashes) when neither can be used.
pub fn cli_hashes() -> Arc<HashStore> {
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|cache| cache.join("sdserve"));
    match dir {
        Some(dir) if std::fs::create_dir_all(&dir).is_ok() => HashStore::open(&dir),
        _ => HashStore::in_memory(),
    }
}

/// How infotexts name a model (the same in `serve` and `generate`): A1111's
/// file stem (a hub repo keeps its whole id) and the short hash, if known.
pub fn label(entry: &ModelEntry, sha256: Option<&str>) -> ModelLabel {
    let name = match ModelSource::parse(&entry.source) {
        ModelSource::Hub { repo } => repo,
        ModelSource::Dir(_) => entry.stem().to_string(),
    };
    ModelLabel {
        name,
        short_hash: sha256.and_then(|s| s.get(..SHORT_HASH_LEN).map(str::to_string)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_file_stem_or_the_whole_repo_id() {
        let hub = label(&ModelEntry::from_source("org/sd-turbo"), None);
        assert_eq!(hub, ModelLabel::named("org/sd-turbo"));
        let mut file = ModelEntry::named("sub/anime.safetensors");
        file.source = "/models/sub/anime.safetensors".into();
        let sha = "0123456789abcdef";
        assert_eq!(
            label(&file, Some(sha)),
            ModelLabel {
                name: "anime".into(),
                short_hash: Some("0123456789".into()),
            }
        );
    }
}
