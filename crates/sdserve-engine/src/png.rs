//! PNG output with an AUTOMATIC1111-style `parameters` text chunk, so A1111's
//! "PNG Info" tab and image sites read back the settings of an image. Reading
//! untrusted PNGs is `image_input`'s job; the readers here are its thin wrappers.

use crate::error::{EngineError, Result};
use crate::image_input::{self, ImageLimits};
use crate::request::{GenerateRequest, GeneratedImage};

pub use crate::image_input::PARAMETERS_KEY;

/// How an infotext names the model, as A1111 writes it: `Model hash` (its
/// short hash) and `Model` (its name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelLabel {
    /// The model's display name.
    pub name: String,
    /// A1111's short hash: the first 10 hex digits of the model's sha256
    /// (omitted from the infotext when unknown).
    pub short_hash: Option<String>,
}

impl ModelLabel {
    /// A label with a name and no hash.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            short_hash: None,
        }
    }
}

/// The version an infotext names (`Version: sdserve 0.1.0`).
pub const VERSION: &str = concat!("sdserve ", env!("CARGO_PKG_VERSION"));

/// A1111's infotext: prompt, optional negative prompt, then the settings line
/// (`Sampler` and `Schedule type` split as A1111 1.9+ writes them:
/// `DPM++ 2M` + `Karras` rather than the older `DPM++ 2M Karras`, so that
/// A1111's PNG Info and "send to txt2img" pick both back up) ending with `Model hash`, `Model` and `Version`. The
/// name loses its `,` and `:` (as A1111 did before it quoted values): every
/// infotext parser splits the settings line on them.
pub fn infotext(request: &GenerateRequest, seed: u64, model: &ModelLabel) -> String {
    let mut text = request.prompt.clone();
    // A1111 keeps `<lora:..>` tags in the prompt it writes; ours were taken
    // out (or came as a list), so they are written back after it.
    for lora in &request.loras {
        text.push(' ');
        text.push_str(&crate::extra_networks::lora_tag(lora));
    }
    if !request.negative_prompt.is_empty() {
        text.push_str("\nNegative prompt: ");
        text.push_str(&request.negative_prompt);
    }
    let (sampler, schedule) = (request.sampler.label(), request.schedule_type.label());
    text.push_str(&format!(
        "\nSteps: {}, Sampler: {sampler}, Schedule type: {schedule}, CFG scale: {}, Seed: {}, Size: {}x{}",
        request.steps,
        request.cfg_scale,
        seed,
        request.width,
        request.height,
    ));
    if let Some(hash) = &model.short_hash {
        text.push_str(&format!(", Model hash: {hash}"));
    }
    let name: String = model
        .name
        .chars()
        .filter(|c| !matches!(c, ',' | ':'))
        .collect();
    text.push_str(&format!(", Model: {name}, Version: {VERSION}"));
    text
}

/// `infotext` with `settings` added to its settings line, before `Version`
/// (where A1111 puts them).
pub fn with_settings(infotext: &str, settings: &[(&str, String)]) -> String {
    if settings.is_empty() {
        return infotext.to_string();
    }
    let added: String = settings
        .iter()
        .map(|(key, value)| format!(", {key}: {value}"))
        .collect();
    match infotext.rfind(", Version: ") {
        Some(at) => format!("{}{added}{}", &infotext[..at], &infotext[at..]),
        None => format!("{infotext}{added}"),
    }
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
    use crate::samplers::{SamplerId, ScheduleType};

    fn request(prompt: &str, negative: &str) -> GenerateRequest {
        GenerateRequest {
            prompt: prompt.into(),
            negative_prompt: negative.into(),
            seed: Some(42),
            steps: 20,
            cfg_scale: 7.0,
            sampler: SamplerId::EulerAncestral,
            schedule_type: ScheduleType::Automatic,
            width: 512,
            height: 512,
            batch_size: 1,
            seed_per_image: false,
            hires: None,
            prompt_syntax: Default::default(),
            clip_skip: 0,
            loras: Vec::new(),
            init: None,
        }
    }

    #[test]
    fn infotext_has_a1111_layout() {
        let label = ModelLabel {
            name: "tiny".into(),
            short_hash: Some("0123456789".into()),
        };
        let text = infotext(&request("a cat", "blurry"), 42, &label);
        assert_eq!(
            text,
            format!("a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: 0123456789, Model: tiny, Version: {VERSION}")
        );
        let mut r = request("a cat", "");
        r.cfg_scale = 7.5;
        assert_eq!(
            infotext(&r, 1, &ModelLabel::named("m")),
            format!("a cat\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: m, Version: {VERSION}")
        );
        // A1111 1.9+ splits a scheduled sampler's name: `DPM++ 2M Karras` is
        // written as `Sampler: DPM++ 2M, Schedule type: Karras`.
        r.sampler = SamplerId::DpmPp2m;
        r.schedule_type = ScheduleType::Karras;
        let text = infotext(&r, 1, &ModelLabel::named("m"));
        assert!(
            text.contains("\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5,"),
            "{text}"
        );
        r.sampler = SamplerId::DpmPp3mSde;
        r.schedule_type = ScheduleType::SgmUniform;
        let text = infotext(&r, 1, &ModelLabel::named("m"));
        assert!(
            text.contains("Sampler: DPM++ 3M SDE, Schedule type: SGM Uniform,"),
            "{text}"
        );
    }

    #[test]
    fn infotext_model_names_lose_commas_and_colons() {
        let text = infotext(&request("a", ""), 1, &ModelLabel::named("sd: v1, pruned"));
        assert!(
            text.ends_with(&format!(", Model: sd v1 pruned, Version: {VERSION}")),
            "{text}"
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
                infotext: infotext(&request(prompt, ""), 1, &ModelLabel::named("m")),
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
