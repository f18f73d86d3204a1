//! Every error a request can meet, and the one place that decides its HTTP status
//! and headers. Dialects never pick a status: they only shape the body
//! ([`ErrorShape`]), so an overloaded queue is a 429 with `Retry-After` whether
//! the client speaks A1111, OpenAI, the native API or `/generate`.

use std::marker::PhantomData;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::engine_api::ImageInputError;
use crate::validation::ValidationError;

/// Seconds a client should wait before retrying while the model loads or the server drains.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all.
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// Valid JSON, but a field is missing or has the wrong type.
    #[error("invalid `{field}`: {message}")]
    InvalidField {
        /// Path of the field (`steps`, `nested[1]`, `body` for the whole body).
        field: String,
        /// The parser's message.
        message: String,
    },
    /// A rule of the validation gate.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The body exceeds `--max-body-bytes`.
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// `--max-body-bytes`.
        limit: usize,
    },
    /// The body did not arrive within `--body-read-timeout`.
    #[error("the request body did not arrive within {seconds} s")]
    BodyTimeout {
        /// `--body-read-timeout`.
        seconds: f64,
    },
    /// An uploaded image that is malformed, or over one of the engine's
    /// `ImageLimits` (a decompression bomb, a header claiming huge dimensions).
    #[error("invalid `{field}`: {error}")]
    InvalidImage {
        /// The request field that carried the image.
        field: &'static str,
        /// Why the engine refused it; its message names the limit.
        error: ImageInputError,
    },
    /// The body could not be read (client aborted, bad encoding).
    #[error("could not read the request body: {0}")]
    BadBody(String),
    /// A value the dialect defines but sdserve cannot honour (OpenAI's
    /// `background: "transparent"`, `stream: true`): refused by name rather
    /// than ignored, with OpenAI's status for an unsupported value.
    #[error("`{field}`: {message}")]
    UnsupportedValue {
        /// The field, as the dialect spells it.
        field: &'static str,
        /// What is not supported, and what is.
        message: String,
    },
    /// A path id that is not a UUID.
    #[error(transparent)]
    InvalidId(#[from] crate::jobs::InvalidId),
    /// No job with this id.
    #[error("no job with id {0}")]
    JobNotFound(String),
    /// No image with this id.
    #[error("no image with id {0}")]
    ImageNotFound(String),
    /// No such route.
    #[error("no route for {0}")]
    NoRoute(String),
    /// The route exists, but not with this method.
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// Credentials missing or wrong.
    #[error("authentication required: send a valid API key (Authorization: Bearer) or user:password (HTTP Basic)")]
    Unauthorized {
        /// `WWW-Authenticate` challenge to send.
        challenge: &'static str,
    },
    /// A signed image link that expired or was tampered with.
    #[error("this image link is not valid: {0}")]
    InvalidLink(String),
    /// Cancel asked for a job that already finished.
    #[error("job {0} has already finished")]
    AlreadyFinished(String),
    /// The job was cancelled before it produced images.
    #[error("job {0} was cancelled")]
    Cancelled(String),
    /// The queue is full.
    #[error("the queue is full ({capacity} jobs waiting); retry in {retry_after} s")]
    QueueFull {
        /// `--queue-size`.
        capacity: usize,
        /// Suggested wait in seconds (`Retry-After`).
        retry_after: u64,
    },
    /// The model is still loading.
    #[error("the model is still loading")]
    NotReady,
    /// SIGTERM received: no new jobs.
    #[error("the server is shutting down and accepts no new jobs")]
    Draining,
    /// The engine failed while generating.
    #[error("generation failed: {0}")]
    Generation(String),
    /// A fault on our side (a broken worker).
    #[error("internal error: {0}")]
    Internal(String),
    /// A job's images or record could not be written, or the disk is below
    /// `--min-free-disk` so new jobs are refused.
    #[error("insufficient storage: {0}")]
    Storage(String),
    /// Readiness: the output directory's disk is below `--min-free-disk`.
    #[error("not ready: {0}")]
    LowDisk(String),
    /// A request (or `sd_model_checkpoint`) names no model the server has.
    #[error("`{field}`: no model {asked:?}; available: {}", available.join(", "))]
    UnknownModel {
        /// The field that named it, as the dialect spells it.
        field: &'static str,
        /// What the client asked for.
        asked: String,
        /// The names the server has.
        available: Vec<String>,
    },
    /// A listed model could not be loaded (a file the engine refuses, too
    /// little memory...): the server's fault, not the request's.
    #[error("could not load model {model:?}: {message}")]
    ModelLoad {
        /// The model's name.
        model: String,
        /// Why.
        message: String,
    },
}

impl ApiError {
    /// The HTTP status: the only mapping from errors to statuses in the server.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(ValidationError::OverBudget { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MalformedJson(_)
            | Self::BadBody(_)
            | Self::InvalidId(_)
            | Self::UnsupportedValue { .. } => StatusCode::BAD_REQUEST,
            Self::InvalidField { .. } | Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::BodyTooLarge { .. }
            | Self::InvalidImage {
                error: ImageInputError::TooLarge { .. },
                ..
            } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidImage { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::JobNotFound(_)
            | Self::ImageNotFound(_)
            | Self::NoRoute(_)
            | Self::UnknownModel { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::InvalidLink(_) => StatusCode::FORBIDDEN,
            Self::AlreadyFinished(_) | Self::Cancelled(_) => StatusCode::CONFLICT,
            Self::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotReady | Self::Draining | Self::LowDisk(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Generation(_) | Self::Internal(_) | Self::ModelLoad { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::Storage(_) => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    /// A stable machine-readable code for bodies and the `reason` metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "invalid_json",
            Self::Validation(ValidationError::OverBudget { .. }) => "over_memory_budget",
            Self::InvalidField { .. } | Self::Validation(_) => "invalid_request",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::InvalidImage {
                error: ImageInputError::TooLarge { .. },
                ..
            } => "image_too_large",
            Self::InvalidImage { .. } => "invalid_image",
            Self::BadBody(_) => "bad_body",
            Self::UnsupportedValue { .. } => "unsupported_value",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::InvalidId(_) => "invalid_id",
            Self::JobNotFound(_) | Self::ImageNotFound(_) | Self::NoRoute(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Unauthorized { .. } => "unauthorized",
            Self::InvalidLink(_) => "invalid_link",
            Self::AlreadyFinished(_) => "already_finished",
            Self::Cancelled(_) => "cancelled",
            Self::QueueFull { .. } => "queue_full",
            Self::NotReady => "not_ready",
            Self::Draining => "draining",
            Self::Generation(_) => "generation",
            Self::Internal(_) => "internal",
            Self::Storage(_) => "storage",
            Self::LowDisk(_) => "low_disk",
            Self::UnknownModel { .. } => "model_not_found",
            Self::ModelLoad { .. } => "model_load_failed",
        }
    }

    /// The request field at fault, if one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidField { field, .. } => Some(field),
            Self::InvalidImage { field, .. } => Some(field),
            Self::Validation(v) => v.field(),
            Self::UnknownModel { field, .. } => Some(field),
            Self::UnsupportedValue { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Seconds for the `Retry-After` header, for errors that pass with time.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::QueueFull { retry_after, .. } => Some(*retry_after),
            Self::NotReady | Self::Draining => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// A response with this error's status and headers and the given body.
    pub fn into_response_with(self, body: serde_json::Value) -> Response {
        let status = self.status();
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Self::Unauthorized { challenge } = self {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// Serialises an error body (or any wire struct) to JSON; `null` if it cannot be.
pub fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// How one dialect writes an error body (never its status: see [`ApiError::status`]).
pub trait ErrorShape: Send + 'static {
    /// The JSON body for `error` in this dialect.
    fn body(error: &ApiError) -> serde_json::Value;
}

/// An [`ApiError`] on its way out through dialect `S`; handlers return
/// `Result<_, Rejection<S>>` and use `?` on `ApiError` and the errors it wraps.
pub struct Rejection<S> {
    /// The error.
    pub error: ApiError,
    shape: PhantomData<S>,
}

impl<S> std::fmt::Debug for Rejection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl<S> From<ApiError> for Rejection<S> {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            shape: PhantomData,
        }
    }
}

impl<S> From<ValidationError> for Rejection<S> {
    fn from(error: ValidationError) -> Self {
        ApiError::from(error).into()
    }
}

impl<S> From<crate::jobs::InvalidId> for Rejection<S> {
    fn from(error: crate::jobs::InvalidId) -> Self {
        ApiError::from(error).into()
    }
}

impl<S: ErrorShape> IntoResponse for Rejection<S> {
    fn into_response(self) -> Response {
        if self.error.status() == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self.error, "request failed");
        } else {
            tracing::debug!(error = %self.error, "request refused");
        }
        let body = S::body(&self.error);
        self.error.into_response_with(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_and_unavailability_carry_retry_after() {
        let full = ApiError::QueueFull {
            capacity: 4,
            retry_after: 3,
        };
        assert_eq!(full.status(), StatusCode::TOO_MANY_REQUESTS);
        let resp = full.into_response_with(serde_json::json!({}));
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        for e in [ApiError::NotReady, ApiError::Draining] {
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(e.retry_after().is_some());
        }
    }

    #[test]
    fn storage_faults_are_507_and_low_disk_unready() {
        let e = ApiError::Storage("disk full".into());
        assert_eq!(e.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(e.code(), "storage");
        assert!(e.to_string().contains("disk full"));
        let e = ApiError::LowDisk("12 bytes free".into());
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.to_string().contains("12 bytes free"));
    }

    #[test]
    fn images_over_a_cap_are_413_and_malformed_ones_422() {
        let over = ApiError::InvalidImage {
            field: "image",
            error: ImageInputError::TooLarge {
                what: "image width".into(),
                limit: 8192,
                actual: Some(100_000),
                unit: "pixels",
            },
        };
        assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(over.to_string().contains("limit of 8192 pixels"), "{over}");
        let bad = ApiError::InvalidImage {
            field: "image",
            error: ImageInputError::Malformed("truncated".into()),
        };
        assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(bad.field(), Some("image"));
    }

    #[test]
    fn client_mistakes_are_4xx() {
        let v = ValidationError::NotFinite { field: "cfg_scale" };
        for e in [
            ApiError::MalformedJson("x".into()),
            ApiError::Validation(v),
            ApiError::BodyTooLarge { limit: 1 },
            ApiError::JobNotFound("x".into()),
            ApiError::UnknownModel {
                field: "model",
                asked: "x".into(),
                available: vec!["a".into()],
            },
            ApiError::Unauthorized {
                challenge: "Bearer",
            },
            ApiError::UnsupportedValue {
                field: "stream",
                message: "streaming is not supported".into(),
            },
        ] {
            assert!(e.status().is_client_error(), "{e}");
        }
    }
}
