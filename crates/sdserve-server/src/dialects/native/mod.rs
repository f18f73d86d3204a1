//! The native API under `/api/v1`: asynchronous jobs. `POST /jobs` answers 202
//! with the job id at once; clients then poll `GET /jobs/{id}`, follow
//! `GET /jobs/{id}/events` (server-sent events, with live previews), cancel
//! with `POST /jobs/{id}/cancel` (or `DELETE` to remove), list their own with
//! `GET /jobs`, and fetch PNGs from `GET /images/{id}`; `GET /models`,
//! `/samplers` and `/limits` let a client (the web page) build its form. Errors: `{"error", "error_type", "field"}`.

mod handlers;
mod listings;
mod wire;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

use crate::error::{ApiError, ErrorShape};
use crate::state::AppState;

pub use handlers::*;
pub use listings::*;
pub use wire::*;

/// Error shape of the native dialect.
pub struct Native;

/// The native error body.
#[derive(Serialize, ToSchema)]
pub struct NativeError {
    /// Human-readable message naming the field, limit and value where relevant.
    pub error: String,
    /// Stable machine code (`invalid_request`, `queue_full`, `not_found`...).
    pub error_type: String,
    /// The offending request field, when one is at fault.
    pub field: Option<String>,
}

impl ErrorShape for Native {
    fn body(error: &ApiError) -> serde_json::Value {
        crate::error::to_json(&NativeError {
            error: error.to_string(),
            error_type: error.code().to_string(),
            field: error.field().map(str::to_string),
        })
    }
}

/// Error responses of the native routes (statuses decided in `error.rs`).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum NativeErrors {
    /// Malformed JSON or an id that is not a UUID.
    #[response(status = 400)]
    BadRequest(NativeError),
    /// Credentials required.
    #[response(status = 401)]
    Unauthorized(NativeError),
    /// No such job or image.
    #[response(status = 404)]
    NotFound(NativeError),
    /// Wrong method for the route.
    #[response(status = 405)]
    MethodNotAllowed(NativeError),
    /// The job already finished (cancel) or was cancelled.
    #[response(status = 409)]
    Conflict(NativeError),
    /// The body did not arrive within `--body-read-timeout`.
    #[response(status = 408)]
    RequestTimeout(NativeError),
    /// Body too large.
    #[response(status = 413)]
    TooLarge(NativeError),
    /// A field breaks a rule; `field` names it.
    #[response(status = 422)]
    Unprocessable(NativeError),
    /// Queue full; retry after `Retry-After` seconds.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    TooManyRequests(NativeError),
    /// Model loading or server draining.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(NativeError),
    /// The job's images or record could not be written, or the disk is below `--min-free-disk`.
    #[response(status = 507)]
    InsufficientStorage(NativeError),
}

/// The native routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/jobs", post(create_job).get(list_jobs))
        .route("/api/v1/jobs/{id}", get(get_job).delete(delete_job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/jobs/{id}/events", get(job_events))
        .route("/api/v1/images/{id}", get(get_image))
        .route("/api/v1/models", get(list_models))
        .route("/api/v1/samplers", get(list_samplers))
        .route("/api/v1/loras", get(list_loras))
        .route("/api/v1/limits", get(limits))
}
