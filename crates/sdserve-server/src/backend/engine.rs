//! The production backend: the real engine, passed straight through.

use super::Backend;
use crate::engine_api::{
    EmbeddingList, Engine, EngineError, GenerateRequest, GenerationOutput, MemoryPlan, ModelInfo,
    Observer,
};

impl Backend for Engine {
    fn info(&self) -> &ModelInfo {
        Engine::info(self)
    }

    fn memory_plan(&self) -> Option<&MemoryPlan> {
        Some(Engine::memory_plan(self))
    }

    fn validate(&self, request: &GenerateRequest) -> Result<(), EngineError> {
        Engine::validate(self, request)
    }

    fn embeddings(&self) -> EmbeddingList {
        Engine::embeddings(self).list()
    }

    fn generate_batch(
        &self,
        jobs: &[GenerateRequest],
        observer: &mut dyn Observer,
    ) -> Result<Vec<Result<GenerationOutput, EngineError>>, EngineError> {
        Engine::generate_batch(self, jobs, observer)
    }
}
