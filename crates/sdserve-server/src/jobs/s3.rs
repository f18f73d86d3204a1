//! Results in an S3-compatible bucket (`--output-dir s3://bucket/prefix`), so
//! every replica serves every finished job and a replaced pod loses nothing.
//!
//! Client: `object_store` (Apache Arrow's, built for AWS S3, MinIO, R2, Ceph)
//! configured from the standard environment: `AWS_ENDPOINT_URL`,
//! `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` (or the instance's or web
//! identity's credentials), `AWS_ALLOW_HTTP`; an `http://` endpoint allows
//! plain HTTP by itself (MinIO, moto in tests).
//!
//! Every request runs on one small runtime of its own, whoever calls: worker
//! threads (no runtime) block on a channel, async handlers await a join handle.
//! So a caller's runtime (a test's single-threaded one, or a handler's) never
//! has to drive this client's connections, and the runtime, being static, is
//! never dropped inside async code.
//!
//! A PUT of a whole object is atomic in S3, so no temporary names. An image's
//! owner travels as object metadata (`x-amz-meta-sdserve-owner`, hex of the
//! client label) so another replica can check it without the job's record.

use std::future::Future;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};
use tokio::runtime::Runtime;

use super::blobs::{FileInfo, Listed};

/// Metadata key of an image's owner.
const OWNER_KEY: &str = "sdserve-owner";
/// Records read at once while listing.
const READ_CONCURRENCY: usize = 16;

/// The runtime every S3 request runs on (see the module doc).
fn io_runtime() -> io::Result<&'static Runtime> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("sdserve-s3")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| io::Error::other(format!("cannot start the S3 client's runtime: {e}")))
}

/// A bucket and key prefix holding results.
#[derive(Debug, Clone)]
pub struct S3Blobs {
    client: Arc<AmazonS3>,
    prefix: Path,
    runtime: &'static Runtime,
}

impl S3Blobs {
    /// Connects with the environment's settings and proves the bucket
    /// writable: a probe object is put and deleted.
    pub fn open(bucket: &str, prefix: &str) -> io::Result<Self> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            io::Error::other(format!("{what} bucket `{bucket}`: {e}"))
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // Fail start-up within about half a minute when the endpoint is
            // down, rather than retrying for the default three minutes.
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        let endpoint = [AmazonS3ConfigKey::S3Endpoint, AmazonS3ConfigKey::Endpoint]
            .iter()
            .find_map(|key| builder.get_config_value(key));
        let allow_http_set = std::env::var_os("AWS_ALLOW_HTTP").is_some();
        if !allow_http_set && endpoint.is_some_and(|e| e.starts_with("http://")) {
            builder = builder.with_allow_http(true);
        }
        let client = builder
            .build()
            .map_err(|e| fail("invalid S3 settings for", &e))?;
        let prefix = Path::parse(prefix).map_err(|e| fail("invalid key prefix in", &e))?;
        let blobs = Self {
            client: Arc::new(client),
            prefix,
            runtime: io_runtime()?,
        };
        let probe = format!(".sdserve-probe-{}", uuid::Uuid::new_v4());
        blobs
            .put(&probe, b"probe", None)
            .map_err(|e| fail("cannot write to", &e))?;
        blobs
            .delete(&probe)
            .map_err(|e| fail("cannot delete from", &e))?;
        Ok(blobs)
    }

    fn path(&self, name: &str) -> Path {
        self.prefix.clone().join(name)
    }

    /// Runs `work` on the S3 runtime and blocks this thread until it ends.
    /// Blocking callers only (worker threads, `spawn_blocking`, start-up).
    fn block<T: Send + 'static>(
        &self,
        work: impl Future<Output = io::Result<T>> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv()
            .map_err(|_| io::Error::other("the S3 request was dropped"))?
    }

    /// Runs `work` on the S3 runtime and awaits it from any async context.
    async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = io::Result<T>> + Send + 'static,
    ) -> io::Result<T> {
        self.runtime
            .spawn(work)
            .await
            .map_err(|e| io::Error::other(format!("the S3 request failed: {e}")))?
    }

    /// Puts one whole object (atomic in S3), with its owner as metadata.
    pub fn put(&self, name: &str, bytes: &[u8], owner: Option<&str>) -> io::Result<()> {
        let (client, path) = (self.client.clone(), self.path(name));
        let mut attributes = Attributes::new();
        if let Some(owner) = owner {
            attributes.insert(
                Attribute::Metadata(OWNER_KEY.into()),
                hex::encode(owner).into(),
            );
        }
        let payload = PutPayload::from(bytes.to_vec());
        self.block(async move {
            let options = PutOptions {
                attributes,
                ..PutOptions::default()
            };
            client
                .put_opts(&path, payload, options)
                .await
                .map_err(to_io)?;
            Ok(())
        })
    }

    /// The object's bytes, `None` if there is none.
    pub async fn get(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        self.run(get(self.client.clone(), self.path(name))).await
    }

    /// [`S3Blobs::get`], blocking.
    pub fn get_blocking(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        self.block(get(self.client.clone(), self.path(name)))
    }

    /// The owner [`S3Blobs::put`] kept with the object (a HEAD request).
    pub async fn owner(&self, name: &str) -> Option<String> {
        let (client, path) = (self.client.clone(), self.path(name));
        let head = self.run(async move {
            let options = GetOptions {
                head: true,
                ..GetOptions::default()
            };
            client.get_opts(&path, options).await.map_err(to_io)
        });
        let result = head.await.ok()?;
        let hex = result
            .attributes
            .get(&Attribute::Metadata(OWNER_KEY.into()))?;
        String::from_utf8(hex::decode(hex.as_ref()).ok()?).ok()
    }

    /// Deletes an object; S3 answers a missing one like any other delete.
    pub fn delete(&self, name: &str) -> io::Result<()> {
        let (client, path) = (self.client.clone(), self.path(name));
        self.block(async move {
            match client.delete(&path).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                other => other.map_err(to_io),
            }
        })
    }

    /// Objects directly under the prefix (not in deeper "folders"), reading
    /// those `read` picks, [`READ_CONCURRENCY`] at a time.
    pub fn list(&self, read: impl Fn(&str) -> bool) -> io::Result<Vec<Listed>> {
        let (client, prefix) = (self.client.clone(), self.prefix.clone());
        let listing = self.block(async move {
            let prefix = (!prefix.as_ref().is_empty()).then_some(&prefix);
            client.list_with_delimiter(prefix).await.map_err(to_io)
        })?;
        let objects: Vec<(String, FileInfo, bool)> = listing
            .objects
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.to_string();
                let millis = u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0);
                let info = FileInfo {
                    bytes: meta.size,
                    modified: SystemTime::UNIX_EPOCH + Duration::from_millis(millis),
                };
                let wanted = read(&name);
                Some((name, info, wanted))
            })
            .collect();
        let client = self.client.clone();
        let paths: Vec<Path> = objects.iter().map(|(name, ..)| self.path(name)).collect();
        let wanted: Vec<bool> = objects.iter().map(|(.., w)| *w).collect();
        let contents = self.block(async move {
            stream::iter(paths.into_iter().zip(wanted))
                .map(|(path, wanted)| {
                    let client = client.clone();
                    async move {
                        if !wanted {
                            return Ok(None);
                        }
                        // One unreadable record must not hide the others.
                        Ok::<_, io::Error>(get(client, path).await.ok().flatten())
                    }
                })
                .buffered(READ_CONCURRENCY)
                .try_collect::<Vec<_>>()
                .await
        })?;
        Ok(objects
            .into_iter()
            .zip(contents)
            .map(|((name, info, _), bytes)| (name, info, bytes))
            .collect())
    }

    /// The object under `name`, or `fresh` put there only if none is (S3's
    /// conditional create); a store without conditional puts falls back to
    /// put-then-read, where the last writer wins and every reader agrees after.
    pub fn get_or_create(&self, name: &str, fresh: &[u8]) -> io::Result<Vec<u8>> {
        if let Some(bytes) = self.get_blocking(name)? {
            return Ok(bytes);
        }
        let (client, path) = (self.client.clone(), self.path(name));
        let payload = PutPayload::from(fresh.to_vec());
        self.block(async move {
            let create = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match client.put_opts(&path, payload.clone(), create).await {
                Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(object_store::Error::NotImplemented { .. }) => {
                    client.put(&path, payload).await.map_err(to_io)?;
                }
                Err(e) => return Err(to_io(e)),
            }
            get(client, path)
                .await?
                .ok_or_else(|| io::Error::other("the object vanished after it was written"))
        })
    }
}

async fn get(client: Arc<AmazonS3>, path: Path) -> io::Result<Option<Vec<u8>>> {
    match client.get(&path).await {
        Ok(result) => Ok(Some(result.bytes().await.map_err(to_io)?.to_vec())),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(to_io(e)),
    }
}

fn to_io(e: object_store::Error) -> io::Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}
