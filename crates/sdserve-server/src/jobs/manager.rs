//! The job facade every dialect goes through: admits validated jobs into the one
//! bounded queue (or refuses with 429), tracks each job's state, cancels, and
//! hands the worker thread its next batch.
//!
//! State lives behind one `std::sync::Mutex`, held only for short, non-blocking
//! updates (never across an `.await` or an engine call); the worker sleeps on a
//! `Condvar`. Each job publishes its [`JobSnapshot`] on a `tokio::sync::watch`
//! channel, which is how waiters, SSE streams and status reads see it.
//!
//! Durability: a job's record is on disk (fsynced) before [`Jobs::submit`]
//! returns, and rewritten when it ends; `recovery.rs` re-queues what a crash
//! left unfinished, `retention.rs` removes old results.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::id::JobId;
use super::job::{
    unix_now, FailureKind, JobFailure, JobParams, JobSnapshot, JobStatus, StepProgress,
};
use super::queue::{ClientId, FairQueue};
use super::record::{JobRecord, Keep};
use super::space::DiskGuard;
use super::store::Store;
use crate::dialects::Dialect;
use crate::engine_api::{batch_compatible, GenerateRequest};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::validation::ValidJob;

pub use super::handle::JobHandle;

/// Retry-After when no job has finished yet to estimate from.
const DEFAULT_RETRY_AFTER_SECS: u64 = 5;
/// Longest Retry-After ever suggested.
const MAX_RETRY_AFTER_SECS: u64 = 600;

/// Sizes and lifetimes of the job system.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Jobs that may wait in the queue at once (`--queue-size`); running jobs are not counted.
    pub capacity: usize,
    /// Images one UNet batch may hold (sum of the jobs' batch sizes).
    pub max_batch_images: usize,
    /// How long finished jobs stay in memory (their records stay on disk).
    pub finished_ttl: Duration,
    /// How long finished results stay on disk (zero: forever).
    pub result_ttl: Duration,
    /// Most bytes of finished results on disk (zero: no cap).
    pub max_output_bytes: u64,
    /// Free bytes the output disk must keep for new jobs (zero: no check).
    pub min_free_disk: u64,
}

/// One job while the server knows it in memory.
pub struct JobEntry {
    /// Its id.
    pub id: JobId,
    /// Who submitted it (for fairness and for A1111 interrupt).
    pub client: ClientId,
    /// The dialect it came through.
    pub origin: Dialect,
    /// The catalog name of the model it runs on ("" for the default model:
    /// a recovered job recorded before models could be switched).
    pub model: String,
    /// The engine request, validated.
    pub request: GenerateRequest,
    /// When it was accepted.
    pub enqueued: Instant,
    /// Admission order, kept in its record (restart order).
    pub seq: u64,
    /// Whether its result outlives the response.
    pub keep: Keep,
    pub(super) cancel: AtomicBool,
    /// Set by A1111's interrupt: stop denoising, keep the images made so far.
    pub(super) finish_early: AtomicBool,
    /// Set by `DELETE`: the job reads as unknown and is removed once it ends.
    pub(super) deleted: AtomicBool,
    pub(super) state: watch::Sender<JobSnapshot>,
}

impl JobEntry {
    /// The job's state right now.
    pub fn snapshot(&self) -> JobSnapshot {
        self.state.borrow().clone()
    }

    /// Its current status.
    pub fn status(&self) -> JobStatus {
        self.state.borrow().status
    }

    /// Follows the job's state from now on (for SSE and waiters).
    pub fn subscribe(&self) -> watch::Receiver<JobSnapshot> {
        self.state.subscribe()
    }

    /// True once a cancel was asked for.
    pub fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// True once the job was deleted: it answers as an unknown id.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }
}

/// A batch on a worker, as A1111's `/progress` reports it.
#[derive(Debug, Clone, Copy)]
pub struct CurrentBatch {
    /// When the batch started.
    pub started: Instant,
    /// Steps done.
    pub step: usize,
    /// Total steps.
    pub total: usize,
    /// Jobs in the batch.
    pub jobs: usize,
}

/// The batch one worker runs.
struct RunningBatch {
    worker: usize,
    entries: Vec<Arc<JobEntry>>,
    current: CurrentBatch,
    /// Its latest live preview (PNG), the preview's id and the job whose
    /// latents it shows.
    preview: Option<(i64, Arc<Vec<u8>>, JobId)>,
}

impl State {
    fn running_jobs(&self) -> usize {
        self.running.iter().map(|b| b.entries.len()).sum()
    }
}

#[derive(Default)]
pub(super) struct State {
    pub(super) queue: FairQueue<Arc<JobEntry>>,
    pub(super) jobs: HashMap<JobId, Arc<JobEntry>>,
    finished: VecDeque<(Instant, JobId)>,
    /// The batch each busy worker runs (one worker per device).
    running: Vec<RunningBatch>,
    /// Live previews made so far (a preview's id counts up).
    previews_made: i64,
    stop: bool,
    /// Moving average of batch wall time, for Retry-After.
    batch_seconds: Option<f64>,
    /// Admitted jobs whose record is being written (they hold a queue slot).
    reserved: usize,
    /// The last admission sequence number given out.
    pub(super) last_seq: u64,
}

pub(super) struct Shared {
    state: Mutex<State>,
    work: Condvar,
    pub(super) store: Store,
    pub(super) metrics: Arc<Metrics>,
    pub(super) settings: JobSettings,
    pub(super) disk: DiskGuard,
    draining: AtomicBool,
    /// Worker threads taking batches (one per device), for Retry-After.
    workers: AtomicUsize,
}

/// Handle to the job system; cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    pub(super) shared: Arc<Shared>,
}

impl Jobs {
    /// An empty job system; call [`Jobs::start_worker`] once a backend is loaded.
    pub fn new(settings: JobSettings, store: Store, metrics: Arc<Metrics>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                disk: DiskGuard::new(store.clone(), settings.min_free_disk),
                store,
                metrics,
                settings,
                draining: AtomicBool::new(false),
                workers: AtomicUsize::new(1),
            }),
        }
    }

    /// The file store results go to.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Why new jobs are refused for lack of disk space, if they are (cached briefly).
    pub fn storage_problem(&self) -> Option<String> {
        self.shared.disk.problem()
    }

    /// Accepts a job: records it on disk (fsynced), then queues it; or refuses
    /// it (draining, low disk, queue full, or the record could not be written,
    /// in which case nothing is queued). Blocking: call it off the async runtime.
    pub fn submit(&self, job: ValidJob, keep: Keep) -> Result<JobHandle, ApiError> {
        if self.shared.draining.load(Ordering::SeqCst) {
            return Err(ApiError::Draining);
        }
        if let Some(problem) = self.storage_problem() {
            return Err(ApiError::Storage(problem));
        }
        let (id, seq) = {
            let mut st = self.shared.lock();
            if st.stop {
                return Err(ApiError::Draining);
            }
            let capacity = self.shared.settings.capacity;
            if st.queue.len() + st.reserved >= capacity {
                return Err(ApiError::QueueFull {
                    capacity,
                    retry_after: self.shared.retry_after(&st),
                });
            }
            st.reserved += 1;
            st.last_seq += 1;
            (JobId::new(), st.last_seq)
        };
        // The slot is reserved; write the record without holding the lock.
        let params = JobParams {
            model: Some(job.model.clone()),
            ..JobParams::from(&job.request)
        };
        let snapshot = JobSnapshot::queued(id, params, 0);
        let record = JobRecord {
            snapshot,
            client: job.client.as_str().to_string(),
            dialect: Some(job.dialect),
            seq,
            keep,
            replica: None,
        };
        let written = self.shared.store.write_record(&record);
        let mut st = self.shared.lock();
        st.reserved -= 1;
        if let Err(e) = written {
            drop(st);
            tracing::error!(job = %id, error = %e, "could not record a new job; refused");
            return Err(ApiError::Storage(format!(
                "could not record the job in {}: {e}",
                self.shared.store.location()
            )));
        }
        let (state, _) = watch::channel(record.snapshot);
        let entry = Arc::new(JobEntry {
            id,
            client: job.client.clone(),
            origin: job.dialect,
            model: job.model,
            request: job.request,
            enqueued: Instant::now(),
            seq,
            keep,
            cancel: AtomicBool::new(false),
            finish_early: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            state,
        });
        st.queue.push(job.client, entry.clone());
        st.jobs.insert(id, entry.clone());
        self.shared.prune_finished(&mut st);
        Shared::refresh_positions(&st);
        self.shared.metrics.queue_size.set(st.queue.len() as i64);
        drop(st);
        self.shared.work.notify_one();
        tracing::debug!(job = %id, client = ?entry.client, "job queued");
        Ok(JobHandle::new(entry, self.clone()))
    }

    /// Forgets a finished job in memory (its files were removed).
    pub(super) fn forget(&self, id: JobId) {
        let mut st = self.shared.lock();
        if st.jobs.get(&id).is_some_and(|e| e.status().is_terminal()) {
            st.jobs.remove(&id);
        }
    }

    /// The in-memory entry of a job (queued, running or recently finished).
    pub fn entry(&self, id: JobId) -> Option<Arc<JobEntry>> {
        self.shared.lock().jobs.get(&id).cloned()
    }

    /// Cancels a job: a queued one leaves the queue at once, a running one stops
    /// at the next step. Errors: unknown id, or already finished.
    pub fn cancel(&self, id: JobId) -> Result<JobSnapshot, ApiError> {
        let mut st = self.shared.lock();
        let Some(entry) = st.jobs.get(&id).cloned() else {
            return Err(ApiError::JobNotFound(id.to_string()));
        };
        match entry.status() {
            JobStatus::Queued => {
                if entry.cancel.swap(true, Ordering::SeqCst) {
                    // Another cancel is finishing it right now.
                    return Ok(entry.snapshot());
                }
                st.queue.remove_where(|e| e.id == id);
                Shared::refresh_positions(&st);
                self.shared.metrics.queue_size.set(st.queue.len() as i64);
                let mut snap = entry.snapshot();
                snap.cancel_requested = true;
                drop(st);
                Ok(self.shared.finish(&entry, snap, JobStatus::Cancelled, None))
            }
            JobStatus::Running => {
                entry.cancel.store(true, Ordering::Relaxed);
                entry.state.send_modify(|s| s.cancel_requested = true);
                Ok(entry.snapshot())
            }
            _ => Err(ApiError::AlreadyFinished(id.to_string())),
        }
    }

    /// [`Jobs::cancel`] on a blocking thread: it may write the job's record, which
    /// must not stall the async runtime.
    pub async fn cancel_off_runtime(&self, id: JobId) -> Result<JobSnapshot, ApiError> {
        let jobs = self.clone();
        tokio::task::spawn_blocking(move || jobs.cancel(id))
            .await
            .unwrap_or_else(|e| Err(ApiError::Internal(format!("cancel task failed: {e}"))))
    }

    /// [`Jobs::cancel_where`] on a blocking thread.
    pub async fn cancel_where_off_runtime(
        &self,
        pred: impl Fn(&JobEntry) -> bool + Send + 'static,
    ) -> usize {
        let jobs = self.clone();
        tokio::task::spawn_blocking(move || jobs.cancel_where(pred))
            .await
            .unwrap_or(0)
    }

    /// Cancels every unfinished job `pred` selects; returns how many.
    pub fn cancel_where(&self, pred: impl Fn(&JobEntry) -> bool) -> usize {
        let ids: Vec<JobId> = {
            let st = self.shared.lock();
            st.jobs
                .values()
                .filter(|e| !e.status().is_terminal() && !e.cancel_requested() && pred(e))
                .map(|e| e.id)
                .collect()
        };
        ids.into_iter()
            .filter(|id| self.cancel(*id).is_ok())
            .count()
    }

    /// Asks every running job `pred` selects to stop denoising and decode
    /// what it has (A1111's interrupt); returns how many.
    pub fn finish_early_where(&self, pred: impl Fn(&JobEntry) -> bool) -> usize {
        let st = self.shared.lock();
        st.jobs
            .values()
            .filter(|e| e.status() == JobStatus::Running && !e.cancel_requested() && pred(e))
            .map(|e| e.finish_early.store(true, Ordering::Relaxed))
            .count()
    }

    /// Every job known in memory (queued, running, recently finished).
    pub fn list(&self) -> Vec<Arc<JobEntry>> {
        self.shared.lock().jobs.values().cloned().collect()
    }

    /// Jobs waiting in the queue.
    pub fn queued(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Jobs in the batches the workers run.
    pub fn running(&self) -> usize {
        self.shared.lock().running_jobs()
    }

    /// The longest-running batch, if any (A1111's `/progress` knows one).
    pub fn current(&self) -> Option<CurrentBatch> {
        let st = self.shared.lock();
        st.running
            .iter()
            .map(|b| b.current)
            .min_by_key(|c| c.started)
    }

    /// The newest live preview of any running batch: its id and PNG bytes.
    pub fn current_preview(&self) -> Option<(i64, Arc<Vec<u8>>)> {
        let st = self.shared.lock();
        st.running
            .iter()
            .filter_map(|b| b.preview.as_ref())
            .max_by_key(|(n, _, _)| *n)
            .map(|(n, png, _)| (*n, png.clone()))
    }

    /// The latest live preview of one running job (`None` when its batch's
    /// preview shows another job: only its owner may see it).
    pub fn preview_of(&self, job: JobId) -> Option<Arc<Vec<u8>>> {
        let st = self.shared.lock();
        st.running
            .iter()
            .filter_map(|b| b.preview.as_ref())
            .find(|(_, _, of)| *of == job)
            .map(|(_, png, _)| png.clone())
    }

    pub(super) fn set_preview(&self, worker: usize, job: JobId, png: Vec<u8>) {
        let mut st = self.shared.lock();
        st.previews_made += 1;
        let id = st.previews_made;
        if let Some(batch) = st.running.iter_mut().find(|b| b.worker == worker) {
            batch.preview = Some((id, Arc::new(png), job));
        }
    }

    /// Refuses new jobs from now on; queued and running ones go on.
    pub fn begin_drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
    }

    /// True once [`Jobs::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    /// True when nothing is queued or running (or being admitted).
    pub fn is_idle(&self) -> bool {
        let st = self.shared.lock();
        st.queue.is_empty() && st.running.is_empty() && st.reserved == 0
    }

    /// Waits until nothing is queued or running, up to `timeout`; false on timeout.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_idle() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        true
    }

    /// Cancels everything unfinished (the end of a drain that ran out of time).
    pub fn cancel_all(&self) -> usize {
        self.cancel_where(|_| true)
    }

    /// How many workers take batches (one per device).
    pub(super) fn set_workers(&self, workers: usize) {
        self.shared.workers.store(workers.max(1), Ordering::Relaxed);
    }

    /// Lets the worker threads exit once the queue is empty.
    pub fn stop_worker(&self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_all();
    }

    /// Blocks until a job is queued and returns the model of the one a
    /// worker would take next; `None` once stopped with nothing left. With
    /// several workers, more than one may see the same head: the first to
    /// call [`Jobs::next_batch_for`] takes it, the others find the queue changed.
    pub(super) fn next_model(&self) -> Option<String> {
        let mut st = self.shared.lock();
        loop {
            if let Some(head) = st.queue.peek_next() {
                return Some(head.model.clone());
            }
            if st.stop {
                return None;
            }
            st = self.shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Takes the next batch if its first job runs on `model` (whose backend
    /// the worker now holds); `None` if the queue changed meanwhile. Only jobs
    /// of that one model join it. `max_images` says how many images of a
    /// request's size the memory plan lets one batch hold: jobs are never
    /// combined beyond it (nor beyond `--max-batch`); a first job is always
    /// taken, as the gate admitted it.
    pub(super) fn next_batch_for(
        &self,
        worker: usize,
        model: &str,
        max_images: impl Fn(&GenerateRequest) -> usize,
    ) -> Option<Vec<Arc<JobEntry>>> {
        let shared = &self.shared;
        let mut st = shared.lock();
        let head = st.queue.peek_next()?;
        if head.model != model {
            return None;
        }
        let planned = max_images(&head.request);
        let batch = st.queue.pop_batch(
            shared.settings.max_batch_images.min(planned),
            |e| e.request.batch_size,
            |a, b| a.model == b.model && batch_compatible(&a.request, &b.request),
        );
        let started = unix_now();
        for entry in &batch {
            let total = entry.request.steps;
            entry.state.send_modify(|s| {
                s.status = JobStatus::Running;
                s.queue_position = None;
                s.started_at = Some(started);
                s.progress = Some(StepProgress { step: 0, total });
            });
            shared
                .metrics
                .queue_duration_seconds
                .observe(entry.enqueued.elapsed().as_secs_f64());
        }
        let current = CurrentBatch {
            started: Instant::now(),
            step: 0,
            total: batch.first().map_or(0, |e| e.request.steps),
            jobs: batch.len(),
        };
        st.running.retain(|b| b.worker != worker);
        st.running.push(RunningBatch {
            worker,
            entries: batch.clone(),
            current,
            preview: None,
        });
        Shared::refresh_positions(&st);
        shared.metrics.queue_size.set(st.queue.len() as i64);
        shared
            .metrics
            .requests_running
            .set(st.running_jobs() as i64);
        Some(batch)
    }

    /// Records a step of `worker`'s batch (for A1111 `/progress`).
    pub(super) fn set_step(&self, worker: usize, step: usize, total: usize) {
        let mut st = self.shared.lock();
        if let Some(batch) = st.running.iter_mut().find(|b| b.worker == worker) {
            batch.current.step = step;
            batch.current.total = total;
        }
    }

    /// Clears `worker`'s batch once all its jobs are finished.
    pub(super) fn batch_done(&self, worker: usize, seconds: f64) {
        let mut st = self.shared.lock();
        st.running.retain(|b| b.worker != worker);
        st.batch_seconds = Some(match st.batch_seconds {
            Some(avg) => 0.8 * avg + 0.2 * seconds,
            None => seconds,
        });
        let running = st.running_jobs();
        self.shared.metrics.requests_running.set(running as i64);
    }
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes each queued job's place in the service order.
    pub(super) fn refresh_positions(st: &State) {
        for (position, entry) in st.queue.service_order().into_iter().enumerate() {
            entry.state.send_if_modified(|s| {
                let changed = s.queue_position != Some(position);
                s.queue_position = Some(position);
                changed
            });
        }
    }

    /// Seconds until a slot is likely free: the batches ahead times their average length.
    fn retry_after(&self, st: &State) -> u64 {
        let Some(avg) = st.batch_seconds else {
            return DEFAULT_RETRY_AFTER_SECS;
        };
        let per_batch = self.settings.max_batch_images.max(1);
        let workers = self.workers.load(Ordering::Relaxed).max(1);
        let batches_ahead = st.queue.len().div_ceil(per_batch * workers).max(1) as f64;
        ((avg * batches_ahead).ceil() as u64).clamp(1, MAX_RETRY_AFTER_SECS)
    }

    /// Drops finished jobs older than the TTL from memory (their records stay on disk).
    fn prune_finished(&self, st: &mut State) {
        let ttl = self.settings.finished_ttl;
        while let Some((at, id)) = st.finished.front().copied() {
            if at.elapsed() < ttl {
                break;
            }
            st.finished.pop_front();
            st.jobs.remove(&id);
        }
    }

    /// The record of `entry` in state `snapshot`.
    pub(super) fn record_of(entry: &JobEntry, snapshot: JobSnapshot) -> JobRecord {
        JobRecord {
            snapshot,
            client: entry.client.as_str().to_string(),
            dialect: Some(entry.origin),
            seq: entry.seq,
            keep: entry.keep,
            replica: None,
        }
    }

    /// Moves a job to a terminal state: writes its record, then publishes it.
    /// A success whose record cannot be written becomes a storage failure, and
    /// its images are removed (nothing would point to them).
    pub(super) fn finish(
        &self,
        entry: &JobEntry,
        mut snap: JobSnapshot,
        mut status: JobStatus,
        error: Option<JobFailure>,
    ) -> JobSnapshot {
        snap.status = status;
        snap.error = error;
        snap.queue_position = None;
        snap.finished_at = Some(unix_now());
        let mut recorded = self
            .store
            .write_record(&Self::record_of(entry, snap.clone()));
        if let Err(e) = &recorded {
            tracing::error!(job = %entry.id, error = %e, "could not write job record");
            if status == JobStatus::Succeeded {
                let images = std::mem::take(&mut snap.images);
                if let Err(e) = self.store.remove_images(images.iter().map(|i| i.id)) {
                    tracing::error!(job = %entry.id, error = %e, "could not remove its images");
                }
                status = JobStatus::Failed;
                snap.status = status;
                snap.error = Some(JobFailure {
                    kind: FailureKind::Storage,
                    message: format!("could not write the job's record: {e}"),
                });
                recorded = self
                    .store
                    .write_record(&Self::record_of(entry, snap.clone()));
            }
        }
        match status {
            JobStatus::Succeeded => self
                .metrics
                .request_duration_seconds
                .observe(entry.enqueued.elapsed().as_secs_f64()),
            JobStatus::Cancelled => self.metrics.failure("cancelled"),
            _ => self.metrics.failure(
                snap.error
                    .as_ref()
                    .map_or(FailureKind::Internal, |e| e.kind)
                    .as_str(),
            ),
        }
        entry.state.send_replace(snap.clone());
        let mut st = self.lock();
        // Without a final record on disk, memory is the only truth: keep it there.
        if recorded.is_ok() {
            st.finished.push_back((Instant::now(), entry.id));
        }
        let t = snap.timings.unwrap_or_default();
        tracing::info!(
            job = %entry.id,
            status = status.as_str(),
            queue_secs = t.queue,
            denoise_secs = t.denoising,
            encode_secs = t.encoding,
            total_secs = entry.enqueued.elapsed().as_secs_f64(),
            "job finished"
        );
        drop(st);
        if entry.is_deleted() {
            self.forget(entry, &snap);
        }
        snap
    }
}
