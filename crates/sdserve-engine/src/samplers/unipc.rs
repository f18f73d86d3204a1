//! UniPC, as diffusers' `UniPCMultistepScheduler` with its defaults
//! (`predict_x0`, solver type bh2, order 2, lower-order final steps): a
//! multistep predictor (UniP) whose result is corrected (UniC) with the next
//! model output before the next prediction (Zhao et al. 2023).

use candle_core::Tensor;

use super::dpm_multistep::{add_noise_vp, data_prediction, vp};
use super::schedule::PredictionType;
use super::Sampler;
use crate::error::Result;
use crate::rng::TorchRng;

/// What varies with the config.
#[derive(Debug, Clone)]
pub struct UniPcOptions {
    pub order: usize,
    /// bh1 (`B(h) = h`) instead of bh2 (`B(h) = e^h - 1`).
    pub bh1: bool,
    pub lower_order_final: bool,
    /// Steps whose corrector is skipped (`disable_corrector`).
    pub disable_corrector: Vec<usize>,
}

pub struct UniPc {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction: PredictionType,
    options: UniPcOptions,
    /// Converted model outputs (data predictions), newest last, at most `order`.
    history: Vec<Tensor>,
    /// The sample the last prediction started from and the order it used.
    last: Option<(Tensor, usize)>,
    /// Steps taken (diffusers' `lower_order_nums`, capped at the order).
    done: usize,
}

impl UniPc {
    pub fn new(
        (timesteps, sigmas): (Vec<f64>, Vec<f32>),
        prediction: PredictionType,
        options: UniPcOptions,
    ) -> Self {
        Self {
            timesteps,
            sigmas,
            prediction,
            options,
            history: Vec::new(),
            last: None,
            done: 0,
        }
    }

    /// `h`, `hh = -h`, `h * phi_1(hh)`, `B(h)` and the right-hand side `b`
    /// of the UniPC linear system for `order`, from lambda at the start (`s0`)
    /// and end (`t`) of the step.
    fn coefficients(
        &self,
        lambda_s0: f32,
        lambda_t: f32,
        order: usize,
    ) -> (f32, f32, f32, Vec<f32>) {
        let h = lambda_t - lambda_s0;
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = if self.options.bh1 { hh } else { hh.exp_m1() };
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0f32;
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f32;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        (h, h_phi_1, b_h, b)
    }

    /// The ratios `r_k = (lambda_{s_k} - lambda_{s0}) / h` of the earlier
    /// steps `s_k` (call indices) and the scaled differences `D1_k` of the
    /// outputs before the newest in the history (`m0`).
    fn differences(
        &self,
        steps: &[usize],
        lambda_s0: f32,
        h: f32,
    ) -> Result<(Vec<f32>, Vec<Tensor>)> {
        let m0 = &self.history[self.history.len() - 1];
        let mut rks = Vec::new();
        let mut d1s = Vec::new();
        for (i, si) in steps.iter().enumerate() {
            let mi = &self.history[self.history.len() - 2 - i];
            let rk = (vp(self.sigmas[*si]).2 - lambda_s0) / h;
            d1s.push(((mi - m0)? / rk as f64)?);
            rks.push(rk);
        }
        Ok((rks, d1s))
    }

    /// UniC: corrects `sample` (reached by the last prediction from
    /// `last_sample`) with the model output at `step`.
    fn correct(
        &self,
        model_t: &Tensor,
        last_sample: &Tensor,
        step: usize,
        order: usize,
    ) -> Result<Tensor> {
        let (alpha_t, sigma_t, lambda_t) = vp(self.sigmas[step]);
        let (_, sigma_s0, lambda_s0) = vp(self.sigmas[step - 1]);
        let (h, h_phi_1, b_h, b) = self.coefficients(lambda_s0, lambda_t, order);
        // m0 is the previous step's output: the history before model_t.
        let m0 = &self.history[self.history.len() - 1];
        let earlier: Vec<usize> = (1..order).map(|i| step - (i + 1)).collect();
        let (mut rks, d1s) = self.differences(&earlier, lambda_s0, h)?;
        rks.push(1.0);
        let rhos = if order == 1 {
            vec![0.5]
        } else {
            solve(&vandermonde(&rks), &b)
        };
        let base =
            ((last_sample * (sigma_t / sigma_s0) as f64)? - (m0 * (alpha_t * h_phi_1) as f64)?)?;
        let mut correction = ((model_t - m0)? * rhos[rhos.len() - 1] as f64)?;
        if let Some(corr_res) = weighted_sum(&rhos, &d1s)? {
            correction = (corr_res + correction)?;
        }
        Ok((base - (correction * (alpha_t * b_h) as f64)?)?)
    }

    /// UniP: predicts the sample at `step + 1` from `sample` at `step`.
    fn predict(&self, sample: &Tensor, step: usize, order: usize) -> Result<Tensor> {
        let (alpha_t, sigma_t, lambda_t) = vp(self.sigmas[step + 1]);
        let (_, sigma_s0, lambda_s0) = vp(self.sigmas[step]);
        let (h, h_phi_1, b_h, b) = self.coefficients(lambda_s0, lambda_t, order);
        let earlier: Vec<usize> = (1..order).map(|i| step - i).collect();
        let (mut rks, d1s) = self.differences(&earlier, lambda_s0, h)?;
        rks.push(1.0);
        let m0 = &self.history[self.history.len() - 1];
        let base = ((sample * (sigma_t / sigma_s0) as f64)? - (m0 * (alpha_t * h_phi_1) as f64)?)?;
        if d1s.is_empty() {
            return Ok(base);
        }
        let rhos = if order == 2 {
            vec![0.5]
        } else {
            let r = vandermonde(&rks);
            let k = r.len() - 1;
            let reduced: Vec<Vec<f32>> = r[..k].iter().map(|row| row[..k].to_vec()).collect();
            solve(&reduced, &b[..k])
        };
        match weighted_sum(&rhos, &d1s)? {
            Some(pred_res) => Ok((base - (pred_res * (alpha_t * b_h) as f64)?)?),
            None => Ok(base),
        }
    }
}

/// `sum_k rhos[k] * d1s[k]` (UniPC's einsum), `None` without differences.
fn weighted_sum(rhos: &[f32], d1s: &[Tensor]) -> Result<Option<Tensor>> {
    let mut sum: Option<Tensor> = None;
    for (rho, d1) in rhos.iter().zip(d1s) {
        let term = (d1 * *rho as f64)?;
        sum = Some(match sum {
            Some(acc) => (acc + term)?,
            None => term,
        });
    }
    Ok(sum)
}

/// `R[i][j] = rks[j]^i` for i in 0..order (UniPC's `torch.stack([rks**0, rks**1, ...])`).
fn vandermonde(rks: &[f32]) -> Vec<Vec<f32>> {
    (0..rks.len())
        .map(|i| rks.iter().map(|r| r.powi(i as i32)).collect())
        .collect()
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting (the
/// systems are at most a few unknowns; `torch.linalg.solve` in float32).
fn solve(a: &[Vec<f32>], b: &[f32]) -> Vec<f32> {
    let n = b.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .zip(b)
        .map(|(row, v)| row.iter().map(|x| *x as f64).chain([*v as f64]).collect())
        .collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|x, y| m[*x][col].abs().total_cmp(&m[*y][col].abs()))
            .unwrap_or(col);
        m.swap(col, pivot);
        let pivot_row = m[col].clone();
        for row in m.iter_mut().skip(col + 1) {
            let f = row[col] / pivot_row[col];
            for (value, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                *value -= f * p;
            }
        }
    }
    let mut x = vec![0.0f64; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| m[row][k] * x[k]).sum();
        x[row] = (m[row][n] - s) / m[row][row];
    }
    x.into_iter().map(|v| v as f32).collect()
}

impl Sampler for UniPc {
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
        _rng: &mut TorchRng,
    ) -> Result<Tensor> {
        let converted = data_prediction(self.prediction, model_output, sample, {
            let (a, s, _) = vp(self.sigmas[step]);
            (a, s)
        })?;
        let mut sample = sample.clone();
        if let Some((last_sample, last_order)) = self.last.take() {
            if step > 0 && !self.options.disable_corrector.contains(&(step - 1)) {
                sample = self.correct(&converted, &last_sample, step, last_order)?;
            }
        }
        self.history.push(converted);
        if self.history.len() > self.options.order {
            self.history.remove(0);
        }
        let order = if self.options.lower_order_final {
            self.options.order.min(self.timesteps.len() - step)
        } else {
            self.options.order
        };
        let order = order.min(self.done + 1);
        let next = self.predict(&sample, step, order)?;
        self.last = Some((sample, order));
        if self.done < self.options.order {
            self.done += 1;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_inverts_a_small_system() {
        let a = vec![
            vec![1.0, 1.0, 1.0],
            vec![0.5, -0.3, 1.0],
            vec![0.25, 0.09, 1.0],
        ];
        let x = [0.2f32, -0.7, 1.1];
        let b: Vec<f32> = a
            .iter()
            .map(|r| r.iter().zip(&x).map(|(p, q)| p * q).sum())
            .collect();
        let got = solve(&a, &b);
        for (g, e) in got.iter().zip(x) {
            assert!((g - e).abs() < 1e-5, "{got:?}");
        }
    }
}
