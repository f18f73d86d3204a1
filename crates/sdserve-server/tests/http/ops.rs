//! Probes, drain on shutdown, metrics, the OpenAPI document and the docs page,
//! and the router used without binding a port.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use sdserve_server::{App, FakeBackend, ServerConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::common::TestServer;

#[tokio::test]
async fn router_works_without_a_port() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::new(ServerConfig::new(dir.path())).unwrap();
    let get = |path: &str| {
        axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let resp = app.router().oneshot(get("/readyz")).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let resp = app.router().oneshot(get("/livez")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app.router().oneshot(get("/v1/models")).await.unwrap();
    assert_eq!(resp.status(), 503);
    app.install_backend(Arc::new(FakeBackend::new())).unwrap();
    assert!(app.install_backend(Arc::new(FakeBackend::new())).is_err());
    let resp = app.router().oneshot(get("/readyz")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"status": "ready"})
    );
}

#[tokio::test]
async fn loading_model_means_live_but_not_ready() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = App::new(ServerConfig::new(dir.path())).unwrap();
    let fake = Arc::new(FakeBackend::new());
    let s = TestServer::serve(app.clone(), fake.clone(), dir).await;
    assert_eq!(s.get("/livez").await.status(), 200);
    assert_eq!(s.get("/readyz").await.status(), 503);
    let resp = s.post("/generate", json!({"prompt": "early"})).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    app.install_backend(fake).unwrap();
    assert_eq!(s.get("/readyz").await.status(), 200);
    assert_eq!(
        s.post("/generate", json!({"prompt": "now"})).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_running_and_queued_jobs() {
    let mut s = TestServer::with(
        |_| {},
        FakeBackend::new().with_step_delay(Duration::from_millis(40)),
    )
    .await;
    let client = s.client.clone();
    let url = s.url("/sdapi/v1/txt2img");
    let running = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"prompt": "in flight", "steps": 6}))
            .send()
            .await
            .unwrap()
            .status()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let queued: Value = s
        .post("/api/v1/jobs", json!({"prompt": "queued", "width": 32}))
        .await
        .json()
        .await
        .unwrap();
    let queued_id = queued["id"].as_str().unwrap().to_string();
    let app = s.app.clone();
    s.signal_shutdown();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!app.state().is_ready());
    assert_eq!(s.get("/readyz").await.status(), 503);
    let refused = s.post("/generate", json!({"prompt": "too late"})).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(running.await.unwrap(), 200, "the running job finishes");
    let report = s.join().await.unwrap();
    assert!(!report.timed_out);
    assert_eq!(report.cancelled_jobs, 0);
    let entry = app
        .state()
        .jobs
        .entry(queued_id.parse().unwrap())
        .expect("queued job known");
    assert_eq!(entry.status(), sdserve_server::jobs::JobStatus::Succeeded);
    assert_eq!(
        app.state()
            .metrics
            .request_failures_total
            .with_label_values(&["draining"])
            .get(),
        1
    );
}

#[tokio::test]
async fn drain_timeout_cancels_what_is_left() {
    let mut s = TestServer::with(
        |c| c.drain_timeout = Duration::from_millis(100),
        FakeBackend::new().with_step_delay(Duration::from_millis(50)),
    )
    .await;
    let job: Value = s
        .post("/api/v1/jobs", json!({"prompt": "endless", "steps": 150}))
        .await
        .json()
        .await
        .unwrap();
    let app = s.app.clone();
    s.signal_shutdown();
    let report = s.join().await.unwrap();
    assert!(report.timed_out);
    assert_eq!(report.cancelled_jobs, 1);
    let entry = app
        .state()
        .jobs
        .entry(job["id"].as_str().unwrap().parse().unwrap())
        .unwrap();
    assert_eq!(entry.status(), sdserve_server::jobs::JobStatus::Cancelled);
}

#[tokio::test]
async fn metrics_openapi_and_docs() {
    let s = TestServer::start().await;
    s.post("/generate", json!({"prompt": "m"})).await;
    let resp = s.get("/metrics").await;
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    for name in [
        "sd_queue_size ",
        "sd_requests_running ",
        "sd_requests_total{dialect=\"simple\"} 1",
        "sd_request_failures_total{reason=\"queue_full\"} 0",
        "sd_queue_duration_seconds_count 1",
        "sd_request_duration_seconds_count 1",
        "sd_inference_duration_seconds_count{stage=\"denoising\"} 1",
        "sd_inference_duration_seconds_count{stage=\"png_encoding\"} 1",
        "sd_batch_size_count 1",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }

    let doc: Value = s.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/jobs", "post"),
        ("/api/v1/jobs/{id}", "get"),
        ("/api/v1/jobs/{id}", "delete"),
        ("/api/v1/jobs/{id}/events", "get"),
        ("/api/v1/images/{id}", "get"),
        ("/api/v1/models", "get"),
        ("/api/v1/samplers", "get"),
        ("/sdapi/v1/txt2img", "post"),
        ("/sdapi/v1/progress", "get"),
        ("/sdapi/v1/interrupt", "post"),
        ("/sdapi/v1/skip", "post"),
        ("/sdapi/v1/sd-models", "get"),
        ("/sdapi/v1/samplers", "get"),
        ("/sdapi/v1/schedulers", "get"),
        ("/sdapi/v1/options", "get"),
        ("/sdapi/v1/options", "post"),
        ("/sdapi/v1/png-info", "post"),
        ("/sdapi/v1/memory", "get"),
        ("/v1/images/generations", "post"),
        ("/v1/models", "get"),
        ("/generate", "post"),
        ("/download/{id}", "get"),
        ("/livez", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/docs", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} undocumented"
        );
    }
    let too_many = &doc["paths"]["/sdapi/v1/txt2img"]["post"]["responses"]["429"];
    assert!(too_many["headers"]["Retry-After"].is_object(), "{too_many}");

    let docs = s.get("/docs").await;
    assert!(docs.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = docs.text().await.unwrap();
    assert!(html.contains("/openapi.json"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "docs must not load remote assets"
    );
}
