//! The one job model every dialect shares: ids, states, the bounded fair queue,
//! the worker thread that runs the engine, and the on-disk records and results:
//! durable before a job is acknowledged (`manager.rs`), recovered after a crash
//! (`recovery.rs`), removed when old (`retention.rs`), refused up front when the
//! disk is nearly full (`space.rs`); listed per caller (`listing.rs`); names clients give their jobs
//! (`task_names.rs`, A1111's `force_task_id`).

pub mod blobs;
pub mod deletion;
pub mod handle;
pub mod id;
pub mod job;
pub mod listing;
pub mod manager;
pub mod queue;
pub mod record;
pub mod recovery;
pub mod retention;
mod s3;
pub mod space;
pub mod store;
pub mod task_names;
pub mod worker;

pub use deletion::Deleted;
pub use id::{ImageId, InvalidId, JobId};
pub use job::{
    FailureKind, ImageRecord, JobFailure, JobParams, JobSnapshot, JobStatus, JobTimings,
    StepProgress,
};
pub use manager::{CurrentBatch, JobEntry, JobHandle, JobSettings, Jobs};
pub use queue::ClientId;
pub use record::{JobRecord, Keep};
pub use recovery::{Recovered, INTERRUPTED};
pub use store::{OutputLocation, Store};
pub use task_names::{TaskNames, MAX_TASK_NAME_CHARS};
