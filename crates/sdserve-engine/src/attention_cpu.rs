//! Attention on the CPU without a score matrix in memory.
//!
//! The blocked form in `attention.rs` writes each head's `queries × keys`
//! scores out (64 MiB per head at 512x512), reads them for the softmax,
//! writes the probabilities and reads them again for the product with `v`:
//! four passes over memory per head, most of the attention's time. Here one
//! task takes a few query rows of one head: their scores (a block that stays
//! in the core's cache), the softmax in place with a vectorised `exp`, and
//! the product with `v` written straight into the output, divided by the
//! row sums last. Every row still sees all its keys: the result is the exact
//! softmax attention up to rounding.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu_kernel::{contiguous_f32, SharedOut};
use crate::softmax::exp_shifted_rows;

/// Bytes of one task's scores: about half a typical L2 cache.
pub(crate) const SCORE_BYTES: usize = 512 << 10;
/// Query rows per task, at least and at most.
const MIN_ROWS: usize = 8;
const MAX_ROWS: usize = 256;

/// `softmax(q · kᵀ · scale) · v` for contiguous-or-not f32 CPU tensors
/// `q: (n, queries, d)`, `k, v: (n, keys, d)`.
pub fn attention_f32(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    q.apply_op3_no_bwd(
        &k,
        &v,
        &FusedAttention {
            scale: scale as f32,
        },
    )
}

struct FusedAttention {
    scale: f32,
}

/// Sizes of one attention call, checked against each other.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub heads: usize,
    pub queries: usize,
    pub keys: usize,
    pub depth: usize,
}

impl Dims {
    /// From `q: (heads, queries, depth)`, `k, v: (heads, keys, depth)`; an
    /// error naming `op` when they disagree.
    pub(crate) fn new(op: &str, q: &Layout, k: &Layout, v: &Layout) -> Result<Self> {
        let (heads, queries, depth) = q.shape().dims3()?;
        let (k_heads, keys, k_depth) = k.shape().dims3()?;
        if (k_heads, k_depth) != (heads, depth) || v.shape().dims() != k.shape().dims() {
            candle_core::bail!(
                "{op}: q {:?}, k {:?}, v {:?}",
                q.shape(),
                k.shape(),
                v.shape()
            );
        }
        Ok(Self {
            heads,
            queries,
            keys,
            depth,
        })
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "sdserve-attention"
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
        let q = contiguous_f32(self.name(), s1, l1)?;
        let k = contiguous_f32(self.name(), s2, l2)?;
        let v = contiguous_f32(self.name(), s3, l3)?;
        let d = Dims::new(self.name(), l1, l2, l3)?;
        let out = run(q, k, v, d, self.scale);
        Ok((
            CpuStorage::F32(out),
            Shape::from((d.heads, d.queries, d.depth)),
        ))
    }
}

fn run(q: &[f32], k: &[f32], v: &[f32], d: Dims, scale: f32) -> Vec<f32> {
    let mut out = vec![0f32; d.heads * d.queries * d.depth];
    if out.is_empty() || d.keys == 0 {
        return out;
    }
    let rows = (SCORE_BYTES / 4 / d.keys)
        .clamp(MIN_ROWS, MAX_ROWS)
        .min(d.queries);
    let blocks = d.queries.div_ceil(rows);
    let dst = SharedOut::new(&mut out);
    let task = |scratch: &mut (Vec<f32>, Vec<f32>), index: usize| {
        let (head, block) = (index / blocks, index % blocks);
        let r0 = block * rows;
        let m = rows.min(d.queries - r0);
        let (scores, sums) = scratch;
        scores.resize(m * d.keys, 0.0);
        sums.resize(m, 0.0);
        let q_rows = &q[(head * d.queries + r0) * d.depth..][..m * d.depth];
        let k_head = &k[head * d.keys * d.depth..][..d.keys * d.depth];
        let v_head = &v[head * d.keys * d.depth..][..d.keys * d.depth];
        let first = (head * d.queries + r0) * d.depth;
        // SAFETY: every matrix lies inside its slice, with the strides given:
        // q rows m × depth (row stride depth); kᵀ depth × keys, i.e. k read
        // with column stride depth; scores m × keys; v keys × depth; the
        // output rows [first, first + m·depth) belong to this task alone.
        unsafe {
            gemm::gemm(
                m,
                d.keys,
                d.depth,
                scores.as_mut_ptr(),
                1,
                d.keys as isize,
                false,
                q_rows.as_ptr(),
                1,
                d.depth as isize,
                k_head.as_ptr(),
                d.depth as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        exp_shifted_rows(scores, d.keys, sums);
        // SAFETY: as above.
        unsafe {
            gemm::gemm(
                m,
                d.depth,
                d.keys,
                dst.at(first),
                1,
                d.depth as isize,
                false,
                scores.as_ptr(),
                1,
                d.keys as isize,
                v_head.as_ptr(),
                1,
                d.depth as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
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
    out
}
