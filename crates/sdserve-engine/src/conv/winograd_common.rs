//! What both Winograd variants share: how their transformed kernels are
//! stored and counted, the view of one channel's products that their output
//! transforms read, and (in tests) their exactness check.

#[cfg(test)]
use super::Dims;
use super::{panels, Lhs, Precision};
use crate::cpu_kernel::SharedOut;
use rayon::prelude::*;

/// How the Winograd kernel transforms store each `c_out × c_in` matrix:
/// in panels where the f32 products take [`panels`], else row by row.
#[derive(Debug, Clone, Copy)]
pub(super) enum KernelLayout {
    Rows,
    Panels,
}

impl KernelLayout {
    pub(super) fn for_products(precision: Precision) -> Self {
        if precision == Precision::F32 && panels::available() {
            Self::Panels
        } else {
            Self::Rows
        }
    }

    /// Elements of one `m × k` matrix.
    pub(super) fn matrix_len(self, m: usize, k: usize) -> usize {
        match self {
            Self::Rows => m * k,
            Self::Panels => panels::PanelLayout { m, k }.matrix_len(),
        }
    }

    /// Where element `row`, `col` of an `m × k` matrix sits in it.
    #[inline(always)]
    pub(super) fn offset(self, m: usize, k: usize, row: usize, col: usize) -> usize {
        match self {
            Self::Rows => row * k + col,
            Self::Panels => panels::PanelLayout { m, k }.offset(row, col),
        }
    }

    /// The products' view of one matrix of this layout.
    pub(super) fn lhs(self, data: &[f32], m: usize, k: usize) -> Lhs<'_> {
        match self {
            Self::Rows => Lhs::F32 { data, m, k },
            Self::Panels => Lhs::Panels {
                data,
                layout: panels::PanelLayout { m, k },
            },
        }
    }
}

/// Bytes of `count` transformed kernels `c_out × c_in` of `value_bytes`
/// each, counted in whole panels whatever the CPU (at most 5 rows more), so
/// the memory plan's figures do not depend on the CPU's vector width.
pub(super) fn transformed_bytes(
    count: usize,
    value_bytes: usize,
    c_out: usize,
    c_in: usize,
) -> usize {
    (count * value_bytes)
        .saturating_mul(c_out.div_ceil(panels::ROWS) * panels::ROWS)
        .saturating_mul(c_in)
}

/// The transformed kernels of `weight` (`c_out × c_in` 3×3 kernels, row by
/// row) as `N` matrices `c_out × c_in` stored by `layout`: the `ξ`-th holds
/// element `ξ` of `transform(g)` for each kernel `g`. Threads split the
/// output channels in whole panels, so that no two write the same rows (a
/// serial transform was the largest single-threaded part of a decode).
pub(super) fn transform_kernels<const N: usize>(
    weight: &[f32],
    c_out: usize,
    c_in: usize,
    layout: KernelLayout,
    transform: impl Fn(&[f32; 9]) -> [f32; N] + Sync,
) -> Vec<f32> {
    let len = layout.matrix_len(c_out, c_in);
    let mut kernels = vec![0f32; N * len];
    let dst = SharedOut::new(&mut kernels);
    let group = panels::ROWS * 9 * c_in;
    weight[..(9 * c_out * c_in).min(weight.len())]
        .par_chunks(group.max(1))
        .enumerate()
        .for_each(|(index, rows)| {
            for (pair, g) in rows.chunks_exact(9).enumerate() {
                let Some(g) = g.first_chunk::<9>() else {
                    continue;
                };
                let row = index * panels::ROWS + pair / c_in;
                let at = layout.offset(c_out, c_in, row, pair % c_in);
                for (xi, value) in transform(g).into_iter().enumerate() {
                    // SAFETY: `at < len`, so `xi * len + at < N * len`; the
                    // layouts place distinct (row, column) pairs at distinct
                    // offsets, and this task owns rows `index * ROWS..` alone.
                    unsafe { *dst.at(xi * len + at) = value };
                }
            }
        });
    kernels
}

/// One output channel's row of each Winograd product matrix (16 for
/// F(2×2), 36 for F(4×4)): what both variants' output transforms read.
pub(super) struct Products<'a> {
    pub all: &'a [f32],
    /// Elements between product matrices.
    pub stride: usize,
    /// The channel's row in each.
    pub offset: usize,
}

/// One case of [`assert_3x3_equals_the_direct_sum`]: batch, input
/// channels, height, width, output channels, padding, band bytes.
#[cfg(test)]
pub(super) type Case3x3 = (usize, usize, usize, usize, usize, usize, usize);

/// The Winograd variants' exactness check: `conv` (input, weight, bias,
/// sizes, padding, output, band bytes) on random values in [-½, ½) for each
/// case of a 3×3 kernel equals the direct sum in f64 within 1e-6 per term
/// (each of the 9·c_in terms is below ¼; a few f32 roundings of sums of
/// that size).
#[cfg(test)]
pub(super) fn assert_3x3_equals_the_direct_sum(
    cases: &[Case3x3],
    conv: impl Fn(&[f32], &[f32], &[f32], Dims, usize, &mut [f32], usize),
) {
    let mut seed = 7u32;
    let mut random = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
    };
    for &(batch, c_in, h, w, c_out, padding, band_bytes) in cases {
        let d = Dims {
            batch,
            c_in,
            h,
            w,
            c_out,
            kh: 3,
            kw: 3,
            out_h: h + 2 * padding - 2,
            out_w: w + 2 * padding - 2,
        };
        let input: Vec<f32> = (0..batch * c_in * h * w).map(|_| random()).collect();
        let weight: Vec<f32> = (0..c_out * c_in * 9).map(|_| random()).collect();
        let bias: Vec<f32> = (0..c_out).map(|_| random()).collect();
        let mut ours = vec![f32::NAN; batch * c_out * d.out_h * d.out_w];
        conv(&input, &weight, &bias, d, padding, &mut ours, band_bytes);
        let mut worst = 0f64;
        for (index, value) in ours.iter().enumerate() {
            let x = index % d.out_w;
            let y = index / d.out_w % d.out_h;
            let co = index / (d.out_w * d.out_h) % c_out;
            let b = index / (d.out_w * d.out_h * c_out);
            let mut sum = f64::from(bias[co]);
            for ci in 0..c_in {
                for i in 0..3 {
                    for j in 0..3 {
                        let iy = (y + i) as isize - padding as isize;
                        let ix = (x + j) as isize - padding as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let pixel = input[((b * c_in + ci) * h + iy as usize) * w + ix as usize];
                        let tap = weight[((co * c_in + ci) * 3 + i) * 3 + j];
                        sum += f64::from(pixel) * f64::from(tap);
                    }
                }
            }
            worst = worst.max((f64::from(*value) - sum).abs());
        }
        let bound = 1e-6 * (9 * c_in) as f64;
        assert!(
            worst < bound,
            "{batch} {c_in} {h}x{w} {c_out} p{padding}: {worst} vs {bound}"
        );
    }
}
