//! Test harness: a real server on a loopback port backed by the FakeBackend,
//! plus small HTTP and PNG helpers shared by the dialect tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sdserve_server::engine_api::{png, GenerateRequest, NoopObserver, SamplerId};
use sdserve_server::{App, Backend, FakeBackend, ServerConfig, ShutdownReport};
use serde_json::Value;
use tokio::sync::oneshot;

/// A running test server.
pub struct TestServer {
    pub base: String,
    pub app: App,
    pub fake: Arc<FakeBackend>,
    pub dir: Arc<tempfile::TempDir>,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<ShutdownReport>>>,
}

impl TestServer {
    /// Defaults: FakeBackend without delay, fresh output dir.
    pub async fn start() -> Self {
        Self::with(|_| {}, FakeBackend::new()).await
    }

    /// Custom config and backend.
    pub async fn with(configure: impl FnOnce(&mut ServerConfig), fake: FakeBackend) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        Self::on_dir(dir, configure, fake).await
    }

    /// A server over an existing output dir (restart tests).
    pub async fn on_dir(
        dir: Arc<tempfile::TempDir>,
        configure: impl FnOnce(&mut ServerConfig),
        fake: FakeBackend,
    ) -> Self {
        let mut config = ServerConfig::new(dir.path());
        configure(&mut config);
        let app = App::new(config).expect("app");
        let fake = Arc::new(fake);
        app.install_backend(fake.clone()).expect("backend");
        Self::serve(app, fake, dir).await
    }

    /// Serves an app (backend may not be installed yet).
    pub async fn serve(app: App, fake: Arc<FakeBackend>, dir: Arc<tempfile::TempDir>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let served = app.clone();
        let task = tokio::spawn(async move {
            served
                .serve(listener, async move {
                    let _ = rx.await;
                })
                .await
        });
        Self {
            base,
            app,
            fake,
            dir,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST")
    }

    /// Sends the shutdown signal (SIGTERM path) and waits for `serve` to return.
    pub async fn stop(mut self) -> std::io::Result<ShutdownReport> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(ShutdownReport {
                timed_out: false,
                cancelled_jobs: 0,
            }),
        }
    }

    /// Sends the shutdown signal without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server task after `signal_shutdown`.
    pub async fn join(mut self) -> std::io::Result<ShutdownReport> {
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(ShutdownReport {
                timed_out: false,
                cancelled_jobs: 0,
            }),
        }
    }

    /// Submits a native job and returns its id (the submission must be accepted).
    pub async fn submit_job(&self, body: Value) -> String {
        let resp = self.post("/api/v1/jobs", body).await;
        assert_eq!(resp.status(), 202, "job refused");
        resp.json::<Value>().await.expect("json")["id"]
            .as_str()
            .expect("an id")
            .to_string()
    }

    /// A native job's `status` field ("" if it has none).
    pub async fn job_status(&self, id: &str) -> String {
        let job: Value = self
            .get(&format!("/api/v1/jobs/{id}"))
            .await
            .json()
            .await
            .unwrap();
        job["status"].as_str().unwrap_or_default().to_string()
    }

    /// Polls the native job until it is terminal.
    pub async fn wait_job(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let job: Value = self
                .get(&format!("/api/v1/jobs/{id}"))
                .await
                .json()
                .await
                .expect("json");
            let status = job["status"].as_str().unwrap_or_default().to_string();
            if ["succeeded", "failed", "cancelled"].contains(&status.as_str()) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} stuck in {status}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The value of one metric sample line, e.g. `sd_requests_total{dialect="a1111"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.expect("metrics");
        metric_in(&text, sample)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The value of `sample` in Prometheus text (0 if absent).
pub fn metric_in(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The PNG the fake backend makes for this request, encoded as the server does.
pub fn expected_pngs(request: &GenerateRequest) -> Vec<Vec<u8>> {
    let fake = FakeBackend::new();
    let out = fake
        .generate_batch(std::slice::from_ref(request), &mut NoopObserver)
        .expect("batch")
        .pop()
        .expect("one")
        .expect("ok");
    out.images
        .iter()
        .map(|i| png::encode_png(i).expect("png"))
        .collect()
}

/// A request with the fake model's defaults.
pub fn request(prompt: &str, seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        seed: Some(seed),
        steps: 4,
        cfg_scale: 7.0,
        sampler: SamplerId::EulerAncestral,
        schedule_type: Default::default(),
        width: 64,
        height: 64,
        batch_size: 1,
        init: None,
        seed_per_image: false,
        hires: None,
        prompt_syntax: Default::default(),
        clip_skip: 0,
        loras: Vec::new(),
    }
}

pub fn b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

/// Asserts a JSON error response: status, and that the body mentions `needle`.
pub async fn assert_error(resp: reqwest::Response, status: u16, needle: &str) -> Value {
    let got = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    assert_eq!(got, status, "body: {text}");
    assert!(text.contains(needle), "{needle:?} not in {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}
