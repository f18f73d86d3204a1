//! The text-to-image loop of diffusers' `StableDiffusionPipeline.__call__`
//! (and `StableDiffusionXLPipeline.__call__`, which adds pooled text and size
//! conditioning): encode prompts, draw the initial noise, denoise with
//! classifier-free guidance, decode with the VAE. Several compatible jobs share each UNet call;
//! each keeps its own seed, generator, sampler state and result, so a job's
//! image does not depend on what it was batched with.

use std::time::Instant;

use candle_core::{DType, Tensor};

use crate::conditioning::Conditioning;
use crate::error::{EngineError, Result};
use crate::model::StableDiffusion;
use crate::request::{GenerateRequest, GeneratedImage, Observer, Progress, Timings};
use crate::rng::TorchRng;
use crate::samplers::{self, Sampler};
use crate::unet::AddedConditioning;
use crate::vae_tiling;

/// One job's images and the batch's stage timings, or why the job has none.
pub type JobResult = Result<(Vec<GeneratedImage>, Timings)>;

/// A validated job as the engine hands it over: the request, its seed (drawn
/// when the request had none) and whether its VAE decode tiles (diffusers'
/// `use_tiling`; the latent is still tiled only when larger than one tile).
pub struct Job {
    pub request: GenerateRequest,
    pub seed: u64,
    pub tile_vae: bool,
}

/// One job's state during a batched generation.
struct JobState<'a> {
    request: &'a GenerateRequest,
    seed: u64,
    tile_vae: bool,
    /// Conditional and (with guidance) unconditional text embeddings, `batch_size` rows each.
    cond: Conditioning,
    uncond: Option<Conditioning>,
    /// SDXL's add_time_ids `(batch_size, 6)`: (height, width), crop (0, 0), (height, width).
    time_ids: Tensor,
    latents: Tensor,
    sampler: Box<dyn Sampler>,
    rng: TorchRng,
    cancelled: bool,
}

/// True when guidance runs the unconditional pass (`guidance_scale > 1`).
pub fn uses_guidance(request: &GenerateRequest) -> bool {
    request.cfg_scale > 1.0
}

/// Runs `requests` (already validated and mutually compatible) as one batch.
pub fn generate_batch(
    model: &StableDiffusion,
    model_name: &str,
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
    for Job {
        request,
        seed,
        tile_vae,
    } in requests
    {
        let n = request.batch_size;
        let cond = repeat_rows(&model.text.encode(&request.prompt, device)?, n)?;
        let uncond = if guidance {
            Some(repeat_rows(
                &model
                    .text
                    .encode_negative(&request.negative_prompt, device)?,
                n,
            )?)
        } else {
            None
        };
        let (h, w) = (request.height as f32, request.width as f32);
        let time_ids =
            Tensor::from_vec(vec![h, w, 0.0, 0.0, h, w], (1, 6), device)?.repeat((n, 1))?;
        let sampler = samplers::build(request.sampler, &model.scheduler, request.steps)?;
        let mut rng = TorchRng::new(*seed);
        let shape = (
            n,
            model.latent_channels,
            request.height / model.vae_scale_factor,
            request.width / model.vae_scale_factor,
        );
        let noise = Tensor::from_vec(
            rng.randn(shape.0 * shape.1 * shape.2 * shape.3),
            shape,
            device,
        )?;
        let latents = (noise * sampler.init_noise_sigma())?;
        jobs.push(JobState {
            request,
            seed: *seed,
            tile_vae: *tile_vae,
            cond,
            uncond,
            time_ids,
            latents,
            sampler,
            rng,
            cancelled: false,
        });
    }
    timings.text_encoding = started.elapsed().as_secs_f64();
    observer.progress(Progress::Encoded);

    let started = Instant::now();
    let steps = first.steps;
    for step in 0..steps {
        for (i, job) in jobs.iter_mut().enumerate() {
            if !job.cancelled && observer.is_cancelled(i) {
                job.cancelled = true;
            }
        }
        if jobs.iter().all(|j| j.cancelled) {
            break;
        }
        denoise_step(model, &mut jobs, step, guidance)?;
        observer.progress(Progress::Step {
            step: step + 1,
            total: steps,
        });
    }
    timings.denoising = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut decoded = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        if job.cancelled || observer.is_cancelled(i) {
            decoded.push(None);
            continue;
        }
        decoded.push(Some(decode(model, model_name, job)?));
    }
    timings.decoding = started.elapsed().as_secs_f64();
    observer.progress(Progress::Decoded);
    Ok(decoded
        .into_iter()
        .map(|images| images.map(|i| (i, timings)).ok_or(EngineError::Cancelled))
        .collect())
}

/// One UNet call for every active job, then each job's sampler update.
fn denoise_step(
    model: &StableDiffusion,
    jobs: &mut [JobState],
    step: usize,
    guidance: bool,
) -> Result<()> {
    let active: Vec<usize> = (0..jobs.len()).filter(|i| !jobs[*i].cancelled).collect();
    let mut inputs = Vec::new();
    let mut conds: Vec<(&Conditioning, &Tensor)> = Vec::new();
    for &i in &active {
        let job = &jobs[i];
        let scaled = job.sampler.scale_model_input(&job.latents, step)?;
        if let Some(uncond) = &job.uncond {
            inputs.push(scaled.clone());
            conds.push((uncond, &job.time_ids));
        }
        inputs.push(scaled);
        conds.push((&job.cond, &job.time_ids));
    }
    let x = Tensor::cat(&inputs, 0)?;
    let contexts: Vec<&Tensor> = conds.iter().map(|(c, _)| &c.context).collect();
    let context = Tensor::cat(&contexts, 0)?;
    let pooled: Option<Vec<&Tensor>> = conds.iter().map(|(c, _)| c.pooled.as_ref()).collect();
    let added = match pooled {
        Some(pooled) if !pooled.is_empty() => Some(AddedConditioning {
            text_embeds: Tensor::cat(&pooled, 0)?,
            time_ids: Tensor::cat(&conds.iter().map(|(_, t)| *t).collect::<Vec<_>>(), 0)?,
        }),
        _ => None,
    };
    let t = jobs[active[0]].sampler.timesteps()[step];
    // Latents and sampler arithmetic stay f32; the UNet runs in the model's dtype.
    let x = x.to_dtype(model.dtype)?;
    let prediction = model
        .unet
        .forward(&x, t, &context, added.as_ref())?
        .to_dtype(DType::F32)?;

    let mut row = 0;
    for &i in &active {
        let job = &mut jobs[i];
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

/// VAE decode (tiled as diffusers' `enable_tiling()` when the job asks) and
/// `(x / 2 + 0.5).clamp(0, 1)`, rounded to 8 bits as diffusers' `numpy_to_pil`.
fn decode(
    model: &StableDiffusion,
    model_name: &str,
    job: &JobState,
) -> Result<Vec<GeneratedImage>> {
    let latents = match &model.vae_latents_stats {
        // diffusers' SDXL pipeline: latents * std / scaling_factor + mean.
        Some((mean, std)) => job
            .latents
            .broadcast_mul(std)?
            .affine(1.0 / model.vae_scaling_factor, 0.0)?
            .broadcast_add(mean)?,
        None => ((&job.latents / model.vae_scaling_factor)? + model.vae_shift_factor)?,
    };
    let (n, _, _, _) = latents.dims4()?;
    let infotext = crate::png::infotext(job.request, job.seed, model_name);
    let tiles = if job.tile_vae {
        Some(model.vae_tile_geometry()?)
    } else {
        None
    };
    let mut images = Vec::with_capacity(n);
    for i in 0..n {
        let latent = latents.narrow(0, i, 1)?.to_dtype(model.vae_dtype)?;
        let pixels = match &tiles {
            Some(geometry) => vae_tiling::decode(&model.vae, geometry, &latent)?,
            None => model.vae.decode(&latent)?,
        }
        .to_dtype(DType::F32)?;
        let pixels = ((pixels / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
        let (_, _, h, w) = pixels.dims4()?;
        let hwc: Vec<f32> = pixels
            .squeeze(0)?
            .permute((1, 2, 0))?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let rgb = hwc
            .iter()
            .map(|v| (v * 255.0).round_ties_even() as u8)
            .collect();
        images.push(GeneratedImage {
            width: w,
            height: h,
            rgb,
            seed: job.seed,
            infotext: infotext.clone(),
        });
    }
    Ok(images)
}
