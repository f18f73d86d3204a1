//! Results: `<image-id>.png` for each image and `<job-id>.json` holding the
//! job's [`JobRecord`], in a local directory or an S3 bucket (`blobs.rs`). A
//! write is whole and durable once the call returns: a local file is written
//! to a temporary name, fsynced, renamed and its directory fsynced; an S3 PUT
//! is atomic by itself. Names are built only from typed ids, never from
//! request text.
//!
//! Removal order (retention, failed writes): a job's images first, its record
//! last. The record is the index that finds the images, so a crash between the
//! two leaves a record whose images are gone (the next sweep removes it: it is
//! still expired), never an image nothing points to. Images that nothing points
//! to anyway (a crash between writing a job's PNGs and its final record) are
//! collected at start-up by [`Store::scan`]'s caller.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::blobs::Blobs;
pub use super::blobs::{FileInfo, OutputLocation};
use super::id::{ImageId, JobId};
use super::job::JobSnapshot;
use super::queue::ClientId;
use super::record::JobRecord;

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

/// What the output location holds.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every readable job record, with its file's facts.
    pub records: Vec<(JobRecord, FileInfo)>,
    /// Every PNG named by an image id.
    pub pngs: Vec<(ImageId, FileInfo)>,
}

/// The output location (a directory or a bucket), holding job records and images.
#[derive(Debug, Clone)]
pub struct Store {
    location: OutputLocation,
    blobs: Blobs,
    /// This server's name in the records it writes to a shared bucket, so
    /// recovery touches only its own unfinished jobs (`recovery.rs`).
    replica: Arc<str>,
    fault: Arc<Mutex<Option<Fault>>>,
    /// Which client owns each image, learnt from every record written or scanned,
    /// so an image request is checked without reading every record.
    owners: Arc<Mutex<HashMap<ImageId, ClientId>>>,
}

impl Store {
    /// Opens (creating if needed) the output location, removes stale temp
    /// files and proves it writable (a probe is written and removed), with
    /// this host's name as the replica name.
    pub fn open(location: impl Into<OutputLocation>) -> io::Result<Self> {
        Self::open_as(location, &default_replica_name())
    }

    /// [`Store::open`] naming this server `replica` in a shared bucket's records.
    pub fn open_as(location: impl Into<OutputLocation>, replica: &str) -> io::Result<Self> {
        let location = location.into();
        Ok(Self {
            blobs: Blobs::open(&location)?,
            location,
            replica: replica.into(),
            fault: Arc::default(),
            owners: Arc::default(),
        })
    }

    /// Where results go.
    pub fn location(&self) -> &OutputLocation {
        &self.location
    }

    /// The directory results go to, when they are local.
    pub fn local_dir(&self) -> Option<&Path> {
        self.location.local_dir()
    }

    /// True when other replicas may write to the same location (a bucket).
    pub fn is_shared(&self) -> bool {
        self.blobs.is_shared()
    }

    /// True when this server's recovery may close or re-queue `record`'s job:
    /// any record of a local directory, only this replica's in a shared bucket
    /// (another live replica may be running the others).
    pub fn recovers(&self, record: &JobRecord) -> bool {
        !self.is_shared() || record.replica.as_deref() == Some(&*self.replica)
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

    fn png_name(id: ImageId) -> String {
        format!("{id}.png")
    }

    fn record_name(id: JobId) -> String {
        format!("{id}.json")
    }

    /// Stores one image of `owner`'s job (blocking; called from the worker thread).
    pub fn write_png(&self, id: ImageId, owner: &ClientId, png: &[u8]) -> io::Result<()> {
        self.check_fault(|f| match f {
            Fault::Png { after: 0 } => true,
            Fault::Png { after } => {
                *after -= 1;
                false
            }
            _ => false,
        })?;
        self.blobs
            .put(&Self::png_name(id), png, Some(owner.as_str()))
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

    /// The client that owns an image: known from a record this server wrote
    /// or scanned, else (a shared bucket) from the image's own metadata, as
    /// another replica wrote it.
    pub async fn image_owner(&self, id: ImageId) -> Option<ClientId> {
        if let Some(owner) = self.owners().get(&id).cloned() {
            return Some(owner);
        }
        let owner = ClientId::new(self.blobs.owner(&Self::png_name(id)).await?.as_str());
        self.owners().insert(id, owner.clone());
        Some(owner)
    }

    /// Stores a job's record (blocking; small). In a shared bucket the record
    /// names this replica as its writer.
    pub fn write_record(&self, record: &JobRecord) -> io::Result<()> {
        let terminal = record.snapshot.status.is_terminal();
        self.check_fault(|f| match f {
            Fault::QueuedRecord => !terminal,
            Fault::FinalRecord => terminal,
            Fault::Png { .. } => false,
        })?;
        let json = if self.is_shared() {
            let mut mine = record.clone();
            mine.replica = Some(self.replica.to_string());
            serde_json::to_vec_pretty(&mine)
        } else {
            serde_json::to_vec_pretty(record)
        }
        .map_err(io::Error::other)?;
        self.blobs
            .put(&Self::record_name(record.snapshot.id), &json, None)?;
        self.learn_owner(record);
        Ok(())
    }

    /// The PNG of an image, or `None` if there is no such image.
    pub async fn read_png(&self, id: ImageId) -> io::Result<Option<Vec<u8>>> {
        self.blobs.get(&Self::png_name(id)).await
    }

    /// The record of a job, or `None` if none (or an unreadable one) is stored.
    pub async fn read_record(&self, id: JobId) -> Option<JobRecord> {
        let bytes = self.blobs.get(&Self::record_name(id)).await.ok()??;
        parse_record(id, &bytes)
    }

    /// [`Store::read_record`] for blocking callers.
    pub fn read_record_blocking(&self, id: JobId) -> Option<JobRecord> {
        let bytes = self.blobs.get_blocking(&Self::record_name(id)).ok()??;
        parse_record(id, &bytes)
    }

    /// Removes images (blocking); missing ones are not an error.
    pub fn remove_images(&self, ids: impl IntoIterator<Item = ImageId>) -> io::Result<()> {
        let mut first_error = None;
        for id in ids {
            self.owners().remove(&id);
            if let Err(e) = self.blobs.delete(&Self::png_name(id)) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes a job: its images first, its record last (see the module doc).
    pub fn remove_job(&self, snapshot: &JobSnapshot) -> io::Result<()> {
        self.remove_images(snapshot.images.iter().map(|i| i.id))?;
        self.blobs.delete(&Self::record_name(snapshot.id))
    }

    /// Lists every record and PNG (blocking).
    pub fn scan(&self) -> io::Result<Scan> {
        let mut scan = Scan::default();
        for (name, info, bytes) in self.blobs.list(|name| {
            name.strip_suffix(".json")
                .is_some_and(|id| id.parse::<JobId>().is_ok())
        })? {
            if let Some(id) = name.strip_suffix(".png").and_then(|s| s.parse().ok()) {
                scan.pngs.push((id, info));
            } else if let Some(id) = name.strip_suffix(".json").and_then(|s| s.parse().ok()) {
                if let Some(record) = bytes.and_then(|bytes| parse_record(id, &bytes)) {
                    self.learn_owner(&record);
                    scan.records.push((record, info));
                }
            }
        }
        Ok(scan)
    }

    /// The ids of the stored job records, most recently written first
    /// (blocking: a listing, no record is read).
    pub fn record_ids_newest_first(&self) -> Vec<JobId> {
        let Ok(listed) = self.blobs.list(|_| false) else {
            return Vec::new();
        };
        let mut ids: Vec<(SystemTime, JobId)> = listed
            .into_iter()
            .filter_map(|(name, info, _)| {
                let id = name.strip_suffix(".json")?.parse().ok()?;
                Some((info.modified, id))
            })
            .collect();
        ids.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// Bytes free for unprivileged writers on the directory's file system;
    /// unlimited for a bucket.
    pub fn free_bytes(&self) -> io::Result<u64> {
        self.blobs.free_bytes()
    }

    /// The bytes stored under `name` (a dot-file beside the results), or
    /// `fresh` stored there if there are none; replicas racing agree on one.
    /// Buckets only (blocking).
    pub fn shared_secret(&self, name: &str, fresh: &[u8]) -> io::Result<Vec<u8>> {
        self.blobs.get_or_create(name, fresh)
    }
}

/// This host's name (a pod's name in Kubernetes), the default replica name.
pub fn default_replica_name() -> String {
    #[cfg(unix)]
    {
        let name = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        if !name.is_empty() {
            return name;
        }
    }
    "sdserve".to_string()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialects::Dialect;
    use crate::jobs::blobs::TEMP_PREFIX;
    use crate::jobs::job::{ImageRecord, JobParams, JobStatus};
    use crate::jobs::record::Keep;

    fn owner() -> ClientId {
        ClientId::new("ip:127.0.0.1")
    }

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
            replica: None,
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
        store.write_png(image, &owner(), b"\x89PNG data").unwrap();
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
        store.write_png(a, &owner(), b"a").unwrap();
        assert!(store.write_png(b, &owner(), b"b").is_err());
        store.write_png(b, &owner(), b"b").unwrap();
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
