//! Start-up after a crash, a kill or a clean stop: every accepted job has a
//! record on disk, so none is lost. Unfinished native jobs (their clients hold
//! ids and poll) are queued again in their original admission order, each in
//! its original client's lane. Unfinished jobs of the synchronous dialects
//! (A1111, OpenAI, `/generate`) are failed with "interrupted by a server
//! restart": their clients' connections died with the process and they never
//! got an id to come back for. Images that no record names (a crash between a
//! job's PNGs and its final record) are removed.
//!
//! In a bucket replicas share, the other replicas are alive: their unfinished
//! jobs are theirs to run, and their newest PNGs may not have their final
//! record yet. So recovery there closes or re-queues only the records this
//! replica wrote (the record names it, `--replica-name`, by default the host
//! name: a restarted pod keeps it, a StatefulSet's replacement too) and leaves
//! unnamed images to retention's one-hour grace.
//!
//! Once the model is loaded, [`Jobs::revalidate`] fails the re-queued jobs the
//! model refuses (another model, other limits) with that reason; never a 404.
//! A recorded job names its model (none before models could be switched: it
//! runs on the default); [`Jobs::fail_queued`] fails the jobs of a model that
//! cannot be loaded.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::id::ImageId;
use super::job::{unix_now, FailureKind, JobFailure, JobStatus};
use super::manager::{JobEntry, Jobs, Shared};
use super::record::JobRecord;

/// The reason given to synchronous jobs a restart cut off.
pub const INTERRUPTED: &str = "interrupted by a server restart";

/// What [`Jobs::recover`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Native jobs queued again.
    pub requeued: usize,
    /// Jobs failed (synchronous leftovers, unusable records) or cancelled (a
    /// cancel was asked before the stop).
    pub closed: usize,
    /// Images no record named, removed.
    pub orphans: usize,
}

impl Jobs {
    /// Scans the output location and restores its unfinished jobs (see the
    /// module doc). Call once, before the worker starts.
    pub fn recover(&self) -> io::Result<Recovered> {
        let scan = self.shared.store.scan()?;
        let mut done = Recovered::default();
        let named: HashSet<ImageId> = scan
            .records
            .iter()
            .flat_map(|(r, _)| r.snapshot.images.iter().map(|i| i.id))
            .collect();
        let shared = self.shared.store.is_shared();
        for (id, _) in scan
            .pngs
            .iter()
            .filter(|(id, _)| !shared && !named.contains(id))
        {
            if self.shared.store.remove_images([*id]).is_ok() {
                done.orphans += 1;
            }
        }
        let last_seq = scan.records.iter().map(|(r, _)| r.seq).max().unwrap_or(0);
        let mut unfinished: Vec<JobRecord> = scan
            .records
            .into_iter()
            .map(|(r, _)| r)
            .filter(|r| !r.snapshot.status.is_terminal() && self.shared.store.recovers(r))
            .collect();
        unfinished.sort_by(|a, b| {
            (a.seq, a.snapshot.created_at)
                .partial_cmp(&(b.seq, b.snapshot.created_at))
                .unwrap_or(std::cmp::Ordering::Equal)
        });

        let mut st = self.shared.lock();
        st.last_seq = st.last_seq.max(last_seq);
        for record in unfinished {
            let id = record.snapshot.id;
            if record.snapshot.cancel_requested {
                self.close(record, JobStatus::Cancelled, None);
                done.closed += 1;
                continue;
            }
            if !record.resumable() {
                let failure = (FailureKind::Interrupted, INTERRUPTED.to_string());
                self.close(record, JobStatus::Failed, Some(failure));
                done.closed += 1;
                continue;
            }
            let request = match record.snapshot.params.to_request() {
                Ok(request) => request,
                Err(e) => {
                    let message = format!("this job cannot run again after a restart: {e}");
                    self.close(
                        record,
                        JobStatus::Failed,
                        Some((FailureKind::InvalidRequest, message)),
                    );
                    done.closed += 1;
                    continue;
                }
            };
            let mut snapshot = record.snapshot.clone();
            snapshot.status = JobStatus::Queued;
            snapshot.progress = None;
            snapshot.started_at = None;
            snapshot.queue_position = Some(0);
            let (state, _) = watch::channel(snapshot);
            let entry = Arc::new(JobEntry {
                id,
                client: record.client_id(),
                origin: record.dialect.unwrap_or(crate::dialects::Dialect::Native),
                model: record.snapshot.params.model.clone().unwrap_or_default(),
                request,
                enqueued: Instant::now(),
                seq: record.seq,
                keep: record.keep,
                cancel: AtomicBool::new(false),
                finish_early: AtomicBool::new(false),
                deleted: AtomicBool::new(false),
                state,
            });
            st.queue.push(entry.client.clone(), entry.clone());
            st.jobs.insert(id, entry);
            done.requeued += 1;
        }
        Shared::refresh_positions(&st);
        self.shared.metrics.queue_size.set(st.queue.len() as i64);
        drop(st);
        if done != Recovered::default() {
            tracing::info!(
                requeued = done.requeued,
                closed = done.closed,
                orphan_images = done.orphans,
                "recovered the output directory"
            );
        }
        Ok(done)
    }

    /// Writes a recovered job's terminal record without bringing it into memory
    /// (status reads find it on disk).
    fn close(
        &self,
        mut record: JobRecord,
        status: JobStatus,
        failure: Option<(FailureKind, String)>,
    ) {
        let snap = &mut record.snapshot;
        snap.status = status;
        snap.queue_position = None;
        snap.progress = None;
        snap.finished_at = Some(unix_now());
        snap.error = failure.map(|(kind, message)| JobFailure { kind, message });
        let reason = snap.error.as_ref().map_or("cancelled", |e| e.kind.as_str());
        self.shared.metrics.failure(reason);
        if let Err(e) = self.shared.store.write_record(&record) {
            tracing::error!(job = %record.snapshot.id, error = %e, "could not close a recovered job");
        }
    }

    /// Fails every queued job that `check` refuses (its model's own
    /// validation), with its reason. Call before the worker starts.
    pub fn revalidate(&self, check: impl Fn(&JobEntry) -> Result<(), String>) -> usize {
        let refused: Vec<(Arc<JobEntry>, String)> = {
            let mut st = self.shared.lock();
            let refused: Vec<_> = st
                .queue
                .service_order()
                .into_iter()
                .filter_map(|e| check(e).err().map(|why| (e.clone(), why)))
                .collect();
            for (entry, _) in &refused {
                st.queue.remove_where(|e| e.id == entry.id);
            }
            Shared::refresh_positions(&st);
            self.shared.metrics.queue_size.set(st.queue.len() as i64);
            refused
        };
        for (entry, why) in &refused {
            let failure = JobFailure {
                kind: FailureKind::InvalidRequest,
                message: format!("this job cannot run on the loaded model: {why}"),
            };
            self.shared
                .finish(entry, entry.snapshot(), JobStatus::Failed, Some(failure));
        }
        refused.len()
    }

    /// Fails every queued job of `model` (its load failed) with `message`; returns how many.
    pub(super) fn fail_queued(&self, model: &str, kind: FailureKind, message: &str) -> usize {
        let failed: Vec<Arc<JobEntry>> = {
            let mut st = self.shared.lock();
            let mut failed = Vec::new();
            while let Some(entry) = st.queue.remove_where(|e| e.model == model) {
                failed.push(entry);
            }
            Shared::refresh_positions(&st);
            self.shared.metrics.queue_size.set(st.queue.len() as i64);
            failed
        };
        for entry in &failed {
            let failure = JobFailure {
                kind,
                message: message.to_string(),
            };
            self.shared
                .finish(entry, entry.snapshot(), JobStatus::Failed, Some(failure));
        }
        failed.len()
    }
}
