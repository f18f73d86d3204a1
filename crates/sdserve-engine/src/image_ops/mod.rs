//! Pixel operations on 8-bit images that must equal Pillow's, because the
//! references (diffusers, A1111) prepare their inputs with Pillow: resizing
//! and the RGB-to-gray conversion of masks; and A1111's mask blur and
//! overlay, which put the original pixels back outside an inpainting mask. Plain byte buffers, no tensors, so
//! the server can use them for A1111's resize modes too.

mod blur;
mod resize;

pub use blur::gaussian_blur;
pub use resize::{resize, Filter};

/// A1111's img2img resize modes 0-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    /// Stretch to the target size.
    Just,
    /// Cover the target, cropping the overflow around the centre.
    CropAndResize,
    /// Fit inside the target, filling the bands from the edges.
    ResizeAndFill,
}

/// An 8-bit single-channel image (an inpainting mask), row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage {
    pub width: usize,
    pub height: usize,
    pub luma: Vec<u8>,
}

impl GrayImage {
    /// Pillow's `convert("L")` of an RGB image.
    pub fn from_rgb(image: &crate::image_input::DecodedImage) -> Self {
        Self {
            width: image.width,
            height: image.height,
            luma: rgb_to_luma(&image.rgb),
        }
    }
}

/// Pillow's `convert("L")` of 8-bit RGB: ITU-R 601-2 luma in 16-bit fixed point.
pub fn rgb_to_luma(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| {
            let l = p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000;
            (l >> 16) as u8
        })
        .collect()
}

/// A1111's `apply_overlay`: the original image over the generated one, its
/// alpha `255 - mask` (so where the mask is 0 the original comes back exactly
/// and where it is 255 the generated pixel stays), rounded to 8 bits.
pub fn overlay(generated: &mut [u8], original: &[u8], mask: &[u8]) {
    for ((g, o), m) in generated
        .chunks_exact_mut(3)
        .zip(original.chunks_exact(3))
        .zip(mask)
    {
        let keep = 255 - *m as u32;
        for (gv, ov) in g.iter_mut().zip(o) {
            *gv = ((*ov as u32 * keep + *gv as u32 * (255 - keep) + 127) / 255) as u8;
        }
    }
}

/// A1111's `images.resize_image` on 8-bit pixels (Lanczos, as its default
/// upscaler): just resize, crop and resize (cover, centred crop), or resize
/// and fill (contain, the empty bands repeating the nearest edge row or column).
pub fn fit(
    pixels: &[u8],
    (w, h): (usize, usize),
    channels: usize,
    (width, height): (usize, usize),
    mode: ResizeMode,
) -> Vec<u8> {
    let lanczos = Filter::Lanczos;
    if mode == ResizeMode::Just || w == 0 || h == 0 {
        return resize(pixels, (w, h), channels, (width, height), lanczos);
    }
    // Target wider than the source (ratio > src_ratio), compared exactly.
    let wider = width * h > w * height;
    let cover = mode == ResizeMode::CropAndResize;
    let (src_w, src_h) = if wider == cover {
        (width, (h * width / w).max(1))
    } else {
        ((w * height / h).max(1), height)
    };
    let resized = resize(pixels, (w, h), channels, (src_w, src_h), lanczos);
    // Paste centred at (width/2 - src_w/2, height/2 - src_h/2), as PIL's paste clips.
    let left = (width / 2) as i64 - (src_w / 2) as i64;
    let top = (height / 2) as i64 - (src_h / 2) as i64;
    let mut out = vec![0u8; width * height * channels];
    for y in 0..height {
        for x in 0..width {
            let (mut sx, mut sy) = (x as i64 - left, y as i64 - top);
            if mode == ResizeMode::ResizeAndFill {
                // The empty bands repeat the nearest edge row or column.
                sx = sx.clamp(0, src_w as i64 - 1);
                sy = sy.clamp(0, src_h as i64 - 1);
            }
            if (0..src_w as i64).contains(&sx) && (0..src_h as i64).contains(&sy) {
                let from = (sy as usize * src_w + sx as usize) * channels;
                let to = (y * width + x) * channels;
                out[to..to + channels].copy_from_slice(&resized[from..from + channels]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn gray_pixels_keep_their_value_and_primaries_weigh_as_pillow() {
        let gray: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v]).collect();
        assert_eq!(super::rgb_to_luma(&gray), (0..=255u8).collect::<Vec<_>>());
        assert_eq!(
            super::rgb_to_luma(&[255, 0, 0, 0, 255, 0, 0, 0, 255]),
            [76, 150, 29]
        );
    }

    #[test]
    fn overlay_keeps_the_original_where_the_mask_is_off() {
        let mut generated = vec![200u8; 9];
        let original = vec![10u8; 9];
        super::overlay(&mut generated, &original, &[0, 255, 128]);
        assert_eq!(&generated[..3], &[10; 3]);
        assert_eq!(&generated[3..6], &[200; 3]);
        // Half on: (10 * 127 + 200 * 128 + 127) / 255.
        assert_eq!(generated[6], 105);
    }
}
