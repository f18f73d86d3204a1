//! Retention: finished results do not pile up forever. A sweep (at start, then
//! every `sweep_interval` on its own thread) removes, images first and record
//! last (see `store.rs` for why that order):
//! - results finished longer than `--result-ttl` ago (zero: never);
//! - results kept only for a synchronous response (A1111 `save_images: false`,
//!   OpenAI `b64_json`) that their handler did not remove itself (the client
//!   went away), a short grace after they finished;
//! - then, oldest first, finished results until all records and images fit in
//!   `--max-output-bytes` (zero: no cap);
//! - images no record names that are older than an hour (a crash between a
//!   job's PNGs and its final record; start-up recovery removes them at once).
//!
//! Unfinished jobs are never swept. A swept job is gone: its id answers 404.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::id::ImageId;
use super::job::{unix_now, JobSnapshot};
use super::manager::Jobs;
use super::record::{JobRecord, Keep};

/// How long a response-only result may stay after it finished.
const RESPONSE_ONLY_GRACE_SECS: f64 = 60.0;
/// How old an image no record names must be before a periodic sweep removes it.
const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// A finished job as retention weighs it.
struct Candidate {
    index: usize,
    finished_at: f64,
    bytes: u64,
    response_only: bool,
}

/// Which of `records` (with their bytes on disk, images included) to remove at
/// `now` (Unix seconds), in removal order.
fn plan(records: &[(&JobRecord, u64)], now: f64, ttl: Duration, cap: u64) -> Vec<usize> {
    let mut total: u64 = records.iter().map(|(_, bytes)| bytes).sum();
    let mut finished: Vec<Candidate> = records
        .iter()
        .enumerate()
        .filter(|(_, (r, _))| r.snapshot.status.is_terminal())
        .map(|(index, (r, bytes))| Candidate {
            index,
            finished_at: r.snapshot.finished_at.unwrap_or(r.snapshot.created_at),
            bytes: *bytes,
            response_only: r.keep == Keep::ResponseOnly,
        })
        .collect();
    finished.sort_by(|a, b| a.finished_at.total_cmp(&b.finished_at));
    let ttl = ttl.as_secs_f64();
    let mut remove = Vec::new();
    let mut kept = Vec::new();
    for c in finished {
        let age = now - c.finished_at;
        let expired =
            (ttl > 0.0 && age >= ttl) || (c.response_only && age >= RESPONSE_ONLY_GRACE_SECS);
        if expired {
            total = total.saturating_sub(c.bytes);
            remove.push(c.index);
        } else {
            kept.push(c);
        }
    }
    if cap > 0 {
        for c in kept {
            if total <= cap {
                break;
            }
            total = total.saturating_sub(c.bytes);
            remove.push(c.index);
        }
    }
    remove
}

impl Jobs {
    /// One retention pass at `now` (Unix seconds; tests pass a future time
    /// instead of waiting). Returns how many jobs were removed. Blocking.
    pub fn sweep_at(&self, now: f64) -> io::Result<usize> {
        let settings = &self.shared.settings;
        let store = &self.shared.store;
        let scan = store.scan()?;
        let png_bytes: HashMap<ImageId, u64> =
            scan.pngs.iter().map(|(id, f)| (*id, f.bytes)).collect();
        let weighed: Vec<(&JobRecord, u64)> = scan
            .records
            .iter()
            .map(|(r, file)| {
                let images: u64 = r
                    .snapshot
                    .images
                    .iter()
                    .filter_map(|i| png_bytes.get(&i.id))
                    .sum();
                (r, file.bytes + images)
            })
            .collect();
        let remove = plan(
            &weighed,
            now,
            settings.result_ttl,
            settings.max_output_bytes,
        );
        let mut removed = 0;
        for index in remove {
            let snapshot = &weighed[index].0.snapshot;
            match store.remove_job(snapshot) {
                Ok(()) => {
                    self.forget(snapshot.id);
                    removed += 1;
                }
                Err(e) => {
                    tracing::warn!(job = %snapshot.id, error = %e, "could not remove an expired result")
                }
            }
        }
        let named: HashSet<ImageId> = scan
            .records
            .iter()
            .flat_map(|(r, _)| r.snapshot.images.iter().map(|i| i.id))
            .collect();
        let stale = SystemTime::now()
            .checked_sub(ORPHAN_GRACE)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let orphans = scan
            .pngs
            .iter()
            .filter(|(id, f)| !named.contains(id) && f.modified < stale)
            .map(|(id, _)| *id);
        if let Err(e) = store.remove_images(orphans) {
            tracing::warn!(error = %e, "could not remove an image no job names");
        }
        if removed > 0 {
            tracing::info!(removed, "retention removed old results");
        }
        Ok(removed)
    }

    /// One retention pass now.
    pub fn sweep(&self) -> io::Result<usize> {
        self.sweep_at(unix_now())
    }

    /// Removes a finished job's images and record at once (a response-only
    /// result, once its response is built), and forgets it. Blocking.
    pub fn discard(&self, snapshot: &JobSnapshot) {
        if !snapshot.status.is_terminal() {
            return;
        }
        match self.shared.store.remove_job(snapshot) {
            Ok(()) => self.forget(snapshot.id),
            // The sweep will retry (the record says response-only).
            Err(e) => {
                tracing::warn!(job = %snapshot.id, error = %e, "could not remove a response-only result")
            }
        }
    }

    /// Starts the thread that sweeps every `interval` (none for a zero
    /// interval); it ends once the job system is dropped.
    pub fn spawn_sweeper(&self, interval: Duration) -> io::Result<()> {
        if interval.is_zero() {
            return Ok(());
        }
        let shared = Arc::downgrade(&self.shared);
        std::thread::Builder::new()
            .name("sdserve-retention".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                if let Err(e) = (Jobs { shared }).sweep() {
                    tracing::warn!(error = %e, "retention sweep failed");
                }
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::job::{JobParams, JobStatus};
    use crate::jobs::JobId;

    fn record(status: JobStatus, finished_at: f64, keep: Keep) -> JobRecord {
        let mut snapshot = JobSnapshot::queued(
            JobId::new(),
            JobParams {
                prompt: "p".into(),
                negative_prompt: String::new(),
                seed: None,
                steps: 1,
                cfg_scale: 1.0,
                sampler: "euler".into(),
                schedule_type: "automatic".into(),
                width: 8,
                height: 8,
                batch_size: 1,
                model: None,
                strength: None,
                inpainting: false,
                seed_per_image: false,
                hires: None,
                prompt_syntax: Default::default(),
                clip_skip: 0,
                loras: Vec::new(),
            },
            0,
        );
        snapshot.status = status;
        snapshot.created_at = finished_at - 1.0;
        snapshot.finished_at = status.is_terminal().then_some(finished_at);
        JobRecord {
            snapshot,
            client: String::new(),
            dialect: None,
            seq: 0,
            keep,
            replica: None,
        }
    }

    #[test]
    fn expires_by_age_then_trims_oldest_to_the_cap_and_never_touches_unfinished_jobs() {
        let old = record(JobStatus::Succeeded, 100.0, Keep::Stored);
        let mid = record(JobStatus::Failed, 500.0, Keep::Stored);
        let new = record(JobStatus::Succeeded, 900.0, Keep::Stored);
        let queued = record(JobStatus::Queued, 0.0, Keep::Stored);
        let response = record(JobStatus::Succeeded, 950.0, Keep::ResponseOnly);
        let all = [
            (&old, 10),
            (&mid, 10),
            (&new, 10),
            (&queued, 1000),
            (&response, 10),
        ];
        let ttl = Duration::from_secs(600);
        // At 1000: `old` is past the TTL, the response-only one is in its grace.
        assert_eq!(plan(&all, 1000.0, ttl, 0), [0]);
        assert_eq!(plan(&all, 1020.0, ttl, 0), [0, 4]);
        // TTL zero keeps forever; the cap removes oldest finished first, never the queued one.
        assert!(plan(&all, 1000.0, Duration::ZERO, 0).is_empty());
        assert_eq!(plan(&all, 1000.0, Duration::ZERO, 1025), [0, 1]);
        assert_eq!(plan(&all, 1000.0, Duration::ZERO, 1), [0, 1, 2, 4]);
        assert_eq!(plan(&all, 1000.0, ttl, 1025), [0, 1]);
    }
}
