//! The CPU attention of [`crate::attention_cpu`] for bf16 models (bf16
//! activations, or f32 ones over bf16 weights), with its two products in
//! bf16 ([`crate::bf16_gemm`]): each task takes a few query
//! rows of one head, computes their scores in f32, the softmax in f32 in
//! place, rounds the probabilities to bf16 for the product with `v`, and
//! divides by the f32 row sums last. Keys and values are packed once per
//! head. The rounding is autocast's: bf16 operands, f32 sums.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use crate::attention_cpu::Dims;
use crate::bf16_gemm::{self, Matrix, PackedA, PackedB};
use crate::cpu_kernel::{contiguous_matrix, SharedOut};
use crate::softmax::exp_shifted_rows;

/// Bytes of one task's f32 scores: within a typical L2 cache.
const SCORE_BYTES: usize = 768 << 10;

/// `softmax(q · kᵀ · scale) · v` for bf16 or f32 CPU tensors
/// `q: (n, queries, d)`, `k, v: (n, keys, d)`; the result has `q`'s dtype.
pub fn attention_bf16(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    q.apply_op3_no_bwd(
        &k,
        &v,
        &Bf16Attention {
            scale: scale as f32,
        },
    )
}

struct Bf16Attention {
    scale: f32,
}

impl CustomOp3 for Bf16Attention {
    fn name(&self) -> &'static str {
        "sdserve-bf16-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = contiguous_matrix(self.name(), s1, l1)?;
        let k = contiguous_matrix(self.name(), s2, l2)?;
        let v = contiguous_matrix(self.name(), s3, l3)?;
        let d = Dims::new(self.name(), l1, l2, l3)?;
        let out = run(q, k, v, d, self.scale)?;
        let out = match q {
            Matrix::F32(_) => CpuStorage::F32(out),
            Matrix::Bf16(_) => {
                CpuStorage::BF16(out.par_iter().map(|x| bf16::from_f32(*x)).collect())
            }
        };
        Ok((out, Shape::from((d.heads, d.queries, d.depth))))
    }
}

fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x.max(1) * b
}

fn run(q: Matrix, k: Matrix, v: Matrix, d: Dims, scale: f32) -> Result<Vec<f32>> {
    if !bf16_gemm::available() {
        candle_core::bail!("bf16 attention: this CPU has no AVX512-BF16");
    }
    let mut out = vec![0f32; d.heads * d.queries * d.depth];
    if out.is_empty() || d.keys == 0 {
        return Ok(out);
    }
    let (keys, values): (Vec<PackedB>, Vec<PackedB>) = (0..d.heads)
        .into_par_iter()
        .map(|h| {
            let span = h * d.keys * d.depth..(h + 1) * d.keys * d.depth;
            (
                PackedB::from_transposed(k.part(span.clone()), d.keys, d.depth, d.depth),
                PackedB::from_rows(v.part(span), d.keys, d.depth, d.depth),
            )
        })
        .unzip();
    // Query rows per task: whole A panels of both products (`out` is not
    // empty, so there is a head).
    let step = lcm(keys[0].a_panels().rows(), values[0].a_panels().rows());
    let rows = ((SCORE_BYTES / 4 / d.keys) / step * step)
        .max(step)
        .min(d.queries);
    let blocks = d.queries.div_ceil(rows);
    let dst = SharedOut::new(&mut out);
    let task = |scratch: &mut (Vec<f32>, Vec<f32>), index: usize| {
        let (h, block) = (index / blocks, index % blocks);
        let r0 = block * rows;
        let m = rows.min(d.queries - r0);
        let (scores, sums) = scratch;
        scores.resize(m * d.keys, 0.0);
        sums.resize(m, 0.0);
        let first = (h * d.queries + r0) * d.depth;
        let q_rows = PackedA::new(
            q.part(first..first + m * d.depth),
            m,
            d.depth,
            d.depth,
            keys[h].a_panels(),
        );
        // SAFETY: the kernel is available (checked above); `scores` holds m
        // rows of `keys` columns and belongs to this task.
        unsafe {
            bf16_gemm::multiply(
                &q_rows,
                &keys[h],
                0..q_rows.panels(),
                0..keys[h].panels(),
                scores.as_mut_ptr(),
                d.keys,
                scale,
                false,
            );
        }
        exp_shifted_rows(scores, d.keys, sums);
        let probabilities =
            PackedA::new(Matrix::F32(scores), m, d.keys, d.keys, values[h].a_panels());
        // SAFETY: as above; the output rows [first, first + m·depth) belong
        // to this task alone.
        unsafe {
            bf16_gemm::multiply(
                &probabilities,
                &values[h],
                0..probabilities.panels(),
                0..values[h].panels(),
                dst.at(first),
                d.depth,
                1.0,
                false,
            );
            let rows_out = std::slice::from_raw_parts_mut(dst.at(first), m * d.depth);
            for (row, sum) in rows_out.chunks_exact_mut(d.depth).zip(sums.iter()) {
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inv);
            }
        }
    };
    (0..d.heads * blocks).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |scratch, index| task(scratch, index),
    );
    Ok(out)
}
