//! LCM, as diffusers' `LCMScheduler` (Luo et al. 2023): each step predicts
//! the consistency function's output (a skip/out blend of the sample and the
//! data prediction) and, but for the last step, noises it to the next
//! timestep with fresh noise from the job's generator. Its timesteps come
//! from the distillation's `original_inference_steps` and ignore
//! `timestep_spacing`.

use candle_core::Tensor;

use super::schedule::{NoiseSchedule, PredictionType};
use super::{add_noise_alpha, randn_like, Sampler};
use crate::config::SchedulerConfig;
use crate::error::{EngineError, Result};
use crate::rng::TorchRng;

pub struct Lcm {
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    final_alpha_cumprod: f32,
    clip_range: Option<f32>,
    timestep_scaling: f32,
}

impl Lcm {
    pub fn new(schedule: NoiseSchedule, config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let n = schedule.num_train_timesteps;
        let original = config.original_inference_steps.unwrap_or(50);
        if original == 0 || original > n {
            return Err(EngineError::Unsupported(format!(
                "scheduler_config.json: original_inference_steps {original} must be in 1..={n}"
            )));
        }
        // `steps <= original` was checked by `samplers::validate`.
        let k = n / original;
        // [k - 1, 2k - 1, ..., original * k - 1], highest first.
        let origin: Vec<i64> = (1..=original as i64)
            .rev()
            .map(|i| i * k as i64 - 1)
            .collect();
        let len = origin.len() as f64;
        let timesteps = (0..steps)
            .map(|i| origin[(i as f64 * (len / steps as f64)).floor() as usize] as f64)
            .collect();
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        let clip_range = config
            .clip_sample
            .unwrap_or(false)
            .then(|| config.clip_sample_range.unwrap_or(1.0) as f32);
        Ok(Self {
            schedule,
            timesteps,
            final_alpha_cumprod,
            clip_range,
            timestep_scaling: config.timestep_scaling.unwrap_or(10.0) as f32,
        })
    }

    fn alpha_at(&self, t: f64) -> f32 {
        self.schedule.alpha_cumprod_at(t as i64)
    }
}

impl Sampler for Lcm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        let alpha = self.alpha_at(self.timesteps[step]);
        add_noise_alpha(original, noise, alpha)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut TorchRng,
    ) -> Result<Tensor> {
        let t = self.timesteps[step];
        let prev_t = self.timesteps.get(step + 1).copied().unwrap_or(t);
        let alpha = self.alpha_at(t);
        let alpha_prev = if prev_t >= 0.0 {
            self.alpha_at(prev_t)
        } else {
            self.final_alpha_cumprod
        };
        let beta = 1.0 - alpha;
        let scaled = t as f32 * self.timestep_scaling;
        let sigma_data2 = 0.25f32;
        let c_skip = sigma_data2 / (scaled * scaled + sigma_data2);
        let c_out = scaled / (scaled * scaled + sigma_data2).sqrt();
        let x0 = match self.schedule.prediction_type {
            PredictionType::Epsilon => {
                ((sample - (model_output * beta.sqrt() as f64)?)? / alpha.sqrt() as f64)?
            }
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => {
                ((sample * alpha.sqrt() as f64)? - (model_output * beta.sqrt() as f64)?)?
            }
        };
        let x0 = match self.clip_range {
            Some(r) => x0.clamp(-r, r)?,
            None => x0,
        };
        let denoised = ((x0 * c_out as f64)? + (sample * c_skip as f64)?)?;
        if step + 1 == self.timesteps.len() {
            return Ok(denoised);
        }
        let noise = randn_like(model_output, rng)?;
        Ok(((denoised * alpha_prev.sqrt() as f64)? + (noise * (1.0 - alpha_prev).sqrt() as f64)?)?)
    }
}
