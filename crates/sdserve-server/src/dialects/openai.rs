//! The OpenAI images dialect: `POST /v1/images/generations` and `GET /v1/models`,
//! so the OpenAI SDKs work with `base_url` pointed here. Extension fields
//! (`negative_prompt`, `seed`, `steps`, `cfg_scale`, `sampler`) pass through the
//! SDKs' `extra_body`. OpenAI's own model names (`dall-e-2`, `dall-e-3`,
//! `gpt-image-1`) name the default model, since clients such as Open WebUI send
//! them unasked; `output_format` + `output_compression` re-encode the stored PNG
//! (`image_output.rs`); what cannot be honoured (`background: "transparent"`,
//! `stream: true`) is a 400 naming the field. Unknown fields are ignored.
//! Errors are `{"error": {"message", "type", "param", "code"}}`. Synchronous: a
//! client that disconnects cancels its job.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use axum::Router;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoResponses, ToSchema};

use super::Dialect;
use crate::error::{to_json, ApiError, ErrorShape, Rejection};
use crate::extract::{parse_id, parse_json, Caller};
pub use crate::image_output::output_encoding;
use crate::image_output::OutputEncoding;
use crate::jobs::job::unix_now;
use crate::jobs::{ImageId, JobHandle, Keep};
use crate::signing::SIGNED_LINK_TTL_SECS;
use crate::state::AppState;
use crate::validation::{FieldNames, JobSpec, ValidationError};

/// Error shape of the OpenAI dialect.
pub struct OpenAi;

/// The inner error object.
#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    /// Human-readable message.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`, `server_error`...
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending parameter.
    pub param: Option<String>,
    /// Machine code (`queue_full`, `invalid_api_key`...).
    pub code: Option<String>,
}

/// `{"error": {...}}`.
#[derive(Serialize, ToSchema)]
pub struct OpenAiError {
    /// The error.
    pub error: OpenAiErrorDetail,
}

impl ErrorShape for OpenAi {
    fn body(error: &ApiError) -> serde_json::Value {
        let status = error.status();
        let kind = match error {
            ApiError::Unauthorized { .. } => "authentication_error",
            ApiError::QueueFull { .. } => "rate_limit_error",
            ApiError::NotReady | ApiError::Draining => "service_unavailable",
            ApiError::JobNotFound(_) | ApiError::ImageNotFound(_) | ApiError::NoRoute(_) => {
                "not_found_error"
            }
            _ if status.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        let code = match error {
            ApiError::Unauthorized { .. } => "invalid_api_key",
            e => e.code(),
        };
        to_json(&OpenAiError {
            error: OpenAiErrorDetail {
                message: error.to_string(),
                kind: kind.into(),
                param: error.field().map(str::to_string),
                code: Some(code.into()),
            },
        })
    }
}

/// Error responses of the OpenAI routes (statuses decided in `error.rs`).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum OpenAiErrors {
    /// Malformed JSON, or a value sdserve cannot honour (`background:
    /// "transparent"`, `stream: true`, a compression level for a lossless format).
    #[response(status = 400)]
    BadRequest(OpenAiError),
    /// Invalid API key.
    #[response(status = 401)]
    Unauthorized(OpenAiError),
    /// A signed image link that expired or was altered.
    #[response(status = 403)]
    Forbidden(OpenAiError),
    /// No such route.
    #[response(status = 404)]
    NotFound(OpenAiError),
    /// Wrong method for the route.
    #[response(status = 405)]
    MethodNotAllowed(OpenAiError),
    /// The job was cancelled.
    #[response(status = 409)]
    Conflict(OpenAiError),
    /// The body did not arrive within `--body-read-timeout`.
    #[response(status = 408)]
    RequestTimeout(OpenAiError),
    /// Body too large.
    #[response(status = 413)]
    TooLarge(OpenAiError),
    /// A parameter breaks a rule; `param` names it.
    #[response(status = 422)]
    Unprocessable(OpenAiError),
    /// Queue full; retry after `Retry-After` seconds.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    TooManyRequests(OpenAiError),
    /// Generation failed on the server.
    #[response(status = 500)]
    ServerError(OpenAiError),
    /// Model loading or server draining.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(OpenAiError),
    /// The job's images or record could not be written, or the disk is below `--min-free-disk`.
    #[response(status = 507)]
    InsufficientStorage(OpenAiError),
}

/// How the OpenAI dialect names the shared fields.
pub(crate) const OPENAI_FIELDS: FieldNames = FieldNames {
    prompt: "prompt",
    negative_prompt: "negative_prompt",
    steps: "steps",
    cfg_scale: "cfg_scale",
    sampler: "sampler",
    schedule_type: "schedule_type",
    width: "size",
    height: "size",
    batch_size: "n",
    model: "model",
};

/// `POST /v1/images/generations` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ImageGenerationRequest {
    /// Prompt.
    #[schema(max_length = 8192)]
    pub prompt: String,
    /// Model id (see `GET /v1/models`; A1111's titles and hashes work too);
    /// default: the server's default model, which OpenAI's names `dall-e-2`,
    /// `dall-e-3` and `gpt-image-1` also name. An unknown one is a 404.
    pub model: Option<String>,
    /// Number of images.
    #[schema(minimum = 1, maximum = 8)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub n: Option<i64>,
    /// `WIDTHxHEIGHT` such as `512x512` (or `auto` for the model's native size);
    /// the pattern lists the sides the server's limits allow.
    #[schema(pattern = "^(auto|[1-9][0-9]*x[1-9][0-9]*)$")]
    pub size: Option<String>,
    /// `b64_json` (default) or `url`.
    pub response_format: Option<String>,
    /// End-user id (logged, not used).
    pub user: Option<String>,
    /// `png` (default), `jpeg` or `webp` (lossless), for `b64_json` and `url` alike.
    pub output_format: Option<String>,
    /// Compression, 0 to 100 (default 100): the JPEG quality (0 is taken as 1).
    /// PNG and WebP are lossless here, so they take only 100.
    #[schema(minimum = 0, maximum = 100)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub output_compression: Option<i64>,
    /// `auto` or `opaque` (what is generated); `transparent` is a 400.
    pub background: Option<String>,
    /// `false`; `true` (partial images as server-sent events) is a 400.
    pub stream: Option<bool>,
    /// Extension: negative prompt.
    #[schema(max_length = 8192)]
    pub negative_prompt: Option<String>,
    /// Extension: seed (random if omitted).
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_u64")]
    pub seed: Option<u64>,
    /// Extension: denoising steps.
    #[schema(minimum = 1, maximum = 150)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub steps: Option<i64>,
    /// Extension: guidance scale, 0 to 30.
    #[schema(minimum = 0, maximum = 30)]
    pub cfg_scale: Option<f64>,
    /// Extension: sampler id or A1111 label.
    pub sampler: Option<String>,
}

fn invalid(field: &'static str, message: String) -> ApiError {
    ValidationError::Invalid { field, message }.into()
}

/// One side of a `size`: decimal digits without a sign, spaces or leading zero.
fn size_side(text: &str) -> Option<i64> {
    let plain = !text.starts_with('0') && text.bytes().all(|b| b.is_ascii_digit());
    plain.then(|| text.parse().ok()).flatten()
}

/// `auto`, or `WIDTHxHEIGHT` spelled as [`size_pattern`] spells it; the gate
/// then checks each side against the limits.
pub(crate) fn parse_size(size: &str) -> Result<Option<(i64, i64)>, ApiError> {
    if size == "auto" {
        return Ok(None);
    }
    let parsed = size
        .split_once('x')
        .and_then(|(w, h)| Some((size_side(w)?, size_side(h)?)));
    match parsed {
        Some(pair) => Ok(Some(pair)),
        None => Err(invalid(
            "size",
            format!("expected WIDTHxHEIGHT such as 512x512, got {size:?}"),
        )),
    }
}

/// The `size` values the server accepts, as the anchored pattern the OpenAPI
/// document gives: `auto`, or `WIDTHxHEIGHT` where each side is a multiple of
/// `multiple` (the model's VAE factor) from `multiple` up to its limit. The
/// `--max-pixels` limit on width × height is beyond a pattern; the schema's
/// description states it.
pub fn size_pattern(max_width: usize, max_height: usize, multiple: usize) -> String {
    let multiple = multiple.max(1);
    let sides = |max: usize| {
        (1..=max / multiple)
            .map(|i| (i * multiple).to_string())
            .collect::<Vec<_>>()
            .join("|")
    };
    let (widths, heights) = (sides(max_width), sides(max_height));
    if widths.is_empty() || heights.is_empty() {
        return "^auto$".into();
    }
    format!("^(auto|({widths})x({heights}))$")
}

/// OpenAI's own model names, which name the server's default model: clients
/// send them without asking the user (Open WebUI's default is `dall-e-2`).
pub const OPENAI_MODEL_NAMES: [&str; 3] = ["dall-e-2", "dall-e-3", "gpt-image-1"];

fn unsupported(field: &'static str, message: String) -> ApiError {
    ApiError::UnsupportedValue { field, message }
}

impl ImageGenerationRequest {
    /// What this request asks of the response (format, and refusals of what
    /// cannot be honoured).
    fn encoding(&self) -> Result<OutputEncoding, ApiError> {
        match self.background.as_deref() {
            None | Some("auto") | Some("opaque") => {}
            Some("transparent") => {
                return Err(unsupported(
                    "background",
                    "transparent backgrounds are not supported; use auto or opaque".into(),
                ))
            }
            Some(other) => {
                return Err(invalid(
                    "background",
                    format!("must be auto, opaque or transparent, got {other:?}"),
                ))
            }
        }
        if self.stream == Some(true) {
            return Err(unsupported(
                "stream",
                "streaming partial images is not supported; send stream: false".into(),
            ));
        }
        output_encoding(self.output_format.as_deref(), self.output_compression)
    }

    fn to_spec(&self) -> Result<JobSpec, ApiError> {
        match self.response_format.as_deref() {
            None | Some("b64_json") | Some("url") => {}
            Some(other) => {
                return Err(invalid(
                    "response_format",
                    format!("must be b64_json or url, got {other:?}"),
                ));
            }
        }
        let size = match &self.size {
            Some(s) => parse_size(s)?,
            None => None,
        };
        Ok(JobSpec {
            negative_prompt: self.negative_prompt.clone().unwrap_or_default(),
            seed: self.seed,
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            sampler: self.sampler.clone(),
            width: size.map(|s| s.0),
            height: size.map(|s| s.1),
            batch_size: self.n,
            model: self
                .model
                .clone()
                .filter(|m| !OPENAI_MODEL_NAMES.contains(&m.as_str())),
            ..JobSpec::new(self.prompt.clone(), OPENAI_FIELDS)
        })
    }
}

/// One generated image: `b64_json` or `url`.
#[derive(Serialize, ToSchema)]
pub struct ImageData {
    /// Base64 image in `output_format` (with `response_format: b64_json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    /// Absolute URL of the image in `output_format` (with `response_format: url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The prompt used (unchanged).
    pub revised_prompt: String,
    /// Extension: the image's seed.
    pub seed: u64,
}

/// `POST /v1/images/generations` answer.
#[derive(Serialize, ToSchema)]
pub struct ImagesResponse {
    /// Unix time of creation.
    pub created: u64,
    /// The images.
    pub data: Vec<ImageData>,
}

/// A model of `GET /v1/models`.
#[derive(Serialize, ToSchema)]
pub struct OpenAiModel {
    /// Model id, what `model` takes.
    pub id: String,
    /// `model`.
    pub object: String,
    /// Unix time (server start).
    pub created: u64,
    /// `sdserve`.
    pub owned_by: String,
}

/// `GET /v1/models` answer.
#[derive(Serialize, ToSchema)]
pub struct ModelsResponse {
    /// `list`.
    pub object: String,
    /// The models.
    pub data: Vec<OpenAiModel>,
}

/// The OpenAI routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/images/generations", post(generations))
        .route("/v1/images/edits", post(super::openai_edits::edits))
        .route("/v1/images/files/{id}", get(image_file))
        .route("/v1/models", get(models))
}

/// Generate images (OpenAI compatible).
#[utoipa::path(post, path = "/v1/images/generations", tag = "openai",
    request_body = ImageGenerationRequest,
    responses((status = 200, description = "Images", body = ImagesResponse), OpenAiErrors))]
pub async fn generations(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ImagesResponse>, Rejection<OpenAi>> {
    let request = parse_json::<ImageGenerationRequest>(body, state.config.limits.max_body_bytes);
    let as_url = matches!(&request, Ok(r) if r.response_format.as_deref() == Some("url"));
    // What cannot be honoured is refused before the job is queued.
    let (encoding, spec) = match request {
        Ok(r) => match r.encoding() {
            Ok(encoding) => (encoding, r.to_spec()),
            Err(e) => (OutputEncoding::PNG, Err(e)),
        },
        Err(e) => (OutputEncoding::PNG, Err(e)),
    };
    run(&state, &caller, &headers, spec, as_url, encoding).await
}

/// Queues an OpenAI job, waits for it and answers with its images (shared
/// by generations and edits).
pub(crate) async fn run(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    spec: Result<JobSpec, ApiError>,
    as_url: bool,
    encoding: OutputEncoding,
) -> Result<Json<ImagesResponse>, Rejection<OpenAi>> {
    // b64_json carries the images in the response, and nothing names their
    // files afterwards: they are removed once it is built. `url` keeps them.
    let keep = if as_url {
        Keep::Stored
    } else {
        Keep::ResponseOnly
    };
    let handle = state
        .submit_with(Dialect::OpenAi, caller, spec, keep)
        .await?
        .cancel_on_drop();
    let response = respond(state, &handle, as_url, encoding, headers).await;
    if keep == Keep::ResponseOnly {
        state.discard(handle.snapshot()).await;
    }
    response.map(Json)
}

/// The stored PNGs of a job re-encoded as `encoding` (off the async runtime:
/// JPEG and WebP encoding is CPU work).
pub async fn encode_all(
    pngs: Vec<Vec<u8>>,
    encoding: OutputEncoding,
) -> Result<Vec<Vec<u8>>, ApiError> {
    if encoding == OutputEncoding::PNG {
        return Ok(pngs);
    }
    tokio::task::spawn_blocking(move || {
        pngs.iter()
            .map(|png| encoding.encode(png))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("encoding task failed: {e}")))?
    .map_err(|e| ApiError::Internal(format!("could not encode the image: {e}")))
}

/// The images of a finished OpenAI job, as the response carries them.
async fn respond(
    state: &AppState,
    handle: &JobHandle,
    as_url: bool,
    encoding: OutputEncoding,
    headers: &HeaderMap,
) -> Result<ImagesResponse, Rejection<OpenAi>> {
    let snapshot = state.wait_success(handle).await?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let mut data = Vec::with_capacity(snapshot.images.len());
    let files = if as_url {
        Vec::new()
    } else {
        encode_all(state.job_pngs(&snapshot).await?, encoding).await?
    };
    let now = unix_now() as u64;
    let token = (encoding != OutputEncoding::PNG).then(|| encoding.token());
    for (i, image) in snapshot.images.iter().enumerate() {
        let path = state
            .signer
            .link_as(image.id, now, SIGNED_LINK_TTL_SECS, token.as_deref());
        data.push(ImageData {
            b64_json: files
                .get(i)
                .map(|file| base64::engine::general_purpose::STANDARD.encode(file)),
            url: as_url.then(|| match &host {
                Some(host) => format!("http://{host}{path}"),
                None => path.clone(),
            }),
            revised_prompt: snapshot.params.prompt.clone(),
            seed: image.seed,
        });
    }
    Ok(ImagesResponse {
        created: unix_now() as u64,
        data,
    })
}

/// The served models (`--models-dir` and `--model`), by name.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "Models", body = ModelsResponse), OpenAiErrors))]
pub async fn models(
    State(state): State<Arc<AppState>>,
) -> Result<Json<ModelsResponse>, Rejection<OpenAi>> {
    let models = state.models()?;
    Ok(Json(ModelsResponse {
        object: "list".into(),
        data: models
            .catalog()
            .list()
            .into_iter()
            .map(|m| OpenAiModel {
                id: m.entry.name.clone(),
                object: "model".into(),
                created: state.started_unix,
                owned_by: "sdserve".into(),
            })
            .collect(),
    }))
}

/// The query of a signed image link.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignedLink {
    /// Unix time after which the link no longer works.
    pub expires: u64,
    /// The encoding the link serves (`jpeg-80`, `webp`); absent for the stored PNG.
    pub format: Option<String>,
    /// Hex HMAC-SHA256 over the image id and `expires`.
    pub signature: String,
}

/// An image from a signed link handed out by `response_format: url`; needs no
/// credentials, works until `expires`.
#[utoipa::path(get, path = "/v1/images/files/{id}", tag = "openai", security(()),
    params(("id" = uuid::Uuid, Path, description = "Image id"), SignedLink),
    responses((status = 200, description = "The image, in the format the link was made for",
        content((Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/webp"))),
        OpenAiErrors))]
pub async fn image_file(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<SignedLink>, QueryRejection>,
) -> Result<Response, Rejection<OpenAi>> {
    let id: ImageId = parse_id(path)?;
    let Query(link) = query.map_err(|e| ApiError::InvalidLink(e.body_text()))?;
    state
        .signer
        .verify_as(
            id,
            link.expires,
            link.format.as_deref(),
            &link.signature,
            unix_now() as u64,
        )
        .map_err(|e| ApiError::InvalidLink(e.to_string()))?;
    let encoding = match link.format.as_deref() {
        None => OutputEncoding::PNG,
        // Signed by us, so only a token we wrote gets here.
        Some(token) => OutputEncoding::from_token(token)
            .ok_or_else(|| ApiError::InvalidLink(format!("unknown format {token:?}")))?,
    };
    let png = state.image_png(id).await?;
    let file = encode_all(vec![png], encoding)
        .await?
        .pop()
        .unwrap_or_default();
    Ok((
        [(header::CONTENT_TYPE, encoding.format.content_type())],
        file,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;

    #[test]
    fn size_pattern_is_what_the_parser_and_gate_take() {
        let pattern = size_pattern(24, 17, 8);
        assert_eq!(pattern, "^(auto|(8|16|24)x(8|16))$");
        let pattern = regex::Regex::new(&pattern).unwrap();
        assert_eq!(size_pattern(4, 64, 8), "^auto$");
        let limits = Limits {
            max_width: 24,
            max_height: 17,
            ..Limits::default()
        };
        for size in [
            "auto",
            "8x8",
            "24x16",
            "16x8",
            "32x8",
            "8x24",
            "7x8",
            "0x8",
            "08x8",
            "+8x8",
            " 8x8",
            "8x8 ",
            "8X8",
            "8x",
            "x8",
            "8x8x8",
            "",
            "-8x8",
            "99999999999999999999x8",
        ] {
            let parsed = parse_size(size).ok().map(|wh| match wh {
                None => true,
                Some((w, h)) => {
                    let ok = |v: i64, max: usize| v > 0 && v as usize <= max && v % 8 == 0;
                    ok(w, limits.max_width) && ok(h, limits.max_height)
                }
            });
            assert_eq!(
                parsed == Some(true),
                pattern.is_match(size),
                "{size:?}: parsed {parsed:?}"
            );
        }
    }
}
