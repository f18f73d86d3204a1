//! Textual-inversion embeddings from a folder (A1111's `embeddings/`, the
//! server's `--embeddings-dir`): each `.safetensors` file is one embedding,
//! named after its stem and used by writing that name in a prompt.
//!
//! Layouts, as A1111 and diffusers' `load_textual_inversion` read them: one
//! tensor of shape `(vectors, width)` (any key, `emb_params` in A1111's own
//! files; a 1-D tensor is one vector), or SDXL's `clip_l` + `clip_g` pair.
//! A file whose widths do not fit this model's text encoders is skipped with
//! its reason (A1111 lists those as "skipped" too); anything else that is
//! wrong with a file (not safetensors, too large, bad values) is skipped the
//! same way, so one bad file never stops the server.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

/// Largest embedding file read: A1111's are a few kilobytes (75 vectors of
/// SDXL's two widths are 600 KB in f32).
const MAX_FILE_BYTES: u64 = 4 << 20;
/// At most this many vectors: a chunk holds 75 tokens.
const MAX_VECTORS: usize = 75;

/// One embedding: its vectors for each of the model's text encoders, in the
/// encoders' order and dtype.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub name: String,
    pub vectors: usize,
    pub per_encoder: Vec<Tensor>,
}

/// The embeddings a folder holds for one model, and the files it skipped.
#[derive(Debug, Clone, Default)]
pub struct EmbeddingLibrary {
    pub loaded: BTreeMap<String, Embedding>,
    /// File stem -> why it was not loaded.
    pub skipped: BTreeMap<String, String>,
}

/// An embedding as listings show it (no tensors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingInfo {
    pub name: String,
    pub vectors: usize,
    /// Width of its vectors for the first text encoder.
    pub width: usize,
}

/// What a library holds, for listings: loaded embeddings and skipped files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbeddingList {
    pub loaded: Vec<EmbeddingInfo>,
    /// File stem -> why it was not loaded.
    pub skipped: BTreeMap<String, String>,
}

impl EmbeddingLibrary {
    /// The library as plain data.
    pub fn list(&self) -> EmbeddingList {
        EmbeddingList {
            loaded: self
                .loaded
                .values()
                .map(|e| EmbeddingInfo {
                    name: e.name.clone(),
                    vectors: e.vectors,
                    width: e.per_encoder.first().map_or(0, |t| t.dim(1).unwrap_or(0)),
                })
                .collect(),
            skipped: self.skipped.clone(),
        }
    }

    /// Reads every `.safetensors` file in `dir` for encoders of `widths`
    /// (one width for SD 1.x/2.x, two for SDXL). Fails only when the folder
    /// cannot be listed.
    pub fn load(
        dir: &Path,
        widths: &[usize],
        dtype: DType,
        device: &Device,
    ) -> std::io::Result<Self> {
        let mut library = Self::default();
        std::fs::read_dir(dir)?;
        // Subfolders too, as A1111 walks them; a stem two files share is
        // skipped, naming both, rather than one of them picked.
        let files = crate::folder::files_by_stem(dir, &["safetensors"]);
        for (i, (name, path)) in files.iter().enumerate() {
            let name = name.clone();
            let twins: Vec<&std::path::PathBuf> = files
                .iter()
                .filter(|(other, _)| *other == name)
                .map(|(_, p)| p)
                .collect();
            if twins.len() > 1 {
                if files[..i].iter().all(|(other, _)| *other != name) {
                    let paths: Vec<String> = twins
                        .iter()
                        .map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string())
                        .collect();
                    let why = format!("{} files have this name: {}", twins.len(), paths.join(", "));
                    library.skipped.insert(name, why);
                }
                continue;
            }
            match read_embedding(path, widths, dtype, device) {
                Ok(per_encoder) => {
                    let vectors = per_encoder.first().map_or(0, |t| t.dim(0).unwrap_or(0));
                    library.loaded.insert(
                        name.clone(),
                        Embedding {
                            name,
                            vectors,
                            per_encoder,
                        },
                    );
                }
                Err(why) => {
                    library.skipped.insert(name, why);
                }
            }
        }
        Ok(library)
    }
}

/// The vectors of one file for encoders of `widths`, or why it cannot serve.
fn read_embedding(
    path: &Path,
    widths: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Vec<Tensor>, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "{size} bytes; an embedding file is at most {MAX_FILE_BYTES}"
        ));
    }
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| format!("not a readable safetensors file: {e}"))?;
    let pick = |t: &Tensor| -> Result<Tensor, String> {
        let t = t.to_dtype(DType::F32).map_err(|e| e.to_string())?;
        let t = match t.rank() {
            1 => t.unsqueeze(0).map_err(|e| e.to_string())?,
            2 => t,
            r => {
                return Err(format!(
                    "a tensor of rank {r}; embeddings are (vectors, width)"
                ))
            }
        };
        Ok(t)
    };
    let parts: Vec<Tensor> = match widths {
        [_] => match tensors.len() {
            1 => vec![pick(tensors.values().next().ok_or("empty file")?)?],
            n => {
                return Err(format!(
                    "{n} tensors ({}); an SD 1.x/2.x embedding has one",
                    tensors.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            }
        },
        [_, _] => match (tensors.get("clip_l"), tensors.get("clip_g")) {
            (Some(l), Some(g)) => vec![pick(l)?, pick(g)?],
            _ => return Err("an SDXL embedding holds `clip_l` and `clip_g`".into()),
        },
        _ => return Err("this model's text encoders take no embeddings".into()),
    };
    let count = parts[0].dim(0).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(parts.len());
    for (part, &width) in parts.iter().zip(widths) {
        let (n, w) = part.dims2().map_err(|e| e.to_string())?;
        if w != width {
            return Err(format!(
                "vectors of width {w}; this model's text encoder takes {width}"
            ));
        }
        if n != count || n == 0 || n > MAX_VECTORS {
            return Err(format!(
                "{n} vectors; an embedding has 1 to {MAX_VECTORS}, the same for each encoder"
            ));
        }
        let finite = part
            .abs()
            .and_then(|a| a.max_keepdim(0))
            .and_then(|a| a.max_keepdim(1))
            .and_then(|a| a.flatten_all())
            .and_then(|a| a.to_vec1::<f32>())
            .map_err(|e| e.to_string())?
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err("non-finite values".into());
        }
        out.push(
            part.to_dtype(dtype)
                .and_then(|t| t.to_device(device))
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn write(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) {
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, dir.join(name)).unwrap();
    }

    #[test]
    fn loads_the_layouts_and_skips_what_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let v = |n: usize, w: usize| Tensor::ones((n, w), DType::F32, &dev).unwrap();
        write(dir.path(), "style.safetensors", &[("emb_params", v(2, 8))]);
        write(
            dir.path(),
            "one.safetensors",
            &[("*", Tensor::ones(8, DType::F32, &dev).unwrap())],
        );
        write(dir.path(), "wide.safetensors", &[("emb_params", v(2, 16))]);
        write(
            dir.path(),
            "two.safetensors",
            &[("a", v(1, 8)), ("b", v(1, 8))],
        );
        write(
            dir.path(),
            "xl.safetensors",
            &[("clip_l", v(3, 8)), ("clip_g", v(3, 12))],
        );
        std::fs::write(dir.path().join("junk.safetensors"), b"not a file").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();

        let sd = EmbeddingLibrary::load(dir.path(), &[8], DType::F32, &dev).unwrap();
        assert_eq!(sd.loaded.keys().collect::<Vec<_>>(), ["one", "style"]);
        assert_eq!(
            (sd.loaded["style"].vectors, sd.loaded["one"].vectors),
            (2, 1)
        );
        assert!(sd.skipped["wide"].contains("width 16"), "{:?}", sd.skipped);
        assert!(sd.skipped["two"].contains("2 tensors"));
        assert!(sd.skipped["xl"].contains("2 tensors"));
        assert!(sd.skipped["junk"].contains("safetensors"));

        let xl = EmbeddingLibrary::load(dir.path(), &[8, 12], DType::F32, &dev).unwrap();
        assert_eq!(xl.loaded.keys().collect::<Vec<_>>(), ["xl"]);
        assert_eq!(xl.loaded["xl"].per_encoder[1].dims(), [3, 12]);
        assert!(xl.skipped["style"].contains("clip_l"));
    }

    #[test]
    fn subfolders_are_read_and_shared_names_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let v = |n: usize| Tensor::ones((n, 8), DType::F32, &dev).unwrap();
        for sub in ["styles/old", "styles/new", "people"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        write(
            &dir.path().join("people"),
            "hero.safetensors",
            &[("emb_params", v(2))],
        );
        write(
            &dir.path().join("styles/old"),
            "ink.safetensors",
            &[("emb_params", v(1))],
        );
        write(
            &dir.path().join("styles/new"),
            "ink.safetensors",
            &[("emb_params", v(3))],
        );
        let lib = EmbeddingLibrary::load(dir.path(), &[8], DType::F32, &dev).unwrap();
        assert_eq!(lib.loaded.keys().collect::<Vec<_>>(), ["hero"]);
        let why = &lib.skipped["ink"];
        assert!(why.contains("2 files have this name"), "{why}");
        assert!(why.contains("styles/new/ink.safetensors"), "{why}");
    }
}
