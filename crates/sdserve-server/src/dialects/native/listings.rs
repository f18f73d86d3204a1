//! The native API's listings: the caller's jobs (what the web page's gallery
//! shows after a reload), the served models, the samplers and the limits a
//! job must keep, so a client can build its form from the server.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;

use super::handlers::view_with_preview;
use super::wire::{
    JobList, JobListQuery, LimitsView, LoraView, ModelList, ModelView, SamplerView,
    ScheduleTypeView,
};
use super::{Native, NativeErrors};
use crate::engine_api::SamplerId;
use crate::error::Rejection;
use crate::extract::{parse_query, Caller};
use crate::state::AppState;
use crate::validation::ValidationError;

type Result<T> = std::result::Result<T, Rejection<Native>>;

/// Jobs listed when the query gives no `limit`.
const DEFAULT_JOB_LIST: usize = 30;
/// Most jobs one listing returns.
const MAX_JOB_LIST: usize = 100;

/// The caller's jobs, newest first: queued, running, and finished ones whose
/// results are kept (also those from before a restart). With auth on, a key
/// sees its own jobs; an operator key, and every caller when auth is off, sees all.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "native", params(JobListQuery),
    responses((status = 200, description = "Jobs, newest first", body = JobList), NativeErrors))]
pub async fn list_jobs(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    query: std::result::Result<Query<JobListQuery>, QueryRejection>,
) -> Result<Json<JobList>> {
    let query = parse_query(query)?;
    let limit = query.limit.unwrap_or(DEFAULT_JOB_LIST);
    if !(1..=MAX_JOB_LIST).contains(&limit) {
        return Err(ValidationError::Invalid {
            field: "limit",
            message: format!("must be from 1 to {MAX_JOB_LIST}, got {limit}"),
        }
        .into());
    }
    let snapshots = state.jobs_for(&caller, limit).await?;
    let jobs = snapshots
        .into_iter()
        .map(|s| view_with_preview(&state, s))
        .collect();
    Ok(Json(JobList { jobs }))
}

/// The served models, which is the default and loaded, and the defaults
/// that suit each (once it has been loaded).
#[utoipa::path(get, path = "/api/v1/models", tag = "native",
    responses((status = 200, description = "Models", body = ModelList), NativeErrors))]
pub async fn list_models(State(state): State<Arc<AppState>>) -> Result<Json<ModelList>> {
    let models = state.models()?;
    let default = models.default_name();
    let loaded = models.pool().loaded();
    let views = models
        .catalog()
        .list()
        .into_iter()
        .map(|m| {
            let name = &m.entry.name;
            let info = models.info(name);
            ModelView {
                id: name.clone(),
                sha256: m.sha256.clone(),
                default: *name == default,
                loaded: loaded.contains(name),
                native_width: info.as_ref().map(|i| i.native_width),
                native_height: info.as_ref().map(|i| i.native_height),
                default_steps: info.as_ref().map(|i| i.default_steps),
                default_cfg_scale: info.as_ref().map(|i| i.default_cfg_scale),
                vae_scale_factor: info.as_ref().map(|i| i.vae_scale_factor),
            }
        })
        .collect();
    Ok(Json(ModelList { models: views }))
}

/// The LoRAs of `--lora-dir` (none without it), by the name a job gives.
#[utoipa::path(get, path = "/api/v1/loras", tag = "native",
    responses((status = 200, description = "LoRAs", body = Vec<LoraView>), NativeErrors))]
pub async fn list_loras(State(state): State<Arc<AppState>>) -> Json<Vec<LoraView>> {
    let entries = state.lora_entries().await;
    Json(
        entries
            .into_iter()
            .map(|e| LoraView {
                name: e.name,
                metadata: e.metadata,
            })
            .collect(),
    )
}

/// The samplers, by id and A1111 label, with the schedule types each runs with.
#[utoipa::path(get, path = "/api/v1/samplers", tag = "native",
    responses((status = 200, description = "Samplers", body = Vec<SamplerView>), NativeErrors))]
pub async fn list_samplers() -> Json<Vec<SamplerView>> {
    Json(
        SamplerId::ALL
            .iter()
            .map(|s| SamplerView {
                id: s.id().to_string(),
                label: s.label().to_string(),
                schedule_types: s
                    .schedule_types()
                    .iter()
                    .map(|t| ScheduleTypeView {
                        id: t.id().to_string(),
                        label: t.label().to_string(),
                    })
                    .collect(),
            })
            .collect(),
    )
}

/// The limits a job must keep, and the largest square that fits in memory.
#[utoipa::path(get, path = "/api/v1/limits", tag = "native",
    responses((status = 200, description = "Limits", body = LimitsView), NativeErrors))]
pub async fn limits(State(state): State<Arc<AppState>>) -> Json<LimitsView> {
    let l = &state.config.limits;
    Json(LimitsView {
        max_width: l.max_width,
        max_height: l.max_height,
        max_pixels: l.max_pixels,
        max_steps: l.max_steps,
        max_batch: l.max_batch,
        max_prompt_chars: l.max_prompt_chars,
        max_body_bytes: l.max_body_bytes,
        largest_square: crate::ops::memory_report(&state).map(|m| m.largest_square_batch1),
    })
}
