//! Handlers of the native API: submit, status, cancel, events, images
//! (listings are in `listings.rs`).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use tokio::sync::watch;

use super::wire::{CreateJob, JobAccepted, JobEvent, JobView};
use super::{Native, NativeErrors};
use crate::dialects::images;
use crate::dialects::Dialect;
use crate::engine_api::{GrayImage, ImageToImage};
use crate::error::{ApiError, Rejection};
use crate::extract::{parse_id, parse_json, Caller};
use crate::jobs::{ImageId, JobId, JobSnapshot, JobStatus};
use crate::state::AppState;
use crate::validation::{InitSpec, ValidationError};

type Result<T> = std::result::Result<T, Rejection<Native>>;

/// Queue a generation job; answers at once with its id.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "native", request_body = CreateJob,
    responses(
        (status = 202, description = "Accepted", body = JobAccepted,
            headers(("Location" = String, description = "URL of the job"))),
        NativeErrors))]
pub async fn create_job(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let spec = match parse_json::<CreateJob>(body, state.config.limits.max_body_bytes) {
        Ok(job) => match init_spec(&state, &caller, &job).await {
            Ok(init) => job.into_spec(init).map_err(ApiError::from),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let handle = state.submit(Dialect::Native, &caller, spec).await?;
    let snap = handle.snapshot();
    let location = format!("/api/v1/jobs/{}", snap.id);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(JobAccepted {
            id: snap.id,
            status: snap.status,
            queue_position: snap.queue_position,
        }),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// The request's `init_image` and `mask`, each base64 or the id of an image
/// the caller may see, decoded by the bounded decoder.
async fn init_spec<'a>(
    state: &'a AppState,
    caller: &'a Caller,
    job: &'a CreateJob,
) -> std::result::Result<Option<InitSpec>, ApiError> {
    let Some(image) = &job.init_image else {
        if job.mask.is_some() || job.strength.is_some() {
            let field = if job.mask.is_some() {
                "mask"
            } else {
                "strength"
            };
            return Err(ValidationError::Invalid {
                field,
                message: "needs `init_image`".into(),
            }
            .into());
        }
        return Ok(None);
    };
    let bytes = |field: &'static str, text: &'a str| image_bytes(state, caller, field, text);
    let image = Arc::new(images::decode(
        "init_image",
        &bytes("init_image", image).await?,
    )?);
    let mask = match &job.mask {
        Some(mask) => {
            let rgb = images::decode("mask", &bytes("mask", mask).await?)?;
            Some(Arc::new(GrayImage::from_rgb(&rgb)))
        }
        None => None,
    };
    Ok(Some(InitSpec {
        image,
        default_strength: ImageToImage::default_strength(mask.is_some()),
        mask,
        strength: job.strength,
        strength_field: "strength",
        resize_latents: false,
        overlay: None,
        paste: None,
    }))
}

/// An image field's bytes: a canonical UUID is the id of an image the caller
/// may see (base64 never has hyphens), anything else base64.
async fn image_bytes(
    state: &AppState,
    caller: &Caller,
    field: &'static str,
    text: &str,
) -> std::result::Result<Vec<u8>, ApiError> {
    match text.parse::<ImageId>() {
        Ok(id) => state.image_for(id, caller).await,
        Err(_) => images::base64_bytes(field, text),
    }
}

/// A job's state, progress, error and images (also after a restart).
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "native",
    params(("id" = uuid::Uuid, Path, description = "Job id")),
    responses((status = 200, description = "The job", body = JobView), NativeErrors))]
pub async fn get_job(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Json<JobView>> {
    let id: JobId = parse_id(path)?;
    let snapshot = state.job_for(id, &caller).await?;
    Ok(Json(view_with_preview(&state, snapshot)))
}

/// Cancel a job and keep it: a queued job ends at once, a running one at its
/// next step; its state stays readable.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "native",
    params(("id" = uuid::Uuid, Path, description = "Job id")),
    responses((status = 200, description = "Cancelled, or cancelling", body = JobView), NativeErrors))]
pub async fn cancel_job(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Json<JobView>> {
    let id: JobId = parse_id(path)?;
    state.job_for(id, &caller).await?;
    match state.jobs.cancel_off_runtime(id).await {
        Ok(snapshot) => Ok(Json(snapshot.into())),
        Err(ApiError::JobNotFound(_)) => {
            // Finished before a restart: known on disk, so it is a conflict, not a 404.
            Err(ApiError::AlreadyFinished(id.to_string()).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Delete a job: cancelled first if unfinished, then its images and record are
/// removed; the id answers 404 from then on.
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "native",
    params(("id" = uuid::Uuid, Path, description = "Job id")),
    responses((status = 204, description = "Deleted"), NativeErrors))]
pub async fn delete_job(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<StatusCode> {
    let id: JobId = parse_id(path)?;
    state.delete_job(id, &caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

type EventStream = Pin<Box<dyn Stream<Item = std::result::Result<Event, Infallible>> + Send>>;

/// The job's view with its live preview, while it runs (the caller may see
/// the job, and the preview is of this job only).
pub(super) fn view_with_preview(state: &AppState, snapshot: JobSnapshot) -> JobView {
    let preview = match snapshot.status {
        JobStatus::Running => state.jobs.preview_of(snapshot.id),
        _ => None,
    };
    JobView::from(snapshot).with_preview(preview.as_deref().map(Vec::as_slice))
}

fn event(state: &AppState, name: &str, snapshot: JobSnapshot) -> Event {
    let view = view_with_preview(state, snapshot);
    let data = serde_json::to_string(&view).unwrap_or_default();
    Event::default().event(name).data(data)
}

/// Server-sent events for one job: `state` on each status change, `progress` on
/// each step or queue move, each carrying the job as `GET /jobs/{id}` shows it;
/// the stream ends after the terminal state.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/events", tag = "native",
    params(("id" = uuid::Uuid, Path, description = "Job id")),
    responses((status = 200, description = "Event stream of JobView payloads",
        content_type = "text/event-stream", body = JobEvent), NativeErrors))]
pub async fn job_events(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id: JobId = parse_id(path)?;
    let snap = state.job_for(id, &caller).await?;
    let stream: EventStream = match state.jobs.entry(id) {
        Some(entry) => {
            let rx = entry.subscribe();
            let state = state.clone();
            Box::pin(futures_util::stream::unfold(
                (rx, None::<JobStatus>, true),
                move |(mut rx, last, first): (
                    watch::Receiver<JobSnapshot>,
                    Option<JobStatus>,
                    bool,
                )| {
                    let state = state.clone();
                    async move {
                        if last.is_some_and(JobStatus::is_terminal) {
                            return None;
                        }
                        if !first && rx.changed().await.is_err() {
                            return None;
                        }
                        let snap = rx.borrow_and_update().clone();
                        let name = if last == Some(snap.status) {
                            "progress"
                        } else {
                            "state"
                        };
                        let status = snap.status;
                        Some((Ok(event(&state, name, snap)), (rx, Some(status), false)))
                    }
                },
            ))
        }
        None => Box::pin(futures_util::stream::iter([Ok(event(
            &state, "state", snap,
        ))])),
    };
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// An image's PNG (with its A1111 `parameters` text chunk).
#[utoipa::path(get, path = "/api/v1/images/{id}", tag = "native",
    params(("id" = uuid::Uuid, Path, description = "Image id")),
    responses((status = 200, description = "PNG image", content_type = "image/png", body = Vec<u8>),
        NativeErrors))]
pub async fn get_image(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id: ImageId = parse_id(path)?;
    let png = state.image_for(id, &caller).await?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}
