//! The models a server can serve, named as AUTOMATIC1111 names checkpoints
//! (`modules/sd_models.py`, `CheckpointInfo`): `name` is the path below the
//! models folder (`sub/model.safetensors`, or a diffusers folder's path),
//! `model_name` that without extension and with `/` turned into `_`, and the
//! `title` is `name [shorthash]` once the sha256 is known. A request may name a
//! model by any of A1111's ids (title, name, model_name, file stem, short hash
//! or full sha256); nothing else matches, so a typo is an error, not a
//! surprise model.
//!
//! Scanning reads directory entries and file sizes only; hashes come from the
//! [`HashStore`] (a cache, then a background thread), never from a request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::hashes::{FileKey, HashStore};
use crate::engine_api::ModelSource;

/// The A1111 layout: checkpoints in `<models-dir>/Stable-diffusion/`.
pub const A1111_SUBDIR: &str = "Stable-diffusion";

/// Deepest folder nesting a scan descends into (a guard against link loops).
const MAX_SCAN_DEPTH: usize = 8;

/// Single-file checkpoints the scan lists (pickles are never listed: the engine refuses them).
const CHECKPOINT_EXTENSION: &str = "safetensors";

/// One model the server may load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// A1111's `name`: the path below the models folder (`/`-separated), or
    /// the folder's or repo's own name for a `--model` outside it.
    pub name: String,
    /// A1111's `model_name`: `name` without its extension, `/` replaced by `_`.
    pub model_name: String,
    /// What the engine loads (`ModelSource::parse` takes it): a path or a hub repo id.
    pub source: String,
    /// The file whose sha256 is the model's hash: the checkpoint itself, or a
    /// diffusers folder's UNet weights; `None` for a hub repo id.
    pub hash_file: Option<FileKey>,
}

impl ModelEntry {
    /// A model known only by name (a backend installed directly, in tests and embedders).
    pub fn named(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            model_name: model_name_of(&name),
            source: name.clone(),
            name,
            hash_file: None,
        }
    }

    /// The entry for a `--model` given as a path or hub repo id (outside any models folder).
    pub fn from_source(source: &str) -> Self {
        let path = Path::new(source);
        if let ModelSource::Hub { .. } = ModelSource::parse(source) {
            return Self {
                model_name: model_name_of(source),
                name: source.to_string(),
                source: source.to_string(),
                hash_file: None,
            };
        }
        // The name as given (a symlink keeps its own name); `.` and `..` resolved.
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .or_else(|| {
                let full = path.canonicalize().ok()?;
                full.file_name().map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| source.to_string());
        Self {
            model_name: model_name_of(&name),
            name,
            source: source.to_string(),
            hash_file: hash_file_of(path),
        }
    }

    /// The file stem (A1111's `name_for_extra`).
    pub fn stem(&self) -> &str {
        let base = self.name.rsplit('/').next().unwrap_or(&self.name);
        base.strip_suffix(".safetensors").unwrap_or(base)
    }
}

/// A1111's `model_name`: `/` becomes `_`, and the extension goes.
fn model_name_of(name: &str) -> String {
    let flat = name.replace(['/', '\\'], "_");
    match flat.strip_suffix(&format!(".{CHECKPOINT_EXTENSION}")) {
        Some(stem) => stem.to_string(),
        None => flat,
    }
}

/// The file whose sha256 names a model at `path`: a single file is its own;
/// a diffusers folder's is `unet/diffusion_pytorch_model.safetensors`, else the
/// first `unet/*.safetensors` by name (a variant such as `.fp16`).
pub fn hash_file_of(path: &Path) -> Option<FileKey> {
    if path.is_file() {
        return FileKey::of(path);
    }
    let unet = path.join("unet");
    let standard = unet.join("diffusion_pytorch_model.safetensors");
    if standard.is_file() {
        return FileKey::of(&standard);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&unet)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == CHECKPOINT_EXTENSION) && p.is_file())
        .collect();
    files.sort();
    files.first().and_then(|p| FileKey::of(p))
}

/// Every model under `dir`: diffusers folders (with `model_index.json`; not
/// descended into) and `*.safetensors` files, recursively, sorted by name.
/// When `dir/Stable-diffusion` exists (A1111's layout), names inside it are
/// relative to it. Unreadable entries are skipped with a warning.
pub fn scan(dir: &Path) -> std::io::Result<Vec<ModelEntry>> {
    std::fs::read_dir(dir)?;
    let mut out = Vec::new();
    let a1111 = dir.join(A1111_SUBDIR);
    if a1111.is_dir() {
        walk(&a1111, &a1111, 0, &mut out);
    }
    walk(dir, dir, 0, &mut out);
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    Ok(out)
}

fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<ModelEntry>) {
    if depth > MAX_SCAN_DEPTH {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read a models folder");
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if dir == root && depth == 0 && path.file_name().is_some_and(|n| n == A1111_SUBDIR) {
            continue; // scanned on its own, with its own root
        }
        let Ok(relative) = path.strip_prefix(root) else {
            continue;
        };
        let name = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if path.is_dir() {
            if path.join("model_index.json").is_file() {
                out.push(entry_at(name, &path));
            } else {
                walk(root, &path, depth + 1, out);
            }
        } else if path.extension().is_some_and(|x| x == CHECKPOINT_EXTENSION) {
            out.push(entry_at(name, &path));
        }
    }
}

fn entry_at(name: String, path: &Path) -> ModelEntry {
    ModelEntry {
        model_name: model_name_of(&name),
        name,
        source: path.to_string_lossy().into_owned(),
        hash_file: hash_file_of(path),
    }
}

/// An entry with what is known of its hash, as listings show it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The model.
    pub entry: Arc<ModelEntry>,
    /// Its sha256 in lowercase hex, once hashed.
    pub sha256: Option<String>,
}

impl Listed {
    /// A1111's short hash: the first 10 hex digits of the sha256.
    pub fn short_hash(&self) -> Option<&str> {
        self.sha256.as_deref().and_then(|s| s.get(..10))
    }

    /// A1111's `title`: `name [shorthash]`, or the name while the hash is unknown.
    pub fn title(&self) -> String {
        match self.short_hash() {
            Some(short) => format!("{} [{short}]", self.entry.name),
            None => self.entry.name.clone(),
        }
    }

    /// Whether `id` names this model, by any of A1111's ids.
    pub fn is_named(&self, id: &str) -> bool {
        self.is_named_exactly(id) || id == self.entry.stem()
    }

    /// Whether `id` is this model's name, title, `model_name`, source or hash
    /// (every id but the bare file stem, which two models may share).
    fn is_named_exactly(&self, id: &str) -> bool {
        let e = &self.entry;
        if id == e.name || id == e.model_name || id == e.source {
            return true;
        }
        match (self.short_hash(), &self.sha256) {
            (Some(short), Some(full)) => {
                id == short
                    || id == full
                    || id == format!("{} [{short}]", e.name)
                    || id == format!("{} [{short}]", e.stem())
            }
            _ => false,
        }
    }
}

/// The scanned models plus hashes known so far; cheap to read.
pub struct Catalog {
    dir: Option<PathBuf>,
    extra: Vec<ModelEntry>,
    entries: std::sync::RwLock<Vec<Arc<ModelEntry>>>,
    hashes: Arc<HashStore>,
}

impl Catalog {
    /// A catalog of `dir`'s models (if any) plus `extra` entries (a `--model`
    /// outside the folder), hashing what the cache does not know in the background.
    pub fn open(
        dir: Option<PathBuf>,
        extra: Vec<ModelEntry>,
        hashes: Arc<HashStore>,
    ) -> std::io::Result<Self> {
        // Absolute, so listings' `filename`s are (as A1111's are).
        let dir = dir.map(|d| std::path::absolute(&d).unwrap_or(d));
        let catalog = Self {
            dir,
            extra,
            entries: Default::default(),
            hashes,
        };
        catalog.refresh()?;
        Ok(catalog)
    }

    /// A catalog of exactly `entries`, with no folder to scan.
    pub fn fixed(entries: Vec<ModelEntry>, hashes: Arc<HashStore>) -> Self {
        let catalog = Self {
            dir: None,
            extra: entries,
            entries: Default::default(),
            hashes,
        };
        catalog.install(Vec::new());
        catalog
    }

    /// Scans the folder again (A1111's refresh-checkpoints); new files are
    /// hashed in the background. Blocking (directory reads).
    pub fn refresh(&self) -> std::io::Result<usize> {
        let found = match &self.dir {
            Some(dir) => scan(dir)?,
            None => Vec::new(),
        };
        Ok(self.install(found))
    }

    /// Replaces the entries with `found` plus the extra ones; queues unknown hashes.
    fn install(&self, mut found: Vec<ModelEntry>) -> usize {
        for extra in &self.extra {
            if !found.iter().any(|e| e.name == extra.name) {
                found.push(extra.clone());
            }
        }
        let keys: Vec<FileKey> = found.iter().filter_map(|e| e.hash_file.clone()).collect();
        self.hashes.hash_in_background(keys);
        let count = found.len();
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) =
            found.into_iter().map(Arc::new).collect();
        count
    }

    /// The hash store (for the loader, which hashes what is still unknown).
    pub fn hashes(&self) -> &Arc<HashStore> {
        &self.hashes
    }

    /// Every model with its hash as known now, sorted by name.
    pub fn list(&self) -> Vec<Listed> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.iter().map(|e| self.listed(e.clone())).collect()
    }

    /// `entry` with its hash as known now.
    pub fn listed(&self, entry: Arc<ModelEntry>) -> Listed {
        let sha256 = entry.hash_file.as_ref().and_then(|k| self.hashes.known(k));
        Listed { entry, sha256 }
    }

    /// The model `id` names (A1111's ids: title, name, model_name, stem, hashes).
    ///
    /// A model's own name, title, `model_name` or hash wins over another's file
    /// stem: with `tiny` (a folder) and `old/tiny.safetensors` both listed,
    /// "tiny" is the folder.
    pub fn find(&self, id: &str) -> Option<Listed> {
        let list = self.list();
        let exact = list.iter().position(|l| l.is_named_exactly(id));
        let at = exact.or_else(|| list.iter().position(|l| l.is_named(id)))?;
        list.into_iter().nth(at)
    }

    /// The model named exactly `name` (the canonical name jobs carry).
    pub fn by_name(&self, name: &str) -> Option<Listed> {
        self.list().into_iter().find(|l| l.entry.name == name)
    }

    /// Every model's name, for "available:" lists in errors.
    pub fn names(&self) -> Vec<String> {
        self.list()
            .into_iter()
            .map(|l| l.entry.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// A folder's own name beats a checkpoint's stem that sorts first.
    #[test]
    fn exact_names_win_over_another_models_file_stem() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        touch(&d.join("old/tiny.safetensors"), b"checkpoint");
        touch(&d.join("tiny/model_index.json"), b"{}");
        touch(
            &d.join("tiny/unet/diffusion_pytorch_model.safetensors"),
            b"u",
        );
        let catalog =
            Catalog::open(Some(d.to_path_buf()), Vec::new(), HashStore::in_memory()).unwrap();
        assert_eq!(catalog.find("tiny").unwrap().entry.name, "tiny");
        assert_eq!(
            catalog.find("old_tiny").unwrap().entry.name,
            "old/tiny.safetensors"
        );
        assert_eq!(
            catalog.find("old/tiny.safetensors").unwrap().entry.name,
            "old/tiny.safetensors"
        );
    }

    #[test]
    fn scans_folders_checkpoints_and_the_a1111_layout() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        touch(&d.join("sd15/model_index.json"), b"{}");
        touch(
            &d.join("sd15/unet/diffusion_pytorch_model.safetensors"),
            b"u",
        );
        touch(&d.join("sd15/unet/extra.safetensors"), b"not a model");
        touch(&d.join("more/anime.safetensors"), b"a");
        touch(&d.join("Stable-diffusion/real.safetensors"), b"r");
        touch(&d.join("notes.txt"), b"x");
        touch(&d.join("old.ckpt"), b"pickle");
        let names: Vec<_> = scan(d).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            ["more/anime.safetensors", "real.safetensors", "sd15"]
        );
        let entries = scan(d).unwrap();
        assert_eq!(entries[0].model_name, "more_anime");
        assert_eq!(entries[0].stem(), "anime");
        let unet = entries[2].hash_file.as_ref().unwrap();
        assert!(unet
            .path
            .ends_with("unet/diffusion_pytorch_model.safetensors"));
    }

    #[test]
    fn a_model_outside_the_folder_is_named_by_its_path_or_repo_id() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        touch(
            &d.join("sd15/unet/diffusion_pytorch_model.safetensors"),
            b"u",
        );
        std::os::unix::fs::symlink(d.join("sd15"), d.join("alias")).unwrap();
        touch(&d.join("one.safetensors"), b"1");
        let folder = ModelEntry::from_source(&format!("{}/", d.join("alias").display()));
        assert_eq!((folder.name.as_str(), folder.stem()), ("alias", "alias"));
        let unet = folder.hash_file.unwrap();
        assert!(unet
            .path
            .ends_with("sd15/unet/diffusion_pytorch_model.safetensors"));
        let file = ModelEntry::from_source(d.join("one.safetensors").to_str().unwrap());
        assert_eq!((file.model_name.as_str(), file.stem()), ("one", "one"));
        assert_eq!(file.hash_file.unwrap().size, 1);
        let hub = ModelEntry::from_source("stabilityai/sd-turbo");
        assert_eq!(hub.name, "stabilityai/sd-turbo");
        assert_eq!(hub.model_name, "stabilityai_sd-turbo");
        assert!(hub.hash_file.is_none());
    }

    #[test]
    fn a1111_ids_name_a_model() {
        let listed = Listed {
            entry: Arc::new(ModelEntry {
                name: "sub/m.safetensors".into(),
                model_name: "sub_m".into(),
                source: "/x/sub/m.safetensors".into(),
                hash_file: None,
            }),
            sha256: Some("0123456789abcdef".into()),
        };
        assert_eq!(listed.title(), "sub/m.safetensors [0123456789]");
        for id in [
            "sub/m.safetensors [0123456789]",
            "sub/m.safetensors",
            "sub_m",
            "m",
            "m [0123456789]",
            "0123456789",
            "0123456789abcdef",
        ] {
            assert!(listed.is_named(id), "{id}");
        }
        for id in ["", "sub", "0123", "M", "sub/m.safetensors [abc]"] {
            assert!(!listed.is_named(id), "{id}");
        }
    }
}
