//! Where a model's parts come from: a diffusers folder (one config and weight
//! file per component) or a single-file checkpoint (`single_file/`). Both
//! give the same configs and diffusers-named weights, so `model.rs` and the
//! memory plan build and cost the same modules from either.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::config::{
    read_json, PipelineIndex, SchedulerConfig, TextEncoderConfig, UNetConfig, VaeConfig,
};
use crate::error::{EngineError, Result};
use crate::loader::{component_weights, refuse_pickle, runtime_bytes, var_builder, TensorNames};
use crate::single_file::SingleFile;
use crate::tokenizer::ClipTokenizer;

pub use crate::single_file::Part;

/// A model on disk.
pub enum ModelFiles {
    /// A diffusers folder.
    Folder(PathBuf),
    /// A `.safetensors` checkpoint in the original LDM layout.
    Single(Box<SingleFile>),
}

impl ModelFiles {
    /// A folder, or a single `.safetensors` file (a pickle is refused saying why).
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Ok(Self::Folder(path.to_path_buf()));
        }
        refuse_pickle(path)?;
        if path.is_file() {
            return Ok(Self::Single(Box::new(SingleFile::open(path)?)));
        }
        Err(EngineError::invalid_model(
            path,
            "no such folder or file: expected a diffusers model folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a single-file .safetensors checkpoint",
        ))
    }

    fn folder(dir: &Path, part: Part) -> (PathBuf, &'static str) {
        match part {
            Part::TextEncoder => (dir.join("text_encoder"), "model"),
            Part::TextEncoder2 => (dir.join("text_encoder_2"), "model"),
            Part::Unet => (dir.join("unet"), "diffusion_pytorch_model"),
            Part::Vae => (dir.join("vae"), "diffusion_pytorch_model"),
        }
    }

    /// The file a part's config errors name: `<part>/config.json`, or the
    /// single file's yaml (else the file itself).
    pub fn config_path(&self, part: Part) -> PathBuf {
        match self {
            Self::Folder(dir) => Self::folder(dir, part).0.join("config.json"),
            Self::Single(f) => f.config_path().to_path_buf(),
        }
    }

    /// Whether the model has `part` (SDXL's second text encoder, a folder's `text_encoder/`).
    pub fn has(&self, part: Part) -> bool {
        match self {
            Self::Folder(dir) => Self::folder(dir, part).0.is_dir(),
            Self::Single(f) => f.has(part),
        }
    }

    /// The tokenizer of text encoder `part` (`tokenizer/` or `tokenizer_2/` of a folder).
    pub fn tokenizer(&self, part: Part) -> Result<ClipTokenizer> {
        match self {
            Self::Folder(dir) => ClipTokenizer::from_dir(&dir.join(match part {
                Part::TextEncoder2 => "tokenizer_2",
                _ => "tokenizer",
            })),
            Self::Single(f) => f.tokenizer(part),
        }
    }

    /// SDXL: whether an empty negative prompt is all zeros: `model_index.json`'s
    /// flag (diffusers' default true when absent, and for single files, whose
    /// from_single_file takes SDXL base's `model_index.json`, which says true).
    pub fn force_zeros_for_empty_prompt(&self) -> Result<bool> {
        match self {
            Self::Folder(dir) => {
                let index_path = dir.join("model_index.json");
                if !index_path.is_file() {
                    return Ok(true);
                }
                let index: PipelineIndex = read_json(&index_path)?;
                Ok(index.force_zeros_for_empty_prompt.unwrap_or(true))
            }
            Self::Single(_) => Ok(true),
        }
    }

    pub fn scheduler(&self) -> Result<SchedulerConfig> {
        match self {
            Self::Folder(dir) => read_json(&dir.join("scheduler/scheduler_config.json")),
            Self::Single(f) => Ok(f.scheduler_config().clone()),
        }
    }

    pub fn text_encoder_config(&self, part: Part) -> Result<TextEncoderConfig> {
        match self {
            Self::Folder(_) => read_json(&self.config_path(part)),
            Self::Single(f) => f.text_encoder_config(part),
        }
    }

    pub fn unet_config(&self) -> Result<UNetConfig> {
        match self {
            Self::Folder(_) => read_json(&self.config_path(Part::Unet)),
            Self::Single(f) => Ok(f.unet_config().clone()),
        }
    }

    pub fn vae_config(&self) -> Result<VaeConfig> {
        match self {
            Self::Folder(_) => read_json(&self.config_path(Part::Vae)),
            Self::Single(f) => Ok(f.vae_config().clone()),
        }
    }

    /// A part's weights under diffusers names, their names, and the file that
    /// load errors name.
    pub fn weights(
        &self,
        part: Part,
        dtype: DType,
        device: &Device,
    ) -> Result<(VarBuilder<'static>, TensorNames, PathBuf)> {
        match self {
            Self::Folder(dir) => {
                let (dir, stem) = Self::folder(dir, part);
                let files = component_weights(&dir, &[stem])?;
                let (vb, names) = var_builder(&files, dtype, device)?;
                let first = files.first().cloned().unwrap_or(dir);
                Ok((vb, names, first))
            }
            Self::Single(f) => {
                let (vb, names) = f.var_builder(part, dtype, device)?;
                Ok((vb, names, f.path().to_path_buf()))
            }
        }
    }

    /// Bytes a part's weights take once loaded in `dtype`, from headers alone
    /// (a folder's whole file is counted, though only the VAE decoder loads).
    pub fn runtime_bytes(&self, part: Part, dtype: DType) -> Result<u64> {
        match self {
            Self::Folder(dir) => {
                let (dir, stem) = Self::folder(dir, part);
                runtime_bytes(&component_weights(&dir, &[stem])?, dtype)
            }
            Self::Single(f) => Ok(f.runtime_bytes(part, dtype)),
        }
    }
}
