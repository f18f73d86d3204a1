//! A1111 1.8+'s multi-client tracking: a client names its request with
//! `force_task_id` and, while the synchronous call waits, asks
//! `POST /internal/progress` about that name; `GET /internal/pending-tasks`
//! lists the names still queued. Names map to jobs through
//! [`crate::jobs::TaskNames`], which keeps them per caller: with keys, a
//! caller sees only its own names, and an unknown (or another caller's) name
//! answers as A1111 answers an unknown task: not active, queued nor completed.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::status::step_text;
use super::{A1111Errors, A1111};
use crate::error::Rejection;
use crate::extract::{parse_json, Caller};
use crate::jobs::job::unix_now;
use crate::jobs::{JobSnapshot, JobStatus};
use crate::state::AppState;
use crate::validation::ValidationError;

/// A1111's `textinfo` for a task that is not running (and not queued).
const WAITING: &str = "Waiting...";

/// `POST /internal/progress` body (A1111's `ProgressRequest`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct InternalProgressRequest {
    /// The task's name: the `force_task_id` its txt2img request carried.
    pub id_task: Option<String>,
    /// The id of the last live preview the client received (default -1: none).
    #[schema(minimum = -1, maximum = 2147483647)]
    #[serde(deserialize_with = "crate::extract::whole_number::option_i64")]
    pub id_live_preview: Option<i64>,
    /// Whether to include a live preview (default true; none are made yet).
    pub live_preview: Option<bool>,
}

/// `POST /internal/progress` answer (A1111's `ProgressResponse`).
#[derive(Debug, Serialize, ToSchema)]
pub struct InternalProgressResponse {
    /// The task is running now.
    pub active: bool,
    /// The task waits in the queue.
    pub queued: bool,
    /// The task has finished (succeeded, failed or cancelled).
    pub completed: bool,
    /// Fraction done, 0 to 1 (only while active).
    pub progress: Option<f64>,
    /// Estimated seconds left (only while active, once a step is done).
    pub eta: Option<f64>,
    /// A `data:` URI of the current preview (none are made yet: null).
    pub live_preview: Option<String>,
    /// The preview id to send next time (-1 when not active).
    pub id_live_preview: Option<i64>,
    /// `In queue: 2/5`, `Step 3/20`, or `Waiting...`.
    pub textinfo: Option<String>,
}

impl InternalProgressResponse {
    fn not_active(queued: bool, completed: bool, textinfo: String) -> Self {
        Self {
            active: false,
            queued,
            completed,
            progress: None,
            eta: None,
            live_preview: None,
            id_live_preview: Some(-1),
            textinfo: Some(textinfo),
        }
    }
}

/// What the server knows of the task a caller named `name`.
enum Named {
    /// No job of a visible owner has that name.
    Unknown,
    /// The named job, as it is now.
    Job(Box<JobSnapshot>),
    /// The named job is gone: an A1111 job's response-only result is removed
    /// once its response is built (or it was deleted, or expired), so it has
    /// finished.
    Gone,
}

async fn named_job(state: &AppState, caller: &Caller, name: &str) -> Named {
    let Some(id) = state.task_names.find(name, |owner| caller.may_see(owner)) else {
        return Named::Unknown;
    };
    match state.job_for(id, caller).await {
        Ok(job) => Named::Job(Box::new(job)),
        Err(_) => Named::Gone,
    }
}

/// Progress of the task a client named with `force_task_id`.
#[utoipa::path(post, path = "/internal/progress", tag = "a1111",
    request_body = InternalProgressRequest,
    responses((status = 200, description = "The task's state", body = InternalProgressResponse),
        A1111Errors))]
pub async fn internal_progress(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<InternalProgressResponse>, Rejection<A1111>> {
    let request: InternalProgressRequest = parse_json(body, state.config.limits.max_body_bytes)?;
    if let Some(id) = request.id_live_preview {
        if !(-1..=i64::from(i32::MAX)).contains(&id) {
            return Err(ValidationError::Invalid {
                field: "id_live_preview",
                message: format!(
                    "must be -1 (none) or a preview id up to {}, got {id}",
                    i32::MAX
                ),
            }
            .into());
        }
    }
    let named = match &request.id_task {
        Some(name) => named_job(&state, &caller, name).await,
        None => Named::Unknown,
    };
    let job = match named {
        Named::Job(job) => job,
        Named::Unknown | Named::Gone => {
            let completed = matches!(named, Named::Gone);
            return Ok(Json(InternalProgressResponse::not_active(
                false,
                completed,
                WAITING.into(),
            )));
        }
    };
    let answer = match job.status {
        JobStatus::Queued => {
            let ahead = job.queue_position.unwrap_or(0);
            let queued = state.jobs.queued().max(ahead + 1);
            InternalProgressResponse::not_active(
                true,
                false,
                format!("In queue: {}/{queued}", ahead + 1),
            )
        }
        JobStatus::Running => {
            let (step, total) = job.progress.map_or((0, 0), |p| (p.step, p.total));
            let fraction = if total > 0 {
                (step as f64 / total as f64).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let elapsed = job.started_at.map_or(0.0, |t| (unix_now() - t).max(0.0));
            // A newer preview than the client's id, when it asks for one.
            let client_preview = request.id_live_preview.unwrap_or(-1);
            let preview = state
                .jobs
                .current_preview()
                .filter(|(id, _)| request.live_preview == Some(true) && *id > client_preview);
            InternalProgressResponse {
                active: true,
                queued: false,
                completed: false,
                progress: Some(fraction),
                eta: (fraction > 0.0).then(|| elapsed / fraction - elapsed),
                live_preview: preview.as_ref().map(|(_, png)| {
                    format!(
                        "data:image/png;base64,{}",
                        base64::engine::general_purpose::STANDARD.encode(png.as_slice())
                    )
                }),
                // Without a new preview the client's id stands, as A1111 answers then.
                id_live_preview: Some(preview.map_or(client_preview, |(id, _)| id)),
                textinfo: Some(step_text(step, total)),
            }
        }
        _ => InternalProgressResponse::not_active(false, true, WAITING.into()),
    };
    Ok(Json(answer))
}

/// `GET /internal/pending-tasks` answer (A1111's `PendingTasksResponse`).
#[derive(Debug, Serialize, ToSchema)]
pub struct PendingTasksResponse {
    /// How many.
    pub size: usize,
    /// The queued tasks' names, in the order they were submitted.
    pub tasks: Vec<String>,
}

/// The names (`force_task_id`) of the caller's tasks still in the queue.
/// Also served as `/internal/pendingTasks`.
#[utoipa::path(get, path = "/internal/pending-tasks", tag = "a1111",
    responses((status = 200, description = "Queued task names", body = PendingTasksResponse),
        A1111Errors))]
pub async fn pending_tasks(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Json<PendingTasksResponse> {
    let mut queued: Vec<(u64, String)> = state
        .task_names
        .visible(|owner| caller.may_see(owner))
        .into_iter()
        .filter_map(|(name, id)| {
            let entry = state.jobs.entry(id)?;
            (entry.status() == JobStatus::Queued && !entry.is_deleted())
                .then_some((entry.seq, name))
        })
        .collect();
    queued.sort();
    let tasks: Vec<String> = queued.into_iter().map(|(_, name)| name).collect();
    Json(PendingTasksResponse {
        size: tasks.len(),
        tasks,
    })
}
