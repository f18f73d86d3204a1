//! What a submitter holds after its job is accepted: the id, the live state, a
//! way to wait for the end, and (for synchronous dialects) cancel-on-drop, which
//! is how a client that disconnects cancels its job: the HTTP server drops the
//! handler future, and with it the handle.

use std::sync::Arc;

use super::id::JobId;
use super::job::JobSnapshot;
use super::manager::{JobEntry, Jobs};

/// A submitted job, as its submitter holds it.
pub struct JobHandle {
    entry: Arc<JobEntry>,
    jobs: Jobs,
    cancel_on_drop: bool,
}

impl JobHandle {
    pub(super) fn new(entry: Arc<JobEntry>, jobs: Jobs) -> Self {
        Self {
            entry,
            jobs,
            cancel_on_drop: false,
        }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.entry.id
    }

    /// The job's state right now.
    pub fn snapshot(&self) -> JobSnapshot {
        self.entry.snapshot()
    }

    /// Makes dropping this handle before the job ends cancel it: a synchronous
    /// request whose client went away is dropped by the HTTP server mid-await.
    pub fn cancel_on_drop(mut self) -> Self {
        self.cancel_on_drop = true;
        self
    }

    /// Waits for the job to reach a terminal state.
    pub async fn finished(&self) -> JobSnapshot {
        let mut rx = self.entry.state.subscribe();
        let result = rx
            .wait_for(|s| s.status.is_terminal())
            .await
            .map(|s| s.clone());
        result.unwrap_or_else(|_| self.entry.snapshot())
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        if self.cancel_on_drop && !self.entry.status().is_terminal() {
            tracing::info!(job = %self.entry.id, "client went away; cancelling its job");
            let (jobs, id) = (self.jobs.clone(), self.entry.id);
            // Off the async runtime when there is one: cancelling may write a record.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn_blocking(move || jobs.cancel(id));
                }
                Err(_) => {
                    let _ = jobs.cancel(id);
                }
            }
        }
    }
}
