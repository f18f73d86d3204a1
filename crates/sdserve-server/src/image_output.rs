//! The file formats a response may carry an image in. Jobs store PNGs (with
//! A1111's infotext); a dialect that offers other formats (OpenAI's
//! `output_format` + `output_compression`, on generations and, later, edits)
//! re-encodes the stored PNG here when it answers, so the store and every
//! other reader keep one format. PNG is passed through untouched.
//!
//! Encoders: `jpeg-encoder` (pure Rust, no dependencies, the encoder the
//! `image` crate uses) and `image-webp` (pure Rust, `forbid(unsafe_code)`, the
//! image-rs project's WebP codec). `image-webp` writes lossless WebP only, so
//! WebP is lossless here and takes no compression level. The re-encoded
//! files carry no infotext; the PNG keeps it.

use crate::engine_api::png;
use crate::error::ApiError;
use crate::validation::ValidationError;

/// A format a response may carry an image in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// The stored PNG, with its infotext.
    Png,
    /// Baseline JPEG at a quality of 1 to 100.
    Jpeg,
    /// Lossless WebP.
    Webp,
}

impl OutputFormat {
    /// The formats by the names OpenAI uses (`jpg` is not one of them).
    pub const NAMES: [(&'static str, OutputFormat); 3] = [
        ("png", OutputFormat::Png),
        ("jpeg", OutputFormat::Jpeg),
        ("webp", OutputFormat::Webp),
    ];

    /// The format OpenAI's `output_format` names, if it is one of these.
    pub fn parse(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, format)| *format)
    }

    /// Its name, as [`OutputFormat::parse`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
        }
    }

    /// Its media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }
}

/// A format with its settings: what a response (or a signed link) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputEncoding {
    /// The format.
    pub format: OutputFormat,
    /// JPEG quality, 1 to 100 (unused by the lossless formats).
    pub quality: u8,
}

impl OutputEncoding {
    /// The stored PNG as it is.
    pub const PNG: OutputEncoding = OutputEncoding {
        format: OutputFormat::Png,
        quality: 100,
    };

    /// A compact spelling for links: `png`, `webp` or `jpeg-<quality>`.
    pub fn token(self) -> String {
        match self.format {
            OutputFormat::Jpeg => format!("jpeg-{}", self.quality),
            other => other.name().to_string(),
        }
    }

    /// Reads [`OutputEncoding::token`]'s spelling back.
    pub fn from_token(token: &str) -> Option<Self> {
        if let Some(quality) = token.strip_prefix("jpeg-") {
            let quality: u8 = quality.parse().ok()?;
            return (1..=100).contains(&quality).then_some(Self {
                format: OutputFormat::Jpeg,
                quality,
            });
        }
        match OutputFormat::parse(token)? {
            OutputFormat::Jpeg => None,
            format => Some(Self {
                format,
                quality: 100,
            }),
        }
    }

    /// The image of a stored PNG in this encoding. Errors are ours (a stored
    /// PNG that does not decode, an encoder failure), not the client's.
    pub fn encode(self, stored_png: &[u8]) -> Result<Vec<u8>, String> {
        if self.format == OutputFormat::Png {
            return Ok(stored_png.to_vec());
        }
        let (width, height, rgb) =
            png::decode_rgb(stored_png).map_err(|e| format!("stored PNG: {e}"))?;
        let mut out = Vec::new();
        match self.format {
            OutputFormat::Png => {}
            OutputFormat::Jpeg => {
                let (w, h) = match (u16::try_from(width), u16::try_from(height)) {
                    (Ok(w), Ok(h)) => (w, h),
                    _ => return Err(format!("{width}x{height} is too large for JPEG")),
                };
                jpeg_encoder::Encoder::new(&mut out, self.quality.clamp(1, 100))
                    .encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)
                    .map_err(|e| format!("JPEG: {e}"))?;
            }
            OutputFormat::Webp => {
                image_webp::WebPEncoder::new(&mut out)
                    .encode(
                        &rgb,
                        width as u32,
                        height as u32,
                        image_webp::ColorType::Rgb8,
                    )
                    .map_err(|e| format!("WebP: {e}"))?;
            }
        }
        Ok(out)
    }
}

/// The encoding OpenAI's `output_format` and `output_compression` ask for
/// (generations and edits); a lossy level for a lossless format is a 400.
pub fn output_encoding(
    format: Option<&str>,
    compression: Option<i64>,
) -> Result<OutputEncoding, ApiError> {
    let format = match format {
        None => OutputFormat::Png,
        Some(name) => OutputFormat::parse(name).ok_or_else(|| {
            ApiError::from(ValidationError::Invalid {
                field: "output_format",
                message: format!("must be png, jpeg or webp, got {name:?}"),
            })
        })?,
    };
    let compression = compression.unwrap_or(100);
    if !(0..=100).contains(&compression) {
        return Err(ValidationError::Invalid {
            field: "output_compression",
            message: format!("must be between 0 and 100, got {compression}"),
        }
        .into());
    }
    if format != OutputFormat::Jpeg && compression != 100 {
        return Err(ApiError::UnsupportedValue {
            field: "output_compression",
            message: format!(
                "{} is lossless here and takes only 100, got {compression}; use output_format jpeg to compress",
                format.name()
            ),
        });
    }
    Ok(OutputEncoding {
        format,
        quality: compression.clamp(1, 100) as u8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine_api::GeneratedImage;

    fn stored_png() -> Vec<u8> {
        let image = GeneratedImage {
            width: 16,
            height: 8,
            rgb: (0..16 * 8 * 3).map(|v| (v * 7 % 256) as u8).collect(),
            seed: 1,
            infotext: "a cat\nSteps: 1".into(),
        };
        png::encode_png(&image).unwrap()
    }

    #[test]
    fn each_format_has_its_magic_bytes() {
        let stored = stored_png();
        let png_out = OutputEncoding::PNG.encode(&stored).unwrap();
        assert_eq!(png_out, stored, "PNG passes through with its infotext");
        let jpeg = OutputEncoding {
            format: OutputFormat::Jpeg,
            quality: 80,
        }
        .encode(&stored)
        .unwrap();
        assert!(jpeg.starts_with(&[0xff, 0xd8, 0xff]), "{:?}", &jpeg[..4]);
        assert!(jpeg.ends_with(&[0xff, 0xd9]));
        // The bounded reader decodes it back to the same size.
        let (w, h, _) = png::decode_rgb(&jpeg).unwrap();
        assert_eq!((w, h), (16, 8));
        let webp = OutputEncoding {
            format: OutputFormat::Webp,
            quality: 100,
        }
        .encode(&stored)
        .unwrap();
        assert_eq!(&webp[..4], b"RIFF");
        assert_eq!(&webp[8..12], b"WEBP");
        assert_eq!(&webp[12..16], b"VP8L", "lossless");
        // Lower quality, fewer bytes.
        let low = OutputEncoding {
            format: OutputFormat::Jpeg,
            quality: 1,
        }
        .encode(&stored)
        .unwrap();
        let high = OutputEncoding {
            format: OutputFormat::Jpeg,
            quality: 100,
        }
        .encode(&stored)
        .unwrap();
        assert!(low.len() < high.len(), "{} vs {}", low.len(), high.len());
        assert!(OutputEncoding {
            format: OutputFormat::Jpeg,
            quality: 50
        }
        .encode(b"not a png")
        .is_err());
    }

    #[test]
    fn tokens_round_trip_and_refuse_anything_else() {
        for encoding in [
            OutputEncoding::PNG,
            OutputEncoding {
                format: OutputFormat::Webp,
                quality: 100,
            },
            OutputEncoding {
                format: OutputFormat::Jpeg,
                quality: 1,
            },
            OutputEncoding {
                format: OutputFormat::Jpeg,
                quality: 100,
            },
        ] {
            assert_eq!(
                OutputEncoding::from_token(&encoding.token()),
                Some(encoding)
            );
        }
        for bad in [
            "", "jpeg", "jpeg-0", "jpeg-101", "jpeg-x", "jpg", "gif", "PNG",
        ] {
            assert_eq!(OutputEncoding::from_token(bad), None, "{bad}");
        }
        assert_eq!(OutputFormat::parse("jpeg"), Some(OutputFormat::Jpeg));
        assert_eq!(OutputFormat::Webp.content_type(), "image/webp");
    }
}
