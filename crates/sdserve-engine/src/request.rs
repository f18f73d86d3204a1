//! Plain-data types that cross the engine boundary: what to generate, what came
//! out, and how progress and cancellation flow back to the caller.

use std::sync::Arc;

use crate::hires::HiresFix;
use crate::image_input::DecodedImage;
use crate::image_ops::GrayImage;
use crate::lora::LoraRef;
use crate::prompt::PromptSyntax;
use crate::samplers::{SamplerId, ScheduleType};

/// One text-to-image job. Several compatible jobs can run as one UNet batch
/// (see [`crate::Engine::generate_batch`]); each keeps its own seed and noise.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt: String,
    pub negative_prompt: String,
    /// `None` draws a random seed; the seed used is reported in each [`GeneratedImage`].
    pub seed: Option<u64>,
    pub steps: usize,
    /// Classifier-free guidance scale; 1.0 or less skips the unconditional pass.
    pub cfg_scale: f64,
    pub sampler: SamplerId,
    /// How the sampler spaces its noise levels (A1111's "Schedule type").
    pub schedule_type: ScheduleType,
    pub width: usize,
    pub height: usize,
    /// Images drawn from one seed with one `randn` call, as diffusers does.
    pub batch_size: usize,
    /// Start from an image (image-to-image, inpainting) instead of pure noise.
    pub init: Option<ImageToImage>,
    /// Image `i` of the batch gets seed `seed + i` and its own generator
    /// (A1111's batches: each image's infotext reproduces it alone); false
    /// draws the whole batch from one generator, as diffusers does.
    pub seed_per_image: bool,
    /// A1111's hires fix: upscale the result and run a second, image-to-image
    /// pass at the larger size (text-to-image only).
    pub hires: Option<HiresFix>,
    /// How the prompts are read: plain text (diffusers) or A1111's emphasis syntax.
    pub prompt_syntax: PromptSyntax,
    /// Final text-encoder layers left out: diffusers' `clip_skip` (A1111's
    /// "Clip skip" less one); 0 uses the model's usual layer.
    pub clip_skip: usize,
    /// LoRAs from the engine's LoRA folder, applied in order (jobs batch
    /// only with the same list).
    pub loras: Vec<LoraRef>,
}

impl GenerateRequest {
    /// The size of the images it makes: the hires fix's target (see
    /// [`HiresFix::geometry`]; the request's own size if the fix is invalid,
    /// which validation refuses), else the request's size.
    pub fn output_size(&self, vae_scale_factor: usize) -> (usize, usize) {
        if let Some(paste) = self.init.as_ref().and_then(|i| i.paste.as_ref()) {
            return (paste.canvas.width, paste.canvas.height);
        }
        self.hires
            .as_ref()
            .and_then(|h| h.geometry(self.width, self.height, vae_scale_factor).ok())
            .map_or((self.width, self.height), |g| g.output)
    }
}

/// The image a job starts from, as diffusers' `StableDiffusionImg2ImgPipeline`
/// (no mask) or `StableDiffusionInpaintPipeline` (with a mask) takes it.
#[derive(Clone, PartialEq)]
pub struct ImageToImage {
    /// Any size: resized to the request's size with Lanczos, as diffusers' image processor.
    pub image: Arc<DecodedImage>,
    /// White repaints, black keeps; any size (resized like the image), binarised at 50%.
    pub mask: Option<Arc<GrayImage>>,
    /// Fraction of the schedule that runs, in (0, 1]: diffusers' `strength`.
    pub strength: f64,
    /// A1111's `resize_mode` 3 ("Just resize (latent upscale)"): the image is
    /// encoded at its own size and its latents resized bilinearly to the
    /// output's, instead of resizing its pixels (image to image only).
    pub resize_latents: bool,
    /// A1111's overlay (`None` for diffusers' output): after decoding, the
    /// image (at the output size) is put back over the result with alpha
    /// `255 - overlay`, so pixels outside the mask stay the original's. Must
    /// be the output's size.
    pub overlay: Option<Arc<GrayImage>>,
    /// A1111's "inpaint only masked" (`inpaint_full_res`): the job ran on a
    /// crop of a larger image, which each result is pasted back into.
    pub paste: Option<Arc<PasteBack>>,
}

/// Where an "only masked" inpainting result goes (A1111's `uncrop` +
/// `apply_overlay`): resized (crop and resize) into `region` of `canvas`,
/// then the canvas put back over it with alpha `255 - mask`, so the output
/// is the canvas's size and unchanged outside the mask.
#[derive(Clone, PartialEq)]
pub struct PasteBack {
    /// The image the crop was taken from, at its own size.
    pub canvas: Arc<DecodedImage>,
    /// A1111's `mask_for_overlay` at the canvas size (the blurred mask).
    pub mask: Arc<GrayImage>,
    /// The crop: left, top, width, height on the canvas.
    pub region: (usize, usize, usize, usize),
    /// The padding the crop was taken with (for the infotext).
    pub padding: usize,
}

impl ImageToImage {
    /// diffusers' default `strength`: 1 for inpainting, 0.8 for image to image.
    pub fn default_strength(masked: bool) -> f64 {
        if masked {
            1.0
        } else {
            0.8
        }
    }
}

impl std::fmt::Debug for ImageToImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageToImage")
            .field("image", &(self.image.width, self.image.height))
            .field("mask", &self.mask.as_ref().map(|m| (m.width, m.height)))
            .field("strength", &self.strength)
            .field("resize_latents", &self.resize_latents)
            .field("overlay", &self.overlay.is_some())
            .field("paste", &self.paste)
            .finish()
    }
}

impl std::fmt::Debug for PasteBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasteBack")
            .field("canvas", &(self.canvas.width, self.canvas.height))
            .field("region", &self.region)
            .field("padding", &self.padding)
            .finish()
    }
}

/// One decoded image, 8-bit RGB, row-major.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
    /// The seed that reproduces the image: the job's (shared by a one-generator
    /// batch, whose infotext then gives the batch position), or `seed + i`
    /// with per-image seeds.
    pub seed: u64,
    /// AUTOMATIC1111-style infotext, written to the PNG `parameters` chunk.
    pub infotext: String,
}

/// Where a generation is, reported after each stage and each denoising step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Prompts encoded; denoising about to start.
    Encoded,
    /// `step` of `total` denoising steps done (1-based).
    Step { step: usize, total: usize },
    /// Latents decoded to pixels.
    Decoded,
}

/// The caller's window into a running generation.
///
/// The engine calls it from the thread running the generation; it must be cheap.
pub trait Observer {
    /// Reports progress for the whole batch.
    fn progress(&mut self, _progress: Progress) {}
    /// Asked between steps: should job `index` (position in the batch) stop now?
    fn is_cancelled(&mut self, _index: usize) -> bool {
        false
    }
    /// Asked between steps: should job `index` stop denoising now and decode
    /// what it has (A1111's interrupt: the client still gets images)?
    fn finish_early(&mut self, _index: usize) -> bool {
        false
    }
    /// Asked after each step: should the engine make a live preview?
    fn wants_preview(&mut self) -> bool {
        false
    }
    /// The batch's first running image after a step, by a cheap latent-to-RGB
    /// projection at latent resolution (only when [`Observer::wants_preview`]).
    fn preview(&mut self, _preview: crate::preview::Preview) {}
}

/// An observer that ignores progress and never cancels.
pub struct NoopObserver;
impl Observer for NoopObserver {}

/// Seconds spent in each stage of a generation, for the CLI report and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub text_encoding: f64,
    pub denoising: f64,
    pub decoding: f64,
}
