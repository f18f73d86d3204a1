//! Bounded reading of untrusted images (uploads to `png-info`, future img2img
//! inputs). A PNG header may claim 100000x100000 pixels in 93 bytes, and a zTXt
//! chunk may inflate 1 MB into gigabytes; decoding either with a plain decoder
//! allocates what the file claims and aborts the process. Here every cap in
//! [`ImageLimits`] is checked *before* any allocation sized by the input:
//! `png_chunks` walks the PNG chunk structure itself (chunk count, lengths,
//! IHDR dimensions) and inflates text with a hard output cap; `decode` checks
//! dimensions and the compressed data's size before the pixel buffer exists.
//! Errors are typed ([`ImageInputError`]) so the server can answer 413 for a cap
//! and 422 for a malformed file. The module depends on nothing else in the
//! crate (only `png`, `miniz_oxide`, `zune-jpeg`, `thiserror`), so the fuzz
//! target compiles it on its own, without candle.

mod decode;
mod limits;
mod png_chunks;

pub use decode::{decode_rgb, decode_rgb_alpha, detect_format, DecodedImage, ImageFormat};
pub use limits::{ImageInputError, ImageLimits};
pub use png_chunks::{read_text, ImageText, TextChunk, PARAMETERS_KEY};
