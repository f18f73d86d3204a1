//! Samplers by their AUTOMATIC1111 names and schedule types, each equal to a
//! diffusers scheduler built with `<Scheduler>.from_config(pipe.scheduler.config,
//! **kwargs)`:
//!
//! | A1111 sampler | diffusers class | kwargs |
//! |---|---|---|
//! | `Euler` | `EulerDiscreteScheduler` | |
//! | `Euler a` | `EulerAncestralDiscreteScheduler` | |
//! | `LMS` | `LMSDiscreteScheduler` | |
//! | `Heun` | `HeunDiscreteScheduler` | |
//! | `DPM2` | `KDPM2DiscreteScheduler` | |
//! | `DPM2 a` | `KDPM2AncestralDiscreteScheduler` | |
//! | `DPM++ 2M` | `DPMSolverMultistepScheduler` | |
//! | `DPM++ 2M SDE` | `DPMSolverMultistepScheduler` | `algorithm_type="sde-dpmsolver++"` |
//! | `DPM++ 3M SDE` | `DPMSolverMultistepScheduler` | `algorithm_type="sde-dpmsolver++", solver_order=3` |
//! | `UniPC` | `UniPCMultistepScheduler` | |
//! | `LCM` | `LCMScheduler` | |
//! | `PLMS` | `PNDMScheduler` | `skip_prk_steps=True` |
//! | `DDIM` | `DDIMScheduler` | |
//!
//! | schedule type | kwargs | samplers |
//! |---|---|---|
//! | `Automatic` | none (the config's own) | all |
//! | `Karras` | `use_karras_sigmas=True` | all but DDIM, PLMS, LCM |
//! | `Exponential` | `use_exponential_sigmas=True` | all but DDIM, PLMS, LCM |
//! | `Beta` | `use_beta_sigmas=True` | all but DDIM, PLMS, LCM |
//! | `SGM Uniform` | `timestep_spacing="trailing"` | all but LCM |
//!
//! `Euler a` with Karras, exponential or beta sigmas has no diffusers class:
//! it steps as `EulerAncestralDiscreteScheduler` over the sigmas and
//! timesteps `EulerDiscreteScheduler` computes with that kwarg.
//!
//! A [`Sampler`] is built per job and per generation: it owns the job's
//! schedule and any multistep history, so jobs sharing a UNet batch stay
//! independent and can be dropped between steps. Its indices are UNet call
//! indices (diffusers' `step_index`): Heun and DPM2 make two calls per step
//! but the last, PLMS one more call than steps.

mod ddim;
mod dpm2;
mod dpm_multistep;
mod euler;
mod heun;
mod id;
mod lcm;
mod lms;
mod plms;
pub mod schedule;
pub mod sigmas;
mod unipc;

use candle_core::Tensor;

pub use id::{
    SamplerId, SamplerName, ScheduleType, UnknownSampler, UnknownSchedule, UnsupportedSchedule,
};

use crate::config::SchedulerConfig;
use crate::error::{EngineError, Result};
use crate::rng::TorchRng;
use dpm_multistep::{multistep_schedule, DpmMultistep, DpmOptions};
use schedule::{NoiseSchedule, PredictionType, SchedulerClass, TimestepSpacing};
use sigmas::{KSchedule, KSigmas, SigmaSpacing};
use unipc::{UniPc, UniPcOptions};

/// One sampling run: timesteps, input scaling and the update rule.
pub trait Sampler: Send {
    /// Timesteps passed to the UNet, one per UNet call (float for the
    /// k-diffusion style samplers' interpolated timesteps).
    fn timesteps(&self) -> &[f64];
    /// diffusers' `scheduler.order`: UNet calls per step. Image to image
    /// starts at call `start_step * order`.
    fn order(&self) -> usize {
        1
    }
    /// Scale of the initial noise (`scheduler.init_noise_sigma`); 1 for the
    /// variance-preserving samplers (DDIM, DPM-Solver).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// `scheduler.scale_model_input(sample, t)` for call `step`; the
    /// variance-preserving samplers feed the sample unchanged.
    fn scale_model_input(&self, sample: &Tensor, _step: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }
    /// `scheduler.add_noise(original, noise, t)` at the noise level of call
    /// `step` (diffusers indexes it by `begin_index` or `step_index`, which is
    /// `step` here): where image-to-image starts, and inpainting's blend.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor>;
    /// `scheduler.step(model_output, t, sample, generator)` for call `step`.
    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut TorchRng,
    ) -> Result<Tensor>;
}

/// Checks what only the sampler can tell about a request: its schedule
/// type, and LCM's step limit. Cheap: builds nothing from the config but
/// what that needs.
pub fn validate(
    id: SamplerId,
    schedule: ScheduleType,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<()> {
    if !id.schedule_types().contains(&schedule) {
        let e = UnsupportedSchedule {
            sampler: id,
            schedule,
        };
        return Err(EngineError::InvalidRequest(e.to_string()));
    }
    if id == SamplerId::Lcm {
        let original = config.original_inference_steps.unwrap_or(50);
        if steps > original {
            return Err(EngineError::InvalidRequest(format!(
                "LCM runs at most {original} steps on this model (its original_inference_steps), not {steps}"
            )));
        }
    }
    Ok(())
}

/// The sigma spacing a request asks for: the schedule type's, or with
/// `Automatic` the config's own `use_*_sigmas` switch.
fn sigma_spacing(schedule: ScheduleType, config: &SchedulerConfig) -> SigmaSpacing {
    match schedule {
        ScheduleType::Karras => SigmaSpacing::Karras,
        ScheduleType::Exponential => SigmaSpacing::Exponential,
        ScheduleType::Beta => SigmaSpacing::Beta,
        ScheduleType::SgmUniform => SigmaSpacing::Interpolated,
        ScheduleType::Automatic => {
            if config.use_karras_sigmas == Some(true) {
                SigmaSpacing::Karras
            } else if config.use_exponential_sigmas == Some(true) {
                SigmaSpacing::Exponential
            } else if config.use_beta_sigmas == Some(true) {
                SigmaSpacing::Beta
            } else {
                SigmaSpacing::Interpolated
            }
        }
    }
}

/// Refuses config switches this sampler's diffusers class would read but no
/// sampler here implements (keys the class lacks, diffusers drops: so do we).
fn check_config(id: SamplerId, config: &SchedulerConfig) -> Result<()> {
    let dpm = matches!(
        id,
        SamplerId::DpmPp2m | SamplerId::DpmPp2mSde | SamplerId::DpmPp3mSde
    );
    let unipc = id == SamplerId::UniPc;
    let euler = id == SamplerId::Euler;
    let unsupported = |what: String| {
        Err(EngineError::Unsupported(format!(
            "scheduler_config.json: {what} is not supported"
        )))
    };
    if dpm && config.use_lu_lambdas == Some(true) {
        return unsupported("use_lu_lambdas".into());
    }
    if (dpm || unipc) && config.use_flow_sigmas == Some(true) {
        return unsupported("use_flow_sigmas".into());
    }
    if dpm {
        if let Some(v) = config.variance_type.as_deref() {
            return unsupported(format!("variance_type {v:?}"));
        }
        if let Some(l) = config.lambda_min_clipped.filter(|l| l.is_finite()) {
            return unsupported(format!("lambda_min_clipped {l}"));
        }
    }
    if unipc && config.predict_x0 == Some(false) {
        return unsupported("predict_x0 false".into());
    }
    if dpm || unipc || euler {
        if let Some(t) = config.final_sigmas_type.as_deref().filter(|t| *t != "zero") {
            return unsupported(format!("final_sigmas_type {t:?}"));
        }
    }
    if euler {
        if let Some(t) = config
            .interpolation_type
            .as_deref()
            .filter(|t| *t != "linear")
        {
            return unsupported(format!("interpolation_type {t:?}"));
        }
    }
    Ok(())
}

/// Builds the sampler `id` on `schedule` for `steps` steps from the model's
/// scheduler config (see the module's table).
pub fn build(
    id: SamplerId,
    schedule_type: ScheduleType,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<Box<dyn Sampler>> {
    if steps == 0 {
        return Err(EngineError::InvalidRequest(
            "steps must be at least 1".into(),
        ));
    }
    validate(id, schedule_type, config, steps)?;
    check_config(id, config)?;
    let class = match id {
        SamplerId::Ddim => SchedulerClass::Ddim,
        SamplerId::Euler => SchedulerClass::Euler,
        SamplerId::EulerAncestral => SchedulerClass::EulerAncestral,
        SamplerId::Lms => SchedulerClass::Lms,
        SamplerId::Heun => SchedulerClass::Heun,
        SamplerId::Dpm2 => SchedulerClass::KDpm2,
        SamplerId::Dpm2Ancestral => SchedulerClass::KDpm2Ancestral,
        SamplerId::DpmPp2m | SamplerId::DpmPp2mSde | SamplerId::DpmPp3mSde => {
            SchedulerClass::DpmSolverMultistep
        }
        SamplerId::UniPc => SchedulerClass::UniPc,
        SamplerId::Lcm => SchedulerClass::Lcm,
        SamplerId::Plms => SchedulerClass::Pndm,
    };
    let mut schedule = NoiseSchedule::from_config(config, class)?;
    if schedule_type == ScheduleType::SgmUniform {
        schedule.spacing = TimestepSpacing::Trailing;
    }
    // EulerAncestralDiscreteScheduler has no use_*_sigmas: a config's switch
    // does not reach it (from_config drops the key); a schedule type does.
    let spacing = match (id, schedule_type) {
        (SamplerId::EulerAncestral, ScheduleType::Automatic) => SigmaSpacing::Interpolated,
        _ => sigma_spacing(schedule_type, config),
    };
    let prediction = schedule.prediction_type;
    let bounds = (config.sigma_min, config.sigma_max);
    let k_sigmas = |round_karras: bool| -> KSigmas {
        KSchedule::new(&schedule, steps, spacing, bounds, round_karras).finish(schedule.spacing)
    };
    let solver_order = config.solver_order.unwrap_or(2);
    if solver_order == 0 || solver_order > 3 {
        return Err(EngineError::Unsupported(format!(
            "scheduler_config.json: solver_order {solver_order} is not supported"
        )));
    }
    let dpm = |order: usize, sde: bool| DpmOptions {
        order,
        sde,
        heun: config.solver_type.as_deref() == Some("heun"),
        lower_order_final: config.lower_order_final.unwrap_or(true),
    };
    let clip = |default: bool| {
        config
            .clip_sample
            .unwrap_or(default)
            .then(|| config.clip_sample_range.unwrap_or(1.0) as f32)
    };
    Ok(match id {
        SamplerId::Ddim => Box::new(ddim::Ddim::new(schedule, config, steps)),
        SamplerId::Plms => Box::new(plms::Plms::new(schedule, config, steps)?),
        SamplerId::Lcm => Box::new(lcm::Lcm::new(schedule, config, steps)?),
        SamplerId::Euler => Box::new(euler::Euler::new(k_sigmas(false), prediction, false)),
        SamplerId::EulerAncestral => Box::new(euler::Euler::new(k_sigmas(false), prediction, true)),
        SamplerId::Lms => Box::new(lms::Lms::new(k_sigmas(false), prediction)),
        SamplerId::Heun => Box::new(heun::Heun::new(k_sigmas(false), prediction, clip(false))),
        SamplerId::Dpm2 | SamplerId::Dpm2Ancestral => {
            let log_sigmas: Vec<f32> = schedule.train_sigmas().iter().map(|s| s.ln()).collect();
            let ancestral = id == SamplerId::Dpm2Ancestral;
            Box::new(dpm2::Dpm2::new(
                k_sigmas(true),
                &log_sigmas,
                prediction,
                ancestral,
            )?)
        }
        SamplerId::DpmPp2m => Box::new(DpmMultistep::new(
            multistep_schedule(&schedule, steps, spacing, (None, None)),
            prediction,
            dpm(solver_order, false),
        )),
        SamplerId::DpmPp2mSde => Box::new(DpmMultistep::new(
            multistep_schedule(&schedule, steps, spacing, (None, None)),
            prediction,
            dpm(solver_order, true),
        )),
        SamplerId::DpmPp3mSde => Box::new(DpmMultistep::new(
            multistep_schedule(&schedule, steps, spacing, (None, None)),
            prediction,
            dpm(3, true),
        )),
        SamplerId::UniPc => Box::new(UniPc::new(
            multistep_schedule(&schedule, steps, spacing, bounds),
            prediction,
            UniPcOptions {
                order: solver_order,
                bh1: config.solver_type.as_deref() == Some("bh1"),
                lower_order_final: config.lower_order_final.unwrap_or(true),
                disable_corrector: config.disable_corrector.clone().unwrap_or_default(),
            },
        )),
    })
}

/// `sample / sqrt(sigma^2 + 1)`: the sigma-space samplers' `scale_model_input`.
fn scale_by_sigma(sample: &Tensor, sigma: f32) -> Result<Tensor> {
    Ok((sample / (sigma * sigma + 1.0).sqrt() as f64)?)
}

/// `original + noise * sigma`: the sigma-space samplers' `add_noise`.
fn add_noise_sigma(original: &Tensor, noise: &Tensor, sigma: f32) -> Result<Tensor> {
    Ok((original + (noise * sigma as f64)?)?)
}

/// `sqrt(alpha_cumprod) * original + sqrt(1 - alpha_cumprod) * noise`: DDPM's
/// `add_noise`, as DDIM, PNDM and LCM compute it.
fn add_noise_alpha(original: &Tensor, noise: &Tensor, alpha_cumprod: f32) -> Result<Tensor> {
    let (a, b) = (alpha_cumprod.sqrt(), (1.0 - alpha_cumprod).sqrt());
    Ok(((original * a as f64)? + (noise * b as f64)?)?)
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
            r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1, "lambda_min_clipped": null}"#,
        )
        .unwrap();
        for id in SamplerId::ALL {
            for schedule in id.schedule_types() {
                let s = build(id, *schedule, &config, 7).unwrap();
                let calls = match id {
                    SamplerId::Heun | SamplerId::Dpm2 | SamplerId::Dpm2Ancestral => 13,
                    SamplerId::Plms => 8,
                    _ => 7,
                };
                assert_eq!(s.timesteps().len(), calls, "{id} {schedule}");
                assert!(s.init_noise_sigma() >= 1.0, "{id}");
            }
        }
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn schedule_types_a_sampler_cannot_use_are_refused_by_name() {
        let config = SchedulerConfig::default();
        let err = build(SamplerId::Ddim, ScheduleType::Karras, &config, 5)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("DDIM") && err.contains("Karras") && err.contains("SGM Uniform"),
            "{err}"
        );
        let err = build(SamplerId::Lcm, ScheduleType::Automatic, &config, 51)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("at most 50 steps"), "{err}");
        assert!(build(SamplerId::Euler, ScheduleType::Automatic, &config, 0).is_err());
    }

    #[test]
    fn config_switches_reach_only_the_classes_that_read_them() {
        // An Euler-only key does not stop DDIM; DPM-Solver's own keys stop it.
        let euler_only: SchedulerConfig =
            serde_json::from_str(r#"{"interpolation_type": "log_linear"}"#).unwrap();
        assert!(build(SamplerId::Euler, ScheduleType::Automatic, &euler_only, 5).is_err());
        assert!(build(SamplerId::Ddim, ScheduleType::Automatic, &euler_only, 5).is_ok());
        let lu: SchedulerConfig = serde_json::from_str(r#"{"use_lu_lambdas": true}"#).unwrap();
        assert!(build(SamplerId::DpmPp2m, ScheduleType::Automatic, &lu, 5).is_err());
        assert!(build(SamplerId::Lms, ScheduleType::Automatic, &lu, 5).is_ok());
        // A config's Karras switch reaches Euler, not Euler a (diffusers drops it there).
        let karras: SchedulerConfig =
            serde_json::from_str(r#"{"use_karras_sigmas": true}"#).unwrap();
        let t = |id| {
            build(id, ScheduleType::Automatic, &karras, 5)
                .unwrap()
                .timesteps()
                .to_vec()
        };
        let plain = |id| {
            build(id, ScheduleType::Automatic, &SchedulerConfig::default(), 5)
                .unwrap()
                .timesteps()
                .to_vec()
        };
        assert_ne!(t(SamplerId::Euler), plain(SamplerId::Euler));
        assert_eq!(
            t(SamplerId::EulerAncestral),
            plain(SamplerId::EulerAncestral)
        );
    }
}
