//! The worker threads, one per device: the only place the engine runs. Each
//! takes the next batch
//! from the queue (jobs of one model only), leases that model from the pool
//! of its device (loading it if it is not loaded, evicting the least recently
//! used), runs
//! it through the [`Backend`] on this plain OS thread (never on the async
//! runtime), reports steps and polls cancel flags through an
//! [`Observer`], encodes and stores each job's PNGs, and publishes the outcome.
//! A panic inside the engine fails that batch's jobs; the thread lives on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::id::ImageId;
use super::job::{FailureKind, ImageRecord, JobFailure, JobStatus, JobTimings, StepProgress};
use super::manager::{JobEntry, Jobs};
use crate::backend::Backend;
use crate::engine_api::{
    png, EngineError, GeneratedImage, GenerationOutput, Observer, Preview, Progress,
};
use crate::models::Models;

/// Starts one worker thread per device; each runs until [`Jobs::stop_worker`]
/// and an empty queue.
pub fn spawn(jobs: Jobs, models: Arc<Models>) -> std::io::Result<()> {
    jobs.set_workers(models.devices().len());
    for (worker, device) in models.devices().iter().enumerate() {
        let (jobs, models) = (jobs.clone(), models.clone());
        let label = device.label.clone();
        std::thread::Builder::new()
            .name(format!("sdserve-worker-{worker}"))
            .spawn(move || {
                while let Some(model) = jobs.next_model() {
                    run_next(&jobs, &models, worker, &model);
                }
                tracing::info!(device = %label, "worker stopped");
            })?;
    }
    Ok(())
}

/// Loads (if needed) the model of the next job on `worker`'s device, then
/// runs that job's batch on it. A model that cannot be loaded fails its
/// queued jobs.
fn run_next(jobs: &Jobs, models: &Models, worker: usize, model: &str) {
    // "" is a job recorded before models could be switched: the default model.
    let name = match model {
        "" => models.default_name(),
        named => named.to_string(),
    };
    let lease = match models.catalog().by_name(&name) {
        Some(listed) => models
            .acquire_on(worker, &listed)
            .map_err(|e| e.to_string()),
        None => Err(format!("model {name:?} is no longer served")),
    };
    let lease = match lease {
        Ok(lease) => lease,
        Err(message) => {
            let failed = jobs.fail_queued(model, FailureKind::Internal, &message);
            tracing::error!(model = %name, failed, error = %message, "model unavailable; its queued jobs failed");
            return;
        }
    };
    let backend = lease.backend().clone();
    if let Some(batch) = jobs.next_batch_for(worker, model, |r| backend.max_batch_images(r)) {
        run_batch(jobs, backend.as_ref(), worker, &batch);
    }
}

/// Progress and cancellation bridge between the engine and the batch's jobs.
struct BatchObserver<'a> {
    jobs: &'a Jobs,
    worker: usize,
    batch: &'a [Arc<JobEntry>],
}

impl Observer for BatchObserver<'_> {
    fn progress(&mut self, progress: Progress) {
        if let Progress::Step { step, total } = progress {
            for entry in self.batch {
                entry
                    .state
                    .send_modify(|s| s.progress = Some(StepProgress { step, total }));
            }
            self.jobs.set_step(self.worker, step, total);
        }
    }

    fn is_cancelled(&mut self, index: usize) -> bool {
        self.batch
            .get(index)
            .is_some_and(|e| e.cancel.load(Ordering::Relaxed))
    }

    fn wants_preview(&mut self) -> bool {
        true
    }

    fn preview(&mut self, preview: Preview) {
        let Some(entry) = self.batch.get(preview.job) else {
            return;
        };
        let job = entry.id;
        let image = GeneratedImage {
            width: preview.width,
            height: preview.height,
            rgb: preview.rgb,
            seed: 0,
            infotext: String::new(),
        };
        if let Ok(png) = png::encode_png(&image) {
            self.jobs.set_preview(self.worker, job, png);
        }
    }

    fn finish_early(&mut self, index: usize) -> bool {
        self.batch
            .get(index)
            .is_some_and(|e| e.finish_early.load(Ordering::Relaxed))
    }
}

fn run_batch(jobs: &Jobs, backend: &dyn Backend, worker: usize, batch: &[Arc<JobEntry>]) {
    let metrics = &jobs.shared.metrics;
    let requests: Vec<_> = batch.iter().map(|e| e.request.clone()).collect();
    metrics.batch_size.observe(batch.len() as f64);
    let ids: Vec<String> = batch.iter().map(|e| e.id.to_string()).collect();
    let span = tracing::info_span!("batch", jobs = ?ids, steps = requests.first().map(|r| r.steps));
    let _guard = span.enter();

    let started = Instant::now();
    let mut observer = BatchObserver {
        jobs,
        worker,
        batch,
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        backend.generate_batch(&requests, &mut observer)
    }));
    let results: Vec<Result<GenerationOutput, EngineError>> = match outcome {
        Ok(Ok(results)) if results.len() == batch.len() => results,
        Ok(Ok(results)) => {
            let message = format!(
                "engine returned {} results for {} jobs",
                results.len(),
                batch.len()
            );
            fail_all(jobs, batch, FailureKind::Internal, &message);
            jobs.batch_done(worker, started.elapsed().as_secs_f64());
            return;
        }
        Ok(Err(e)) => {
            let (kind, message) = classify(&e);
            if matches!(e, EngineError::Cancelled) {
                for entry in batch {
                    jobs.shared
                        .finish(entry, entry.snapshot(), JobStatus::Cancelled, None);
                }
            } else {
                fail_all(jobs, batch, kind, &message);
            }
            jobs.batch_done(worker, started.elapsed().as_secs_f64());
            return;
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %what, "engine panicked");
            fail_all(
                jobs,
                batch,
                FailureKind::Internal,
                &format!("engine panicked: {what}"),
            );
            jobs.batch_done(worker, started.elapsed().as_secs_f64());
            return;
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    if let Some(Ok(first)) = results.first() {
        let t = first.timings;
        for (stage, value) in [
            ("text_encoding", t.text_encoding),
            ("denoising", t.denoising),
            ("decoding", t.decoding),
        ] {
            metrics
                .inference_duration_seconds
                .with_label_values(&[stage])
                .observe(value);
        }
    }
    for (entry, result) in batch.iter().zip(results) {
        finish_job(jobs, entry, result);
    }
    jobs.batch_done(worker, seconds);
}

/// What a client is told about an engine error, and whose fault it is.
fn classify(e: &EngineError) -> (FailureKind, String) {
    match e {
        EngineError::InvalidRequest(msg) => (FailureKind::InvalidRequest, msg.clone()),
        other => (FailureKind::Generation, other.to_string()),
    }
}

fn fail_all(jobs: &Jobs, batch: &[Arc<JobEntry>], kind: FailureKind, message: &str) {
    for entry in batch {
        let failure = JobFailure {
            kind,
            message: message.to_string(),
        };
        jobs.shared
            .finish(entry, entry.snapshot(), JobStatus::Failed, Some(failure));
    }
}

fn finish_job(jobs: &Jobs, entry: &JobEntry, result: Result<GenerationOutput, EngineError>) {
    let shared = &jobs.shared;
    let snap = entry.snapshot();
    let output = match result {
        Ok(output) => output,
        Err(EngineError::Cancelled) => {
            shared.finish(entry, snap, JobStatus::Cancelled, None);
            return;
        }
        Err(e) => {
            let (kind, message) = classify(&e);
            shared.finish(
                entry,
                snap,
                JobStatus::Failed,
                Some(JobFailure { kind, message }),
            );
            return;
        }
    };
    let encode_start = Instant::now();
    let mut images: Vec<ImageRecord> = Vec::with_capacity(output.images.len());
    for image in &output.images {
        let id = ImageId::new();
        let stored = match png::encode_png(image) {
            Err(e) => Err((
                FailureKind::Internal,
                format!("could not encode the image: {e}"),
            )),
            Ok(bytes) => shared
                .store
                .write_png(id, &entry.client, &bytes)
                .map_err(|e| {
                    let dir = shared.store.location();
                    (
                        FailureKind::Storage,
                        format!("could not store the image in {dir}: {e}"),
                    )
                }),
        };
        if let Err((kind, message)) = stored {
            tracing::error!(job = %entry.id, error = %message, "could not store image");
            // No orphans: the images already written go with the failed job.
            if let Err(e) = shared.store.remove_images(images.iter().map(|i| i.id)) {
                tracing::error!(job = %entry.id, error = %e, "could not remove its images");
            }
            let failure = JobFailure { kind, message };
            shared.finish(entry, snap, JobStatus::Failed, Some(failure));
            return;
        }
        images.push(ImageRecord {
            id,
            seed: image.seed,
            infotext: image.infotext.clone(),
        });
    }
    let encoding = encode_start.elapsed().as_secs_f64();
    shared
        .metrics
        .inference_duration_seconds
        .with_label_values(&["png_encoding"])
        .observe(encoding);
    let mut snap = snap;
    snap.images = images;
    let t = output.timings;
    snap.timings = Some(JobTimings {
        queue: snap
            .started_at
            .map_or(0.0, |started| (started - snap.created_at).max(0.0)),
        text_encoding: t.text_encoding,
        denoising: t.denoising,
        decoding: t.decoding,
        encoding,
        total: entry.enqueued.elapsed().as_secs_f64(),
    });
    shared.finish(entry, snap, JobStatus::Succeeded, None);
}
