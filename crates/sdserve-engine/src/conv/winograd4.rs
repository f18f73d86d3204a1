//! Winograd F(4×4, 3×3) for f32 3×3 stride-1 convolutions on large images
//! (the VAE decoder, the UNet's first level).
//!
//! The same scheme as [`super::winograd`]'s F(2×2, 3×3) with larger tiles:
//! a 4×4 block of output pixels depends on a 6×6 input window, so each tile
//! is 36 element-wise products summed over input channels (36 gemms of
//! `c_out × c_in` by `c_in × tiles`) for 16 outputs: 2.25 multiplies per
//! output and input channel, where F(2×2) does 4 and im2col 9. The
//! transforms also move less data per output (36 values per 16 pixels
//! against 16 per 4).
//!
//! The price is exactness and memory: the transforms' constants reach 1/24
//! and 8 (the interpolation points 0, ±1, ±2), so rounding grows (to about
//! 1e-7 of a term's size on random data, within F(2×2)'s tested bound), and
//! the transformed kernels take 4× the weight. Its products are always f32:
//! bf16 products' 8-bit mantissas would carry the larger constants' error
//! into the image. Layers with bf16 weights take this path too, their
//! weights widened: on an AVX512-BF16 CPU without AMX, F(4×4) in f32 beat
//! F(2×2) with `vdpbf16ps` products (bench/README.md, session 11).

use std::ops::Range;

use super::bands::Bands;
use super::winograd_common::{transform_kernels, KernelLayout, Products};
use super::{run_tasks, Dims, Lhs, Precision};
use crate::cpu_kernel::SharedOut;

/// Above this many bytes of transformed kernels (36 f32 matrices
/// `c_out × c_in`) the layer takes F(2×2) or im2col; the memory plan adds
/// this path's kernels to every peak (`memory/cost.rs`).
const MAX_KERNEL_BYTES: usize = 160 << 20;
/// Below this many 4×4 tiles per image (a 64×64 output) the kernel
/// transform, 36 values per weight pair on every call, does not pay off.
const MIN_TILES: usize = 256;
/// Tiles per block of the transforms: one AVX2 register of f32.
const LANES: usize = 8;
/// Values per tile in the Winograd domain.
const POINTS: usize = 36;

/// Whether the convolution `d` with geometry `g` takes this path.
pub(super) fn applies(d: &Dims, g: super::ConvGeometry) -> bool {
    d.kh == 3
        && d.kw == 3
        && g.stride == 1
        && g.dilation == 1
        && kernel_bytes(d) <= MAX_KERNEL_BYTES
        && d.out_h.div_ceil(4) * d.out_w.div_ceil(4) >= MIN_TILES
}

/// The transformed kernels' bytes: 36 f32 matrices `c_out × c_in`.
pub(super) fn kernel_bytes(d: &Dims) -> usize {
    super::winograd_common::transformed_bytes(POINTS, 4, d.c_out, d.c_in)
}

/// Per-task buffers, reused across the bands a thread runs.
#[derive(Default)]
struct Scratch {
    /// 36 matrices `c_in × tiles`: the band's transformed input.
    input: Vec<f32>,
    /// 36 matrices `c_out × tiles`: their products with the kernels.
    products: Vec<f32>,
    /// Six padded input rows, and each split into its four column phases.
    rows: Vec<f32>,
    phases: [[Vec<f32>; 4]; 6],
}

/// The tile rows `tys` of one image, `tiles_x` tiles each: what both
/// transforms walk.
struct Band<'a> {
    d: &'a Dims,
    padding: usize,
    tys: Range<usize>,
    tiles_x: usize,
}

/// The 3×3, stride-1 convolution of `input` (padding `padding`) into `out`,
/// which holds `d.batch × c_out × out_h × out_w` elements, in bands whose
/// transformed input and products take about `band_bytes` per thread.
pub(super) fn run(
    input: &[f32],
    weight: &[f32],
    bias: &[f32],
    d: Dims,
    padding: usize,
    out: &mut [f32],
    band_bytes: usize,
) {
    let layout = KernelLayout::for_products(Precision::F32);
    let transformed = transform_kernels(weight, d.c_out, d.c_in, layout, kernel_transform);
    let kernels: Vec<Lhs> = transformed
        .chunks_exact(layout.matrix_len(d.c_out, d.c_in).max(1))
        .map(|u| layout.lhs(u, d.c_out, d.c_in))
        .collect();
    let tiles_x = d.out_w.div_ceil(4);
    let tiles_y = d.out_h.div_ceil(4);
    let per_tile_row = POINTS * 4 * (d.c_in + d.c_out) * tiles_x;
    let max_rows = band_bytes / per_tile_row.max(1);
    let threads = candle_core::utils::get_num_threads();
    let bands = Bands::plan(d.batch, tiles_y, max_rows, threads);
    let tasks = d.batch * bands.count();
    let dst = SharedOut::new(out);
    let image_len = d.c_in * d.h * d.w;
    run_tasks(tasks, |scratch: &mut Scratch, index, inner| {
        let (b, which) = (index / bands.count(), index % bands.count());
        let band = Band {
            d: &d,
            padding,
            tys: bands.rows(which),
            tiles_x,
        };
        let tys = band.tys.clone();
        let tiles = tys.len() * tiles_x;
        let image = &input[b * image_len..(b + 1) * image_len];
        scratch.input.resize(POINTS * d.c_in * tiles, 0.0);
        transform_input(&band, image, scratch);
        scratch.products.resize(POINTS * d.c_out * tiles, 0.0);
        let products = scratch.products.chunks_exact_mut((d.c_out * tiles).max(1));
        let inputs = scratch.input.chunks_exact((d.c_in * tiles).max(1));
        for ((u, v), m) in kernels.iter().zip(inputs).zip(products) {
            // SAFETY: `m` is c_out × tiles (row stride tiles), this task's own.
            unsafe { u.times(v, tiles, m.as_mut_ptr(), tiles, false, inner) };
        }
        let first_row = 4 * tys.start;
        let end_row = (4 * tys.end).min(d.out_h);
        let plane = d.out_h * d.out_w;
        for (co, value) in bias.iter().enumerate() {
            let start = (b * d.c_out + co) * plane + first_row * d.out_w;
            // SAFETY: output rows [first_row, end_row) of channel `co` of image
            // `b` lie inside `out` and belong to this task's band only.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(dst.at(start), (end_row - first_row) * d.out_w)
            };
            let products = Products {
                all: &scratch.products,
                stride: d.c_out * tiles,
                offset: co * tiles,
            };
            transform_output(&band, &products, *value, dst);
        }
    });
}

/// `G g Gᵀ` of one kernel (element `6i + j` at row `i`, column `j`), with
/// `G = [[¼, 0, 0], [-⅙, -⅙, -⅙], [-⅙, ⅙, -⅙], [1/24, 1/12, ⅙], [1/24, -1/12, ⅙], [0, 0, 1]]`.
fn kernel_transform(g: &[f32; 9]) -> [f32; POINTS] {
    let expand = |a: f32, b: f32, c: f32| {
        [
            a / 4.0,
            -(a + b + c) / 6.0,
            -(a - b + c) / 6.0,
            a / 24.0 + b / 12.0 + c / 6.0,
            a / 24.0 - b / 12.0 + c / 6.0,
            c,
        ]
    };
    // G g: 6 rows of 3, column by column.
    let columns = [0, 1, 2].map(|j| expand(g[j], g[3 + j], g[6 + j]));
    let mut out = [0f32; POINTS];
    for (i, row) in out.chunks_exact_mut(6).enumerate() {
        row.copy_from_slice(&expand(columns[0][i], columns[1][i], columns[2][i]));
    }
    out
}

/// `Bᵀ d B` of every 6×6 input window of the band's tile rows, into
/// `scratch.input` (36 matrices `c_in × tiles`, tiles in row-major order),
/// with
/// `Bᵀ = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
///        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]`.
/// Compiled whole for the widest vectors the CPU has, so that the blocks'
/// arrays become vector registers.
fn transform_input(band: &Band, image: &[f32], scratch: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { transform_input_avx512(band, image, scratch) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { transform_input_avx2(band, image, scratch) };
        }
    }
    transform_input_any(band, image, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_input_avx512(band: &Band, image: &[f32], scratch: &mut Scratch) {
    transform_input_any(band, image, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_input_avx2(band: &Band, image: &[f32], scratch: &mut Scratch) {
    transform_input_any(band, image, scratch)
}

#[inline(always)]
fn transform_input_any(band: &Band, image: &[f32], scratch: &mut Scratch) {
    let Band {
        d,
        padding,
        tiles_x,
        ..
    } = *band;
    let tys = band.tys.clone();
    // Padded column `p` is input column `p - padding`; tile `tx`'s window
    // is padded columns 4·tx .. 4·tx + 6. Phase `q` of a row holds its
    // columns 4t + q, so the window is (phase 0..4 at t = tx, phase 0..2 at
    // t = tx + 1): contiguous in `tx`, and a block of tiles transforms as
    // vectors. Phases run one block past the last tile, so every block
    // reads whole arrays (lanes past the edge are computed and dropped).
    let phase_len = tiles_x.next_multiple_of(LANES) + LANES;
    let width = 4 * phase_len;
    let tiles = tys.len() * tiles_x;
    scratch.rows.resize(6 * width, 0.0);
    for phase in scratch.phases.iter_mut().flatten() {
        phase.resize(phase_len, 0.0);
    }
    let copied = d.w.min(width.saturating_sub(padding));
    let plane = d.h * d.w;
    for c in 0..d.c_in {
        let channel = &image[c * plane..(c + 1) * plane];
        for (k, ty) in tys.clone().enumerate() {
            for (i, row) in scratch.rows.chunks_exact_mut(width).enumerate() {
                row.fill(0.0);
                let iy = (4 * ty + i) as isize - padding as isize;
                if (0..d.h as isize).contains(&iy) {
                    let src = &channel[iy as usize * d.w..][..copied];
                    row[padding..padding + copied].copy_from_slice(src);
                }
            }
            for (row, phases) in scratch.rows.chunks_exact(width).zip(&mut scratch.phases) {
                split_phases(row, phases);
            }
            for tx0 in (0..tiles_x).step_by(LANES) {
                let n = LANES.min(tiles_x - tx0);
                let mut out = [[0f32; LANES]; POINTS];
                input_block(&scratch.phases, tx0, &mut out);
                let col = k * tiles_x + tx0;
                for (xi, values) in out.iter().enumerate() {
                    let at = (xi * d.c_in + c) * tiles + col;
                    copy_short(&mut scratch.input[at..at + n], &values[..n]);
                }
            }
        }
    }
}

/// `phases[q][t] = row[4t + q]`, a block of [`LANES`] columns at a time.
#[inline(always)]
fn split_phases(row: &[f32], phases: &mut [Vec<f32>; 4]) {
    let [p0, p1, p2, p3] = phases;
    let blocks = row
        .chunks_exact(4 * LANES)
        .zip(p0.chunks_exact_mut(LANES))
        .zip(p1.chunks_exact_mut(LANES))
        .zip(p2.chunks_exact_mut(LANES))
        .zip(p3.chunks_exact_mut(LANES));
    for ((((src, p0), p1), p2), p3) in blocks {
        for l in 0..LANES {
            p0[l] = src[4 * l];
            p1[l] = src[4 * l + 1];
            p2[l] = src[4 * l + 2];
            p3[l] = src[4 * l + 3];
        }
    }
}

/// `Bᵀ d B` of the [`LANES`] tiles from `tx0` on, side by side: `out[ξ][l]`
/// gets element `ξ` of tile `tx0 + l`'s transform.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lanes and rows index several arrays at once
fn input_block(phases: &[[Vec<f32>; 4]; 6], tx0: usize, out: &mut [[f32; LANES]; POINTS]) {
    // Column `j` of row `i` of every tile's window, lane by lane.
    let column = |i: usize, j: usize| -> [f32; LANES] {
        let start = tx0 + j / 4;
        let mut lanes = [0f32; LANES];
        lanes.copy_from_slice(&phases[i][j % 4][start..start + LANES]);
        lanes
    };
    // Bᵀ d: left[r][j] for each lane.
    let mut left = [[[0f32; LANES]; 6]; 6];
    for j in 0..6 {
        let d = [0, 1, 2, 3, 4, 5].map(|i| column(i, j));
        let r = b_transposed(&d);
        for (left_row, values) in left.iter_mut().zip(r) {
            left_row[j] = values;
        }
    }
    // Each row of it times B.
    for (i, row) in left.iter().enumerate() {
        let r = b_transposed(row);
        out[6 * i..6 * i + 6].copy_from_slice(&r);
    }
}

/// `Bᵀ x` of six vectors of lanes.
#[inline(always)]
fn b_transposed(d: &[[f32; LANES]; 6]) -> [[f32; LANES]; 6] {
    let mut r = [[0f32; LANES]; 6];
    for l in 0..LANES {
        let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        r[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        r[1][l] = -4.0 * (d1 + d2) + d3 + d4;
        r[2][l] = 4.0 * (d1 - d2) - d3 + d4;
        r[3][l] = 2.0 * (d3 - d1) - d2 + d4;
        r[4][l] = 2.0 * (d1 - d3) - d2 + d4;
        r[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    r
}

/// `Aᵀ m A + bias` of one output channel's tiles in the band's rows, written
/// to `dst` (that channel's output rows `4·tys.start ..`, clipped to the
/// image), with `Aᵀ = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0],
/// [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]`. Compiled as
/// [`transform_input`].
fn transform_output(band: &Band, products: &Products, bias: f32, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { transform_output_avx512(band, products, bias, dst) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { transform_output_avx2(band, products, bias, dst) };
        }
    }
    transform_output_any(band, products, bias, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_output_avx512(band: &Band, products: &Products, bias: f32, dst: &mut [f32]) {
    transform_output_any(band, products, bias, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_output_avx2(band: &Band, products: &Products, bias: f32, dst: &mut [f32]) {
    transform_output_any(band, products, bias, dst)
}

#[inline(always)]
fn transform_output_any(band: &Band, products: &Products, bias: f32, dst: &mut [f32]) {
    let Band { d, tiles_x, .. } = *band;
    let tys = band.tys.clone();
    let first_row = 4 * tys.start;
    for (k, ty) in tys.enumerate() {
        for tx0 in (0..tiles_x).step_by(LANES) {
            let n = LANES.min(tiles_x - tx0);
            let mut m = [[0f32; LANES]; POINTS];
            for (xi, lanes) in m.iter_mut().enumerate() {
                let at = xi * products.stride + products.offset + k * tiles_x + tx0;
                copy_short(&mut lanes[..n], &products.all[at..at + n]);
            }
            // Output rows 4·ty .. 4·ty + 4, pixels 4·tx0 onwards.
            let mut pixels = [[0f32; 4 * LANES]; 4];
            output_block(&m, bias, &mut pixels);
            for (dy, values) in pixels.iter().enumerate() {
                let y = 4 * ty + dy;
                if y >= d.out_h {
                    break;
                }
                let line = &mut dst[(y - first_row) * d.out_w..(y - first_row + 1) * d.out_w];
                let count = (4 * n).min(d.out_w - 4 * tx0);
                copy_short(&mut line[4 * tx0..4 * tx0 + count], &values[..count]);
            }
        }
    }
}

/// `Aᵀ m A + bias` of [`LANES`] tiles side by side (`m[ξ][l]`: element `ξ`
/// of tile `l`) into their four rows of output pixels.
#[inline(always)]
fn output_block(m: &[[f32; LANES]; POINTS], bias: f32, pixels: &mut [[f32; 4 * LANES]; 4]) {
    // Aᵀ m: four rows of six, for each lane.
    let mut upper = [[[0f32; LANES]; 6]; 4];
    for j in 0..6 {
        let column = [0, 1, 2, 3, 4, 5].map(|i| m[6 * i + j]);
        let rows = a_transposed(&column);
        for (upper_row, values) in upper.iter_mut().zip(rows) {
            upper_row[j] = values;
        }
    }
    // Each row times A: four pixels per lane, side by side.
    for (row, values) in pixels.iter_mut().zip(&upper) {
        let four = a_transposed(values);
        for l in 0..LANES {
            for (q, value) in four.iter().enumerate() {
                row[4 * l + q] = value[l] + bias;
            }
        }
    }
}

/// `Aᵀ x` of six vectors of lanes.
#[inline(always)]
fn a_transposed(m: &[[f32; LANES]; 6]) -> [[f32; LANES]; 4] {
    let mut r = [[0f32; LANES]; 4];
    for l in 0..LANES {
        let [m0, m1, m2, m3, m4, m5] = [m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]];
        let (sum12, diff12) = (m1 + m2, m1 - m2);
        let (sum34, diff34) = (m3 + m4, m3 - m4);
        r[0][l] = m0 + sum12 + sum34;
        r[1][l] = diff12 + 2.0 * diff34;
        r[2][l] = sum12 + 4.0 * sum34;
        r[3][l] = diff12 + 8.0 * diff34 + m5;
    }
    r
}

/// `dst.copy_from_slice(src)` for the short runs of a block: whole blocks
/// copy as fixed-size arrays (vector moves) instead of a `memcpy` call.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) -> bool {
        match (<&mut [f32; N]>::try_from(dst), <&[f32; N]>::try_from(src)) {
            (Ok(dst), Ok(src)) => {
                *dst = *src;
                true
            }
            _ => false,
        }
    }
    const PIXELS: usize = 4 * LANES;
    let done = match src.len() {
        LANES => fixed::<LANES>(dst, src),
        PIXELS => fixed::<PIXELS>(dst, src),
        _ => false,
    };
    if !done {
        dst.copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::winograd_common::assert_3x3_equals_the_direct_sum;
    use crate::conv::{ConvGeometry, BAND_BYTES};

    /// Against the direct sum in f64, on sizes with ragged edges (widths and
    /// heights off the 4-pixel tiles and the 8-tile blocks), both paddings,
    /// batches and bands cut mid-image (called directly: most are below
    /// `applies`' thresholds).
    #[test]
    fn equals_the_direct_sum_within_f32_rounding() {
        let cases = [
            // (batch, c_in, h, w, c_out, padding, band bytes)
            (1, 3, 9, 7, 4, 1, BAND_BYTES),
            (2, 5, 8, 10, 3, 1, BAND_BYTES),
            (1, 4, 11, 6, 2, 0, BAND_BYTES),
            (1, 2, 3, 3, 1, 0, BAND_BYTES),
            (1, 3, 13, 70, 2, 1, BAND_BYTES),
            (1, 2, 6, 37, 3, 0, BAND_BYTES),
            // bands of one and of two tile rows, the last one short
            (2, 30, 9, 9, 20, 1, 1),
            (1, 30, 22, 41, 20, 1, 2 * POINTS * 4 * 50 * 11),
        ];
        // Measured: at most 1.2e-7 per term (F(2×2): 1e-8 to 1e-7), so the
        // larger constants stay within F(2×2)'s bound.
        assert_3x3_equals_the_direct_sum(&cases, run);
    }

    /// Any weight dtype, 3×3 at stride 1, outputs of at least 64×64, kernels whose
    /// transform stays under the cap.
    #[test]
    fn applies_to_large_stride_one_three_by_three_convolutions_only() {
        let dims = |c_in: usize, c_out: usize, size: usize, k: usize| Dims {
            batch: 1,
            c_in,
            h: size,
            w: size,
            c_out,
            kh: k,
            kw: k,
            out_h: size,
            out_w: size,
        };
        let g = ConvGeometry {
            padding: 1,
            stride: 1,
            dilation: 1,
        };
        assert!(applies(&dims(128, 128, 512, 3), g));
        assert!(applies(&dims(512, 512, 64, 3), g), "VAE's first level");
        assert!(applies(&dims(960, 320, 64, 3), g), "UNet's up block");
        assert!(!applies(&dims(640, 640, 32, 3), g), "64 tiles");
        assert!(!applies(&dims(1920, 640, 64, 3), g), "kernels over the cap");
        assert!(!applies(&dims(128, 128, 512, 1), g));
        let strided = ConvGeometry { stride: 2, ..g };
        assert!(!applies(&dims(128, 128, 512, 3), strided));
        let dilated = ConvGeometry { dilation: 2, ..g };
        assert!(!applies(&dims(128, 128, 512, 3), dilated));
    }
}
