//! PLMS, as diffusers' `PNDMScheduler` with `skip_prk_steps=True` (Liu et
//! al. 2022, the pseudo linear multistep method of the original Stable
//! Diffusion release): the first step is taken twice (a second UNet call
//! averages the two noise predictions), so a run of n steps makes n + 1 calls.

use candle_core::Tensor;

use super::schedule::{linspace_f64, NoiseSchedule, PredictionType, TimestepSpacing};
use super::{add_noise_alpha, Sampler};
use crate::config::SchedulerConfig;
use crate::error::{EngineError, Result};
use crate::rng::TorchRng;

pub struct Plms {
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    /// `num_train_timesteps // steps`, the step between timesteps.
    ratio: i64,
    final_alpha_cumprod: f32,
    /// The latest noise predictions, oldest first, at most 4.
    ets: Vec<Tensor>,
    /// The sample the first step started from, for its second call.
    first_sample: Option<Tensor>,
    counter: usize,
}

impl Plms {
    pub fn new(schedule: NoiseSchedule, config: &SchedulerConfig, steps: usize) -> Result<Self> {
        if schedule.prediction_type == PredictionType::Sample {
            return Err(EngineError::Unsupported(
                "PLMS does not support prediction_type \"sample\" (nor does diffusers)".into(),
            ));
        }
        let n = schedule.num_train_timesteps;
        // Ascending, as PNDM's `_timesteps`.
        let ascending: Vec<i64> = match schedule.spacing {
            TimestepSpacing::Linspace => linspace_f64(0.0, (n - 1) as f64, steps)
                .into_iter()
                .map(|v| v.round_ties_even() as i64)
                .collect(),
            TimestepSpacing::Leading => (0..steps)
                .map(|i| (i * (n / steps) + schedule.steps_offset) as i64)
                .collect(),
            TimestepSpacing::Trailing => {
                let mut t: Vec<i64> = super::schedule::trailing(n, steps)
                    .into_iter()
                    .map(|v| v as i64)
                    .collect();
                t.reverse();
                t
            }
        };
        // `concat(t[:-1], t[-2:-1], t[-1:])[::-1]`: the second-highest twice.
        let k = ascending.len();
        let mut timesteps: Vec<i64> = ascending[..k - 1].to_vec();
        if k >= 2 {
            timesteps.push(ascending[k - 2]);
        }
        timesteps.push(ascending[k - 1]);
        timesteps.reverse();
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(false) {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        Ok(Self {
            ratio: (n / steps) as i64,
            schedule,
            timesteps: timesteps.into_iter().map(|t| t as f64).collect(),
            final_alpha_cumprod,
            ets: Vec::new(),
            first_sample: None,
            counter: 0,
        })
    }

    fn alpha_at(&self, t: i64) -> f32 {
        if t < 0 {
            return self.final_alpha_cumprod;
        }
        self.schedule.alpha_cumprod_at(t)
    }

    /// `_get_prev_sample`: DDIM's update written with PNDM's coefficients.
    fn previous_sample(
        &self,
        sample: &Tensor,
        t: i64,
        prev_t: i64,
        output: &Tensor,
    ) -> Result<Tensor> {
        let alpha = self.alpha_at(t);
        let alpha_prev = self.alpha_at(prev_t);
        let (beta, beta_prev) = (1.0 - alpha, 1.0 - alpha_prev);
        let output = match self.schedule.prediction_type {
            PredictionType::VPrediction => {
                ((output * alpha.sqrt() as f64)? + (sample * beta.sqrt() as f64)?)?
            }
            _ => output.clone(),
        };
        let sample_coeff = (alpha_prev / alpha).sqrt();
        let denominator = alpha * beta_prev.sqrt() + (alpha * beta * alpha_prev).sqrt();
        let delta = ((output * (alpha_prev - alpha) as f64)? / denominator as f64)?;
        Ok(((sample * sample_coeff as f64)? - delta)?)
    }
}

impl Sampler for Plms {
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
        let mut t = self.timesteps[step] as i64;
        let mut prev_t = t - self.ratio;
        if self.counter == 1 {
            prev_t = t;
            t += self.ratio;
        } else {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.clone());
        }
        let e = |back: usize| &self.ets[self.ets.len() - 1 - back];
        let mut sample = sample.clone();
        let output = match (self.ets.len(), self.counter) {
            (1, 0) => {
                self.first_sample = Some(sample.clone());
                model_output.clone()
            }
            (1, 1) => {
                if let Some(first) = self.first_sample.take() {
                    sample = first;
                }
                ((model_output + e(0))? / 2.0)?
            }
            (2, _) => (((e(0) * 3.0)? - e(1))? / 2.0)?,
            (3, _) => ((((e(0) * 23.0)? - (e(1) * 16.0)?)? + (e(2) * 5.0)?)? / 12.0)?,
            _ => {
                let sum = ((((e(0) * 55.0)? - (e(1) * 59.0)?)? + (e(2) * 37.0)?)? - (e(3) * 9.0)?)?;
                (sum * (1.0 / 24.0))?
            }
        };
        let next = self.previous_sample(&sample, t, prev_t, &output)?;
        self.counter += 1;
        Ok(next)
    }
}
