//! Noise levels (sigmas) of a sampling run and the timesteps they stand for:
//! the interpolated training sigmas, or the Karras, exponential or beta
//! spacing between two bounds, as diffusers' `_convert_to_karras`,
//! `_convert_to_exponential` and `_convert_to_beta` compute them (float64),
//! and `_sigma_to_t` mapping a sigma back to a fractional training timestep.

use super::interp;
use super::schedule::{linspace_f64, trailing, NoiseSchedule, TimestepSpacing};

/// How the sigmas of a run are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigmaSpacing {
    /// The training sigmas interpolated at the spaced timesteps.
    Interpolated,
    /// Karras et al. 2022 (rho 7).
    Karras,
    /// Evenly spaced in log sigma.
    Exponential,
    /// The quantiles of Beta(0.6, 0.6) (Lee et al. 2024, "Beta Sampling is All You Need").
    Beta,
}

/// `n` sigmas from `max` down to `min` spaced as `spacing` (not `Interpolated`).
pub fn spaced(spacing: SigmaSpacing, min: f64, max: f64, n: usize) -> Vec<f64> {
    match spacing {
        SigmaSpacing::Interpolated | SigmaSpacing::Karras => {
            let rho = 7.0;
            let (min_inv, max_inv) = (min.powf(1.0 / rho), max.powf(1.0 / rho));
            linspace_f64(0.0, 1.0, n)
                .into_iter()
                .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
                .collect()
        }
        SigmaSpacing::Exponential => linspace_f64(max.ln(), min.ln(), n)
            .into_iter()
            .map(f64::exp)
            .collect(),
        SigmaSpacing::Beta => linspace_f64(0.0, 1.0, n)
            .into_iter()
            .map(|t| min + beta_ppf(1.0 - t, 0.6, 0.6) * (max - min))
            .collect(),
    }
}

/// `_sigma_to_t`: the fractional training timestep whose log-sigma matches
/// `sigma`, interpolating linearly in log sigma between table entries.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // numpy: cumsum(dists >= 0).argmax(): the last index whose log-sigma is
    // at or below; 0 when there is none.
    let low = log_sigmas
        .iter()
        .rposition(|l| log_sigma - *l as f64 >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    // `low - high` is a float32 difference in numpy.
    let w = ((lo as f64 - log_sigma) / (lo - hi) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// The timesteps and sigmas of the k-diffusion style schedulers (Euler,
/// Euler ancestral, LMS, Heun, DPM2, DPM2 ancestral): float timesteps spaced
/// over the training range, the training sigmas interpolated at them, and
/// with another spacing, new sigmas between the interpolated ones' ends
/// (or the config's `sigma_min`/`sigma_max`) mapped back to timesteps.
pub struct KSchedule {
    /// One per step, float32 values.
    pub timesteps: Vec<f64>,
    /// One per step (no final zero), float64 as diffusers holds them before
    /// its float32 cast.
    pub sigmas: Vec<f64>,
}

impl KSchedule {
    /// `round_karras`: DPM2 rounds the timesteps of Karras sigmas.
    pub fn new(
        schedule: &NoiseSchedule,
        steps: usize,
        spacing: SigmaSpacing,
        bounds: (Option<f64>, Option<f64>),
        round_karras: bool,
    ) -> Self {
        let n = schedule.num_train_timesteps;
        let timesteps: Vec<f64> = match schedule.spacing {
            TimestepSpacing::Linspace => {
                let mut t: Vec<f64> = linspace_f64(0.0, (n - 1) as f64, steps)
                    .into_iter()
                    .map(|v| v as f32 as f64)
                    .collect();
                t.reverse();
                t
            }
            TimestepSpacing::Leading => {
                let ratio = n / steps;
                (0..steps)
                    .rev()
                    .map(|i| (i * ratio) as f64 + schedule.steps_offset as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => trailing(n, steps),
        };
        let train = schedule.train_sigmas();
        let sigmas: Vec<f64> = timesteps.iter().map(|t| interp(*t, &train)).collect();
        if spacing == SigmaSpacing::Interpolated {
            return Self { timesteps, sigmas };
        }
        let min = bounds.0.unwrap_or(sigmas[sigmas.len() - 1]);
        let max = bounds.1.unwrap_or(sigmas[0]);
        let sigmas = spaced(spacing, min, max, steps);
        let log_sigmas: Vec<f32> = train.iter().map(|s| s.ln()).collect();
        let timesteps = sigmas
            .iter()
            .map(|s| {
                let t = sigma_to_t(*s, &log_sigmas);
                let t = if round_karras && spacing == SigmaSpacing::Karras {
                    t.round_ties_even()
                } else {
                    t
                };
                t as f32 as f64
            })
            .collect();
        Self { timesteps, sigmas }
    }
}

/// A k-diffusion style schedule ready to run: float32 sigmas with the final
/// zero appended and the initial noise scale.
pub struct KSigmas {
    pub timesteps: Vec<f64>,
    /// One per step plus the final 0.
    pub sigmas: Vec<f32>,
    /// `init_noise_sigma`: the largest sigma, or `sqrt(max^2 + 1)` with
    /// "leading" spacing.
    pub init_noise_sigma: f32,
}

impl KSchedule {
    /// Appends the final zero and casts to float32, as every k-diffusion
    /// style scheduler does.
    pub fn finish(self, spacing: TimestepSpacing) -> KSigmas {
        let mut sigmas: Vec<f32> = self.sigmas.iter().map(|s| *s as f32).collect();
        sigmas.push(0.0);
        let max = sigmas.iter().copied().fold(0.0f32, f32::max);
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        };
        KSigmas {
            timesteps: self.timesteps,
            sigmas,
            init_noise_sigma,
        }
    }
}

/// The quantile function of Beta(a, b) (`scipy.stats.beta.ppf`), by
/// bisection on the regularized incomplete beta function: 60 halvings take
/// the unit interval below float64 resolution.
pub fn beta_ppf(p: f64, a: f64, b: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if regularized_beta(mid, a, b) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// `I_x(a, b)`, the regularized incomplete beta function, by its continued
/// fraction (evaluated with the modified Lentz method), using the symmetry
/// `I_x(a, b) = 1 - I_{1-x}(b, a)` where the fraction converges slowly.
fn regularized_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = a * x.ln() + b * (1.0 - x).ln() - ln_beta(a, b);
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(1.0 - x, b, a) / b
    }
}

/// The continued fraction of the incomplete beta function.
fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let clamp = |v: f64| if v.abs() < TINY { TINY } else { v };
    let mut c = 1.0;
    let mut d = 1.0 / clamp(1.0 - (a + b) * x / (a + 1.0));
    let mut f = d;
    for m in 1..500 {
        let m = m as f64;
        // Even term.
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 / clamp(1.0 + even * d);
        c = clamp(1.0 + even / c);
        f *= d * c;
        // Odd term.
        let odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 / clamp(1.0 + odd * d);
        c = clamp(1.0 + odd / c);
        let delta = d * c;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    f
}

/// `ln B(a, b)`.
fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// `ln Γ(x)` for x > 0 by the Lanczos approximation (g = 7, 9 terms;
/// relative error about 1e-15), with the reflection for x < 0.5.
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEF[0];
    for (i, c) in COEF.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_quantiles_match_scipy() {
        // scipy.stats.beta.ppf(q, 0.6, 0.6) for these q.
        let cases = [
            (0.5, 0.5000000000000001),
            (0.75, 0.824319621347305),
            (0.25, 0.17568037865269498),
            (0.1, 0.03958440558878085),
            (0.9, 0.9604155944112192),
            (0.999, 0.9999814412614826),
            (0.001, 1.855873851745199e-05),
        ];
        for (q, expected) in cases {
            let got = beta_ppf(q, 0.6, 0.6);
            assert!(
                (got - expected).abs() < 1e-12,
                "ppf({q}) = {got}, scipy {expected}"
            );
        }
        assert_eq!(beta_ppf(0.0, 0.6, 0.6), 0.0);
        assert_eq!(beta_ppf(1.0, 0.6, 0.6), 1.0);
    }

    #[test]
    fn ln_gamma_matches_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-14);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-14);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
    }

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

    #[test]
    fn karras_and_exponential_span_their_bounds() {
        for spacing in [
            SigmaSpacing::Karras,
            SigmaSpacing::Exponential,
            SigmaSpacing::Beta,
        ] {
            let s = spaced(spacing, 0.03, 14.6, 6);
            assert!((s[0] - 14.6).abs() < 1e-9, "{spacing:?} {s:?}");
            assert!((s[5] - 0.03).abs() < 1e-9, "{spacing:?} {s:?}");
            assert!(s.windows(2).all(|w| w[0] > w[1]), "{spacing:?} {s:?}");
        }
    }
}
