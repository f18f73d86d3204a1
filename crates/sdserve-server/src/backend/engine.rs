//! The production backend: the real engine, passed straight through.

use super::Backend;
use crate::engine_api::{
    Engine, EngineError, GenerateRequest, GenerationOutput, ModelInfo, Observer,
};

impl Backend for Engine {
    fn info(&self) -> &ModelInfo {
        Engine::info(self)
    }

    fn validate(&self, request: &GenerateRequest) -> Result<(), EngineError> {
        Engine::validate(self, request)
    }

    fn generate_batch(
        &self,
        jobs: &[GenerateRequest],
        observer: &mut dyn Observer,
    ) -> Result<Vec<Result<GenerationOutput, EngineError>>, EngineError> {
        Engine::generate_batch(self, jobs, observer)
    }
}
