//! Finding and checking weight files. Safetensors only: pickle checkpoints
//! (`.ckpt`, `.pt`, `.pth`, `.bin`) are refused because unpickling runs code.
//!
//! Every safetensors header is validated here before candle memory-maps the
//! file, so a truncated or malformed file gives an error naming the file and
//! the tensor instead of a panic deep inside a layer constructor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use serde::Deserialize;

use crate::alloc::MappedFile;
use crate::error::{EngineError, Result};

/// File extensions of pickle-based checkpoints, which can run code on load.
const PICKLE_EXTENSIONS: [&str; 4] = ["ckpt", "pt", "pth", "bin"];

/// Largest safetensors header accepted (the format's own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Refuses `path` when it is a pickle checkpoint, explaining what to use instead.
pub fn refuse_pickle(path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if PICKLE_EXTENSIONS.contains(&ext.as_str()) {
        return Err(EngineError::UnsafeFormat {
            path: path.to_path_buf(),
            reason: format!(
                ".{ext} files are Python pickles, which can run arbitrary code when loaded; \
                 sdserve loads only .safetensors. Convert the checkpoint to safetensors \
                 (e.g. with diffusers' save_pretrained(..., safe_serialization=True)) or \
                 download the safetensors version of the model"
            ),
        });
    }
    Ok(())
}

/// The weight files of one pipeline component (`unet/`, `vae/`, `text_encoder/`).
///
/// Prefers `<stem>.safetensors` as diffusers does by default, then the
/// `<stem>.fp16.safetensors` variant, then shards listed in an index file.
pub fn component_weights(dir: &Path, stems: &[&str]) -> Result<Vec<PathBuf>> {
    for stem in stems {
        for name in [
            format!("{stem}.safetensors"),
            format!("{stem}.fp16.safetensors"),
        ] {
            let path = dir.join(&name);
            if path.is_file() {
                return Ok(vec![path]);
            }
        }
        for name in [
            format!("{stem}.safetensors.index.json"),
            format!("{stem}.safetensors.index.fp16.json"),
            format!("{stem}.fp16.safetensors.index.json"),
        ] {
            let index = dir.join(&name);
            if index.is_file() {
                return shards_from_index(&index);
            }
        }
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EngineError::invalid_model(dir, format!("cannot list folder: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    if let Some(pickle) = entries.iter().find(|p| refuse_pickle(p).is_err()) {
        refuse_pickle(pickle)?;
    }
    Err(EngineError::invalid_model(
        dir,
        format!(
            "no weights found: expected {}.safetensors",
            stems.join(".safetensors or ")
        ),
    ))
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    let parsed: ShardIndex = crate::config::read_json(index)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = parsed.weight_map.values().map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    for f in &files {
        refuse_pickle(f)?;
        if f.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains('/') || n.contains(".."))
        {
            return Err(EngineError::invalid_model(
                index,
                "shard name escapes the folder",
            ));
        }
    }
    Ok(files)
}

#[derive(Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// Names of the tensors in a checked safetensors file.
pub type TensorNames = Vec<String>;

/// Where one tensor's bytes lie in its file, after validation.
#[derive(Debug, Clone)]
struct TensorEntry {
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range within the file.
    start: usize,
    end: usize,
}

/// Checks the header of a safetensors file against its size; returns tensor names.
pub fn validate_safetensors(path: &Path) -> Result<TensorNames> {
    Ok(read_header(path)?.into_keys().collect())
}

/// Bytes the tensors of checked safetensors `files` take once converted to
/// `dtype` (what the loaded model holds), from their headers alone.
pub fn runtime_bytes(files: &[PathBuf], dtype: DType) -> Result<u64> {
    let mut total = 0u64;
    for path in files {
        for entry in read_header(path)?.values() {
            let elems: u64 = entry.shape.iter().map(|d| *d as u64).product();
            let size = if entry.dtype.is_float() {
                dtype.size_in_bytes()
            } else {
                entry.dtype.size_in_bytes()
            };
            total = total.saturating_add(elems.saturating_mul(size as u64));
        }
    }
    Ok(total)
}

/// Parses and checks a safetensors header: every tensor's dtype, shape and
/// byte range must be consistent with each other and with the file size.
fn read_header(path: &Path) -> Result<HashMap<String, TensorEntry>> {
    let (header, file_len) = read_header_bytes(path)?;
    parse_entries(&header, file_len).map_err(|msg| EngineError::invalid_model(path, msg))
}

/// The `__metadata__` string map of a checked safetensors file (kohya's
/// `ss_*` training notes, diffusers' `lora_adapter_metadata`); empty when absent.
pub fn safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let (header, file_len) = read_header_bytes(path)?;
    let bad = |msg: String| EngineError::invalid_model(path, msg);
    parse_entries(&header, file_len).map_err(bad)?;
    let mut entries: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    Ok(match entries.remove("__metadata__") {
        Some(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    })
}

/// The JSON header bytes of a safetensors file (length prefix checked
/// against the file size) and the file's length.
fn read_header_bytes(path: &Path) -> Result<(Vec<u8>, u64)> {
    refuse_pickle(path)?;
    let bad = |msg: String| EngineError::invalid_model(path, msg);
    let mut file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let file_len = file
        .metadata()
        .map_err(|e| bad(format!("cannot stat: {e}")))?
        .len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| bad(too_short(file_len)))?;
    let header_len = header_len(len_bytes, file_len).map_err(bad)?;
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(format!("cannot read header: {e}")))?;
    Ok((header, file_len))
}

/// Checks a whole safetensors file held in memory (the pure core of
/// [`validate_safetensors`], the same checks and messages): the length prefix,
/// the JSON header, and every tensor against the data that follows. Errors
/// name the file as `(in memory)`.
pub fn parse_header(file: &[u8]) -> Result<TensorNames> {
    let bad = |msg: String| EngineError::invalid_model("(in memory)", msg);
    let file_len = file.len() as u64;
    let (len_bytes, rest) = file
        .split_first_chunk::<8>()
        .ok_or_else(|| bad(too_short(file_len)))?;
    let header_len = header_len(*len_bytes, file_len).map_err(bad)?;
    let header = rest.get(..header_len as usize).ok_or_else(|| {
        bad(format!(
            "cannot read header: {header_len} bytes past the end"
        ))
    })?;
    Ok(parse_entries(header, file_len)
        .map_err(bad)?
        .into_keys()
        .collect())
}

fn too_short(file_len: u64) -> String {
    format!("truncated: {file_len} bytes is too short for a safetensors header")
}

/// The header length the 8-byte little-endian prefix declares, if the file
/// (of `file_len` bytes, at least 8) can hold it.
fn header_len(len_bytes: [u8; 8], file_len: u64) -> std::result::Result<u64, String> {
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES || header_len > file_len.saturating_sub(8) {
        return Err(format!(
            "header length {header_len} is larger than the file ({file_len} bytes): truncated or not a safetensors file"
        ));
    }
    Ok(header_len)
}

/// Parses the JSON `header` of a file of `file_len` bytes and checks each
/// tensor's dtype, shape and byte range.
fn parse_entries(
    header: &[u8],
    file_len: u64,
) -> std::result::Result<HashMap<String, TensorEntry>, String> {
    let mut entries: HashMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("header is not valid JSON: {e}"))?;
    entries.remove("__metadata__");
    let data_start = 8 + header.len() as u64;
    let data_len = file_len - data_start;
    let mut tensors = HashMap::with_capacity(entries.len());
    for (name, value) in entries {
        let info: TensorInfo = serde_json::from_value(value)
            .map_err(|e| format!("tensor {name}: malformed entry: {e}"))?;
        let elem_size = dtype_size(&info.dtype)
            .ok_or_else(|| format!("tensor {name}: unknown dtype {:?}", info.dtype))?;
        let dtype = match info.dtype.as_str() {
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F32" => DType::F32,
            "F64" => DType::F64,
            "I64" if name.ends_with("position_ids") => DType::I64,
            // LDM's EMA step counter, kept in many single-file checkpoints; never loaded.
            "I32" if name.ends_with("num_updates") => DType::I32,
            "I64" if name.ends_with("num_updates") => DType::I64,
            _ => DType::U8,
        };
        if dtype == DType::U8 {
            return Err(format!(
                "tensor {name}: dtype {} where floating-point weights (F16, BF16, F32) are expected",
                info.dtype
            ));
        }
        let (begin, end) = info.data_offsets;
        if begin > end || end > data_len {
            return Err(format!(
                "tensor {name}: data offsets {begin}..{end} are outside the {data_len} data bytes (file truncated?)"
            ));
        }
        let elems = info
            .shape
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d as u64));
        if elems.and_then(|n| n.checked_mul(elem_size)) != Some(end - begin) {
            return Err(format!(
                "tensor {name}: shape {:?} of {} does not match its {} data bytes",
                info.shape,
                info.dtype,
                end - begin
            ));
        }
        let entry = TensorEntry {
            dtype,
            shape: info.shape,
            start: (data_start + begin) as usize,
            end: (data_start + end) as usize,
        };
        tensors.insert(name, entry);
    }
    // Tensors may later own their bytes in place (`MappedWeights::adopt`):
    // two must never share any, as the safetensors library also insists.
    let mut ranges: Vec<(&String, &TensorEntry)> = tensors.iter().collect();
    ranges.sort_by_key(|(name, e)| (e.start, e.end, *name));
    for pair in ranges.windows(2) {
        let ((a, first), (b, second)) = (pair[0], pair[1]);
        if second.start < first.end {
            return Err(format!("tensors {a} and {b} overlap in the file"));
        }
    }
    Ok(tensors)
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "F32" | "I32" | "U32" => 4,
        "F64" | "I64" | "U64" => 8,
        _ => return None,
    })
}

/// Validates and memory-maps weight files as a VarBuilder converting to `dtype`.
pub fn var_builder(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<(VarBuilder<'static>, TensorNames)> {
    let weights = MappedWeights::open(files)?;
    let names = weights.index.keys().cloned().collect();
    Ok((
        VarBuilder::from_backend(Box::new(weights), dtype, device.clone()),
        names,
    ))
}

/// Name, shape and dtype of each tensor of a checked safetensors file (the
/// single-file loader maps names and derives configs from these).
pub(crate) fn tensor_shapes(path: &Path) -> Result<Vec<(String, Vec<usize>, DType)>> {
    let header = read_header(path)?;
    Ok(header
        .into_iter()
        .map(|(name, e)| (name, e.shape, e.dtype))
        .collect())
}

/// Memory-mapped safetensors files (copy-on-write, see [`crate::alloc`]).
///
/// On the CPU a tensor whose runtime dtype is the file's is not copied: its
/// storage is the mapping's pages, so loading costs what touching them costs.
/// Any other tensor is converted and the pages it came from are released
/// straight after, so loading never holds a whole mapped file and its
/// converted copy at once: peak memory stays near the model's own size.
pub(crate) struct MappedWeights {
    maps: Vec<MappedFile>,
    /// Tensor name -> (index into `maps`, where its bytes are).
    index: HashMap<String, (usize, TensorEntry)>,
    /// Tensors already handed out as mapped pages: a second request copies,
    /// so no two tensors ever share a buffer.
    adopted: Mutex<HashSet<String>>,
}

impl MappedWeights {
    /// Validates and maps `files` (their tensor names must not collide).
    pub(crate) fn open(files: &[PathBuf]) -> Result<Self> {
        let mut maps = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let header = read_header(path)?;
            let file = std::fs::File::open(path)
                .map_err(|e| EngineError::invalid_model(path, format!("cannot open: {e}")))?;
            let len = file
                .metadata()
                .ok()
                .and_then(|m| usize::try_from(m.len()).ok())
                .ok_or_else(|| EngineError::invalid_model(path, "cannot read its size"))?;
            // The header was checked against this size above.
            let map = MappedFile::open(&file, len)
                .map_err(|e| EngineError::invalid_model(path, format!("cannot memory-map: {e}")))?;
            maps.push(map);
            index.extend(header.into_iter().map(|(name, entry)| (name, (i, entry))));
        }
        Ok(Self {
            maps,
            index,
            adopted: Mutex::new(HashSet::new()),
        })
    }

    /// Tensor `name` converted to `dtype` on `device`.
    pub(crate) fn load(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let (file, entry) =
            self.index
                .get(name)
                .ok_or_else(|| candle_core::Error::CannotFindTensor {
                    path: name.to_string(),
                })?;
        let map = &self.maps[*file];
        let mut adopted = self.adopted.lock().unwrap_or_else(|e| e.into_inner());
        let owned_by_a_tensor = adopted.contains(name);
        if dtype == entry.dtype && device.is_cpu() && !owned_by_a_tensor {
            if let Some(tensor) = adopt(map, entry) {
                adopted.insert(name.to_string());
                return tensor;
            }
        }
        // A tensor asked for again after its pages were adopted is copied
        // from them (weights are never written in place, so they still hold
        // the file's values); otherwise the file may have shrunk since its
        // header was checked.
        let bytes = map.bytes(entry.start, entry.end).ok_or_else(|| {
            candle_core::Error::Msg(format!("tensor {name}: file changed while loading"))
        })?;
        let tensor = if (entry.dtype, dtype) == (DType::F32, DType::BF16) && device.is_cpu() {
            // Straight to bf16, on every thread (candle's path copies the f32
            // bytes first, then converts on one).
            let values = crate::bf16_gemm::bf16_from_f32_bytes(bytes);
            Tensor::from_vec(values, entry.shape.as_slice(), device)?
        } else {
            Tensor::from_raw_buffer(bytes, entry.dtype, &entry.shape, device)?.to_dtype(dtype)?
        };
        // Pages a tensor owns stay mapped.
        if !owned_by_a_tensor {
            map.dont_need(entry.start, entry.end);
        }
        Ok(tensor)
    }
}

/// The tensor over the mapping's own pages, or None where it must be copied
/// (the allocator is not installed, a dtype without a Rust element type here,
/// misaligned bytes).
fn adopt(map: &MappedFile, entry: &TensorEntry) -> Option<candle_core::Result<Tensor>> {
    fn over<T: candle_core::WithDType>(
        map: &MappedFile,
        entry: &TensorEntry,
    ) -> Option<candle_core::Result<Tensor>> {
        let count = entry.shape.iter().product::<usize>();
        // SAFETY: every bit pattern is a valid float of these types, and the
        // stretch is this tensor's alone: tensors do not overlap (checked
        // with the header) and `MappedWeights::adopted` hands it out once.
        let data = unsafe { map.adopt::<T>(entry.start, count) }?;
        Some(Tensor::from_vec(data, entry.shape.as_slice(), &Device::Cpu))
    }
    match entry.dtype {
        DType::F32 => over::<f32>(map, entry),
        DType::F16 => over::<half::f16>(map, entry),
        DType::BF16 => over::<half::bf16>(map, entry),
        _ => None,
    }
}

impl SimpleBackend for MappedWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, dtype, device)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            });
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn header_file(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data));
        v
    }

    #[test]
    fn pickles_are_refused_with_the_reason() {
        for ext in ["ckpt", "pt", "pth", "bin", "CKPT"] {
            let err = refuse_pickle(Path::new(&format!("model.{ext}"))).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("pickle") && msg.contains("safetensors"),
                "{msg}"
            );
        }
        assert!(refuse_pickle(Path::new("model.safetensors")).is_ok());
    }

    #[test]
    fn malformed_files_name_file_and_tensor() {
        let dir = tempdir();
        let good = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let ok = write(&dir, "ok.safetensors", &header_file(good, 8));
        assert_eq!(validate_safetensors(&ok).unwrap(), vec!["w".to_string()]);

        let truncated = write(&dir, "trunc.safetensors", &header_file(good, 4));
        let msg = validate_safetensors(&truncated).unwrap_err().to_string();
        assert!(
            msg.contains("trunc.safetensors") && msg.contains("tensor w"),
            "{msg}"
        );

        let mut huge = header_file(good, 8);
        huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let huge = write(&dir, "huge.safetensors", &huge);
        assert!(validate_safetensors(&huge)
            .unwrap_err()
            .to_string()
            .contains("larger than the file"));

        let shape = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        let shape = write(&dir, "shape.safetensors", &header_file(shape, 8));
        assert!(validate_safetensors(&shape)
            .unwrap_err()
            .to_string()
            .contains("shape [3]"));

        let dtype = r#"{"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#;
        let dtype = write(&dir, "dtype.safetensors", &header_file(dtype, 8));
        assert!(validate_safetensors(&dtype)
            .unwrap_err()
            .to_string()
            .contains("unknown dtype"));

        let int = r#"{"w":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#;
        let int = write(&dir, "int.safetensors", &header_file(int, 8));
        assert!(validate_safetensors(&int)
            .unwrap_err()
            .to_string()
            .contains("tensor w: dtype I32"));

        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let overlap = write(&dir, "overlap.safetensors", &header_file(overlap, 8));
        assert!(validate_safetensors(&overlap)
            .unwrap_err()
            .to_string()
            .contains("tensors a and b overlap"));

        let tiny = write(&dir, "tiny.safetensors", b"abc");
        assert!(validate_safetensors(&tiny)
            .unwrap_err()
            .to_string()
            .contains("too short"));

        let json = write(&dir, "json.safetensors", &header_file("{not json", 0));
        assert!(validate_safetensors(&json)
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));

        // The in-memory parser gives the same answers and messages.
        for name in [
            "ok", "trunc", "huge", "shape", "dtype", "int", "tiny", "json", "overlap",
        ] {
            let path = dir.join(format!("{name}.safetensors"));
            let from_file = validate_safetensors(&path).map_err(|e| e.to_string());
            let in_memory = parse_header(&std::fs::read(&path).unwrap()).map_err(|e| e.to_string());
            let path_text = path.display().to_string();
            assert_eq!(
                in_memory,
                from_file.map_err(|e| e.replace(&path_text, "(in memory)")),
                "{name}"
            );
        }
    }

    #[test]
    fn folder_with_only_pickles_is_refused() {
        let dir = tempdir();
        write(&dir, "diffusion_pytorch_model.bin", b"pickle");
        let err = component_weights(&dir, &["diffusion_pytorch_model"]).unwrap_err();
        assert!(matches!(err, EngineError::UnsafeFormat { .. }), "{err}");
    }

    fn tempdir() -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "sdserve-loader-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}
