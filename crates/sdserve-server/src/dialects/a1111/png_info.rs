//! `POST /sdapi/v1/png-info`: reads the A1111 `parameters` text chunk of a PNG
//! (ours or A1111's) and parses it the way A1111 does: prompt, negative prompt,
//! then a `Key: value, Key: value` line. The image is read by the engine's
//! bounded `image_input` reader, so a hostile upload costs at most its caps.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{A1111Errors, A1111};
use crate::engine_api::{image_input, ImageInputError, ImageLimits};
use crate::error::{ApiError, Rejection};
use crate::extract::parse_json;
use crate::state::AppState;
use crate::validation::ValidationError;

/// What `image` accepts, exactly as [`png_info`] reads it: optional ASCII
/// whitespace around standard padded base64 (canonical: unused bits zero),
/// optionally behind a `data:<type>;base64,` prefix. Empty means no image.
pub const IMAGE_PATTERN: &str = r"^[\t\n\f\r ]*(data:[^,]*;base64,)?([A-Za-z0-9+/]{4})*([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?[\t\n\f\r ]*$";

/// `POST /sdapi/v1/png-info` body.
#[derive(Deserialize, ToSchema)]
pub struct PngInfoRequest {
    /// Base64 PNG, optionally as a `data:image/png;base64,` URL ("" for none). A
    /// JPEG, or bytes of no image format, have no parameters; a malformed PNG or
    /// JPEG is a 422, one over the engine's default `ImageLimits` (dimensions,
    /// text size, chunk count) a 413.
    #[schema(
        pattern = r"^[\t\n\f\r ]*(data:[^,]*;base64,)?([A-Za-z0-9+/]{4})*([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?[\t\n\f\r ]*$"
    )]
    pub image: String,
}

fn invalid_image(message: String) -> ApiError {
    ValidationError::Invalid {
        field: "image",
        message,
    }
    .into()
}

/// `POST /sdapi/v1/png-info` answer.
#[derive(Serialize, ToSchema)]
pub struct PngInfoResponse {
    /// The raw `parameters` text ("" if none).
    pub info: String,
    /// The other text chunks, keyword to text, as A1111 lists PIL's `info`.
    pub items: serde_json::Map<String, serde_json::Value>,
    /// `info` parsed into keys (`Prompt`, `Negative prompt`, `Steps`, `Seed`...).
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

/// Splits `Key: value, Key: "quoted, value"` into pairs.
fn key_values(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while let Some((key, after)) = rest.split_once(':') {
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((v, tail)) => (v.to_string(), tail.trim_start_matches(',').trim_start()),
                None => (quoted.to_string(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, tail)) => (v.trim().to_string(), tail.trim_start()),
                None => (after.trim().to_string(), ""),
            }
        };
        out.push((key.trim().to_string(), value));
        rest = next;
    }
    out
}

fn typed(value: &str) -> serde_json::Value {
    if let Ok(i) = value.parse::<i64>() {
        return i.into();
    }
    match value.parse::<f64>() {
        Ok(f) if f.is_finite() => f.into(),
        _ => value.into(),
    }
}

/// The schedules older A1111 versions folded into a sampler's name
/// (`DPM++ 2M Karras`, `DPM++ 2M SDE Exponential`); 1.9+ writes them as
/// `Schedule type` instead.
const FOLDED_SCHEDULES: [&str; 2] = ["Karras", "Exponential"];

/// Brings `Sampler` and `Schedule type` to A1111 1.9+'s form, as its own
/// parser does: an old `Sampler: DPM++ 2M Karras` becomes `Sampler: DPM++ 2M`
/// + `Schedule type: Karras`; a sampler with no schedule named is `Automatic`.
fn split_schedule(map: &mut serde_json::Map<String, serde_json::Value>) {
    if map.contains_key("Schedule type") {
        return;
    }
    let Some(sampler) = map
        .get("Sampler")
        .and_then(|v| v.as_str())
        .map(str::to_string)
    else {
        return;
    };
    let folded = FOLDED_SCHEDULES.iter().find_map(|schedule| {
        sampler
            .strip_suffix(schedule)
            .and_then(|name| name.strip_suffix(' '))
            .filter(|name| !name.is_empty())
            .map(|name| (name.to_string(), *schedule))
    });
    let (name, schedule) = folded.unwrap_or((sampler, "Automatic"));
    map.insert("Sampler".into(), name.into());
    map.insert("Schedule type".into(), schedule.into());
}

/// Parses an A1111 infotext into its keys (old and 1.9+ sampler forms alike).
pub fn parse_infotext(text: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut lines: Vec<&str> = text.lines().collect();
    let mut map = serde_json::Map::new();
    let last = lines.last().copied().unwrap_or_default();
    let pairs = key_values(last);
    if pairs.len() >= 3 {
        lines.pop();
        for (k, v) in pairs {
            if k == "Size" {
                if let Some((w, h)) = v.split_once('x') {
                    map.insert("Size-1".into(), typed(w));
                    map.insert("Size-2".into(), typed(h));
                }
            }
            map.insert(k, typed(&v));
        }
        split_schedule(&mut map);
    }
    let mut prompt = Vec::new();
    let mut negative = Vec::new();
    let mut in_negative = false;
    for line in lines {
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            negative.push(rest.trim_start());
        } else if in_negative {
            negative.push(line);
        } else {
            prompt.push(line);
        }
    }
    map.insert("Prompt".into(), prompt.join("\n").into());
    map.insert("Negative prompt".into(), negative.join("\n").into());
    map
}

/// Read the generation parameters stored in a PNG.
#[utoipa::path(post, path = "/sdapi/v1/png-info", tag = "a1111", request_body = PngInfoRequest,
    responses((status = 200, description = "Parameters", body = PngInfoResponse), A1111Errors))]
pub async fn png_info(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PngInfoResponse>, Rejection<A1111>> {
    let request: PngInfoRequest = parse_json(body, state.config.limits.max_body_bytes)?;
    let b64 = crate::dialects::images::base64_part("image", &request.image)?;
    let mut info = String::new();
    let mut items = serde_json::Map::new();
    if !b64.is_empty() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| invalid_image(format!("not valid base64: {e}")))?;
        match image_input::read_text(&bytes, &ImageLimits::default()) {
            Ok(text) => {
                info = text.parameters().unwrap_or_default().to_string();
                for chunk in text.others() {
                    // PIL keeps the last chunk of a keyword; so does this map.
                    items.insert(chunk.keyword.clone(), chunk.text.clone().into());
                }
            }
            // Bytes of no image format carry no parameters: nothing to read, as
            // for "" (any base64 is valid here, so the spec and the answer agree).
            Err(ImageInputError::Unsupported(_)) => {}
            Err(error) => {
                return Err(ApiError::InvalidImage {
                    field: "image",
                    error,
                }
                .into())
            }
        }
    }
    let parameters = if info.is_empty() {
        Default::default()
    } else {
        parse_infotext(&info)
    };
    Ok(Json(PngInfoResponse {
        info,
        items,
        parameters,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a1111_infotext() {
        let p = parse_infotext(
            "a cat, best\nNegative prompt: dog\nSteps: 4, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 64x32, Model: \"tiny, sd\"",
        );
        assert_eq!(p["Prompt"], "a cat, best");
        assert_eq!(p["Negative prompt"], "dog");
        assert_eq!(p["Steps"], 4);
        assert_eq!(p["Sampler"], "Euler a");
        assert_eq!(p["CFG scale"], 7.5);
        assert_eq!(p["Seed"], 42);
        assert_eq!(p["Size-1"], 64);
        assert_eq!(p["Size-2"], 32);
        assert_eq!(p["Model"], "tiny, sd");
        assert_eq!(p["Schedule type"], "Automatic");
        let only_prompt = parse_infotext("just words");
        assert_eq!(only_prompt["Prompt"], "just words");
    }

    #[test]
    fn reads_old_and_new_sampler_forms_alike() {
        let new = parse_infotext(
            "a\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 8x8",
        );
        let old = parse_infotext(
            "a\nSteps: 4, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 8x8",
        );
        assert_eq!(new, old);
        assert_eq!(new["Sampler"], "DPM++ 2M");
        assert_eq!(new["Schedule type"], "Karras");
        let sde = parse_infotext("a\nSteps: 4, Sampler: DPM++ 2M SDE Exponential, Seed: 1");
        assert_eq!(
            (&sde["Sampler"], &sde["Schedule type"]),
            (&"DPM++ 2M SDE".into(), &"Exponential".into())
        );
        // A name that is only a schedule is not split.
        let odd = parse_infotext("a\nSteps: 4, Sampler: Karras, Seed: 1");
        assert_eq!(
            (&odd["Sampler"], &odd["Schedule type"]),
            (&"Karras".into(), &"Automatic".into())
        );
    }

    #[test]
    fn image_pattern_is_what_the_parser_takes() {
        let pattern = regex::Regex::new(IMAGE_PATTERN).unwrap();
        let accepted = |image: &str| {
            crate::dialects::images::base64_part("image", image).is_ok_and(|b64| {
                b64.is_empty()
                    || base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .is_ok()
            })
        };
        for image in [
            "",
            "  ",
            "QQ==",
            "QUI=",
            "QUJD",
            " QUJD\n",
            "data:image/png;base64,QUJD",
            "data:;base64,",
            "data:image/png;base64,",
            "\tdata:x;y;base64,QQ==\r\n",
            "QR==",
            "QUJ=",
            "QQ",
            "QQ=",
            "Q===",
            "QUJDRA",
            "@@@",
            "data:image/png,QUJD",
            "data:a,b;base64,QUJD",
            "data:image/png;base64,QUJD,",
            "xdata:image/png;base64,QUJD",
            "QU JD",
            "\u{a0}QUJD",
            "\u{feff}QUJD",
            "QUJD\u{b}",
        ] {
            assert_eq!(accepted(image), pattern.is_match(image), "{image:?}");
        }
    }
}
