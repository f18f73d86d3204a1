//! The four API dialects. Each is an adapter: it parses its own request shape
//! into a [`crate::validation::JobSpec`], goes through the same gate and queue,
//! and writes results and errors in its own shape. None of them picks a status.

pub mod a1111;
pub mod images;
pub mod native;
pub mod openai;
pub mod openai_edits;
pub mod simple;

use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Rejection};

/// Which API a request came through (kept in each job's record, so a restart
/// knows whether a client holds an id to come back for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// `/api/v1`: asynchronous jobs.
    Native,
    /// `/sdapi/v1`: AUTOMATIC1111 compatible.
    A1111,
    /// `/v1`: OpenAI images compatible.
    OpenAi,
    /// `/generate` + `/download`: the simple Docker-article API.
    Simple,
}

impl Dialect {
    /// Name used in logs and the `dialect` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::A1111 => "a1111",
            Self::OpenAi => "openai",
            Self::Simple => "simple",
        }
    }

    /// The dialect whose error shape suits a path (for auth failures and unknown routes).
    pub fn for_path(path: &str) -> Self {
        if path.starts_with("/sdapi/") || path.starts_with("/internal/") {
            Self::A1111
        } else if path.starts_with("/v1/") {
            Self::OpenAi
        } else if path.starts_with("/generate") || path.starts_with("/download") {
            Self::Simple
        } else {
            Self::Native
        }
    }

    /// The error as this dialect writes it.
    pub fn error_response(self, error: ApiError) -> Response {
        match self {
            Self::Native => Rejection::<native::Native>::from(error).into_response(),
            Self::A1111 => Rejection::<a1111::A1111>::from(error).into_response(),
            Self::OpenAi => Rejection::<openai::OpenAi>::from(error).into_response(),
            Self::Simple => Rejection::<simple::Simple>::from(error).into_response(),
        }
    }
}
