//! The gate's refusals: one variant per broken rule, each naming the field
//! as the client's dialect spelled it.

use super::MAX_CFG_SCALE;
use crate::engine_api::OverBudget;

/// One broken rule. Every message names the field and the value given; every
/// variant's `field` is the field as the client's dialect spells it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// Prompt longer than `--max-prompt-chars`.
    #[error("`{field}` is {got} characters long; the limit is {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// The limit.
        max: usize,
        /// Characters given.
        got: usize,
    },
    /// Zero or negative size.
    #[error("`{field}` must be a positive number of pixels, got {got}")]
    NotPositive {
        /// The field.
        field: &'static str,
        /// Value given.
        got: i64,
    },
    /// Size above `--max-width`/`--max-height`.
    #[error("`{field}` must be at most {max}, got {got}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// The limit.
        max: usize,
        /// Value given.
        got: i64,
    },
    /// Size not a multiple of the model's VAE scale factor.
    #[error("`{field}` must be a multiple of {multiple}, got {got}")]
    NotMultiple {
        /// The field.
        field: &'static str,
        /// The required multiple.
        multiple: usize,
        /// Value given.
        got: i64,
    },
    /// Width × height above `--max-pixels`.
    #[error("`{field}` × height = {width}×{height} = {pixels} pixels; the limit is {max}")]
    TooManyPixels {
        /// The width field.
        field: &'static str,
        /// Width given.
        width: usize,
        /// Height given.
        height: usize,
        /// Their product.
        pixels: usize,
        /// The limit.
        max: usize,
    },
    /// Integer outside its range (steps, batch size).
    #[error("`{field}` must be between {min} and {max}, got {got}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Smallest accepted.
        min: i64,
        /// Largest accepted.
        max: usize,
        /// Value given.
        got: i64,
    },
    /// A LoRA list the server cannot apply: too many, a weight out of range,
    /// a name its LoRA folder lacks (the message lists those it has), a file
    /// that does not fit the model.
    #[error("`{field}`: {message}")]
    Lora {
        /// The field (`loras`, or `prompt` for A1111's tags).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// NaN or infinite guidance scale.
    #[error("`{field}` must be a finite number")]
    NotFinite {
        /// The field.
        field: &'static str,
    },
    /// Guidance scale outside `0..=MAX_CFG_SCALE`.
    #[error("`{field}` must be between 0 and {MAX_CFG_SCALE}, got {got}")]
    CfgOutOfRange {
        /// The field.
        field: &'static str,
        /// Value given.
        got: f64,
    },
    /// Sampler name the engine does not know.
    #[error("`{field}`: {message}")]
    UnknownSampler {
        /// The field.
        field: &'static str,
        /// The engine's message, listing the known samplers.
        message: String,
    },
    /// A dialect-specific field with a bad value (OpenAI `size`, A1111 `seed`...).
    #[error("`{field}`: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Beyond the memory plan: more than the budget holds (413).
    #[error("{detail}")]
    OverBudget {
        /// The width field (the size as a whole is at fault).
        field: &'static str,
        /// Need, budget, source and the largest square that fits.
        detail: OverBudget,
    },
    /// The engine refused the request for the loaded model.
    #[error("{0}")]
    Engine(String),
}

impl ValidationError {
    /// The offending field, as the client named it.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::TooLong { field, .. }
            | Self::NotPositive { field, .. }
            | Self::TooLarge { field, .. }
            | Self::NotMultiple { field, .. }
            | Self::TooManyPixels { field, .. }
            | Self::OutOfRange { field, .. }
            | Self::NotFinite { field }
            | Self::CfgOutOfRange { field, .. }
            | Self::UnknownSampler { field, .. }
            | Self::Invalid { field, .. }
            | Self::OverBudget { field, .. }
            | Self::Lora { field, .. } => Some(field),
            Self::Engine(_) => None,
        }
    }
}
