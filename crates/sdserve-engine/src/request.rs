//! Plain-data types that cross the engine boundary: what to generate, what came
//! out, and how progress and cancellation flow back to the caller.

use crate::samplers::SamplerId;

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
    pub width: usize,
    pub height: usize,
    /// Images drawn from one seed with one `randn` call, as diffusers does.
    pub batch_size: usize,
}

/// One decoded image, 8-bit RGB, row-major.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
    /// The job's seed (all images of a job share it: they come from one noise draw).
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
