//! [`Models`]: the catalog and the pool together, plus the default model (what
//! a request that names none runs on; A1111's `sd_model_checkpoint`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use super::catalog::{Catalog, Listed, ModelEntry};
use super::hashes::HashStore;
use super::pool::{Lease, ModelPool};
use crate::backend::Backend;
use crate::engine_api::ModelInfo;
use crate::error::ApiError;

/// The served models: catalog, loaded pool and default.
pub struct Models {
    catalog: Catalog,
    pool: Arc<ModelPool>,
    default: RwLock<String>,
    /// Facts of every model loaded once, kept after it is evicted (listings).
    infos: Mutex<HashMap<String, ModelInfo>>,
}

impl Models {
    /// Models from `catalog`, loaded through `pool`; `default` must be a
    /// catalog id (any of A1111's ids) and names the default model.
    pub fn new(catalog: Catalog, pool: Arc<ModelPool>, default: &str) -> Result<Self, String> {
        let Some(found) = catalog.find(default) else {
            return Err(format!(
                "model {default:?} is not among the served models ({})",
                catalog.names().join(", ")
            ));
        };
        Ok(Self {
            catalog,
            pool,
            default: RwLock::new(found.entry.name.clone()),
            infos: Mutex::default(),
        })
    }

    /// One model, already loaded, that is all there is (no folder, no switching).
    pub fn single(backend: Arc<dyn Backend>) -> Self {
        let name = backend.info().name.clone();
        let pool = ModelPool::new(1, None);
        pool.insert(&name, backend.clone());
        let catalog = Catalog::fixed(vec![ModelEntry::named(&name)], HashStore::in_memory());
        let models = Self {
            catalog,
            pool,
            default: RwLock::new(name.clone()),
            infos: Mutex::default(),
        };
        models.remember(&name, backend.info());
        models
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The pool of loaded models.
    pub fn pool(&self) -> &Arc<ModelPool> {
        &self.pool
    }

    /// The default model's name.
    pub fn default_name(&self) -> String {
        self.default
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The default model with its hash as known now.
    pub fn default_model(&self) -> Option<Listed> {
        self.catalog.by_name(&self.default_name())
    }

    /// Makes `name` (a catalog name) the default.
    pub fn set_default(&self, name: &str) {
        *self.default.write().unwrap_or_else(|e| e.into_inner()) = name.to_string();
    }

    /// The model a request names (`None`: the default), or 404 listing the names.
    pub fn resolve(&self, asked: Option<&str>, field: &'static str) -> Result<Listed, ApiError> {
        let asked = match asked {
            Some(asked) => asked.to_string(),
            None => self.default_name(),
        };
        self.catalog
            .find(&asked)
            .ok_or_else(|| ApiError::UnknownModel {
                field,
                asked,
                available: self.catalog.names(),
            })
    }

    /// Facts about a model: live if loaded, else as remembered from its last load.
    pub fn info(&self, name: &str) -> Option<ModelInfo> {
        self.pool.loaded_info(name).or_else(|| {
            self.infos
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .cloned()
        })
    }

    fn remember(&self, name: &str, info: &ModelInfo) {
        self.infos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), info.clone());
    }

    /// `model`, loaded (loading it if needed). Blocking: the worker thread or a
    /// blocking task calls it.
    pub fn acquire_blocking(&self, model: &Listed) -> Result<Lease, ApiError> {
        let lease = self
            .pool
            .acquire(model)
            .map_err(|message| ApiError::ModelLoad {
                model: model.entry.name.clone(),
                message,
            })?;
        self.remember(lease.name(), lease.backend().info());
        Ok(lease)
    }

    /// [`Models::acquire_blocking`] on a blocking thread, so a handler awaits a load
    /// without stalling the async runtime.
    pub async fn acquire(self: &Arc<Self>, model: Listed) -> Result<Lease, ApiError> {
        let models = self.clone();
        tokio::task::spawn_blocking(move || models.acquire_blocking(&model))
            .await
            .unwrap_or_else(|e| Err(ApiError::Internal(format!("model load task failed: {e}"))))
    }
}
