//! DDIM with eta 0, as diffusers' `DDIMScheduler` (Song et al. 2020, eq. 12).

use candle_core::Tensor;

use super::schedule::{integer_timesteps, NoiseSchedule, PredictionType};
use super::{add_noise_alpha, Sampler};
use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::rng::TorchRng;

/// Deterministic DDIM in the variance-preserving space.
pub struct Ddim {
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    step_ratio: i64,
    final_alpha_cumprod: f32,
    clip_range: Option<f32>,
}

impl Ddim {
    pub fn new(schedule: NoiseSchedule, config: &SchedulerConfig, steps: usize) -> Self {
        let timesteps = integer_timesteps(&schedule, steps, false)
            .into_iter()
            .map(|t| t as f64)
            .collect();
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        let clip_range = config
            .clip_sample
            .unwrap_or(true)
            .then(|| config.clip_sample_range.unwrap_or(1.0) as f32);
        Self {
            step_ratio: (schedule.num_train_timesteps / steps) as i64,
            schedule,
            timesteps,
            final_alpha_cumprod,
            clip_range,
        }
    }

    fn alpha_at(&self, t: i64) -> f32 {
        self.schedule.alpha_cumprod_at(t)
    }
}

impl Sampler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        let alpha = self.alpha_at(self.timesteps[step] as i64);
        add_noise_alpha(original, noise, alpha)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        _rng: &mut TorchRng,
    ) -> Result<Tensor> {
        let t = self.timesteps[step] as i64;
        let prev_t = t - self.step_ratio;
        let alpha = self.alpha_at(t);
        let alpha_prev = if prev_t >= 0 {
            self.alpha_at(prev_t)
        } else {
            self.final_alpha_cumprod
        };
        let beta = 1.0 - alpha;
        let (sa, sb) = (alpha.sqrt() as f64, beta.sqrt() as f64);
        let (x0, eps) = match self.schedule.prediction_type {
            PredictionType::Epsilon => (
                ((sample - (model_output * sb)?)? / sa)?,
                model_output.clone(),
            ),
            PredictionType::VPrediction => (
                ((sample * sa)? - (model_output * sb)?)?,
                ((model_output * sa)? + (sample * sb)?)?,
            ),
            PredictionType::Sample => (
                model_output.clone(),
                ((sample - (model_output * sa)?)? / sb)?,
            ),
        };
        let x0 = match self.clip_range {
            Some(r) => x0.clamp(-r, r)?,
            None => x0,
        };
        let direction = (eps * (1.0 - alpha_prev).sqrt() as f64)?;
        Ok(((x0 * alpha_prev.sqrt() as f64)? + direction)?)
    }
}
