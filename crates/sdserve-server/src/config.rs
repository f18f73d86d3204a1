//! Everything that configures a server, as plain data with sane defaults, so the
//! binary maps its flags onto it and tests build one in a line.

use std::str::FromStr;
use std::time::Duration;

use crate::jobs::OutputLocation;

/// Default `--max-width`.
pub const DEFAULT_MAX_WIDTH: usize = 2048;
/// Default `--max-height`.
pub const DEFAULT_MAX_HEIGHT: usize = 2048;
/// Default `--max-pixels`: 1536², above SDXL's 1024² and the 1024×1536 portraits people ask for.
pub const DEFAULT_MAX_PIXELS: usize = 1536 * 1536;
/// Default `--max-steps`.
pub const DEFAULT_MAX_STEPS: usize = 150;
/// Default `--max-batch`.
pub const DEFAULT_MAX_BATCH: usize = 8;
/// Default `--max-prompt-chars`: far beyond CLIP's 77 tokens even with chunking.
pub const DEFAULT_MAX_PROMPT_CHARS: usize = 8192;
/// Default `--max-body-bytes`: room for a 2048² PNG in base64 (`/sdapi/v1/png-info`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Default `--queue-size`.
pub const DEFAULT_QUEUE_SIZE: usize = 64;
/// Default `--drain-timeout`, in seconds.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 120;
/// Default `--result-ttl`, in seconds: 7 days, long enough to fetch a result
/// after a weekend, short enough that a small disk does not fill.
pub const DEFAULT_RESULT_TTL_SECS: u64 = 7 * 24 * 3600;
/// Default `--max-output-bytes`: 10 GiB of results (about 25,000 512² PNGs);
/// past it the oldest results go first.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// Default `--min-free-disk`: below 1 GiB free on the output directory's file
/// system, `/readyz` says 503 and new jobs get 507 (a fixed size, not a
/// percentage, so it means the same on a 20 GiB and a 2 TiB disk).
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 1024 * 1024 * 1024;
/// How often retention runs (and once at start).
pub const DEFAULT_SWEEP_INTERVAL_SECS: u64 = 60;

/// Default `--max-connections`: well under the usual 1024 file descriptors.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default `--header-read-timeout`, in seconds.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;
/// Default `--body-read-timeout`, in seconds: a 16 MiB body at ~2.5 Mbit/s.
pub const DEFAULT_BODY_READ_TIMEOUT_SECS: u64 = 60;
/// Default `--keep-alive-timeout`, in seconds (as uvicorn and Node).
pub const DEFAULT_KEEP_ALIVE_TIMEOUT_SECS: u64 = 5;
/// How long open connections get to finish after the drain before they are closed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Limits on connections, so slow or idle clients cannot hold the server.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionLimits {
    /// Open connections at most; more are closed at once (`--max-connections`).
    pub max_connections: usize,
    /// Time to receive a request's headers, and to wait for the first byte
    /// of the next request on a kept-alive connection (`--header-read-timeout`).
    pub header_read_timeout: Duration,
    /// Time to receive a whole request body (`--body-read-timeout`).
    pub body_read_timeout: Duration,
    /// A connection with no request in flight and no traffic for this long is
    /// closed (`--keep-alive-timeout`).
    pub keep_alive_timeout: Duration,
    /// After the drain, how long open connections may take to finish.
    pub shutdown_grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            body_read_timeout: Duration::from_secs(DEFAULT_BODY_READ_TIMEOUT_SECS),
            keep_alive_timeout: Duration::from_secs(DEFAULT_KEEP_ALIVE_TIMEOUT_SECS),
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// Request limits enforced by the validation gate (each has a `serve` flag).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest image width in pixels.
    pub max_width: usize,
    /// Largest image height in pixels.
    pub max_height: usize,
    /// Largest width × height of one image.
    pub max_pixels: usize,
    /// Most denoising steps.
    pub max_steps: usize,
    /// Most images per request (A1111: `batch_size × n_iter`; OpenAI: `n`).
    pub max_batch: usize,
    /// Longest prompt (and negative prompt), in characters.
    pub max_prompt_chars: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_width: DEFAULT_MAX_WIDTH,
            max_height: DEFAULT_MAX_HEIGHT,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_steps: DEFAULT_MAX_STEPS,
            max_batch: DEFAULT_MAX_BATCH,
            max_prompt_chars: DEFAULT_MAX_PROMPT_CHARS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// A `USER:PASS` pair for A1111-style HTTP Basic auth.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredential {
    /// User name (no `:`).
    pub user: String,
    /// Password (may contain `:`).
    pub password: String,
}

impl std::fmt::Debug for BasicCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicCredential({}:***)", self.user)
    }
}

/// A `--api-auth` value that is not `USER:PASS`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected USER:PASS with a non-empty user and password")]
pub struct BadCredential;

impl FromStr for BasicCredential {
    type Err = BadCredential;
    fn from_str(s: &str) -> Result<Self, BadCredential> {
        match s.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(Self {
                user: user.to_string(),
                password: password.to_string(),
            }),
            _ => Err(BadCredential),
        }
    }
}

/// Who may call the API; when every list is empty, everyone may. Each key or
/// user sees only its own jobs and images; an admin key sees all of them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// Accepted `Authorization: Bearer` keys.
    pub api_keys: Vec<String>,
    /// Accepted HTTP Basic credentials.
    pub basic: Vec<BasicCredential>,
    /// Operator keys (`--admin-key`): accepted like API keys, and see every job.
    pub admin_keys: Vec<String>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("api_keys", &self.api_keys.len())
            .field("basic", &self.basic)
            .field("admin_keys", &self.admin_keys.len())
            .finish()
    }
}

impl AuthConfig {
    /// True when any credential is configured, so requests must carry one.
    pub fn enabled(&self) -> bool {
        !self.api_keys.is_empty() || !self.basic.is_empty() || !self.admin_keys.is_empty()
    }
}

/// The whole server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Jobs that may wait at once; more get 429 (`--queue-size`).
    pub queue_size: usize,
    /// Where PNGs and job records go (`--output-dir`): a directory, or an
    /// `s3://bucket/prefix` every replica shares.
    pub output_dir: OutputLocation,
    /// This server's name in the records it writes to a shared bucket
    /// (`--replica-name`); defaults to the host name.
    pub replica_name: String,
    /// Credentials (`--api-key`, `--api-auth`).
    pub auth: AuthConfig,
    /// Request limits.
    pub limits: Limits,
    /// Images one UNet batch may hold (defaults to `limits.max_batch`).
    pub max_batch_images: usize,
    /// How long finished jobs stay in memory; their records stay on disk.
    pub finished_ttl: Duration,
    /// How long SIGTERM waits for queued and running jobs (`--drain-timeout`).
    pub drain_timeout: Duration,
    /// Connection limits and timeouts.
    pub connections: ConnectionLimits,
    /// How long finished results (images and record) are kept on disk; zero
    /// keeps them forever (`--result-ttl`).
    pub result_ttl: Duration,
    /// Most bytes of finished results on disk, oldest removed first; zero for no
    /// cap (`--max-output-bytes`).
    pub max_output_bytes: u64,
    /// Free bytes the output directory's file system must keep, else not ready
    /// and new jobs refused with 507; zero turns the check off (`--min-free-disk`).
    pub min_free_disk: u64,
    /// How often retention runs.
    pub sweep_interval: Duration,
    /// `--lora-dir`: the LoRAs the listings show (the engines resolve names
    /// in the same folder, through their options).
    pub lora_dir: Option<std::sync::Arc<crate::engine_api::LoraDir>>,
}

impl ServerConfig {
    /// Defaults with results under `output_dir`.
    pub fn new(output_dir: impl Into<OutputLocation>) -> Self {
        let limits = Limits::default();
        Self {
            queue_size: DEFAULT_QUEUE_SIZE,
            output_dir: output_dir.into(),
            replica_name: crate::jobs::store::default_replica_name(),
            auth: AuthConfig::default(),
            max_batch_images: limits.max_batch,
            limits,
            finished_ttl: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(DEFAULT_DRAIN_TIMEOUT_SECS),
            connections: ConnectionLimits::default(),
            result_ttl: Duration::from_secs(DEFAULT_RESULT_TTL_SECS),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            min_free_disk: DEFAULT_MIN_FREE_DISK_BYTES,
            sweep_interval: Duration::from_secs(DEFAULT_SWEEP_INTERVAL_SECS),
            lora_dir: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_basic_credentials() {
        let c: BasicCredential = "ann:se:cret".parse().unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("ann", "se:cret"));
        assert!("ann".parse::<BasicCredential>().is_err());
        assert!(":pw".parse::<BasicCredential>().is_err());
        assert!("ann:".parse::<BasicCredential>().is_err());
        assert!(!format!("{c:?}").contains("se:cret"));
    }
}
