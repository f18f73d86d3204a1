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
use crate::engine_api::{image_input, ImageLimits};
use crate::error::{ApiError, Rejection};
use crate::extract::parse_json;
use crate::state::AppState;
use crate::validation::ValidationError;

/// `POST /sdapi/v1/png-info` body.
#[derive(Deserialize, ToSchema)]
pub struct PngInfoRequest {
    /// Base64 PNG, optionally as a `data:image/png;base64,` URL. A JPEG is
    /// accepted and has no parameters; a malformed image is a 422, one over the
    /// engine's default `ImageLimits` (dimensions, text size, chunk count) a 413.
    pub image: String,
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

/// Parses an A1111 infotext into its keys.
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
    let text = request.image.trim();
    let b64 = match text.split_once(";base64,") {
        Some((prefix, data)) if prefix.starts_with("data:") => data,
        _ => text,
    };
    let mut info = String::new();
    let mut items = serde_json::Map::new();
    if !b64.is_empty() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| {
                ApiError::from(ValidationError::Invalid {
                    field: "image",
                    message: format!("not valid base64: {e}"),
                })
            })?;
        let text = image_input::read_text(&bytes, &ImageLimits::default()).map_err(|error| {
            ApiError::InvalidImage {
                field: "image",
                error,
            }
        })?;
        info = text.parameters().unwrap_or_default().to_string();
        for chunk in text.others() {
            // PIL keeps the last chunk of a keyword; so does this map.
            items.insert(chunk.keyword.clone(), chunk.text.clone().into());
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
        let only_prompt = parse_infotext("just words");
        assert_eq!(only_prompt["Prompt"], "just words");
    }
}
