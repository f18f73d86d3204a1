//! `sdserve serve`: bind the port, serve `/livez` at once, load the default
//! model on its own thread (then `/readyz` turns ready; `models.rs` builds the
//! catalog of `--models-dir` and the loader for the others), and serve the
//! HTTP APIs until SIGTERM or Ctrl-C, which drains queued and running jobs before exiting: 0 when every
//! job finished, [`DRAIN_TIMED_OUT_EXIT`] when the drain timeout cancelled some.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sdserve_engine::{DeviceSet, EngineOptions, LoraDir, ModelInfo, Precision, VaeTiling};
use sdserve_server::config::{
    self, AuthConfig, BasicCredential, ConnectionLimits, Limits, ServerConfig,
};
use sdserve_server::jobs::OutputLocation;
use sdserve_server::models::Models;
use sdserve_server::App;

/// Exit status when the drain timeout ran out and jobs were cancelled.
pub const DRAIN_TIMED_OUT_EXIT: u8 = 3;

/// Served when `--model` is not given: small and fast (1 to 4 steps, guidance off).
pub const DEFAULT_MODEL: &str = "stabilityai/sd-turbo";

/// Flags of `sdserve serve`. Each can also be given as an `SDSERVE_*`
/// environment variable (`--max-steps` as `SDSERVE_MAX_STEPS`), as containers
/// and Kubernetes configure a process; a flag on the command line wins.
/// Secrets (keys, credentials) from the environment are not echoed by `--help`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The default model: a name in --models-dir, a diffusers model folder, a
    /// single-file `.safetensors` checkpoint (SD 1.x/2.x, SDXL; LDM/SGM layout)
    /// or a Hugging Face repo id (`org/name`, downloaded once into the HF cache).
    /// Default: the first model of --models-dir, else stabilityai/sd-turbo.
    #[arg(long, env = "SDSERVE_MODEL")]
    pub model: Option<String>,
    /// Folder of models to list and switch between: diffusers folders (with
    /// model_index.json) and *.safetensors checkpoints, recursively (A1111's
    /// `Stable-diffusion/` layout too).
    #[arg(long, value_name = "DIR", env = "SDSERVE_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Models kept loaded at once; the least recently used is unloaded before
    /// another loads.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        env = "SDSERVE_MAX_LOADED_MODELS"
    )]
    pub max_loaded_models: usize,
    /// Address to bind; use 0.0.0.0 to accept connections from other machines.
    #[arg(long, default_value = "127.0.0.1", env = "SDSERVE_HOST")]
    pub host: IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 7860, env = "SDSERVE_PORT")]
    pub port: u16,
    /// Jobs that may wait at once; more get 429 with Retry-After.
    #[arg(long, default_value_t = config::DEFAULT_QUEUE_SIZE, env = "SDSERVE_QUEUE_SIZE")]
    pub queue_size: usize,
    /// Where PNGs and job records are written (kept across restarts): a local
    /// folder, or s3://bucket/prefix shared by every replica (endpoint, region
    /// and credentials from the AWS_* environment).
    #[arg(
        long,
        value_name = "DIR|s3://BUCKET/PREFIX",
        // FromStr: s3:// URLs become buckets, other schemes are refused.
        value_parser = |text: &str| text.parse::<OutputLocation>(),
        default_value = "./outputs",
        env = "SDSERVE_OUTPUT_DIR"
    )]
    pub output_dir: OutputLocation,
    /// This server's name in the job records it writes to an s3:// output;
    /// after a restart it re-runs only the unfinished jobs under its own name.
    /// Default: the host name (a pod's name). Keep it stable and unique.
    #[arg(long, value_name = "NAME", env = "SDSERVE_REPLICA_NAME")]
    pub replica_name: Option<String>,
    /// Where the models' sha256 hashes (A1111's model hash) are cached; default
    /// --output-dir (a temporary folder when that is s3://). A folder every
    /// replica shares and keeps (the models' volume) spares each new pod
    /// hashing its model again before it is ready.
    #[arg(long, value_name = "DIR", env = "SDSERVE_HASH_CACHE_DIR")]
    pub hash_cache_dir: Option<PathBuf>,
    /// Folder of LoRA `.safetensors` files; a request names one by its file stem
    /// (native `loras`, A1111's `<lora:name:weight>` prompt tags).
    #[arg(long, value_name = "DIR", env = "SDSERVE_LORA_DIR")]
    pub lora_dir: Option<PathBuf>,
    /// The opt-in trades of exactness for speed.
    #[command(flatten)]
    pub trades: super::SpeedTrades,
    /// Accepted API key (`Authorization: Bearer KEY`); repeatable. With any key or
    /// user, every route but /livez and /readyz requires one.
    #[arg(
        long = "api-key",
        value_name = "KEY",
        env = "SDSERVE_API_KEY",
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Operator key: accepted like `--api-key`, and sees every caller's jobs and
    /// images (each API key or user otherwise sees only its own); repeatable.
    #[arg(
        long = "admin-key",
        value_name = "KEY",
        env = "SDSERVE_ADMIN_KEY",
        hide_env_values = true
    )]
    pub admin_keys: Vec<String>,
    /// Accepted HTTP Basic credential, as AUTOMATIC1111's `--api-auth`; repeatable.
    #[arg(
        long = "api-auth",
        value_name = "USER:PASS",
        env = "SDSERVE_API_AUTH",
        hide_env_values = true
    )]
    pub api_auth: Vec<BasicCredential>,
    /// Seconds SIGTERM waits for queued and running jobs before cancelling them;
    /// the process then exits within a few seconds whatever clients do (exit 0 if
    /// every job finished, 3 if the drain had to cancel jobs).
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_DRAIN_TIMEOUT_SECS, env = "SDSERVE_DRAIN_TIMEOUT")]
    pub drain_timeout: u64,
    /// Open connections at most; further ones are closed at once.
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONNECTIONS, env = "SDSERVE_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (and, on a kept-alive
    /// connection, to start the next request).
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_HEADER_READ_TIMEOUT_SECS, env = "SDSERVE_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: u64,
    /// Seconds a client has to send a whole request body (408 after).
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_BODY_READ_TIMEOUT_SECS, env = "SDSERVE_BODY_READ_TIMEOUT")]
    pub body_read_timeout: u64,
    /// Seconds a connection may sit with no request in flight before it is closed.
    /// Requests in flight (a long txt2img, an SSE stream) are never cut.
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_KEEP_ALIVE_TIMEOUT_SECS, env = "SDSERVE_KEEP_ALIVE_TIMEOUT")]
    pub keep_alive_timeout: u64,
    /// Largest image width.
    #[arg(long, default_value_t = config::DEFAULT_MAX_WIDTH, env = "SDSERVE_MAX_WIDTH")]
    pub max_width: usize,
    /// Largest image height.
    #[arg(long, default_value_t = config::DEFAULT_MAX_HEIGHT, env = "SDSERVE_MAX_HEIGHT")]
    pub max_height: usize,
    /// Largest width × height of one image.
    #[arg(long, default_value_t = config::DEFAULT_MAX_PIXELS, env = "SDSERVE_MAX_PIXELS")]
    pub max_pixels: usize,
    /// Most denoising steps.
    #[arg(long, default_value_t = config::DEFAULT_MAX_STEPS, env = "SDSERVE_MAX_STEPS")]
    pub max_steps: usize,
    /// Most images per request (and per UNet batch).
    #[arg(long, default_value_t = config::DEFAULT_MAX_BATCH, env = "SDSERVE_MAX_BATCH")]
    pub max_batch: usize,
    /// Longest prompt or negative prompt, in characters.
    #[arg(long, default_value_t = config::DEFAULT_MAX_PROMPT_CHARS, env = "SDSERVE_MAX_PROMPT_CHARS")]
    pub max_prompt_chars: usize,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = config::DEFAULT_MAX_BODY_BYTES, env = "SDSERVE_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,
    /// Seconds finished results (images and job records) are kept; 0 keeps them forever.
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_RESULT_TTL_SECS, env = "SDSERVE_RESULT_TTL")]
    pub result_ttl: u64,
    /// Most bytes of finished results kept in --output-dir, oldest removed first; 0 for no cap.
    #[arg(long, value_name = "BYTES", default_value_t = config::DEFAULT_MAX_OUTPUT_BYTES, env = "SDSERVE_MAX_OUTPUT_BYTES")]
    pub max_output_bytes: u64,
    /// Below this many free bytes on --output-dir's disk, /readyz says 503 and new
    /// jobs get 507; 0 turns the check off.
    #[arg(long, value_name = "BYTES", default_value_t = config::DEFAULT_MIN_FREE_DISK_BYTES, env = "SDSERVE_MIN_FREE_DISK")]
    pub min_free_disk: u64,
    /// VAE decode in overlapping tiles as diffusers' enable_vae_tiling(): on
    /// (images larger than one VAE tile), off, or auto (when memory requires).
    #[arg(
        long,
        value_name = "auto|on|off",
        default_value = "auto",
        env = "SDSERVE_VAE_TILING"
    )]
    pub vae_tiling: VaeTiling,
    /// Most memory the server may plan for (e.g. 8G, 8GiB, 512M, bytes); the
    /// container's cgroup limit and available memory lower it further.
    /// Requests beyond the plan get 413.
    #[arg(long, value_name = "SIZE", value_parser = super::parse_memory_limit, env = "SDSERVE_MEMORY_LIMIT")]
    pub memory_limit: Option<u64>,
    /// Folder of textual-inversion embeddings (`.safetensors`, A1111's
    /// layouts), used by file name in prompts; listed by /sdapi/v1/embeddings.
    #[arg(long, value_name = "DIR", env = "SDSERVE_EMBEDDINGS_DIR")]
    pub embeddings_dir: Option<PathBuf>,
    /// Precision of weights and activations: auto (f16 on CUDA, f32 on the
    /// CPU), f32, f16 or bf16.
    #[arg(
        long,
        value_name = "auto|f32|f16|bf16",
        default_value = "auto",
        env = "SDSERVE_DTYPE"
    )]
    pub dtype: Precision,
    /// Where to run: auto (the first CUDA GPU when built with `cuda` and one is
    /// present, else the CPU), cpu, cuda, cuda:N (after CUDA_VISIBLE_DEVICES,
    /// which also selects MIG instances: MIG-<uuid>), a list cuda:0,cuda:1, or
    /// all (every CUDA device, else the CPU). Several devices: one engine and
    /// worker each, fed from the one queue; each device has its own memory plan
    /// and --max-loaded-models.
    #[arg(
        long,
        value_name = "auto|cpu|cuda|cuda:N|cuda:0,cuda:1|all",
        default_value = "auto",
        env = "SDSERVE_DEVICE"
    )]
    pub device: DeviceSet,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<ServerConfig> {
        let mut config = ServerConfig::new(self.output_dir.clone());
        if let Some(name) = &self.replica_name {
            config.replica_name = name.clone();
        }
        config.lora_dir = self
            .lora_dir
            .as_deref()
            .map(|dir| {
                LoraDir::open(dir)
                    .map(std::sync::Arc::new)
                    .with_context(|| format!("--lora-dir {}", dir.display()))
            })
            .transpose()?;
        config.queue_size = self.queue_size;
        config.auth = AuthConfig {
            api_keys: self.api_keys.clone(),
            basic: self.api_auth.clone(),
            admin_keys: self.admin_keys.clone(),
        };
        config.limits = Limits {
            max_width: self.max_width,
            max_height: self.max_height,
            max_pixels: self.max_pixels,
            max_steps: self.max_steps,
            max_batch: self.max_batch,
            max_prompt_chars: self.max_prompt_chars,
            max_body_bytes: self.max_body_bytes,
        };
        config.max_batch_images = self.max_batch.max(1);
        config.drain_timeout = Duration::from_secs(self.drain_timeout);
        config.connections = ConnectionLimits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            body_read_timeout: Duration::from_secs(self.body_read_timeout),
            keep_alive_timeout: Duration::from_secs(self.keep_alive_timeout),
            ..ConnectionLimits::default()
        };
        config.result_ttl = Duration::from_secs(self.result_ttl);
        config.max_output_bytes = self.max_output_bytes;
        config.min_free_disk = self.min_free_disk;
        Ok(config)
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    for (flag, value) in [
        ("--queue-size", args.queue_size),
        ("--max-width", args.max_width),
        ("--max-height", args.max_height),
        ("--max-pixels", args.max_pixels),
        ("--max-steps", args.max_steps),
        ("--max-batch", args.max_batch),
        ("--max-prompt-chars", args.max_prompt_chars),
        ("--max-loaded-models", args.max_loaded_models),
        ("--max-body-bytes", args.max_body_bytes),
        ("--max-connections", args.max_connections),
        ("--header-read-timeout", args.header_read_timeout as usize),
        ("--body-read-timeout", args.body_read_timeout as usize),
        ("--keep-alive-timeout", args.keep_alive_timeout as usize),
    ] {
        anyhow::ensure!(value > 0, "{flag} must be at least 1");
    }
    let app = App::new(args.config()?)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sdserve-http")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(app, args, started))
}

async fn serve(app: App, args: ServeArgs, started: Instant) -> anyhow::Result<ExitCode> {
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let auth = if args.api_keys.is_empty() && args.api_auth.is_empty() && args.admin_keys.is_empty()
    {
        "off"
    } else {
        "on"
    };
    tracing::info!(%addr, auth, output_dir = %args.output_dir, "listening; /livez is up, /readyz waits for the model");

    let options = EngineOptions {
        vae_tiling: args.vae_tiling,
        memory_limit: args.memory_limit,
        dtype: args.dtype,
        device: Default::default(),
        embeddings_dir: args.embeddings_dir.clone(),
        lora_dir: args.lora_dir.clone(),
        tiny_vae: args.trades.tiny_vae.clone(),
        fast_decode: args.trades.fast_decode,
        step_cache: args.trades.step_cache.map(|n| n as usize),
    };
    let models = super::models::models(
        args.models_dir.as_deref(),
        args.model.as_deref(),
        DEFAULT_MODEL,
        &hash_cache_dir(&args),
        args.max_loaded_models,
        options,
        &args.device,
    )?;
    let failed = spawn_loader(app.clone(), models, started)?;
    let load_failure = async move {
        match failed.await {
            Ok(error) => error,
            // The loader succeeded and dropped its sender: never resolve.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = app.serve(listener, shutdown_signal()) => {
            let report = served.context("serving HTTP")?;
            if report.timed_out {
                tracing::warn!(cancelled_jobs = report.cancelled_jobs, "drain timed out; exiting");
                Ok(ExitCode::from(DRAIN_TIMED_OUT_EXIT))
            } else {
                tracing::info!("drained; exiting");
                Ok(ExitCode::SUCCESS)
            }
        }
        error = load_failure => Err(error),
    }
}

/// Loads the default model on its own thread, then installs the models; the
/// receiver gets the error if that fails.
/// `--hash-cache-dir`, else the output folder, else (an s3:// output) a
/// local temporary folder: the cache is a local file, never in the bucket.
fn hash_cache_dir(args: &ServeArgs) -> PathBuf {
    match (&args.hash_cache_dir, args.output_dir.local_dir()) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => dir.to_path_buf(),
        (None, None) => std::env::temp_dir().join("sdserve-hash-cache"),
    }
}

fn spawn_loader(
    app: App,
    models: Models,
    started: Instant,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Error>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sdserve-load".into())
        .spawn(move || {
            let load_start = Instant::now();
            let loaded = load_default(&models).and_then(|info| {
                app.install_models(Arc::new(models))?;
                Ok(info)
            });
            match loaded {
                Ok(info) => tracing::info!(
                    model = %info.name,
                    native = %format!("{}x{}", info.native_width, info.native_height),
                    load_secs = format!("{:.2}", load_start.elapsed().as_secs_f64()),
                    startup_secs = format!("{:.2}", started.elapsed().as_secs_f64()),
                    "model loaded; ready"
                ),
                Err(error) => {
                    let _ = tx.send(error);
                }
            }
        })
        .context("starting the model loader thread")?;
    Ok(rx)
}

/// Loads the default model on every device (where it stays until evicted).
fn load_default(models: &Models) -> anyhow::Result<ModelInfo> {
    let default = models
        .default_model()
        .context("the default model is not in the catalog")?;
    let name = default.entry.source.clone();
    models
        .load_default_everywhere()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("loading model {name}"))
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C: draining"),
        _ = terminate => tracing::info!("SIGTERM: draining"),
    }
}

#[cfg(test)]
mod tests {
    use super::ServeArgs;
    use clap::Args;

    /// Every flag, present and future, has its variable, named after the flag,
    /// so a deployment can set any of them without a command line.
    #[test]
    fn every_flag_has_an_sdserve_variable_named_after_it() {
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let mut checked = 0;
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let expected = format!("SDSERVE_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(expected.as_str()),
                "--{long}"
            );
            checked += 1;
        }
        assert!(checked >= 30, "only {checked} flags seen");
    }

    #[test]
    fn help_names_the_variables_but_not_secret_values() {
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let help = command.clone().render_long_help().to_string();
        assert!(help.contains("[env: SDSERVE_PORT="), "{help}");
        assert!(help.contains("[env: SDSERVE_API_KEY]"), "{help}");
    }
}
