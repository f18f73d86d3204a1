//! The one place the server names engine items, so that a change in the engine's
//! public API touches one file here. The server never names a tensor.

pub use sdserve_engine::embeddings::{EmbeddingInfo, EmbeddingList};
pub use sdserve_engine::extra_networks::split_extra_networks;
pub use sdserve_engine::hires::{
    HiresFix, HiresSize, StepCount, Upscaler, DEFAULT_DENOISING_STRENGTH, DEFAULT_SCALE,
    UPSCALER_NAMES,
};
pub use sdserve_engine::image_input::{
    self, DecodedImage, ImageInputError, ImageLimits, ImageText, TextChunk,
};
pub use sdserve_engine::image_ops::{self, GrayImage};
pub use sdserve_engine::lora::{LoraDir, LoraEntry, LoraRef, MAX_LORAS, MAX_WEIGHT};
pub use sdserve_engine::memory::{human_bytes, Budget};
pub use sdserve_engine::png;
pub use sdserve_engine::preview::Preview;
pub use sdserve_engine::prompt;
pub use sdserve_engine::request::{ImageToImage, PasteBack};
pub use sdserve_engine::{
    batch_compatible, random_seed, uses_guidance, Engine, EngineError, GenerateRequest,
    GeneratedImage, GenerationOutput, MemoryPlan, ModelInfo, ModelSource, NoopObserver, Observer,
    OverBudget, Progress, PromptSyntax, SamplerId, SamplerName, ScheduleType, Timings, VaeTiling,
};
