//! Building and running a server: [`App::new`] prepares the output directory
//! (proved writable), metrics and job system, recovers the jobs a crash left
//! unfinished and starts retention; [`App::router`] assembles every route with its layers
//! (usable in tests without binding a port); [`App::install_backend`] starts the
//! worker once the model is loaded (until then `/readyz` says 503); [`App::serve`]
//! runs on a listener and drains on the shutdown signal.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::body::{Body, HttpBody as _};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use http_body_util::LengthLimitError;
use tokio::net::TcpListener;

use crate::backend::Backend;
use crate::config::ServerConfig;
use crate::dialects::{self, Dialect};
use crate::error::ApiError;
use crate::jobs::{JobSettings, Jobs, Store};
use crate::metrics::Metrics;
use crate::models::Models;
use crate::signing::UrlSigner;
use crate::state::AppState;
use crate::{auth, connections, ops, web};

/// After the drain timeout cancels the remaining jobs, how long the running
/// batch gets to notice (at its next step) before the server exits without it.
const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How a shutdown went; the binary turns it into its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// True when the drain timeout ran out with jobs still queued or running.
    pub timed_out: bool,
    /// Jobs the drain cancelled when it ran out of time.
    pub cancelled_jobs: usize,
}

/// Why a server could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The output directory or bucket could not be created, read or written.
    #[error("{} {path} is not usable: {source}", .path.kind())]
    OutputDir {
        /// The directory or bucket URL.
        path: crate::jobs::OutputLocation,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Metric registration failed (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A backend was installed twice.
    #[error("a model is already loaded")]
    AlreadyLoaded,
    /// Models were installed before their default model was loaded.
    #[error("the default model {0:?} is not loaded")]
    DefaultNotLoaded(String),
    /// The worker thread could not be started.
    #[error("could not start the worker thread: {0}")]
    Worker(std::io::Error),
    /// The retention thread could not be started.
    #[error("could not start the retention thread: {0}")]
    Retention(std::io::Error),
}

/// A server: state plus the routes over it. Cheap to clone.
#[derive(Clone)]
pub struct App {
    state: Arc<AppState>,
}

impl App {
    /// Prepares a server; no model yet, so `/readyz` answers 503. Refuses an
    /// output directory it cannot write; queues again the native jobs a crash
    /// left unfinished (they run once a backend is installed), fails the
    /// synchronous ones, then sweeps old results and starts the sweeper.
    pub fn new(config: ServerConfig) -> Result<Self, ServerError> {
        let dir_error = |source| ServerError::OutputDir {
            path: config.output_dir.clone(),
            source,
        };
        let store =
            Store::open_as(config.output_dir.clone(), &config.replica_name).map_err(dir_error)?;
        let signer = UrlSigner::for_store(&store).map_err(dir_error)?;
        let metrics = Arc::new(Metrics::new()?);
        let jobs = Jobs::new(
            JobSettings {
                capacity: config.queue_size,
                max_batch_images: config.max_batch_images.max(1),
                finished_ttl: config.finished_ttl,
                result_ttl: config.result_ttl,
                max_output_bytes: config.max_output_bytes,
                min_free_disk: config.min_free_disk,
            },
            store,
            metrics.clone(),
        );
        jobs.recover().map_err(dir_error)?;
        jobs.sweep().map_err(dir_error)?;
        jobs.spawn_sweeper(config.sweep_interval)
            .map_err(ServerError::Retention)?;
        Ok(Self {
            state: Arc::new(AppState {
                config,
                jobs,
                metrics,
                started_unix: crate::jobs::job::unix_now() as u64,
                signer,
                task_names: Default::default(),
                a1111_text: Default::default(),
                models: OnceLock::new(),
            }),
        })
    }

    /// The shared state (for tests and the binary).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Installs one loaded model as all there is (no models folder, no
    /// switching) and starts the worker thread; the server turns ready.
    pub fn install_backend(&self, backend: Arc<dyn Backend>) -> Result<(), ServerError> {
        self.install_models(Arc::new(Models::single(backend)))
    }

    /// Installs the served models (the default one loaded) and starts one
    /// worker thread per device; the server turns ready.
    pub fn install_models(&self, models: Arc<Models>) -> Result<(), ServerError> {
        let default = models.default_name();
        if models.pool().peek(&default, |_| ()).is_none() {
            return Err(ServerError::DefaultNotLoaded(default));
        }
        self.state
            .models
            .set(models.clone())
            .map_err(|_| ServerError::AlreadyLoaded)?;
        // Jobs recovered from disk were validated against the model of their
        // day; those of the default model are checked again now, the others
        // by the engine when they run.
        self.state.jobs.revalidate(|entry| {
            if !entry.model.is_empty() && entry.model != default {
                return Ok(());
            }
            models
                .pool()
                .peek(&default, |b| {
                    b.validate(&entry.request).map_err(|e| e.to_string())
                })
                .unwrap_or(Ok(()))
        });
        for m in ops::device_reports(&self.state) {
            tracing::info!(
                device = %m.device,
                budget = %crate::engine_api::human_bytes(m.budget_bytes),
                source = %m.budget_source,
                weights = %crate::engine_api::human_bytes(m.weights_bytes),
                largest_square_batch1 = %format!("{0}x{0}", m.largest_square_batch1),
                vae_tiling = %m.vae_tiling,
                "memory plan"
            );
        }
        crate::jobs::worker::spawn(self.state.jobs.clone(), models).map_err(ServerError::Worker)?;
        Ok(())
    }

    /// Every route, with auth, the body limit and the body read timeout applied.
    pub fn router(&self) -> Router {
        let limit = self.state.config.limits.max_body_bytes;
        Router::new()
            .merge(dialects::native::routes())
            .merge(dialects::a1111::routes())
            .merge(dialects::openai::routes())
            .merge(dialects::simple::routes())
            .merge(ops::routes())
            .merge(web::routes())
            .fallback(no_route)
            .method_not_allowed_fallback(wrong_method)
            .layer(middleware::from_fn_with_state(
                self.state.clone(),
                read_body_in_time,
            ))
            .layer(middleware::from_fn_with_state(
                self.state.clone(),
                auth::require_auth,
            ))
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self.state.clone())
    }

    /// SIGTERM behaviour: stop taking jobs (`/readyz` → 503), let queued and running
    /// jobs finish for up to the drain timeout, cancel what is left, stop the worker.
    pub async fn drain(&self) -> ShutdownReport {
        let jobs = &self.state.jobs;
        jobs.begin_drain();
        tracing::info!(
            queued = jobs.queued(),
            running = jobs.running(),
            "draining: no new jobs"
        );
        let finished = jobs.wait_idle(self.state.config.drain_timeout).await;
        let mut cancelled_jobs = 0;
        if !finished {
            cancelled_jobs = jobs.cancel_where_off_runtime(|_| true).await;
            tracing::warn!(
                cancelled_jobs,
                "drain timeout reached; cancelled the remaining jobs"
            );
            if !jobs.wait_idle(CANCEL_WAIT).await {
                tracing::warn!("the running batch did not stop in time; exiting without it");
            }
        }
        jobs.stop_worker();
        ShutdownReport {
            timed_out: !finished,
            cancelled_jobs,
        }
    }

    /// Serves on `listener` until `shutdown` resolves, drains, closes every
    /// connection (by force after a short grace) and returns how the drain went.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<ShutdownReport> {
        let app = self.clone();
        connections::serve(
            listener,
            self.router(),
            self.state.config.connections.clone(),
            shutdown,
            async move { app.drain().await },
        )
        .await
    }
}

/// Reads the whole request body within `--body-read-timeout` (408 otherwise) and
/// `--max-body-bytes` (413), so a body trickled byte by byte cannot hold a
/// connection; handlers then get it from memory.
async fn read_body_in_time(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    use http_body_util::BodyExt as _;
    let (parts, body) = request.into_parts();
    if body.size_hint().exact() == Some(0) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let limit = state.config.limits.max_body_bytes;
    let timeout = state.config.connections.body_read_timeout;
    let read = http_body_util::Limited::new(body, limit).collect();
    let error = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(collected)) => {
            let body = Body::from(collected.to_bytes());
            return next.run(Request::from_parts(parts, body)).await;
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            ApiError::BodyTooLarge { limit }
        }
        Ok(Err(e)) => ApiError::BadBody(e.to_string()),
        Err(_) => ApiError::BodyTimeout {
            seconds: timeout.as_secs_f64(),
        },
    };
    Dialect::for_path(parts.uri.path()).error_response(error)
}

/// Unknown route: 404 in the path's dialect.
async fn no_route(request: Request) -> Response {
    let path = request.uri().path().to_string();
    let what = format!("{} {}", request.method(), path);
    Dialect::for_path(&path).error_response(ApiError::NoRoute(what))
}

/// Known route, wrong method: 405 in the path's dialect.
async fn wrong_method(request: Request) -> Response {
    let path = request.uri().path().to_string();
    let what = format!("{} {}", request.method(), path);
    Dialect::for_path(&path).error_response(ApiError::MethodNotAllowed(what))
}
