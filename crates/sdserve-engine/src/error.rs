//! The engine's one error type. Callers (CLI, server) switch on the variant to
//! decide what the user is told: a bad request, a bad model file, or an internal fault.

use std::path::PathBuf;

/// Everything that can go wrong inside the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request itself is invalid (size not a multiple of 8, zero steps...).
    /// The message names the field and the value given.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// A request named a LoRA that the LoRA folder does not hold.
    #[error("unknown LoRA \"{name}\"; available: {}", if .available.is_empty() { "none (no --lora-dir, or it holds no .safetensors)".to_string() } else { .available.join(", ") })]
    UnknownLora {
        name: String,
        available: Vec<String>,
    },

    /// A LoRA file that cannot be applied to this model (a pickle, keys that
    /// match no layer, shapes that do not fit); the message names the keys.
    #[error("LoRA \"{name}\": {message}")]
    InvalidLora { name: String, message: String },

    /// A model file that must never be loaded (pickle-based checkpoints).
    #[error("refusing to load {path}: {reason}")]
    UnsafeFormat { path: PathBuf, reason: String },

    /// A model folder or file that is missing, malformed or inconsistent with its config.
    #[error("invalid model file {path}: {message}")]
    InvalidModel { path: PathBuf, message: String },

    /// The model uses a feature this engine does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),

    /// The requested device cannot be used (no CUDA in this build, no such GPU).
    #[error("device unavailable: {0}")]
    Device(String),

    /// Downloading from the Hugging Face hub failed.
    #[error("hub download of {repo} failed: {message}")]
    Hub { repo: String, message: String },

    /// Writing an image failed (an internal fault, not the request's).
    #[error("image encoding failed: {0}")]
    Encoding(String),

    /// The memory budget cannot even hold the model (weights plus the process).
    #[error("the memory budget is {} ({source_name}) but loading the model needs ~{} (weights {} + process {})", crate::memory::human_bytes(*.budget), crate::memory::human_bytes(*.need), crate::memory::human_bytes(*.weights), crate::memory::human_bytes(.need.saturating_sub(*.weights)))]
    MemoryBudget {
        /// Budget bytes.
        budget: u64,
        /// Where the budget came from.
        source_name: String,
        /// Bytes the loaded model needs before any request.
        need: u64,
        /// Of which weights.
        weights: u64,
    },

    /// A request larger than the memory plan allows; the message names the
    /// budget, its source and the largest size that fits.
    #[error(transparent)]
    OverBudget(#[from] crate::memory::OverBudget),

    /// The job was cancelled between denoising steps.
    #[error("cancelled")]
    Cancelled,

    /// I/O outside model parsing (writing outputs...).
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A tensor operation failed: a bug or resource exhaustion, not the user's fault.
    #[error("tensor operation failed: {}", describe_candle(.0))]
    Tensor(#[from] candle_core::Error),
}

/// Shorthand used across the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// A candle error as one line for users: without the backtrace candle attaches
/// when `RUST_BACKTRACE` is set.
pub fn describe_candle(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => describe_candle(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", describe_candle(inner))
        }
        candle_core::Error::WithPath { inner, path } => {
            format!("{}: {}", path.display(), describe_candle(inner))
        }
        other => other.to_string(),
    }
}

impl EngineError {
    /// Builds an [`EngineError::InvalidModel`] for `path`.
    pub fn invalid_model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::InvalidModel {
            path: path.into(),
            message: message.into(),
        }
    }
}
