//! DPM-Solver++ multistep, as diffusers' `DPMSolverMultistepScheduler` with
//! `algorithm_type` "dpmsolver++" (DPM++ 2M) or "sde-dpmsolver++" (DPM++ 2M
//! SDE, and with `solver_order=3` DPM++ 3M SDE), midpoint or Heun solver
//! type, lower-order final steps, final sigma 0 (Lu et al. 2022).
//!
//! The SDE variants draw their noise from the job's generator at every step,
//! as diffusers does (`randn_tensor` with the pipeline's generator). A1111's
//! k-diffusion versions draw Brownian-tree noise instead, so a seed gives
//! another image there than here; here it gives diffusers' image.

use candle_core::Tensor;

use super::schedule::{integer_timesteps, NoiseSchedule, PredictionType};
use super::sigmas::{sigma_to_t, spaced, SigmaSpacing};
use super::{interp, randn_like, Sampler};
use crate::error::Result;
use crate::rng::TorchRng;

/// What varies between the DPM++ samplers and configs.
#[derive(Debug, Clone, Copy)]
pub struct DpmOptions {
    pub order: usize,
    pub sde: bool,
    /// `solver_type="heun"` instead of "midpoint" (second order only).
    pub heun: bool,
    pub lower_order_final: bool,
}

/// Multistep solver on the data prediction.
pub struct DpmMultistep {
    timesteps: Vec<f64>,
    /// One per step plus the final 0.
    sigmas: Vec<f32>,
    prediction: PredictionType,
    options: DpmOptions,
    /// The latest data predictions, newest last.
    history: Vec<Tensor>,
}

/// The integer timesteps and sigmas of a run, as `set_timesteps` computes them.
pub fn multistep_schedule(
    schedule: &NoiseSchedule,
    steps: usize,
    spacing: SigmaSpacing,
    bounds: (Option<f64>, Option<f64>),
) -> (Vec<f64>, Vec<f32>) {
    let train = schedule.train_sigmas();
    let (timesteps, mut sigmas): (Vec<f64>, Vec<f32>) = if spacing == SigmaSpacing::Interpolated {
        let timesteps: Vec<f64> = integer_timesteps(schedule, steps, true)
            .into_iter()
            .map(|t| t as f64)
            .collect();
        let sigmas = timesteps
            .iter()
            .map(|t| interp(*t, &train) as f32)
            .collect();
        (timesteps, sigmas)
    } else {
        // The whole training range, flipped: from the largest sigma down.
        let log_sigmas: Vec<f32> = train.iter().map(|s| s.ln()).collect();
        let min = bounds.0.unwrap_or(train[0] as f64);
        let max = bounds.1.unwrap_or(train[train.len() - 1] as f64);
        let sigmas = spaced(spacing, min, max, steps);
        let timesteps = sigmas
            .iter()
            .map(|s| {
                let t = sigma_to_t(*s, &log_sigmas);
                // Karras timesteps are rounded; the others cast to int64.
                if spacing == SigmaSpacing::Karras {
                    t.round_ties_even()
                } else {
                    t.trunc()
                }
            })
            .collect();
        (timesteps, sigmas.into_iter().map(|s| s as f32).collect())
    };
    sigmas.push(0.0);
    (timesteps, sigmas)
}

impl DpmMultistep {
    pub fn new(
        (timesteps, sigmas): (Vec<f64>, Vec<f32>),
        prediction: PredictionType,
        options: DpmOptions,
    ) -> Self {
        Self {
            timesteps,
            sigmas,
            prediction,
            options,
            history: Vec::new(),
        }
    }
}

/// (alpha_t, sigma_t, lambda_t) of the VP process at Karras sigma `sigma`.
pub(super) fn vp(sigma: f32) -> (f32, f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let sigma_t = sigma * alpha;
    (alpha, sigma_t, alpha.ln() - sigma_t.ln())
}

/// `alpha_t * original + sigma_t * noise` at Karras sigma `sigma`: the VP
/// samplers' (DPM-Solver's, UniPC's) `add_noise`.
pub(super) fn add_noise_vp(original: &Tensor, noise: &Tensor, sigma: f32) -> Result<Tensor> {
    let (alpha, sigma_t, _) = vp(sigma);
    Ok(((original * alpha as f64)? + (noise * sigma_t as f64)?)?)
}

/// The data prediction x0 from the model output at VP (alpha, sigma).
pub(super) fn data_prediction(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    (alpha, sigma): (f32, f32),
) -> Result<Tensor> {
    Ok(match prediction {
        PredictionType::Epsilon => ((sample - (model_output * sigma as f64)?)? / alpha as f64)?,
        PredictionType::VPrediction => ((sample * alpha as f64)? - (model_output * sigma as f64)?)?,
        PredictionType::Sample => model_output.clone(),
    })
}

impl Sampler for DpmMultistep {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        add_noise_vp(original, noise, self.sigmas[step])
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut TorchRng,
    ) -> Result<Tensor> {
        let o = self.options;
        let len = self.timesteps.len();
        // final_sigmas_type "zero" (the only one supported): the last step
        // is first order whatever else the config says.
        let lower_final = step + 1 == len;
        let lower_second = step + 2 == len && o.lower_order_final && len < 15;
        let (alpha_s0, sigma_s0, lambda_s0) = vp(self.sigmas[step]);
        let x0 = data_prediction(self.prediction, model_output, sample, (alpha_s0, sigma_s0))?;
        self.history.push(x0);
        if self.history.len() > o.order {
            self.history.remove(0);
        }
        let noise = if o.sde {
            Some(randn_like(model_output, rng)?)
        } else {
            None
        };
        // Steps already taken with this sampler (diffusers' lower_order_nums).
        let done = self.history.len() - 1;
        let (alpha_t, sigma_t, lambda_t) = vp(self.sigmas[step + 1]);
        let h = lambda_t - lambda_s0;
        let lambda_at = |i: usize| vp(self.sigmas[i]).2;
        let m = |back: usize| &self.history[self.history.len() - 1 - back];
        let order = if o.order == 1 || done < 1 || lower_final {
            1
        } else if o.order == 2 || done < 2 || lower_second {
            2
        } else {
            3
        };
        // x_t = a * sample + b * D0 + c * D1 + d * D2 (+ noise term).
        let (a, b) = if o.sde {
            (
                sigma_t / sigma_s0 * (-h).exp(),
                alpha_t * (1.0 - (-2.0 * h).exp()),
            )
        } else {
            (sigma_t / sigma_s0, -(alpha_t * ((-h).exp() - 1.0)))
        };
        let mut next = ((sample * a as f64)? + (m(0) * b as f64)?)?;
        match order {
            1 => {}
            2 => {
                let r0 = (lambda_s0 - lambda_at(step - 1)) / h;
                let d1 = ((m(0) - m(1))? * (1.0 / r0) as f64)?;
                let c = match (o.sde, o.heun) {
                    (false, false) => -0.5 * (alpha_t * ((-h).exp() - 1.0)),
                    (false, true) => alpha_t * (((-h).exp() - 1.0) / h + 1.0),
                    (true, false) => 0.5 * (alpha_t * (1.0 - (-2.0 * h).exp())),
                    (true, true) => alpha_t * ((1.0 - (-2.0 * h).exp()) / (-2.0 * h) + 1.0),
                };
                next = (next + (d1 * c as f64)?)?;
            }
            _ => {
                let lambda_s1 = lambda_at(step - 1);
                let lambda_s2 = lambda_at(step - 2);
                let (h0, h1) = (lambda_s0 - lambda_s1, lambda_s1 - lambda_s2);
                let (r0, r1) = (h0 / h, h1 / h);
                let d1_0 = ((m(0) - m(1))? * (1.0 / r0) as f64)?;
                let d1_1 = ((m(1) - m(2))? * (1.0 / r1) as f64)?;
                let diff = (&d1_0 - &d1_1)?;
                let d1 = (&d1_0 + (&diff * (r0 / (r0 + r1)) as f64)?)?;
                let d2 = (&diff * (1.0 / (r0 + r1)) as f64)?;
                let (c, d) = if o.sde {
                    (
                        alpha_t * ((1.0 - (-2.0 * h).exp()) / (-2.0 * h) + 1.0),
                        alpha_t
                            * ((1.0 - (-2.0 * h).exp() - 2.0 * h) / ((2.0 * h) * (2.0 * h)) - 0.5),
                    )
                } else {
                    (
                        alpha_t * (((-h).exp() - 1.0) / h + 1.0),
                        -(alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5)),
                    )
                };
                next = ((next + (d1 * c as f64)?)? + (d2 * d as f64)?)?;
            }
        }
        if let Some(noise) = noise {
            let scale = sigma_t * (1.0 - (-2.0 * h).exp()).sqrt();
            next = (next + (noise * scale as f64)?)?;
        }
        Ok(next)
    }
}
