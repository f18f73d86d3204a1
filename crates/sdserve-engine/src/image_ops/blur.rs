//! Gaussian blur of 8-bit masks as OpenCV's `GaussianBlur` computes it for
//! A1111's `mask_blur`: a separable kernel of `2 * int(2.5 * sigma + 0.5) + 1`
//! taps, reflect-101 borders. OpenCV rounds its 8-bit kernels to fixed point;
//! this runs in f64 and rounds once, so values may differ from OpenCV's by 1.

/// The normalised 1-D Gaussian kernel A1111 asks OpenCV for.
fn kernel(sigma: f64) -> Vec<f64> {
    let radius = (2.5 * sigma + 0.5) as usize;
    let weights: Vec<f64> = (0..=2 * radius)
        .map(|i| {
            let x = i as f64 - radius as f64;
            (-(x * x) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / total).collect()
}

/// Reflect-101 (`dcb|abcd|cba`) index into `0..n`.
fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

/// Blurs a `width x height` single-channel image along x by `sigma_x`, then
/// along y by `sigma_y` (A1111 blurs the two axes in two passes; 0 skips one).
pub fn gaussian_blur(
    luma: &[u8],
    (width, height): (usize, usize),
    sigma_x: f64,
    sigma_y: f64,
) -> Vec<u8> {
    let mut out = luma.to_vec();
    if sigma_x > 0.0 && width > 0 {
        let k = kernel(sigma_x);
        let r = (k.len() / 2) as i64;
        let src = out.clone();
        for y in 0..height {
            let row = &src[y * width..][..width];
            for x in 0..width {
                let v: f64 = k
                    .iter()
                    .enumerate()
                    .map(|(j, w)| w * row[reflect(x as i64 + j as i64 - r, width)] as f64)
                    .sum();
                out[y * width + x] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    if sigma_y > 0.0 && height > 0 {
        let k = kernel(sigma_y);
        let r = (k.len() / 2) as i64;
        let src = out.clone();
        for y in 0..height {
            for x in 0..width {
                let v: f64 = k
                    .iter()
                    .enumerate()
                    .map(|(j, w)| {
                        w * src[reflect(y as i64 + j as i64 - r, height) * width + x] as f64
                    })
                    .sum();
                out[y * width + x] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_sizes_follow_a1111_and_sum_to_one() {
        assert_eq!(kernel(4.0).len(), 2 * 10 + 1);
        assert_eq!(kernel(1.0).len(), 2 * 3 + 1);
        assert!((kernel(4.0).iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_step_edge_becomes_a_symmetric_ramp_and_flat_areas_stay() {
        // 16 black columns then 16 white, blurred along x only.
        let row: Vec<u8> = (0..32).map(|x| if x < 16 { 0 } else { 255 }).collect();
        let image: Vec<u8> = row.iter().copied().cycle().take(32 * 3).collect();
        let out = gaussian_blur(&image, (32, 3), 2.0, 0.0);
        assert_eq!(out[0], 0);
        assert_eq!(out[31], 255);
        assert!(out[15] > 0 && out[15] < 128 && out[16] > 128 && out[16] < 255);
        assert_eq!(out[15] as u32 + out[16] as u32, 255);
        // Rows are blurred independently along x; y untouched.
        assert_eq!(&out[..32], &out[32..64]);
        assert_eq!(gaussian_blur(&image, (32, 3), 0.0, 0.0), image);
    }

    #[test]
    fn reflect_101_mirrors_without_repeating_the_edge() {
        let idx: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }
}
