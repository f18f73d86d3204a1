//! Packing an operand into panels of bf16 pairs along `k`: line `l` of a
//! panel (a row of A, a column of B), pair `p`, is one `u32` holding the
//! line's elements `2p` (low half) and `2p + 1` (high half, 0 past `k`), the
//! panel's lines side by side for each pair. Lines past the matrix are 0.
//!
//! Packing runs once per product, so it must stay a small part of it: f32
//! sources convert 32 values per instruction (`vcvtne2ps2bf16`, rounding to
//! nearest even like `half`'s scalar conversion of the tails).

use half::bf16;
use rayon::prelude::*;

use super::{Matrix, Order};

/// Where a line's elements lie in the source (row stride `ld`).
#[derive(Debug, Clone, Copy)]
pub(super) enum Lines {
    /// Line `l` is source row `l`: element `(l, kk)` at `l·ld + kk` (A, or
    /// B given transposed).
    AcrossRows,
    /// Line `l` is source column `l`: element `(l, kk)` at `kk·ld + l` (B
    /// given as is).
    AlongRows,
}

/// The sizes of an operand to pack.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    /// Rows of A or columns of B.
    pub lines: usize,
    /// Elements per line.
    pub k: usize,
    /// The source's row stride.
    pub ld: usize,
    /// Lines per panel.
    pub width: usize,
    /// Pairs per line in a panel, `⌈k/2⌉` or more (zeros after).
    pub padded_pairs: usize,
}

/// `lines × k` (in the source's layout `layout`) packed in panels of
/// `width` lines, each panel's pairs in `order`.
pub(super) fn pack(src: Matrix, shape: Shape, layout: Lines, order: Order) -> Vec<u32> {
    let Shape {
        lines,
        k,
        ld,
        width,
        padded_pairs,
    } = shape;
    let pairs = k.div_ceil(2);
    let panel_len = padded_pairs * width;
    let mut data = vec![0u32; lines.div_ceil(width) * panel_len];
    if pairs == 0 || lines == 0 {
        return data;
    }
    let simd = super::available();
    data.par_chunks_mut(panel_len).enumerate().for_each_init(
        Vec::new,
        |line_pairs: &mut Vec<u32>, (panel, out)| {
            let first = panel * width;
            let count = width.min(lines - first);
            match layout {
                Lines::AcrossRows => {
                    // Up to 16 lines converted side by side, then placed.
                    line_pairs.resize(GROUP * pairs, 0);
                    for g0 in (0..count).step_by(GROUP) {
                        let lines_here = GROUP.min(count - g0);
                        for (l, dst) in line_pairs.chunks_exact_mut(pairs).enumerate() {
                            if l == lines_here {
                                break;
                            }
                            let start = (first + g0 + l) * ld;
                            match src {
                                Matrix::F32(s) => f32_pairs(&s[start..start + k], dst, simd),
                                Matrix::Bf16(s) => bf16_pairs(&s[start..start + k], dst),
                            }
                        }
                        let group = &line_pairs[..lines_here * pairs];
                        match order {
                            Order::PairMajor => transpose_lines(group, pairs, g0, width, out, simd),
                            Order::Blocks => {
                                for (l, run) in group.chunks_exact(pairs).enumerate() {
                                    place_line(run, g0 + l, width, out);
                                }
                            }
                        }
                    }
                }
                Lines::AlongRows => {
                    line_pairs.resize(count, 0);
                    for p in 0..pairs {
                        let r0 = 2 * p * ld + first;
                        let r1 = (2 * p + 1 < k).then_some(r0 + ld);
                        let dst = match order {
                            Order::PairMajor => &mut out[p * width..p * width + count],
                            Order::Blocks => &mut line_pairs[..],
                        };
                        match src {
                            Matrix::F32(s) => f32_interleave(
                                &s[r0..r0 + count],
                                r1.map(|r| &s[r..r + count]),
                                dst,
                                simd,
                            ),
                            Matrix::Bf16(s) => bf16_interleave(
                                &s[r0..r0 + count],
                                r1.map(|r| &s[r..r + count]),
                                dst,
                            ),
                        }
                        if let Order::Blocks = order {
                            for (l, pair) in line_pairs.iter().enumerate() {
                                out[blocks_index(p, l, width)] = *pair;
                            }
                        }
                    }
                }
            }
        },
    );
    data
}

/// Where pair `p` of line `l` lies in an [`Order::Blocks`] panel.
fn blocks_index(p: usize, l: usize, width: usize) -> usize {
    let block = super::TILE_BLOCK_PAIRS;
    ((p / block) * width + l) * block + p % block
}

/// Lines converted together before placing: one 16 × 16 register transpose.
const GROUP: usize = 16;

/// One line's pairs into its place in an [`Order::Blocks`] panel.
fn place_line(pairs: &[u32], l: usize, width: usize, out: &mut [u32]) {
    let block = super::TILE_BLOCK_PAIRS;
    for (b, run) in pairs.chunks(block).enumerate() {
        let start = blocks_index(b * block, l, width);
        out[start..start + run.len()].copy_from_slice(run);
    }
}

/// Lines `g0..` of an [`Order::PairMajor`] panel from `group` (one run of
/// `pairs` per line, up to [`GROUP`] lines): pair `p` of line `g0 + l` to
/// `out[p·width + g0 + l]`. A transpose; by 16 × 16 blocks in registers
/// where AVX-512 is there, the scattered stores of the plain loop being
/// most of the packing's time.
fn transpose_lines(
    group: &[u32],
    pairs: usize,
    g0: usize,
    width: usize,
    out: &mut [u32],
    simd: bool,
) {
    let lines = group.len() / pairs.max(1);
    assert!(
        lines <= GROUP && g0 + lines <= width && out.len() >= pairs * width,
        "transpose_lines: group does not fit the panel"
    );
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is `available()` (AVX-512F); the bounds are
        // checked above.
        unsafe { x86::transpose_lines(group, pairs, g0, width, out) };
        return;
    }
    let _ = simd;
    for (l, run) in group.chunks_exact(pairs).enumerate() {
        for (p, pair) in run.iter().enumerate() {
            out[p * width + g0 + l] = *pair;
        }
    }
}

/// Little-endian f32 bytes (a weight file's) as bf16, rounded to nearest
/// even, on every thread: `--dtype bf16` loads of f32 files convert without
/// an f32 copy in between.
pub(crate) fn bf16_from_f32_bytes(bytes: &[u8]) -> Vec<bf16> {
    const CHUNK: usize = 1 << 16;
    let mut out = vec![bf16::ZERO; bytes.len() / 4];
    let simd = super::available();
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(4 * CHUNK))
        .for_each(|(out, bytes)| {
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: the kernel is available; `bytes` holds 4 bytes per
                // element of `out`.
                done = unsafe { x86::bf16_from_f32_bytes(bytes, out) };
            }
            let _ = simd;
            for (value, le) in out.iter_mut().zip(bytes.chunks_exact(4)).skip(done) {
                *value = bf16::from_f32(f32::from_le_bytes([le[0], le[1], le[2], le[3]]));
            }
        });
    out
}

fn bits(x: f32) -> u32 {
    bf16::from_f32(x).to_bits() as u32
}

/// `out[p]` = the pair `(row[2p], row[2p + 1])`.
fn f32_pairs(row: &[f32], out: &mut [u32], simd: bool) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is `available()`; the function reads and writes
        // within the slices.
        done = unsafe { x86::f32_pairs(row, out) };
    }
    let _ = simd;
    for (p, pair) in out.iter_mut().enumerate().skip(done / 2) {
        let second = row.get(2 * p + 1).map_or(0, |x| bits(*x));
        *pair = bits(row[2 * p]) | (second << 16);
    }
}

/// `out[p]` = the pair `(row[2p], row[2p + 1])`: on little-endian CPUs the
/// row's bytes as they are (the scalar loop took 2.8% of a bf16 UNet
/// profile).
fn bf16_pairs(row: &[bf16], out: &mut [u32]) {
    let whole = (row.len() / 2).min(out.len());
    #[cfg(target_endian = "little")]
    // SAFETY: `whole` pairs are 4·whole bytes within both slices; u32 has
    // no invalid bit patterns and the copy is bytewise.
    unsafe {
        std::ptr::copy_nonoverlapping(
            row.as_ptr() as *const u8,
            out.as_mut_ptr() as *mut u8,
            4 * whole,
        );
    }
    #[cfg(not(target_endian = "little"))]
    for (p, pair) in out.iter_mut().enumerate().take(whole) {
        *pair = row[2 * p].to_bits() as u32 | (row[2 * p + 1].to_bits() as u32) << 16;
    }
    for (p, pair) in out.iter_mut().enumerate().skip(whole) {
        let first = row.get(2 * p).map_or(0, |x| x.to_bits() as u32);
        let second = row.get(2 * p + 1).map_or(0, |x| x.to_bits() as u32);
        *pair = first | (second << 16);
    }
}

/// `out[l]` = the pair `(r0[l], r1[l])` (`r1` 0 when absent).
#[inline(always)]
pub(super) fn f32_interleave(r0: &[f32], r1: Option<&[f32]>, out: &mut [u32], simd: bool) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as in `f32_pairs`.
        done = unsafe { x86::f32_interleave(r0, r1, out) };
    }
    let _ = simd;
    for l in done..out.len() {
        out[l] = bits(r0[l]) | r1.map_or(0, |r| bits(r[l]) << 16);
    }
}

fn bf16_interleave(r0: &[bf16], r1: Option<&[bf16]>, out: &mut [u32]) {
    for (l, pair) in out.iter_mut().enumerate() {
        *pair = r0[l].to_bits() as u32 | r1.map_or(0, |r| (r[l].to_bits() as u32) << 16);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Whole blocks of 32 values of `row` into `out`; returns the values done.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn f32_pairs(row: &[f32], out: &mut [u32]) -> usize {
        let blocks = (row.len() / 32).min(out.len() / 16);
        for b in 0..blocks {
            let lo = _mm512_loadu_ps(row.as_ptr().add(32 * b));
            let hi = _mm512_loadu_ps(row.as_ptr().add(32 * b + 16));
            // Low half from the second operand: the 32 values in order.
            let packed = _mm512_cvtne2ps_pbh(hi, lo);
            let packed = std::mem::transmute::<__m512bh, __m512i>(packed);
            _mm512_storeu_si512(out.as_mut_ptr().add(16 * b) as *mut _, packed);
        }
        32 * blocks
    }

    /// Whole blocks of 32 elements of `bytes` (f32, little-endian, any
    /// alignment) into `out`; returns the elements done.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_from_f32_bytes(bytes: &[u8], out: &mut [half::bf16]) -> usize {
        let blocks = (bytes.len() / 128).min(out.len() / 32);
        for b in 0..blocks {
            let at = bytes.as_ptr().add(128 * b) as *const f32;
            let packed = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(at.add(16)), _mm512_loadu_ps(at));
            let packed = std::mem::transmute::<__m512bh, __m512i>(packed);
            _mm512_storeu_si512(out.as_mut_ptr().add(32 * b) as *mut _, packed);
        }
        32 * blocks
    }

    /// [`super::transpose_lines`] by 16 × 16 blocks: masked loads of up to
    /// 16 pairs of each line, four rounds of shuffles, masked stores of the
    /// lines present.
    ///
    /// # Safety
    /// AVX-512F; `group` holds `lines ≤ 16` runs of `pairs`, `g0 + lines ≤
    /// width` and `out` holds `pairs · width` elements.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_lines(
        group: &[u32],
        pairs: usize,
        g0: usize,
        width: usize,
        out: &mut [u32],
    ) {
        let lines = group.len() / pairs.max(1);
        let line_mask: __mmask16 = ((1u32 << lines) - 1) as __mmask16;
        for p0 in (0..pairs).step_by(16) {
            let here = 16.min(pairs - p0);
            let pair_mask: __mmask16 = ((1u32 << here) - 1) as __mmask16;
            let mut rows = [_mm512_setzero_si512(); 16];
            for (l, row) in rows.iter_mut().enumerate().take(lines) {
                let at = group.as_ptr().add(l * pairs + p0);
                *row = _mm512_maskz_loadu_epi32(pair_mask, at as *const i32);
            }
            let columns = transpose16(rows);
            for (q, column) in columns.iter().enumerate().take(here) {
                let at = out.as_mut_ptr().add((p0 + q) * width + g0);
                _mm512_mask_storeu_epi32(at as *mut i32, line_mask, *column);
            }
        }
    }

    /// The 16 × 16 transpose of 32-bit elements: `out[j]` lane `i` is
    /// `rows[i]` lane `j`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
        // Pairs of rows interleaved by 32 bits, then by 64: each 128-bit
        // lane of u[4a + c] holds column c (+4, +8, +12 by lane) of rows
        // 4a..4a+4.
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_si512(); 16];
        for a in 0..4 {
            let (lo, hi) = (t[4 * a], t[4 * a + 1]);
            let (lo2, hi2) = (t[4 * a + 2], t[4 * a + 3]);
            u[4 * a] = _mm512_unpacklo_epi64(lo, lo2);
            u[4 * a + 1] = _mm512_unpackhi_epi64(lo, lo2);
            u[4 * a + 2] = _mm512_unpacklo_epi64(hi, hi2);
            u[4 * a + 3] = _mm512_unpackhi_epi64(hi, hi2);
        }
        // 128-bit lanes gathered across the four row groups.
        let mut out = [_mm512_setzero_si512(); 16];
        for c in 0..4 {
            let v0 = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]);
            let v1 = _mm512_shuffle_i32x4::<0xdd>(u[c], u[4 + c]);
            let v2 = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
            let v3 = _mm512_shuffle_i32x4::<0xdd>(u[8 + c], u[12 + c]);
            out[c] = _mm512_shuffle_i32x4::<0x88>(v0, v2);
            out[8 + c] = _mm512_shuffle_i32x4::<0xdd>(v0, v2);
            out[4 + c] = _mm512_shuffle_i32x4::<0x88>(v1, v3);
            out[12 + c] = _mm512_shuffle_i32x4::<0xdd>(v1, v3);
        }
        out
    }

    /// Whole blocks of 16 lines of `r0`, `r1` into `out`; returns the lines done.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn f32_interleave(r0: &[f32], r1: Option<&[f32]>, out: &mut [u32]) -> usize {
        let blocks = out.len() / 16;
        // Lane pairs (i, 16 + i): element i of r0 then of r1.
        let order = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        for b in 0..blocks {
            let first = _mm512_loadu_ps(r0.as_ptr().add(16 * b));
            let second = match r1 {
                Some(r1) => _mm512_loadu_ps(r1.as_ptr().add(16 * b)),
                None => _mm512_setzero_ps(),
            };
            let packed = _mm512_cvtne2ps_pbh(second, first);
            let packed = std::mem::transmute::<__m512bh, __m512i>(packed);
            let pairs = _mm512_permutexvar_epi16(order, packed);
            _mm512_storeu_si512(out.as_mut_ptr().add(16 * b) as *mut _, pairs);
        }
        16 * blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector conversion rounds as `half` does (to nearest, ties to
    /// even), tails included, at any byte alignment.
    #[test]
    fn f32_bytes_convert_like_half() {
        let mut values: Vec<f32> = (0..1000)
            .map(|i| ((i as f32) * 0.7312).sin() * 10f32.powi(i % 9 - 4))
            .collect();
        // Ties: exactly halfway between two bf16 values, both parities.
        values.extend([1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), -0.0]);
        values.extend([f32::INFINITY, f32::NEG_INFINITY, f32::MAX, 3.0e38]);
        let mut bytes = vec![0u8];
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let got = bf16_from_f32_bytes(&bytes[1..]);
        assert_eq!(got.len(), values.len());
        for (g, v) in got.iter().zip(&values) {
            assert_eq!(g.to_bits(), bf16::from_f32(*v).to_bits(), "{v}");
        }
        assert!(bf16_from_f32_bytes(&f32::NAN.to_le_bytes())[0].is_nan());
    }

    /// The straightforward packing: pair `p` of line `l` at its place in
    /// its panel, from the element definitions.
    fn reference(src: &[f32], shape: Shape, layout: Lines, order: Order) -> Vec<u32> {
        let pairs = shape.k.div_ceil(2);
        let panel_len = shape.padded_pairs * shape.width;
        let mut out = vec![0u32; shape.lines.div_ceil(shape.width) * panel_len];
        let at = |l: usize, kk: usize| match layout {
            Lines::AcrossRows => src[l * shape.ld + kk],
            Lines::AlongRows => src[kk * shape.ld + l],
        };
        for l in 0..shape.lines {
            for p in 0..pairs {
                let second = if 2 * p + 1 < shape.k {
                    bits(at(l, 2 * p + 1))
                } else {
                    0
                };
                let (panel, line) = (l / shape.width, l % shape.width);
                let place = match order {
                    Order::PairMajor => p * shape.width + line,
                    Order::Blocks => blocks_index(p, line, shape.width),
                };
                out[panel * panel_len + place] = bits(at(l, 2 * p)) | (second << 16);
            }
        }
        out
    }

    /// Every layout, order, panel width and source type against the
    /// straightforward packing, with partial panels, line groups and
    /// blocks of pairs, and odd `k`.
    #[test]
    fn packing_equals_the_straightforward_packing() {
        for &(lines, k) in &[(1usize, 1usize), (13, 7), (40, 33), (70, 64), (37, 65)] {
            for width in [12, 16, 24, 32] {
                for (layout, ld) in [(Lines::AcrossRows, k + 3), (Lines::AlongRows, lines + 2)] {
                    let len = match layout {
                        Lines::AcrossRows => lines * ld,
                        Lines::AlongRows => k * ld,
                    };
                    let values: Vec<f32> = (0..len)
                        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                        .collect();
                    let halves: Vec<bf16> = values.iter().map(|v| bf16::from_f32(*v)).collect();
                    for (order, padded_pairs) in [
                        (Order::PairMajor, k.div_ceil(2)),
                        (Order::Blocks, k.div_ceil(2).div_ceil(16) * 16),
                    ] {
                        let shape = Shape {
                            lines,
                            k,
                            ld,
                            width,
                            padded_pairs,
                        };
                        let want = reference(&values, shape, layout, order);
                        let what = format!("{lines}x{k} width {width} {layout:?} {order:?}");
                        assert_eq!(
                            pack(Matrix::F32(&values), shape, layout, order),
                            want,
                            "{what}"
                        );
                        assert_eq!(
                            pack(Matrix::Bf16(&halves), shape, layout, order),
                            want,
                            "{what}"
                        );
                    }
                }
            }
        }
    }
}
