//! A PNG chunk walker that trusts nothing: the signature, IHDR first and 13
//! bytes long, every chunk length within the bytes that remain, the chunk count
//! and the claimed dimensions are checked before anything else is read, and
//! text chunks (tEXt, zTXt, iTXt) are inflated with a hard cap on their output.
//! CRCs are not checked here (the pixel decoder checks them); a text reader is
//! as lenient as PIL about them.

use miniz_oxide::inflate::{decompress_to_vec_zlib_with_limit, TINFLStatus};

use super::limits::{check_dimensions, ImageInputError, ImageLimits};

/// The 8 bytes every PNG starts with.
pub(crate) const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// The largest chunk length the PNG specification allows (2^31 - 1).
const MAX_CHUNK_LEN: u32 = 0x7fff_ffff;

/// The PNG text keyword A1111 reads generation parameters from.
pub const PARAMETERS_KEY: &str = "parameters";

/// A PNG text keyword is 1 to 79 Latin-1 bytes.
const MAX_KEYWORD_LEN: usize = 79;

/// The fields of IHDR this crate needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub width: u32,
    pub height: u32,
    pub bit_depth: u8,
    /// PNG colour type: 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA.
    pub color_type: u8,
}

impl Header {
    /// Bytes of filtered image data a non-interlaced image needs (one filter
    /// byte per row plus the packed samples): a lower bound for interlaced ones.
    pub fn raw_data_bytes(&self) -> u64 {
        let channels: u64 = match self.color_type {
            2 => 3,
            4 => 2,
            6 => 4,
            _ => 1,
        };
        let row_bits = u64::from(self.width) * channels * u64::from(self.bit_depth);
        u64::from(self.height) * (1 + row_bits.div_ceil(8))
    }
}

/// One chunk: its 4-byte type and its data (CRC excluded).
pub(crate) struct Chunk<'a> {
    pub kind: [u8; 4],
    pub data: &'a [u8],
}

/// A walked PNG: its header and its chunks up to IEND.
pub(crate) struct PngChunks<'a> {
    pub header: Header,
    pub chunks: Vec<Chunk<'a>>,
}

/// Walks the chunk structure of `bytes`, checking every cap that does not
/// need decompression.
pub(crate) fn walk<'a>(
    bytes: &'a [u8],
    limits: &ImageLimits,
) -> Result<PngChunks<'a>, ImageInputError> {
    let mut rest = bytes
        .strip_prefix(&PNG_SIGNATURE)
        .ok_or_else(|| ImageInputError::malformed("not a PNG: no PNG signature"))?;
    let mut chunks: Vec<Chunk<'a>> = Vec::new();
    loop {
        if chunks.len() >= limits.max_chunks {
            return Err(ImageInputError::too_large(
                "PNG chunk count",
                limits.max_chunks as u64,
                None,
                "chunks",
            ));
        }
        let (len, tail) = split_u32(rest).ok_or_else(|| truncated(chunks.len()))?;
        let (kind, tail) = tail
            .split_first_chunk::<4>()
            .ok_or_else(|| truncated(chunks.len()))?;
        if len > MAX_CHUNK_LEN {
            return Err(ImageInputError::malformed(format!(
                "chunk {} declares {len} bytes, over the PNG maximum of {MAX_CHUNK_LEN}",
                chunks.len()
            )));
        }
        let len = len as usize;
        // Data plus the 4-byte CRC must lie within what remains.
        if tail.len() < len || tail.len() - len < 4 {
            return Err(ImageInputError::malformed(format!(
                "chunk {} ({}) declares {len} bytes but only {} remain: truncated",
                chunks.len(),
                String::from_utf8_lossy(kind),
                tail.len().saturating_sub(4)
            )));
        }
        let (data, after) = tail.split_at(len);
        rest = &after[4..];
        if chunks.is_empty() && (kind != b"IHDR" || len != 13) {
            return Err(ImageInputError::malformed(format!(
                "the first chunk must be a 13-byte IHDR, not {} of {len} bytes",
                String::from_utf8_lossy(kind)
            )));
        }
        if !chunks.is_empty() && kind == b"IHDR" {
            return Err(ImageInputError::malformed("a second IHDR chunk"));
        }
        let end = kind == b"IEND";
        chunks.push(Chunk { kind: *kind, data });
        if end {
            break;
        }
    }
    let header = parse_header(chunks[0].data, limits)?;
    Ok(PngChunks { header, chunks })
}

fn truncated(index: usize) -> ImageInputError {
    ImageInputError::malformed(format!(
        "truncated PNG: chunk {index} has no complete header (is IEND missing?)"
    ))
}

fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, tail) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), tail))
}

/// Parses and checks IHDR (13 bytes, guaranteed by [`walk`]).
fn parse_header(data: &[u8], limits: &ImageLimits) -> Result<Header, ImageInputError> {
    let (width, rest) = split_u32(data).ok_or_else(|| ImageInputError::malformed("short IHDR"))?;
    let (height, rest) = split_u32(rest).ok_or_else(|| ImageInputError::malformed("short IHDR"))?;
    let &[bit_depth, color_type, compression, filter, interlace] = rest else {
        return Err(ImageInputError::malformed("IHDR is not 13 bytes"));
    };
    if width > MAX_CHUNK_LEN || height > MAX_CHUNK_LEN {
        return Err(ImageInputError::malformed(format!(
            "IHDR size {width}x{height} is over the PNG maximum of {MAX_CHUNK_LEN}"
        )));
    }
    check_dimensions(width.into(), height.into(), limits)?;
    let depth_ok = match color_type {
        0 => matches!(bit_depth, 1 | 2 | 4 | 8 | 16),
        3 => matches!(bit_depth, 1 | 2 | 4 | 8),
        2 | 4 | 6 => matches!(bit_depth, 8 | 16),
        _ => false,
    };
    if !depth_ok || compression != 0 || filter != 0 || interlace > 1 {
        return Err(ImageInputError::malformed(format!(
            "IHDR: colour type {color_type} with bit depth {bit_depth}, compression {compression}, \
             filter {filter}, interlace {interlace} is not a valid PNG header"
        )));
    }
    Ok(Header {
        width,
        height,
        bit_depth,
        color_type,
    })
}

/// One text chunk of a PNG, decoded (Latin-1 for tEXt/zTXt, UTF-8 for iTXt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextChunk {
    /// The chunk's keyword (`parameters` for A1111's infotext).
    pub keyword: String,
    /// The text, decompressed.
    pub text: String,
}

/// The text chunks of an image, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageText {
    /// Every tEXt, zTXt and iTXt chunk, in the order they appear.
    pub chunks: Vec<TextChunk>,
}

impl ImageText {
    /// A1111's infotext: the first chunk whose keyword is [`PARAMETERS_KEY`].
    pub fn parameters(&self) -> Option<&str> {
        self.chunks
            .iter()
            .find(|c| c.keyword == PARAMETERS_KEY)
            .map(|c| c.text.as_str())
    }

    /// The chunks other than `parameters`, as A1111 lists them in `items`.
    pub fn others(&self) -> impl Iterator<Item = &TextChunk> {
        self.chunks.iter().filter(|c| c.keyword != PARAMETERS_KEY)
    }
}

/// Reads every text chunk of an untrusted PNG within `limits`. A JPEG has no
/// PNG text chunks and gives an empty [`ImageText`] (its EXIF is not read);
/// anything else is [`ImageInputError::Unsupported`].
pub fn read_text(bytes: &[u8], limits: &ImageLimits) -> Result<ImageText, ImageInputError> {
    if super::detect_format(bytes)? == super::ImageFormat::Jpeg {
        return Ok(ImageText::default());
    }
    let png = walk(bytes, limits)?;
    let mut budget = TextBudget { limits, total: 0 };
    let mut chunks = Vec::new();
    for chunk in &png.chunks {
        let text = match &chunk.kind {
            b"tEXt" => text_chunk(chunk.data, &mut budget)?,
            b"zTXt" => ztxt_chunk(chunk.data, &mut budget)?,
            b"iTXt" => itxt_chunk(chunk.data, &mut budget)?,
            _ => continue,
        };
        chunks.push(text);
    }
    Ok(ImageText { chunks })
}

/// The caps on text still available while reading one image.
struct TextBudget<'a> {
    limits: &'a ImageLimits,
    total: usize,
}

impl TextBudget<'_> {
    /// The most bytes the next chunk may hold, and whether the total cap (not
    /// the per-chunk one) is what binds.
    fn room(&self) -> (usize, bool) {
        let left = self.limits.max_total_text_bytes.saturating_sub(self.total);
        if left < self.limits.max_text_bytes {
            (left, true)
        } else {
            (self.limits.max_text_bytes, false)
        }
    }

    fn over(&self, keyword: &str, actual: Option<usize>) -> ImageInputError {
        let actual = actual.map(|n| n as u64);
        if self.room().1 {
            ImageInputError::too_large(
                "all text chunks together",
                self.limits.max_total_text_bytes as u64,
                actual.map(|n| n + self.total as u64),
                "bytes",
            )
        } else {
            ImageInputError::too_large(
                format!("text chunk {keyword:?}"),
                self.limits.max_text_bytes as u64,
                actual,
                "bytes",
            )
        }
    }

    /// Charges `len` bytes of text to the budget, or refuses them.
    fn take(&mut self, keyword: &str, len: usize) -> Result<(), ImageInputError> {
        if len > self.room().0 {
            return Err(self.over(keyword, Some(len)));
        }
        self.total += len;
        Ok(())
    }

    /// Inflates a zlib stream, stopping at the room left.
    fn inflate(&mut self, keyword: &str, data: &[u8]) -> Result<Vec<u8>, ImageInputError> {
        match decompress_to_vec_zlib_with_limit(data, self.room().0) {
            Ok(out) => {
                self.take(keyword, out.len())?;
                Ok(out)
            }
            Err(e) if e.status == TINFLStatus::HasMoreOutput => Err(self.over(keyword, None)),
            Err(e) => Err(ImageInputError::malformed(format!(
                "text chunk {keyword:?}: corrupt compressed data ({:?})",
                e.status
            ))),
        }
    }
}

/// Splits `keyword\0rest`, checking the keyword.
fn keyword(data: &[u8]) -> Result<(String, &[u8]), ImageInputError> {
    let nul = data
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| ImageInputError::malformed("text chunk without a keyword terminator"))?;
    if nul == 0 || nul > MAX_KEYWORD_LEN {
        return Err(ImageInputError::malformed(format!(
            "text chunk keyword of {nul} bytes (1 to {MAX_KEYWORD_LEN} allowed)"
        )));
    }
    Ok((latin1(&data[..nul]), &data[nul + 1..]))
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

fn text_chunk(data: &[u8], budget: &mut TextBudget) -> Result<TextChunk, ImageInputError> {
    let (keyword, text) = keyword(data)?;
    budget.take(&keyword, text.len())?;
    Ok(TextChunk {
        text: latin1(text),
        keyword,
    })
}

fn ztxt_chunk(data: &[u8], budget: &mut TextBudget) -> Result<TextChunk, ImageInputError> {
    let (keyword, rest) = keyword(data)?;
    let Some((&0, compressed)) = rest.split_first() else {
        return Err(ImageInputError::malformed(format!(
            "zTXt chunk {keyword:?}: unknown compression method"
        )));
    };
    let text = budget.inflate(&keyword, compressed)?;
    Ok(TextChunk {
        text: latin1(&text),
        keyword,
    })
}

fn itxt_chunk(data: &[u8], budget: &mut TextBudget) -> Result<TextChunk, ImageInputError> {
    let (keyword, rest) = keyword(data)?;
    let bad = |what: &str| ImageInputError::malformed(format!("iTXt chunk {keyword:?}: {what}"));
    let [flag, method, rest @ ..] = rest else {
        return Err(bad("truncated"));
    };
    // Language tag, then translated keyword, each NUL-terminated.
    let mut rest = rest;
    for _ in 0..2 {
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad("truncated"))?;
        rest = &rest[nul + 1..];
    }
    let text = match (flag, method) {
        (0, _) => {
            budget.take(&keyword, rest.len())?;
            rest.to_vec()
        }
        (1, 0) => budget.inflate(&keyword, rest)?,
        _ => return Err(bad("unknown compression")),
    };
    let text = String::from_utf8(text).map_err(|_| bad("text is not UTF-8"))?;
    Ok(TextChunk { keyword, text })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::png::encode_png;
    use crate::request::GeneratedImage;

    /// CRC-32 as PNG computes it, so hand-built files are valid.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// One chunk: length, type, data, CRC.
    pub(crate) fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
        out
    }

    fn ihdr(width: u32, height: u32, depth: u8, color: u8) -> Vec<u8> {
        let mut data = width.to_be_bytes().to_vec();
        data.extend_from_slice(&height.to_be_bytes());
        data.extend_from_slice(&[depth, color, 0, 0, 0]);
        chunk(b"IHDR", &data)
    }

    /// A PNG from its chunks (signature added).
    pub(crate) fn png_of(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = PNG_SIGNATURE.to_vec();
        for c in chunks {
            out.extend_from_slice(c);
        }
        out
    }

    /// The 93-byte file seen on main: IHDR claims 100000x100000 RGB.
    pub(crate) fn claimed_giant() -> Vec<u8> {
        let idat = miniz_oxide::deflate::compress_to_vec_zlib(&[0u8; 64], 9);
        let mut file = png_of(&[
            ihdr(100_000, 100_000, 8, 2),
            chunk(b"IDAT", &idat),
            chunk(b"IEND", &[]),
        ]);
        file.resize(93.max(file.len()), 0);
        file
    }

    fn small_image(infotext: &str) -> GeneratedImage {
        GeneratedImage {
            width: 3,
            height: 2,
            rgb: (0..18).map(|v| v * 10).collect(),
            seed: 1,
            infotext: infotext.into(),
        }
    }

    fn limits() -> ImageLimits {
        ImageLimits::default()
    }

    #[test]
    fn a_claimed_giant_is_refused_before_allocating() {
        let file = claimed_giant();
        let want = ImageInputError::too_large("image width", 8192, Some(100_000), "pixels");
        assert_eq!(read_text(&file, &limits()), Err(want.clone()));
        assert_eq!(super::super::decode_rgb(&file, &limits()), Err(want));
        assert_eq!(crate::png::read_parameters(&file), None);
    }

    #[test]
    fn a_ztxt_bomb_stops_at_the_cap() {
        let mut encoder_out = Vec::new();
        {
            let mut e = png::Encoder::new(&mut encoder_out, 1, 1);
            e.set_color(png::ColorType::Rgb);
            e.add_ztxt_chunk(PARAMETERS_KEY.into(), "a".repeat(8 << 20))
                .unwrap();
            let mut w = e.write_header().unwrap();
            w.write_image_data(&[1, 2, 3]).unwrap();
        }
        assert!(encoder_out.len() < 64 * 1024, "{}", encoder_out.len());
        let err = read_text(&encoder_out, &limits()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "text chunk \"parameters\" exceeds the limit of 1048576 bytes"
        );
        // Under the per-chunk cap, five chunks break the total cap.
        let big = miniz_oxide::deflate::compress_to_vec_zlib(&[b'x'; 1000 * 1000], 6);
        let mut ztxt = b"k\0\0".to_vec();
        ztxt.extend_from_slice(&big);
        let mut chunks = vec![ihdr(1, 1, 8, 0)];
        chunks.extend(std::iter::repeat_n(chunk(b"zTXt", &ztxt), 5));
        chunks.push(chunk(b"IEND", &[]));
        let err = read_text(&png_of(&chunks), &limits()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("all text chunks together exceeds the limit of 4194304 bytes"),
            "{err}"
        );
    }

    #[test]
    fn too_many_chunks_are_refused() {
        let mut chunks = vec![ihdr(1, 1, 8, 0)];
        chunks.extend(std::iter::repeat_n(chunk(b"tEXt", b"k\0v"), 5000));
        chunks.push(chunk(b"IEND", &[]));
        let err = read_text(&png_of(&chunks), &limits()).unwrap_err();
        assert_eq!(
            err,
            ImageInputError::too_large("PNG chunk count", 4096, None, "chunks")
        );
    }

    #[test]
    fn malformed_structures_are_named() {
        let good = encode_png(&small_image("a cat")).unwrap();
        for cut in [8, 20, 40, good.len() - 1] {
            let e = read_text(&good[..cut], &limits()).unwrap_err();
            assert!(matches!(e, ImageInputError::Malformed(_)), "{cut}: {e}");
        }
        let cases: Vec<Vec<u8>> = vec![
            png_of(&[chunk(b"IHDR", &[0; 12]), chunk(b"IEND", &[])]),
            png_of(&[chunk(b"tEXt", b"k\0v"), chunk(b"IEND", &[])]),
            png_of(&[ihdr(4, 4, 8, 5), chunk(b"IEND", &[])]),
            png_of(&[ihdr(4, 4, 3, 2), chunk(b"IEND", &[])]),
            png_of(&[ihdr(0, 4, 8, 2), chunk(b"IEND", &[])]),
            png_of(&[
                ihdr(1, 1, 8, 0),
                chunk(b"tEXt", b"no keyword end"),
                chunk(b"IEND", &[]),
            ]),
            png_of(&[
                ihdr(1, 1, 8, 0),
                chunk(b"zTXt", b"k\0\0garbage"),
                chunk(b"IEND", &[]),
            ]),
            png_of(&[
                ihdr(1, 1, 8, 0),
                chunk(b"iTXt", b"k\0\0\0\0\0\xff\xfe"),
                chunk(b"IEND", &[]),
            ]),
            png_of(&[ihdr(1, 1, 8, 0), ihdr(1, 1, 8, 0), chunk(b"IEND", &[])]),
        ];
        for (i, file) in cases.iter().enumerate() {
            let e = read_text(file, &limits()).unwrap_err();
            assert!(matches!(e, ImageInputError::Malformed(_)), "case {i}: {e}");
        }
        // A chunk length past the end of the file.
        let mut long = png_of(&[ihdr(1, 1, 8, 0)]);
        long.extend_from_slice(&0x7000_0000u32.to_be_bytes());
        long.extend_from_slice(b"tEXt");
        assert!(matches!(
            read_text(&long, &limits()),
            Err(ImageInputError::Malformed(_))
        ));
        assert!(matches!(
            read_text(b"hello", &limits()),
            Err(ImageInputError::Unsupported(_))
        ));
    }

    #[test]
    fn our_own_pngs_round_trip_text_and_pixels() {
        for prompt in ["a cat", "日本語 prompt 🎉"] {
            let image = small_image(&format!("{prompt}\nSteps: 20, Sampler: Euler a, Seed: 1"));
            let bytes = encode_png(&image).unwrap();
            let text = read_text(&bytes, &limits()).unwrap();
            assert_eq!(text.parameters(), Some(image.infotext.as_str()));
            assert_eq!(text.others().count(), 0);
            let decoded = super::super::decode_rgb(&bytes, &limits()).unwrap();
            assert_eq!((decoded.width, decoded.height), (3, 2));
            assert_eq!(decoded.rgb, image.rgb);
        }
    }

    #[test]
    fn itxt_ztxt_and_other_keywords_are_read() {
        let compressed = miniz_oxide::deflate::compress_to_vec_zlib("ünï 🎉".as_bytes(), 6);
        let mut itxt_z = b"parameters\0\x01\x00en\0\0".to_vec();
        itxt_z.extend_from_slice(&compressed);
        let ztxt = {
            let mut d = b"Comment\0\0".to_vec();
            d.extend_from_slice(&miniz_oxide::deflate::compress_to_vec_zlib(b"caf\xe9", 6));
            d
        };
        let file = png_of(&[
            ihdr(1, 1, 8, 0),
            chunk(b"tEXt", b"Software\0sdserve"),
            chunk(b"iTXt", &itxt_z),
            chunk(b"zTXt", &ztxt),
            chunk(b"iTXt", b"parameters\0\0\0\0\0second"),
            chunk(b"IEND", &[]),
            b"trailing bytes after IEND are ignored".to_vec(),
        ]);
        let text = read_text(&file, &limits()).unwrap();
        assert_eq!(text.parameters(), Some("ünï 🎉"));
        let others: Vec<(&str, &str)> = text
            .others()
            .map(|c| (c.keyword.as_str(), c.text.as_str()))
            .collect();
        assert_eq!(others, [("Software", "sdserve"), ("Comment", "café")]);
        assert_eq!(text.chunks.len(), 4);
    }
}
