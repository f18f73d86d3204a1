//! sdserve-server: the HTTP side of sdserve.
//!
//! One bounded, fair job queue and one worker thread run the engine; four API
//! dialects (native async jobs, AUTOMATIC1111, OpenAI images, and the simple
//! `/generate` + `/download`) are thin adapters in front of it. Requests pass one
//! validation gate, errors map to statuses in one place (`error.rs`), results are
//! written atomically under the output directory so they outlive restarts.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use sdserve_server::{App, FakeBackend, ServerConfig};
//! let app = App::new(ServerConfig::new(std::path::Path::new("./outputs")))?;
//! app.install_backend(Arc::new(FakeBackend::new()))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7860").await?;
//! app.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod app;
pub mod auth;
pub mod backend;
pub mod config;
pub mod connections;
pub mod dialects;
pub mod engine_api;
pub mod error;
pub mod extract;
pub mod image_output;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod ops;
pub mod signing;
pub mod state;
pub mod validation;
pub mod web;

pub use app::{App, ServerError, ShutdownReport};
pub use backend::{Backend, FakeBackend};
pub use config::{AuthConfig, BasicCredential, ConnectionLimits, Limits, ServerConfig};
pub use error::ApiError;
pub use state::AppState;
