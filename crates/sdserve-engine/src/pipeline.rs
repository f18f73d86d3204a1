//! The text-to-image loop of diffusers' `StableDiffusionPipeline.__call__`
//! (and `StableDiffusionXLPipeline.__call__`, which adds pooled text and size
//! conditioning): encode prompts, draw the initial noise, denoise with
//! classifier-free guidance, decode with the VAE. Several compatible jobs share each UNet call;
//! each keeps its own seed, generator, sampler state and result, so a job's
//! image does not depend on what it was batched with.

use std::time::Instant;

use candle_core::Tensor;

use crate::conditioning::{Conditioning, TextOptions};
use crate::error::{EngineError, Result};
use crate::hires::{self, Geometry, HiresFix, Upscaler};
use crate::image_ops::resize;
use crate::img2img::{self, Inpaint};
use crate::model::StableDiffusion;
use crate::prompt::PromptSyntax;
use crate::request::{GenerateRequest, GeneratedImage, Observer, Progress, Timings};
use crate::rng::TorchRng;
use crate::samplers::{self, Sampler};
use crate::unet_batch::{predict, CacheMode};
use crate::vae_tiling;

/// One job's images and the batch's stage timings, or why the job has none.
pub type JobResult = Result<(Vec<GeneratedImage>, Timings)>;

/// A validated job as the engine hands it over: the request, its seed (drawn
/// when the request had none) and whether its VAE encodes and decodes in tiles
/// (diffusers' `use_tiling`; only an input larger than one tile is cut).
pub struct Job {
    pub request: GenerateRequest,
    pub seed: u64,
    pub tile_vae: bool,
}

/// One job's state during a batched generation.
struct JobState {
    /// The request this job (or, with per-image seeds, this image) runs.
    request: GenerateRequest,
    /// Index of the [`Job`] it belongs to (observer and results are per job).
    parent: usize,
    seed: u64,
    tile_vae: bool,
    /// Conditional and (with guidance) unconditional text embeddings, `batch_size` rows each.
    cond: Conditioning,
    uncond: Option<Conditioning>,
    /// SDXL's add_time_ids `(batch_size, 6)`: (height, width), crop (0, 0), (height, width).
    time_ids: Tensor,
    latents: Tensor,
    /// First schedule index (UNet call) this job runs (image-to-image starts late).
    start_step: usize,
    inpaint: Option<Inpaint>,
    sampler: Box<dyn Sampler>,
    rng: TorchRng,
    cancelled: bool,
    /// Stopped denoising early on request; still decoded.
    finished: bool,
    /// `--step-cache`: per UNet input of this job (uncond first, then cond),
    /// the feature its last full call kept; empty until one ran.
    kept: Vec<Option<Tensor>>,
}

/// True when guidance runs the unconditional pass (`guidance_scale > 1`).
pub fn uses_guidance(request: &GenerateRequest) -> bool {
    request.cfg_scale > 1.0
}

/// Runs `requests` (already validated and mutually compatible) as one batch.
pub fn generate_batch(
    model: &StableDiffusion,
    label: &crate::png::ModelLabel,
    requests: &[Job],
    observer: &mut dyn Observer,
) -> Result<Vec<JobResult>> {
    let Some(Job { request: first, .. }) = requests.first() else {
        return Ok(Vec::new());
    };
    let guidance = uses_guidance(first);
    let device = &model.device;
    let mut timings = Timings::default();

    let started = Instant::now();
    let mut jobs = Vec::with_capacity(requests.len());
    for (parent, job) in requests.iter().enumerate() {
        let request = &job.request;
        let text = TextOptions {
            syntax: request.prompt_syntax,
            clip_skip: request.clip_skip,
        };
        let cond = model.text.encode(&request.prompt, text, device)?;
        let uncond = if guidance {
            Some(
                model
                    .text
                    .encode_negative(&request.negative_prompt, text, device)?,
            )
        } else {
            None
        };
        for (request, seed) in parts(job) {
            let n = request.batch_size;
            let time_ids = time_ids(request.height, request.width, n, device)?;
            let sampler = samplers::build(
                request.sampler,
                request.schedule_type,
                &model.scheduler,
                request.steps,
            )?;
            let mut rng = TorchRng::new(seed);
            let tiles = job
                .tile_vae
                .then(|| model.vae_tile_geometry())
                .transpose()?;
            let start =
                img2img::prepare(model, sampler.as_ref(), &request, tiles.as_ref(), &mut rng)?;
            jobs.push(JobState {
                parent,
                seed,
                tile_vae: job.tile_vae,
                cond: repeat_rows(&cond, n)?,
                uncond: uncond.as_ref().map(|u| repeat_rows(u, n)).transpose()?,
                time_ids,
                latents: start.latents,
                start_step: start.start_step,
                inpaint: start.inpaint,
                sampler,
                rng,
                cancelled: false,
                finished: false,
                kept: Vec::new(),
                request,
            });
        }
    }
    // GPU work is queued asynchronously: wait for it so each stage's time is its own.
    device.synchronize()?;
    timings.text_encoding = started.elapsed().as_secs_f64();
    observer.progress(Progress::Encoded);

    let started = Instant::now();
    // Jobs starting late (image-to-image) join the batch at their start
    // call. Jobs of one batch share sampler, steps and hires settings
    // (`batch_compatible`), so their schedules have the same calls.
    let first_call = jobs.iter().map(|j| j.start_step).min().unwrap_or(0);
    let calls = jobs.first().map_or(0, |j| j.sampler.timesteps().len());
    let second = match &first.hires {
        Some(hires) => {
            let (steps, start) = hires.schedule(first.steps);
            let sampler =
                samplers::build(first.sampler, first.schedule_type, &model.scheduler, steps)?;
            Some((hires, start * sampler.order(), sampler.timesteps().len()))
        }
        None => None,
    };
    let second_run = second.map_or(0, |(_, start, calls)| calls - start);
    let mut counter = StepCounter {
        done: 0,
        total: calls - first_call + second_run,
    };
    denoise(
        model,
        &mut jobs,
        first_call..calls,
        guidance,
        observer,
        &mut counter,
    )?;
    if let Some((hires, start, calls)) = second {
        let geometry = hires.geometry(first.width, first.height, model.vae_scale_factor)?;
        for job in jobs.iter_mut().filter(|j| !j.cancelled && !j.finished) {
            start_hires_pass(model, job, hires, &geometry)?;
        }
        denoise(
            model,
            &mut jobs,
            start..calls,
            guidance,
            observer,
            &mut counter,
        )?;
    }
    device.synchronize()?;
    timings.denoising = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut decoded: Vec<Option<Vec<GeneratedImage>>> = vec![Some(Vec::new()); requests.len()];
    for job in &jobs {
        if job.cancelled || observer.is_cancelled(job.parent) {
            decoded[job.parent] = None;
        }
        if let Some(images) = &mut decoded[job.parent] {
            images.extend(decode(model, label, job)?);
        }
    }
    timings.decoding = started.elapsed().as_secs_f64();
    observer.progress(Progress::Decoded);
    Ok(decoded
        .into_iter()
        .map(|images| images.map(|i| (i, timings)).ok_or(EngineError::Cancelled))
        .collect())
}

/// UNet calls reported so far and in all (both passes of a hires fix).
struct StepCounter {
    done: usize,
    total: usize,
}

/// Runs the UNet calls `steps` (schedule indices) for every job that has not stopped,
/// checking cancellation and early finishes before each step and reporting
/// progress (and previews) after it.
fn denoise(
    model: &StableDiffusion,
    jobs: &mut [JobState],
    steps: std::ops::Range<usize>,
    guidance: bool,
    observer: &mut dyn Observer,
    counter: &mut StepCounter,
) -> Result<()> {
    for step in steps {
        for job in jobs.iter_mut() {
            if !job.cancelled && observer.is_cancelled(job.parent) {
                job.cancelled = true;
            }
            if !job.cancelled && !job.finished && observer.finish_early(job.parent) {
                job.finished = true;
            }
        }
        if jobs.iter().all(|j| j.cancelled || j.finished) {
            break;
        }
        denoise_step(model, jobs, step, guidance)?;
        if observer.wants_preview() {
            let running = jobs.iter().find(|j| !j.cancelled && !j.finished);
            if let Some(job) = running {
                // The latents are now at step + 1's noise level (sigma 0 after the last).
                let scaled = job.sampler.scale_model_input(&job.latents, step + 1)?;
                let preview = match model.tiny_vae.as_deref() {
                    Some(tiny) => crate::preview::tiny_vae_preview(&scaled, tiny, model.vae_dtype)?,
                    None => crate::preview::cheap_preview(&scaled, model.family)?,
                };
                if let Some(preview) = preview {
                    observer.preview(crate::preview::Preview {
                        job: job.parent,
                        ..preview
                    });
                }
            }
        }
        counter.done += 1;
        observer.progress(Progress::Step {
            step: counter.done,
            total: counter.total,
        });
    }
    Ok(())
}

/// Turns a job that finished its first pass into the start of its hires
/// pass: the latents upscaled (or the decoded image resized and encoded
/// again), cropped to the target's aspect ratio, and noised to the second
/// schedule's start with a fresh generator on the job's seed (A1111 builds a
/// new ImageRNG on the same seeds; diffusers a new generator).
fn start_hires_pass(
    model: &StableDiffusion,
    job: &mut JobState,
    hires: &HiresFix,
    geometry: &Geometry,
) -> Result<()> {
    let (steps, start) = hires.schedule(job.request.steps);
    let sampler = samplers::build(
        job.request.sampler,
        job.request.schedule_type,
        &model.scheduler,
        steps,
    )?;
    let start = start * sampler.order();
    let mut rng = TorchRng::new(job.seed);
    let factor = model.vae_scale_factor;
    let (up_x, up_y) = geometry.upscale_to;
    let upscaled = match hires.upscaler {
        Upscaler::Latent(mode) => {
            hires::interpolate_tensor(&job.latents, (up_y / factor, up_x / factor), mode)?
        }
        Upscaler::Image(upscaler) => {
            let tiles = job
                .tile_vae
                .then(|| model.vae_tile_geometry())
                .transpose()?;
            let latents = unscale_latents(model, &job.latents)?;
            let mut pixels = Vec::new();
            for i in 0..latents.dim(0)? {
                let (w, h, rgb) = decode_rgb(model, tiles.as_ref(), &latents.narrow(0, i, 1)?)?;
                let rgb = resize(&rgb, (w, h), 3, (up_x, up_y), upscaler.filter());
                pixels.extend(rgb.iter().map(|v| *v as f32 / 255.0 * 2.0 - 1.0));
            }
            let n = latents.dim(0)?;
            let pixels = Tensor::from_vec(pixels, (n, up_y, up_x, 3), &model.device)?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
            img2img::encode(model, &pixels, tiles.as_ref(), &mut rng)?
        }
    };
    let (h, w) = geometry.latent;
    let cropped = upscaled
        .narrow(2, geometry.crop_top, h)?
        .narrow(3, geometry.crop_left, w)?
        .contiguous()?;
    let (n, c, _, _) = cropped.dims4()?;
    let noise = Tensor::from_vec(rng.randn(n * c * h * w), (n, c, h, w), &model.device)?;
    job.latents = sampler.add_noise(&cropped, &noise, start)?;
    job.start_step = start;
    job.sampler = sampler;
    job.rng = rng;
    // The second pass counts its step cache afresh, from a full call.
    job.kept = Vec::new();
    let (out_w, out_h) = geometry.output;
    job.time_ids = time_ids(out_h, out_w, n, &model.device)?;
    Ok(())
}

/// SDXL's add_time_ids `(n, 6)`: (height, width), crop (0, 0), (height, width).
fn time_ids(height: usize, width: usize, n: usize, device: &candle_core::Device) -> Result<Tensor> {
    let (h, w) = (height as f32, width as f32);
    Ok(Tensor::from_vec(vec![h, w, 0.0, 0.0, h, w], (1, 6), device)?.repeat((n, 1))?)
}

/// The engine jobs a request runs as: itself, or with `seed_per_image` one
/// job per image seeded `seed + i` (A1111's batches), so that each image is
/// the one its seed gives alone.
fn parts(job: &Job) -> Vec<(GenerateRequest, u64)> {
    let request = &job.request;
    if !request.seed_per_image || request.batch_size == 1 {
        return vec![(request.clone(), job.seed)];
    }
    (0..request.batch_size as u64)
        .map(|i| {
            let single = GenerateRequest {
                batch_size: 1,
                ..request.clone()
            };
            (single, job.seed.wrapping_add(i))
        })
        .collect()
}

/// One UNet call for every active job, then each job's sampler update.
/// With `--step-cache N` a job's call `c` (counted from its first) is full
/// when `c % N == 0`, shallow otherwise; full and shallow jobs run apart.
fn denoise_step(
    model: &StableDiffusion,
    jobs: &mut [JobState],
    step: usize,
    guidance: bool,
) -> Result<()> {
    let active: Vec<usize> = (0..jobs.len())
        .filter(|i| !jobs[*i].cancelled && !jobs[*i].finished && jobs[*i].start_step <= step)
        .collect();
    let Some(interval) = model.step_cache else {
        return step_jobs(model, jobs, &active, step, guidance, CacheMode::Off);
    };
    let shallow = |job: &JobState| {
        !(step - job.start_step).is_multiple_of(interval)
            && !job.kept.is_empty()
            && job.kept.iter().all(Option::is_some)
    };
    let (reuse, full): (Vec<usize>, Vec<usize>) =
        active.into_iter().partition(|&i| shallow(&jobs[i]));
    step_jobs(model, jobs, &full, step, guidance, CacheMode::Record)?;
    step_jobs(model, jobs, &reuse, step, guidance, CacheMode::Reuse)
}

/// One UNet call (per context length) for the jobs `group`, then each
/// job's sampler update.
fn step_jobs(
    model: &StableDiffusion,
    jobs: &mut [JobState],
    group: &[usize],
    step: usize,
    guidance: bool,
    cache: CacheMode,
) -> Result<()> {
    let Some(&first) = group.first() else {
        return Ok(());
    };
    let mut inputs = Vec::new();
    let mut conds: Vec<(&Conditioning, &Tensor)> = Vec::new();
    let mut kept = Vec::new();
    for &i in group {
        let job = &jobs[i];
        let scaled = job.sampler.scale_model_input(&job.latents, step)?;
        let scaled = match &job.inpaint {
            Some(inpaint) => inpaint.unet_input(&scaled)?,
            None => scaled,
        };
        if let Some(uncond) = &job.uncond {
            inputs.push(scaled.clone());
            conds.push((uncond, &job.time_ids));
        }
        inputs.push(scaled);
        conds.push((&job.cond, &job.time_ids));
        let own = if job.uncond.is_some() { 2 } else { 1 };
        kept.extend((0..own).map(|k| job.kept.get(k).cloned().flatten()));
    }
    let t = jobs[first].sampler.timesteps()[step];
    let prediction = predict(model, t, &inputs, &conds, cache, &mut kept)?;

    let mut row = 0;
    let mut kept = kept.into_iter();
    for &i in group {
        let job = &mut jobs[i];
        let own = if job.uncond.is_some() { 2 } else { 1 };
        let mine: Vec<Option<Tensor>> = kept.by_ref().take(own).collect();
        if cache == CacheMode::Record {
            job.kept = mine;
        }
        let n = job.request.batch_size;
        let noise_pred = if guidance {
            let uncond = prediction.narrow(0, row, n)?;
            let cond = prediction.narrow(0, row + n, n)?;
            row += 2 * n;
            (&uncond + ((cond - &uncond)? * job.request.cfg_scale)?)?
        } else {
            let cond = prediction.narrow(0, row, n)?;
            row += n;
            cond
        };
        job.latents = job
            .sampler
            .step(&noise_pred, step, &job.latents, &mut job.rng)?;
        if let Some(inpaint) = &job.inpaint {
            job.latents = inpaint.blend(job.sampler.as_ref(), &job.latents, step)?;
        }
    }
    Ok(())
}

/// `n` copies of a prompt's conditioning (as `num_images_per_prompt`).
fn repeat_rows(c: &Conditioning, n: usize) -> Result<Conditioning> {
    Ok(Conditioning {
        context: c.context.repeat((n, 1, 1))?,
        pooled: c.pooled.as_ref().map(|p| p.repeat((n, 1))).transpose()?,
    })
}

/// Infotext settings beyond txt2img's: the strength an image-to-image job
/// ran with, and where an image sits in a one-generator batch (its seed alone
/// does not reproduce it).
fn extra_settings(request: &GenerateRequest, position: usize) -> Vec<(&'static str, String)> {
    let mut extra = Vec::new();
    if let Some(init) = &request.init {
        extra.push(("Denoising strength", init.strength.to_string()));
        if let Some(paste) = &init.paste {
            extra.push(("Inpaint area", "Only masked".to_string()));
            extra.push(("Masked area padding", paste.padding.to_string()));
        }
    }
    if request.batch_size > 1 {
        extra.push(("Batch size", request.batch_size.to_string()));
        extra.push(("Batch pos", position.to_string()));
    }
    if let Some(hires) = &request.hires {
        extra.extend(hires.infotext_settings());
    }
    if request.clip_skip > 0 {
        extra.push(("Clip skip", (request.clip_skip + 1).to_string()));
    }
    // Plain text is A1111's emphasis option "None", which A1111 names when a
    // prompt has brackets that its default would have read as emphasis.
    let bracketed = |t: &str| t.contains('(') || t.contains('[');
    if request.prompt_syntax == PromptSyntax::Plain
        && (bracketed(&request.prompt) || bracketed(&request.negative_prompt))
    {
        extra.push(("Emphasis", "None".to_string()));
    }
    extra
}

/// The sampler's latents back in the VAE's latent space (diffusers' pipelines:
/// SDXL-style VAEs with latent statistics `latents * std / scaling_factor + mean`).
fn unscale_latents(model: &StableDiffusion, latents: &Tensor) -> Result<Tensor> {
    Ok(match &model.vae_latents_stats {
        Some((mean, std)) => latents
            .broadcast_mul(std)?
            .affine(1.0 / model.vae_scaling_factor, 0.0)?
            .broadcast_add(mean)?,
        None => ((latents / model.vae_scaling_factor)? + model.vae_shift_factor)?,
    })
}

/// One latent `(1, c, h, w)` decoded (tiled as diffusers' `enable_tiling()`
/// when `tiles` is given), `(x / 2 + 0.5).clamp(0, 1)`, rounded to 8 bits as
/// diffusers' `numpy_to_pil`: (width, height, RGB bytes).
fn decode_rgb(
    model: &StableDiffusion,
    tiles: Option<&vae_tiling::TileGeometry>,
    latent: &Tensor,
) -> Result<(usize, usize, Vec<u8>)> {
    let latent = latent.to_dtype(model.vae_dtype)?;
    let pixels = match tiles {
        Some(geometry) => vae_tiling::decode(&model.vae, geometry, &latent)?,
        None => model.vae.decode(&latent)?,
    };
    Ok(crate::vae::to_rgb(&pixels)?)
}

/// A job's images: each latent decoded, A1111's overlay applied, the infotext attached.
fn decode(
    model: &StableDiffusion,
    label: &crate::png::ModelLabel,
    job: &JobState,
) -> Result<Vec<GeneratedImage>> {
    // `--fast-decode`: the tiny VAE, as diffusers' pipelines run one swapped
    // in (`latents / scaling_factor`, whole: it needs no tiling).
    let fast = model.tiny_vae.as_deref().filter(|_| model.fast_decode);
    let latents = match fast {
        Some(tiny) => (&job.latents / tiny.scaling_factor)?,
        None => unscale_latents(model, &job.latents)?,
    };
    let n = latents.dim(0)?;
    let mut infotext = crate::png::infotext(&job.request, job.seed, label);
    if let Some(tiny) = fast {
        infotext = crate::png::with_settings(&infotext, &[("Fast decode", tiny.name.clone())]);
    }
    if let Some(interval) = model.step_cache {
        infotext =
            crate::png::with_settings(&infotext, &[("DeepCache interval", interval.to_string())]);
    }
    let tiles = (job.tile_vae && fast.is_none())
        .then(|| model.vae_tile_geometry())
        .transpose()?;
    let overlay = img2img::Overlay::for_request(&job.request);
    let mut images = Vec::with_capacity(n);
    for i in 0..n {
        let latent = latents.narrow(0, i, 1)?;
        let (width, height, mut rgb) = match fast {
            Some(tiny) => crate::vae::to_rgb(&tiny.decode(&latent.to_dtype(model.vae_dtype)?)?)?,
            None => decode_rgb(model, tiles.as_ref(), &latent)?,
        };
        if let Some(overlay) = &overlay {
            overlay.apply(&mut rgb);
        }
        let paste = job.request.init.as_ref().and_then(|i| i.paste.as_deref());
        let (width, height, rgb) = match paste {
            Some(paste) => {
                let out = img2img::paste_back(paste, &rgb, (width, height));
                (paste.canvas.width, paste.canvas.height, out)
            }
            None => (width, height, rgb),
        };
        images.push(GeneratedImage {
            width,
            height,
            rgb,
            seed: job.seed,
            infotext: crate::png::with_settings(&infotext, &extra_settings(&job.request, i)),
        });
    }
    Ok(images)
}
