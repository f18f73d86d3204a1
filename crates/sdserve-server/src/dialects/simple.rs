//! The simple API of the Docker write-up (`shared/context/docker-web-api.zh.md`):
//! `POST /generate {prompt, scale, steps, seed}` waits for the image and answers
//! `{download_id, time}`; `GET /download/{download_id}` returns the PNG, 404 for
//! an unknown id. Errors are FastAPI's `{"detail": ...}`. Omitted `scale` and
//! `steps` take the write-up's defaults (7.5 and 50), whatever the model's;
//! the size is the model's native size (the write-up's is fixed by its server).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoResponses, ToSchema};

use super::a1111::{A1111Detail, A1111};
use super::Dialect;
use crate::error::{to_json, ApiError, ErrorShape, Rejection};
use crate::extract::{parse_id, parse_json, Caller};
use crate::jobs::ImageId;
use crate::state::AppState;
use crate::validation::{FieldNames, JobSpec};

/// Error shape of the simple dialect (FastAPI's, like A1111's, `detail` for all).
pub struct Simple;

impl ErrorShape for Simple {
    fn body(error: &ApiError) -> serde_json::Value {
        if error.status().is_server_error() {
            to_json(&A1111Detail {
                detail: error.to_string().into(),
            })
        } else {
            A1111::body(error)
        }
    }
}

/// Error responses of the simple routes (statuses decided in `error.rs`).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum SimpleErrors {
    /// Malformed JSON, or an id that is not a UUID.
    #[response(status = 400)]
    BadRequest(A1111Detail),
    /// Credentials required.
    #[response(status = 401)]
    Unauthorized(A1111Detail),
    /// No such file.
    #[response(status = 404)]
    NotFound(A1111Detail),
    /// Wrong method for the route.
    #[response(status = 405)]
    MethodNotAllowed(A1111Detail),
    /// The job was cancelled.
    #[response(status = 409)]
    Conflict(A1111Detail),
    /// The body did not arrive within `--body-read-timeout`.
    #[response(status = 408)]
    RequestTimeout(A1111Detail),
    /// Body too large.
    #[response(status = 413)]
    TooLarge(A1111Detail),
    /// A field breaks a rule.
    #[response(status = 422)]
    Unprocessable(A1111Detail),
    /// Queue full; retry after `Retry-After` seconds.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    TooManyRequests(A1111Detail),
    /// Generation failed on the server.
    #[response(status = 500)]
    ServerError(A1111Detail),
    /// Model loading or server draining.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(A1111Detail),
    /// The job's images or record could not be written, or the disk is below `--min-free-disk`.
    #[response(status = 507)]
    InsufficientStorage(A1111Detail),
}

/// How the simple dialect names the shared fields.
const SIMPLE_FIELDS: FieldNames = FieldNames {
    cfg_scale: "scale",
    ..FieldNames::NATIVE
};

/// The write-up's default `scale` (its `GenerationRequest`).
pub const SIMPLE_DEFAULT_SCALE: f64 = 7.5;
/// The write-up's default `steps`.
pub const SIMPLE_DEFAULT_STEPS: i64 = 50;

/// `POST /generate` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GenerationRequest {
    /// Input prompt.
    #[schema(max_length = 8192)]
    pub prompt: String,
    /// Guidance scale, 0 to 30 (default 7.5, as in the write-up).
    #[schema(minimum = 0, maximum = 30, default = 7.5)]
    pub scale: Option<f64>,
    /// Sampling steps (default 50, as in the write-up).
    #[schema(minimum = 1, maximum = 150, default = 50)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub steps: Option<i64>,
    /// Seed for reproducible results (random if omitted).
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_u64")]
    pub seed: Option<u64>,
}

/// `POST /generate` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct GenerationResult {
    /// Identifier to download the generated image.
    #[schema(value_type = uuid::Uuid)]
    pub download_id: ImageId,
    /// Total seconds taken, queueing included.
    pub time: f64,
}

/// The simple routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/generate", post(generate))
        .route("/download/{id}", get(download))
}

/// Generate one image and return its download id.
#[utoipa::path(post, path = "/generate", tag = "simple", request_body = GenerationRequest,
    responses((status = 200, description = "Generated", body = GenerationResult), SimpleErrors))]
pub async fn generate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<GenerationResult>, Rejection<Simple>> {
    let start = Instant::now();
    let spec = parse_json::<GenerationRequest>(body, state.config.limits.max_body_bytes).map(|r| {
        JobSpec {
            seed: r.seed,
            steps: Some(r.steps.unwrap_or(SIMPLE_DEFAULT_STEPS)),
            cfg_scale: Some(r.scale.unwrap_or(SIMPLE_DEFAULT_SCALE)),
            ..JobSpec::new(r.prompt, SIMPLE_FIELDS)
        }
    });
    let handle = state
        .submit(Dialect::Simple, &caller, spec)
        .await?
        .cancel_on_drop();
    let snapshot = state.wait_success(&handle).await?;
    let Some(image) = snapshot.images.first() else {
        return Err(ApiError::Internal("the job produced no image".into()).into());
    };
    Ok(Json(GenerationResult {
        download_id: image.id,
        time: start.elapsed().as_secs_f64(),
    }))
}

/// Download a generated image.
#[utoipa::path(get, path = "/download/{id}", tag = "simple",
    params(("id" = uuid::Uuid, Path, description = "download_id from /generate")),
    responses((status = 200, description = "Image with provided ID", content_type = "image/png", body = Vec<u8>),
        SimpleErrors))]
pub async fn download(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Rejection<Simple>> {
    let id: ImageId = parse_id(path)?;
    let png = state.image_for(id, &caller).await?;
    let disposition = format!("inline; filename=\"{id}.png\"");
    Ok((
        [
            (header::CONTENT_TYPE, "image/png".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        png,
    )
        .into_response())
}
