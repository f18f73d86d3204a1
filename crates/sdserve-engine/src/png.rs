//! PNG output with an AUTOMATIC1111-style `parameters` text chunk, so A1111's
//! "PNG Info" tab and image sites read back the settings of an image. Reading
//! untrusted PNGs is `image_input`'s job; the readers here are its thin wrappers.

use crate::error::{EngineError, Result};
use crate::image_input::{self, ImageLimits};
use crate::request::{GenerateRequest, GeneratedImage};

pub use crate::image_input::PARAMETERS_KEY;

/// A1111's infotext: prompt, optional negative prompt, then the settings line.
pub fn infotext(request: &GenerateRequest, seed: u64, model_name: &str) -> String {
    let mut text = request.prompt.clone();
    if !request.negative_prompt.is_empty() {
        text.push_str("\nNegative prompt: ");
        text.push_str(&request.negative_prompt);
    }
    text.push_str(&format!(
        "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
        request.steps,
        request.sampler.label(),
        request.cfg_scale,
        seed,
        request.width,
        request.height,
        model_name
    ));
    text
}

/// Encodes `image` as an 8-bit RGB PNG carrying its infotext
/// (tEXt when Latin-1 can hold it, iTXt otherwise, as PIL does).
pub fn encode_png(image: &GeneratedImage) -> Result<Vec<u8>> {
    let fail = |e: png::EncodingError| EngineError::Encoding(format!("PNG: {e}"));
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, image.width as u32, image.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        if image.infotext.chars().all(|c| (c as u32) < 256) {
            encoder
                .add_text_chunk(PARAMETERS_KEY.into(), image.infotext.clone())
                .map_err(fail)?;
        } else {
            encoder
                .add_itxt_chunk(PARAMETERS_KEY.into(), image.infotext.clone())
                .map_err(fail)?;
        }
        let mut writer = encoder.write_header().map_err(fail)?;
        writer.write_image_data(&image.rgb).map_err(fail)?;
        writer.finish().map_err(fail)?;
    }
    Ok(out)
}

/// The `parameters` text of a PNG, if it has one (tEXt, zTXt or iTXt) and it
/// reads within the default [`ImageLimits`] (see [`image_input::read_text`]).
pub fn read_parameters(png_bytes: &[u8]) -> Option<String> {
    image_input::read_text(png_bytes, &ImageLimits::default())
        .ok()?
        .parameters()
        .map(str::to_owned)
}

/// Decodes a PNG (or JPEG) to (width, height, RGB bytes) within the default
/// [`ImageLimits`] (see [`image_input::decode_rgb`]).
pub fn decode_rgb(png_bytes: &[u8]) -> Result<(usize, usize, Vec<u8>)> {
    let image = image_input::decode_rgb(png_bytes, &ImageLimits::default())
        .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
    Ok((image.width, image.height, image.rgb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samplers::SamplerId;

    fn request(prompt: &str, negative: &str) -> GenerateRequest {
        GenerateRequest {
            prompt: prompt.into(),
            negative_prompt: negative.into(),
            seed: Some(42),
            steps: 20,
            cfg_scale: 7.0,
            sampler: SamplerId::EulerAncestral,
            width: 512,
            height: 512,
            batch_size: 1,
        }
    }

    #[test]
    fn infotext_has_a1111_layout() {
        let text = infotext(&request("a cat", "blurry"), 42, "tiny");
        assert_eq!(
            text,
            "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Model: tiny"
        );
        let mut r = request("a cat", "");
        r.cfg_scale = 7.5;
        assert_eq!(
            infotext(&r, 1, "m"),
            "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: m"
        );
    }

    #[test]
    fn png_round_trips_pixels_and_parameters() {
        for prompt in ["a cat", "日本語 prompt 🎉"] {
            let image = GeneratedImage {
                width: 3,
                height: 2,
                rgb: (0..18).map(|v| v * 10).collect(),
                seed: 1,
                infotext: infotext(&request(prompt, ""), 1, "m"),
            };
            let bytes = encode_png(&image).unwrap();
            assert_eq!(
                read_parameters(&bytes).as_deref(),
                Some(image.infotext.as_str())
            );
            let (w, h, rgb) = decode_rgb(&bytes).unwrap();
            assert_eq!((w, h), (3, 2));
            assert_eq!(rgb, image.rgb);
        }
        assert_eq!(read_parameters(b"not a png"), None);
    }
}
