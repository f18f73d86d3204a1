//! [`Models`]: the catalog and the pools together, plus the default model (what
//! a request that names none runs on; A1111's `sd_model_checkpoint`). There is
//! one pool per device (`--device cuda:0,cuda:1`), each fed by its own worker;
//! the gate validates requests on one of them, the one with the smallest memory
//! budget, so whatever it admits fits every device.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::catalog::{Catalog, Listed, ModelEntry};
use super::hashes::HashStore;
use super::pool::{Lease, ModelPool};
use crate::backend::Backend;
use crate::engine_api::ModelInfo;
use crate::error::ApiError;

/// The served models: catalog, loaded pools (one per device) and default.
pub struct Models {
    catalog: Catalog,
    devices: Vec<DevicePool>,
    /// The device whose pool the gate validates on.
    gate: AtomicUsize,
    default: RwLock<String>,
    /// Facts of every model loaded once, kept after it is evicted (listings).
    infos: Mutex<HashMap<String, ModelInfo>>,
}

/// One device's loaded models.
pub struct DevicePool {
    /// How logs and `/readyz` name the device (`cpu`, `cuda:1`).
    pub label: String,
    /// Its models.
    pub pool: Arc<ModelPool>,
}

impl Models {
    /// Models from `catalog`, loaded through one pool per device (at least
    /// one); `default` must be a catalog id (any of A1111's ids) and names the
    /// default model.
    pub fn new(catalog: Catalog, devices: Vec<DevicePool>, default: &str) -> Result<Self, String> {
        if devices.is_empty() {
            return Err("no device to run models on".into());
        }
        let Some(found) = catalog.find(default) else {
            return Err(format!(
                "model {default:?} is not among the served models ({})",
                catalog.names().join(", ")
            ));
        };
        Ok(Self {
            catalog,
            devices,
            gate: AtomicUsize::new(0),
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
            devices: vec![DevicePool {
                label: "default".into(),
                pool,
            }],
            gate: AtomicUsize::new(0),
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

    /// The pool the gate validates on (listings and `/readyz` read it too).
    pub fn pool(&self) -> &Arc<ModelPool> {
        &self.devices[self.gate_index()].pool
    }

    /// Every device's pool, in `--device` order; one worker runs each.
    pub fn devices(&self) -> &[DevicePool] {
        &self.devices
    }

    fn gate_index(&self) -> usize {
        self.gate
            .load(Ordering::Relaxed)
            .min(self.devices.len() - 1)
    }

    /// Loads the default model on every device (the plan of each is checked
    /// at start-up, not at the first request), then lets the gate validate
    /// on the device with the smallest memory budget. Blocking.
    pub fn load_default_everywhere(&self) -> Result<ModelInfo, ApiError> {
        let default = self
            .default_model()
            .ok_or_else(|| ApiError::Internal("the default model is not in the catalog".into()))?;
        let mut info = None;
        let mut smallest: Option<(u64, usize)> = None;
        for index in 0..self.devices.len() {
            let lease = self.acquire_on(index, &default)?;
            let budget = lease
                .backend()
                .memory_plan()
                .map_or(u64::MAX, |plan| plan.budget_bytes());
            if smallest.is_none_or(|(least, _)| budget < least) {
                smallest = Some((budget, index));
            }
            info.get_or_insert_with(|| lease.backend().info().clone());
        }
        if let Some((_, index)) = smallest {
            self.gate.store(index, Ordering::Relaxed);
        }
        info.ok_or_else(|| ApiError::Internal("no device to run models on".into()))
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
        let loaded = self.devices.iter().find_map(|d| d.pool.loaded_info(name));
        loaded.or_else(|| {
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

    /// `model`, loaded on the gate's device (loading it if needed). Blocking:
    /// the worker thread or a blocking task calls it.
    pub fn acquire_blocking(&self, model: &Listed) -> Result<Lease, ApiError> {
        self.acquire_on(self.gate_index(), model)
    }

    /// `model`, loaded on device `index` (the worker of that device).
    pub fn acquire_on(&self, index: usize, model: &Listed) -> Result<Lease, ApiError> {
        let device = self
            .devices
            .get(index)
            .ok_or_else(|| ApiError::Internal(format!("no device {index}")))?;
        let lease = device
            .pool
            .acquire(model)
            .map_err(|message| ApiError::ModelLoad {
                model: model.entry.name.clone(),
                message: if self.devices.len() > 1 {
                    format!("on {}: {message}", device.label)
                } else {
                    message
                },
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
