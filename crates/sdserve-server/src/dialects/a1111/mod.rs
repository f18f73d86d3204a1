//! The AUTOMATIC1111 dialect under `/sdapi/v1` (and A1111's `/internal/`
//! task-tracking routes): A1111's field names, defaults and
//! response shapes, so scripts and clients written for its API (e.g. the
//! `webuiapi` package) work unchanged. Errors follow A1111 (FastAPI):
//! `{"detail": [{"loc", "msg", "type"}]}` for bad input, `{"detail": "..."}` for
//! HTTP errors, `{"error", "detail", "body", "errors"}` for server faults.

mod discovery;
mod hires;
mod img2img;
mod internal;
mod listings;
mod png_info;
mod status;
mod txt2img;
mod unsupported;
mod wire;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

use crate::error::{to_json, ApiError, ErrorShape};
use crate::state::AppState;

pub use discovery::*;
pub use img2img::*;
pub use internal::*;
pub use listings::*;
pub use png_info::*;
pub use status::*;
pub use txt2img::*;
pub use unsupported::settings_schema;
pub use wire::*;

/// Error shape of the A1111 dialect.
pub struct A1111;

/// One FastAPI validation error item.
#[derive(Serialize, ToSchema)]
pub struct ValidationItem {
    /// Where: `["body", field]`.
    pub loc: Vec<String>,
    /// What is wrong.
    pub msg: String,
    /// Error kind (`value_error`, `json_invalid`).
    #[serde(rename = "type")]
    pub kind: String,
}

/// `{"detail": ...}`: a message, or a list of [`ValidationItem`] for bad input.
#[derive(Serialize, ToSchema)]
pub struct A1111Detail {
    /// Message or validation items.
    pub detail: serde_json::Value,
}

/// A1111's body for server-side exceptions.
#[derive(Serialize, ToSchema)]
pub struct A1111Exception {
    /// Exception name.
    pub error: String,
    /// Empty, as A1111 sends it.
    pub detail: String,
    /// Empty, as A1111 sends it.
    pub body: String,
    /// The message.
    pub errors: String,
}

impl ErrorShape for A1111 {
    fn body(error: &ApiError) -> serde_json::Value {
        let validation = |field: &str, kind: &str| {
            to_json(&A1111Detail {
                detail: to_json(&vec![ValidationItem {
                    loc: vec!["body".into(), field.into()],
                    msg: error.to_string(),
                    kind: kind.into(),
                }]),
            })
        };
        match error {
            ApiError::MalformedJson(_) => validation("0", "json_invalid"),
            ApiError::InvalidField { .. } | ApiError::Validation(_) => {
                validation(error.field().unwrap_or("body"), "value_error")
            }
            e if e.status().is_server_error() => to_json(&A1111Exception {
                error: match e {
                    ApiError::Generation(_) => "GenerationError".into(),
                    ApiError::Storage(_) => "StorageError".into(),
                    _ => "InternalError".into(),
                },
                detail: String::new(),
                body: String::new(),
                errors: e.to_string(),
            }),
            e => to_json(&A1111Detail {
                detail: serde_json::Value::String(e.to_string()),
            }),
        }
    }
}

/// Error responses of the A1111 routes (statuses decided in `error.rs`).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum A1111Errors {
    /// Malformed JSON.
    #[response(status = 400)]
    BadRequest(A1111Detail),
    /// Credentials required.
    #[response(status = 401)]
    Unauthorized(A1111Detail),
    /// No such route, or no such model (the message lists the available ones).
    #[response(status = 404)]
    NotFound(A1111Detail),
    /// Wrong method for the route.
    #[response(status = 405)]
    MethodNotAllowed(A1111Detail),
    /// The job was interrupted.
    #[response(status = 409)]
    Conflict(A1111Detail),
    /// The body did not arrive within `--body-read-timeout`.
    #[response(status = 408)]
    RequestTimeout(A1111Detail),
    /// Body too large.
    #[response(status = 413)]
    TooLarge(A1111Detail),
    /// A field breaks a rule; `loc` names it.
    #[response(status = 422)]
    Unprocessable(A1111Detail),
    /// Queue full; retry after `Retry-After` seconds.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    TooManyRequests(A1111Detail),
    /// Generation failed on the server, or a model could not be loaded.
    #[response(status = 500)]
    ServerError(A1111Exception),
    /// Model loading or server draining.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(A1111Detail),
    /// The job's images or record could not be written, or the disk is below `--min-free-disk`.
    #[response(status = 507)]
    InsufficientStorage(A1111Exception),
}

/// The A1111 routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/sdapi/v1/txt2img", post(txt2img))
        .route("/sdapi/v1/img2img", post(img2img))
        .route("/sdapi/v1/progress", get(progress))
        .route("/sdapi/v1/interrupt", post(interrupt))
        .route("/sdapi/v1/skip", post(skip))
        .route("/sdapi/v1/sd-models", get(sd_models))
        .route("/sdapi/v1/refresh-checkpoints", post(refresh_checkpoints))
        .route("/sdapi/v1/samplers", get(samplers))
        .route("/sdapi/v1/schedulers", get(schedulers))
        .route("/sdapi/v1/options", get(get_options).post(set_options))
        .route("/sdapi/v1/png-info", post(png_info))
        .route("/sdapi/v1/memory", get(memory))
        .route("/sdapi/v1/scripts", get(scripts))
        .route("/sdapi/v1/loras", get(loras))
        .route("/sdapi/v1/embeddings", get(embeddings))
        .route("/sdapi/v1/sd-vae", get(sd_vae))
        .route("/sdapi/v1/upscalers", get(upscalers))
        .route("/sdapi/v1/latent-upscale-modes", get(latent_upscale_modes))
        .route("/sdapi/v1/hypernetworks", get(hypernetworks))
        .route("/sdapi/v1/face-restorers", get(face_restorers))
        .route("/sdapi/v1/realesrgan-models", get(realesrgan_models))
        .route("/sdapi/v1/prompt-styles", get(prompt_styles))
        .route("/sdapi/v1/cmd-flags", get(cmd_flags))
        .route("/sdapi/v1/refresh-vae", post(refresh_vae))
        .route("/sdapi/v1/refresh-loras", post(refresh_loras))
        .route("/sdapi/v1/refresh-embeddings", post(refresh_embeddings))
        .route("/internal/progress", post(internal_progress))
        .route("/internal/pending-tasks", get(pending_tasks))
        // The spelling issue 10 used; A1111 itself serves `pending-tasks`.
        .route("/internal/pendingTasks", get(pending_tasks))
}
