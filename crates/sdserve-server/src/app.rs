//! Building and running a server: [`App::new`] prepares the output directory
//! (proved writable), metrics and job system, recovers the jobs a crash left
//! unfinished and starts retention; [`App::router`] assembles every route with its layers
//! (usable in tests without binding a port); [`App::install_backend`] starts the
//! worker once the model is loaded (until then `/readyz` says 503); [`App::serve`]
//! runs on a listener and drains on the shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware;
use axum::response::Response;
use axum::Router;
use tokio::net::TcpListener;

use crate::backend::Backend;
use crate::config::ServerConfig;
use crate::dialects::{self, Dialect};
use crate::error::ApiError;
use crate::jobs::{JobSettings, Jobs, Store};
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::{auth, ops};

/// Why a server could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The output directory could not be created, read or written.
    #[error("output directory {path} is not usable: {source}")]
    OutputDir {
        /// The directory.
        path: std::path::PathBuf,
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
        let store = Store::open(&config.output_dir).map_err(dir_error)?;
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
                backend: OnceLock::new(),
            }),
        })
    }

    /// The shared state (for tests and the binary).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Installs the loaded model and starts the worker thread; the server turns ready.
    pub fn install_backend(&self, backend: Arc<dyn Backend>) -> Result<(), ServerError> {
        self.state
            .backend
            .set(backend.clone())
            .map_err(|_| ServerError::AlreadyLoaded)?;
        // Jobs recovered from disk were validated against the model of their day.
        self.state
            .jobs
            .revalidate(|request| backend.validate(request).map_err(|e| e.to_string()));
        crate::jobs::worker::spawn(self.state.jobs.clone(), backend)
            .map_err(ServerError::Worker)?;
        Ok(())
    }

    /// Every route, with auth and the body limit applied.
    pub fn router(&self) -> Router {
        let limit = self.state.config.limits.max_body_bytes;
        Router::new()
            .merge(dialects::native::routes())
            .merge(dialects::a1111::routes())
            .merge(dialects::openai::routes())
            .merge(dialects::simple::routes())
            .merge(ops::routes())
            .fallback(no_route)
            .method_not_allowed_fallback(wrong_method)
            .layer(middleware::from_fn_with_state(
                self.state.clone(),
                auth::require_auth,
            ))
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self.state.clone())
    }

    /// SIGTERM behaviour: stop taking jobs (`/readyz` → 503), let queued and running
    /// jobs finish for up to the drain timeout, cancel what is left, stop the worker.
    /// Returns true if everything finished in time.
    pub async fn drain(&self) -> bool {
        let jobs = &self.state.jobs;
        jobs.begin_drain();
        tracing::info!(
            queued = jobs.queued(),
            running = jobs.running(),
            "draining: no new jobs"
        );
        let finished = jobs.wait_idle(self.state.config.drain_timeout).await;
        if !finished {
            let cancelled = jobs.cancel_where_off_runtime(|_| true).await;
            tracing::warn!(
                cancelled,
                "drain timeout reached; cancelled the remaining jobs"
            );
            jobs.wait_idle(std::time::Duration::from_secs(30)).await;
        }
        jobs.stop_worker();
        finished
    }

    /// Serves on `listener` until `shutdown` resolves, then drains and returns.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = self.clone();
        let service = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, service)
            .with_graceful_shutdown(async move {
                shutdown.await;
                app.drain().await;
            })
            .await
    }
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
