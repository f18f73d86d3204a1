//! Overload and fairness: with a small queue, a burst of concurrent requests
//! from several clients in every dialect gets images or 429s (with
//! Retry-After), every accepted job completes, the server stays ready, and the
//! metrics add up. Clients are served round robin.

use std::time::Duration;

use sdserve_server::FakeBackend;
use serde_json::{json, Value};

use crate::common::TestServer;

const CLIENTS: [&str; 4] = ["alice", "bob", "carol", "dave"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_of_40_gets_images_or_429_and_metrics_add_up() {
    let s = TestServer::with(
        |c| {
            c.queue_size = 4;
            c.auth.api_keys = CLIENTS.iter().map(|c| c.to_string()).collect();
            // The operator key reads every client's jobs.
            c.auth.admin_keys = vec!["ops".into()];
        },
        FakeBackend::new().with_step_delay(Duration::from_millis(10)),
    )
    .await;

    // Readiness poller running during the burst.
    let ready_client = s.client.clone();
    let ready_url = s.url("/readyz");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_poll = stop.clone();
    let poller = tokio::spawn(async move {
        let mut checks = 0;
        while !stop_poll.load(std::sync::atomic::Ordering::Relaxed) {
            let status = ready_client.get(&ready_url).send().await.unwrap().status();
            assert_eq!(status, 200, "readiness lost under load");
            checks += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        checks
    });

    let mut tasks = Vec::new();
    for i in 0..40usize {
        let client = s.client.clone();
        let base = s.base.clone();
        let key = CLIENTS[i % CLIENTS.len()];
        tasks.push(tokio::spawn(async move {
            let (path, body) = match i % 4 {
                0 => (
                    "/sdapi/v1/txt2img",
                    json!({"prompt": format!("r{i}"), "seed": i}),
                ),
                1 => (
                    "/v1/images/generations",
                    json!({"prompt": format!("r{i}"), "seed": i}),
                ),
                2 => ("/generate", json!({"prompt": format!("r{i}"), "seed": i})),
                _ => (
                    "/api/v1/jobs",
                    json!({"prompt": format!("r{i}"), "seed": i}),
                ),
            };
            let resp = client
                .post(format!("{base}{path}"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = resp.json().await.unwrap();
            (path, status, retry_after, body)
        }));
    }
    let mut accepted = 0;
    let mut rejected = 0;
    let mut native_ids = Vec::new();
    for task in tasks {
        let (path, status, retry_after, body) = task.await.unwrap();
        match status {
            200 => {
                accepted += 1;
                match path {
                    "/sdapi/v1/txt2img" => assert_eq!(body["images"].as_array().unwrap().len(), 1),
                    "/v1/images/generations" => assert!(body["data"][0]["b64_json"].is_string()),
                    _ => assert!(body["download_id"].is_string()),
                }
            }
            202 => {
                accepted += 1;
                native_ids.push(body["id"].as_str().unwrap().to_string());
            }
            429 => {
                rejected += 1;
                let secs: u64 = retry_after.expect("Retry-After on 429").parse().unwrap();
                assert!(secs >= 1);
            }
            other => panic!("{path}: unexpected status {other}: {body}"),
        }
    }
    for id in &native_ids {
        let resp = s
            .client
            .get(s.url(&format!("/api/v1/jobs/{id}")))
            .bearer_auth("ops")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut job: Value = resp.json().await.unwrap();
        for _ in 0..500 {
            if job["status"] == "succeeded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            job = s
                .client
                .get(s.url(&format!("/api/v1/jobs/{id}")))
                .bearer_auth("ops")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        }
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(poller.await.unwrap() > 0);
    assert_eq!(accepted + rejected, 40);
    assert!(rejected > 0, "the burst should overflow a queue of 4");
    assert!(
        accepted >= 4,
        "at least a full queue is accepted, got {accepted}"
    );

    let text = s
        .client
        .get(s.url("/metrics"))
        .bearer_auth("bob")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let m = |sample: &str| crate::common::metric_in(&text, sample);
    let total: f64 = ["native", "a1111", "openai", "simple"]
        .iter()
        .map(|d| m(&format!("sd_requests_total{{dialect=\"{d}\"}}")))
        .sum();
    assert_eq!(total, 40.0, "{text}");
    assert_eq!(
        m("sd_request_failures_total{reason=\"queue_full\"}"),
        rejected as f64
    );
    assert_eq!(m("sd_request_duration_seconds_count"), accepted as f64);
    assert_eq!(m("sd_queue_duration_seconds_count"), accepted as f64);
    assert_eq!(m("sd_queue_size"), 0.0);
    assert_eq!(m("sd_requests_running"), 0.0);
    assert_eq!(m("sd_batch_size_sum"), accepted as f64);
    assert_eq!(
        m("sd_inference_duration_seconds_count{stage=\"denoising\"}"),
        m("sd_batch_size_count")
    );
}

#[tokio::test]
async fn clients_are_served_round_robin() {
    let s = TestServer::with(
        |c| {
            c.max_batch_images = 1;
            c.auth.api_keys = vec!["a".into(), "b".into()];
            c.auth.admin_keys = vec!["ops".into()];
        },
        FakeBackend::new().with_step_delay(Duration::from_millis(30)),
    )
    .await;
    let submit = |key: &'static str, prompt: &'static str| {
        let client = s.client.clone();
        let url = s.url("/api/v1/jobs");
        async move {
            let v: Value = client
                .post(url)
                .bearer_auth(key)
                .json(&json!({"prompt": prompt, "seed": 1}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }
    };
    let blocker = submit("a", "blocker").await;
    // Let the worker take the blocker before the others arrive.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut a_jobs = Vec::new();
    for prompt in ["a1", "a2", "a3"] {
        a_jobs.push(submit("a", prompt).await);
    }
    let b_job = submit("b", "b1").await;
    // B's single job goes right after A's first waiting job, not after all three.
    assert_eq!(b_job["queue_position"], 1, "{b_job}");
    let ids: Vec<String> = a_jobs
        .iter()
        .chain([&b_job, &blocker])
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let mut started = Vec::new();
    for id in &ids {
        let mut job: Value = Value::Null;
        for _ in 0..500 {
            job = s
                .client
                .get(s.url(&format!("/api/v1/jobs/{id}")))
                .bearer_auth("ops")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if job["status"] == "succeeded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.push(job["started_at"].as_f64().unwrap());
    }
    let (a1, a2, a3, b1) = (started[0], started[1], started[2], started[3]);
    assert!(a1 < b1 && b1 < a2 && a2 < a3, "{started:?}");
}
