//! The facade every handler calls (TGI's `Infer`, for images): the served
//! models (or "still loading"), the gate from a dialect's spec to an accepted
//! job on its model, request accounting in the metrics, and reading results back.

use std::sync::{Arc, Mutex, OnceLock};

use crate::config::ServerConfig;
use crate::dialects::Dialect;
use crate::engine_api::{LoraEntry, ModelInfo, PromptSyntax};
use crate::error::ApiError;
use crate::extract::Caller;
use crate::jobs::{
    Deleted, FailureKind, ImageId, JobHandle, JobId, JobSnapshot, JobStatus, Jobs, Keep, TaskNames,
};
use crate::metrics::Metrics;
use crate::models::{Listed, Models};
use crate::signing::UrlSigner;
use crate::validation::{validate, JobSpec, ValidJob, ValidationError};

/// Shared state of one server.
pub struct AppState {
    /// The configuration it was built with.
    pub config: ServerConfig,
    /// The job system.
    pub jobs: Jobs,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Unix time the server was built (OpenAI's `created` of the model).
    pub started_unix: u64,
    /// Signs the image links of OpenAI's `response_format: url`.
    pub signer: UrlSigner,
    /// The names callers gave their jobs (A1111's `force_task_id`).
    pub task_names: TaskNames,
    /// A1111's server-wide text settings (`POST /sdapi/v1/options`), used
    /// by A1111 requests that do not override them.
    pub a1111_text: Mutex<TextSettings>,
    pub(crate) models: OnceLock<Arc<Models>>,
}

/// How A1111 requests read prompts unless they say otherwise: its
/// `CLIP_stop_at_last_layers` (as diffusers' clip skip) and `emphasis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextSettings {
    /// diffusers' clip skip (A1111's setting less one).
    pub clip_skip: usize,
    /// `Original` emphasis is the A1111 syntax, `None` plain text.
    pub prompt_syntax: PromptSyntax,
}

impl Default for TextSettings {
    fn default() -> Self {
        Self {
            clip_skip: 0,
            prompt_syntax: PromptSyntax::A1111,
        }
    }
}

impl AppState {
    /// A1111's server-wide text settings as they are now.
    pub fn a1111_text(&self) -> TextSettings {
        *self.a1111_text.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The LoRA files of `--lora-dir` (none without it); each header is
    /// read from disk, so off the runtime.
    pub async fn lora_entries(&self) -> Vec<LoraEntry> {
        let Some(dir) = self.config.lora_dir.clone() else {
            return Vec::new();
        };
        tokio::task::spawn_blocking(move || dir.list())
            .await
            .unwrap_or_default()
    }

    /// The served models, or 503 while the default model loads.
    pub fn models(&self) -> Result<&Arc<Models>, ApiError> {
        self.models.get().ok_or(ApiError::NotReady)
    }

    /// Facts about the default model, or 503 while it loads.
    pub fn model(&self) -> Result<ModelInfo, ApiError> {
        let models = self.models()?;
        models
            .info(&models.default_name())
            .ok_or_else(|| ApiError::Internal("the default model was never loaded".into()))
    }

    /// The model a finished job ran on, with its hash as known now.
    pub fn job_model(&self, snapshot: &JobSnapshot) -> Option<Listed> {
        let models = self.models.get()?;
        match snapshot.params.model.as_deref() {
            Some(name) if !name.is_empty() => models.catalog().by_name(name),
            _ => models.default_model(),
        }
    }

    /// Ready for traffic: default model loaded, not draining, enough free disk.
    pub fn is_ready(&self) -> bool {
        self.models.get().is_some()
            && !self.jobs.is_draining()
            && self.jobs.storage_problem().is_none()
    }

    /// The gate: counts the request, validates it, records and queues it, or says why not.
    pub async fn submit(
        &self,
        dialect: Dialect,
        caller: &Caller,
        spec: Result<JobSpec, ApiError>,
    ) -> Result<JobHandle, ApiError> {
        self.submit_with(dialect, caller, spec, Keep::Stored).await
    }

    /// [`AppState::submit`], saying whether the result outlives the response.
    pub async fn submit_with(
        &self,
        dialect: Dialect,
        caller: &Caller,
        spec: Result<JobSpec, ApiError>,
        keep: Keep,
    ) -> Result<JobHandle, ApiError> {
        self.metrics
            .requests_total
            .with_label_values(&[dialect.as_str()])
            .inc();
        let result = async {
            let spec = spec?;
            if self.jobs.is_draining() {
                return Err(ApiError::Draining);
            }
            let models = self.models()?;
            let model = models.resolve(spec.model.as_deref(), spec.names.model)?;
            // Validation needs the model's own facts and memory plan: load it
            // (on a blocking thread) if it is not loaded.
            let lease = models.acquire(model).await?;
            let request = validate(spec, &self.config.limits, lease.backend().as_ref())?;
            let job = ValidJob {
                request,
                client: caller.client.clone(),
                dialect,
                model: lease.name().to_string(),
            };
            drop(lease);
            // Admission fsyncs the job's record: off the async runtime. If this
            // request is dropped meanwhile, the job is still admitted and runs;
            // a response-only result is then removed by retention.
            let jobs = self.jobs.clone();
            tokio::task::spawn_blocking(move || jobs.submit(job, keep))
                .await
                .unwrap_or_else(|e| Err(ApiError::Internal(format!("admission failed: {e}"))))
        }
        .await;
        if let Err(e) = &result {
            self.metrics.failure(failure_reason(e));
        }
        result
    }

    /// Removes a finished response-only job's images and record (once its
    /// synchronous response holds the images).
    pub async fn discard(&self, snapshot: JobSnapshot) {
        let jobs = self.jobs.clone();
        let _ = tokio::task::spawn_blocking(move || jobs.discard(&snapshot)).await;
    }

    /// Waits for a synchronous dialect's job; a failed or cancelled job becomes an error.
    pub async fn wait_success(&self, handle: &JobHandle) -> Result<JobSnapshot, ApiError> {
        let snapshot = handle.finished().await;
        match snapshot.status {
            JobStatus::Succeeded => Ok(snapshot),
            JobStatus::Cancelled => Err(ApiError::Cancelled(snapshot.id.to_string())),
            _ => {
                let (kind, message) = snapshot
                    .error
                    .map(|e| (e.kind, e.message))
                    .unwrap_or((FailureKind::Internal, "job failed".into()));
                Err(match kind {
                    FailureKind::InvalidRequest => ValidationError::Engine(message).into(),
                    FailureKind::Generation => ApiError::Generation(message),
                    FailureKind::Storage => ApiError::Storage(message),
                    FailureKind::Internal | FailureKind::Interrupted => ApiError::Internal(message),
                })
            }
        }
    }

    /// A job's state as `caller` may see it: from memory, else from its stored
    /// record (after a restart, or a job another replica ran on a shared bucket). Another caller's job, or a deleted one,
    /// answers exactly as an unknown id.
    pub async fn job_for(&self, id: JobId, caller: &Caller) -> Result<JobSnapshot, ApiError> {
        let unknown = || ApiError::JobNotFound(id.to_string());
        if let Some(entry) = self.jobs.entry(id) {
            if entry.is_deleted() || !caller.may_see(&entry.client) {
                return Err(unknown());
            }
            return Ok(entry.snapshot());
        }
        let record = self
            .jobs
            .store()
            .read_record(id)
            .await
            .ok_or_else(unknown)?;
        if !caller.may_see(&record.client_id()) {
            return Err(unknown());
        }
        Ok(record.snapshot)
    }

    /// The newest `limit` jobs `caller` may see whose results are kept: those
    /// in memory, then records on disk (blocking reads, off the runtime).
    pub async fn jobs_for(
        &self,
        caller: &Caller,
        limit: usize,
    ) -> Result<Vec<JobSnapshot>, ApiError> {
        let jobs = self.jobs.clone();
        let caller = caller.clone();
        tokio::task::spawn_blocking(move || jobs.recent(|owner| caller.may_see(owner), limit))
            .await
            .map_err(|e| ApiError::Internal(format!("job listing failed: {e}")))
    }

    /// Deletes a job the caller may see (cancelling it first if unfinished).
    pub async fn delete_job(&self, id: JobId, caller: &Caller) -> Result<(), ApiError> {
        self.job_for(id, caller).await?;
        let jobs = self.jobs.clone();
        match tokio::task::spawn_blocking(move || jobs.delete(id)).await {
            Ok(Ok(Deleted::Removed)) => Ok(()),
            Ok(Ok(Deleted::Unknown)) => Err(ApiError::JobNotFound(id.to_string())),
            Ok(Err(e)) => Err(ApiError::Storage(format!("could not delete job {id}: {e}"))),
            Err(e) => Err(ApiError::Internal(format!("delete task failed: {e}"))),
        }
    }

    /// The PNG bytes of an image `caller` may see; another caller's image
    /// answers exactly as an unknown id.
    pub async fn image_for(&self, id: ImageId, caller: &Caller) -> Result<Vec<u8>, ApiError> {
        if caller.restricted
            && self.jobs.store().image_owner(id).await.as_ref() != Some(&caller.client)
        {
            return Err(ApiError::ImageNotFound(id.to_string()));
        }
        self.image_png(id).await
    }

    /// The PNG bytes of one image, whoever owns it (signed links, a job's own results).
    pub async fn image_png(&self, id: ImageId) -> Result<Vec<u8>, ApiError> {
        match self.jobs.store().read_png(id).await {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(ApiError::ImageNotFound(id.to_string())),
            Err(e) => Err(ApiError::Internal(format!(
                "could not read image {id}: {e}"
            ))),
        }
    }

    /// The PNG bytes of every image of a finished job, in order.
    pub async fn job_pngs(&self, snapshot: &JobSnapshot) -> Result<Vec<Vec<u8>>, ApiError> {
        let mut out = Vec::with_capacity(snapshot.images.len());
        for image in &snapshot.images {
            out.push(self.image_png(image.id).await?);
        }
        Ok(out)
    }
}

/// The `reason` label of `sd_request_failures_total` for a refused request.
fn failure_reason(error: &ApiError) -> &'static str {
    match error {
        ApiError::QueueFull { .. } => "queue_full",
        ApiError::Draining => "draining",
        ApiError::NotReady => "not_ready",
        ApiError::Storage(_) => "storage",
        e if e.status().is_client_error() => "invalid_request",
        _ => "internal",
    }
}
