//! The free-disk gate: below `--min-free-disk` on the output directory's file
//! system, `/readyz` says 503 and new jobs are refused with 507 up front,
//! instead of each failing once its images do not fit. The answer is cached
//! for a second so a burst of submissions costs one `statvfs`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::store::Store;

/// How long one free-space reading is trusted.
const CACHE_FOR: Duration = Duration::from_secs(1);

/// Watches the free space under the output directory.
pub struct DiskGuard {
    store: Store,
    min_free: u64,
    cached: Mutex<Option<(Instant, Option<String>)>>,
}

impl DiskGuard {
    /// A guard requiring `min_free` bytes (zero: never complains).
    pub fn new(store: Store, min_free: u64) -> Self {
        Self {
            store,
            min_free,
            cached: Mutex::new(None),
        }
    }

    /// Why there is not enough room, or `None` when there is.
    pub fn problem(&self) -> Option<String> {
        if self.min_free == 0 {
            return None;
        }
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, answer)) = cached.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return answer.clone();
            }
        }
        let answer = self.measure();
        *cached = Some((Instant::now(), answer.clone()));
        answer
    }

    fn measure(&self) -> Option<String> {
        let dir = self.store.location();
        match self.store.free_bytes() {
            Ok(free) if free >= self.min_free => None,
            Ok(free) => Some(format!(
                "{free} bytes free on the disk of {dir}, below --min-free-disk {}",
                self.min_free
            )),
            Err(e) => Some(format!("cannot read the free space of {dir}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_a_disk_below_the_minimum_and_caches_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(DiskGuard::new(store.clone(), 0).problem(), None);
        assert_eq!(DiskGuard::new(store.clone(), 1).problem(), None);
        let full = DiskGuard::new(store, u64::MAX);
        let problem = full.problem().unwrap();
        assert!(problem.contains("--min-free-disk"), "{problem}");
        assert!(problem.contains(&dir.path().display().to_string()));
        assert_eq!(full.problem(), Some(problem));
    }
}
