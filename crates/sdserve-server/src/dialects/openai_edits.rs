//! `POST /v1/images/edits`: OpenAI's image edit, so `client.images.edit`
//! works. The body is multipart (`image`, optional `mask`, `prompt`, `n`,
//! `size`, `response_format`, and the same extensions as generations). As
//! OpenAI defines it, the fully transparent pixels of `mask` (or, without a
//! mask, of `image`) are what gets edited: the engine inpaints them. An image
//! with no transparency and no mask is edited as a whole (image-to-image).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use utoipa::ToSchema;

use super::images;
use super::openai::{
    output_encoding, parse_size, run, ImagesResponse, OpenAi, OpenAiErrors, OPENAI_FIELDS,
    OPENAI_MODEL_NAMES,
};
use crate::engine_api::ImageToImage;
use crate::error::{ApiError, Rejection};
use crate::extract::{read_body, Caller};
use crate::image_output::OutputEncoding;
use crate::state::AppState;
use crate::validation::{InitSpec, JobSpec, ValidationError};

/// The multipart form of `POST /v1/images/edits` (documented shape; the
/// handler reads the parts itself).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ImageEditForm {
    /// The PNG (or JPEG) to edit; `image[]` (one) is accepted too.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    /// PNG whose fully transparent pixels mark what to edit; same size as `image`.
    #[schema(value_type = Option<String>, format = Binary)]
    mask: Option<Vec<u8>>,
    /// What the edited image should show.
    prompt: String,
    /// Model id (as for generations).
    model: Option<String>,
    /// Number of images.
    n: Option<i64>,
    /// `WIDTHxHEIGHT` or `auto` (default: the image's size).
    size: Option<String>,
    /// `b64_json` (default) or `url`.
    response_format: Option<String>,
    /// `png` (default), `jpeg` or `webp`.
    output_format: Option<String>,
    /// JPEG quality 0-100 (100 for the lossless formats).
    output_compression: Option<i64>,
    /// Extension: fraction of the steps run from the image, (0, 1] (default 1
    /// with transparency, 0.8 without).
    strength: Option<f64>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
    ValidationError::Invalid {
        field,
        message: message.into(),
    }
    .into()
}

/// The parts of an edit request, as read from the form.
#[derive(Default)]
struct EditForm {
    image: Option<Bytes>,
    mask: Option<Bytes>,
    prompt: Option<String>,
    model: Option<String>,
    n: Option<i64>,
    size: Option<String>,
    response_format: Option<String>,
    negative_prompt: Option<String>,
    seed: Option<u64>,
    steps: Option<i64>,
    cfg_scale: Option<f64>,
    sampler: Option<String>,
    strength: Option<f64>,
    output_format: Option<String>,
    output_compression: Option<i64>,
}

/// Reads every part of the (already size-limited) body. Text fields the
/// edit does not implement are refused by name unless at their default.
async fn read_form(headers: &HeaderMap, body: Bytes) -> Result<EditForm, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        invalid(
            "body",
            "expected multipart/form-data with a boundary (as the OpenAI SDKs send)",
        )
    })?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut form = EditForm::default();
    let bad = |e: multer::Error| invalid("body", format!("malformed multipart body: {e}"));
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field.bytes().await.map_err(bad)?;
        let text = || {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| invalid("body", format!("`{name}` is not UTF-8 text")))
        };
        let number = |field: &'static str| -> Result<f64, ApiError> {
            text()?
                .trim()
                .parse::<f64>()
                .map_err(|_| invalid(field, "must be a number"))
        };
        let whole = |field: &'static str| -> Result<i64, ApiError> {
            let value = number(field)?;
            if value.fract() != 0.0 || value.abs() > 9e15 {
                return Err(invalid(
                    field,
                    format!("must be a whole number, got {value}"),
                ));
            }
            Ok(value as i64)
        };
        match name.as_str() {
            "image" | "image[]" => {
                if form.image.replace(bytes).is_some() {
                    return Err(invalid("image", "only one image can be edited at a time"));
                }
            }
            "mask" => form.mask = Some(bytes),
            "prompt" => form.prompt = Some(text()?),
            "model" => form.model = Some(text()?),
            "n" => form.n = Some(whole("n")?),
            "size" => form.size = Some(text()?),
            "response_format" => form.response_format = Some(text()?),
            "user" => {}
            "negative_prompt" => form.negative_prompt = Some(text()?),
            "seed" => {
                let seed = whole("seed")?;
                form.seed =
                    Some(u64::try_from(seed).map_err(|_| invalid("seed", "must not be negative"))?);
            }
            "steps" => form.steps = Some(whole("steps")?),
            "cfg_scale" => form.cfg_scale = Some(number("cfg_scale")?),
            "sampler" => form.sampler = Some(text()?),
            "strength" => form.strength = Some(number("strength")?),
            "background" => match text()?.as_str() {
                "auto" | "opaque" => {}
                "transparent" => {
                    return Err(ApiError::UnsupportedValue {
                        field: "background",
                        message: "transparent backgrounds are not supported; use auto or opaque"
                            .into(),
                    })
                }
                other => {
                    return Err(invalid(
                        "background",
                        format!("must be auto, opaque or transparent, got {other:?}"),
                    ))
                }
            },
            "stream" => {
                if text()? != "false" {
                    return Err(ApiError::UnsupportedValue {
                        field: "stream",
                        message: "streaming partial images is not supported; send stream: false"
                            .into(),
                    });
                }
            }
            "output_format" => form.output_format = Some(text()?),
            "output_compression" => form.output_compression = Some(whole("output_compression")?),
            "quality" => match text()?.as_str() {
                "auto" | "standard" => {}
                other => {
                    return Err(invalid(
                        "quality",
                        format!("{other:?} is not supported (auto or standard)"),
                    ))
                }
            },
            other => {
                return Err(ValidationError::Invalid {
                    field: "body",
                    message: format!("unknown or unsupported field `{other}`"),
                }
                .into())
            }
        }
    }
    Ok(form)
}

impl EditForm {
    fn encoding(&self) -> Result<OutputEncoding, ApiError> {
        output_encoding(self.output_format.as_deref(), self.output_compression)
    }

    fn to_spec(&self) -> Result<JobSpec, ApiError> {
        match self.response_format.as_deref() {
            None | Some("b64_json") | Some("url") => {}
            Some(other) => {
                return Err(invalid(
                    "response_format",
                    format!("must be b64_json or url, got {other:?}"),
                ))
            }
        }
        let prompt = self
            .prompt
            .clone()
            .ok_or_else(|| invalid("prompt", "is required"))?;
        let image = self
            .image
            .as_ref()
            .ok_or_else(|| invalid("image", "is required"))?;
        let (image, image_alpha) = images::decode_with_alpha("image", image)?;
        let alpha = match &self.mask {
            Some(mask) => {
                let (mask_image, alpha) = images::decode_with_alpha("mask", mask)?;
                if (mask_image.width, mask_image.height) != (image.width, image.height) {
                    return Err(invalid(
                        "mask",
                        format!(
                            "is {}x{} but the image is {}x{}; they must be the same size",
                            mask_image.width, mask_image.height, image.width, image.height
                        ),
                    ));
                }
                Some(alpha.ok_or_else(|| {
                    invalid(
                        "mask",
                        "has no alpha channel; its transparent pixels mark the edit",
                    )
                })?)
            }
            None => image_alpha,
        };
        // Transparency marks the edit; none at all edits the whole image.
        let mask = alpha
            .filter(|a| a.contains(&0))
            .map(|a| Arc::new(images::mask_from_alpha(image.width, image.height, &a)));
        let size = match &self.size {
            Some(s) => parse_size(s)?,
            None => None,
        };
        // An opaque image is edited whole, at diffusers' img2img default.
        let default_strength = ImageToImage::default_strength(mask.is_some());
        Ok(JobSpec {
            negative_prompt: self.negative_prompt.clone().unwrap_or_default(),
            seed: self.seed,
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            sampler: self.sampler.clone(),
            width: size.map(|s| s.0),
            height: size.map(|s| s.1),
            batch_size: self.n,
            // OpenAI's own model names mean the default model.
            model: self
                .model
                .clone()
                .filter(|m| !OPENAI_MODEL_NAMES.contains(&m.as_str())),
            init: Some(InitSpec {
                image: Arc::new(image),
                mask,
                strength: self.strength,
                default_strength,
                strength_field: "strength",
                resize_latents: false,
                overlay: None,
                paste: None,
            }),
            ..JobSpec::new(prompt, OPENAI_FIELDS)
        })
    }
}

/// Edit an image with a prompt (OpenAI compatible).
#[utoipa::path(post, path = "/v1/images/edits", tag = "openai",
    request_body(content = ImageEditForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "Images", body = ImagesResponse), OpenAiErrors))]
pub async fn edits(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ImagesResponse>, Rejection<OpenAi>> {
    let body = read_body(body, state.config.limits.max_body_bytes)?;
    let form = read_form(&headers, body).await;
    let as_url = matches!(&form, Ok(f) if f.response_format.as_deref() == Some("url"));
    let (encoding, spec) = match form {
        Ok(f) => match f.encoding() {
            Ok(encoding) => (encoding, f.to_spec()),
            Err(e) => (OutputEncoding::PNG, Err(e)),
        },
        Err(e) => (OutputEncoding::PNG, Err(e)),
    };
    run(&state, &caller, &headers, spec, as_url, encoding).await
}
