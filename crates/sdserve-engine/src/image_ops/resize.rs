//! Image resizing equal to Pillow's `Image.resize` for 8-bit images, since
//! diffusers (`VaeImageProcessor.resize`, Lanczos by default) and A1111 resize
//! init images and masks with Pillow: a different kernel or rounding would move
//! every pixel of an img2img result.
//!
//! Pillow's convolution resampler (`Resample.c`): a separable two-pass filter,
//! horizontal first (over only the rows the vertical pass reads), each output
//! pixel a window of input pixels weighted by the filter stretched by the
//! downscale factor, weights normalised, then rounded to 22-bit fixed point and
//! accumulated in integers; the intermediate image is 8-bit. Nearest is an
//! affine pick of the pixel under each output pixel's centre.

/// Resampling filters, by Pillow's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Nearest,
    Bilinear,
    Lanczos,
}

/// Fixed-point precision of Pillow's 8-bit resampler: 32 - 8 - 2 bits.
const PRECISION_BITS: u32 = 22;

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Bilinear => 1.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Resizes `pixels` (`width x height`, `channels` interleaved 8-bit values per
/// pixel, row-major) to `out_width x out_height` as Pillow does.
pub fn resize(
    pixels: &[u8],
    (width, height): (usize, usize),
    channels: usize,
    (out_width, out_height): (usize, usize),
    filter: Filter,
) -> Vec<u8> {
    debug_assert_eq!(pixels.len(), width * height * channels);
    if (width, height) == (out_width, out_height) {
        return pixels.to_vec();
    }
    if width == 0 || height == 0 || out_width == 0 || out_height == 0 {
        return vec![0; out_width * out_height * channels];
    }
    if filter == Filter::Nearest {
        return nearest(pixels, (width, height), channels, (out_width, out_height));
    }
    let horizontal = Coefficients::new(width, out_width, filter);
    let vertical = Coefficients::new(height, out_height, filter);
    let (first_row, last_row) = vertical.span();
    let (source, rows_offset, source_width) = if out_width != width {
        // Horizontal pass over the rows the vertical pass reads.
        let rows = last_row - first_row;
        let mut temp = vec![0u8; out_width * rows * channels];
        for y in 0..rows {
            let row = &pixels[(y + first_row) * width * channels..][..width * channels];
            let out = &mut temp[y * out_width * channels..][..out_width * channels];
            for (x, px) in out.chunks_exact_mut(channels).enumerate() {
                let (start, weights) = horizontal.window(x);
                for (c, value) in px.iter_mut().enumerate() {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (k, w) in weights.iter().enumerate() {
                        acc += row[(start + k) * channels + c] as i64 * *w as i64;
                    }
                    *value = clip8(acc);
                }
            }
        }
        (temp, first_row, out_width)
    } else {
        (pixels.to_vec(), 0, width)
    };
    if out_height == height {
        return source;
    }
    let mut out = vec![0u8; out_width * out_height * channels];
    let stride = source_width * channels;
    for y in 0..out_height {
        let (start, weights) = vertical.window(y);
        let start = start - rows_offset;
        let out_row = &mut out[y * stride..][..stride];
        for (i, value) in out_row.iter_mut().enumerate() {
            let mut acc: i64 = 1 << (PRECISION_BITS - 1);
            for (k, w) in weights.iter().enumerate() {
                acc += source[(start + k) * stride + i] as i64 * *w as i64;
            }
            *value = clip8(acc);
        }
    }
    out
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's NEAREST: the input pixel under each output pixel's centre.
fn nearest(
    pixels: &[u8],
    (width, height): (usize, usize),
    channels: usize,
    (out_width, out_height): (usize, usize),
) -> Vec<u8> {
    // Pillow's ImagingScaleAffine: the source position starts at half a
    // step and accumulates the step in f64, so positions that land exactly
    // on a pixel boundary round as that sum does, not as (i + 0.5) * step.
    let positions = |n_in: usize, n_out: usize| -> Vec<usize> {
        let step = n_in as f64 / n_out as f64;
        let mut position = step * 0.5;
        (0..n_out)
            .map(|_| {
                let index = (position as usize).min(n_in - 1);
                position += step;
                index
            })
            .collect()
    };
    let columns = positions(width, out_width);
    let rows = positions(height, out_height);
    let mut out = Vec::with_capacity(out_width * out_height * channels);
    for &sy in &rows {
        let row = &pixels[sy * width * channels..][..width * channels];
        for &sx in &columns {
            out.extend_from_slice(&row[sx * channels..][..channels]);
        }
    }
    out
}

/// Per output index: the first input index and the fixed-point weights.
struct Coefficients {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl Coefficients {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the whole input range.
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter.support() * filter_scale;
        let mut starts = Vec::with_capacity(out_size);
        let mut weights = Vec::with_capacity(out_size);
        for i in 0..out_size {
            let center = (i as f64 + 0.5) * scale;
            let inv = 1.0 / filter_scale;
            let min = ((center - support + 0.5) as i64).max(0) as usize;
            let max = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let count = max.saturating_sub(min);
            let raw: Vec<f64> = (0..count)
                .map(|x| filter.weight(((x + min) as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let scaled = w * (1u32 << PRECISION_BITS) as f64;
                    if w < 0.0 {
                        (scaled - 0.5) as i32
                    } else {
                        (scaled + 0.5) as i32
                    }
                })
                .collect();
            starts.push(min);
            weights.push(fixed);
        }
        Self { starts, weights }
    }

    fn window(&self, i: usize) -> (usize, &[i32]) {
        (self.starts[i], &self.weights[i])
    }

    /// First input index used and one past the last.
    fn span(&self) -> (usize, usize) {
        let first = self.starts.first().copied().unwrap_or(0);
        let last = self
            .starts
            .iter()
            .zip(&self.weights)
            .map(|(s, w)| s + w.len())
            .max()
            .unwrap_or(first);
        (first, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_a_copy_and_constant_images_stay_constant() {
        let px: Vec<u8> = (0..4 * 3 * 3).map(|v| v as u8).collect();
        assert_eq!(resize(&px, (4, 3), 3, (4, 3), Filter::Lanczos), px);
        let flat = vec![77u8; 13 * 9];
        for filter in [Filter::Nearest, Filter::Bilinear, Filter::Lanczos] {
            let out = resize(&flat, (13, 9), 1, (40, 5), filter);
            assert_eq!(out.len(), 200);
            assert!(out.iter().all(|v| *v == 77), "{filter:?}");
        }
    }

    #[test]
    fn nearest_accumulates_positions_as_pillow() {
        // Pillow: Image.fromarray(arange(64).reshape(1, 64)).resize((96, 1), NEAREST).
        let ramp: Vec<u8> = (0..64).collect();
        let out = resize(&ramp, (64, 1), 1, (96, 1), Filter::Nearest);
        let picked: Vec<u8> = [3, 4, 5, 16, 94, 95].iter().map(|&i| out[i]).collect();
        assert_eq!(picked, [2, 2, 3, 10, 62, 63]);
    }

    #[test]
    fn nearest_doubles_each_pixel() {
        let px = vec![10u8, 20, 30, 40];
        let out = resize(&px, (2, 2), 1, (4, 4), Filter::Nearest);
        assert_eq!(&out[..8], &[10, 10, 20, 20, 10, 10, 20, 20]);
    }
}
