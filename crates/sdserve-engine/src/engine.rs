//! The public facade: load a model once, then generate from many requests.

use std::path::PathBuf;

use candle_core::{DType, Device};

use crate::attention::ScoreBlock;
use crate::embeddings::EmbeddingLibrary;
use crate::error::{EngineError, Result};
use crate::memory::{plan_for_model, MemoryPlan};
use crate::model::StableDiffusion;
use crate::options::{DeviceChoice, EngineOptions, Precision, VaeTiling};
use crate::pipeline;
use crate::png::ModelLabel;
use crate::request::{GenerateRequest, GeneratedImage, Observer, Timings};

/// Where a model comes from: a local diffusers folder or single file, or a Hugging Face repo id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A diffusers-format folder on disk, or a single-file `.safetensors` checkpoint.
    Dir(PathBuf),
    /// `org/name` on the Hugging Face hub, fetched into the standard HF cache.
    Hub { repo: String },
}

impl ModelSource {
    /// An existing path (or one naming a weight file) is local; otherwise `org/name` is a hub repo id.
    pub fn parse(spec: &str) -> Self {
        let path = PathBuf::from(spec);
        let weight_file = [".safetensors", ".ckpt", ".pt", ".pth", ".bin"]
            .iter()
            .any(|ext| spec.to_ascii_lowercase().ends_with(ext));
        if path.exists()
            || weight_file
            || spec.starts_with('.')
            || spec.starts_with('/')
            || spec.matches('/').count() != 1
        {
            ModelSource::Dir(path)
        } else {
            ModelSource::Hub {
                repo: spec.to_string(),
            }
        }
    }
}

/// What a loaded model is and which defaults suit it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Folder or repo name, shown in listings and infotexts.
    pub name: String,
    /// Native image size (UNet sample size times the VAE scale factor).
    pub native_width: usize,
    pub native_height: usize,
    /// Defaults that suit the model (a Turbo model: few steps, guidance off).
    pub default_steps: usize,
    pub default_cfg_scale: f64,
    /// Pixels per latent cell (2^(VAE blocks - 1)); sizes must be multiples of it.
    pub vae_scale_factor: usize,
    /// The largest clip skip the text encoders allow (each keeps one layer).
    pub max_clip_skip: usize,
}

/// The images and stage timings of one job.
#[derive(Debug, Clone)]
pub struct GenerationOutput {
    pub images: Vec<GeneratedImage>,
    pub timings: Timings,
}

/// Defaults for a regular (non-Turbo) model, as A1111 uses.
const DEFAULT_STEPS: usize = 20;
const DEFAULT_CFG: f64 = 7.0;

/// A loaded model, ready to generate. Blocking: run it on its own thread.
pub struct Engine {
    model: StableDiffusion,
    embeddings: EmbeddingLibrary,
    info: ModelInfo,
    options: EngineOptions,
    plan: MemoryPlan,
    label: ModelLabel,
}

impl Engine {
    /// Loads a model with default options on the CPU (or the first CUDA GPU
    /// when built with `cuda` and one is present).
    pub fn load(source: &ModelSource) -> Result<Self> {
        Self::load_with(source, EngineOptions::default())
    }

    /// Loads a model with `options` (memory limit, VAE tiling).
    pub fn load_with(source: &ModelSource, options: EngineOptions) -> Result<Self> {
        let dir = match source {
            ModelSource::Dir(dir) => dir.clone(),
            ModelSource::Hub { repo } => crate::hub::resolve(repo)?,
        };
        let device = open_device(options.device)?;
        let dtype = match options.dtype {
            Precision::Auto if device.is_cuda() => DType::F16,
            Precision::Auto | Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        };
        let block = ScoreBlock::DEFAULT;
        StableDiffusion::check_folder(&dir)?;
        // Before the weights: a budget that cannot hold them is an error, not an OOM kill.
        let plan = plan_for_model(&dir, &options, &device, dtype)?;
        let mut model = StableDiffusion::load_with(&dir, &device, block, dtype)?;
        let embeddings = match &options.embeddings_dir {
            Some(folder) => {
                let widths = model.text.encoder_widths();
                EmbeddingLibrary::load(folder, &widths, dtype, &device).map_err(|source| {
                    EngineError::Io {
                        path: folder.clone(),
                        source,
                    }
                })?
            }
            None => EmbeddingLibrary::default(),
        };
        model.text.set_embeddings(&embeddings);
        if options.vae_tiling == VaeTiling::On {
            // `--vae-tiling on` with a VAE that cannot tile is refused now, not at the first decode.
            model.vae_tile_geometry()?;
        }
        let name = match source {
            // A single file is named without its extension, as A1111 lists checkpoints.
            ModelSource::Dir(dir) if dir.is_file() => dir
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into()),
            ModelSource::Dir(dir) => dir
                .canonicalize()
                .unwrap_or_else(|_| dir.clone())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into()),
            ModelSource::Hub { repo } => repo.clone(),
        };
        let turbo = is_turbo(&name) || model.has_turbo_configs();
        let info = ModelInfo {
            native_width: model.sample_size.1 * model.vae_scale_factor,
            native_height: model.sample_size.0 * model.vae_scale_factor,
            default_steps: if turbo { 1 } else { DEFAULT_STEPS },
            default_cfg_scale: if turbo { 0.0 } else { DEFAULT_CFG },
            vae_scale_factor: model.vae_scale_factor,
            max_clip_skip: model.text.max_clip_skip(),
            name,
        };
        Ok(Self {
            model,
            embeddings,
            label: ModelLabel::named(info.name.clone()),
            info,
            options,
            plan,
        })
    }

    /// What the model is and which defaults suit it.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Names the model in the infotexts of its images (A1111's `Model` and
    /// `Model hash`); by default the folder or repo name, without a hash.
    pub fn set_label(&mut self, label: ModelLabel) {
        self.label = label;
    }

    /// How the infotexts of its images name the model.
    pub fn label(&self) -> &ModelLabel {
        &self.label
    }

    /// The textual-inversion embeddings prompts may name, and the files of
    /// `--embeddings-dir` that do not fit this model.
    pub fn embeddings(&self) -> &EmbeddingLibrary {
        &self.embeddings
    }

    /// The options the engine was loaded with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The memory plan computed at load: budget, weights, what fits.
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// Whether an image of `width × height` is decoded in tiles under the
    /// `--vae-tiling` mode (`Auto` asks the memory plan).
    pub fn auto_tile_vae(&self, width: usize, height: usize) -> bool {
        self.plan.tile_vae(width, height)
    }

    /// Whether a request's VAE decode tiles (diffusers' `use_tiling`; only a
    /// latent larger than one tile is then cut).
    fn tile_vae(&self, req: &GenerateRequest) -> bool {
        match self.options.vae_tiling {
            VaeTiling::On => true,
            VaeTiling::Off => false,
            VaeTiling::Auto => {
                let (width, height) = self.output_size(req);
                self.auto_tile_vae(width, height)
            }
        }
    }

    /// The size of a request's images: the hires fix's target, else the request's size.
    pub fn output_size(&self, req: &GenerateRequest) -> (usize, usize) {
        req.output_size(self.info.vae_scale_factor)
    }

    /// Checks a request against the model before it is queued or run.
    pub fn validate(&self, req: &GenerateRequest) -> Result<()> {
        let invalid = |m: String| Err(EngineError::InvalidRequest(m));
        let f = self.info.vae_scale_factor;
        for (field, value) in [("width", req.width), ("height", req.height)] {
            if value == 0 || value % f != 0 {
                return invalid(format!(
                    "{field} must be a positive multiple of {f}, got {value}"
                ));
            }
        }
        // diffusers refuses more inference steps than training timesteps.
        let train_steps = self.model.num_train_timesteps();
        if req.steps == 0 || req.steps > train_steps {
            return invalid(format!(
                "steps must be between 1 and {train_steps}, got {}",
                req.steps
            ));
        }
        if req.batch_size == 0 {
            return invalid("batch_size must be at least 1".into());
        }
        if !req.cfg_scale.is_finite() {
            return invalid(format!(
                "cfg_scale must be a finite number, got {}",
                req.cfg_scale
            ));
        }
        let max_skip = self.model.text.max_clip_skip();
        if req.clip_skip > max_skip {
            return invalid(format!(
                "clip_skip must be at most {max_skip} for this model's text encoder, got {}",
                req.clip_skip
            ));
        }
        for text in [&req.prompt, &req.negative_prompt] {
            crate::prompt::parse(text, req.prompt_syntax)?;
        }
        crate::img2img::validate(&self.model, req)?;
        if let Some(hires) = &req.hires {
            if req.init.is_some() {
                return invalid(
                    "the hires fix is for text-to-image; an image-to-image job runs at its own size"
                        .into(),
                );
            }
            hires.validate(req.steps, train_steps)?;
            hires.geometry(req.width, req.height, f)?;
        }
        if let Some(init) = req.init.as_ref().filter(|i| i.resize_latents) {
            // Encoded at its own size: that must fit the plan too.
            let (w, h) = (init.image.width / f * f, init.image.height / f * f);
            if w == 0 || h == 0 {
                return invalid(format!(
                    "an image resized in latent space must be at least {f}x{f} pixels"
                ));
            }
            self.plan.check(w, h, 1, pipeline::uses_guidance(req), f)?;
        }
        let (width, height) = self.output_size(req);
        self.plan.check(
            width,
            height,
            req.batch_size,
            pipeline::uses_guidance(req),
            f,
        )?;
        Ok(())
    }

    /// Generates the images of one request.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        observer: &mut dyn Observer,
    ) -> Result<GenerationOutput> {
        self.generate_batch(std::slice::from_ref(req), observer)?
            .pop()
            .unwrap_or(Err(EngineError::Cancelled))
    }

    /// Runs compatible jobs as one UNet batch; each job's result is independent
    /// (a cancelled job yields `Err(Cancelled)` in its slot). The outer error is
    /// a failure of the whole batch.
    pub fn generate_batch(
        &self,
        jobs: &[GenerateRequest],
        observer: &mut dyn Observer,
    ) -> Result<Vec<Result<GenerationOutput>>> {
        for job in jobs {
            self.validate(job)?;
            if !batch_compatible(job, &jobs[0]) {
                return Err(EngineError::InvalidRequest(
                    "jobs in one batch must share size, steps, sampler, guidance and hires fix"
                        .into(),
                ));
            }
        }
        // Each job fits alone; the batch as a whole must fit too.
        if let Some(first) = jobs.first() {
            let images = jobs.iter().map(|j| j.batch_size).sum();
            let (width, height) = self.output_size(first);
            self.plan.check(
                width,
                height,
                images,
                pipeline::uses_guidance(first),
                self.info.vae_scale_factor,
            )?;
        }
        let seeded: Vec<pipeline::Job> = jobs
            .iter()
            .map(|j| pipeline::Job {
                request: j.clone(),
                seed: j.seed.unwrap_or_else(random_seed),
                tile_vae: self.tile_vae(j),
            })
            .collect();
        let results = pipeline::generate_batch(&self.model, &self.label, &seeded, observer)?;
        Ok(results
            .into_iter()
            .map(|r| r.map(|(images, timings)| GenerationOutput { images, timings }))
            .collect())
    }
}

/// Jobs that may share one batch: same size, steps, sampler, guidance on/off
/// and hires fix (its second pass runs them together again).
pub fn batch_compatible(a: &GenerateRequest, b: &GenerateRequest) -> bool {
    a.hires == b.hires
        && a.width == b.width
        && a.height == b.height
        && a.steps == b.steps
        && a.sampler == b.sampler
        && pipeline::uses_guidance(a) == pipeline::uses_guidance(b)
}

/// Turbo (adversarially distilled) models want 1-4 steps and no guidance. SD-Turbo
/// ships its base model's configs, so only the name tells; SDXL-Turbo's configs
/// tell too ([`StableDiffusion::has_turbo_configs`]).
fn is_turbo(name: &str) -> bool {
    name.to_ascii_lowercase().contains("turbo")
}

/// A random seed in the range torch's generator distinguishes (32 bits).
pub fn random_seed() -> u64 {
    rand::random::<u32>() as u64
}

/// The device `choice` names; `Auto` falls back to the CPU, an explicit
/// `cuda:N` that cannot be opened is an error naming why.
fn open_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => {
            #[cfg(feature = "cuda")]
            if let Ok(d) = Device::new_cuda(0) {
                return Ok(d);
            }
            Ok(Device::Cpu)
        }
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(n) => Device::new_cuda(n)
            .map_err(|e| EngineError::Device(format!("cannot open CUDA device {n}: {e}"))),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(n) => Err(EngineError::Device(format!(
            "--device cuda:{n}: this sdserve was built without CUDA (cargo feature `cuda`)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_source_tells_folders_from_repo_ids() {
        assert_eq!(
            ModelSource::parse("stabilityai/sd-turbo"),
            ModelSource::Hub {
                repo: "stabilityai/sd-turbo".into()
            }
        );
        for folder in [
            "./models/sd15",
            "/srv/models/sd15",
            "sd15",
            "a/b/c",
            ".",
            "models/v1-5.safetensors",
            "x/y.ckpt",
        ] {
            assert!(
                matches!(ModelSource::parse(folder), ModelSource::Dir(_)),
                "{folder}"
            );
        }
        assert!(is_turbo("stabilityai/sd-turbo") && !is_turbo("stable-diffusion-v1-5"));
    }
}
