//! Images that arrive in requests (init images and masks), shared by every
//! dialect: base64 (with or without a `data:` URL prefix) or raw bytes,
//! decoded only through the engine's bounded decoder, so an upload costs at
//! most the image limits whichever API it came through.

use std::sync::Arc;

use base64::Engine as _;

use crate::engine_api::{image_input, DecodedImage, GrayImage, ImageLimits};
use crate::error::ApiError;
use crate::validation::ValidationError;

fn invalid(field: &'static str, message: String) -> ApiError {
    ValidationError::Invalid { field, message }.into()
}

/// The base64 text of `image`: trimmed of ASCII whitespace, out of its data URL.
pub fn base64_part<'a>(field: &'static str, image: &'a str) -> Result<&'a str, ApiError> {
    let text = image.trim_matches(|c: char| c.is_ascii_whitespace());
    match text.strip_prefix("data:") {
        None => Ok(text),
        Some(rest) => match rest.split_once(',') {
            Some((media, data)) if media.ends_with(";base64") => Ok(data),
            _ => Err(invalid(
                field,
                "a data URL must read data:<type>;base64,<data>".into(),
            )),
        },
    }
}

/// The bytes of a base64 image field (empty text is an error: no image).
pub fn base64_bytes(field: &'static str, image: &str) -> Result<Vec<u8>, ApiError> {
    let b64 = base64_part(field, image)?;
    if b64.is_empty() {
        return Err(invalid(
            field,
            "is empty; expected a base64 PNG or JPEG".into(),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| invalid(field, format!("not valid base64: {e}")))
}

/// Decodes an uploaded PNG or JPEG within the default image limits.
pub fn decode(field: &'static str, bytes: &[u8]) -> Result<DecodedImage, ApiError> {
    image_input::decode_rgb(bytes, &ImageLimits::default())
        .map_err(|error| ApiError::InvalidImage { field, error })
}

/// A base64 init image, decoded.
pub fn decode_base64(field: &'static str, image: &str) -> Result<Arc<DecodedImage>, ApiError> {
    Ok(Arc::new(decode(field, &base64_bytes(field, image)?)?))
}

/// A base64 mask as 8-bit gray (Pillow's `convert("L")` of its RGB).
pub fn decode_base64_mask(field: &'static str, mask: &str) -> Result<Arc<GrayImage>, ApiError> {
    let image = decode(field, &base64_bytes(field, mask)?)?;
    Ok(Arc::new(GrayImage::from_rgb(&image)))
}

/// An image and its alpha channel (`None` when it has none).
pub fn decode_with_alpha(
    field: &'static str,
    bytes: &[u8],
) -> Result<(DecodedImage, Option<Vec<u8>>), ApiError> {
    image_input::decode_rgb_alpha(bytes, &ImageLimits::default())
        .map_err(|error| ApiError::InvalidImage { field, error })
}

/// OpenAI's edit mask: fully transparent pixels (alpha 0) are edited, so they
/// become white; everything else black.
pub fn mask_from_alpha(width: usize, height: usize, alpha: &[u8]) -> GrayImage {
    GrayImage {
        width,
        height,
        luma: alpha
            .iter()
            .map(|a| if *a == 0 { 255 } else { 0 })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_and_plain_base64_give_the_same_bytes() {
        let plain = base64_bytes("image", "aGVsbG8=").unwrap();
        let url = base64_bytes("image", " data:image/png;base64,aGVsbG8=\n").unwrap();
        assert_eq!(plain, b"hello");
        assert_eq!(url, b"hello");
        for bad in ["", "data:image/png,aGVsbG8=", "not base64!"] {
            let err = base64_bytes("init_images", bad).unwrap_err();
            assert!(err.to_string().contains("init_images"), "{bad}: {err}");
        }
    }

    #[test]
    fn only_fully_transparent_pixels_are_edited() {
        let mask = mask_from_alpha(3, 1, &[0, 1, 255]);
        assert_eq!(mask.luma, [255, 0, 0]);
    }
}
