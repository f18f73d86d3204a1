//! LMS, as diffusers' `LMSDiscreteScheduler` (k-diffusion's `sample_lms`):
//! a linear multistep method of order up to 4 in sigma space, whose
//! coefficients integrate the Lagrange basis polynomials over each step.

use candle_core::Tensor;

use super::schedule::PredictionType;
use super::{add_noise_sigma, predict_x0_ve, scale_by_sigma, KSigmas, Sampler};
use crate::error::Result;
use crate::rng::TorchRng;

/// The order diffusers' pipelines run LMS at (`step(..., order=4)`).
const ORDER: usize = 4;

pub struct Lms {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    prediction: PredictionType,
    /// The latest derivatives, oldest first, at most [`ORDER`].
    derivatives: Vec<Tensor>,
}

impl Lms {
    pub fn new(sigmas: KSigmas, prediction: PredictionType) -> Self {
        Self {
            init_noise_sigma: sigmas.init_noise_sigma,
            timesteps: sigmas.timesteps,
            sigmas: sigmas.sigmas,
            prediction,
            derivatives: Vec::new(),
        }
    }

    /// `get_lms_coefficient`: the integral from sigma `t` to sigma `t + 1` of
    /// the Lagrange basis polynomial of node `t - current` among the nodes
    /// `t, t - 1, ..., t - order + 1`. The polynomial has degree below 4, so
    /// 4-point Gauss-Legendre is exact (scipy's `quad` is too, to rounding).
    fn coefficient(&self, order: usize, t: usize, current: usize) -> f64 {
        let sigma = |i: usize| self.sigmas[i] as f64;
        let basis = |tau: f64| {
            (0..order)
                .filter(|k| *k != current)
                .map(|k| (tau - sigma(t - k)) / (sigma(t - current) - sigma(t - k)))
                .product::<f64>()
        };
        let (a, b) = (sigma(t), sigma(t + 1));
        let (half, mid) = ((b - a) / 2.0, (a + b) / 2.0);
        const NODES: [(f64, f64); 4] = [
            (-0.861_136_311_594_052_6, 0.347_854_845_137_453_8),
            (-0.339_981_043_584_856_3, 0.652_145_154_862_546_1),
            (0.339_981_043_584_856_3, 0.652_145_154_862_546_1),
            (0.861_136_311_594_052_6, 0.347_854_845_137_453_8),
        ];
        NODES
            .iter()
            .map(|(x, w)| w * basis(mid + half * x))
            .sum::<f64>()
            * half
    }
}

impl Sampler for Lms {
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
        _rng: &mut TorchRng,
    ) -> Result<Tensor> {
        let sigma = self.sigmas[step];
        let x0 = predict_x0_ve(self.prediction, model_output, sample, sigma)?;
        let derivative = ((sample - x0)? / sigma as f64)?;
        self.derivatives.push(derivative);
        if self.derivatives.len() > ORDER {
            self.derivatives.remove(0);
        }
        // diffusers takes the order from the step index, not from the
        // history: a run starting late (image to image) weights its first
        // derivatives with higher-order coefficients.
        let order = (step + 1).min(ORDER);
        let mut update: Option<Tensor> = None;
        for (current, derivative) in (0..order).zip(self.derivatives.iter().rev()) {
            let term = (derivative * self.coefficient(order, step, current))?;
            update = Some(match update {
                Some(sum) => (sum + term)?,
                None => term,
            });
        }
        Ok(match update {
            Some(update) => (sample + update)?,
            None => sample.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lms(sigmas: Vec<f32>) -> Lms {
        Lms::new(
            KSigmas {
                timesteps: vec![0.0; sigmas.len() - 1],
                init_noise_sigma: sigmas[0],
                sigmas,
            },
            PredictionType::Epsilon,
        )
    }

    #[test]
    fn first_order_coefficient_is_the_step_length() {
        let s = lms(vec![10.0, 4.0, 1.0, 0.0]);
        assert!((s.coefficient(1, 0, 0) - (4.0 - 10.0)).abs() < 1e-12);
    }

    #[test]
    fn coefficients_integrate_a_constant_exactly() {
        // The basis polynomials sum to 1, so their integrals sum to the step.
        let s = lms(vec![14.6, 8.0, 3.5, 1.2, 0.3, 0.0]);
        for order in 1..=4 {
            let t = 3;
            let total: f64 = (0..order).map(|j| s.coefficient(order, t, j)).sum();
            let step = s.sigmas[t + 1] as f64 - s.sigmas[t] as f64;
            assert!(
                (total - step).abs() < 1e-9,
                "order {order}: {total} vs {step}"
            );
        }
    }
}
