//! Heun, as diffusers' `HeunDiscreteScheduler` (Karras et al. 2022,
//! Algorithm 1 without churn): an Euler step, then a correction with the
//! derivative at the predicted point. Each step but the last takes two UNet
//! calls, so the schedule holds `2 * steps - 1` timesteps; indices here are
//! call indices, as diffusers' `step_index`.

use candle_core::Tensor;

use super::schedule::PredictionType;
use super::{add_noise_sigma, predict_x0_ve, scale_by_sigma, KSigmas, Sampler};
use crate::error::Result;
use crate::rng::TorchRng;

pub struct Heun {
    /// `[t0, t1, t1, ..., t(n-1), t(n-1)]`.
    timesteps: Vec<f64>,
    /// `[s0, s1, s1, ..., s(n-1), s(n-1), 0]`.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    prediction: PredictionType,
    clip_range: Option<f32>,
    /// The first stage's derivative, step length and sample, while the
    /// second stage is pending.
    first_stage: Option<(Tensor, f32, Tensor)>,
}

impl Heun {
    pub fn new(sigmas: KSigmas, prediction: PredictionType, clip_range: Option<f32>) -> Self {
        let steps = sigmas.timesteps.len();
        let mut timesteps = vec![sigmas.timesteps[0]];
        let mut full = vec![sigmas.sigmas[0]];
        for i in 1..steps {
            timesteps.extend([sigmas.timesteps[i]; 2]);
            full.extend([sigmas.sigmas[i]; 2]);
        }
        full.push(sigmas.sigmas[steps]);
        Self {
            timesteps,
            sigmas: full,
            init_noise_sigma: sigmas.init_noise_sigma,
            prediction,
            clip_range,
            first_stage: None,
        }
    }
}

impl Sampler for Heun {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn order(&self) -> usize {
        2
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma as f64
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        scale_by_sigma(sample, self.sigmas[step])
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        add_noise_sigma(original, noise, self.sigmas[step])
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        _rng: &mut TorchRng,
    ) -> Result<Tensor> {
        let first = self.first_stage.is_none();
        let (sigma, sigma_next) = if first {
            (self.sigmas[step], self.sigmas[step + 1])
        } else {
            (self.sigmas[step - 1], self.sigmas[step])
        };
        let sigma_input = if first { sigma } else { sigma_next };
        let x0 = predict_x0_ve(self.prediction, model_output, sample, sigma_input)?;
        let x0 = match self.clip_range {
            Some(r) => x0.clamp(-r, r)?,
            None => x0,
        };
        match self.first_stage.take() {
            None => {
                let derivative = ((sample - x0)? / sigma as f64)?;
                let dt = sigma_next - sigma;
                let next = (sample + (&derivative * dt as f64)?)?;
                self.first_stage = Some((derivative, dt, sample.clone()));
                Ok(next)
            }
            Some((previous, dt, start)) => {
                let derivative = ((sample - x0)? / sigma_next as f64)?;
                let derivative = ((previous + derivative)? / 2.0)?;
                Ok((start + (derivative * dt as f64)?)?)
            }
        }
    }
}
