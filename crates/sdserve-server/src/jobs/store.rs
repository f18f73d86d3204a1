//! Results on disk: `<image-id>.png` for each image and `<job-id>.json` holding the
//! job's [`JobRecord`]. Every file is written to a temporary name, fsynced,
//! renamed, and the directory fsynced, so a reader never sees half a file and a
//! file is on disk once the call returns. Paths are built only from typed ids,
//! never from request text.
//!
//! Removal order (retention, failed writes): a job's images first, its record
//! last. The record is the index that finds the images, so a crash between the
//! two leaves a record whose images are gone (the next sweep removes it: it is
//! still expired), never an image nothing points to. Images that nothing points
//! to anyway (a crash between writing a job's PNGs and its final record) are
//! collected at start-up by [`Store::scan`]'s caller.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::id::{ImageId, JobId};
use super::job::JobSnapshot;
use super::queue::ClientId;
use super::record::JobRecord;

/// Prefix of files being written; left-overs from a crash are removed at start-up.
const TEMP_PREFIX: &str = ".tmp-";

/// A write failure to inject, for tests of the storage-error paths (root ignores
/// file permissions, so a read-only directory cannot simulate them). One-shot.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The record written when a job is accepted.
    QueuedRecord,
    /// A PNG, after this many PNGs were written successfully.
    Png {
        /// PNGs that succeed first.
        after: usize,
    },
    /// The record written when a job ends.
    FinalRecord,
}

/// One file found by [`Store::scan`].
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// Size in bytes.
    pub bytes: u64,
    /// Last modification.
    pub modified: SystemTime,
}

/// What the output directory holds.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every readable job record, with its file's facts.
    pub records: Vec<(JobRecord, FileInfo)>,
    /// Every PNG named by an image id.
    pub pngs: Vec<(ImageId, FileInfo)>,
}

/// The output directory, holding job records and images.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    fault: Arc<Mutex<Option<Fault>>>,
    /// Which client owns each image, learnt from every record written or scanned,
    /// so an image request is checked without reading every record.
    owners: Arc<Mutex<HashMap<ImageId, ClientId>>>,
}

impl Store {
    /// Opens (creating if needed) the output directory, removes stale temp
    /// files and proves the directory writable (create, fsync, remove a probe).
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let store = Self {
            dir,
            fault: Arc::default(),
            owners: Arc::default(),
        };
        store.probe()?;
        Ok(store)
    }

    /// Creates, fsyncs and removes a probe file: a read-only or full directory fails here.
    fn probe(&self) -> io::Result<()> {
        let probe = self
            .dir
            .join(format!("{TEMP_PREFIX}probe-{}", uuid::Uuid::new_v4()));
        let written = (|| {
            let mut file = std::fs::File::create(&probe)?;
            file.write_all(b"probe")?;
            file.sync_all()
        })();
        let removed = std::fs::remove_file(&probe);
        written?;
        removed?;
        sync_dir(&self.dir)
    }

    /// The directory results go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the next matching write fail (tests only).
    #[doc(hidden)]
    pub fn inject_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(fault);
    }

    /// Fires the injected fault if `matches` says this write is the one.
    fn check_fault(&self, matches: impl FnOnce(&mut Fault) -> bool) -> io::Result<()> {
        let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        if fault.as_mut().is_some_and(matches) {
            *fault = None;
            return Err(io::Error::other("injected storage fault"));
        }
        Ok(())
    }

    fn png_path(&self, id: ImageId) -> PathBuf {
        self.dir.join(format!("{id}.png"))
    }

    fn record_path(&self, id: JobId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `bytes` to `target` via a fsynced temporary file in the same
    /// directory, then fsyncs the directory so the rename is durable too.
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
            std::fs::rename(&temp, target)?;
            sync_dir(&self.dir)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    /// Stores one image (blocking; called from the worker thread).
    pub fn write_png(&self, id: ImageId, png: &[u8]) -> io::Result<()> {
        self.check_fault(|f| match f {
            Fault::Png { after: 0 } => true,
            Fault::Png { after } => {
                *after -= 1;
                false
            }
            _ => false,
        })?;
        self.write_atomic(&self.png_path(id), png)
    }

    fn owners(&self) -> MutexGuard<'_, HashMap<ImageId, ClientId>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn learn_owner(&self, record: &JobRecord) {
        let mut owners = self.owners();
        for image in &record.snapshot.images {
            owners.insert(image.id, record.client_id());
        }
    }

    /// The client that owns an image, if a record names it.
    pub fn image_owner(&self, id: ImageId) -> Option<ClientId> {
        self.owners().get(&id).cloned()
    }

    /// Stores a job's record (blocking; small).
    pub fn write_record(&self, record: &JobRecord) -> io::Result<()> {
        let terminal = record.snapshot.status.is_terminal();
        self.check_fault(|f| match f {
            Fault::QueuedRecord => !terminal,
            Fault::FinalRecord => terminal,
            Fault::Png { .. } => false,
        })?;
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        self.write_atomic(&self.record_path(record.snapshot.id), &json)?;
        self.learn_owner(record);
        Ok(())
    }

    /// The PNG of an image, or `None` if there is no such image.
    pub async fn read_png(&self, id: ImageId) -> io::Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.png_path(id)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The record of a job, or `None` if none (or an unreadable one) is on disk.
    pub async fn read_record(&self, id: JobId) -> Option<JobRecord> {
        let bytes = tokio::fs::read(self.record_path(id)).await.ok()?;
        parse_record(id, &bytes)
    }

    /// [`Store::read_record`] for blocking callers.
    pub fn read_record_blocking(&self, id: JobId) -> Option<JobRecord> {
        let bytes = std::fs::read(self.record_path(id)).ok()?;
        parse_record(id, &bytes)
    }

    /// Removes images (blocking); missing ones are not an error.
    pub fn remove_images(&self, ids: impl IntoIterator<Item = ImageId>) -> io::Result<()> {
        let mut first_error = None;
        for id in ids {
            self.owners().remove(&id);
            match std::fs::remove_file(self.png_path(id)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    first_error.get_or_insert(e);
                }
                _ => {}
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes a job from disk: its images first, its record last (see the module doc).
    pub fn remove_job(&self, snapshot: &JobSnapshot) -> io::Result<()> {
        self.remove_images(snapshot.images.iter().map(|i| i.id))?;
        match std::fs::remove_file(self.record_path(snapshot.id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Lists every record and PNG in the directory (blocking).
    pub fn scan(&self) -> io::Result<Scan> {
        let mut scan = Scan::default();
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(meta) = entry.metadata().ok().filter(|m| m.is_file()) else {
                continue;
            };
            let info = FileInfo {
                bytes: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            };
            if let Some(id) = name.strip_suffix(".png").and_then(|s| s.parse().ok()) {
                scan.pngs.push((id, info));
            } else if let Some(id) = name.strip_suffix(".json").and_then(|s| s.parse().ok()) {
                let record = std::fs::read(entry.path())
                    .ok()
                    .and_then(|bytes| parse_record(id, &bytes));
                if let Some(record) = record {
                    self.learn_owner(&record);
                    scan.records.push((record, info));
                }
            }
        }
        Ok(scan)
    }

    /// The ids of the job records on disk, most recently written first
    /// (blocking: a directory listing, no record is read).
    pub fn record_ids_newest_first(&self) -> Vec<JobId> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids: Vec<(SystemTime, JobId)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let id = name.to_str()?.strip_suffix(".json")?.parse().ok()?;
                let modified = entry.metadata().ok()?.modified().ok()?;
                Some((modified, id))
            })
            .collect();
        ids.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// Bytes free for unprivileged writers on the directory's file system.
    pub fn free_bytes(&self) -> io::Result<u64> {
        free_bytes(&self.dir)
    }
}

fn parse_record(id: JobId, bytes: &[u8]) -> Option<JobRecord> {
    match serde_json::from_slice::<JobRecord>(bytes) {
        Ok(record) if record.snapshot.id == id => Some(record),
        Ok(_) => {
            tracing::warn!(job = %id, "ignoring a job record whose id is not its file name");
            None
        }
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "ignoring unreadable job record");
            None
        }
    }
}

/// Makes a directory's entries (creations, renames) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(unix)]
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> io::Result<u64> {
    Ok(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialects::Dialect;
    use crate::jobs::job::{ImageRecord, JobParams, JobStatus};
    use crate::jobs::record::Keep;

    fn record() -> JobRecord {
        JobRecord {
            snapshot: JobSnapshot::queued(
                JobId::new(),
                JobParams {
                    prompt: "p".into(),
                    negative_prompt: String::new(),
                    seed: Some(1),
                    steps: 2,
                    cfg_scale: 1.0,
                    sampler: "euler".into(),
                    schedule_type: "automatic".into(),
                    width: 64,
                    height: 64,
                    batch_size: 1,
                    model: None,
                    strength: None,
                    inpainting: false,
                    seed_per_image: false,
                    hires: None,
                    prompt_syntax: Default::default(),
                    clip_skip: 0,
                    loras: Vec::new(),
                },
                0,
            ),
            client: "ip:127.0.0.1".into(),
            dialect: Some(Dialect::Native),
            seq: 1,
            keep: Keep::Stored,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[tokio::test]
    async fn writes_are_atomic_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".tmp-stale-x.png"), b"junk").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!dir.path().join(".tmp-stale-x.png").exists());

        let image = ImageId::new();
        store.write_png(image, b"\x89PNG data").unwrap();
        let mut rec = record();
        rec.snapshot.status = JobStatus::Succeeded;
        store.write_record(&rec).unwrap();

        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(
            reopened.read_png(image).await.unwrap().unwrap(),
            b"\x89PNG data"
        );
        assert_eq!(reopened.read_record(rec.snapshot.id).await.unwrap(), rec);
        assert!(reopened.read_png(ImageId::new()).await.unwrap().is_none());
        let names = names(dir.path());
        assert!(
            names.iter().all(|n| !n.starts_with(TEMP_PREFIX)),
            "{names:?}"
        );
        let scan = reopened.scan().unwrap();
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.pngs.len(), 1);
        assert!(reopened.free_bytes().unwrap() > 0);
    }

    #[test]
    fn a_directory_under_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(Store::open(dir.path().join("file").join("out")).is_err());
    }

    #[test]
    fn removes_images_before_the_record_and_faults_fire_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut rec = record();
        store.inject_fault(Fault::QueuedRecord);
        assert!(store.write_record(&rec).is_err());
        store.write_record(&rec).unwrap();

        store.inject_fault(Fault::Png { after: 1 });
        let (a, b) = (ImageId::new(), ImageId::new());
        store.write_png(a, b"a").unwrap();
        assert!(store.write_png(b, b"b").is_err());
        store.write_png(b, b"b").unwrap();
        rec.snapshot.status = JobStatus::Succeeded;
        rec.snapshot.images = [a, b]
            .into_iter()
            .map(|id| ImageRecord {
                id,
                seed: 1,
                infotext: String::new(),
            })
            .collect();
        store.inject_fault(Fault::FinalRecord);
        assert!(store.write_record(&rec).is_err());
        store.write_record(&rec).unwrap();
        assert_eq!(names(dir.path()).len(), 3);
        store.remove_job(&rec.snapshot).unwrap();
        assert!(names(dir.path()).is_empty());
        store.remove_job(&rec.snapshot).unwrap();
    }
}
