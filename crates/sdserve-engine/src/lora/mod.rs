//! LoRA: low-rank weight deltas from `--lora-dir`, applied per request.
//!
//! * `names.rs`: the key grammar of kohya/A1111 files (`lora_unet_*`,
//!   `lora_te_*`/`lora_te1_*`/`lora_te2_*` with `.lora_down`/`.lora_up`/`.alpha`)
//!   and diffusers/PEFT files (`unet.*`/`text_encoder.*`/`text_encoder_2.*` with
//!   `lora_A`/`lora_B` or `lora.down`/`lora.up`), resolved against the model's
//!   own parameter names;
//! * `file.rs`: one file read into layers (down, up, alpha/rank);
//! * `patch.rs`: the model's loaded weights recorded at load, and a patched
//!   model built from them: `W + Σ weight · alpha/rank · up·down` for the touched
//!   tensors only, every other tensor shared with the base model;
//! * `rebuild.rs`: the model with a set applied (affected modules rebuilt);
//! * `registry.rs`: the folder, names, A1111's short hashes and the listing.
//!
//! Why patched weights and not per-layer deltas at forward time: the result
//! is diffusers' `fuse_lora` and, up to float rounding, its unfused PEFT path
//! (`base(x) + scale · B(A(x))`), with no change to any module and no extra
//! work per step; the price is a copy of the touched tensors per LoRA set,
//! kept for one set at a time (`Engine`'s cache).

mod file;
mod names;
mod patch;
mod rebuild;
mod registry;

pub use file::{read_layers, LoraLayer};
pub use names::Component;
pub use patch::{recording, Recorder};
pub use rebuild::{apply, Rebuild, UnetRecipe};
pub use registry::{LoraDir, LoraEntry};

/// A LoRA a job applies: its name in the LoRA folder (the file stem) and its
/// multipliers for the text encoders and the UNet (A1111's `te` and `unet`;
/// `<lora:name:w>` sets both to `w`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraRef {
    pub name: String,
    pub te_weight: f64,
    pub unet_weight: f64,
}

impl LoraRef {
    /// One weight for both parts, as `<lora:name:w>` and the native API's `weight`.
    pub fn new(name: impl Into<String>, weight: f64) -> Self {
        Self {
            name: name.into(),
            te_weight: weight,
            unet_weight: weight,
        }
    }
}

/// Most LoRAs one request may apply (each adds a pass over its layers when
/// the set is first built).
pub const MAX_LORAS: usize = 8;

/// Largest absolute multiplier accepted: A1111 lets sliders go to ±2, and
/// weights far beyond that only break the image.
pub const MAX_WEIGHT: f64 = 10.0;
