//! A vectorised `exp` and the row softmax built on it, for the CPU attention.
//!
//! libm's `expf` is scalar: at 512x512 it took 6% of a generation, nearly all
//! of it in the attention's softmax. This is the classic Cody-Waite range
//! reduction `x = n·ln 2 + r` with Cephes' degree-6 polynomial for `e^r`
//! (about 1 ulp on the range softmax uses), written so the compiler
//! vectorises it, and compiled three times: for AVX-512, for AVX2 + FMA, and
//! for the baseline, picked at run time.

/// Inputs are clamped here: below it `e^x` underflows (and `2^n` would not be
/// a normal float), above it it overflows.
const MIN_X: f32 = -87.33;
const MAX_X: f32 = 88.37;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that `n · LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2²³: adding and subtracting it rounds to the nearest integer.
const ROUND: f32 = 12_582_912.0;
const LANES: usize = 16;

/// `e^x` within about 1 ulp, written so that it vectorises (also used by
/// [`crate::geglu`]).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(MIN_X, MAX_X);
    // `shifted` holds n = round(x·log2 e) in its low mantissa bits (same
    // exponent as ROUND for |n| < 2²²), so n as an integer is a bit
    // difference: `n as i32` (a saturating conversion) kept the compiler from
    // vectorising this function, one scalar convert and NaN check per lane.
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let k = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    e_r * f32::from_bits((k.wrapping_add(127) as u32) << 23)
}

/// The largest value of `row` (`-inf` when empty).
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mut max = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &x in chunks.remainder() {
        max = max.max(x);
    }
    max
}

/// Replaces `row` by `exp(row - max)` and returns the sum of the new values.
#[inline(always)]
fn exp_shifted_by(row: &mut [f32], max: f32) -> f32 {
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, x) in sums.iter_mut().zip(chunk.iter_mut()) {
            *x = exp(*x - max);
            *s += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    sum
}

/// Replaces `row` by `exp(row - max(row))` and returns the sum of the new
/// values (the caller divides by it, where it is cheapest).
#[inline(always)]
fn exp_shifted_row(row: &mut [f32]) -> f32 {
    exp_shifted_by(row, row_max(row))
}

/// One step of the online softmax over a chunk of a row's keys: `max` and
/// `sum` hold what the earlier chunks gave (`-inf` and 0 before the first);
/// the chunk becomes `exp(chunk - new max)`, and the returned factor
/// (`exp(old max - new max)`) is what the earlier chunks' products must be
/// multiplied by.
#[inline(always)]
fn exp_running_row(row: &mut [f32], max: &mut f32, sum: &mut f32) -> f32 {
    let new_max = row_max(row).max(*max);
    let factor = if *max == f32::NEG_INFINITY {
        0.0
    } else {
        exp(*max - new_max)
    };
    *sum = *sum * factor + exp_shifted_by(row, new_max);
    *max = new_max;
    factor
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_running_row_avx512(row: &mut [f32], max: &mut f32, sum: &mut f32) -> f32 {
    exp_running_row(row, max, sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_running_row_avx2(row: &mut [f32], max: &mut f32, sum: &mut f32) -> f32 {
    exp_running_row(row, max, sum)
}

/// The online softmax's step ([`exp_running_row`]) for each `cols`-long row
/// of `rows`, with that row's running `maxes` and `sums`; `factors` gets each
/// row's rescaling factor for what earlier chunks accumulated.
pub fn exp_running_rows(
    rows: &mut [f32],
    cols: usize,
    maxes: &mut [f32],
    sums: &mut [f32],
    factors: &mut [f32],
) {
    if cols == 0 {
        return;
    }
    let state = maxes
        .iter_mut()
        .zip(sums.iter_mut())
        .zip(factors.iter_mut());
    let rows = rows.chunks_exact_mut(cols).zip(state);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            for (row, ((max, sum), factor)) in rows {
                // SAFETY: the CPU has AVX-512F (checked above).
                *factor = unsafe { exp_running_row_avx512(row, max, sum) };
            }
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            for (row, ((max, sum), factor)) in rows {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                *factor = unsafe { exp_running_row_avx2(row, max, sum) };
            }
            return;
        }
    }
    for (row, ((max, sum), factor)) in rows {
        *factor = exp_running_row(row, max, sum);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_row_avx512(row: &mut [f32]) -> f32 {
    exp_shifted_row(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_row_avx2(row: &mut [f32]) -> f32 {
    exp_shifted_row(row)
}

/// For each `cols`-long row of `rows`: the row becomes `exp(row - max)`, and
/// `sums` gets the row's sum, so `row / sum` is its softmax.
pub fn exp_shifted_rows(rows: &mut [f32], cols: usize, sums: &mut [f32]) {
    if cols == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            for (row, sum) in rows.chunks_exact_mut(cols).zip(sums.iter_mut()) {
                // SAFETY: the CPU has AVX-512F (checked above).
                *sum = unsafe { exp_shifted_row_avx512(row) };
            }
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            for (row, sum) in rows.chunks_exact_mut(cols).zip(sums.iter_mut()) {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                *sum = unsafe { exp_shifted_row_avx2(row) };
            }
            return;
        }
    }
    for (row, sum) in rows.chunks_exact_mut(cols).zip(sums.iter_mut()) {
        *sum = exp_shifted_row(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_where_softmax_uses_it() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.001_7;
        }
        assert!(worst < 2.5 * f32::EPSILON, "relative error {worst}");
        // Clamped, not garbage, far outside.
        assert!(exp(-1e4) < 1e-37 && exp(-f32::INFINITY) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
    }

    /// Chunk by chunk, with the earlier chunks rescaled by the factors, the
    /// online softmax gives the whole row's.
    #[test]
    fn running_rows_over_chunks_equal_the_whole_rows() {
        let cols = 53;
        let rows: Vec<f32> = (0..2 * cols)
            .map(|i| ((i * 7919) % 113) as f32 * 0.41 - 20.0)
            .collect();
        let mut whole = rows.clone();
        let mut whole_sums = [0f32; 2];
        exp_shifted_rows(&mut whole, cols, &mut whole_sums);
        let (mut maxes, mut sums, mut factors) = ([f32::NEG_INFINITY; 2], [0f32; 2], [0f32; 2]);
        // Each row's softmax-weighted sum of its column indices, accumulated chunk by chunk.
        let mut acc = [0f32; 2];
        for (start, len) in [(0, 20), (20, 16), (36, 17)] {
            let mut chunk: Vec<f32> = (0..2)
                .flat_map(|r| rows[r * cols + start..][..len].to_vec())
                .collect();
            exp_running_rows(&mut chunk, len, &mut maxes, &mut sums, &mut factors);
            for r in 0..2 {
                acc[r] *= factors[r];
                acc[r] += (0..len)
                    .map(|j| chunk[r * len + j] * (start + j) as f32)
                    .sum::<f32>();
            }
        }
        for r in 0..2 {
            let want: f32 = (0..cols)
                .map(|j| whole[r * cols + j] / whole_sums[r] * j as f32)
                .sum();
            let got = acc[r] / sums[r];
            assert!(
                (got - want).abs() <= 1e-4 * want.abs(),
                "{r}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn rows_equal_the_straightforward_softmax() {
        let cols = 37; // a ragged tail after two full lane chunks
        let mut rows: Vec<f32> = (0..3 * cols)
            .map(|i| ((i * 7919) % 101) as f32 * 0.37 - 15.0)
            .collect();
        let expected: Vec<f32> = rows
            .chunks(cols)
            .flat_map(|row| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = row.iter().map(|x| (x - max).exp()).sum();
                row.iter()
                    .map(move |x| (x - max).exp() / sum)
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut sums = [0f32; 3];
        exp_shifted_rows(&mut rows, cols, &mut sums);
        for (i, (got, want)) in rows.iter().zip(&expected).enumerate() {
            let got = got / sums[i / cols];
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1e-3),
                "{i}: {got} vs {want}"
            );
        }
    }
}
