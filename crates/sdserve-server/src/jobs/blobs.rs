//! Where the output store keeps its objects: a local directory or an
//! S3-compatible bucket (`s3.rs`). [`Store`](super::store::Store) names
//! objects (`<id>.png`, `<id>.json`) and keeps the job logic; this layer only
//! puts, gets, lists and deletes whole objects, each put atomic (a reader never
//! sees half an object) and durable once it returns.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use super::s3::S3Blobs;

/// Prefix of local files being written; left-overs from a crash are removed at start-up.
pub(super) const TEMP_PREFIX: &str = ".tmp-";

/// `--output-dir`: a local directory, or `s3://bucket/prefix` for results that
/// every replica shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputLocation {
    /// A local directory.
    Dir(PathBuf),
    /// A bucket of an S3-compatible store, under `prefix` (no leading or
    /// trailing `/`; empty for the bucket's root).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix.
        prefix: String,
    },
}

impl OutputLocation {
    /// "output directory" or "output bucket", for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Dir(_) => "output directory",
            Self::S3 { .. } => "output bucket",
        }
    }

    /// The local directory, if results are local.
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            Self::Dir(dir) => Some(dir),
            Self::S3 { .. } => None,
        }
    }
}

impl fmt::Display for OutputLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "{}", dir.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// Why `--output-dir` text is not a location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadLocation(String);

impl FromStr for OutputLocation {
    type Err = BadLocation;

    /// `s3://bucket[/prefix]` is a bucket; any other `scheme://` is refused
    /// (rather than becoming a local folder named `gs:`); the rest are paths.
    fn from_str(text: &str) -> Result<Self, BadLocation> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(Self::Dir(text.into()));
        };
        if !scheme.eq_ignore_ascii_case("s3") {
            return Err(BadLocation(format!(
                "unsupported output URL scheme `{scheme}://`: use a local path or s3://bucket/prefix"
            )));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = !bucket.is_empty()
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c));
        if !bucket_ok {
            return Err(BadLocation(format!(
                "`{text}` does not name a bucket: use s3://bucket/prefix (bucket names are lower-case letters, digits, `.`, `-`)"
            )));
        }
        Ok(Self::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }
}

impl From<PathBuf> for OutputLocation {
    fn from(dir: PathBuf) -> Self {
        Self::Dir(dir)
    }
}

impl From<&Path> for OutputLocation {
    fn from(dir: &Path) -> Self {
        Self::Dir(dir.to_path_buf())
    }
}

impl From<&PathBuf> for OutputLocation {
    fn from(dir: &PathBuf) -> Self {
        Self::Dir(dir.clone())
    }
}

/// One object's facts, from a listing.
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// Size in bytes.
    pub bytes: u64,
    /// Last modification.
    pub modified: SystemTime,
}

/// One listed object: its name, facts and, when asked for, its bytes.
pub(super) type Listed = (String, FileInfo, Option<Vec<u8>>);

/// The backend objects live in.
#[derive(Debug, Clone)]
pub(super) enum Blobs {
    Local(PathBuf),
    S3(S3Blobs),
}

impl Blobs {
    /// Opens the location and proves it writable (a probe object is put and
    /// removed), so a read-only directory or an unreachable bucket fails start-up.
    pub(super) fn open(location: &OutputLocation) -> io::Result<Self> {
        match location {
            OutputLocation::Dir(dir) => {
                std::fs::create_dir_all(dir)?;
                for entry in std::fs::read_dir(dir)?.flatten() {
                    if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
                probe_dir(dir)?;
                Ok(Self::Local(dir.clone()))
            }
            OutputLocation::S3 { bucket, prefix } => Ok(Self::S3(S3Blobs::open(bucket, prefix)?)),
        }
    }

    /// True when other servers may write here too (a bucket replicas share).
    pub(super) fn is_shared(&self) -> bool {
        matches!(self, Self::S3(_))
    }

    /// Stores `bytes` under `name`, replacing any object there (blocking).
    /// `owner` is kept with the object where the backend can (S3 metadata), so
    /// another replica can check who may read it.
    pub(super) fn put(&self, name: &str, bytes: &[u8], owner: Option<&str>) -> io::Result<()> {
        match self {
            Self::Local(dir) => write_atomic(dir, name, bytes),
            Self::S3(s3) => s3.put(name, bytes, owner),
        }
    }

    /// The object's bytes, `None` if there is none.
    pub(super) async fn get(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match self {
            Self::Local(dir) => not_found_is_none(tokio::fs::read(dir.join(name)).await),
            Self::S3(s3) => s3.get(name).await,
        }
    }

    /// [`Blobs::get`] for blocking callers.
    pub(super) fn get_blocking(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match self {
            Self::Local(dir) => not_found_is_none(std::fs::read(dir.join(name))),
            Self::S3(s3) => s3.get_blocking(name),
        }
    }

    /// The owner kept with an object by [`Blobs::put`] (S3 only: a local
    /// directory learns owners from its records).
    pub(super) async fn owner(&self, name: &str) -> Option<String> {
        match self {
            Self::Local(_) => None,
            Self::S3(s3) => s3.owner(name).await,
        }
    }

    /// Removes an object (blocking); a missing one is not an error.
    pub(super) fn delete(&self, name: &str) -> io::Result<()> {
        match self {
            Self::Local(dir) => match std::fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Self::S3(s3) => s3.delete(name),
        }
    }

    /// Every object directly in the location, with the bytes of those `read`
    /// picks (blocking). A local listing skips what is not a plain file.
    pub(super) fn list(&self, read: impl Fn(&str) -> bool) -> io::Result<Vec<Listed>> {
        match self {
            Self::Local(dir) => {
                let mut out = Vec::new();
                for entry in std::fs::read_dir(dir)?.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Some(meta) = entry.metadata().ok().filter(|m| m.is_file()) else {
                        continue;
                    };
                    let info = FileInfo {
                        bytes: meta.len(),
                        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    };
                    let bytes = read(&name)
                        .then(|| std::fs::read(entry.path()).ok())
                        .flatten();
                    out.push((name, info, bytes));
                }
                Ok(out)
            }
            Self::S3(s3) => s3.list(read),
        }
    }

    /// Bytes free for new results: the file system's for a directory,
    /// unlimited for a bucket (S3 has no "disk full"; quotas are the provider's).
    pub(super) fn free_bytes(&self) -> io::Result<u64> {
        match self {
            Self::Local(dir) => free_bytes(dir),
            Self::S3(_) => Ok(u64::MAX),
        }
    }

    /// The object under `name` if there is one, else `fresh` stored there;
    /// when two servers race, both end with the same bytes (blocking; S3 only,
    /// a directory's callers use their own file logic).
    pub(super) fn get_or_create(&self, name: &str, fresh: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Self::Local(dir) => Err(io::Error::other(format!(
                "get_or_create is for buckets, not {}",
                dir.display()
            ))),
            Self::S3(s3) => s3.get_or_create(name, fresh),
        }
    }
}

fn not_found_is_none(read: io::Result<Vec<u8>>) -> io::Result<Option<Vec<u8>>> {
    match read {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates, fsyncs and removes a probe file: a read-only or full directory fails here.
fn probe_dir(dir: &Path) -> io::Result<()> {
    let probe = dir.join(format!("{TEMP_PREFIX}probe-{}", uuid::Uuid::new_v4()));
    let written = (|| {
        let mut file = std::fs::File::create(&probe)?;
        file.write_all(b"probe")?;
        file.sync_all()
    })();
    let removed = std::fs::remove_file(&probe);
    written?;
    removed?;
    sync_dir(dir)
}

/// Writes `bytes` to `dir/name` via a fsynced temporary file in the same
/// directory, then fsyncs the directory so the rename is durable too.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temp = dir.join(format!("{TEMP_PREFIX}{}-{name}", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, dir.join(name))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
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

    #[test]
    fn parses_paths_and_bucket_urls() {
        let loc = |s: &str| s.parse::<OutputLocation>();
        assert_eq!(
            loc("./outputs"),
            Ok(OutputLocation::Dir("./outputs".into()))
        );
        let s3 = loc("s3://my-bucket/sd/results/").unwrap();
        assert_eq!(
            s3,
            OutputLocation::S3 {
                bucket: "my-bucket".into(),
                prefix: "sd/results".into()
            }
        );
        assert_eq!(s3.to_string(), "s3://my-bucket/sd/results");
        assert_eq!(loc("s3://b").unwrap().to_string(), "s3://b");
        assert!(loc("s3://").is_err());
        assert!(loc("s3://Bad_Bucket!/x").is_err());
        let gs = loc("gs://b/p").unwrap_err().to_string();
        assert!(gs.contains("gs://"), "{gs}");
    }
}
