//! A job as the output directory holds it (`<job-id>.json`): its [`JobSnapshot`]
//! plus what only the server needs to re-run or clean it up after a restart —
//! who submitted it, through which dialect, in which admission order, and
//! whether its result outlives the response. The record is written (fsynced)
//! when the job is accepted and rewritten when it ends, so no accepted job
//! exists only in memory. The extra fields never reach a wire view.

use serde::{Deserialize, Serialize};

use super::job::JobSnapshot;
use super::queue::ClientId;
use crate::dialects::Dialect;

/// How long a job's result is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// Until retention removes it (`--result-ttl`, `--max-output-bytes`).
    #[default]
    Stored,
    /// Only until the synchronous response is built (A1111 `save_images: false`,
    /// OpenAI `b64_json`): the images travel in the response, nothing refers to
    /// the files afterwards.
    ResponseOnly,
}

/// The on-disk record of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's state, as status reads show it.
    #[serde(flatten)]
    pub snapshot: JobSnapshot,
    /// The submitting client's label (fairness lane, and the job's owner).
    #[serde(default)]
    pub client: String,
    /// The dialect it came through; `None` in records written before it was kept.
    #[serde(default)]
    pub dialect: Option<Dialect>,
    /// Admission order: larger was accepted later (continues across restarts).
    #[serde(default)]
    pub seq: u64,
    /// Whether the result is kept after the response.
    #[serde(default)]
    pub keep: Keep,
    /// The replica that wrote it, in a bucket replicas share (never in a
    /// local directory's records): recovery closes only its own jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

impl JobRecord {
    /// The client as the queue knows it.
    pub fn client_id(&self) -> ClientId {
        ClientId::new(self.client.as_str())
    }

    /// True when the job's client holds its id and can come back for it after a
    /// restart (the native API); synchronous dialects' clients cannot.
    pub fn resumable(&self) -> bool {
        self.dialect == Some(Dialect::Native) && self.keep == Keep::Stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{JobId, JobParams, JobStatus};

    #[test]
    fn old_records_without_the_server_fields_still_read() {
        let snapshot = JobSnapshot::queued(
            JobId::new(),
            JobParams {
                prompt: "p".into(),
                negative_prompt: String::new(),
                seed: None,
                steps: 2,
                cfg_scale: 1.0,
                sampler: "euler".into(),
                schedule_type: "automatic".into(),
                width: 64,
                height: 64,
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
        let old = serde_json::to_string(&snapshot).unwrap();
        let record: JobRecord = serde_json::from_str(&old).unwrap();
        assert_eq!(record.snapshot, snapshot);
        assert_eq!(
            (record.client.as_str(), record.dialect, record.seq),
            ("", None, 0)
        );
        assert!(!record.resumable());

        let new = JobRecord {
            client: "key#1".into(),
            dialect: Some(Dialect::Native),
            seq: 9,
            keep: Keep::Stored,
            replica: None,
            snapshot,
        };
        let json: serde_json::Value = serde_json::to_value(&new).unwrap();
        assert_eq!(json["status"], "queued");
        assert_eq!(json["dialect"], "native");
        assert_eq!(json["client"], "key#1");
        let back: JobRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, new);
        assert!(back.resumable());
        assert_eq!(back.snapshot.status, JobStatus::Queued);
    }
}
