//! DPM-Solver++(2M), as diffusers' `DPMSolverMultistepScheduler` with its
//! defaults (dpmsolver++, order 2, midpoint, lower-order final step, final
//! sigma 0), optionally on Karras sigmas (Lu et al. 2022; Karras et al. 2022).

use candle_core::Tensor;

use super::schedule::{integer_timesteps, linspace_f64, NoiseSchedule, PredictionType};
use super::{interp, Sampler};
use crate::error::Result;
use crate::rng::TorchRng;

/// Multistep second-order solver on the data prediction.
pub struct DpmPp2m {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction: PredictionType,
    previous_x0: Option<Tensor>,
}

impl DpmPp2m {
    pub fn new(schedule: &NoiseSchedule, steps: usize, karras: bool) -> Self {
        let train = schedule.train_sigmas();
        let (timesteps, mut sigmas): (Vec<f64>, Vec<f32>) = if karras {
            let log_sigmas: Vec<f32> = train.iter().map(|s| s.ln()).collect();
            let sigma_min = train[0] as f64;
            let sigma_max = train[train.len() - 1] as f64;
            let rho = 7.0;
            let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
            let sigmas: Vec<f64> = linspace_f64(0.0, 1.0, steps)
                .into_iter()
                .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
                .collect();
            let timesteps = sigmas
                .iter()
                .map(|s| sigma_to_t(*s, &log_sigmas).round_ties_even())
                .collect();
            (timesteps, sigmas.into_iter().map(|s| s as f32).collect())
        } else {
            let timesteps: Vec<f64> = integer_timesteps(schedule, steps, true)
                .into_iter()
                .map(|t| t as f64)
                .collect();
            let sigmas = timesteps
                .iter()
                .map(|t| interp(*t, &train) as f32)
                .collect();
            (timesteps, sigmas)
        };
        sigmas.push(0.0);
        Self {
            timesteps,
            sigmas,
            prediction: schedule.prediction_type,
            previous_x0: None,
        }
    }
}

/// `_sigma_to_t`: the fractional training timestep whose log-sigma matches.
fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    let low = log_sigmas
        .iter()
        .rposition(|l| log_sigma - *l as f64 >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let (lo, hi) = (log_sigmas[low] as f64, log_sigmas[low + 1] as f64);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// (alpha_t, sigma_t, lambda_t) of the VP process at Karras sigma `sigma`.
fn vp(sigma: f32) -> (f32, f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let sigma_t = sigma * alpha;
    (alpha, sigma_t, alpha.ln() - sigma_t.ln())
}

impl Sampler for DpmPp2m {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        let (alpha, sigma, _) = vp(self.sigmas[step]);
        Ok(((original * alpha as f64)? + (noise * sigma as f64)?)?)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        _rng: &mut TorchRng,
    ) -> Result<Tensor> {
        let (alpha_s0, sigma_s0, lambda_s0) = vp(self.sigmas[step]);
        let x0 = match self.prediction {
            PredictionType::Epsilon => {
                ((sample - (model_output * sigma_s0 as f64)?)? / alpha_s0 as f64)?
            }
            PredictionType::VPrediction => {
                ((sample * alpha_s0 as f64)? - (model_output * sigma_s0 as f64)?)?
            }
            PredictionType::Sample => model_output.clone(),
        };
        let (alpha_t, sigma_t, lambda_t) = vp(self.sigmas[step + 1]);
        let h = lambda_t - lambda_s0;
        let last = step + 1 == self.timesteps.len();
        let coeff = alpha_t * ((-h).exp() - 1.0);
        let base = (sample * (sigma_t / sigma_s0) as f64)?;
        let next = match (&self.previous_x0, last) {
            (Some(m1), false) => {
                let (_, _, lambda_s1) = vp(self.sigmas[step - 1]);
                let r0 = (lambda_s0 - lambda_s1) / h;
                let d1 = ((&x0 - m1)? * (1.0 / r0) as f64)?;
                ((base - (&x0 * coeff as f64)?)? - (d1 * (0.5 * coeff) as f64)?)?
            }
            _ => (base - (&x0 * coeff as f64)?)?,
        };
        self.previous_x0 = Some(x0);
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigma_to_t_inverts_the_table() {
        let log_sigmas: Vec<f32> = (0..10).map(|i| (i as f32) * 0.5 - 2.0).collect();
        let t = sigma_to_t((log_sigmas[4] as f64).exp(), &log_sigmas);
        assert!((t - 4.0).abs() < 1e-5);
        let mid = sigma_to_t(
            ((log_sigmas[4] as f64 + log_sigmas[5] as f64) / 2.0).exp(),
            &log_sigmas,
        );
        assert!((mid - 4.5).abs() < 1e-5);
    }
}
