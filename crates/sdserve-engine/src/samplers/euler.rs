//! Euler and Euler ancestral, as diffusers' `EulerDiscreteScheduler` and
//! `EulerAncestralDiscreteScheduler` (Karras et al. 2022, Algorithm 2 without
//! churn; k-diffusion's `sample_euler_ancestral`). Euler ancestral also runs
//! on Karras, exponential and beta sigmas, which diffusers' class lacks: it
//! then steps over the sigmas `EulerDiscreteScheduler` spaces that way.

use candle_core::Tensor;

use super::schedule::PredictionType;
use super::{add_noise_sigma, predict_x0_ve, randn_like, scale_by_sigma, KSigmas, Sampler};
use crate::error::Result;
use crate::rng::TorchRng;

/// Euler's method in sigma space; `ancestral` adds fresh noise each step.
pub struct Euler {
    timesteps: Vec<f64>,
    /// One per step plus the final 0, float32 as in diffusers.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    prediction: PredictionType,
    ancestral: bool,
}

impl Euler {
    pub fn new(sigmas: KSigmas, prediction: PredictionType, ancestral: bool) -> Self {
        Self {
            init_noise_sigma: sigmas.init_noise_sigma,
            timesteps: sigmas.timesteps,
            sigmas: sigmas.sigmas,
            prediction,
            ancestral,
        }
    }
}

impl Sampler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
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
        rng: &mut TorchRng,
    ) -> Result<Tensor> {
        let sigma = self.sigmas[step];
        let sigma_next = self.sigmas[step + 1];
        let x0 = predict_x0_ve(self.prediction, model_output, sample, sigma)?;
        let derivative = ((sample - x0)? / sigma as f64)?;
        if !self.ancestral {
            let dt = sigma_next - sigma;
            return Ok((sample + (derivative * dt as f64)?)?);
        }
        let sigma_up = (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next)
            / (sigma * sigma))
            .sqrt();
        let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma;
        let prev = (sample + (derivative * dt as f64)?)?;
        let noise = randn_like(model_output, rng)?;
        Ok((prev + (noise * sigma_up as f64)?)?)
    }
}
