//! `POST /sdapi/v1/txt2img`: synchronous generation, A1111-style. The request
//! waits for its job; if the client disconnects first, the job is cancelled.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use base64::Engine as _;

use super::wire::{info, parameters, Txt2ImgRequest, Txt2ImgResponse};
use super::{A1111Errors, A1111};
use crate::dialects::Dialect;
use crate::error::{ApiError, Rejection};
use crate::extract::{parse_json, Caller};
use crate::jobs::{JobHandle, Keep};
use crate::state::AppState;
use crate::validation::JobSpec;

/// Generate images from a prompt (A1111 compatible).
#[utoipa::path(post, path = "/sdapi/v1/txt2img", tag = "a1111", request_body = Txt2ImgRequest,
    responses((status = 200, description = "Images and generation info", body = Txt2ImgResponse),
        A1111Errors))]
pub async fn txt2img(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Txt2ImgResponse>, Rejection<A1111>> {
    let limits = &state.config.limits;
    let (request, spec) = match parse_json::<Txt2ImgRequest>(body, limits.max_body_bytes) {
        Ok(request) => {
            let spec = request
                .to_spec(limits, state.a1111_text())
                .map_err(ApiError::from);
            (request, spec)
        }
        Err(e) => (Txt2ImgRequest::default(), Err(e)),
    };
    let handle = submit(&state, &caller, &request, spec).await?;
    let response = respond(&state, &handle, &request).await;
    finish(&state, &handle, &request).await;
    response.map(Json)
}

/// Queues an A1111 job (txt2img's, or img2img's with `request` its txt2img
/// part): keeps its files only with `save_images`, names it for
/// `force_task_id`, and makes an override not to restore the default model.
pub(super) async fn submit(
    state: &AppState,
    caller: &Caller,
    request: &Txt2ImgRequest,
    spec: Result<JobSpec, ApiError>,
) -> Result<JobHandle, Rejection<A1111>> {
    let handle = state
        .submit_with(Dialect::A1111, caller, spec, keep(request))
        .await?
        .cancel_on_drop();
    if let Some(name) = &request.force_task_id {
        // The client follows this name on /internal/progress while we wait.
        state.task_names.insert(&caller.client, name, handle.id());
    }
    if request.override_settings_restore_afterwards == Some(false) {
        // A1111 keeps an override it is told not to restore: it becomes the default.
        if let (Some(asked), Ok(models)) = (request.override_model(), state.models()) {
            if let Some(model) = models.catalog().find(asked) {
                models.set_default(&model.entry.name);
            }
        }
    }
    Ok(handle)
}

/// As in A1111, `save_images` defaults to false: the images then live only
/// in the response, and their files are removed once it is built.
fn keep(request: &Txt2ImgRequest) -> Keep {
    if request.save_images.unwrap_or(false) {
        Keep::Stored
    } else {
        Keep::ResponseOnly
    }
}

/// After the response is built: drops the job's files unless it keeps them.
pub(super) async fn finish(state: &AppState, handle: &JobHandle, request: &Txt2ImgRequest) {
    if keep(request) == Keep::ResponseOnly {
        state.discard(handle.snapshot()).await;
    }
}

/// The answer for a finished job.
async fn respond(
    state: &AppState,
    handle: &JobHandle,
    request: &Txt2ImgRequest,
) -> Result<Txt2ImgResponse, Rejection<A1111>> {
    let snapshot = state.wait_success(handle).await?;
    let images = if request.send_images.unwrap_or(true) {
        let pngs = state.job_pngs(&snapshot).await?;
        pngs.iter()
            .map(|png| base64::engine::general_purpose::STANDARD.encode(png))
            .collect()
    } else {
        Vec::new()
    };
    let model = state.job_model(&snapshot);
    Ok(Txt2ImgResponse {
        images,
        parameters: parameters(request, &snapshot),
        info: info(request, &snapshot, model.as_ref()),
    })
}
