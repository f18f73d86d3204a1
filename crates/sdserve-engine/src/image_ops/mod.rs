//! Pixel operations on 8-bit images that must equal Pillow's, because the
//! references (diffusers, A1111) prepare their inputs with Pillow: resizing
//! and the RGB-to-gray conversion of masks; and A1111's mask blur and
//! overlay, which put the original pixels back outside an inpainting mask. Plain byte buffers, no tensors, so
//! the server can use them for A1111's resize modes too.

mod blur;
mod resize;

pub use blur::gaussian_blur;
pub use resize::{resize, Filter};

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
