//! The LoRA folder (`--lora-dir`): a LoRA's name is its file stem, as A1111
//! names them, wherever it sits in the folder's subfolders (A1111 walks them
//! too; two files with one stem are refused as ambiguous, naming both). Only
//! `.safetensors` files are LoRAs; a name whose file is a pickle (`.pt`,
//! `.ckpt`, `.bin`, `.pth`) is refused saying why. Names are plain stems: no
//! separators, no `..`, so a request cannot reach outside the folder, and
//! symlinked subfolders are not followed (no loops). The folder is read on
//! each lookup (new files show up without a restart); A1111's short hash is
//! cached by path, size and mtime.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};
use crate::loader::safetensors_metadata;

const PICKLE_EXTENSIONS: [&str; 4] = ["pt", "ckpt", "bin", "pth"];

/// One LoRA of the folder.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraEntry {
    pub name: String,
    pub path: PathBuf,
    /// The file's `__metadata__` (kohya's `ss_*` training notes).
    pub metadata: BTreeMap<String, String>,
}

type HashKey = (PathBuf, u64, Option<SystemTime>);

/// The folder LoRAs are looked up in.
#[derive(Debug)]
pub struct LoraDir {
    dir: PathBuf,
    hashes: Mutex<HashMap<HashKey, String>>,
}

impl LoraDir {
    /// `dir` must be a readable folder.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::read_dir(dir).map_err(|source| EngineError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            hashes: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn files(&self, extensions: &[&str]) -> Vec<(String, PathBuf)> {
        crate::folder::files_by_stem(&self.dir, extensions)
    }

    /// The names of the folder's `.safetensors` files, sorted, each once.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .files(&["safetensors"])
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.dedup();
        names
    }

    /// Every LoRA with its metadata (a file whose header does not parse is
    /// listed with empty metadata; using it names the problem).
    pub fn list(&self) -> Vec<LoraEntry> {
        let mut files = self.files(&["safetensors"]);
        files.dedup_by(|a, b| a.0 == b.0);
        files
            .into_iter()
            .map(|(name, path)| {
                let metadata = safetensors_metadata(&path).unwrap_or_default();
                LoraEntry {
                    name,
                    path,
                    metadata,
                }
            })
            .collect()
    }

    /// The file of LoRA `name`.
    pub fn resolve(&self, name: &str) -> Result<PathBuf> {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && !name.contains(['/', '\\', '\0'])
            && name.len() <= 255;
        if plain {
            let matching: Vec<PathBuf> = self
                .files(&["safetensors"])
                .into_iter()
                .filter(|(stem, _)| stem == name)
                .map(|(_, path)| path)
                .collect();
            match matching.as_slice() {
                [path] => return Ok(path.clone()),
                [] => {}
                several => {
                    let paths: Vec<String> = several
                        .iter()
                        .map(|p| p.strip_prefix(&self.dir).unwrap_or(p).display().to_string())
                        .collect();
                    return Err(EngineError::InvalidLora {
                        name: name.to_string(),
                        message: format!(
                            "{} files are named {name}: {}; rename one",
                            several.len(),
                            paths.join(", ")
                        ),
                    });
                }
            }
            let pickle = self
                .files(&PICKLE_EXTENSIONS)
                .into_iter()
                .find(|(stem, _)| stem == name);
            if let Some((_, path)) = pickle {
                let file = path
                    .file_name()
                    .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
                return Err(EngineError::InvalidLora {
                    name: name.to_string(),
                    message: format!(
                        "{file} is a pickle, which can run code when loaded; only .safetensors LoRAs are read"
                    ),
                });
            }
        }
        Err(EngineError::UnknownLora {
            name: name.to_string(),
            available: self.names(),
        })
    }

    /// A1111's `Lora hashes` value: the first 12 hex digits of the sha256 of
    /// the file after its header (kohya's and the additional-networks
    /// extension's hash, `hashes.addnet_hash_safetensors`).
    pub fn short_hash(&self, path: &Path) -> Result<String> {
        let io = |source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
        if let Some(hash) = self.lock().get(&key) {
            return Ok(hash.clone());
        }
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(io)?;
        let offset = u64::from_le_bytes(len).saturating_add(8);
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let hex: String = hasher
            .finalize()
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        self.lock().insert(key, hex.clone());
        Ok(hex)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<HashKey, String>> {
        self.hashes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_stems_and_pickles_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("style.safetensors"), b"x").unwrap();
        std::fs::write(dir.path().join("old.pt"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let loras = LoraDir::open(dir.path()).unwrap();
        assert_eq!(loras.names(), vec!["style".to_string()]);
        assert!(loras.resolve("style").is_ok());
        let err = loras.resolve("old").unwrap_err().to_string();
        assert!(err.contains("pickle"), "{err}");
        for bad in ["../style", "sub/style", "", ".hidden", "missing"] {
            match loras.resolve(bad) {
                Err(EngineError::UnknownLora { available, .. }) => {
                    assert_eq!(available, vec!["style".to_string()])
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn subfolders_are_walked_and_ambiguous_names_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("characters/anime");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("hero.safetensors"), b"x").unwrap();
        std::fs::write(dir.path().join("style.safetensors"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("old")).unwrap();
        std::fs::write(dir.path().join("old/ancient.ckpt"), b"x").unwrap();
        let loras = LoraDir::open(dir.path()).unwrap();
        assert_eq!(loras.names(), vec!["hero".to_string(), "style".to_string()]);
        assert_eq!(loras.resolve("hero").unwrap(), sub.join("hero.safetensors"));
        assert_eq!(loras.list()[0].path, sub.join("hero.safetensors"));
        let err = loras.resolve("ancient").unwrap_err().to_string();
        assert!(err.contains("ancient.ckpt is a pickle"), "{err}");
        // A second "style" elsewhere makes the name ambiguous.
        std::fs::create_dir_all(dir.path().join("v2")).unwrap();
        std::fs::write(dir.path().join("v2/style.safetensors"), b"x").unwrap();
        let err = loras.resolve("style").unwrap_err().to_string();
        assert!(err.contains("2 files are named style"), "{err}");
        assert!(err.contains("v2/style.safetensors"), "{err}");
        assert_eq!(loras.names(), vec!["hero".to_string(), "style".to_string()]);
    }

    #[cfg(unix)]
    #[test]
    fn a_folder_linking_to_itself_is_not_walked_forever() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("style.safetensors"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
        let loras = LoraDir::open(dir.path()).unwrap();
        assert_eq!(loras.names(), vec!["style".to_string()]);
        assert!(loras.resolve("style").is_ok());
    }
}
