//! Untrusted PNG or JPEG to 8-bit RGB, within [`ImageLimits`]. PNG goes through
//! the chunk walker first (dimensions, chunk count), then a cheap size check
//! (deflate cannot expand more than 1032:1, so image data too short for the
//! claimed size is refused before the pixel buffer exists), then the `png`
//! crate with its own allocation limit. JPEG dimensions are read from the
//! frame header and checked before `zune-jpeg` allocates anything.

use std::io::Cursor;

use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::limits::{check_dimensions, ImageInputError, ImageLimits};
use super::png_chunks::{walk, PNG_SIGNATURE};

/// Deflate's largest expansion: a 258-byte match coded in 2 bits.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// An image decoded to 8-bit RGB (alpha dropped, gray expanded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major RGB bytes, `width * height * 3` of them.
    pub rgb: Vec<u8>,
}

/// The image formats [`decode_rgb`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// PNG (any colour type and bit depth).
    Png,
    /// Baseline or progressive JPEG.
    Jpeg,
}

/// Tells PNG from JPEG by their signatures; anything else is
/// [`ImageInputError::Unsupported`].
pub fn detect_format(bytes: &[u8]) -> Result<ImageFormat, ImageInputError> {
    if bytes.starts_with(&PNG_SIGNATURE) {
        Ok(ImageFormat::Png)
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Ok(ImageFormat::Jpeg)
    } else {
        Err(ImageInputError::Unsupported(
            "not a PNG or JPEG (unrecognised signature)".into(),
        ))
    }
}

/// Decodes an untrusted PNG or JPEG to 8-bit RGB within `limits`.
pub fn decode_rgb(bytes: &[u8], limits: &ImageLimits) -> Result<DecodedImage, ImageInputError> {
    match detect_format(bytes)? {
        ImageFormat::Png => decode_png(bytes, limits),
        ImageFormat::Jpeg => decode_jpeg(bytes, limits),
    }
}

/// Like [`decode_rgb`], also returning the alpha channel (one byte a pixel)
/// when the image has one (PNG with alpha or a transparent palette): OpenAI's
/// image edits take the transparent area as the mask.
pub fn decode_rgb_alpha(
    bytes: &[u8],
    limits: &ImageLimits,
) -> Result<(DecodedImage, Option<Vec<u8>>), ImageInputError> {
    match detect_format(bytes)? {
        ImageFormat::Png => decode_png_alpha(bytes, limits),
        ImageFormat::Jpeg => Ok((decode_jpeg(bytes, limits)?, None)),
    }
}

fn decode_png(bytes: &[u8], limits: &ImageLimits) -> Result<DecodedImage, ImageInputError> {
    decode_png_alpha(bytes, limits).map(|(image, _)| image)
}

fn decode_png_alpha(
    bytes: &[u8],
    limits: &ImageLimits,
) -> Result<(DecodedImage, Option<Vec<u8>>), ImageInputError> {
    let walked = walk(bytes, limits)?;
    let header = walked.header;
    let compressed: u64 = walked
        .chunks
        .iter()
        .filter(|c| &c.kind == b"IDAT")
        .map(|c| c.data.len() as u64)
        .sum();
    let needed = header.raw_data_bytes();
    if compressed.saturating_mul(MAX_DEFLATE_RATIO) < needed {
        return Err(ImageInputError::malformed(format!(
            "{compressed} bytes of image data cannot hold {}x{} pixels: truncated",
            header.width, header.height
        )));
    }
    let png_error = |e: png::DecodingError| match e {
        png::DecodingError::LimitsExceeded => ImageInputError::too_large(
            "PNG decoder memory",
            limits.max_decoder_bytes as u64,
            None,
            "bytes",
        ),
        other => ImageInputError::malformed(format!("PNG: {other}")),
    };
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: limits.max_decoder_bytes,
        },
    );
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    decoder.set_ignore_text_chunk(true);
    decoder.set_ignore_iccp_chunk(true);
    let mut reader = decoder.read_info().map_err(png_error)?;
    // At most 4 bytes a pixel after EXPAND | STRIP_16, and the pixels are
    // within `max_pixels` (checked by `walk`): this allocation is bounded.
    let max_output = limits.max_pixels.saturating_mul(4);
    let size = reader
        .output_buffer_size()
        .filter(|&n| n as u64 <= max_output)
        .ok_or_else(|| ImageInputError::too_large("PNG output", max_output, None, "bytes"))?;
    let mut buf = vec![0; size];
    let frame = reader.next_frame(&mut buf).map_err(png_error)?;
    let (width, height) = (frame.width as usize, frame.height as usize);
    buf.truncate(frame.buffer_size());
    let samples = frame.color_type.samples();
    let alpha = match samples {
        2 | 4 => Some(buf.chunks_exact(samples).map(|p| p[samples - 1]).collect()),
        _ => None,
    };
    let rgb = match samples {
        3 => buf,
        4 => buf
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        2 => buf
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        1 => buf.iter().flat_map(|&g| [g, g, g]).collect(),
        n => {
            return Err(ImageInputError::Unsupported(format!(
                "PNG output with {n} samples per pixel"
            )))
        }
    };
    if rgb.len() != width * height * 3 {
        return Err(ImageInputError::malformed(
            "PNG frame size does not match its header",
        ));
    }
    Ok((DecodedImage { width, height, rgb }, alpha))
}

fn decode_jpeg(bytes: &[u8], limits: &ImageLimits) -> Result<DecodedImage, ImageInputError> {
    let jpeg_error =
        |e: zune_jpeg::errors::DecodeErrors| ImageInputError::malformed(format!("JPEG: {e}"));
    // zune-jpeg's own size caps are left at the format's maximum: ours are
    // checked below, after the header and before any pixel allocation.
    let options = DecoderOptions::default()
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX))
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(jpeg_error)?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| ImageInputError::malformed("JPEG without a frame header"))?;
    check_dimensions(width as u64, height as u64, limits)?;
    let size = decoder
        .output_buffer_size()
        .ok_or_else(|| ImageInputError::malformed("JPEG without a frame header"))?;
    if size != width * height * 3 {
        return Err(ImageInputError::Unsupported(format!(
            "JPEG output of {size} bytes for {width}x{height} RGB"
        )));
    }
    let mut rgb = vec![0; size];
    decoder.decode_into(&mut rgb).map_err(jpeg_error)?;
    Ok(DecodedImage { width, height, rgb })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_input::png_chunks::tests::{chunk, claimed_giant, png_of};

    fn limits() -> ImageLimits {
        ImageLimits::default()
    }

    /// Encodes one image with the `png` crate.
    fn encode(
        width: u32,
        height: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        palette: Option<(&[u8], Option<&[u8]>)>,
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut e = png::Encoder::new(&mut out, width, height);
            e.set_color(color);
            e.set_depth(depth);
            if let Some((plte, trns)) = palette {
                e.set_palette(plte.to_vec());
                if let Some(trns) = trns {
                    e.set_trns(trns.to_vec());
                }
            }
            let mut w = e.write_header().unwrap();
            w.write_image_data(data).unwrap();
        }
        out
    }

    fn decode(bytes: &[u8]) -> DecodedImage {
        decode_rgb(bytes, &limits()).unwrap()
    }

    #[test]
    fn every_png_colour_type_becomes_rgb8() {
        use png::{BitDepth::*, ColorType::*};
        // 16-bit RGB: the high byte of each sample.
        let rgb16 = encode(
            2,
            1,
            Rgb,
            Sixteen,
            None,
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        );
        assert_eq!(decode(&rgb16).rgb, [1, 3, 5, 7, 9, 11]);
        // Palette, 2 bits a pixel, with a tRNS entry (alpha dropped).
        let plte = [10, 20, 30, 40, 50, 60, 70, 80, 90];
        let pal = encode(
            3,
            1,
            Indexed,
            Two,
            Some((&plte, Some(&[0]))),
            &[0b00_01_10_00],
        );
        assert_eq!(decode(&pal).rgb, [10, 20, 30, 40, 50, 60, 70, 80, 90]);
        // 1-bit gray scales to 0 / 255.
        let gray1 = encode(3, 1, Grayscale, One, None, &[0b101_00000]);
        assert_eq!(decode(&gray1).rgb, [255, 255, 255, 0, 0, 0, 255, 255, 255]);
        // 8-bit gray, 16-bit gray+alpha, 8-bit RGBA.
        assert_eq!(
            decode(&encode(1, 1, Grayscale, Eight, None, &[77])).rgb,
            [77; 3]
        );
        let ga16 = encode(1, 1, GrayscaleAlpha, Sixteen, None, &[200, 1, 9, 9]);
        assert_eq!(decode(&ga16).rgb, [200; 3]);
        let rgba = encode(1, 2, Rgba, Eight, None, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let d = decode(&rgba);
        assert_eq!((d.width, d.height, d.rgb), (1, 2, vec![1, 2, 3, 5, 6, 7]));
    }

    #[test]
    fn alpha_comes_back_for_rgba_gray_alpha_and_transparent_palettes_only() {
        use png::{BitDepth::*, ColorType::*};
        let alpha = |bytes: &[u8]| decode_rgb_alpha(bytes, &limits()).unwrap().1;
        let rgba = encode(1, 2, Rgba, Eight, None, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(alpha(&rgba), Some(vec![4, 8]));
        let ga = encode(2, 1, GrayscaleAlpha, Eight, None, &[9, 0, 9, 255]);
        assert_eq!(alpha(&ga), Some(vec![0, 255]));
        // A palette whose tRNS makes entry 0 transparent: EXPAND gives RGBA.
        let plte = [10, 20, 30, 40, 50, 60];
        let pal = encode(2, 1, Indexed, Eight, Some((&plte, Some(&[0]))), &[0, 1]);
        assert_eq!(alpha(&pal), Some(vec![0, 255]));
        assert_eq!(alpha(&encode(1, 1, Rgb, Eight, None, &[1, 2, 3])), None);
    }

    #[test]
    fn image_data_too_short_for_the_header_is_refused_before_decoding() {
        let idat = miniz_oxide::deflate::compress_to_vec_zlib(&[0u8; 16], 9);
        let mut ihdr = 4096u32.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&4096u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
        let file = png_of(&[
            chunk(b"IHDR", &ihdr),
            chunk(b"IDAT", &idat),
            chunk(b"IEND", &[]),
        ]);
        let e = decode_rgb(&file, &limits()).unwrap_err();
        assert!(e.to_string().contains("cannot hold 4096x4096"), "{e}");
        assert!(matches!(
            decode_rgb(&claimed_giant(), &limits()),
            Err(ImageInputError::TooLarge { .. })
        ));
        // A corrupt but plausible PNG is malformed, not a panic.
        let mut bad = encode(
            4,
            4,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            None,
            &[9; 48],
        );
        let idat_at = bad.windows(4).position(|w| w == b"IDAT").unwrap();
        bad[idat_at + 6] ^= 0xff;
        assert!(matches!(
            decode_rgb(&bad, &limits()),
            Err(ImageInputError::Malformed(_))
        ));
    }

    const LEFT: [u8; 3] = [200, 40, 30];
    const RIGHT: [u8; 3] = [20, 60, 220];

    /// Checks a decoded 16x8 two-block fixture, away from the block edge.
    fn assert_two_blocks(image: &DecodedImage, left: [u8; 3], right: [u8; 3], tolerance: u8) {
        assert_eq!((image.width, image.height), (16, 8));
        assert_eq!(image.rgb.len(), 16 * 8 * 3);
        for y in 0..8 {
            for (x, want) in [(0, left), (5, left), (10, right), (15, right)] {
                let at = (y * 16 + x) * 3;
                let got = &image.rgb[at..at + 3];
                for c in 0..3 {
                    assert!(
                        got[c].abs_diff(want[c]) <= tolerance,
                        "({x},{y}): {got:?} vs {want:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn jpegs_decode_to_rgb() {
        let data = |name: &str| {
            std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/data")
                    .join(name),
            )
            .unwrap()
        };
        assert_two_blocks(&decode(&data("rgb_baseline.jpg")), LEFT, RIGHT, 4);
        assert_two_blocks(&decode(&data("rgb_progressive_420.jpg")), LEFT, RIGHT, 12);
        assert_two_blocks(&decode(&data("gray.jpg")), [30; 3], [220; 3], 4);
        // The frame header is checked against the caps before decoding.
        let tight = ImageLimits {
            max_width: 8,
            ..limits()
        };
        assert_eq!(
            decode_rgb(&data("gray.jpg"), &tight),
            Err(ImageInputError::too_large(
                "image width",
                8,
                Some(16),
                "pixels"
            ))
        );
        let truncated = &data("rgb_baseline.jpg")[..100];
        assert!(decode_rgb(truncated, &limits()).is_err());
        assert_eq!(
            detect_format(b"GIF89a"),
            Err(ImageInputError::Unsupported(
                "not a PNG or JPEG (unrecognised signature)".into()
            ))
        );
    }
}
