//! `--output-dir s3://bucket/prefix` against a local S3 server (moto, started
//! here with `$SDSERVE_TEST_PYTHON -m moto.server`): replicas sharing a bucket
//! serve each other's finished jobs (status and PNG bytes), image ownership
//! holds across them, a replica's start-up leaves another's running job alone,
//! a restarted replica still serves everything, and a bucket that does not
//! exist fails start-up naming it. Skipped, saying so, without
//! `SDSERVE_TEST_PYTHON` or without moto in that Python.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sdserve_server::jobs::OutputLocation;
use sdserve_server::{App, FakeBackend, ServerConfig};
use serde_json::{json, Value};

use crate::common::{expected_pngs, request, TestServer};

/// A moto server, killed when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts moto on a free port, or says why the test is skipped.
fn start_moto() -> Option<Moto> {
    let Ok(python) = std::env::var("SDSERVE_TEST_PYTHON") else {
        eprintln!("SKIPPED shared_bucket: SDSERVE_TEST_PYTHON is not set (it needs moto[server])");
        return None;
    };
    let has_moto = Command::new(&python)
        .args(["-c", "import moto.server, flask"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_moto {
        eprintln!(
            "SKIPPED shared_bucket: {python} cannot import moto.server; \
             install scripts/requirements-test.txt"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new(&python)
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto starts");
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(moto)
}

fn in_bucket(bucket: &str, replica: &str) -> impl FnOnce(&mut ServerConfig) {
    let (bucket, replica) = (bucket.to_string(), replica.to_string());
    move |c| {
        c.output_dir = OutputLocation::S3 {
            bucket,
            prefix: "results/run".into(),
        };
        c.replica_name = replica;
        c.auth.api_keys = vec!["alice-key".into(), "bob-key".into()];
    }
}

async fn get_as(s: &TestServer, key: &str, path: &str) -> (u16, Vec<u8>) {
    let resp = s
        .client
        .get(s.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap().to_vec())
}

async fn job_as(s: &TestServer, key: &str, id: &str) -> Value {
    let (status, body) = get_as(s, key, &format!("/api/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Submits a native job as `key` and returns its id.
async fn submit_as(s: &TestServer, key: &str, prompt: &str, seed: u64) -> String {
    let resp = s
        .client
        .post(s.url("/api/v1/jobs"))
        .bearer_auth(key)
        .json(&json!({"prompt": prompt, "seed": seed}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

/// Polls `s` until the job has finished.
async fn finished_as(s: &TestServer, key: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = job_as(s, key, id).await;
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or("")) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_results_through_a_bucket() {
    let Some(moto) = start_moto() else { return };
    // The S3 client reads the standard AWS environment, as in production;
    // this is the only test that sets it, to the same values each time.
    std::env::set_var("AWS_ENDPOINT_URL", &moto.endpoint);
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::set_var("AWS_REGION", "us-east-1");
    let client = reqwest::Client::new();
    // moto's server takes unsigned requests: create the bucket directly.
    let made = client
        .put(format!("{}/sd-results", moto.endpoint))
        .send()
        .await
        .unwrap();
    assert!(made.status().is_success(), "{made:?}");

    let a = TestServer::with(in_bucket("sd-results", "a"), FakeBackend::new()).await;
    let b = TestServer::with(in_bucket("sd-results", "b"), FakeBackend::new()).await;

    // A job run on A is read on B: the same status, the same PNG bytes.
    let id = submit_as(&a, "alice-key", "shared", 5).await;
    let on_a = finished_as(&a, "alice-key", &id).await;
    assert_eq!(on_a["status"], "succeeded", "{on_a}");
    let on_b = job_as(&b, "alice-key", &id).await;
    assert_eq!(on_b, on_a);
    let image_url = on_a["images"][0]["url"].as_str().unwrap().to_string();
    let expected = expected_pngs(&request("shared", 5)).remove(0);
    assert_eq!(
        get_as(&b, "alice-key", &image_url).await,
        (200, expected.clone())
    );
    let image_id = on_a["images"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        get_as(&b, "alice-key", &format!("/download/{image_id}")).await,
        (200, expected.clone())
    );
    // Ownership holds on B, which never saw the job's record in memory.
    assert_eq!(get_as(&b, "bob-key", &image_url).await.0, 404);
    assert_eq!(
        get_as(&b, "bob-key", &format!("/api/v1/jobs/{id}")).await.0,
        404
    );
    let listed = get_as(&b, "alice-key", "/api/v1/jobs").await;
    assert!(String::from_utf8_lossy(&listed.1).contains(&id));

    // A replica starting while A runs a job leaves that job to A (its
    // recovery sees A's queued record in the bucket and must not touch it).
    let slow = TestServer::with(
        in_bucket("sd-results", "slow"),
        FakeBackend::new().with_step_delay(Duration::from_millis(100)),
    )
    .await;
    let running = submit_as(&slow, "alice-key", "long", 6).await;
    let c = TestServer::with(in_bucket("sd-results", "c"), FakeBackend::new()).await;
    let running_id = running.parse().unwrap();
    assert!(c.app.state().jobs.entry(running_id).is_none());
    let done = finished_as(&slow, "alice-key", &running).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(job_as(&c, "alice-key", &running).await, done);
    slow.stop().await.unwrap();
    c.stop().await.unwrap();

    // A restarted A (same name, same bucket, fresh memory) still serves it all.
    a.stop().await.unwrap();
    let again = TestServer::with(in_bucket("sd-results", "a"), FakeBackend::new()).await;
    assert_eq!(job_as(&again, "alice-key", &id).await, on_a);
    assert_eq!(
        get_as(&again, "alice-key", &image_url).await,
        (200, expected)
    );
    again.stop().await.unwrap();
    b.stop().await.unwrap();

    // A bucket that does not exist: start-up fails and says which bucket.
    let mut config = ServerConfig::new(std::path::Path::new("unused"));
    in_bucket("no-such-bucket", "a")(&mut config);
    let error = match App::new(config) {
        Ok(_) => panic!("a missing bucket was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("no-such-bucket"), "{error}");
}
