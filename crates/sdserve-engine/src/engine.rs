//! The public facade: load a model once, then generate from many requests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};

use crate::attention::ScoreBlock;
use crate::embeddings::EmbeddingLibrary;
use crate::error::{EngineError, Result};
use crate::lora::{self, LoraDir, LoraRef};
use crate::memory::{plan_for_model, MemoryPlan};
use crate::model::StableDiffusion;
use crate::options::{DeviceChoice, EngineOptions, Precision, VaeTiling};
use crate::pipeline;
use crate::png::ModelLabel;
use crate::request::{GenerateRequest, GeneratedImage, Observer, Timings};
use crate::tiny_vae::TinyVaeDecoder;

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
    /// The most steps LCM runs on this model (its scheduler config's
    /// `original_inference_steps`, 50 when absent).
    pub lcm_max_steps: usize,
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
    model: Arc<StableDiffusion>,
    embeddings: EmbeddingLibrary,
    info: ModelInfo,
    options: EngineOptions,
    plan: MemoryPlan,
    label: ModelLabel,
    /// `--lora-dir`, if given.
    loras: Option<LoraDir>,
    /// The model with the last LoRA set applied (one set at a time: its
    /// patched tensors are the only extra weights the engine holds).
    /// The applied LoRA set: its key, model and patched-copy bytes.
    lora_cache: Mutex<Option<(LoraKey, Arc<StableDiffusion>, u64)>>,
}

/// What a LoRA set's patched model depends on: each LoRA's file (path,
/// size, mtime: a replaced file is read again) and multipliers.
type LoraKey = Vec<(PathBuf, u64, Option<std::time::SystemTime>, u64, u64)>;

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
        StableDiffusion::check_folder(&dir)?;
        if let Some(warning) = crate::model::slow_precision(dtype, &device) {
            tracing::warn!("{warning}");
        }
        // Before the weights: a budget that cannot hold them is an error, not an OOM kill.
        let plan = plan_for_model(&dir, &options, &device, dtype)?;
        // The GPU's blocks of attention scores are as large as the plan counted.
        let block = plan
            .score_block_bytes()
            .map_or(ScoreBlock::DEFAULT, |bytes| {
                ScoreBlock(usize::try_from(bytes).unwrap_or(usize::MAX))
            });
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
        if let Some(interval) = options.step_cache {
            if interval < 2 {
                return Err(EngineError::InvalidRequest(format!(
                    "step cache interval {interval}: must be at least 2 (a full UNet call every N)"
                )));
            }
            model.step_cache = Some(interval);
        }
        if let Some(dir) = &options.tiny_vae {
            model.tiny_vae = Some(Arc::new(load_tiny_vae(dir, &model, &device)?));
        }
        if options.fast_decode {
            if model.tiny_vae.is_none() {
                return Err(EngineError::InvalidRequest(
                    "fast decode needs a tiny VAE (--tiny-vae DIR)".into(),
                ));
            }
            model.fast_decode = true;
        }
        let loras = options.lora_dir.as_deref().map(LoraDir::open).transpose()?;
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
            lcm_max_steps: model.scheduler.original_inference_steps.unwrap_or(50),
            name,
        };
        Ok(Self {
            model: Arc::new(model),
            embeddings,
            label: ModelLabel::named(info.name.clone()),
            info,
            options,
            plan,
            loras,
            lora_cache: Mutex::new(None),
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

    /// Whether a request's VAE encodes and decodes in tiles (diffusers'
    /// `use_tiling`; only an input larger than one tile is then cut). An init
    /// image encoded at its own size (latent resize) counts with that size.
    fn tile_vae(&self, req: &GenerateRequest) -> bool {
        match self.options.vae_tiling {
            VaeTiling::On => true,
            VaeTiling::Off => false,
            VaeTiling::Auto => {
                let (width, height) = self.output_size(req);
                let own_size = req
                    .init
                    .as_ref()
                    .filter(|init| init.resize_latents)
                    .is_some_and(|init| self.auto_tile_vae(init.image.width, init.image.height));
                own_size || self.auto_tile_vae(width, height)
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
        // The sampler's own limits (schedule types, LCM's step count), for
        // both passes of a hires fix.
        let scheduler = &self.model.scheduler;
        crate::samplers::validate(req.sampler, req.schedule_type, scheduler, req.steps)?;
        if let Some(hires) = &req.hires {
            let (steps, _) = hires.schedule(req.steps);
            crate::samplers::validate(req.sampler, req.schedule_type, scheduler, steps)?;
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
        let lora_bytes = self.check_loras(&req.loras)?;
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
            let guidance = pipeline::uses_guidance(req);
            self.plan
                .check_with_extra(w, h, 1, guidance, f, lora_bytes)?;
        }
        // The LoRA set's patched copies are held beside the base weights.
        let (width, height) = self.output_size(req);
        self.plan.check_with_extra(
            width,
            height,
            req.batch_size,
            pipeline::uses_guidance(req),
            f,
            lora_bytes,
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
                    "jobs in one batch must share size, steps, sampler, guidance, hires fix and LoRAs"
                        .into(),
                ));
            }
        }
        let loras = jobs.first().map_or(&[][..], |j| &j.loras[..]);
        let (model, lora_bytes) = self.model_for(loras)?;
        // Each job fits alone; the batch as a whole must fit too.
        if let Some(first) = jobs.first() {
            let images = jobs.iter().map(|j| j.batch_size).sum();
            let (width, height) = self.output_size(first);
            self.plan.check_with_extra(
                width,
                height,
                images,
                pipeline::uses_guidance(first),
                self.info.vae_scale_factor,
                lora_bytes,
            )?;
        }
        // Freed buffers are reused within the job, never past its own peak.
        let _reuse = crate::alloc::BlockReuse::begin();
        let seeded: Vec<pipeline::Job> = jobs
            .iter()
            .map(|j| pipeline::Job {
                request: j.clone(),
                seed: j.seed.unwrap_or_else(random_seed),
                tile_vae: self.tile_vae(j),
            })
            .collect();
        let hashes = self.lora_hashes(loras)?;
        let results = pipeline::generate_batch(&model, &self.label, &seeded, observer)?;
        Ok(results
            .into_iter()
            .map(|r| {
                r.map(|(mut images, timings)| {
                    if let Some(hashes) = &hashes {
                        for image in &mut images {
                            image.infotext = crate::png::with_settings(
                                &image.infotext,
                                &[("Lora hashes", hashes.clone())],
                            );
                        }
                    }
                    GenerationOutput { images, timings }
                })
            })
            .collect())
    }

    /// The LoRAs the engine's `--lora-dir` holds (empty without one).
    pub fn loras(&self) -> Option<&LoraDir> {
        self.loras.as_ref()
    }

    /// Count, multipliers and names of a request's LoRAs; the set must apply
    /// to this model (built now and cached, so a bad file is a request error).
    /// Returns the bytes its patched weight copies hold.
    fn check_loras(&self, loras: &[LoraRef]) -> Result<u64> {
        if loras.len() > lora::MAX_LORAS {
            return Err(EngineError::InvalidRequest(format!(
                "at most {} LoRAs per request, got {}",
                lora::MAX_LORAS,
                loras.len()
            )));
        }
        for l in loras {
            for w in [l.te_weight, l.unet_weight] {
                if !w.is_finite() || w.abs() > lora::MAX_WEIGHT {
                    return Err(EngineError::InvalidRequest(format!(
                        "LoRA \"{}\": weight {w} is not a number within ±{}",
                        l.name,
                        lora::MAX_WEIGHT
                    )));
                }
            }
        }
        self.model_for(loras).map(|(_, bytes)| bytes)
    }

    /// The bytes `loras`' patched weight copies take (0 for none): what the
    /// memory plan counts besides a request's own need.
    pub fn lora_patch_bytes(&self, loras: &[LoraRef]) -> Result<u64> {
        self.check_loras(loras)
    }

    /// The model with `loras` applied and its patched copies' bytes: the
    /// base model for none, else the cached set's, else a new one (replacing
    /// the cached set).
    fn model_for(&self, loras: &[LoraRef]) -> Result<(Arc<StableDiffusion>, u64)> {
        if loras.is_empty() {
            return Ok((self.model.clone(), 0));
        }
        let mut key = LoraKey::new();
        let mut paths = Vec::with_capacity(loras.len());
        for l in loras {
            let path = self.lora_path(&l.name)?;
            let meta = std::fs::metadata(&path).map_err(|source| EngineError::Io {
                path: path.clone(),
                source,
            })?;
            key.push((
                path.clone(),
                meta.len(),
                meta.modified().ok(),
                l.te_weight.to_bits(),
                l.unet_weight.to_bits(),
            ));
            paths.push(path);
        }
        let mut cache = self.lora_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, model, bytes)) = cache.as_ref() {
            if *cached == key {
                return Ok((model.clone(), *bytes));
            }
        }
        // Drop the previous set first: at most one patched copy is held.
        *cache = None;
        let base = &self.model.lora_base.base;
        let mut layers = Vec::new();
        for (l, path) in loras.iter().zip(&paths) {
            let read = lora::read_layers(
                &l.name,
                path,
                |c| base.part(c).map(|p| &p.index),
                &self.model.device,
            )?;
            layers.extend(read.into_iter().map(|layer| {
                let weight = match layer.component {
                    lora::Component::Unet => l.unet_weight,
                    _ => l.te_weight,
                };
                (l.name.clone(), layer, weight)
            }));
        }
        let bytes = self.model.lora_base.patched_bytes(&layers);
        let model = Arc::new(lora::apply(&self.model, &layers)?);
        tracing::info!(
            loras = ?loras.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            layers = layers.len(),
            patched_mib = bytes / (1 << 20),
            "LoRA set applied"
        );
        *cache = Some((key, model.clone(), bytes));
        Ok((model, bytes))
    }

    fn lora_path(&self, name: &str) -> Result<PathBuf> {
        match &self.loras {
            Some(dir) => dir.resolve(name),
            None => Err(EngineError::UnknownLora {
                name: name.to_string(),
                available: Vec::new(),
            }),
        }
    }

    /// A1111's `Lora hashes` value (`"name: hash, ..."`, quoted as A1111
    /// quotes values holding `,` or `:`), or `None` without LoRAs.
    fn lora_hashes(&self, loras: &[LoraRef]) -> Result<Option<String>> {
        let (Some(dir), false) = (&self.loras, loras.is_empty()) else {
            return Ok(None);
        };
        let mut parts = Vec::with_capacity(loras.len());
        for l in loras {
            let hash = dir.short_hash(&dir.resolve(&l.name)?)?;
            let name: String = l.name.chars().filter(|c| !matches!(c, ':' | ',')).collect();
            parts.push(format!("{name}: {hash}"));
        }
        Ok(Some(format!("\"{}\"", parts.join(", "))))
    }
}

/// Jobs that may share one batch: same size, steps, sampler and schedule, guidance on/off,
/// hires fix (its second pass runs them together again) and LoRA set (one
/// set of weights per UNet call).
pub fn batch_compatible(a: &GenerateRequest, b: &GenerateRequest) -> bool {
    a.hires == b.hires
        && a.loras == b.loras
        && a.width == b.width
        && a.height == b.height
        && a.steps == b.steps
        && a.sampler == b.sampler
        && a.schedule_type == b.schedule_type
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

/// CUDA devices this process sees (after `CUDA_VISIBLE_DEVICES`); 0 without
/// a driver, a device, or CUDA in the build.
pub fn cuda_device_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        CudaContext::device_count().map_or(0, |n| usize::try_from(n).unwrap_or(0))
    }
    #[cfg(not(feature = "cuda"))]
    0
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

/// The `--tiny-vae` decoder for `model`: its latents must be the model's
/// and it must upscale as the model's VAE does.
fn load_tiny_vae(dir: &Path, model: &StableDiffusion, device: &Device) -> Result<TinyVaeDecoder> {
    let tiny = TinyVaeDecoder::load(dir, model.vae_dtype, device)?;
    if tiny.latent_channels != model.latent_channels || tiny.upscale != model.vae_scale_factor {
        return Err(EngineError::invalid_model(
            dir,
            format!(
                "this tiny VAE decodes {} latent channels at {}x; the model has {} at {}x",
                tiny.latent_channels, tiny.upscale, model.latent_channels, model.vae_scale_factor
            ),
        ));
    }
    Ok(tiny)
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
