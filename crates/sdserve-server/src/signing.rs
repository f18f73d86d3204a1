//! Expiring image links that need no credentials: OpenAI's `response_format:
//! url` hands out URLs that any HTTP client (a browser, `curl`, an `<img>` tag)
//! must be able to GET without the API key, as OpenAI's own do. Each link
//! carries its expiry and an HMAC-SHA256 over the image id and that expiry, so
//! it cannot be forged, extended or pointed at another image.
//!
//! The key is 32 random bytes kept in `<output-dir>/.sdserve-url-key` (mode
//! 0600), or beside the results in an `s3://` output, so links survive
//! restarts and every replica sharing the output accepts them.

use std::io::{self, Write};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::jobs::{ImageId, Store};

/// How long a signed link works, in seconds (OpenAI's links last an hour).
pub const SIGNED_LINK_TTL_SECS: u64 = 3600;

/// File name of the signing key in the output directory.
pub const KEY_FILE: &str = ".sdserve-url-key";

const KEY_LEN: usize = 32;

/// Why a signed link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The expiry has passed.
    #[error("the link expired")]
    Expired,
    /// The signature does not match the id and expiry.
    #[error("the link's signature is not valid")]
    BadSignature,
}

/// A new key: two v4 UUIDs, 244 bits from the OS's random source.
fn fresh_key() -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key
}

/// Signs and checks image links.
#[derive(Clone)]
pub struct UrlSigner {
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner(***)")
    }
}

impl UrlSigner {
    /// A signer with the given key.
    pub fn new(key: [u8; KEY_LEN]) -> Self {
        Self { key }
    }

    /// The key kept with the results: in the output directory, or in the
    /// bucket (created once; racing replicas agree on the first one written).
    pub fn for_store(store: &Store) -> io::Result<Self> {
        if let Some(dir) = store.local_dir() {
            return Self::load_or_create(dir);
        }
        let bytes = store.shared_secret(KEY_FILE, &fresh_key())?;
        let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}/{KEY_FILE} is not a {KEY_LEN}-byte key",
                    store.location()
                ),
            )
        })?;
        Ok(Self::new(key))
    }

    /// The key stored in `dir`, created (from the OS's random source) if absent.
    pub fn load_or_create(dir: &Path) -> io::Result<Self> {
        let path = dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} is not a {KEY_LEN}-byte key", path.display()),
                    )
                })?;
                Ok(Self::new(key))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = fresh_key();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                match options.open(&path) {
                    Ok(mut file) => {
                        file.write_all(&key)?;
                        file.sync_all()?;
                        Ok(Self::new(key))
                    }
                    // Another replica wrote it first: use theirs.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load_or_create(dir),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The MAC over a link's id, expiry and, when the link asks for another
    /// encoding than the stored PNG, that encoding's token (so a link cannot
    /// be re-pointed at another format either). Tokens are `[a-z0-9-]`, so
    /// the `:`-joined message is unambiguous.
    fn mac(&self, id: ImageId, expires: u64, format: Option<&str>) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        match format {
            None => mac.update(format!("{id}:{expires}").as_bytes()),
            Some(format) => mac.update(format!("{id}:{expires}:{format}").as_bytes()),
        }
        mac
    }

    /// The hex signature of a link to `id` valid until `expires` (Unix seconds).
    pub fn sign(&self, id: ImageId, expires: u64) -> String {
        self.sign_as(id, expires, None)
    }

    /// [`UrlSigner::sign`] for a link that serves the image as `format` (an
    /// `OutputEncoding` token; `None` for the stored PNG).
    pub fn sign_as(&self, id: ImageId, expires: u64, format: Option<&str>) -> String {
        hex::encode(self.mac(id, expires, format).finalize().into_bytes())
    }

    /// The path and query of a link to `id` that works until `now + ttl`.
    pub fn link(&self, id: ImageId, now: u64, ttl: u64) -> String {
        self.link_as(id, now, ttl, None)
    }

    /// [`UrlSigner::link`] serving the image as `format` (its `format` query
    /// parameter is covered by the signature).
    pub fn link_as(&self, id: ImageId, now: u64, ttl: u64, format: Option<&str>) -> String {
        let expires = now.saturating_add(ttl);
        let signature = self.sign_as(id, expires, format);
        match format {
            None => format!("/v1/images/files/{id}?expires={expires}&signature={signature}"),
            Some(format) => format!(
                "/v1/images/files/{id}?expires={expires}&format={format}&signature={signature}"
            ),
        }
    }

    /// Checks a link (constant-time comparison of the signature).
    pub fn verify(
        &self,
        id: ImageId,
        expires: u64,
        signature: &str,
        now: u64,
    ) -> Result<(), LinkError> {
        self.verify_as(id, expires, None, signature, now)
    }

    /// [`UrlSigner::verify`] for a link with a `format`.
    pub fn verify_as(
        &self,
        id: ImageId,
        expires: u64,
        format: Option<&str>,
        signature: &str,
        now: u64,
    ) -> Result<(), LinkError> {
        let given = hex::decode(signature).map_err(|_| LinkError::BadSignature)?;
        self.mac(id, expires, format)
            .verify_slice(&given)
            .map_err(|_| LinkError::BadSignature)?;
        if now > expires {
            return Err(LinkError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_only_for_their_image_and_time() {
        let signer = UrlSigner::new([7; KEY_LEN]);
        let (id, other) = (ImageId::new(), ImageId::new());
        let sig = signer.sign(id, 1000);
        assert_eq!(signer.verify(id, 1000, &sig, 999), Ok(()));
        assert_eq!(signer.verify(id, 1000, &sig, 1000), Ok(()));
        assert_eq!(signer.verify(id, 1000, &sig, 1001), Err(LinkError::Expired));
        assert_eq!(
            signer.verify(id, 2000, &sig, 999),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            signer.verify(other, 1000, &sig, 999),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            signer.verify(id, 1000, "zz", 999),
            Err(LinkError::BadSignature)
        );
        let other_key = UrlSigner::new([8; KEY_LEN]);
        assert_eq!(
            other_key.verify(id, 1000, &sig, 999),
            Err(LinkError::BadSignature)
        );
        let link = signer.link(id, 100, 50);
        assert!(link.starts_with(&format!("/v1/images/files/{id}?expires=150&signature=")));
        // A format is signed too: the same link cannot be re-pointed at another.
        let jpeg = signer.sign_as(id, 1000, Some("jpeg-80"));
        assert_ne!(jpeg, sig);
        assert_eq!(
            signer.verify_as(id, 1000, Some("jpeg-80"), &jpeg, 999),
            Ok(())
        );
        for (format, signature) in [
            (Some("jpeg-90"), &jpeg),
            (None, &jpeg),
            (Some("webp"), &sig),
        ] {
            assert_eq!(
                signer.verify_as(id, 1000, format, signature, 999),
                Err(LinkError::BadSignature),
                "{format:?}"
            );
        }
        let link = signer.link_as(id, 100, 50, Some("webp"));
        assert!(
            link.starts_with(&format!(
                "/v1/images/files/{id}?expires=150&format=webp&signature="
            )),
            "{link}"
        );
    }

    #[test]
    fn the_key_persists_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = UrlSigner::load_or_create(dir.path()).unwrap();
        let again = UrlSigner::load_or_create(dir.path()).unwrap();
        let id = ImageId::new();
        assert_eq!(first.sign(id, 5), again.sign(id, 5));
        let fresh = tempfile::tempdir().unwrap();
        let other = UrlSigner::load_or_create(fresh.path()).unwrap();
        assert_ne!(first.sign(id, 5), other.sign(id, 5));
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(UrlSigner::load_or_create(dir.path()).is_err());
    }
}
