//! No accepted job is lost: a job is on disk before it is acknowledged, a crash
//! (the App dropped without draining) leaves it to the next App, which runs
//! native jobs again in their order and fails synchronous leftovers with the
//! restart reason. Storage errors fail jobs (507 for synchronous dialects)
//! without leaving images; an unwritable output directory refuses to start.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sdserve_server::dialects::Dialect;
use sdserve_server::engine_api::{GenerateRequest, ModelInfo};
use sdserve_server::jobs::store::Fault;
use sdserve_server::jobs::{ClientId, Keep, INTERRUPTED};
use sdserve_server::validation::ValidJob;
use sdserve_server::{App, FakeBackend, ServerConfig, ServerError};
use serde_json::{json, Value};

use crate::common::{assert_error, expected_pngs, request, TestServer};

/// Output files by extension: (`.png` names, `.json` names).
pub fn outputs(dir: &Path) -> (Vec<String>, Vec<String>) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let with = |ext: &str| names.iter().filter(|n| n.ends_with(ext)).cloned().collect();
    (with(".png"), with(".json"))
}

/// Queues a job as `client` through `dialect`, bypassing HTTP (a synchronous
/// client whose connection the crash cut, or a second fairness lane).
fn queue_direct(app: &App, client: &str, dialect: Dialect, req: GenerateRequest) -> String {
    let job = ValidJob {
        request: req,
        client: ClientId::new(client),
        dialect,
        model: String::new(),
    };
    let handle = app.state().jobs.submit(job, Keep::Stored).expect("queued");
    handle.id().to_string()
}

async fn native(s: &TestServer, prompt: &str, seed: u64) -> String {
    let resp = s
        .post("/api/v1/jobs", json!({"prompt": prompt, "seed": seed}))
        .await;
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn status(s: &TestServer, id: &str) -> Value {
    let resp = s.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(resp.status(), 200, "job {id} must never be 404");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn a_crash_loses_no_job_native_ones_rerun_in_order_sync_ones_fail() {
    // One image per batch, so the run order is visible in `started_at`.
    let one_per_batch = |c: &mut ServerConfig| c.max_batch_images = 1;
    // The worker is stuck in the first job's first step when the "crash" comes.
    let stuck = FakeBackend::new().with_step_delay(Duration::from_secs(3600));
    let first = TestServer::with(one_per_batch, stuck).await;
    let dir = first.dir.clone();
    let running = native(&first, "running at the crash", 1).await;
    while status(&first, &running).await["status"] != "running" {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let a1 = native(&first, "queued a1", 2).await;
    let b1 = queue_direct(
        &first.app,
        "other",
        Dialect::Native,
        request("queued b1", 3),
    );
    let a2 = native(&first, "queued a2", 4).await;
    let simple = queue_direct(&first.app, "sync", Dialect::Simple, request("sync", 5));
    let a1111 = queue_direct(&first.app, "sync", Dialect::A1111, request("sync", 6));
    // Crash: no drain, no final records; the old worker never wakes again.
    drop(first);

    let app = App::new({
        let mut c = ServerConfig::new(dir.path());
        one_per_batch(&mut c);
        c
    })
    .unwrap();
    let fake = Arc::new(FakeBackend::new());
    let second = TestServer::serve(app.clone(), fake.clone(), dir).await;
    // Before the model loads: every accepted job is known, none is 404.
    for id in [&running, &a1, &b1, &a2] {
        assert_eq!(status(&second, id).await["status"], "queued", "{id}");
    }
    for id in [&simple, &a1111] {
        let job = status(&second, id).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["error"]["kind"], "interrupted", "{job}");
        assert_eq!(job["error"]["message"], INTERRUPTED);
    }
    assert_eq!(status(&second, &b1).await["queue_position"], 1);

    app.install_backend(fake).unwrap();
    let mut started = Vec::new();
    for (id, prompt, seed) in [
        (&running, "running at the crash", 1),
        (&a1, "queued a1", 2),
        (&b1, "queued b1", 3),
        (&a2, "queued a2", 4),
    ] {
        let job = second.wait_job(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let png = second
            .get(job["images"][0]["url"].as_str().unwrap())
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(png.to_vec(), expected_pngs(&request(prompt, seed))[0]);
        started.push((job["started_at"].as_f64().unwrap(), id.clone()));
    }
    started.sort_by(|a, b| a.0.total_cmp(&b.0));
    let order: Vec<_> = started.into_iter().map(|(_, id)| id).collect();
    // Admission order within each client's lane (running, a1, a2 in one, b1 in
    // the other), the lanes served round robin: b1 comes second.
    assert_eq!(order, [running, b1, a1, a2]);
}

#[tokio::test]
async fn a_recovered_job_the_model_refuses_fails_with_the_reason() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let coarse = FakeBackend::new().with_info(ModelInfo {
        name: "fake-sd".into(),
        native_width: 64,
        native_height: 64,
        default_steps: 4,
        default_cfg_scale: 7.0,
        vae_scale_factor: 4,
        max_clip_skip: 11,
        lcm_max_steps: 50,
    });
    let first = TestServer::on_dir(
        dir.clone(),
        |_| {},
        coarse.with_step_delay(Duration::from_secs(3600)),
    )
    .await;
    let blocker = native(&first, "blocker", 1).await;
    let resp = first
        .post("/api/v1/jobs", json!({"prompt": "odd size", "width": 60}))
        .await;
    assert_eq!(resp.status(), 202);
    let odd = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    drop(first);

    let second = TestServer::on_dir(dir, |_| {}, FakeBackend::new()).await;
    let job = second.wait_job(&odd).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["kind"], "invalid_request");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cannot run on the loaded model"),
        "{message}"
    );
    assert_eq!(second.wait_job(&blocker).await["status"], "succeeded");
}

#[tokio::test]
async fn a_job_that_cannot_be_recorded_is_refused_and_not_queued() {
    let s = TestServer::start().await;
    let store = s.app.state().jobs.store().clone();
    store.inject_fault(Fault::QueuedRecord);
    let resp = s.post("/api/v1/jobs", json!({"prompt": "x"})).await;
    assert_error(resp, 507, "could not record the job").await;
    assert_eq!(s.app.state().jobs.queued(), 0);
    assert!(s.app.state().jobs.list().is_empty());
    assert_eq!(outputs(s.dir.path()), (vec![], vec![]));
}

#[tokio::test]
async fn an_image_that_cannot_be_written_fails_the_job_and_leaves_no_image() {
    let s = TestServer::start().await;
    let store = s.app.state().jobs.store().clone();

    // Native: the second of two images fails; the first is removed too.
    store.inject_fault(Fault::Png { after: 1 });
    let resp = s
        .post("/api/v1/jobs", json!({"prompt": "two", "batch_size": 2}))
        .await;
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = s.wait_job(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["kind"], "storage");
    assert!(job["images"].as_array().unwrap().is_empty());
    assert!(outputs(s.dir.path()).0.is_empty());

    // Synchronous dialects answer 507, whether the image or the record fails.
    store.inject_fault(Fault::Png { after: 1 });
    let resp = s
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "two", "batch_size": 2, "save_images": true}),
        )
        .await;
    assert_error(resp, 507, "could not store the image").await;
    store.inject_fault(Fault::FinalRecord);
    let resp = s.post("/generate", json!({"prompt": "one"})).await;
    assert_error(resp, 507, "could not write the job's record").await;
    store.inject_fault(Fault::FinalRecord);
    let resp = s
        .post(
            "/v1/images/generations",
            json!({"prompt": "one", "response_format": "url"}),
        )
        .await;
    assert_error(resp, 507, "storage").await;
    assert!(outputs(s.dir.path()).0.is_empty(), "orphan images left");
    assert_eq!(
        s.metric("sd_request_failures_total{reason=\"storage\"}")
            .await,
        4.0
    );
}

#[tokio::test]
async fn an_output_dir_replaced_by_a_file_fails_jobs_with_a_storage_reason() {
    // Root ignores permissions, so the directory is taken away instead.
    let step = Duration::from_millis(40);
    let s = TestServer::with(|_| {}, FakeBackend::new().with_step_delay(step)).await;
    let id = native(&s, "running when the disk goes", 1).await;
    while status(&s, &id).await["status"] != "running" {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let out = s.dir.path().to_path_buf();
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::write(&out, b"not a directory").unwrap();
    let job = s.wait_job(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["kind"], "storage");
    let resp = s.post("/api/v1/jobs", json!({"prompt": "later"})).await;
    assert_error(resp, 507, "could not record the job").await;
    let resp = s.post("/generate", json!({"prompt": "later"})).await;
    assert_error(resp, 507, "insufficient storage").await;
    std::fs::remove_file(&out).unwrap();
}

#[tokio::test]
async fn an_unwritable_output_dir_refuses_to_start_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("outputs");
    match App::new(ServerConfig::new(&out)) {
        Err(e @ ServerError::OutputDir { .. }) => {
            assert!(e.to_string().contains(&out.display().to_string()), "{e}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("started on an unwritable output dir"),
    }
}

#[tokio::test]
async fn low_free_disk_makes_the_server_unready_and_refuses_jobs_with_507() {
    let s = TestServer::with(|c| c.min_free_disk = u64::MAX, FakeBackend::new()).await;
    let resp = s.get("/readyz").await;
    assert_error(resp, 503, "--min-free-disk").await;
    let resp = s.post("/api/v1/jobs", json!({"prompt": "x"})).await;
    assert_error(resp, 507, "--min-free-disk").await;
    let resp = s.post("/sdapi/v1/txt2img", json!({"prompt": "x"})).await;
    assert_error(resp, 507, "--min-free-disk").await;
    assert!(s.app.state().jobs.list().is_empty());
    assert!(!s.app.state().is_ready());
}
