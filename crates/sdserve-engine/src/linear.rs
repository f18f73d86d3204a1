//! A linear layer (`torch.nn.Linear`) whose bf16 product on the CPU runs
//! [`crate::bf16_gemm`]: candle's CPU matmul has no bf16 kernel, and these
//! layers hold most of the UNet's multiplies outside the attention. Every
//! other case (f32, f16, GPU, a CPU without AVX512-BF16) is candle's.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn as nn;
use half::bf16;
use rayon::prelude::*;

use crate::bf16_gemm::{self, Matrix, PackedA, PackedB};
use crate::cpu_kernel::{contiguous_bf16, contiguous_f32, contiguous_matrix};

/// `xs · weightᵀ + bias` with a `(out, in)` weight.
#[derive(Clone)]
pub struct Linear {
    inner: nn::Linear,
}

/// A linear layer with a bias (`weight`, `bias` under `vb`).
pub fn linear(in_dim: usize, out_dim: usize, vb: nn::VarBuilder) -> Result<Linear> {
    Ok(Linear {
        inner: nn::linear(in_dim, out_dim, vb)?,
    })
}

/// A linear layer without a bias.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: nn::VarBuilder) -> Result<Linear> {
    Ok(Linear {
        inner: nn::linear_no_bias(in_dim, out_dim, vb)?,
    })
}

impl Linear {
    /// The weight's dtype (what the layer's products run in).
    pub fn weight_dtype(&self) -> DType {
        self.inner.weight().dtype()
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let weight = self.inner.weight();
        // bf16 weights, bf16 or f32 (mixed precision) activations.
        let ours = xs.device().is_cpu()
            && matches!(xs.dtype(), DType::BF16 | DType::F32)
            && weight.dtype() == DType::BF16
            && bf16_gemm::available();
        if !ours {
            return self.inner.forward(xs);
        }
        let out_dim = weight.dim(0)?;
        let bias = match self.inner.bias() {
            Some(bias) => bias.to_dtype(DType::F32)?,
            None => Tensor::zeros(out_dim, DType::F32, xs.device())?,
        };
        xs.contiguous()?
            .apply_op3_no_bwd(&weight.contiguous()?, &bias, &Bf16Linear)
    }
}

/// The op: bf16 or f32 input `(..., in)`, bf16 weight `(out, in)`, f32 bias
/// `(out,)`; the output has the input's dtype.
struct Bf16Linear;

impl CustomOp3 for Bf16Linear {
    fn name(&self) -> &'static str {
        "sdserve-bf16-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = contiguous_matrix(self.name(), xs, xs_layout)?;
        let weight = contiguous_bf16(self.name(), weight, weight_layout)?;
        let bias = contiguous_f32(self.name(), bias, bias_layout)?;
        let (out_dim, in_dim) = weight_layout.shape().dims2()?;
        let dims = xs_layout.dims();
        if dims.last() != Some(&in_dim) || bias.len() != out_dim {
            candle_core::bail!(
                "{}: input {dims:?}, weight ({out_dim}, {in_dim}), bias {}",
                self.name(),
                bias.len()
            );
        }
        let rows = xs.len() / in_dim.max(1);
        let b = PackedB::from_transposed(Matrix::Bf16(weight), out_dim, in_dim, in_dim);
        let a = PackedA::new(xs, rows, in_dim, in_dim, b.a_panels());
        let mut out = vec![0f32; rows * out_dim];
        if out_dim > 0 {
            out.par_chunks_mut(out_dim)
                .for_each(|row| row.copy_from_slice(bias));
        }
        bf16_gemm::multiply_parallel(&a, &b, &mut out, out_dim, 1.0, true)?;
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out_dim;
        }
        let out = match xs {
            Matrix::F32(_) => CpuStorage::F32(out),
            Matrix::Bf16(_) => {
                CpuStorage::BF16(out.par_iter().map(|v| bf16::from_f32(*v)).collect())
            }
        };
        Ok((out, Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The bf16 kernel against candle's f32 linear on the same bf16 values:
    /// they differ by f32 summation order and the output's bf16 rounding.
    #[test]
    fn bf16_linear_equals_f32_linear_of_the_same_values() {
        if !bf16_gemm::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let dev = Device::Cpu;
        let bf = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
        let xs = bf(Tensor::randn(0f32, 1.0, (2, 37, 70), &dev).unwrap());
        let weight = bf(Tensor::randn(0f32, 0.2, (45, 70), &dev).unwrap());
        let bias = bf(Tensor::randn(0f32, 1.0, 45, &dev).unwrap());
        for bias in [Some(bias), None] {
            let layer = Linear {
                inner: nn::Linear::new(weight.clone(), bias.clone()),
            };
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            // Mixed precision: f32 activations of bf16 values, same result in f32.
            let mixed = layer.forward(&f32(&xs)).unwrap();
            assert_eq!(mixed.dtype(), DType::F32);
            let got = layer.forward(&xs).unwrap();
            assert_eq!(got.dims(), &[2, 37, 45]);
            assert_eq!(got.dtype(), DType::BF16);
            let rounded = crate::test_util::max_diff(
                &f32(&got),
                &mixed
                    .to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap(),
            );
            assert_eq!(rounded, 0.0, "bf16 output is the f32 output rounded");
            let reference = nn::Linear::new(f32(&weight), bias.as_ref().map(f32));
            let want = reference.forward(&f32(&xs)).unwrap();
            // bf16 output: relative rounding 2^-8 of values up to ~10.
            let diff = crate::test_util::max_diff(&f32(&got), &want);
            assert!(diff < 0.05, "{diff}");
            let scale = crate::test_util::max_diff(&want, &want.zeros_like().unwrap());
            assert!(scale > 1.0, "the check must see real values: {scale}");
        }
    }
}
