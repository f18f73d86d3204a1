//! `DELETE /api/v1/jobs/{id}`: the job is cancelled if it has not finished,
//! then its images and record are removed and it reads as an unknown id from
//! then on (a 404, as REST clients and the spec's `use_after_free` check
//! expect). Cancelling while keeping the job is `POST /api/v1/jobs/{id}/cancel`.
//!
//! A running job stops at its next step; it is marked deleted at once, and
//! [`Shared::finish`] removes it when it lands, whichever side sees the other
//! first (both orders end with the files gone; removing twice is harmless).

use std::io;
use std::sync::atomic::Ordering;

use super::id::JobId;
use super::job::{JobSnapshot, JobStatus};
use super::manager::{JobEntry, Jobs, Shared};

/// What [`Jobs::delete`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The job was removed (or is being: a running job ends at its next step).
    Removed,
    /// No such job in memory or on disk.
    Unknown,
}

impl Jobs {
    /// Deletes a job (see the module doc). Blocking: it may write and remove
    /// files. The caller checks beforehand that the job is the caller's to delete.
    pub fn delete(&self, id: JobId) -> io::Result<Deleted> {
        if let Some(entry) = self.entry(id) {
            entry.deleted.store(true, Ordering::SeqCst);
            match entry.status() {
                JobStatus::Queued | JobStatus::Running => {
                    // A queued job finishes (and is forgotten) inside cancel; a
                    // running one when the worker lands it.
                    let _ = self.cancel(id);
                }
                _ => self.shared.forget(&entry, &entry.snapshot()),
            }
            return Ok(Deleted::Removed);
        }
        let Some(record) = self.shared.store.read_record_blocking(id) else {
            return Ok(Deleted::Unknown);
        };
        self.shared.store.remove_job(&record.snapshot)?;
        Ok(Deleted::Removed)
    }
}

impl Shared {
    /// Removes a finished, deleted job from disk and memory.
    pub(super) fn forget(&self, entry: &JobEntry, snapshot: &JobSnapshot) {
        if let Err(e) = self.store.remove_job(snapshot) {
            tracing::error!(job = %entry.id, error = %e, "could not remove a deleted job's files");
        }
        self.lock().jobs.remove(&entry.id);
        tracing::info!(job = %entry.id, "job deleted");
    }
}
