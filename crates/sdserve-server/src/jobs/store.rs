//! Results on disk: `<image-id>.png` for each image and `<job-id>.json` holding the
//! job's final [`JobSnapshot`], both written to a temporary name and renamed, so a
//! reader never sees half a file and a crash leaves no partial result. Paths are
//! built only from typed ids, never from request text.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::id::{ImageId, JobId};
use super::job::JobSnapshot;

/// Prefix of files being written; left-overs from a crash are removed at start-up.
const TEMP_PREFIX: &str = ".tmp-";

/// The output directory, holding finished results.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the output directory and removes stale temp files.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { dir })
    }

    /// The directory results go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn png_path(&self, id: ImageId) -> PathBuf {
        self.dir.join(format!("{id}.png"))
    }

    fn record_path(&self, id: JobId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `bytes` to `target` via a temporary file in the same directory.
    fn write_atomic(&self, target: &Path, bytes: &[u8]) -> io::Result<()> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}-{name}", uuid::Uuid::new_v4()));
        let result = (|| {
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, target)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    /// Stores one image (blocking; called from the worker thread).
    pub fn write_png(&self, id: ImageId, png: &[u8]) -> io::Result<()> {
        self.write_atomic(&self.png_path(id), png)
    }

    /// Stores a job's final state (blocking; small).
    pub fn write_record(&self, snapshot: &JobSnapshot) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(snapshot).map_err(io::Error::other)?;
        self.write_atomic(&self.record_path(snapshot.id), &json)
    }

    /// The PNG of an image, or `None` if there is no such image.
    pub async fn read_png(&self, id: ImageId) -> io::Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.png_path(id)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The recorded final state of a job, or `None` if none (or unreadable) is on disk.
    pub async fn read_record(&self, id: JobId) -> Option<JobSnapshot> {
        let bytes = tokio::fs::read(self.record_path(id)).await.ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(snapshot) => Some(snapshot),
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "ignoring unreadable job record");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::job::{JobParams, JobStatus};

    fn params() -> JobParams {
        JobParams {
            prompt: "p".into(),
            negative_prompt: String::new(),
            seed: Some(1),
            steps: 2,
            cfg_scale: 1.0,
            sampler: "euler".into(),
            width: 64,
            height: 64,
            batch_size: 1,
        }
    }

    #[tokio::test]
    async fn writes_are_atomic_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".tmp-stale-x.png"), b"junk").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!dir.path().join(".tmp-stale-x.png").exists());

        let image = ImageId::new();
        store.write_png(image, b"\x89PNG data").unwrap();
        let mut snap = JobSnapshot::queued(JobId::new(), params(), 0);
        snap.status = JobStatus::Succeeded;
        store.write_record(&snap).unwrap();

        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(
            reopened.read_png(image).await.unwrap().unwrap(),
            b"\x89PNG data"
        );
        assert_eq!(reopened.read_record(snap.id).await.unwrap(), snap);
        assert!(reopened.read_png(ImageId::new()).await.unwrap().is_none());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(TEMP_PREFIX)),
            "{names:?}"
        );
    }
}
