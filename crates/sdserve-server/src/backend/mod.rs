//! What the worker needs from an engine, as a trait: the real [`Engine`] in
//! production, [`FakeBackend`] in tests (fast deterministic pictures, same step
//! and cancel behaviour), so the whole server can be tested without a model.
//!
//! [`Engine`]: sdserve_engine::Engine

mod engine;
mod fake;

pub use fake::FakeBackend;

use crate::engine_api::{
    EmbeddingList, EngineError, GenerateRequest, GenerationOutput, MemoryPlan, ModelInfo, Observer,
};

/// A loaded text-to-image model the worker thread can run.
///
/// `Sync` because request validation reads it from HTTP handlers while the worker
/// generates; `generate_batch` is only ever called from the worker thread.
pub trait Backend: Send + Sync + 'static {
    /// What the model is and which defaults suit it.
    fn info(&self) -> &ModelInfo;

    /// The memory plan (budget, weights, what fits), if the backend has one.
    fn memory_plan(&self) -> Option<&MemoryPlan> {
        None
    }

    /// Most images of `request`'s size and guidance one batch may hold
    /// within the memory plan (`usize::MAX` without a plan).
    fn max_batch_images(&self, request: &GenerateRequest) -> usize {
        self.memory_plan().map_or(usize::MAX, |plan| {
            let (width, height) = request.output_size(self.info().vae_scale_factor);
            plan.max_batch(width, height, crate::engine_api::uses_guidance(request))
        })
    }

    /// Checks a request against the model (sizes, steps...): `InvalidRequest` if not.
    fn validate(&self, request: &GenerateRequest) -> Result<(), EngineError>;

    /// The textual-inversion embeddings prompts may name (none by default).
    fn embeddings(&self) -> EmbeddingList {
        EmbeddingList::default()
    }

    /// Runs compatible jobs as one batch; blocking. One result per job, in order
    /// (a cancelled job yields `Err(Cancelled)` in its slot); the outer error
    /// fails the whole batch.
    fn generate_batch(
        &self,
        jobs: &[GenerateRequest],
        observer: &mut dyn Observer,
    ) -> Result<Vec<Result<GenerationOutput, EngineError>>, EngineError>;
}
