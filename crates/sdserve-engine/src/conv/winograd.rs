//! Winograd F(2×2, 3×3) for the CPU's 3×3 stride-1 convolutions on large
//! images (the VAE decoder at full resolution, the UNet's first level).
//!
//! Each 2×2 block of output pixels (a tile) depends on a 4×4 window of the
//! input. In the Winograd domain (`Bᵀ d B` for the window, `G g Gᵀ` for the
//! kernel) the tile's 3×3 convolution is 16 element-wise products summed over
//! input channels: 16 gemms of `c_out × c_in` by `c_in × tiles`, then
//! `Aᵀ m A` turns each tile's 16 sums back into 4 pixels. That is 16
//! multiplies per 4 outputs and input channel where im2col does 36: 2.25×
//! less arithmetic in the gemm that is most of a convolution's time, for
//! transforms whose cost is linear in the data and in the weights.
//!
//! The transforms use only ±1 and ½, so the result differs from the direct
//! sum by a few f32 roundings of the tile's values; the tests bound it
//! against candle's conv2d.

use std::ops::Range;

use super::bands::Bands;
use super::winograd_common::{transform_kernels, KernelLayout, Products};
use super::{run_tasks, times_packed, Dims, Lhs, Precision};
use crate::bf16_gemm::{wide_a_panels, Matrix, PackedA, PackedB};
use crate::cpu_kernel::SharedOut;

/// The transformed kernels take 16/9 of the weight, in f32 and (bf16
/// products) packed beside them while they are packed. Above this many bytes
/// of them the layer keeps im2col, so this path's extra memory stays bounded;
/// the memory plan adds it to every peak (`memory/cost.rs`).
const MAX_KERNEL_BYTES: usize = 160 << 20;
/// Below this many tiles per image the kernel transform does not pay off.
const MIN_TILES: usize = 256;

/// Whether the convolution `d` with geometry `g` takes this path.
pub(super) fn applies(d: &Dims, g: super::ConvGeometry, precision: Precision) -> bool {
    d.kh == 3
        && d.kw == 3
        && g.stride == 1
        && g.dilation == 1
        && kernel_bytes(d, precision) <= MAX_KERNEL_BYTES
        && d.out_h.div_ceil(2) * d.out_w.div_ceil(2) >= MIN_TILES
}

/// The transformed kernels' bytes at their peak: 16 f32 matrices
/// `c_out × c_in`, and their packed bf16 copies while they are packed.
pub(super) fn kernel_bytes(d: &Dims, precision: Precision) -> usize {
    let per_value = match precision {
        Precision::F32 => 4,
        Precision::Bf16 => 4 + 2,
    };
    super::winograd_common::transformed_bytes(16, per_value, d.c_out, d.c_in)
}

/// Per-task buffers, reused across the bands a thread runs.
#[derive(Default)]
struct Scratch {
    /// f32 products: 16 matrices `c_in × tiles`, the band's transformed input.
    input: Vec<f32>,
    /// bf16 products: the same, packed for the kernel as they are computed.
    packed: Vec<PackedB>,
    /// 16 matrices `c_out × tiles`: their products with the kernels.
    products: Vec<f32>,
    windows: Windows,
}

/// The input rows of one tile row, for a pair of channels.
#[derive(Default)]
struct Windows {
    /// Four input rows with the padding made explicit.
    rows: Vec<f32>,
    /// Their even and odd columns, per channel of the pair.
    even: [[Vec<f32>; 4]; 2],
    odd: [[Vec<f32>; 4]; 2],
}

/// The tile rows `tys` of one image, `tiles_x` tiles each: what both
/// transforms walk.
struct Band<'a> {
    d: &'a Dims,
    padding: usize,
    tys: Range<usize>,
    tiles_x: usize,
}

/// Where [`transform_input`] writes.
enum Target<'a> {
    /// 16 f32 matrices `c_in × tiles`, one after another.
    F32(&'a mut [f32]),
    /// 16 packed bf16 matrices `c_in × tiles`.
    Packed(&'a mut [PackedB]),
}

/// The 3×3, stride-1 convolution of `input` (padding `padding`) into `out`,
/// which holds `d.batch × c_out × out_h × out_w` elements, in bands whose
/// transformed input and products take about `band_bytes` per thread.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    input: &[f32],
    weight: &[f32],
    bias: &[f32],
    d: Dims,
    padding: usize,
    out: &mut [f32],
    band_bytes: usize,
    precision: Precision,
) {
    let layout = KernelLayout::for_products(precision);
    let transformed = transform_kernels(weight, d.c_out, d.c_in, layout, kernel_transform);
    let pairs = layout.matrix_len(d.c_out, d.c_in).max(1);
    // bf16 products: the kernels packed (and their f32 transform freed),
    // the transformed input packed as it is computed.
    let (bf16, transformed) = match precision {
        Precision::Bf16 => {
            let packed: Vec<PackedA> = transformed
                .chunks_exact(pairs)
                .map(|u| PackedA::new(Matrix::F32(u), d.c_out, d.c_in, d.c_in, wide_a_panels()))
                .collect();
            drop(transformed);
            (Some(packed), Vec::new())
        }
        Precision::F32 => (None, transformed),
    };
    let kernels: Vec<Lhs> = transformed
        .chunks_exact(pairs)
        .map(|u| layout.lhs(u, d.c_out, d.c_in))
        .collect();
    let tiles_x = d.out_w.div_ceil(2);
    let tiles_y = d.out_h.div_ceil(2);
    let per_tile_row = 16 * 4 * (d.c_in + d.c_out) * tiles_x;
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
        let target = if bf16.is_some() {
            scratch
                .packed
                .resize_with(16, || PackedB::wide_unwritten(d.c_in, tiles));
            for b in &mut scratch.packed {
                b.rewrite_wide(d.c_in, tiles);
            }
            Target::Packed(&mut scratch.packed)
        } else {
            scratch.input.resize(16 * d.c_in * tiles, 0.0);
            Target::F32(&mut scratch.input)
        };
        transform_input(&band, image, &mut scratch.windows, target);
        scratch.products.resize(16 * d.c_out * tiles, 0.0);
        let products = scratch.products.chunks_exact_mut((d.c_out * tiles).max(1));
        if let Some(bf16) = &bf16 {
            for ((a, b), m) in bf16.iter().zip(&scratch.packed).zip(products) {
                // SAFETY: `m` is c_out × tiles (row stride tiles), this task's own.
                unsafe { times_packed(a, b, m.as_mut_ptr(), tiles, false, inner) };
            }
        } else {
            let inputs = scratch.input.chunks_exact((d.c_in * tiles).max(1));
            for ((u, v), m) in kernels.iter().zip(inputs).zip(products) {
                // SAFETY: `m` is c_out × tiles (row stride tiles), this task's own.
                unsafe { u.times(v, tiles, m.as_mut_ptr(), tiles, false, inner) };
            }
        }
        let first_row = 2 * tys.start;
        let end_row = (2 * tys.end).min(d.out_h);
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

/// `G g Gᵀ` of one kernel (element `4i + j` at row `i`, column `j`), with
/// `G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]`.
fn kernel_transform(g: &[f32; 9]) -> [f32; 16] {
    let expand = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    // G g: 4 rows of 3, column by column.
    let columns = [0, 1, 2].map(|j| expand(g[j], g[3 + j], g[6 + j]));
    let mut out = [0f32; 16];
    for (i, row) in out.chunks_exact_mut(4).enumerate() {
        row.copy_from_slice(&expand(columns[0][i], columns[1][i], columns[2][i]));
    }
    out
}

/// `Bᵀ d B` of every 4×4 input window of tile rows `tys`, into `target`
/// (16 matrices `c_in × tiles`, tiles in row-major order), with
/// `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
/// Channels go in pairs, the two rows of a packed bf16 pair. Compiled whole
/// for AVX-512 (else AVX2) where the CPU has it, so that the blocks' arrays stay in
/// registers.
fn transform_input(band: &Band, image: &[f32], windows: &mut Windows, target: Target) {
    #[cfg(target_arch = "x86_64")]
    {
        if matches!(target, Target::Packed(_)) && crate::bf16_gemm::available() {
            // SAFETY: the CPU has the bf16 kernel's features (checked above).
            return unsafe { transform_input_bf16(band, image, windows, target) };
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { transform_input_avx512(band, image, windows, target) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { transform_input_avx2(band, image, windows, target) };
        }
    }
    transform_input_any(band, image, windows, target)
}

/// With the bf16 conversion's features too, so that packing each block
/// ([`PackedB::write_rows`]) inlines instead of being a call per block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn transform_input_bf16(band: &Band, image: &[f32], windows: &mut Windows, target: Target) {
    transform_input_any(band, image, windows, target)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_input_avx512(
    band: &Band,
    image: &[f32],
    windows: &mut Windows,
    target: Target,
) {
    transform_input_any(band, image, windows, target)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_input_avx2(band: &Band, image: &[f32], windows: &mut Windows, target: Target) {
    transform_input_any(band, image, windows, target)
}

#[inline(always)]
fn transform_input_any(band: &Band, image: &[f32], windows: &mut Windows, mut target: Target) {
    let Band {
        d,
        padding,
        tiles_x,
        ..
    } = *band;
    let tys = band.tys.clone();
    // Padded column `p` is input column `p - padding`; the windows of tile
    // `tx` are columns 2·tx .. 2·tx + 4.
    let width = 2 * tiles_x + 2;
    let tiles = tys.len() * tiles_x;
    windows.rows.resize(4 * width, 0.0);
    for half in windows
        .even
        .iter_mut()
        .chain(windows.odd.iter_mut())
        .flatten()
    {
        half.resize(width / 2, 0.0);
    }
    let copied = d.w.min(width.saturating_sub(padding));
    let plane = d.h * d.w;
    for c0 in (0..d.c_in).step_by(2) {
        let channels = (d.c_in - c0).min(2);
        for (k, ty) in tys.clone().enumerate() {
            for ch in 0..channels {
                let channel = &image[(c0 + ch) * plane..(c0 + ch + 1) * plane];
                for (i, row) in windows.rows.chunks_exact_mut(width).enumerate() {
                    row.fill(0.0);
                    let iy = (2 * ty + i) as isize - padding as isize;
                    if (0..d.h as isize).contains(&iy) {
                        let src = &channel[iy as usize * d.w..][..copied];
                        row[padding..padding + copied].copy_from_slice(src);
                    }
                }
                // Even and odd padded columns of each row: tile `tx`'s
                // window is (even[tx], odd[tx], even[tx + 1], odd[tx + 1]),
                // contiguous in `tx`, so a block of 16 tiles transforms as
                // vectors.
                for (i, row) in windows.rows.chunks_exact(width).enumerate() {
                    deinterleave(row, &mut windows.even[ch][i], &mut windows.odd[ch][i]);
                }
            }
            for tx0 in (0..tiles_x).step_by(LANES) {
                let n = LANES.min(tiles_x - tx0);
                let mut out = [[[0f32; LANES]; 16]; 2];
                for (ch, out) in out.iter_mut().enumerate().take(channels) {
                    let mut even = [[0f32; LANES + 1]; 4];
                    let mut odd = [[0f32; LANES + 1]; 4];
                    for i in 0..4 {
                        let (all_even, all_odd) = (&windows.even[ch][i], &windows.odd[ch][i]);
                        let m = (n + 1).min(all_even.len() - tx0);
                        copy_short(&mut even[i][..m], &all_even[tx0..tx0 + m]);
                        copy_short(&mut odd[i][..m], &all_odd[tx0..tx0 + m]);
                    }
                    input_block(&even, &odd, out);
                }
                let col = k * tiles_x + tx0;
                match &mut target {
                    Target::F32(input) => {
                        for (ch, out) in out.iter().enumerate().take(channels) {
                            for (xi, values) in out.iter().enumerate() {
                                let at = (xi * d.c_in + c0 + ch) * tiles + col;
                                copy_short(&mut input[at..at + n], &values[..n]);
                            }
                        }
                    }
                    Target::Packed(packed) => {
                        for (xi, b) in packed.iter_mut().enumerate() {
                            let hi = (channels == 2).then(|| &out[1][xi][..n]);
                            b.write_rows(c0 / 2, col, &out[0][xi][..n], hi);
                        }
                    }
                }
            }
        }
    }
}

/// Tiles per block of [`input_block`].
const LANES: usize = 16;

/// `even[t] = row[2t]`, `odd[t] = row[2t + 1]`, a block of [`LANES`] pairs
/// at a time (fixed-size, so it compiles to vector shuffles).
#[inline(always)]
fn deinterleave(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let mut pairs = row.chunks_exact(2 * LANES);
    let mut evens = even.chunks_exact_mut(LANES);
    let mut odds = odd.chunks_exact_mut(LANES);
    let mut done = 0;
    for ((pairs, even), odd) in (&mut pairs).zip(&mut evens).zip(&mut odds) {
        let block = (
            <&[f32; 2 * LANES]>::try_from(pairs),
            <&mut [f32; LANES]>::try_from(even),
            <&mut [f32; LANES]>::try_from(odd),
        );
        if let (Ok(pairs), Ok(even), Ok(odd)) = block {
            for l in 0..LANES {
                even[l] = pairs[2 * l];
                odd[l] = pairs[2 * l + 1];
            }
        }
        done += LANES;
    }
    for (t, pair) in row[2 * done..].chunks_exact(2).enumerate() {
        even[done + t] = pair[0];
        odd[done + t] = pair[1];
    }
}

/// `dst.copy_from_slice(src)` for the short runs of a block: whole blocks
/// (a block's lanes, its windows' columns, its pixel rows) copy as fixed-size arrays, which compile to vector
/// moves; a `copy_from_slice` of unknown length is a call to `memcpy`, and
/// those calls were 18% of a full-resolution VAE decode.
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
    const WINDOW: usize = LANES + 1;
    const PIXELS: usize = 2 * LANES;
    let done = match src.len() {
        LANES => fixed::<LANES>(dst, src),
        WINDOW => fixed::<WINDOW>(dst, src),
        PIXELS => fixed::<PIXELS>(dst, src),
        _ => false,
    };
    if !done {
        dst.copy_from_slice(src);
    }
}

/// `Bᵀ d B` of [`LANES`] tiles side by side: `even[i][l]`, `odd[i][l]` are
/// row `i`'s padded columns `2l`, `2l + 1` from the block's first tile on;
/// `out[ξ][l]` gets element `ξ` of tile `l`'s transform.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lanes and rows index several arrays at once
fn input_block(
    even: &[[f32; LANES + 1]; 4],
    odd: &[[f32; LANES + 1]; 4],
    out: &mut [[f32; LANES]; 16],
) {
    // Column `j` of row `i` of every tile's window, lane by lane.
    let column = |i: usize, j: usize| -> &[f32; LANES] {
        let (half, shift) = match j {
            0 => (&even[i], 0),
            1 => (&odd[i], 0),
            2 => (&even[i], 1),
            _ => (&odd[i], 1),
        };
        half[shift..shift + LANES]
            .try_into()
            .unwrap_or(&[0.0; LANES])
    };
    // Bᵀ d: left[r][j] for each lane.
    let mut left = [[[0f32; LANES]; 4]; 4];
    for j in 0..4 {
        let [d0, d1, d2, d3] = [column(0, j), column(1, j), column(2, j), column(3, j)];
        for l in 0..LANES {
            left[0][j][l] = d0[l] - d2[l];
            left[1][j][l] = d1[l] + d2[l];
            left[2][j][l] = d2[l] - d1[l];
            left[3][j][l] = d1[l] - d3[l];
        }
    }
    // Each row of it times B.
    for (i, [r0, r1, r2, r3]) in left.iter().enumerate() {
        for l in 0..LANES {
            out[4 * i][l] = r0[l] - r2[l];
            out[4 * i + 1][l] = r1[l] + r2[l];
            out[4 * i + 2][l] = r2[l] - r1[l];
            out[4 * i + 3][l] = r1[l] - r3[l];
        }
    }
}

/// `Aᵀ m A + bias` of one output channel's tiles in rows `tys`, written to
/// `dst` (that channel's output rows `2·tys.start ..`, clipped to the image),
/// with `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`. Compiled whole for AVX-512
/// (else AVX2) where the CPU has it, as [`transform_input`].
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
    let first_row = 2 * tys.start;
    for (k, ty) in tys.enumerate() {
        for tx0 in (0..tiles_x).step_by(LANES) {
            let n = LANES.min(tiles_x - tx0);
            let mut m = [[0f32; LANES]; 16];
            for (xi, lanes) in m.iter_mut().enumerate() {
                let at = xi * products.stride + products.offset + k * tiles_x + tx0;
                copy_short(&mut lanes[..n], &products.all[at..at + n]);
            }
            // Output rows 2·ty and 2·ty + 1, pixels 2·tx0 onwards.
            let mut pixels = [[0f32; 2 * LANES]; 2];
            output_block(&m, bias, &mut pixels);
            for (dy, values) in pixels.iter().enumerate() {
                let y = 2 * ty + dy;
                if y >= d.out_h {
                    continue;
                }
                let line = &mut dst[(y - first_row) * d.out_w..(y - first_row + 1) * d.out_w];
                let count = (2 * n).min(d.out_w - 2 * tx0);
                copy_short(&mut line[2 * tx0..2 * tx0 + count], &values[..count]);
            }
        }
    }
}

/// `Aᵀ m A + bias` of [`LANES`] tiles side by side (`m[ξ][l]`: element `ξ`
/// of tile `l`) into their two rows of output pixels.
#[inline(always)]
fn output_block(m: &[[f32; LANES]; 16], bias: f32, pixels: &mut [[f32; 2 * LANES]; 2]) {
    // Aᵀ m: two rows of four, for each lane.
    let mut top = [[0f32; LANES]; 4];
    let mut bottom = [[0f32; LANES]; 4];
    for j in 0..4 {
        let [m0, m1, m2, m3] = [&m[j], &m[4 + j], &m[8 + j], &m[12 + j]];
        for l in 0..LANES {
            top[j][l] = m0[l] + m1[l] + m2[l];
            bottom[j][l] = m1[l] - m2[l] - m3[l];
        }
    }
    // Each row times A: two pixels per lane, side by side.
    for (row, [r0, r1, r2, r3]) in pixels.iter_mut().zip([top, bottom]) {
        for l in 0..LANES {
            row[2 * l] = r0[l] + r1[l] + r2[l] + bias;
            row[2 * l + 1] = r1[l] - r2[l] - r3[l] + bias;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::winograd_common::assert_3x3_equals_the_direct_sum;
    use crate::conv::{ConvGeometry, BAND_BYTES};

    /// Against the direct sum in f64, on sizes with odd edges, both paddings,
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
            // bands of one and of two tile rows, the last one short
            (2, 30, 9, 9, 20, 1, 1),
            (1, 30, 14, 9, 20, 1, 2 * 16 * 4 * 50 * 5),
        ];
        assert_3x3_equals_the_direct_sum(&cases, |input, weight, bias, d, padding, out, band| {
            run(input, weight, bias, d, padding, out, band, Precision::F32)
        });
    }

    /// bf16: the transformed input packed as it is computed equals the f32
    /// transform packed afterwards, word for word: odd and even channel
    /// counts, bands from the image's middle, blocks of tiles that cross
    /// the packed panels' 32-column boundaries.
    #[test]
    fn packing_while_transforming_equals_packing_afterwards() {
        let mut seed = 11u32;
        let mut random = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for (c_in, h, w, padding, tys) in [
            (5, 14, 9, 1, 0..7),
            (30, 20, 67, 1, 2..5),
            (4, 9, 7, 0, 1..3),
        ] {
            let d = Dims {
                batch: 1,
                c_in,
                h,
                w,
                c_out: 1,
                kh: 3,
                kw: 3,
                out_h: h + 2 * padding - 2,
                out_w: w + 2 * padding - 2,
            };
            let tiles_x = d.out_w.div_ceil(2);
            let tiles = tys.len() * tiles_x;
            let image: Vec<f32> = (0..c_in * h * w).map(|_| random()).collect();
            let mut f32s = vec![0f32; 16 * c_in * tiles];
            let band = Band {
                d: &d,
                padding,
                tys,
                tiles_x,
            };
            let windows = &mut Windows::default();
            transform_input(&band, &image, windows, Target::F32(&mut f32s));
            // Matrices that held another band (as a task reuses them) are
            // rewritten whole; fresh ones start from zeros.
            let mut reused: Vec<PackedB> = (0..16)
                .map(|_| PackedB::wide_unwritten(c_in, tiles))
                .collect();
            let other: Vec<f32> = image.iter().map(|v| 1.0 - v).collect();
            transform_input(&band, &other, windows, Target::Packed(&mut reused));
            let mut fresh = Vec::new();
            for b in &mut reused {
                b.rewrite_wide(c_in, tiles);
                fresh.push(PackedB::wide_unwritten(c_in, tiles));
            }
            for packed in [&mut reused, &mut fresh] {
                transform_input(&band, &image, windows, Target::Packed(packed));
                let wanted = f32s.chunks_exact(c_in * tiles);
                for (xi, (b, v)) in packed.iter().zip(wanted).enumerate() {
                    let want = PackedB::from_rows_wide(Matrix::F32(v), c_in, tiles, tiles);
                    assert_eq!(b.words(), want.words(), "{c_in} {h}x{w}: matrix {xi}");
                    assert!(b.words().iter().any(|w| *w != 0), "real values");
                }
            }
        }
    }

    /// The path is taken only where it pays: 3×3 at stride 1, large images,
    /// kernels whose transform stays small.
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
        for precision in [Precision::F32, Precision::Bf16] {
            let wide = dims(1280, 1280, 32, 3);
            assert!(applies(&wide, g, precision), "SD's 32x32 level");
            let wider = dims(2560, 1280, 32, 3);
            assert!(!applies(&wider, g, precision), "transform over the cap");
        }
        let applies = |d: &Dims, g| applies(d, g, Precision::Bf16);
        assert!(applies(&dims(128, 128, 512, 3), g));
        assert!(applies(&dims(512, 512, 64, 3), g));
        assert!(applies(&dims(320, 320, 32, 3), g));
        assert!(!applies(&dims(320, 320, 16, 3), g), "64 tiles");
        assert!(!applies(&dims(128, 128, 512, 1), g));
        assert!(!applies(
            &dims(128, 128, 512, 3),
            ConvGeometry { stride: 2, ..g }
        ));
        assert!(!applies(
            &dims(128, 128, 512, 3),
            ConvGeometry { dilation: 2, ..g }
        ));
    }
}
