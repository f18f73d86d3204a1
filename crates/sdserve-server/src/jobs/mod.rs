//! The one job model every dialect shares: ids, states, the bounded fair queue,
//! the worker thread that runs the engine, and the on-disk results.

pub mod handle;
pub mod id;
pub mod job;
pub mod manager;
pub mod queue;
pub mod store;
pub mod worker;

pub use id::{ImageId, InvalidId, JobId};
pub use job::{
    FailureKind, ImageRecord, JobFailure, JobParams, JobSnapshot, JobStatus, JobTimings,
    StepProgress,
};
pub use manager::{CurrentBatch, JobEntry, JobHandle, JobSettings, Jobs};
pub use queue::ClientId;
pub use store::Store;
