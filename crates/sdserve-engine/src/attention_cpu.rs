//! Attention on the CPU without a score matrix in memory.
//!
//! The blocked form in `attention.rs` writes each head's `queries × keys`
//! scores out (64 MiB per head at 512x512), reads them for the softmax,
//! writes the probabilities and reads them again for the product with `v`:
//! four passes over memory per head, most of the attention's time. Here one
//! task takes a few query rows of one head: their scores (a block that stays
//! in the core's cache), the softmax in place with a vectorised `exp`, and
//! the product with `v` written straight into the output, divided by the
//! row sums last. Rows longer than [`KEY_CHUNK`] keys go chunk by chunk with
//! the online softmax (running max and sum, earlier products rescaled), so a
//! task can take more rows and pack each chunk of keys and values once for
//! all of them: at 768x768 (9216 keys) it took 14 rows and repacked the
//! head's keys and values for each 14. Every row still sees all its keys:
//! the result is the exact softmax attention up to rounding.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu_kernel::{contiguous_f32, SharedOut};
use crate::softmax::{exp_running_rows, exp_shifted_rows};

/// Bytes of one task's scores: about half a typical L2 cache.
pub(crate) const SCORE_BYTES: usize = 512 << 10;
/// Keys per chunk: longer rows go through the online softmax chunk by chunk
/// (at 512x512 and above), shorter ones in one exact pass as before.
const KEY_CHUNK: usize = 1024;
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
    // Keys in chunks: the scores of `rows × chunk` stay in cache while each
    // task covers enough query rows to repay packing its keys and values.
    let chunk = d.keys.min(KEY_CHUNK);
    let rows = (SCORE_BYTES / 4 / chunk)
        .clamp(MIN_ROWS, MAX_ROWS)
        .min(d.queries);
    let blocks = d.queries.div_ceil(rows);
    let dst = SharedOut::new(&mut out);
    let task = |scratch: &mut Scratch, index: usize| {
        let (head, block) = (index / blocks, index % blocks);
        let r0 = block * rows;
        let m = rows.min(d.queries - r0);
        scratch.reset(m, chunk);
        let q_rows = &q[(head * d.queries + r0) * d.depth..][..m * d.depth];
        let k_head = &k[head * d.keys * d.depth..][..d.keys * d.depth];
        let v_head = &v[head * d.keys * d.depth..][..d.keys * d.depth];
        let first = (head * d.queries + r0) * d.depth;
        // SAFETY: the output rows [first, first + m·depth) belong to this task alone.
        let out_rows = unsafe { std::slice::from_raw_parts_mut(dst.at(first), m * d.depth) };
        for c0 in (0..d.keys).step_by(chunk) {
            let n = chunk.min(d.keys - c0);
            let scores = &mut scratch.scores[..m * n];
            // SAFETY: q rows m × depth (row stride depth); kᵀ of this chunk
            // depth × n, i.e. k read with column stride depth; scores m × n.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    d.depth,
                    scores.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    q_rows.as_ptr(),
                    1,
                    d.depth as isize,
                    k_head[c0 * d.depth..].as_ptr(),
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
            let later = c0 > 0;
            if chunk == d.keys {
                exp_shifted_rows(scores, n, &mut scratch.sums);
            } else {
                exp_running_rows(
                    scores,
                    n,
                    &mut scratch.maxes,
                    &mut scratch.sums,
                    &mut scratch.factors,
                );
                if later {
                    for (row, f) in out_rows.chunks_exact_mut(d.depth).zip(&scratch.factors) {
                        row.iter_mut().for_each(|x| *x *= f);
                    }
                }
            }
            // SAFETY: scores m × n; v's chunk n × depth; the output rows as
            // above, added to after the first chunk.
            unsafe {
                gemm::gemm(
                    m,
                    d.depth,
                    n,
                    out_rows.as_mut_ptr(),
                    1,
                    d.depth as isize,
                    later,
                    scores.as_ptr(),
                    1,
                    n as isize,
                    v_head[c0 * d.depth..].as_ptr(),
                    1,
                    d.depth as isize,
                    if later { 1.0 } else { 0.0 },
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        }
        for (row, sum) in out_rows.chunks_exact_mut(d.depth).zip(&scratch.sums) {
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|x| *x *= inv);
        }
    };
    (0..d.heads * blocks)
        .into_par_iter()
        .for_each_init(Scratch::default, |scratch, index| task(scratch, index));
    out
}

/// One worker's buffers: a block's scores and its rows' online-softmax state.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    maxes: Vec<f32>,
    sums: Vec<f32>,
    factors: Vec<f32>,
}

impl Scratch {
    fn reset(&mut self, rows: usize, chunk: usize) {
        self.scores.resize(rows * chunk, 0.0);
        self.maxes.clear();
        self.maxes.resize(rows, f32::NEG_INFINITY);
        self.sums.clear();
        self.sums.resize(rows, 0.0);
        self.factors.resize(rows, 0.0);
    }
}
