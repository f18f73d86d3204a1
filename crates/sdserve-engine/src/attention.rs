//! Attention that never materialises a whole score matrix.
//!
//! The naive form builds `softmax(q·kᵀ)` for every head at once: at 1024x1024
//! the UNet's first blocks attend over 16,384 tokens, so one head's scores take
//! 1 GiB and all heads of a CFG batch tens of GiB. Here the scores are built one
//! block at a time, a block being a run of heads, or of query rows within one
//! head, whose scores fit in [`ScoreBlock`] bytes. Every query row still sees
//! all of its keys, so each row's softmax is the exact one (no running max or
//! rescaling is needed, and the result equals the naive computation up to the
//! matrix kernels' rounding). A single row needs `4 × keys` bytes, which stays
//! small for any size the limits admit (a 4096x4096 image: 1 MiB).
//!
//! On the CPU, `attention_cpu.rs` goes further: no block of scores ever
//! leaves the cache (the blocked form here serves the GPU).

use candle_core::{DType, Result, Tensor};

/// The most bytes one block of f32 attention scores may take. The peak of an
/// attention call is about twice this (scores and their softmax) plus q, k, v.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreBlock(pub usize);

impl ScoreBlock {
    /// 64 MiB: the block where no memory plan sizes it (the CPU, whose
    /// attention does not use blocks, and tests). A GPU's comes from its
    /// budget (`memory::cost::gpu_score_bytes`): 64 MiB leaves it mostly idle.
    pub const DEFAULT: Self = Self(64 << 20);

    /// How many (heads, query rows) go into one block for `heads × queries × keys` scores.
    fn split(self, heads: usize, queries: usize, keys: usize) -> (usize, usize) {
        let elements = (self.0 / 4).max(1);
        let per_head = queries.saturating_mul(keys);
        if per_head == 0 {
            return (heads.max(1), queries.max(1));
        }
        if per_head <= elements {
            ((elements / per_head).clamp(1, heads.max(1)), queries)
        } else {
            (1, (elements / keys.max(1)).clamp(1, queries))
        }
    }
}

impl Default for ScoreBlock {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `softmax(q · kᵀ · scale) · v` for `q: (n, queries, d)`, `k, v: (n, keys, d)`;
/// the result has `q`'s dtype.
///
/// On the CPU it is computed in f32, or with bf16 operands and f32 sums on a
/// CPU with AVX512-BF16 for bf16 inputs or when the projections' `weights` are
/// bf16. On a GPU, block by block: in f32, or in `q`'s dtype when that is f16
/// or bf16 and `upcast` (the UNet config's `upcast_attention`) is not set;
/// the matrix products then sum in f32 (cuBLAS's default) and the softmax too.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    block: ScoreBlock,
    weights: DType,
    upcast: bool,
) -> Result<Tensor> {
    if q.device().is_cpu() {
        let bf16 = weights == DType::BF16 || [q, k, v].iter().all(|t| t.dtype() == DType::BF16);
        if bf16 && crate::bf16_gemm::available() {
            return crate::attention_bf16::attention_bf16(q, k, v, scale);
        }
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        return crate::attention_cpu::attention_f32(&f32(q)?, &f32(k)?, &f32(v)?, scale)?
            .to_dtype(q.dtype());
    }
    let half = matches!(q.dtype(), DType::F16 | DType::BF16);
    let dtype = if half && !upcast {
        q.dtype()
    } else {
        DType::F32
    };
    blocked(q, k, v, scale, block, dtype)
}

/// The GPU's form: one [`ScoreBlock`] of scores at a time, computed in `dtype`.
/// The scale goes into `kᵀ` before the product, so half-precision scores stay
/// in range where the unscaled `q·kᵀ` might not.
fn blocked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    block: ScoreBlock,
    dtype: DType,
) -> Result<Tensor> {
    let in_dtype = q.dtype();
    let (heads, queries, _) = q.dims3()?;
    let keys = k.dim(1)?;
    let q = q.to_dtype(dtype)?;
    let k_t = (k.to_dtype(dtype)?.t()? * scale)?;
    let v = v.to_dtype(dtype)?;
    let (head_run, query_run) = block.split(heads, queries, keys);

    let one = |q: &Tensor, k_t: &Tensor, v: &Tensor| -> Result<Tensor> {
        let scores = q.matmul(k_t)?;
        candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
    };
    if head_run >= heads && query_run >= queries {
        return one(&q, &k_t, &v)?.to_dtype(in_dtype);
    }
    let mut head_blocks = Vec::with_capacity(heads.div_ceil(head_run));
    for start in (0..heads).step_by(head_run) {
        let len = head_run.min(heads - start);
        let (q, k_t, v) = (
            q.narrow(0, start, len)?,
            k_t.narrow(0, start, len)?,
            v.narrow(0, start, len)?,
        );
        if query_run >= queries {
            head_blocks.push(one(&q, &k_t, &v)?);
            continue;
        }
        let mut rows = Vec::with_capacity(queries.div_ceil(query_run));
        for row in (0..queries).step_by(query_run) {
            let n = query_run.min(queries - row);
            rows.push(one(&q.narrow(1, row, n)?, &k_t, &v)?);
        }
        head_blocks.push(Tensor::cat(&rows, 1)?);
    }
    Tensor::cat(&head_blocks, 0)?.to_dtype(in_dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_diff;
    use candle_core::Device;

    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        let scores = q.matmul(&(k.t().unwrap() * scale).unwrap()).unwrap();
        candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(v)
            .unwrap()
    }

    #[test]
    fn blocks_split_heads_first_then_query_rows() {
        let block = ScoreBlock(4 * 100);
        // 10 elements per head fit 10 heads per block.
        assert_eq!(block.split(16, 2, 5), (10, 2));
        // 400 elements per head: one head, 100 / 20 keys = 5 rows.
        assert_eq!(block.split(16, 20, 20), (1, 5));
        // More keys than the block holds: one row at a time, never zero.
        assert_eq!(block.split(3, 7, 1000), (1, 1));
        assert_eq!(ScoreBlock(0).split(3, 7, 5), (1, 1));
    }

    #[test]
    fn cpu_attention_equals_the_naive_one() {
        let dev = Device::Cpu;
        // Cross-attention-like (few keys), self-attention with ragged row
        // blocks (more rows than one task takes) and keys in two and three
        // chunks (the online softmax), and a non-contiguous q.
        for (heads, queries, keys, depth) in [
            (3, 50, 7, 8),
            (2, 700, 1100, 40),
            (1, 300, 2500, 40),
            (1, 1, 1, 1),
        ] {
            let q = Tensor::randn(0f32, 1.0, (heads, queries, depth), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (heads, keys, depth), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (heads, keys, depth), &dev).unwrap();
            let expected = naive(&q, &k, &v, 0.3);
            let got = crate::attention_cpu::attention_f32(&q, &k, &v, 0.3).unwrap();
            assert_eq!(got.dims(), &[heads, queries, depth]);
            let d = max_diff(&got, &expected);
            assert!(d < 1e-5, "{heads}x{queries}x{keys}x{depth}: {d}");
        }
        let q = Tensor::randn(0f32, 1.0, (4, 9, 2), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev).unwrap();
        let q_t = q.permute((2, 1, 0)).unwrap(); // (2, 9, 4), strided
        let d = max_diff(
            &attention(&q_t, &k, &v, 0.5, ScoreBlock::DEFAULT, DType::F32, false).unwrap(),
            &naive(&q_t.contiguous().unwrap(), &k, &v, 0.5),
        );
        assert!(d < 1e-5, "{d}");
        // Mismatched shapes are an error, not a crash.
        let bad = Tensor::zeros((2, 5, 3), DType::F32, &dev).unwrap();
        assert!(crate::attention_cpu::attention_f32(&q_t, &bad, &bad, 1.0).is_err());
    }

    /// The bf16 attention against the f32 one on the same bf16 values: the
    /// probabilities' bf16 rounding (relative 2^-9) and the output's bound it.
    #[test]
    fn bf16_attention_equals_f32_attention_of_the_same_values() {
        if !crate::bf16_gemm::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let dev = Device::Cpu;
        for (heads, queries, keys, depth) in [(3, 50, 77, 40), (2, 300, 1100, 80), (1, 1, 1, 1)] {
            let bf16 = |shape: (usize, usize, usize)| {
                Tensor::randn(0f32, 1.0, shape, &dev)
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap()
            };
            let q = bf16((heads, queries, depth));
            let k = bf16((heads, keys, depth));
            let v = bf16((heads, keys, depth));
            let got = attention(&q, &k, &v, 0.3, ScoreBlock::DEFAULT, DType::BF16, false).unwrap();
            assert_eq!(got.dtype(), DType::BF16);
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = naive(&f32(&q), &f32(&k), &f32(&v), 0.3);
            let d = max_diff(&f32(&got), &want);
            assert!(d < 0.02, "{heads}x{queries}x{keys}x{depth}: {d}");
            // Mixed precision: f32 activations over bf16 weights.
            let mixed = attention(
                &f32(&q),
                &f32(&k),
                &f32(&v),
                0.3,
                ScoreBlock::DEFAULT,
                DType::BF16,
                false,
            );
            let mixed = mixed.unwrap();
            assert_eq!(mixed.dtype(), DType::F32);
            let d = max_diff(&mixed, &want);
            assert!(d < 0.01, "mixed {heads}x{queries}x{keys}x{depth}: {d}");
        }
    }

    #[test]
    fn blocked_attention_equals_the_naive_one() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (6, 37, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (6, 29, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (6, 29, 8), &dev).unwrap();
        let expected = naive(&q, &k, &v, 0.35);
        // Whole, runs of heads, and runs of rows with a ragged last block.
        for bytes in [1 << 30, 4 * 37 * 29 * 4, 4 * 29 * 5, 1] {
            let got = blocked(&q, &k, &v, 0.35, ScoreBlock(bytes), DType::F32).unwrap();
            assert_eq!(got.dims(), &[6, 37, 8]);
            let d = max_diff(&got, &expected);
            assert!(d < 1e-5, "block {bytes}: {d}");
        }
    }

    /// The GPU's half-precision form (run here on the CPU, which has the same
    /// ops): f16 products and softmax against the f32 attention of the same
    /// f16 values. The scores' and probabilities' f16 rounding (relative 2^-11)
    /// bounds the error; scale 2 gives scores up to ~20, where that rounding is
    /// coarsest, and a misplaced scale would change every softmax.
    #[test]
    fn half_precision_blocked_attention_stays_near_the_f32_one() {
        let dev = Device::Cpu;
        for (scale, bytes) in [(0.35, 1 << 30), (0.35, 4 * 29 * 5), (2.0, 1 << 30)] {
            let half = |shape: (usize, usize, usize)| {
                Tensor::randn(0f32, 1.0, shape, &dev)
                    .unwrap()
                    .to_dtype(DType::F16)
                    .unwrap()
            };
            let (q, k, v) = (half((6, 37, 8)), half((6, 29, 8)), half((6, 29, 8)));
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let expected = naive(&f32(&q), &f32(&k), &f32(&v), scale);
            let got = blocked(&q, &k, &v, scale, ScoreBlock(bytes), DType::F16).unwrap();
            assert_eq!(got.dtype(), DType::F16);
            let d = max_diff(&f32(&got), &expected);
            assert!(d < 0.02, "scale {scale}, block {bytes}: {d}");
            // The public entry keeps f32 scores on request (SD 2.x's upcast_attention).
            let upcast = blocked(&q, &k, &v, scale, ScoreBlock(bytes), DType::F32).unwrap();
            let d = max_diff(&f32(&upcast), &expected);
            assert!(d < 2e-3, "upcast, scale {scale}: {d}");
        }
    }
}
