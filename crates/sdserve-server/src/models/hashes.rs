//! sha256 of model files, computed once: a JSON cache in the output directory
//! (`model-hashes.json`) keyed by path, size and modification time, so a
//! restart re-hashes nothing that did not change. Hashing a 7 GB checkpoint
//! takes seconds, so it happens on a background thread after a scan, or on
//! the loader thread just before a load; a request only ever reads what is
//! known.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The cache's file name in the output directory.
pub const CACHE_FILE: &str = "model-hashes.json";

/// Bytes read per call while hashing.
const READ_CHUNK: usize = 1 << 20;

/// A file as it was when scanned: a changed size or mtime means a new hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileKey {
    /// Absolute path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (0 if unknown).
    pub mtime_ns: u64,
}

impl FileKey {
    /// The key of the file at `path` now; `None` if it cannot be read.
    pub fn of(path: &Path) -> Option<Self> {
        let path = path.canonicalize().ok()?;
        let meta = std::fs::metadata(&path).ok()?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Some(Self {
            path,
            size: meta.len(),
            mtime_ns,
        })
    }
}

#[derive(Serialize, Deserialize, Default)]
struct CacheFile {
    files: Vec<CachedHash>,
}

#[derive(Serialize, Deserialize, Clone)]
struct CachedHash {
    #[serde(flatten)]
    key: FileKey,
    sha256: String,
}

#[derive(Default)]
struct State {
    known: HashMap<FileKey, String>,
    pending: VecDeque<FileKey>,
    /// Files being hashed now (a second asker waits instead of reading them again).
    hashing: HashSet<FileKey>,
    worker_running: bool,
}

/// Known hashes, the cache file they persist in, and the background hasher.
pub struct HashStore {
    cache: Option<PathBuf>,
    state: Mutex<State>,
    hashed: Condvar,
}

impl HashStore {
    /// A store persisted in `dir/model-hashes.json` (a missing or unreadable
    /// cache starts empty; it is rewritten as hashes are computed).
    pub fn open(dir: &Path) -> Arc<Self> {
        let cache = dir.join(CACHE_FILE);
        let files = std::fs::read(&cache)
            .ok()
            .and_then(|bytes| match serde_json::from_slice::<CacheFile>(&bytes) {
                Ok(file) => Some(file.files),
                Err(e) => {
                    tracing::warn!(path = %cache.display(), error = %e, "ignoring a malformed hash cache");
                    None
                }
            })
            .unwrap_or_default();
        let known = files.into_iter().map(|c| (c.key, c.sha256)).collect();
        Arc::new(Self {
            cache: Some(cache),
            state: Mutex::new(State {
                known,
                ..State::default()
            }),
            hashed: Condvar::new(),
        })
    }

    /// A store that keeps nothing on disk (tests, a backend installed directly).
    pub fn in_memory() -> Arc<Self> {
        Arc::new(Self {
            cache: None,
            state: Mutex::default(),
            hashed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sha256 of `key`, if already computed; never reads the file.
    pub fn known(&self, key: &FileKey) -> Option<String> {
        self.lock().known.get(key).cloned()
    }

    /// The sha256 of `key`, computing it now if unknown (blocking: seconds for
    /// a large checkpoint). Only the loader and the background thread call it.
    pub fn hash_now(&self, key: &FileKey) -> std::io::Result<String> {
        let mut st = self.lock();
        loop {
            if let Some(known) = st.known.get(key) {
                return Ok(known.clone());
            }
            if st.hashing.insert(key.clone()) {
                break;
            }
            st = self.hashed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        drop(st);
        let started = std::time::Instant::now();
        let hashed = sha256_file(&key.path);
        let sha256 = {
            let mut st = self.lock();
            st.hashing.remove(key);
            drop(st);
            self.hashed.notify_all();
            hashed?
        };
        tracing::info!(
            file = %key.path.display(),
            secs = format!("{:.2}", started.elapsed().as_secs_f64()),
            "hashed a model file"
        );
        let snapshot = {
            let mut st = self.lock();
            st.known.insert(key.clone(), sha256.clone());
            st.known
                .iter()
                .map(|(key, sha256)| CachedHash {
                    key: key.clone(),
                    sha256: sha256.clone(),
                })
                .collect::<Vec<_>>()
        };
        self.persist(snapshot);
        Ok(sha256)
    }

    /// Queues the keys whose hash is unknown for the background thread
    /// (started if it is not running).
    pub fn hash_in_background(self: &Arc<Self>, keys: Vec<FileKey>) {
        let start = {
            let mut st = self.lock();
            for key in keys {
                if !st.known.contains_key(&key) && !st.pending.contains(&key) {
                    st.pending.push_back(key);
                }
            }
            let start = !st.worker_running && !st.pending.is_empty();
            st.worker_running |= start;
            start
        };
        if !start {
            return;
        }
        let store = self.clone();
        let spawned = std::thread::Builder::new()
            .name("sdserve-hash".into())
            .spawn(move || loop {
                let next = {
                    let mut st = store.lock();
                    let next = st.pending.pop_front();
                    st.worker_running = next.is_some();
                    next
                };
                let Some(key) = next else { break };
                if let Err(e) = store.hash_now(&key) {
                    tracing::warn!(file = %key.path.display(), error = %e, "cannot hash a model file");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the hashing thread; hashes come at load");
            self.lock().worker_running = false;
        }
    }

    /// Rewrites the cache file atomically (temp file + rename); a failure is
    /// only logged: the hashes are then computed again after a restart.
    fn persist(&self, files: Vec<CachedHash>) {
        let Some(cache) = &self.cache else { return };
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec_pretty(&CacheFile { files })?;
            // One temporary file per writer: several `sdserve generate`, or replicas
            // sharing --hash-cache-dir (each PID 1 in its container), may share a cache.
            let nanos = std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let tmp = cache.with_extension(format!("json.{}.{nanos}.tmp", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, cache)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %cache.display(), error = %e, "cannot write the hash cache");
        }
    }
}

/// Lowercase hex sha256 of a file's bytes.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_once_and_persists_by_path_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.safetensors");
        std::fs::write(&file, b"abc").unwrap();
        let key = FileKey::of(&file).unwrap();
        let store = HashStore::open(dir.path());
        assert_eq!(store.known(&key), None);
        let sha = store.hash_now(&key).unwrap();
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // A new store reads the cache: no file read needed.
        let again = HashStore::open(dir.path());
        assert_eq!(again.known(&key).as_deref(), Some(sha.as_str()));
        // A changed file is a different key.
        std::fs::write(&file, b"abcd").unwrap();
        let changed = FileKey::of(&file).unwrap();
        assert_ne!(changed, key);
        assert_eq!(again.known(&changed), None);
    }

    #[test]
    fn background_hashing_fills_in_the_known_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.safetensors");
        std::fs::write(&file, b"abc").unwrap();
        let key = FileKey::of(&file).unwrap();
        let store = HashStore::in_memory();
        store.hash_in_background(vec![key.clone()]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.known(&key).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(store.known(&key).is_some_and(|s| s.starts_with("ba7816bf")));
    }
}
