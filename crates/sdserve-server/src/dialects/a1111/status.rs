//! A1111's view of the work in flight: `GET /progress` reports the batch on the
//! worker; `POST /interrupt` cancels the caller's A1111 jobs (running and
//! queued), `POST /skip` only the caller's running ones. Other clients' jobs are
//! never touched: A1111 had one user, this server has many.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::wire::job_timestamp;
use super::{A1111Errors, A1111};
use crate::dialects::Dialect;
use crate::error::Rejection;
use crate::extract::{parse_query, Caller};
use crate::jobs::{job::unix_now, JobEntry, JobStatus};
use crate::state::AppState;

/// The `state` object of `/progress`: A1111's `State.dict()` keys, for the
/// batch on the worker (A1111 runs one request at a time; sdserve's worker
/// runs one batch, whose requests share their steps).
#[derive(Serialize, ToSchema)]
pub struct ProgressState {
    /// Always false (skips end the job).
    pub skipped: bool,
    /// Always false.
    pub interrupted: bool,
    /// Always false (A1111's "stop generating" of its UI).
    pub stopping_generation: bool,
    /// Current job description ("" when idle).
    pub job: String,
    /// 1 while a batch runs, 0 when idle, as A1111's count of the running
    /// request's jobs (a batch runs all its images at once); clients such as
    /// webuiapi's `util_wait_for_ready` wait for 0.
    pub job_count: usize,
    /// `YYYYMMDDhhmmss` of now.
    pub job_timestamp: String,
    /// Always 0.
    pub job_no: usize,
    /// Steps done in the running batch.
    pub sampling_step: usize,
    /// Steps of the running batch.
    pub sampling_steps: usize,
}

/// `GET /sdapi/v1/progress` answer.
#[derive(Serialize, ToSchema)]
pub struct ProgressResponse {
    /// Fraction done of the running batch, 0 to 1.
    pub progress: f64,
    /// Estimated seconds left.
    pub eta_relative: f64,
    /// Details.
    pub state: ProgressState,
    /// Always null: previews are not produced yet.
    pub current_image: Option<String>,
    /// `Step 3/20` while a batch runs, null when idle.
    pub textinfo: Option<String>,
}

/// The query of `GET /sdapi/v1/progress`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProgressQuery {
    /// `true` leaves `current_image` out (it is a small PNG preview otherwise).
    pub skip_current_image: Option<bool>,
}

/// Progress of the batch on the worker.
#[utoipa::path(get, path = "/sdapi/v1/progress", tag = "a1111", params(ProgressQuery),
    responses((status = 200, description = "Progress", body = ProgressResponse), A1111Errors))]
pub async fn progress(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ProgressQuery>, QueryRejection>,
) -> Result<Json<ProgressResponse>, Rejection<A1111>> {
    let query = parse_query(query)?;
    let jobs = &state.jobs;
    // A1111's "Approx cheap" preview of the running batch, at latent size.
    let current_image = match query.skip_current_image {
        Some(true) => None,
        _ => jobs
            .current_preview()
            .map(|(_, png)| base64::engine::general_purpose::STANDARD.encode(png.as_slice())),
    };
    let current = jobs.current();
    let (progress, eta, step, steps, job) = match current {
        Some(c) if c.total > 0 => {
            let fraction = (c.step as f64 / c.total as f64).clamp(0.0, 1.0);
            let elapsed = c.started.elapsed().as_secs_f64();
            let eta = if fraction > 0.0 {
                elapsed / fraction - elapsed
            } else {
                0.0
            };
            (
                fraction,
                eta,
                c.step,
                c.total,
                format!("Batch of {} job(s)", c.jobs),
            )
        }
        _ => (0.0, 0.0, 0, 0, String::new()),
    };
    let running = steps > 0;
    Ok(Json(ProgressResponse {
        progress,
        eta_relative: eta,
        state: ProgressState {
            skipped: false,
            interrupted: false,
            stopping_generation: false,
            job,
            job_count: usize::from(running),
            job_timestamp: job_timestamp(unix_now()),
            job_no: 0,
            sampling_step: step,
            sampling_steps: steps,
        },
        current_image: current_image.filter(|_| running),
        textinfo: running.then(|| step_text(step, steps)),
    }))
}

/// The progress line both `/sdapi/v1/progress` and `/internal/progress` show.
pub fn step_text(step: usize, total: usize) -> String {
    format!("Step {step}/{total}")
}

fn mine(caller: &Caller, entry: &JobEntry) -> bool {
    entry.origin == Dialect::A1111 && entry.client == caller.client
}

/// Interrupt the caller's A1111 jobs: running ones stop denoising and return
/// the images decoded from where they stopped (200, as A1111); queued ones are
/// cancelled.
#[utoipa::path(post, path = "/sdapi/v1/interrupt", tag = "a1111",
    responses((status = 200, description = "Interrupted", body = Object), A1111Errors))]
pub async fn interrupt(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Json<serde_json::Value> {
    let who = caller.clone();
    let finished = state.jobs.finish_early_where(|e| mine(&who, e));
    let who = caller.clone();
    let n = state
        .jobs
        .cancel_where_off_runtime(move |e| mine(&who, e) && e.status() == JobStatus::Queued)
        .await;
    tracing::info!(finished, cancelled = n, client = ?caller.client, "a1111 interrupt");
    Json(serde_json::json!({}))
}

/// Skip the caller's running A1111 job: as in A1111, its sampling stops and
/// the request answers 200 with the images decoded from where they stopped;
/// its queued jobs go on. (A1111 skips one iteration of `n_iter`; sdserve
/// runs a request's iterations together, so they all stop at that step.)
#[utoipa::path(post, path = "/sdapi/v1/skip", tag = "a1111",
    responses((status = 200, description = "Skipped", body = Object), A1111Errors))]
pub async fn skip(State(state): State<Arc<AppState>>, caller: Caller) -> Json<serde_json::Value> {
    let who = caller.clone();
    let finished = state.jobs.finish_early_where(|e| mine(&who, e));
    tracing::info!(finished, client = ?caller.client, "a1111 skip");
    Json(serde_json::json!({}))
}
