//! Which models a server serves and which are loaded: the [`Catalog`]
//! (`--models-dir` scanned, named as A1111 names checkpoints, hashes from the
//! [`HashStore`]), a [`ModelPool`] per device (at most `--max-loaded-models` engines,
//! least recently used evicted), and [`Models`], the facade the state and the
//! worker use (the default model, resolving a request's model name, leases).

mod catalog;
mod hashes;
mod pool;
mod served;

pub use catalog::{hash_file_of, scan, Catalog, Listed, ModelEntry, A1111_SUBDIR};
pub use hashes::{sha256_file, FileKey, HashStore, CACHE_FILE};
pub use pool::{Lease, Loader, ModelPool};
pub use served::{DevicePool, Models};
