//! Samplers by their AUTOMATIC1111 names, each equal to a diffusers scheduler
//! built with `<Scheduler>.from_config(pipe.scheduler.config)`.
//!
//! A [`Sampler`] is built per job and per generation: it owns the job's
//! schedule and any multistep history, so jobs sharing a UNet batch stay
//! independent and can be dropped between steps.

mod ddim;
mod dpmpp_2m;
mod euler;
mod id;
pub mod schedule;

use candle_core::Tensor;

pub use id::{SamplerId, UnknownSampler};

use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::rng::TorchRng;
use schedule::{NoiseSchedule, PredictionType, SchedulerClass};

/// One sampling run: timesteps, input scaling and the update rule.
pub trait Sampler: Send {
    /// Timesteps passed to the UNet, one per step (float for Euler's linspace).
    fn timesteps(&self) -> &[f64];
    /// Scale of the initial noise (`scheduler.init_noise_sigma`); 1 for the
    /// variance-preserving samplers (DDIM, DPM-Solver).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// `scheduler.scale_model_input(sample, t)` for step `step`; the
    /// variance-preserving samplers feed the sample unchanged.
    fn scale_model_input(&self, sample: &Tensor, _step: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }
    /// `scheduler.add_noise(original, noise, t)` at the noise level of step
    /// `step` (diffusers indexes it by `begin_index` or `step_index`, which is
    /// `step` here): where image-to-image starts, and inpainting's blend.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor>;
    /// `scheduler.step(model_output, t, sample, generator)` for step `step`.
    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut TorchRng,
    ) -> Result<Tensor>;
}

/// Builds the sampler `id` for `steps` steps from the model's scheduler config.
pub fn build(id: SamplerId, config: &SchedulerConfig, steps: usize) -> Result<Box<dyn Sampler>> {
    let class = match id {
        SamplerId::Ddim => SchedulerClass::Ddim,
        SamplerId::Euler => SchedulerClass::Euler,
        SamplerId::EulerAncestral => SchedulerClass::EulerAncestral,
        SamplerId::DpmPp2m | SamplerId::DpmPp2mKarras => SchedulerClass::DpmSolverMultistep,
    };
    let schedule = NoiseSchedule::from_config(config, class)?;
    Ok(match id {
        SamplerId::Ddim => Box::new(ddim::Ddim::new(schedule, config, steps)),
        SamplerId::Euler => Box::new(euler::Euler::new(&schedule, steps, false)),
        SamplerId::EulerAncestral => Box::new(euler::Euler::new(&schedule, steps, true)),
        SamplerId::DpmPp2m => Box::new(dpmpp_2m::DpmPp2m::new(&schedule, steps, false)),
        SamplerId::DpmPp2mKarras => Box::new(dpmpp_2m::DpmPp2m::new(&schedule, steps, true)),
    })
}

/// Standard normal noise shaped like `like`, drawn from the job's generator.
fn randn_like(like: &Tensor, rng: &mut TorchRng) -> Result<Tensor> {
    let values = rng.randn(like.elem_count());
    Ok(Tensor::from_vec(values, like.shape(), like.device())?.to_dtype(like.dtype())?)
}

/// `np.interp(x, 0..len, table)` computed in float64.
fn interp(x: f64, table: &[f32]) -> f64 {
    let last = table.len() - 1;
    if x <= 0.0 {
        return table[0] as f64;
    }
    if x >= last as f64 {
        return table[last] as f64;
    }
    let j = x.floor() as usize;
    let (lo, hi) = (table[j] as f64, table[j + 1] as f64);
    (hi - lo) * (x - j as f64) + lo
}

/// Prediction-type helper shared by the sigma-space samplers:
/// the denoised estimate x0 from the model output at noise level `sigma`.
fn predict_x0_ve(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    Ok(match prediction {
        PredictionType::Epsilon => (sample - (model_output * sigma as f64)?)?,
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            let c_out = -sigma / s2.sqrt();
            ((model_output * c_out as f64)? + (sample / s2 as f64)?)?
        }
        PredictionType::Sample => model_output.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interp_matches_numpy_on_and_between_points() {
        let table = [0.0f32, 1.0, 4.0];
        assert_eq!(interp(0.0, &table), 0.0);
        assert_eq!(interp(1.5, &table), 2.5);
        assert_eq!(interp(2.0, &table), 4.0);
        assert_eq!(interp(7.0, &table), 4.0);
    }

    #[test]
    fn every_sampler_builds_and_has_its_steps() {
        let config: SchedulerConfig = serde_json::from_str(
            r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}"#,
        )
        .unwrap();
        for id in SamplerId::ALL {
            let s = build(id, &config, 7).unwrap();
            assert_eq!(s.timesteps().len(), 7, "{id}");
            assert!(s.init_noise_sigma() >= 1.0, "{id}");
        }
    }
}
