//! The CPU convolution for f32 NCHW tensors: banded im2col + one gemm per band.
//!
//! Why ours: candle's CPU `conv2d` (0.11) copies the whole input to NHWC on
//! one thread, scatters each im2col tile column by column and scatters the
//! gemm result back pixel by pixel; at the VAE's full resolution those
//! copies, not the arithmetic, took most of the time. Here the output is cut
//! into bands of whole rows. A band's im2col matrix (`c_in·kh·kw` rows, one
//! per input channel and kernel tap, each a shifted copy of input rows, so a
//! memcpy at stride 1) feeds one gemm whose destination is the band's slice
//! of the NCHW output itself (row stride `out_h·out_w`): no transposes, no
//! scatter, and the bias is the gemm's initial value. A 1×1 convolution at
//! stride 1 without padding needs no im2col at all: the input is the matrix.
//!
//! 3×3 convolutions at stride 1 on large images take Winograd instead:
//! [`winograd4`]'s F(4×4, 3×3) in f32 (4× fewer multiplies) where its
//! transformed kernels fit, else [`winograd`]'s F(2×2, 3×3) (2.25×). On
//! AVX2 CPUs without AVX-512 their f32 products take [`panels`], whose
//! kernel side is packed once per convolution rather than per band.
//!
//! Summation order differs from candle's (the gemm blocks `k` differently),
//! so results agree within f32 rounding, which the tests bound.

mod bands;
mod panels;
mod winograd;
mod winograd4;
mod winograd_common;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::bf16_gemm::{multiply, multiply_on_pool, wide_a_panels, Matrix, PackedA, PackedB};
use crate::cpu_kernel::{contiguous_f32, SharedOut};

/// Bytes of one band's scratch (im2col matrix, or Winograd's transformed
/// input and products): large enough for gemm to run at full speed, small
/// enough to stay in the last-level cache.
const BAND_BYTES: usize = 8 << 20;

/// Padding, stride and dilation, the same on both axes (as every SD layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub padding: usize,
    pub stride: usize,
    pub dilation: usize,
}

/// How a convolution's matrix products run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 throughout (the gemm crate).
    F32,
    /// bf16 operands with f32 sums ([`crate::bf16_gemm`]; the caller checks
    /// [`crate::bf16_gemm::available`]): for bf16 models, whose inputs and
    /// weights are bf16 values already.
    Bf16,
}

/// `conv2d(input, weight) + bias` on the CPU for f32 `(b, c_in, h, w)` input,
/// `(c_out, c_in, kh, kw)` weight and `(c_out,)` bias.
#[cfg(test)]
pub fn conv2d_f32(
    input: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    geometry: ConvGeometry,
) -> Result<Tensor> {
    conv2d(input, weight, bias, geometry, Precision::F32)
}

/// `conv2d(input, weight) + bias` on the CPU for f32 `(b, c_in, h, w)` input,
/// `(c_out, c_in, kh, kw)` weight (f32, or bf16 with bf16 products) and f32
/// `(c_out,)` bias, the products run as `precision` says.
pub fn conv2d(
    input: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    geometry: ConvGeometry,
    precision: Precision,
) -> Result<Tensor> {
    if precision == Precision::Bf16 && !crate::bf16_gemm::available() {
        candle_core::bail!("conv2d: bf16 products need AVX512-BF16");
    }
    let input = input.contiguous()?;
    let weight = weight.contiguous()?;
    let bias = bias.contiguous()?;
    input.apply_op3_no_bwd(
        &weight,
        &bias,
        &Conv {
            geometry,
            precision,
        },
    )
}

struct Conv {
    geometry: ConvGeometry,
    precision: Precision,
}

/// A weight matrix (`m × k` f32) as the products take it.
enum Lhs<'a> {
    /// Row-major, for the gemm crate.
    F32 {
        data: &'a [f32],
        m: usize,
        k: usize,
    },
    /// Packed once for [`panels::multiply`].
    Panels {
        data: &'a [f32],
        layout: panels::PanelLayout,
    },
    Bf16(PackedA),
}

impl<'a> Lhs<'a> {
    fn new(data: &'a [f32], m: usize, k: usize, precision: Precision) -> Self {
        match precision {
            Precision::F32 => Self::F32 { data, m, k },
            Precision::Bf16 => {
                Self::Bf16(PackedA::new(Matrix::F32(data), m, k, k, wide_a_panels()))
            }
        }
    }

    /// `C = self · rhs (+ C when accumulate)`, `rhs` being `k × n` (rows `n`
    /// apart) and `C` `m × n` (rows `ldc` apart) at `c`, with the threads
    /// `inner` gives.
    ///
    /// # Safety
    /// `c` must be valid for writes at all of C, which no other thread
    /// touches during the call.
    unsafe fn times(
        &self,
        rhs: &[f32],
        n: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        inner: Parallelism,
    ) {
        match self {
            &Self::F32 { data, m, k } => {
                // SAFETY: `data` is m × k (row stride k), `rhs` k × n (row
                // stride n); C as the caller guarantees.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c,
                        1,
                        ldc as isize,
                        accumulate,
                        data.as_ptr(),
                        1,
                        k as isize,
                        rhs.as_ptr(),
                        1,
                        n as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        inner,
                    );
                }
            }
            &Self::Panels { data, layout } => {
                // SAFETY: a `Panels` matrix exists only where the CPU has
                // the kernel's features (`KernelLayout::for_products`); C as
                // the caller guarantees.
                unsafe { panels::multiply(data, layout, rhs, n, c, ldc, accumulate, inner) };
            }
            Self::Bf16(a) => {
                let k = rhs.len() / n.max(1);
                let b = PackedB::from_rows_wide(Matrix::F32(rhs), k, n, n);
                // SAFETY: as the caller guarantees.
                unsafe { times_packed(a, &b, c, ldc, accumulate, inner) };
            }
        }
    }
}

/// `C = a · b (+ C when accumulate)` in bf16, C at `c` (rows `ldc` apart),
/// with the threads `inner` gives.
///
/// # Safety
/// As [`Lhs::times`]. (A [`PackedA`] for a convolution exists only where
/// the kernel is available: `conv2d` checks.)
unsafe fn times_packed(
    a: &PackedA,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    inner: Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if matches!(inner, Parallelism::None) {
            multiply(a, b, 0..a.panels(), 0..b.panels(), c, ldc, 1.0, accumulate);
        } else {
            multiply_on_pool(a, b, c, ldc, 1.0, accumulate);
        }
    }
}

/// Bytes a 3×3, stride-1 convolution from `c_in` to `c_out` channels with
/// an `out_w × out_h` output holds beside its input and output while it
/// runs on the CPU: its Winograd kernels, 0 where it keeps im2col (whose
/// per-thread bands the plan's slack covers). The memory plan adds the
/// largest to a peak.
pub(crate) fn workspace_bytes(
    c_in: usize,
    c_out: usize,
    out_w: usize,
    out_h: usize,
    precision: Precision,
) -> u64 {
    let d = Dims {
        batch: 1,
        c_in,
        h: out_h,
        w: out_w,
        c_out,
        kh: 3,
        kw: 3,
        out_h,
        out_w,
    };
    let g = ConvGeometry {
        padding: 1,
        stride: 1,
        dilation: 1,
    };
    if winograd4::applies(&d, g) {
        winograd4::kernel_bytes(&d) as u64
    } else if winograd::applies(&d, g, precision) {
        winograd::kernel_bytes(&d, precision) as u64
    } else {
        0
    }
}

/// Sizes of one convolution, checked against each other.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    out_h: usize,
    out_w: usize,
}

impl Dims {
    fn new(input: &Layout, weight: &Layout, bias: &Layout, g: ConvGeometry) -> Result<Self> {
        let (batch, c_in, h, w) = input.shape().dims4()?;
        let (c_out, wc_in, kh, kw) = weight.shape().dims4()?;
        if wc_in != c_in || bias.shape().elem_count() != c_out || g.stride == 0 {
            candle_core::bail!(
                "conv2d: input {:?}, weight {:?}, bias {:?}, stride {}",
                input.shape(),
                weight.shape(),
                bias.shape(),
                g.stride
            );
        }
        let out = |size: usize, k: usize| -> Result<usize> {
            let span = g.dilation * (k.max(1) - 1) + 1;
            let padded = size + 2 * g.padding;
            if padded < span {
                candle_core::bail!("conv2d: kernel {k} larger than padded input {padded}");
            }
            Ok((padded - span) / g.stride + 1)
        };
        Ok(Self {
            batch,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            out_h: out(h, kh)?,
            out_w: out(w, kw)?,
        })
    }

    /// Rows of the im2col matrix (columns of the weight matrix).
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "sdserve-conv2d"
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
        let input = contiguous_f32(self.name(), s1, l1)?;
        // bf16 weights are packed as they are for bf16 products (no f32 copy).
        let weight = match s2 {
            CpuStorage::BF16(_) if self.precision == Precision::Bf16 => {
                Matrix::Bf16(crate::cpu_kernel::contiguous_bf16(self.name(), s2, l2)?)
            }
            _ => Matrix::F32(contiguous_f32(self.name(), s2, l2)?),
        };
        let bias = contiguous_f32(self.name(), s3, l3)?;
        let d = Dims::new(l1, l2, l3, self.geometry)?;
        let out = run(input, weight, bias, d, self.geometry, self.precision);
        let shape = Shape::from((d.batch, d.c_out, d.out_h, d.out_w));
        Ok((CpuStorage::F32(out), shape))
    }
}

/// The convolution proper, on slices of the sizes `d` gives.
fn run(
    input: &[f32],
    weight: Matrix,
    bias: &[f32],
    d: Dims,
    g: ConvGeometry,
    precision: Precision,
) -> Vec<f32> {
    let mut out = vec![0f32; d.batch * d.c_out * d.out_h * d.out_w];
    if out.is_empty() {
        return out;
    }
    let four = winograd4::applies(&d, g);
    if four || winograd::applies(&d, g, precision) {
        // Both kernel transforms work in f32 (and F(4×4) multiplies in f32
        // whatever the weights' dtype).
        let widened: Vec<f32>;
        let weight = match weight {
            Matrix::F32(w) => w,
            Matrix::Bf16(w) => {
                widened = w.iter().map(|v| v.to_f32()).collect();
                &widened
            }
        };
        if four {
            winograd4::run(input, weight, bias, d, g.padding, &mut out, BAND_BYTES);
        } else {
            winograd::run(
                input, weight, bias, d, g.padding, &mut out, BAND_BYTES, precision,
            );
        }
    } else {
        let weight = match weight {
            Matrix::F32(w) => Lhs::new(w, d.c_out, d.k(), precision),
            Matrix::Bf16(w) => Lhs::Bf16(PackedA::new(
                Matrix::Bf16(w),
                d.c_out,
                d.k(),
                d.k(),
                wide_a_panels(),
            )),
        };
        im2col_gemm(input, &weight, bias, d, g, &mut out);
    }
    out
}

/// Runs `task(scratch, index, parallelism)` for each index below `tasks`.
/// Many tasks: one thread each, no threads inside their gemms. Few: one
/// after another, each gemm using every thread. `S` is per-thread scratch.
fn run_tasks<S: Default>(tasks: usize, task: impl Fn(&mut S, usize, Parallelism) + Send + Sync) {
    let threads = candle_core::utils::get_num_threads().max(1);
    if tasks >= 2 * threads {
        (0..tasks)
            .into_par_iter()
            .for_each_init(S::default, |scratch, index| {
                task(scratch, index, Parallelism::None)
            });
    } else {
        let inner = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        let mut scratch = S::default();
        (0..tasks).for_each(|index| task(&mut scratch, index, inner));
    }
}

/// Banded im2col, one gemm per band, into `out`.
fn im2col_gemm(
    input: &[f32],
    weight: &Lhs,
    bias: &[f32],
    d: Dims,
    g: ConvGeometry,
    out: &mut [f32],
) {
    let plane = d.out_h * d.out_w;
    let k = d.k();
    let direct = d.kh == 1 && d.kw == 1 && g.stride == 1 && g.padding == 0;
    let rows = if direct {
        d.out_h
    } else {
        (BAND_BYTES / (4 * k.max(1)) / d.out_w.max(1)).clamp(1, d.out_h)
    };
    let bands = d.out_h.div_ceil(rows);
    let tasks = d.batch * bands;
    let dst = SharedOut::new(out);
    run_tasks(tasks, |scratch: &mut Vec<f32>, index, inner| {
        let (b, band) = (index / bands, index % bands);
        let y0 = band * rows;
        let y1 = (y0 + rows).min(d.out_h);
        let n = (y1 - y0) * d.out_w;
        let image = &input[b * d.c_in * d.h * d.w..(b + 1) * d.c_in * d.h * d.w];
        let rhs: &[f32] = if direct {
            image
        } else {
            scratch.resize(k * n, 0.0);
            im2col(image, d, g, y0..y1, scratch);
            scratch
        };
        let first = b * d.c_out * plane + y0 * d.out_w;
        // SAFETY: the band's columns [first, first + n) of each of the c_out
        // rows (stride `plane`) lie inside `out` and belong to this task only;
        // `rhs` is k × n (row stride n).
        unsafe {
            let base = dst.at(first);
            for (c, value) in bias.iter().enumerate() {
                std::slice::from_raw_parts_mut(base.add(c * plane), n).fill(*value);
            }
            weight.times(&rhs[..k * n], n, base, plane, true, inner);
        }
    });
}

/// The im2col rows of output rows `ys` of one image: row `(c, i, j)` holds,
/// for each output pixel of the band, the input at tap `(i, j)` of channel
/// `c` (zero in the padding).
fn im2col(image: &[f32], d: Dims, g: ConvGeometry, ys: std::ops::Range<usize>, col: &mut [f32]) {
    let n = ys.len() * d.out_w;
    let mut rows = col.chunks_exact_mut(n);
    for c in 0..d.c_in {
        let channel = &image[c * d.h * d.w..(c + 1) * d.h * d.w];
        for i in 0..d.kh {
            for j in 0..d.kw {
                let Some(row) = rows.next() else { return };
                let dx = (j * g.dilation) as isize - g.padding as isize;
                // Output columns whose input column lies inside the image.
                let first_x = first_inside(dx, g.stride);
                let end_x = end_inside(dx, g.stride, d.w).min(d.out_w).max(first_x);
                for (line, y) in row.chunks_exact_mut(d.out_w).zip(ys.clone()) {
                    let iy = (y * g.stride + i * g.dilation) as isize - g.padding as isize;
                    if iy < 0 || iy >= d.h as isize || first_x >= end_x {
                        line.fill(0.0);
                        continue;
                    }
                    let src = &channel[iy as usize * d.w..(iy as usize + 1) * d.w];
                    line[..first_x].fill(0.0);
                    line[end_x..].fill(0.0);
                    let start = (first_x * g.stride) as isize + dx;
                    if g.stride == 1 {
                        let start = start as usize;
                        line[first_x..end_x].copy_from_slice(&src[start..start + end_x - first_x]);
                    } else {
                        for (k, value) in line[first_x..end_x].iter_mut().enumerate() {
                            *value = src[start as usize + k * g.stride];
                        }
                    }
                }
            }
        }
    }
}

/// First output column `x` with `x * stride + dx >= 0`.
fn first_inside(dx: isize, stride: usize) -> usize {
    if dx >= 0 {
        0
    } else {
        (-dx as usize).div_ceil(stride)
    }
}

/// One past the last output column with `x * stride + dx < width`.
fn end_inside(dx: isize, stride: usize, width: usize) -> usize {
    let limit = width as isize - dx; // x * stride < limit
    if limit <= 0 {
        0
    } else {
        (limit as usize).div_ceil(stride)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Against candle's own conv2d (+ bias) on shapes covering every path:
    /// 3×3 at stride 1 and 2, with and without padding, 1×1 direct and
    /// strided, dilation, batches, bands cut mid-image, odd sizes.
    #[test]
    fn equals_candles_conv2d_within_f32_rounding() {
        let dev = Device::Cpu;
        let cases = [
            // (batch, c_in, h, w, c_out, k, padding, stride, dilation)
            (1, 3, 17, 23, 8, 3, 1, 1, 1),
            (2, 16, 12, 9, 5, 3, 1, 1, 1),
            (1, 8, 16, 16, 8, 3, 0, 2, 1),
            (2, 6, 11, 13, 4, 3, 1, 2, 1),
            (1, 32, 9, 7, 16, 1, 0, 1, 1),
            (2, 5, 8, 8, 3, 1, 0, 2, 1),
            (1, 4, 10, 12, 6, 3, 2, 1, 2),
            (1, 4, 3, 3, 2, 3, 1, 1, 1),
            // a band smaller than the image: 8 MiB / (4 * 9 * 512) = 455 pixels
            (1, 512, 40, 24, 4, 3, 1, 1, 1),
            // Winograd (at least 256 tiles of 2×2), odd and even edges
            (1, 8, 40, 40, 8, 3, 1, 1, 1),
            (2, 4, 36, 35, 5, 3, 0, 1, 1),
            // F(4×4) (at least 256 tiles of 4×4), bf16 weights included
            (1, 4, 64, 66, 3, 3, 1, 1, 1),
        ];
        let mut precision = vec![Precision::F32];
        if crate::bf16_gemm::available() {
            precision.push(Precision::Bf16);
        }
        for (b, c_in, h, w, c_out, k, padding, stride, dilation) in cases {
            for &precision in &precision {
                let round = |t: Tensor| match precision {
                    Precision::F32 => t,
                    Precision::Bf16 => t
                        .to_dtype(DType::BF16)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap(),
                };
                let x = round(Tensor::randn(0f32, 1.0, (b, c_in, h, w), &dev).unwrap());
                let weight = round(Tensor::randn(0f32, 0.2, (c_out, c_in, k, k), &dev).unwrap());
                let bias = Tensor::randn(0f32, 1.0, c_out, &dev).unwrap();
                let geometry = ConvGeometry {
                    padding,
                    stride,
                    dilation,
                };
                let ours = conv2d(&x, &weight, &bias, geometry, precision).unwrap();
                if precision == Precision::Bf16 {
                    // A bf16 weight tensor is packed as is: the same result.
                    let w16 = weight.to_dtype(DType::BF16).unwrap();
                    let same = conv2d(&x, &w16, &bias, geometry, precision).unwrap();
                    assert_eq!(crate::test_util::max_diff(&same, &ours), 0.0);
                }
                let theirs = x
                    .conv2d(&weight, padding, stride, dilation, 1)
                    .unwrap()
                    .broadcast_add(&bias.reshape((1, c_out, 1, 1)).unwrap())
                    .unwrap();
                assert_eq!(
                    ours.dims(),
                    theirs.dims(),
                    "{b} {c_in} {h} {w} k{k} s{stride}"
                );
                let diff = crate::test_util::max_diff(&ours, &theirs);
                let scale = (c_in * k * k) as f32;
                // bf16 precision are exact on bf16 values except Winograd's
                // transformed input, rounded to bf16 (relative 2^-9 per term).
                let bound = match precision {
                    Precision::F32 => 1e-6 * scale.max(1.0) * 4.0,
                    Precision::Bf16 => 1e-2 * scale.sqrt(),
                };
                assert!(
                    diff < bound,
                    "{precision:?} {b} {c_in} {h} {w} {c_out} k{k} p{padding} s{stride} d{dilation}: {diff}"
                );
            }
        }
    }

    #[test]
    fn a_non_contiguous_input_is_made_contiguous_and_bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 4, 6, 5), &dev).unwrap();
        let transposed = x.transpose(2, 3).unwrap();
        let weight = Tensor::randn(0f32, 1.0, (2, 4, 3, 3), &dev).unwrap();
        let bias = Tensor::zeros(2, DType::F32, &dev).unwrap();
        let g = ConvGeometry {
            padding: 1,
            stride: 1,
            dilation: 1,
        };
        let ours = conv2d_f32(&transposed, &weight, &bias, g).unwrap();
        let theirs = transposed.conv2d(&weight, 1, 1, 1, 1).unwrap();
        let diff = (ours - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap();
        assert!(diff.max(0).unwrap().to_scalar::<f32>().unwrap() < 1e-4);
        let wrong = Tensor::randn(0f32, 1.0, (2, 3, 3, 3), &dev).unwrap();
        assert!(conv2d_f32(&x, &wrong, &bias, g).is_err());
        let tiny = Tensor::randn(0f32, 1.0, (1, 4, 1, 1), &dev).unwrap();
        let no_pad = ConvGeometry { padding: 0, ..g };
        assert!(conv2d_f32(&tiny, &weight, &bias, no_pad).is_err());
    }
}
