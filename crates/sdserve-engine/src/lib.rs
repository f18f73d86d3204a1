//! sdserve-engine: Stable Diffusion text-to-image on candle.
//!
//! The engine turns a [`GenerateRequest`] into pixels that match Hugging Face
//! diffusers for the same model, settings and seed. It owns the weights, the
//! tokenizer, the samplers and the seeded noise; it knows nothing of HTTP or async.

pub mod alloc;
mod attention;
mod attention_bf16;
mod attention_cpu;
mod bf16_gemm;
mod conditioning;
pub mod config;
mod conv;
mod cpu_kernel;
pub mod embeddings;
mod engine;
pub mod error;
pub mod extra_networks;
mod folder;
mod geglu;
mod group_norm;
pub mod hires;
pub mod hub;
pub mod image_input;
pub mod image_ops;
mod img2img;
mod layers;
mod linear;
pub mod loader;
pub mod lora;
pub mod memory;
mod model;
mod model_files;
pub mod options;
mod pipeline;
pub mod png;
pub mod preview;
pub mod prompt;
pub mod request;
pub mod rng;
pub mod samplers;
mod single_file;
mod softmax;
mod text_encoder;
pub mod tiny_vae;
pub mod tokenizer;
mod transformer;
mod unet;
mod unet_batch;
mod unet_blocks;
mod upsample;
mod vae;
mod vae_encoder;
mod vae_tiling;

pub use engine::{batch_compatible, random_seed, Engine, GenerationOutput, ModelInfo, ModelSource};
pub use error::{EngineError, Result};
pub use lora::{LoraDir, LoraEntry, LoraRef};
pub use memory::{MemoryPlan, OverBudget};
pub use options::{DeviceChoice, DeviceSet, EngineOptions, Precision, VaeTiling};
pub use pipeline::uses_guidance;
pub use prompt::PromptSyntax;
pub use request::{
    GenerateRequest, GeneratedImage, NoopObserver, Observer, PasteBack, Progress, Timings,
};
pub use samplers::{SamplerId, SamplerName, ScheduleType};

/// Helpers shared by the unit tests.
#[cfg(test)]
mod test_util {
    use candle_core::Tensor;

    /// Largest absolute element difference of two same-shaped tensors.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let d = (a - b).and_then(|d| d.abs()).and_then(|d| d.flatten_all());
        d.and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .unwrap()
    }
}
