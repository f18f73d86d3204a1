//! Operational routes: liveness and readiness probes, Prometheus metrics, the
//! OpenAPI document and the offline docs page.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use axum::Router;
use serde::Serialize;
use utoipa::ToSchema;

use crate::dialects::native::{Native, NativeErrors};
use crate::engine_api::VaeTiling;
use crate::error::{ApiError, Rejection};
use crate::state::AppState;

/// The docs page: committed, self-contained HTML that renders `/openapi.json`.
const DOCS_HTML: &str = include_str!("../assets/docs.html");

/// Probe answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `alive` or `ready`.
    pub status: String,
    /// The memory plan (on `/readyz` once the model is loaded) of the device
    /// requests are checked against: the one with the smallest budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryReport>,
    /// With several devices, every device's plan for the default model, in
    /// `--device` order (on `/readyz`; one entry per engine and worker).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<MemoryReport>,
}

/// The memory plan computed at load, as `/readyz` reports it.
#[derive(Serialize, ToSchema, Debug, Clone, PartialEq)]
pub struct MemoryReport {
    /// The device the plan is for (`cpu`, `cuda:0`...).
    pub device: String,
    /// Bytes the server may use: the smallest of the limits found.
    pub budget_bytes: u64,
    /// Which limit that is: `--memory-limit`, a cgroup file, `MemAvailable`, a GPU-sharing variable.
    pub budget_source: String,
    /// The model's weights at their runtime dtype.
    pub weights_bytes: u64,
    /// Largest square size that fits one image (with guidance) within both the budget and the configured limits.
    pub largest_square_batch1: usize,
    /// `--vae-tiling` mode: `auto`, `on` or `off`.
    pub vae_tiling: String,
}

/// The plan of the default model on the gate's device (when it is loaded
/// there), capped by the configured limits.
pub fn memory_report(state: &AppState) -> Option<MemoryReport> {
    let models = state.models().ok()?;
    let gate = models.pool();
    let device = models
        .devices()
        .iter()
        .find(|d| Arc::ptr_eq(&d.pool, gate))?;
    gate.peek(&models.default_name(), |backend| {
        report(state, &device.label, backend)
    })
    .flatten()
}

/// The plan of the default model on every device where it is loaded.
pub fn device_reports(state: &AppState) -> Vec<MemoryReport> {
    let Ok(models) = state.models() else {
        return Vec::new();
    };
    let default = models.default_name();
    models
        .devices()
        .iter()
        .filter_map(|d| {
            d.pool
                .peek(&default, |backend| report(state, &d.label, backend))
                .flatten()
        })
        .collect()
}

fn report(
    state: &AppState,
    device: &str,
    backend: &dyn crate::backend::Backend,
) -> Option<MemoryReport> {
    let plan = backend.memory_plan()?;
    let multiple = backend.info().vae_scale_factor;
    let allowed = crate::validation::largest_allowed_square(&state.config.limits, multiple);
    Some(MemoryReport {
        device: device.to_string(),
        budget_bytes: plan.budget_bytes(),
        budget_source: plan.budget_source().to_string(),
        weights_bytes: plan.weights_bytes(),
        largest_square_batch1: plan.largest_square(1, multiple).min(allowed),
        vae_tiling: match plan.vae_tiling() {
            VaeTiling::Auto => "auto",
            VaeTiling::On => "on",
            VaeTiling::Off => "off",
        }
        .into(),
    })
}

/// The operational routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs))
}

/// Liveness: the process serves HTTP (also while the model loads).
#[utoipa::path(get, path = "/livez", tag = "ops", security(()),
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn livez() -> Json<Health> {
    Json(Health {
        status: "alive".into(),
        memory: None,
        devices: Vec::new(),
    })
}

/// Readiness: 200 once the model is loaded; 503 while loading, while draining,
/// and while the output disk is below `--min-free-disk` (the body says why).
#[utoipa::path(get, path = "/readyz", tag = "ops", security(()),
    responses((status = 200, description = "Ready", body = Health), NativeErrors))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Health>, Rejection<Native>> {
    if state.jobs.is_draining() {
        return Err(ApiError::Draining.into());
    }
    state.models()?;
    if let Some(problem) = state.jobs.storage_problem() {
        return Err(ApiError::LowDisk(problem).into());
    }
    Ok(Json(Health {
        status: "ready".into(),
        memory: memory_report(&state),
        devices: match device_reports(&state) {
            several if several.len() > 1 => several,
            _ => Vec::new(),
        },
    }))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String),
        NativeErrors))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This OpenAPI document, with the server's configured limits.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object), NativeErrors))]
pub async fn openapi_json(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let model = state.model().ok();
    Json(crate::openapi::document(
        &state.config.limits,
        model.as_ref(),
        state.config.auth.enabled(),
    ))
}

/// A page rendering the OpenAPI document; works offline.
#[utoipa::path(get, path = "/docs", tag = "ops",
    responses((status = 200, description = "HTML page", content_type = "text/html", body = String),
        NativeErrors))]
pub async fn docs() -> Html<&'static str> {
    Html(DOCS_HTML)
}
