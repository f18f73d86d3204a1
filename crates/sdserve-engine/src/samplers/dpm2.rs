//! DPM2 and DPM2 ancestral, as diffusers' `KDPM2DiscreteScheduler` and
//! `KDPM2AncestralDiscreteScheduler` (k-diffusion's `sample_dpm_2` and
//! `sample_dpm_2_ancestral`): a midpoint method in sigma space whose second
//! UNet call of each step sits at the geometric mean of the step's sigmas.
//!
//! As in diffusers, every per-step table is laid out per UNet call
//! (`[x0, x1, x1, ..., xn, xn, xn]`) and indexed by the call index; the
//! first stage of step k is call 2k, its second stage call 2k + 1.

use candle_core::Tensor;

use super::schedule::PredictionType;
use super::sigmas::{sigma_to_t, KSigmas};
use super::{add_noise_sigma, predict_x0_ve, randn_like, scale_by_sigma, Sampler};
use crate::error::{EngineError, Result};
use crate::rng::TorchRng;

pub struct Dpm2 {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    /// Ancestral only: the noise added and the level stepped down to.
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    init_noise_sigma: f32,
    prediction: PredictionType,
    ancestral: bool,
    /// The sample the first stage started from, while the second is pending.
    first_sample: Option<Tensor>,
}

/// torch's `log().lerp(end.log(), 0.5).exp()` in float32 (with weight 0.5
/// torch computes `end - (end - start) * 0.5`).
fn log_midpoint(start: f32, end: f32) -> f32 {
    let (a, e) = (start.ln(), end.ln());
    (e - (e - a) * 0.5).exp()
}

/// `[v0] + each of v[1..] twice + [v_last]`: a per-step table laid out per call.
fn per_call(v: &[f32]) -> Vec<f32> {
    let mut out = vec![v[0]];
    for x in &v[1..] {
        out.extend([*x, *x]);
    }
    out.push(v[v.len() - 1]);
    out
}

impl Dpm2 {
    pub fn new(
        sigmas: KSigmas,
        log_sigmas: &[f32],
        prediction: PredictionType,
        ancestral: bool,
    ) -> Result<Self> {
        if prediction == PredictionType::Sample {
            return Err(EngineError::Unsupported(
                "DPM2 does not support prediction_type \"sample\" (nor does diffusers)".into(),
            ));
        }
        let base = &sigmas.sigmas;
        let n = base.len() - 1;
        let next = |i: usize| if i < n { base[i + 1] } else { 0.0 };
        let (mut up, mut down, mut interpol) = (Vec::new(), Vec::new(), Vec::new());
        for (i, sigma) in base.iter().copied().enumerate() {
            if ancestral {
                let s_next = next(i);
                let u =
                    (s_next * s_next * (sigma * sigma - s_next * s_next) / (sigma * sigma)).sqrt();
                let d = if i == n {
                    0.0
                } else {
                    (s_next * s_next - u * u).sqrt()
                };
                interpol.push(if i + 2 > n {
                    0.0
                } else {
                    log_midpoint(sigma, d)
                });
                up.push(u);
                down.push(d);
            } else {
                let previous = if i == 0 { base[n] } else { base[i - 1] };
                interpol.push(log_midpoint(sigma, previous));
            }
        }
        let t_interpol: Vec<f64> = interpol
            .iter()
            .map(|s| sigma_to_t(*s as f64, log_sigmas) as f32 as f64)
            .collect();
        // The second stage of step k runs at interpol[k + 1] (DPM2) or
        // interpol[k] (ancestral).
        let shift = usize::from(!ancestral);
        let mut timesteps = vec![sigmas.timesteps[0]];
        for k in 1..sigmas.timesteps.len() {
            timesteps.push(t_interpol[k - 1 + shift]);
            timesteps.push(sigmas.timesteps[k]);
        }
        Ok(Self {
            timesteps,
            sigmas: per_call(base),
            sigmas_interpol: per_call(&interpol),
            sigmas_up: if ancestral { per_call(&up) } else { Vec::new() },
            sigmas_down: if ancestral {
                per_call(&down)
            } else {
                Vec::new()
            },
            init_noise_sigma: sigmas.init_noise_sigma,
            prediction,
            ancestral,
            first_sample: None,
        })
    }
}

impl Sampler for Dpm2 {
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
        let sigma = match (&self.first_sample, self.ancestral) {
            (None, _) => self.sigmas[step],
            (Some(_), false) => self.sigmas_interpol[step],
            (Some(_), true) => self.sigmas_interpol[step - 1],
        };
        scale_by_sigma(sample, sigma)
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
        match self.first_sample.take() {
            None => {
                let sigma = self.sigmas[step];
                let sigma_interpol = if self.ancestral {
                    self.sigmas_interpol[step]
                } else {
                    self.sigmas_interpol[step + 1]
                };
                let x0 = predict_x0_ve(self.prediction, model_output, sample, sigma)?;
                let derivative = ((sample - x0)? / sigma as f64)?;
                let next = (sample + (derivative * (sigma_interpol - sigma) as f64)?)?;
                self.first_sample = Some(sample.clone());
                Ok(next)
            }
            Some(start) => {
                let sigma = self.sigmas[step - 1];
                let (sigma_interpol, target) = if self.ancestral {
                    (self.sigmas_interpol[step - 1], self.sigmas_down[step - 1])
                } else {
                    (self.sigmas_interpol[step], self.sigmas[step])
                };
                let x0 = predict_x0_ve(self.prediction, model_output, sample, sigma_interpol)?;
                let derivative = ((sample - x0)? / sigma_interpol as f64)?;
                let next = (start + (derivative * (target - sigma) as f64)?)?;
                if !self.ancestral {
                    return Ok(next);
                }
                let noise = randn_like(model_output, rng)?;
                Ok((next + (noise * self.sigmas_up[step - 1] as f64)?)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_laid_out_per_call() {
        assert_eq!(
            per_call(&[3.0, 2.0, 1.0, 0.0]),
            vec![3.0, 2.0, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0]
        );
        // The midpoint towards zero is zero, as torch's lerp gives.
        assert_eq!(log_midpoint(0.0, 2.0), 0.0);
        assert!((log_midpoint(4.0, 1.0) - 2.0).abs() < 1e-6);
    }

    #[test]
    fn both_variants_take_two_calls_per_step_but_the_last() {
        let log_sigmas: Vec<f32> = (0..1000).map(|i| (i as f32 / 100.0) - 4.0).collect();
        for ancestral in [false, true] {
            let sigmas = KSigmas {
                timesteps: vec![999.0, 500.0, 0.0],
                sigmas: vec![14.0, 2.0, 0.03, 0.0],
                init_noise_sigma: 14.0,
            };
            let s = Dpm2::new(sigmas, &log_sigmas, PredictionType::Epsilon, ancestral).unwrap();
            assert_eq!(s.timesteps().len(), 5);
            assert_eq!(s.timesteps()[0], 999.0);
            assert_eq!(s.timesteps()[2], 500.0);
            assert_eq!(s.timesteps()[4], 0.0);
        }
    }
}
