//! The training noise schedule shared by every sampler: betas, cumulative
//! alphas, prediction type and timestep spacing, resolved from
//! `scheduler_config.json` with each diffusers scheduler class's defaults.
//!
//! Follows `diffusers/schedulers/scheduling_*.py` (`__init__` and
//! `set_timesteps`). Like diffusers, the cumulative alphas are float32.

use crate::config::SchedulerConfig;
use crate::error::{EngineError, Result};

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

/// How inference timesteps are spread over the training range
/// (Table 2 of "Common Diffusion Noise Schedules and Sample Steps are Flawed").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

/// The scheduler config with every field resolved for one scheduler class.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    pub num_train_timesteps: usize,
    /// Cumulative product of (1 - beta), float32 as in diffusers.
    pub alphas_cumprod: Vec<f32>,
    pub prediction_type: PredictionType,
    pub spacing: TimestepSpacing,
    pub steps_offset: usize,
}

/// Scheduler classes differ here only in defaults for absent keys and in
/// whether they know `rescale_betas_zero_snr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerClass {
    Ddim,
    Euler,
    EulerAncestral,
    DpmSolverMultistep,
    Lms,
    Heun,
    KDpm2,
    KDpm2Ancestral,
    UniPc,
    Lcm,
    Pndm,
}

impl SchedulerClass {
    /// The class's `timestep_spacing` default.
    fn default_spacing(self) -> &'static str {
        match self {
            SchedulerClass::Ddim | SchedulerClass::Pndm | SchedulerClass::Lcm => "leading",
            _ => "linspace",
        }
    }

    /// Whether the class rescales betas for zero terminal SNR (the others
    /// ignore the key, as `from_config` drops what `__init__` lacks), and
    /// whether it then lifts the last cumulative alpha off zero.
    fn zero_snr(self) -> (bool, bool) {
        match self {
            SchedulerClass::Ddim | SchedulerClass::Lcm => (true, false),
            SchedulerClass::Euler
            | SchedulerClass::EulerAncestral
            | SchedulerClass::DpmSolverMultistep
            | SchedulerClass::UniPc => (true, true),
            _ => (false, false),
        }
    }
}

impl NoiseSchedule {
    /// Resolves `config` the way `<class>.from_config(config)` would.
    pub fn from_config(config: &SchedulerConfig, class: SchedulerClass) -> Result<Self> {
        let n = config.num_train_timesteps.unwrap_or(1000);
        if n < 2 {
            return Err(unsupported(format!("num_train_timesteps {n}")));
        }
        let beta_start = config.beta_start.unwrap_or(0.0001);
        let beta_end = config.beta_end.unwrap_or(0.02);
        let mut betas: Vec<f32> = match (&config.trained_betas, config.beta_schedule.as_deref()) {
            (Some(trained), _) if !trained.is_empty() => {
                trained.iter().map(|b| *b as f32).collect()
            }
            (_, None | Some("linear")) => linspace_f32(beta_start as f32, beta_end as f32, n),
            (_, Some("scaled_linear")) => {
                linspace_f32(beta_start.sqrt() as f32, beta_end.sqrt() as f32, n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            (_, Some("squaredcos_cap_v2")) => cosine_betas(n),
            (_, Some(other)) => return Err(unsupported(format!("beta_schedule {other:?}"))),
        };
        let (knows_zero_snr, lifts_last) = class.zero_snr();
        let zero_snr = knows_zero_snr && config.rescale_betas_zero_snr.unwrap_or(false);
        if zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let mut alphas_cumprod = Vec::with_capacity(betas.len());
        let mut acc = 1.0f32;
        for b in &betas {
            acc *= 1.0 - b;
            alphas_cumprod.push(acc);
        }
        if zero_snr && lifts_last {
            // diffusers: "Close to 0 without being 0 so first sigma is not inf".
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        let prediction_type = match config.prediction_type.as_deref().unwrap_or("epsilon") {
            "epsilon" => PredictionType::Epsilon,
            "v_prediction" => PredictionType::VPrediction,
            "sample" => PredictionType::Sample,
            other => return Err(unsupported(format!("prediction_type {other:?}"))),
        };
        let spacing = match config
            .timestep_spacing
            .as_deref()
            .unwrap_or(class.default_spacing())
        {
            "linspace" => TimestepSpacing::Linspace,
            "leading" => TimestepSpacing::Leading,
            "trailing" => TimestepSpacing::Trailing,
            other => return Err(unsupported(format!("timestep_spacing {other:?}"))),
        };
        if config.thresholding.unwrap_or(false) {
            return Err(unsupported("thresholding".into()));
        }
        if let Some(t) = config.timestep_type.as_deref() {
            if t != "discrete" {
                return Err(unsupported(format!("timestep_type {t:?}")));
            }
        }
        Ok(Self {
            num_train_timesteps: alphas_cumprod.len(),
            alphas_cumprod,
            prediction_type,
            spacing,
            steps_offset: config.steps_offset.unwrap_or(0),
        })
    }

    /// The cumulative alpha at training timestep `t`, clamped to the table.
    pub fn alpha_cumprod_at(&self, t: i64) -> f32 {
        let last = self.alphas_cumprod.len() as i64 - 1;
        self.alphas_cumprod[t.clamp(0, last) as usize]
    }

    /// Karras-style sigmas `sqrt((1 - ᾱ) / ᾱ)` for every training timestep, float32.
    pub fn train_sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect()
    }
}

fn unsupported(what: String) -> EngineError {
    EngineError::Unsupported(format!("scheduler_config.json: {what} is not supported"))
}

/// `torch.linspace(start, end, n, dtype=float32)` (the scalar CPU kernel).
pub fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (n - i - 1) as f32
            }
        })
        .collect()
}

/// `np.linspace(start, end, n)` in float64.
pub fn linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + step * i as f64).collect();
    v[n - 1] = end;
    v
}

/// `betas_for_alpha_bar` with the cosine schedule (Nichol & Dhariwal 2021).
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// `rescale_zero_terminal_snr` (Lin et al. 2023, Algorithm 1).
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f32;
    let sqrt_ac: Vec<f32> = betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc.sqrt()
        })
        .collect();
    let first = sqrt_ac[0];
    let last = sqrt_ac[sqrt_ac.len() - 1];
    let shifted: Vec<f32> = sqrt_ac
        .iter()
        .map(|s| (s - last) * first / (first - last))
        .collect();
    let ac: Vec<f32> = shifted.iter().map(|s| s * s).collect();
    let mut out = Vec::with_capacity(ac.len());
    out.push(1.0 - ac[0]);
    for i in 1..ac.len() {
        out.push(1.0 - ac[i] / ac[i - 1]);
    }
    out
}

/// Integer inference timesteps, highest first, as DDIM and DPM-Solver space them.
pub fn integer_timesteps(schedule: &NoiseSchedule, steps: usize, dpm: bool) -> Vec<i64> {
    let n = schedule.num_train_timesteps;
    match schedule.spacing {
        TimestepSpacing::Linspace if dpm => {
            let mut t: Vec<i64> = linspace_f64(0.0, (n - 1) as f64, steps + 1)
                .into_iter()
                .map(|v| v.round_ties_even() as i64)
                .collect();
            t.reverse();
            t.truncate(steps);
            t
        }
        TimestepSpacing::Linspace => {
            let mut t: Vec<i64> = linspace_f64(0.0, (n - 1) as f64, steps)
                .into_iter()
                .map(|v| v.round_ties_even() as i64)
                .collect();
            t.reverse();
            t
        }
        TimestepSpacing::Leading => {
            let count = if dpm { steps + 1 } else { steps };
            let ratio = n / count;
            let mut t: Vec<i64> = (0..count)
                .map(|i| (i * ratio + schedule.steps_offset) as i64)
                .collect();
            t.reverse();
            t.truncate(steps);
            t
        }
        TimestepSpacing::Trailing => trailing(n, steps).into_iter().map(|v| v as i64).collect(),
    }
}

/// `np.round(np.arange(n, 0, -n / steps)) - 1`.
pub fn trailing(n: usize, steps: usize) -> Vec<f64> {
    let ratio = n as f64 / steps as f64;
    let mut out = Vec::new();
    let mut i = 0usize;
    loop {
        let v = n as f64 - i as f64 * ratio;
        if v <= 0.0 {
            break;
        }
        out.push(v.round_ties_even() - 1.0);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> SchedulerConfig {
        SchedulerConfig {
            beta_start: Some(0.00085),
            beta_end: Some(0.012),
            beta_schedule: Some("scaled_linear".into()),
            steps_offset: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn absent_spacing_takes_the_class_default() {
        let ddim = NoiseSchedule::from_config(&sd15(), SchedulerClass::Ddim).unwrap();
        assert_eq!(ddim.spacing, TimestepSpacing::Leading);
        let euler = NoiseSchedule::from_config(&sd15(), SchedulerClass::Euler).unwrap();
        assert_eq!(euler.spacing, TimestepSpacing::Linspace);
    }

    #[test]
    fn sd15_schedule_matches_diffusers_values() {
        let s = NoiseSchedule::from_config(&sd15(), SchedulerClass::Euler).unwrap();
        // diffusers: scheduler.alphas_cumprod[0], [999] for SD 1.5's config.
        assert!((s.alphas_cumprod[0] - 0.99915).abs() < 1e-6);
        assert!((s.alphas_cumprod[999] - 0.0046600).abs() < 1e-6);
        assert_eq!(integer_timesteps(&s, 5, false), vec![999, 749, 500, 250, 0]);
        let ddim = NoiseSchedule::from_config(&sd15(), SchedulerClass::Ddim).unwrap();
        assert_eq!(
            integer_timesteps(&ddim, 5, false),
            vec![801, 601, 401, 201, 1]
        );
        assert_eq!(trailing(1000, 4), vec![999.0, 749.0, 499.0, 249.0]);
    }

    #[test]
    fn unknown_values_are_refused() {
        let mut c = sd15();
        c.beta_schedule = Some("sigmoid".into());
        assert!(NoiseSchedule::from_config(&c, SchedulerClass::Euler).is_err());
    }
}
