//! f32 products for the Winograd convolutions on AVX2 CPUs, with the kernel
//! side packed once per convolution instead of once per band.
//!
//! Each band multiplies every transformed kernel (`c_out × c_in`) by the
//! band's transformed input (`c_in × tiles`, often only 32-128 tiles). The
//! gemm crate packs its left operand on every call, so each kernel was
//! repacked for every band: 3.7% of a 512x512 run's samples went to that
//! packing alone. Here the kernel transform writes its output straight into
//! panels of [`ROWS`] rows stored column by column (zero rows pad the last
//! panel), and the register tile reads them as they are; the input side is
//! read in place, one row of 16 tiles per step, so nothing is packed per band.
//!
//! Used where the CPU has AVX2 and FMA but not AVX-512 (there, the gemm
//! crate's 16-lane kernels stay). Sums run in a different order than the gemm
//! crate's; the tests bound the difference against a direct f64 sum.

use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

/// Rows of one panel, and of the register tile (6 × 16: twelve sums).
pub(super) const ROWS: usize = 6;
/// Columns of the register tile: two 8-lane vectors.
const COLUMNS: usize = 16;
/// Steps along `k` per pass over C: a panel's slice (6 KiB) stays in L1 and
/// the input's rows (`DEPTH × n`) in L2.
const DEPTH: usize = 256;

/// Whether the Winograd products take this path on this CPU.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && !std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Where `m × k` matrices live in one buffer of `count` matrices: one
/// after another, each as `⌈m / ROWS⌉` panels of `k` columns of [`ROWS`]
/// values.
#[derive(Debug, Clone, Copy)]
pub(super) struct PanelLayout {
    pub m: usize,
    pub k: usize,
}

impl PanelLayout {
    /// Elements of one matrix, padding rows included.
    pub fn matrix_len(self) -> usize {
        self.m.div_ceil(ROWS) * ROWS * self.k
    }

    /// The element at `row`, `col` of a matrix, from that matrix's start.
    #[inline(always)]
    pub fn offset(self, row: usize, col: usize) -> usize {
        ((row / ROWS) * self.k + col) * ROWS + row % ROWS
    }
}

/// `C = A · B (+ C when accumulate)`: A one matrix of `layout` (`a.len() == layout.matrix_len()`),
/// B `k × n` (rows `n` apart), C `m × n` at `c` (rows `ldc` apart), with
/// the threads `inner` gives.
///
/// # Safety
/// The CPU must have AVX2 and FMA ([`available`]); `c` must be valid for
/// writes at all of C, which no other thread touches during the call.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn multiply(
    a: &[f32],
    layout: PanelLayout,
    b: &[f32],
    n: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    inner: Parallelism,
) {
    let PanelLayout { m, k } = layout;
    assert!(a.len() >= layout.matrix_len() && b.len() >= k * n);
    if m == 0 || n == 0 {
        return;
    }
    let panels = m.div_ceil(ROWS);
    let threads = match inner {
        Parallelism::Rayon(t) if t > 1 && panels > 1 => t.min(panels),
        _ => 1,
    };
    let c = crate::cpu_kernel::SharedOut(c);
    let run = |range: Range<usize>| {
        // SAFETY: each range of panels writes its own rows of C; the rest as
        // the caller guarantees.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            multiply_panels(a, layout, b, n, c.at(0), ldc, accumulate, range)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = range;
    };
    if threads == 1 {
        run(0..panels);
    } else {
        let per = panels.div_ceil(threads);
        (0..threads)
            .into_par_iter()
            .for_each(|t| run(t * per..((t + 1) * per).min(panels)));
    }
}

/// The panels `panels` of [`multiply`], on one thread.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn multiply_panels(
    a: &[f32],
    layout: PanelLayout,
    b: &[f32],
    n: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    panels: Range<usize>,
) {
    let PanelLayout { m, k } = layout;
    for k0 in (0..k).step_by(DEPTH) {
        let depth = DEPTH.min(k - k0);
        for p in panels.clone() {
            let rows = ROWS.min(m - p * ROWS);
            // SAFETY: the panel's columns k0.. and B's rows k0.. lie inside
            // `a` and `b` (checked by `multiply`); C's rows p·ROWS.. as its
            // caller guarantees.
            unsafe {
                let a = a.as_ptr().add((p * k + k0) * ROWS);
                let b = b.as_ptr().add(k0 * n);
                let c = c.add(p * ROWS * ldc);
                let mut j = 0;
                while j + COLUMNS <= n {
                    tile::<false>(
                        depth,
                        a,
                        b.add(j),
                        n,
                        c.add(j),
                        ldc,
                        rows,
                        COLUMNS,
                        accumulate || k0 > 0,
                    );
                    j += COLUMNS;
                }
                if j < n {
                    tile::<true>(
                        depth,
                        a,
                        b.add(j),
                        n,
                        c.add(j),
                        ldc,
                        rows,
                        n - j,
                        accumulate || k0 > 0,
                    );
                }
            }
        }
    }
}

/// One 6 × 16 block of C: `depth` steps of a panel's columns (6 values each)
/// times B's rows (`ldb` apart), stored to the first `rows × cols` of the
/// block, added to what C holds when `accumulate`. `PARTIAL` reads and
/// writes only `cols` (< 16) columns, so nothing past a row's end is touched.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const PARTIAL: bool>(
    depth: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let masks = [
        _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32), lane),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32 - 8), lane),
    ];
    let mut sums = [[_mm256_setzero_ps(); 2]; ROWS];
    let (mut a, mut b) = (a, b);
    for _ in 0..depth {
        // SAFETY: the caller's bounds: ROWS values of the panel, and 16 (or
        // `cols`, masked) values of B's row.
        unsafe {
            let columns = if PARTIAL {
                [
                    _mm256_maskload_ps(b, masks[0]),
                    _mm256_maskload_ps(b.add(8), masks[1]),
                ]
            } else {
                [_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))]
            };
            for (r, sum) in sums.iter_mut().enumerate() {
                let value = _mm256_broadcast_ss(&*a.add(r));
                sum[0] = _mm256_fmadd_ps(value, columns[0], sum[0]);
                sum[1] = _mm256_fmadd_ps(value, columns[1], sum[1]);
            }
            a = a.add(ROWS);
            b = b.add(ldb);
        }
    }
    for (r, sum) in sums.iter().enumerate().take(rows) {
        // SAFETY: row r < rows of the block, `cols` columns, as above.
        unsafe {
            let row = c.add(r * ldc);
            for (half, &value) in sum.iter().enumerate() {
                let at = row.add(8 * half);
                if PARTIAL {
                    let value = if accumulate {
                        _mm256_add_ps(value, _mm256_maskload_ps(at, masks[half]))
                    } else {
                        value
                    };
                    _mm256_maskstore_ps(at, masks[half], value);
                } else {
                    let value = if accumulate {
                        _mm256_add_ps(value, _mm256_loadu_ps(at))
                    } else {
                        value
                    };
                    _mm256_storeu_ps(at, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a direct f64 sum, on ragged sizes: a last panel of 1-5 rows,
    /// a last block of 1-15 columns, `k` over several depth steps, C rows
    /// wider than n (the untouched columns must stay), one and two threads
    /// (those also adding to C).
    #[test]
    fn products_equal_the_direct_sum() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            eprintln!("skipped: this CPU has no AVX2+FMA");
            return;
        }
        let mut seed = 7u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (m, k, n, threads) in [
            (1, 1, 1, 1),
            (6, 3, 16, 1),
            (7, 300, 17, 1),
            (13, 513, 40, 2),
            (128, 64, 33, 2),
            (5, 20, 15, 1),
        ] {
            let layout = PanelLayout { m, k };
            let a_rows: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let mut a = vec![0f32; layout.matrix_len()];
            for row in 0..m {
                for col in 0..k {
                    a[layout.offset(row, col)] = a_rows[row * k + col];
                }
            }
            let ldc = n + 3;
            let mut c = vec![9f32; m * ldc];
            let accumulate = threads == 2;
            let inner = if threads > 1 {
                Parallelism::Rayon(threads)
            } else {
                Parallelism::None
            };
            // SAFETY: checked above that the CPU has AVX2+FMA; c is m × ldc.
            unsafe { multiply(&a, layout, &b, n, c.as_mut_ptr(), ldc, accumulate, inner) };
            for row in 0..m {
                for col in 0..ldc {
                    let got = c[row * ldc + col];
                    if col >= n {
                        assert_eq!(got, 9.0, "{m}x{k}x{n}: ({row}, {col}) was written");
                        continue;
                    }
                    let start = if accumulate { 9.0 } else { 0.0 };
                    let want: f64 = start
                        + (0..k)
                            .map(|i| a_rows[row * k + i] as f64 * b[i * n + col] as f64)
                            .sum::<f64>();
                    // Each of the k terms is below ¼: a few f32 roundings of sums of that size.
                    let bound = 1e-6 * k as f64;
                    assert!(
                        (got as f64 - want).abs() <= bound,
                        "{m}x{k}x{n}: ({row}, {col}) {got} vs {want}"
                    );
                }
            }
        }
    }
}
