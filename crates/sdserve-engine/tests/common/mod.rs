//! What the parity and precision tests share: the reference cases rendered by
//! the fixture scripts (`fixtures/reference/*cases.json`) and the request each
//! one stands for.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use sdserve_engine::image_input::{decode_rgb, DecodedImage, ImageLimits};
use sdserve_engine::image_ops::GrayImage;
use sdserve_engine::request::ImageToImage;
use sdserve_engine::{GenerateRequest, PromptSyntax, SamplerName, ScheduleType};
use serde::Deserialize;

/// The binary's allocator, so the parity suites check the product's
/// zero-copy weight tensors and reused buffers against diffusers.
#[global_allocator]
static ALLOCATOR: sdserve_engine::alloc::EngineAllocator = sdserve_engine::alloc::EngineAllocator;

/// One diffusers render: its settings and the PNGs it wrote. (Each test
/// binary compiles this module and reads its own subset of the fields.)
#[allow(dead_code)]
#[derive(Clone, Deserialize)]
pub struct Case {
    pub model: String,
    pub name: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    pub steps: usize,
    pub cfg_scale: f64,
    pub sampler: String,
    /// A1111's schedule type (`sampler-cases.json`; absent: Automatic).
    #[serde(default)]
    pub schedule_type: Option<String>,
    pub width: usize,
    pub height: usize,
    pub batch_size: usize,
    pub images: Vec<String>,
    /// Rendered with DeepCache's helper at this interval (`step-cache-cases.json`).
    #[serde(default)]
    pub step_cache: Option<usize>,
    /// Rendered with this tiny VAE (a folder under `fixtures/models/`) as the
    /// pipeline's VAE (`tiny-vae-cases.json`).
    #[serde(default)]
    pub fast_decode: Option<String>,
    /// Rendered with `vae.enable_tiling()` (absent in `cases.json`: off).
    #[serde(default)]
    pub vae_tiling: bool,
    /// Image-to-image and inpainting cases (`img2img-cases.json`): the init
    /// image and mask (paths under fixtures/) and diffusers' `strength`.
    #[serde(default)]
    pub init_image: Option<String>,
    #[serde(default)]
    pub mask: Option<String>,
    #[serde(default)]
    pub strength: Option<f64>,
    /// Hires-fix cases (`hires-cases.json`): the second pass's settings, and
    /// the first pass's images.
    #[serde(default)]
    pub hires: Option<serde_json::Value>,
    #[serde(default)]
    pub first_pass_images: Vec<String>,
    /// A1111's img2img resize mode (`latent-resize-cases.json`: 3, latent upscale).
    #[serde(default)]
    pub resize_mode: Option<i64>,
    /// How the prompts were read (`prompt-cases.json`; absent: plain).
    #[serde(default)]
    pub prompt_syntax: Option<String>,
    /// diffusers' `clip_skip` (`prompt-cases.json`; absent: 0).
    #[serde(default)]
    pub clip_skip: usize,
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The cases of the given files under `fixtures/reference/`, in order.
pub fn read_cases(files: &[&str]) -> Vec<Case> {
    let mut all = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(fixtures().join("reference").join(file)).expect(file);
        let cases: Vec<Case> = serde_json::from_str(&text).expect("cases parse");
        all.extend(cases);
    }
    all
}

/// The request diffusers rendered `case` from.
pub fn request(case: &Case) -> GenerateRequest {
    // Older case files name a legacy sampler (`DPM++ 2M Karras`).
    let name: SamplerName = case.sampler.parse().expect("known sampler");
    let explicit = case
        .schedule_type
        .as_deref()
        .map(|s| s.parse::<ScheduleType>().expect("known schedule type"));
    let (sampler, schedule_type) = name.with_schedule(explicit).expect("a valid pair");
    GenerateRequest {
        prompt: case.prompt.clone(),
        negative_prompt: case.negative_prompt.clone(),
        seed: Some(case.seed),
        steps: case.steps,
        cfg_scale: case.cfg_scale,
        sampler,
        schedule_type,
        width: case.width,
        height: case.height,
        batch_size: case.batch_size,
        seed_per_image: false,
        hires: None,
        prompt_syntax: case
            .prompt_syntax
            .as_deref()
            .map_or(PromptSyntax::Plain, |s| s.parse().expect("known syntax")),
        clip_skip: case.clip_skip,
        loras: Vec::new(),
        init: case.init_image.as_ref().map(|path| ImageToImage {
            image: Arc::new(read_rgb(path)),
            mask: case
                .mask
                .as_ref()
                .map(|m| Arc::new(GrayImage::from_rgb(&read_rgb(m)))),
            strength: case.strength.expect("an init image comes with a strength"),
            resize_latents: case.resize_mode == Some(3),
            overlay: None,
            paste: None,
        }),
    }
}

/// Largest per-channel difference between two RGB buffers.
#[allow(dead_code)]
pub fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// Largest per-channel difference between `ours` and the reference PNG at
/// `reference` (under fixtures/), which must be the same size.
#[allow(dead_code)]
pub fn diff_to_reference(ours: &[u8], reference: &str) -> u8 {
    let bytes = std::fs::read(fixtures().join(reference)).expect(reference);
    let (_, _, rgb) = sdserve_engine::png::decode_rgb(&bytes).expect(reference);
    assert_eq!(ours.len(), rgb.len(), "{reference}: size");
    max_diff(ours, &rgb)
}

/// A PNG under fixtures/, decoded to RGB (gray masks expand to three equal channels).
pub fn read_rgb(path: &str) -> DecodedImage {
    let bytes = std::fs::read(fixtures().join(path)).expect(path);
    decode_rgb(&bytes, &ImageLimits::default()).expect(path)
}
