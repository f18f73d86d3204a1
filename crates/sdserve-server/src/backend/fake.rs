//! A stand-in engine for tests: instant (or deliberately slow) generation of
//! images that depend only on the request and seed, with the engine's progress,
//! per-job cancellation and error behaviour. Prompts containing
//! [`FakeBackend::FAIL_MARKER`] or [`FakeBackend::PANIC_MARKER`] make a job fail or
//! the batch panic, to test those paths.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::engine_api::{
    prompt, random_seed, EngineError, GenerateRequest, GeneratedImage, GenerationOutput,
    MemoryPlan, ModelInfo, Observer, Progress, PromptSyntax, Timings,
};

use super::Backend;

/// Deterministic fake engine.
pub struct FakeBackend {
    info: ModelInfo,
    step_delay: Duration,
    batches: Mutex<Vec<usize>>,
    plan: Option<MemoryPlan>,
    /// The LoRA folder names are checked in, as the engine's `--lora-dir`.
    loras: Option<crate::engine_api::LoraDir>,
}

impl Default for FakeBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeBackend {
    /// A prompt containing this makes its job fail with an engine error.
    pub const FAIL_MARKER: &'static str = "[[fake-fail]]";
    /// A prompt containing this makes the whole batch panic.
    pub const PANIC_MARKER: &'static str = "[[fake-panic]]";

    /// A fake 64×64 model, 4 steps and CFG 7 by default, no delay.
    pub fn new() -> Self {
        Self {
            info: ModelInfo {
                name: "fake-sd".into(),
                native_width: 64,
                native_height: 64,
                default_steps: 4,
                default_cfg_scale: 7.0,
                vae_scale_factor: 8,
                max_clip_skip: 11,
                lcm_max_steps: 50,
            },
            step_delay: Duration::ZERO,
            batches: Mutex::new(Vec::new()),
            plan: None,
            loras: None,
        }
    }

    /// Sleeps this long per denoising step (to test progress, cancel and overload).
    pub fn with_step_delay(mut self, delay: Duration) -> Self {
        self.step_delay = delay;
        self
    }

    /// Uses other model facts (name, native size, defaults).
    pub fn with_info(mut self, info: ModelInfo) -> Self {
        self.info = info;
        self
    }

    /// LoRA names resolve in `dir`, as the engine's `--lora-dir`.
    pub fn with_lora_dir(mut self, dir: crate::engine_api::LoraDir) -> Self {
        self.loras = Some(dir);
        self
    }

    /// Refuses what `plan` says does not fit, as the engine does
    /// (`MemoryPlan::per_pixel` makes one with simple arithmetic).
    pub fn with_memory_plan(mut self, plan: MemoryPlan) -> Self {
        self.plan = Some(plan);
        self
    }

    /// Number of jobs in each batch run so far, in order.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.batches.lock().map(|b| b.clone()).unwrap_or_default()
    }

    fn image(&self, request: &GenerateRequest, seed: u64, index: usize) -> GeneratedImage {
        let mut key = mix(seed ^ 0x5eed);
        for byte in request
            .prompt
            .bytes()
            .chain([0])
            .chain(request.negative_prompt.bytes())
        {
            key = mix(key ^ u64::from(byte));
        }
        key = mix(key ^ request.steps as u64 ^ ((request.cfg_scale.to_bits()) << 1));
        key = mix(key ^ ((index as u64) << 32));
        // Each sampler and schedule type gives its own picture.
        for byte in [request.sampler.id(), ":", request.schedule_type.id()]
            .concat()
            .bytes()
        {
            key = mix(key ^ u64::from(byte));
        }
        // Image-to-image inputs change the picture, so tests see they arrived.
        if let Some(init) = &request.init {
            key = mix(key ^ init.strength.to_bits() ^ u64::from(init.resize_latents));
            let mask = init.mask.as_ref().map_or(&[][..], |m| &m.luma[..]);
            let overlay = init.overlay.as_ref().map_or(&[][..], |m| &m.luma[..]);
            for byte in init.image.rgb.iter().chain(mask).chain(overlay) {
                key = mix(key ^ u64::from(*byte));
            }
            key = mix(key ^ (init.image.width as u64) ^ ((mask.len() as u64) << 40));
        }
        for lora in &request.loras {
            // Each LoRA and weight changes the picture, as a real one would.
            for byte in format!("{lora:?}").bytes() {
                key = mix(key ^ u64::from(byte));
            }
        }
        if let Some(hires) = &request.hires {
            // Every setting (upscaler, size, steps, strength) changes the picture.
            for byte in format!("{hires:?}").bytes() {
                key = mix(key ^ u64::from(byte));
            }
        }
        // How the prompt is read changes the picture, when the syntax reads
        // it otherwise than plain text does (as in the engine).
        let reads_otherwise = |text: &str| {
            prompt::parse(text, request.prompt_syntax).ok()
                != prompt::parse(text, PromptSyntax::Plain).ok()
        };
        let syntax_matters =
            reads_otherwise(&request.prompt) || reads_otherwise(&request.negative_prompt);
        key = mix(key ^ request.clip_skip as u64 ^ (u64::from(syntax_matters) << 8));
        let (width, height) = request.output_size(self.info.vae_scale_factor);
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                let v = mix(key ^ ((y as u64) << 20) ^ x as u64);
                rgb.extend_from_slice(&v.to_le_bytes()[..3]);
            }
        }
        let (sampler, schedule) = (request.sampler.label(), request.schedule_type.label());
        let clip_skip = match request.clip_skip {
            0 => String::new(),
            n => format!(", Clip skip: {}", n + 1),
        };
        GeneratedImage {
            width,
            height,
            rgb,
            seed,
            infotext: format!(
                "{}\nNegative prompt: {}\nSteps: {}, Sampler: {}, Schedule type: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
                request.prompt,
                request.negative_prompt,
                request.steps,
                sampler,
                schedule,
                request.cfg_scale,
                seed,
                request.width,
                request.height,
                self.info.name
            ) + &clip_skip,
        }
    }
}

/// SplitMix64 finaliser: a cheap, well-spread hash step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Backend for FakeBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn memory_plan(&self) -> Option<&MemoryPlan> {
        self.plan.as_ref()
    }

    fn validate(&self, r: &GenerateRequest) -> Result<(), EngineError> {
        let f = self.info.vae_scale_factor;
        if r.width == 0 || r.height == 0 || r.width % f != 0 || r.height % f != 0 {
            return Err(EngineError::InvalidRequest(format!(
                "width and height must be positive multiples of {f}, got {}x{}",
                r.width, r.height
            )));
        }
        if r.steps == 0 {
            return Err(EngineError::InvalidRequest(
                "steps must be at least 1".into(),
            ));
        }
        if r.batch_size == 0 {
            return Err(EngineError::InvalidRequest(
                "batch_size must be at least 1".into(),
            ));
        }
        if r.clip_skip > self.info.max_clip_skip {
            return Err(EngineError::InvalidRequest(format!(
                "clip_skip must be at most {}, got {}",
                self.info.max_clip_skip, r.clip_skip
            )));
        }
        for lora in &r.loras {
            match &self.loras {
                Some(dir) => {
                    dir.resolve(&lora.name)?;
                }
                None => {
                    return Err(EngineError::UnknownLora {
                        name: lora.name.clone(),
                        available: Vec::new(),
                    })
                }
            }
        }
        if let Some(plan) = &self.plan {
            let guidance = crate::engine_api::uses_guidance(r);
            let (width, height) = r.output_size(f);
            plan.check(width, height, r.batch_size, guidance, f)?;
        }
        Ok(())
    }

    fn generate_batch(
        &self,
        jobs: &[GenerateRequest],
        observer: &mut dyn Observer,
    ) -> Result<Vec<Result<GenerationOutput, EngineError>>, EngineError> {
        if let Ok(mut b) = self.batches.lock() {
            b.push(jobs.len());
        }
        if let (Some(plan), Some(first)) = (&self.plan, jobs.first()) {
            let images = jobs.iter().map(|j| j.batch_size).sum();
            let guidance = crate::engine_api::uses_guidance(first);
            let f = self.info.vae_scale_factor;
            let (width, height) = first.output_size(f);
            plan.check(width, height, images, guidance, f)?;
        }
        if jobs.iter().any(|j| j.prompt.contains(Self::PANIC_MARKER)) {
            panic!("fake backend asked to panic");
        }
        let started = Instant::now();
        observer.progress(Progress::Encoded);
        let total = jobs.first().map_or(0, |j| j.steps);
        let mut cancelled = vec![false; jobs.len()];
        let mut finished = vec![false; jobs.len()];
        for step in 1..=total {
            for (i, (c, f)) in cancelled.iter_mut().zip(&mut finished).enumerate() {
                *c = *c || observer.is_cancelled(i);
                *f = *f || observer.finish_early(i);
            }
            if cancelled.iter().zip(&finished).all(|(c, f)| *c || *f) {
                break;
            }
            std::thread::sleep(self.step_delay);
            observer.progress(Progress::Step { step, total });
            if observer.wants_preview() {
                // A 2x2 preview whose grey level is the step.
                observer.preview(crate::engine_api::Preview {
                    width: 2,
                    height: 2,
                    rgb: vec![step as u8; 12],
                    job: cancelled.iter().position(|c| !c).unwrap_or(0),
                });
            }
        }
        let denoising = started.elapsed().as_secs_f64();
        observer.progress(Progress::Decoded);
        let results = jobs
            .iter()
            .zip(cancelled)
            .map(|(job, cancelled)| {
                if cancelled {
                    return Err(EngineError::Cancelled);
                }
                if job.prompt.contains(Self::FAIL_MARKER) {
                    return Err(EngineError::Unsupported("fake failure requested".into()));
                }
                let seed = job.seed.unwrap_or_else(random_seed);
                Ok(GenerationOutput {
                    images: (0..job.batch_size)
                        .map(|i| {
                            // Per-image seeds: image i is seed + i's first image.
                            if job.seed_per_image {
                                self.image(job, seed.wrapping_add(i as u64), 0)
                            } else {
                                self.image(job, seed, i)
                            }
                        })
                        .collect(),
                    timings: Timings {
                        text_encoding: 0.0,
                        denoising,
                        decoding: 0.0,
                    },
                })
            })
            .collect();
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine_api::{NoopObserver, SamplerId};

    fn request(seed: Option<u64>) -> GenerateRequest {
        GenerateRequest {
            prompt: "a cat".into(),
            negative_prompt: String::new(),
            seed,
            steps: 3,
            cfg_scale: 7.0,
            sampler: SamplerId::Euler,
            schedule_type: Default::default(),
            width: 16,
            height: 8,
            batch_size: 2,
            init: None,
            seed_per_image: false,
            hires: None,
            prompt_syntax: Default::default(),
            clip_skip: 0,
            loras: Vec::new(),
        }
    }

    #[test]
    fn images_depend_on_seed_only_not_on_the_batch() {
        let fake = FakeBackend::new();
        let alone = fake
            .generate_batch(&[request(Some(7))], &mut NoopObserver)
            .unwrap();
        let batched = fake
            .generate_batch(&[request(Some(9)), request(Some(7))], &mut NoopObserver)
            .unwrap();
        let a = &alone[0].as_ref().unwrap().images;
        let b = &batched[1].as_ref().unwrap().images;
        assert_eq!(a[0].rgb, b[0].rgb);
        assert_eq!(a[1].rgb, b[1].rgb);
        assert_ne!(a[0].rgb, a[1].rgb);
        assert_eq!(a[0].rgb.len(), 16 * 8 * 3);
        assert_ne!(batched[0].as_ref().unwrap().images[0].rgb, a[0].rgb);
        assert_eq!(fake.batch_sizes(), [1, 2]);
    }

    struct CancelSecond {
        steps: Vec<usize>,
    }
    impl Observer for CancelSecond {
        fn progress(&mut self, p: Progress) {
            if let Progress::Step { step, .. } = p {
                self.steps.push(step);
            }
        }
        fn is_cancelled(&mut self, index: usize) -> bool {
            index == 1 && !self.steps.is_empty()
        }
    }

    #[test]
    fn cancels_per_job_between_steps() {
        let fake = FakeBackend::new();
        let mut obs = CancelSecond { steps: vec![] };
        let out = fake
            .generate_batch(&[request(Some(1)), request(Some(2))], &mut obs)
            .unwrap();
        assert!(out[0].is_ok());
        assert!(matches!(out[1], Err(EngineError::Cancelled)));
        assert_eq!(obs.steps, [1, 2, 3]);
    }
}
