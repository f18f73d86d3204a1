//! The loaded models: at most `--max-loaded-models` engines, the least recently
//! used evicted before another loads. A [`Lease`] keeps its model loaded while
//! it is used (the worker's batch, the gate's validation); a load waits until a
//! slot can be freed, so two models beyond the limit are never in memory
//! together. Loading blocks for seconds: it runs on the worker thread or on a
//! blocking thread a handler awaits, never on the async runtime.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::catalog::Listed;
use crate::backend::Backend;
use crate::engine_api::ModelInfo;

/// Builds a backend for a catalog entry (the binary: `Engine::load_with`; tests:
/// a `FakeBackend`). The error is the load failure's message.
pub type Loader = Arc<dyn Fn(&Listed) -> Result<Arc<dyn Backend>, String> + Send + Sync>;

struct Slot {
    name: String,
    /// `None` while it loads.
    backend: Option<Arc<dyn Backend>>,
    leases: usize,
    last_used: u64,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    clock: u64,
    loads: u64,
}

/// Loaded backends by model name, least recently used evicted first.
pub struct ModelPool {
    max_loaded: usize,
    loader: Option<Loader>,
    state: Mutex<State>,
    changed: Condvar,
}

/// A loaded model in use; while any lease on it lives it is not evicted.
pub struct Lease {
    pool: Arc<ModelPool>,
    name: String,
    backend: Arc<dyn Backend>,
}

impl Lease {
    /// The loaded backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The model's catalog name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut st = self.pool.lock();
        if let Some(slot) = st.slots.iter_mut().find(|s| s.name == self.name) {
            slot.leases = slot.leases.saturating_sub(1);
        }
        drop(st);
        self.pool.changed.notify_all();
    }
}

impl ModelPool {
    /// A pool of at most `max_loaded` models (at least 1), loading with `loader`
    /// (`None`: only what [`ModelPool::insert`] put there is ever served).
    pub fn new(max_loaded: usize, loader: Option<Loader>) -> Arc<Self> {
        Arc::new(Self {
            max_loaded: max_loaded.max(1),
            loader,
            state: Mutex::default(),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts an already loaded backend in the pool under `name` (evicting
    /// nothing: used before serving starts).
    pub fn insert(&self, name: &str, backend: Arc<dyn Backend>) {
        let mut st = self.lock();
        st.clock += 1;
        let last_used = st.clock;
        st.slots.retain(|s| s.name != name);
        st.slots.push(Slot {
            name: name.to_string(),
            backend: Some(backend),
            leases: 0,
            last_used,
        });
    }

    /// Facts about `name` if it is loaded now; never waits for a load.
    pub fn loaded_info(&self, name: &str) -> Option<ModelInfo> {
        let st = self.lock();
        st.slots
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.backend.as_ref())
            .map(|b| b.info().clone())
    }

    /// Runs `f` on `name`'s backend if it is loaded now (short reads only: the pool is locked).
    pub fn peek<T>(&self, name: &str, f: impl FnOnce(&dyn Backend) -> T) -> Option<T> {
        let st = self.lock();
        st.slots
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.backend.as_ref())
            .map(|b| f(b.as_ref()))
    }

    /// Names of the loaded models, most recently used first.
    pub fn loaded(&self) -> Vec<String> {
        let st = self.lock();
        let mut slots: Vec<&Slot> = st.slots.iter().filter(|s| s.backend.is_some()).collect();
        slots.sort_by_key(|s| std::cmp::Reverse(s.last_used));
        slots.into_iter().map(|s| s.name.clone()).collect()
    }

    /// Loads performed so far (for logs and tests).
    pub fn loads(&self) -> u64 {
        self.lock().loads
    }

    /// The model `model` names, loaded: at once if it is, else after evicting
    /// the least recently used unleased model when the pool is full (waiting
    /// for a lease to end if every model is in use) and loading it. Blocking.
    pub fn acquire(self: &Arc<Self>, model: &Listed) -> Result<Lease, String> {
        let name = model.entry.name.as_str();
        let mut st = self.lock();
        loop {
            st.clock += 1;
            let now = st.clock;
            if let Some(slot) = st.slots.iter_mut().find(|s| s.name == name) {
                if let Some(backend) = &slot.backend {
                    slot.leases += 1;
                    slot.last_used = now;
                    return Ok(Lease {
                        pool: self.clone(),
                        name: name.to_string(),
                        backend: backend.clone(),
                    });
                }
                // Another thread is loading it: wait for that load.
                st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let Some(loader) = self.loader.clone() else {
                return Err(format!("model {name:?} is not loaded and cannot be loaded"));
            };
            if st.slots.len() >= self.max_loaded {
                let victim = st
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.leases == 0 && s.backend.is_some())
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(i, _)| i);
                let Some(victim) = victim else {
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                    continue;
                };
                let evicted = st.slots.remove(victim);
                drop(st);
                tracing::info!(model = %evicted.name, "unloading the least recently used model");
                drop(evicted); // frees its weights before the next load
                st = self.lock();
                continue;
            }
            st.slots.push(Slot {
                name: name.to_string(),
                backend: None,
                leases: 0,
                last_used: now,
            });
            drop(st);
            let started = std::time::Instant::now();
            tracing::info!(model = %name, "loading model");
            let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loader(model)))
                .unwrap_or_else(|_| Err("the model loader panicked".into()));
            let mut st = self.lock();
            let index = st.slots.iter().position(|s| s.name == name);
            let result = match (loaded, index) {
                (Ok(backend), Some(i)) => {
                    st.loads += 1;
                    let slot = &mut st.slots[i];
                    slot.backend = Some(backend.clone());
                    slot.leases = 1;
                    tracing::info!(
                        model = %name,
                        load_secs = format!("{:.2}", started.elapsed().as_secs_f64()),
                        "model loaded"
                    );
                    Ok(Lease {
                        pool: self.clone(),
                        name: name.to_string(),
                        backend,
                    })
                }
                (Err(e), index) => {
                    if let Some(i) = index {
                        st.slots.remove(i);
                    }
                    Err(e)
                }
                (Ok(_), None) => Err(format!("model {name:?} was dropped while loading")),
            };
            drop(st);
            self.changed.notify_all();
            return result;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FakeBackend;
    use crate::models::catalog::ModelEntry;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn listed(name: &str) -> Listed {
        Listed {
            entry: Arc::new(ModelEntry::named(name)),
            sha256: None,
        }
    }

    fn counting_pool(max: usize) -> (Arc<ModelPool>, Arc<AtomicUsize>) {
        let loads = Arc::new(AtomicUsize::new(0));
        let counter = loads.clone();
        let loader: Loader = Arc::new(move |m: &Listed| {
            counter.fetch_add(1, Ordering::SeqCst);
            if m.entry.name == "broken" {
                return Err("cannot load".into());
            }
            Ok(Arc::new(FakeBackend::new()) as Arc<dyn Backend>)
        });
        (ModelPool::new(max, Some(loader)), loads)
    }

    #[test]
    fn keeps_the_most_recently_used_and_evicts_the_least() {
        let (pool, loads) = counting_pool(2);
        for name in ["a", "b", "a", "c", "a", "b"] {
            drop(pool.acquire(&listed(name)).unwrap());
        }
        // a, b loaded; c evicts b (a was used more recently); b evicts c.
        assert_eq!(loads.load(Ordering::SeqCst), 4);
        assert_eq!(pool.loaded(), ["b", "a"]);
        assert!(pool.acquire(&listed("broken")).is_err());
        assert_eq!(
            pool.loaded().len(),
            1,
            "a failed load frees its slot, after evicting"
        );
    }

    #[test]
    fn a_leased_model_is_never_evicted() {
        let (pool, _) = counting_pool(1);
        let held = pool.acquire(&listed("a")).unwrap();
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.acquire(&listed("b")).map(|l| l.name().to_string()))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(pool.loaded(), ["a"], "b waits while a is leased");
        drop(held);
        assert_eq!(waiter.join().unwrap().unwrap(), "b");
        assert_eq!(pool.loaded(), ["b"]);
    }
}
