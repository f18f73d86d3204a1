//! A bf16 matrix product for CPUs with AVX512-BF16 (`vdpbf16ps`).
//!
//! candle's CPU matmul has no bf16 kernel, so `--dtype bf16` on the CPU ran
//! no faster than f32. `vdpbf16ps` multiplies 32 bf16 pairs and adds them
//! into 16 f32 lanes in one instruction, twice the work of an f32 FMA. The
//! product here is `C = alpha · A·B (+ C)`, with f32 sums and f32 output:
//!
//! * both operands are packed per call into bf16 pairs along `k` ([`PackedA`]
//!   in panels of [`PackedB::tile_rows`] rows, [`PackedB`] in panels of 16 or
//!   32 columns), rounding f32 sources to nearest even; packing costs
//!   `O(m·k + k·n)` against the product's `O(m·k·n)` and keeps no copy of a
//!   weight between calls (LoRA patches and memory plans see one weight);
//! * [`multiply`] walks `k` in chunks that keep one B panel in L1 and a group
//!   of A panels in L2, each tile of C in registers.
//!
//! Results equal the f64 product of the bf16-rounded operands up to f32
//! summation error, which the tests bound.

use std::ops::Range;

use half::bf16;

pub(crate) use pack::bf16_from_f32_bytes;
use pack::Lines;

mod pack;

/// Whether this CPU runs the kernel (AVX-512F, -BW and AVX512-BF16).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`PackedB::tile_rows`] of 32-column panels ([`PackedB::from_rows_wide`]).
pub const WIDE_TILE_ROWS: usize = 12;

/// k-pairs per chunk: one 32-column B panel chunk is 32 KiB.
const CHUNK_PAIRS: usize = 256;

/// A row-major matrix (row stride given separately) of either element type.
#[derive(Clone, Copy)]
pub enum Matrix<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl<'a> Matrix<'a> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(x) => x.len(),
            Self::Bf16(x) => x.len(),
        }
    }

    /// Elements `range` of it.
    pub fn part(self, range: std::ops::Range<usize>) -> Matrix<'a> {
        match self {
            Self::F32(x) => Self::F32(&x[range]),
            Self::Bf16(x) => Self::Bf16(&x[range]),
        }
    }
}

/// The left operand, `m × k`, in panels of `tile_rows` rows.
pub struct PackedA {
    data: Vec<u32>,
    rows: usize,
    pairs: usize,
    tile_rows: usize,
}

impl PackedA {
    /// Packs the `m × k` matrix whose row `i` starts at `i · ld`.
    pub fn new(src: Matrix, m: usize, k: usize, ld: usize, tile_rows: usize) -> Self {
        Self {
            data: pack::pack(src, m, k, ld, tile_rows, Lines::AcrossRows),
            rows: m,
            pairs: k.div_ceil(2),
            tile_rows,
        }
    }

    /// Number of row panels.
    pub fn panels(&self) -> usize {
        self.rows.div_ceil(self.tile_rows)
    }
}

/// The right operand, `k × n`, in panels of 16 or 32 columns.
pub struct PackedB {
    data: Vec<u32>,
    cols: usize,
    pairs: usize,
    vectors: usize,
}

impl PackedB {
    /// Panel width in vectors: 1 where 16-column panels waste less padding.
    fn vectors_for(n: usize) -> usize {
        if !n.is_multiple_of(32) && n % 32 <= 16 {
            1
        } else {
            2
        }
    }

    /// `B = srcᵀ`, `src` being `n × k` with row stride `ld` (a linear
    /// layer's `(out, in)` weight, attention's keys).
    pub fn from_transposed(src: Matrix, n: usize, k: usize, ld: usize) -> Self {
        Self::pack(src, n, k, ld, Self::vectors_for(n), Lines::AcrossRows)
    }

    /// `B = src`, `src` being `k × n` with row stride `ld` (attention's values).
    pub fn from_rows(src: Matrix, k: usize, n: usize, ld: usize) -> Self {
        Self::pack(src, n, k, ld, Self::vectors_for(n), Lines::AlongRows)
    }

    /// [`Self::from_rows`] in 32-column panels whatever `n`, so that one
    /// [`PackedA`] packed for [`WIDE_TILE_ROWS`] serves every band of a
    /// convolution (wide matrices: the padding is a small part).
    pub fn from_rows_wide(src: Matrix, k: usize, n: usize, ld: usize) -> Self {
        Self::pack(src, n, k, ld, 2, Lines::AlongRows)
    }

    fn pack(src: Matrix, n: usize, k: usize, ld: usize, vectors: usize, lines: Lines) -> Self {
        Self {
            data: pack::pack(src, n, k, ld, 16 * vectors, lines),
            cols: n,
            pairs: k.div_ceil(2),
            vectors,
        }
    }

    /// Rows of A per register tile for this panel width (24 or 12
    /// accumulators' rows: 24 of the 32 vector registers hold sums).
    pub fn tile_rows(&self) -> usize {
        24 / self.vectors
    }

    /// Number of column panels.
    pub fn panels(&self) -> usize {
        self.cols.div_ceil(16 * self.vectors)
    }
}

/// `C[rows, cols] = alpha · A·B (+ C when accumulate)` for the row panels
/// `row_panels` of `a` and column panels `col_panels` of `b`; `c` points at
/// `C[0][0]`, rows `ldc` apart.
///
/// # Safety
/// [`available`] must be true; `c` must be valid for writes at every
/// `C[i][j]` in the given panels' rows and columns (clipped to `m × n`), and
/// no other thread may touch those elements during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn multiply(
    a: &PackedA,
    b: &PackedB,
    row_panels: Range<usize>,
    col_panels: Range<usize>,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    assert!(
        a.pairs == b.pairs && a.tile_rows == b.tile_rows(),
        "packed operands do not match"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let job = kernel::Job {
            a,
            b,
            c,
            ldc,
            alpha,
        };
        // SAFETY: forwarded from the caller.
        unsafe {
            match b.vectors {
                1 => kernel::run::<24, 1>(&job, row_panels, col_panels, accumulate),
                _ => kernel::run::<12, 2>(&job, row_panels, col_panels, accumulate),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (row_panels, col_panels, c, ldc, alpha, accumulate);
        unreachable!("bf16_gemm::available() is false off x86_64");
    }
}

/// Row panels and column panels per parallel task: a task's A rows (8
/// panels) stay in L2 while its B panels pass through L1.
const TASK_ROW_PANELS: usize = 8;
const TASK_COL_PANELS: usize = 8;

/// `C = alpha · A·B (+ C when accumulate)` over the whole of both operands,
/// split into tasks on rayon's pool. `c` holds `m` rows `ldc` apart.
pub fn multiply_parallel(
    a: &PackedA,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) -> candle_core::Result<()> {
    if !available() {
        candle_core::bail!("bf16 matrix product: this CPU has no AVX512-BF16");
    }
    if a.rows == 0 || b.cols == 0 {
        return Ok(());
    }
    if ldc < b.cols || c.len() < (a.rows - 1) * ldc + b.cols {
        candle_core::bail!("bf16 matrix product: output too small");
    }
    // SAFETY: the kernel is available and `c` holds every row and column
    // of the product (both checked above).
    unsafe { multiply_on_pool(a, b, c.as_mut_ptr(), ldc, alpha, accumulate) };
    Ok(())
}

/// [`multiply`] over the whole of both operands, split into tasks on
/// rayon's pool.
///
/// # Safety
/// As for [`multiply`], for every row and column of the product.
pub unsafe fn multiply_on_pool(
    a: &PackedA,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    use rayon::prelude::*;
    let row_tasks = a.panels().div_ceil(TASK_ROW_PANELS);
    let col_tasks = b.panels().div_ceil(TASK_COL_PANELS);
    let dst = crate::cpu_kernel::SharedOut(c);
    (0..row_tasks * col_tasks).into_par_iter().for_each(|task| {
        let (r, q) = (task / col_tasks, task % col_tasks);
        let rows = r * TASK_ROW_PANELS..((r + 1) * TASK_ROW_PANELS).min(a.panels());
        let cols = q * TASK_COL_PANELS..((q + 1) * TASK_COL_PANELS).min(b.panels());
        // SAFETY: forwarded from the caller; tasks write disjoint row ×
        // column blocks.
        unsafe { multiply(a, b, rows, cols, dst.at(0), ldc, alpha, accumulate) };
    });
}

#[cfg(target_arch = "x86_64")]
mod kernel;

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn round(x: &[f32]) -> Vec<f64> {
        x.iter().map(|v| bf16::from_f32(*v).to_f64()).collect()
    }

    /// The kernel against the f64 product of the bf16-rounded operands, for
    /// shapes with edge tiles in both directions, odd `k`, several `k` chunks,
    /// both panel widths, both source types and both B layouts.
    #[test]
    fn product_equals_f64_reference_of_rounded_operands() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (13, 40, 7),
            (30, 64, 600),
            (25, 80, 33),
            (50, 33, 1100),
        ] {
            let lda = k + 3;
            let a = lcg(1, m * lda);
            let bt = lcg(2, n * k); // n × k
            let b_rows: Vec<f32> = (0..k * n).map(|i| bt[(i % n) * k + i / n]).collect();
            let (ar, br) = (round(&a), round(&bt));
            let a16: Vec<bf16> = a.iter().map(|v| bf16::from_f32(*v)).collect();
            for (which, packed_b) in [
                PackedB::from_transposed(Matrix::F32(&bt), n, k, k),
                PackedB::from_rows(Matrix::F32(&b_rows), k, n, n),
            ]
            .into_iter()
            .enumerate()
            {
                for src in [Matrix::F32(&a), Matrix::Bf16(&a16)] {
                    let packed_a = PackedA::new(src, m, k, lda, packed_b.tile_rows());
                    let ldc = n + 5;
                    let mut c = vec![1.0f32; m * ldc];
                    // SAFETY: c holds m rows of ldc ≥ n columns; one thread.
                    unsafe {
                        multiply(
                            &packed_a,
                            &packed_b,
                            0..packed_a.panels(),
                            0..packed_b.panels(),
                            c.as_mut_ptr(),
                            ldc,
                            0.5,
                            true,
                        );
                    }
                    for i in 0..m {
                        for j in 0..n {
                            let exact: f64 =
                                (0..k).map(|kk| ar[i * lda + kk] * br[j * k + kk]).sum();
                            let want = 1.0 + 0.5 * exact;
                            let got = c[i * ldc + j] as f64;
                            let bound = 1e-6 * (k as f64) + 1e-6;
                            assert!(
                                (got - want).abs() <= bound,
                                "{m}x{n}x{k} layout {which} [{i},{j}]: {got} vs {want}"
                            );
                        }
                        // The padding between rows is untouched.
                        assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| *v == 1.0));
                    }
                }
            }
        }
    }
}
