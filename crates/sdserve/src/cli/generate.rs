//! `sdserve generate`: one generation from the command line, with a progress
//! bar on stderr and a timing report at the end.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;

use sdserve_engine::hires::{
    HiresFix, HiresSize, StepCount, Upscaler, DEFAULT_DENOISING_STRENGTH, UPSCALER_NAMES,
};
use sdserve_engine::image_input::{decode_rgb, DecodedImage, ImageLimits};
use sdserve_engine::image_ops::GrayImage;
use sdserve_engine::memory::human_bytes;
use sdserve_engine::request::ImageToImage;
use sdserve_engine::{
    png, DeviceChoice, Engine, EngineOptions, GenerateRequest, LoraRef, ModelSource, Observer,
    Precision, Progress, PromptSyntax, SamplerName, ScheduleType, VaeTiling,
};
use sdserve_server::models::ModelEntry;

/// Flags of `sdserve generate` (scripted against by other tools: keep stable).
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Diffusers model folder, single-file `.safetensors` checkpoint (SD 1.x/2.x, LDM layout), or a
    /// Hugging Face repo id (`org/name`).
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// How prompts are read: `plain` (as diffusers; prompts over 75 tokens
    /// are encoded in chunks) or `a1111` (A1111's `(word:1.2)`, `[word]`,
    /// `BREAK` syntax).
    #[arg(long, default_value = "plain")]
    pub prompt_syntax: PromptSyntax,
    /// Final text-encoder layers to leave out, as diffusers' `clip_skip`
    /// (A1111's "Clip skip" N is N-1 here).
    #[arg(long, default_value_t = 0)]
    pub clip_skip: usize,
    /// Folder of textual-inversion embeddings (`.safetensors`, A1111's
    /// layouts), used by file name in prompts.
    #[arg(long, value_name = "DIR")]
    pub embeddings_dir: Option<PathBuf>,
    /// Seed; -1 or absent draws a random one (printed at the end).
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<i64>,
    /// Denoising steps [default: 20, or the model's own default].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale; 1 or less disables guidance [default: 7].
    #[arg(long, allow_negative_numbers = true)]
    pub cfg_scale: Option<f64>,
    /// Sampler by A1111 name ("Euler a", "DPM++ 2M SDE", "UniPC"...) or id
    /// ("euler_ancestral"); a legacy name ("DPM++ 2M Karras") carries its
    /// schedule type.
    #[arg(long, default_value = "Euler a")]
    pub sampler: String,
    /// Schedule type: Automatic (the sampler's own), Karras, Exponential,
    /// "SGM Uniform", Beta (or automatic, karras, exponential, sgm_uniform,
    /// beta) [default: the one a legacy sampler name carries, else Automatic].
    #[arg(long)]
    pub schedule_type: Option<String>,
    /// Image width [default: the model's native size].
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height [default: the model's native size].
    #[arg(long)]
    pub height: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Image-to-image: start from this PNG or JPEG (resized to the output size
    /// with Lanczos; the output size defaults to the image's, rounded down to
    /// the VAE's multiple, as diffusers).
    #[arg(long, value_name = "FILE")]
    pub init_image: Option<PathBuf>,
    /// Inpainting mask (PNG or JPEG, white repaints, black keeps); needs --init-image.
    #[arg(long, value_name = "FILE", requires = "init_image")]
    pub mask: Option<PathBuf>,
    /// Fraction of the steps that run from the init image, in (0, 1]
    /// [default: 0.8 for image-to-image, 1 with a mask, as diffusers' pipelines].
    #[arg(long, requires = "init_image")]
    pub strength: Option<f64>,
    /// Hires fix (A1111's): generate at the size above, enlarge by this factor,
    /// then run a second image-to-image pass at the larger size.
    #[arg(long, conflicts_with = "init_image")]
    pub hires_scale: Option<f64>,
    /// Hires fix to this width instead of a factor (0 or unset with
    /// --hires-height: keep the aspect ratio; another ratio is centre-cropped).
    #[arg(long, conflicts_with_all = ["init_image", "hires_scale"])]
    pub hires_width: Option<usize>,
    /// Hires fix to this height (see --hires-width).
    #[arg(long, conflicts_with_all = ["init_image", "hires_scale"])]
    pub hires_height: Option<usize>,
    /// Hires upscaler: Latent, "Latent (antialiased)", "Latent (bicubic)",
    /// "Latent (nearest)", "Latent (nearest-exact)", None, Lanczos, Nearest.
    #[arg(long, default_value = "Latent")]
    pub hires_upscaler: String,
    /// Steps the hires pass runs (0: as many as the first pass).
    #[arg(long, default_value_t = 0)]
    pub hires_steps: usize,
    /// Denoising strength of the hires pass, in (0, 1].
    #[arg(long, default_value_t = DEFAULT_DENOISING_STRENGTH)]
    pub hires_strength: f64,
    /// Output PNG; with a batch, FILE-0.png, FILE-1.png...
    #[arg(long, default_value = "output.png")]
    pub output: PathBuf,
    /// VAE decode in overlapping tiles as diffusers' enable_vae_tiling(): on
    /// (images larger than one VAE tile), off, or auto (when memory requires).
    #[arg(long, value_name = "auto|on|off", default_value = "auto")]
    pub vae_tiling: VaeTiling,
    /// Most memory the generation may plan for (e.g. 8G, 512M, bytes); a size
    /// beyond the plan is refused before anything runs.
    #[arg(long, value_name = "SIZE", value_parser = super::parse_memory_limit)]
    pub memory_limit: Option<u64>,
    /// Folder of LoRA `.safetensors` files that --lora names.
    #[arg(long, value_name = "DIR", env = "SDSERVE_LORA_DIR")]
    pub lora_dir: Option<PathBuf>,
    /// The opt-in trades of exactness for speed.
    #[command(flatten)]
    pub trades: super::SpeedTrades,
    /// A LoRA from --lora-dir as NAME:WEIGHT (or NAME, weight 1, or
    /// NAME:TE:UNET as A1111's tag); repeatable, applied in order.
    #[arg(long = "lora", value_name = "NAME:WEIGHT", value_parser = parse_lora)]
    pub loras: Vec<LoraRef>,
    /// Precision of weights and activations: auto (f16 on CUDA, f32 on the
    /// CPU), f32, f16 or bf16.
    #[arg(long, value_name = "auto|f32|f16|bf16", default_value = "auto")]
    pub dtype: Precision,
    /// Where to run: auto (the first CUDA GPU when built with `cuda` and one is
    /// present, else the CPU), cpu, cuda or cuda:N (after CUDA_VISIBLE_DEVICES,
    /// which also selects a MIG instance: MIG-<uuid>).
    #[arg(long, value_name = "auto|cpu|cuda|cuda:N", default_value = "auto")]
    pub device: DeviceChoice,
}

/// The hires fix the flags ask for, if any (A1111's step count).
fn hires_fix(args: &GenerateArgs) -> anyhow::Result<Option<HiresFix>> {
    let size = match (args.hires_scale, args.hires_width, args.hires_height) {
        (None, None, None) => return Ok(None),
        (Some(scale), _, _) => HiresSize::Scale(scale),
        (None, width, height) => HiresSize::Resize {
            width: width.unwrap_or(0),
            height: height.unwrap_or(0),
        },
    };
    let upscaler = Upscaler::parse(&args.hires_upscaler).ok_or_else(|| {
        anyhow::anyhow!(
            "--hires-upscaler {:?} is not one of {}",
            args.hires_upscaler,
            UPSCALER_NAMES.join(", ")
        )
    })?;
    Ok(Some(HiresFix {
        upscaler,
        size,
        steps: args.hires_steps,
        denoising_strength: args.hires_strength,
        step_count: StepCount::A1111,
    }))
}

/// An init image or mask through the server's bounded decoder (PNG or JPEG).
fn read_image(path: &Path) -> anyhow::Result<DecodedImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode_rgb(&bytes, &ImageLimits::default())
        .with_context(|| format!("decoding {}", path.display()))
}

/// Shows denoising progress on stderr.
struct BarObserver(ProgressBar);

impl Observer for BarObserver {
    fn progress(&mut self, progress: Progress) {
        if let Progress::Step { step, total } = progress {
            self.0.set_length(total as u64);
            self.0.set_position(step as u64);
        }
    }
}

/// `--lora NAME[:TE[:UNET]]`, read as A1111's `<lora:...>` tag.
fn parse_lora(s: &str) -> Result<LoraRef, String> {
    let (_, mut loras) =
        sdserve_engine::extra_networks::split_extra_networks(&format!("<lora:{s}>"))
            .map_err(|e| e.to_string())?;
    match (loras.pop(), loras.is_empty()) {
        (Some(lora), true) if !lora.name.is_empty() => Ok(lora),
        _ => Err(format!("expected NAME:WEIGHT, got {s:?}")),
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let name: SamplerName = args.sampler.parse()?;
    let explicit: Option<ScheduleType> =
        args.schedule_type.as_deref().map(str::parse).transpose()?;
    let (sampler, schedule_type) = name.with_schedule(explicit)?;
    let started = Instant::now();
    let options = EngineOptions {
        vae_tiling: args.vae_tiling,
        memory_limit: args.memory_limit,
        dtype: args.dtype,
        device: args.device,
        embeddings_dir: args.embeddings_dir.clone(),
        lora_dir: args.lora_dir.clone(),
        tiny_vae: args.trades.tiny_vae.clone(),
        fast_decode: args.trades.fast_decode,
        step_cache: args.trades.step_cache.map(|n| n as usize),
    };
    let mut engine = Engine::load_with(&ModelSource::parse(&args.model), options)
        .with_context(|| format!("loading model {}", args.model))?;
    // The infotext names the model and its hash exactly as `sdserve serve` does.
    let entry = ModelEntry::from_source(&args.model);
    let sha256 = entry
        .hash_file
        .as_ref()
        .map(|key| super::models::cli_hashes().hash_now(key))
        .transpose()
        .with_context(|| format!("hashing model {}", args.model))?;
    engine.set_label(super::models::label(&entry, sha256.as_deref()));
    let load_secs = started.elapsed().as_secs_f64();
    let info = engine.info();
    let seed = match args.seed {
        None | Some(-1) => None,
        Some(s) if s < 0 => {
            anyhow::bail!("--seed must be -1 (random) or a non-negative number, got {s}")
        }
        Some(s) => Some(s as u64),
    };
    let init = args
        .init_image
        .as_deref()
        .map(|path| {
            let image = read_image(path)?;
            let mask = args
                .mask
                .as_deref()
                .map(|m| read_image(m).map(|rgb| Arc::new(GrayImage::from_rgb(&rgb))))
                .transpose()?;
            let strength = args
                .strength
                .unwrap_or(ImageToImage::default_strength(mask.is_some()));
            anyhow::Ok(ImageToImage {
                image: Arc::new(image),
                mask,
                strength,
                resize_latents: false,
                overlay: None,
                paste: None,
            })
        })
        .transpose()?;
    // diffusers' img2img output takes the init image's size, rounded down to the VAE's multiple.
    let factor = info.vae_scale_factor;
    let (default_width, default_height) = match &init {
        Some(init) => (
            init.image.width / factor * factor,
            init.image.height / factor * factor,
        ),
        None => (info.native_width, info.native_height),
    };
    let hires = hires_fix(&args)?;
    let request = GenerateRequest {
        prompt: args.prompt,
        negative_prompt: args.negative_prompt,
        seed,
        steps: args.steps.unwrap_or(info.default_steps),
        cfg_scale: args.cfg_scale.unwrap_or(info.default_cfg_scale),
        sampler,
        schedule_type,
        width: args.width.unwrap_or(default_width),
        height: args.height.unwrap_or(default_height),
        batch_size: args.batch_size,
        init,
        seed_per_image: false,
        hires,
        prompt_syntax: args.prompt_syntax,
        clip_skip: args.clip_skip,
        loras: args.loras,
    };
    engine.validate(&request)?;
    let (out_width, out_height) = engine.output_size(&request);
    let plan = engine.memory_plan();
    let estimate = plan.estimate(
        out_width,
        out_height,
        request.batch_size,
        sdserve_engine::uses_guidance(&request),
    );
    eprintln!(
        "memory: estimated peak ~{} (estimate_bytes={estimate}); budget {} ({})",
        human_bytes(estimate),
        human_bytes(plan.budget_bytes()),
        plan.budget_source()
    );

    let bar = ProgressBar::new(request.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} denoising [{bar:30}] {pos}/{len} {elapsed} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut observer = BarObserver(bar);
    let output = engine.generate(&request, &mut observer)?;
    observer.0.finish_and_clear();

    let paths = output_paths(&args.output, output.images.len());
    for (image, path) in output.images.iter().zip(&paths) {
        let bytes = png::encode_png(image)?;
        write_atomically(path, &bytes)?;
        println!("wrote {}", path.display());
    }
    let seed = output.images.first().map(|i| i.seed).unwrap_or_default();
    let t = output.timings;
    eprintln!("seed: {seed}");
    eprintln!(
        "timings: load {load_secs:.2}s, text encoding {:.2}s, denoising {:.2}s ({:.2} it/s), decoding {:.2}s",
        t.text_encoding,
        t.denoising,
        request.steps as f64 / t.denoising.max(1e-9),
        t.decoding
    );
    // Measured next to the plan's estimate printed before the run.
    if let Some(peak) = sdserve_engine::memory::peak_rss(&Default::default()) {
        eprintln!(
            "memory: peak RSS {} (peak_rss_bytes={peak})",
            human_bytes(peak)
        );
    }
    Ok(())
}

/// `FILE.png` for one image; `FILE-0.png`, `FILE-1.png`... for a batch.
fn output_paths(output: &Path, count: usize) -> Vec<PathBuf> {
    if count == 1 {
        return vec![output.to_path_buf()];
    }
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let ext = output
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    (0..count)
        .map(|i| output.with_file_name(format!("{stem}-{i}.{ext}")))
        .collect()
}

/// Writes via a temporary file and rename, so a reader never sees half a PNG.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("png.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_outputs_are_numbered() {
        assert_eq!(
            output_paths(Path::new("out/a.png"), 1),
            vec![PathBuf::from("out/a.png")]
        );
        assert_eq!(
            output_paths(Path::new("out/a.png"), 2),
            vec![PathBuf::from("out/a-0.png"), PathBuf::from("out/a-1.png")]
        );
    }
}
