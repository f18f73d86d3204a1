//! The caps applied to untrusted images and the one error type for them.

/// Caps on what an untrusted image may make us allocate or do. Every field is
/// checked before an allocation it bounds; [`Default`] suits a Stable Diffusion
/// server, whose images are at most a few megapixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Widest image accepted, in pixels (default 8192).
    pub max_width: u32,
    /// Tallest image accepted, in pixels (default 8192).
    pub max_height: u32,
    /// Most pixels accepted, width x height (default 16 Mpx = 4096x4096: the
    /// RGB result is then at most 48 MiB, and the decoder's output buffer 64 MiB).
    pub max_pixels: u64,
    /// Most bytes of one text chunk, after decompression (default 1 MiB;
    /// A1111's infotext is a few KiB).
    pub max_text_bytes: usize,
    /// Most bytes of all text chunks together, after decompression (default 4 MiB).
    pub max_total_text_bytes: usize,
    /// Most chunks in a PNG (default 4096; real files have a few dozen, but
    /// encoders may split image data into many IDAT chunks).
    pub max_chunks: usize,
    /// Most bytes the PNG decoder may allocate besides the output buffer
    /// (row buffers, palettes...): the `png` crate's `Limits::bytes` (default 64 MiB).
    pub max_decoder_bytes: usize,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_width: 8192,
            max_height: 8192,
            max_pixels: 16 * 1024 * 1024,
            max_text_bytes: 1024 * 1024,
            max_total_text_bytes: 4 * 1024 * 1024,
            max_chunks: 4096,
            max_decoder_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why an untrusted image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageInputError {
    /// The image is over one of the [`ImageLimits`]; `what` names the cap.
    #[error("{what} exceeds the limit of {limit} {unit}{}", got(.actual, .unit))]
    TooLarge {
        /// What was measured (`image width`, `text chunk "parameters"`...).
        what: String,
        /// The cap, in `unit`s.
        limit: u64,
        /// The size the input has or claims, when known (a capped inflate stops
        /// at the limit and does not know the total).
        actual: Option<u64>,
        /// `pixels`, `bytes` or `chunks`.
        unit: &'static str,
    },
    /// Not a well-formed image (truncated chunk, bad header, corrupt data).
    #[error("malformed image: {0}")]
    Malformed(String),
    /// A well-formed input this reader does not handle (not PNG or JPEG...).
    #[error("unsupported image: {0}")]
    Unsupported(String),
}

fn got(actual: &Option<u64>, unit: &str) -> String {
    match actual {
        Some(n) => format!(" (got {n} {unit})"),
        None => String::new(),
    }
}

impl ImageInputError {
    /// Builds [`ImageInputError::TooLarge`].
    pub(crate) fn too_large(
        what: impl Into<String>,
        limit: u64,
        actual: Option<u64>,
        unit: &'static str,
    ) -> Self {
        Self::TooLarge {
            what: what.into(),
            limit,
            actual,
            unit,
        }
    }

    /// Builds [`ImageInputError::Malformed`].
    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        Self::Malformed(message.into())
    }
}

/// Checks claimed dimensions against the caps (before anything is allocated).
pub(crate) fn check_dimensions(
    width: u64,
    height: u64,
    limits: &ImageLimits,
) -> Result<(), ImageInputError> {
    if width == 0 || height == 0 {
        return Err(ImageInputError::malformed(format!(
            "image is {width}x{height} pixels: a side is zero"
        )));
    }
    if width > u64::from(limits.max_width) {
        return Err(ImageInputError::too_large(
            "image width",
            limits.max_width.into(),
            Some(width),
            "pixels",
        ));
    }
    if height > u64::from(limits.max_height) {
        return Err(ImageInputError::too_large(
            "image height",
            limits.max_height.into(),
            Some(height),
            "pixels",
        ));
    }
    let pixels = width * height;
    if pixels > limits.max_pixels {
        return Err(ImageInputError::too_large(
            "image area",
            limits.max_pixels,
            Some(pixels),
            "pixels",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_limit_and_the_value() {
        let e = check_dimensions(100_000, 100_000, &ImageLimits::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "image width exceeds the limit of 8192 pixels (got 100000 pixels)"
        );
        let e = check_dimensions(8000, 8000, &ImageLimits::default()).unwrap_err();
        assert!(e.to_string().contains("limit of 16777216 pixels"), "{e}");
        assert!(matches!(
            check_dimensions(0, 5, &ImageLimits::default()),
            Err(ImageInputError::Malformed(_))
        ));
        assert!(check_dimensions(4096, 4096, &ImageLimits::default()).is_ok());
    }
}
