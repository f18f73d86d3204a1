//! The native dialect, field by field: 202 + Location, status, images, SSE,
//! cancel conflicts, listings, and batching that does not change images.

use std::time::Duration;

use sdserve_server::FakeBackend;
use serde_json::{json, Value};

use crate::common::{assert_error, expected_pngs, request, TestServer};

#[tokio::test]
async fn job_lifecycle_field_by_field() {
    let s = TestServer::start().await;
    let resp = s
        .post(
            "/api/v1/jobs",
            json!({"prompt": "a cat", "seed": 42, "negative_prompt": "dog"}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let accepted: Value = resp.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/api/v1/jobs/{id}"));
    assert!(["queued", "running", "succeeded"].contains(&accepted["status"].as_str().unwrap()));
    assert!(accepted.get("queue_position").is_some());

    let job = s.wait_job(&id).await;
    assert_eq!(job["id"], id);
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["queue_position"], Value::Null);
    assert_eq!(job["progress"], json!({"step": 4, "total": 4}));
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["cancel_requested"], false);
    let params = &job["params"];
    assert_eq!(params["prompt"], "a cat");
    assert_eq!(params["negative_prompt"], "dog");
    assert_eq!(params["seed"], 42);
    assert_eq!(
        (params["width"].as_u64(), params["height"].as_u64()),
        (Some(64), Some(64))
    );
    assert_eq!(
        (params["steps"].as_u64(), params["batch_size"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(params["cfg_scale"], 7.0);
    assert_eq!(params["sampler"], "euler_ancestral");
    assert!(job["created_at"].as_f64().unwrap() > 1.0e9);
    assert!(job["started_at"].as_f64().unwrap() >= job["created_at"].as_f64().unwrap());
    assert!(job["finished_at"].as_f64().unwrap() >= job["started_at"].as_f64().unwrap());
    for key in [
        "queue",
        "text_encoding",
        "denoising",
        "decoding",
        "encoding",
        "total",
    ] {
        assert!(job["timings"][key].as_f64().is_some(), "timings.{key}");
    }
    let images = job["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["seed"], 42);
    let url = images[0]["url"].as_str().unwrap();
    assert_eq!(
        url,
        format!("/api/v1/images/{}", images[0]["id"].as_str().unwrap())
    );

    let png = s.get(url).await;
    assert_eq!(png.status(), 200);
    assert_eq!(png.headers()["content-type"], "image/png");
    let mut want = request("a cat", 42);
    want.negative_prompt = "dog".into();
    assert_eq!(png.bytes().await.unwrap().to_vec(), expected_pngs(&want)[0]);

    // Finished: cancelling is a conflict.
    assert_error(
        s.client
            .post(s.url(&format!("/api/v1/jobs/{id}/cancel")))
            .send()
            .await
            .unwrap(),
        409,
        "already finished",
    )
    .await;
    // Deleting removes the job and its image: both ids are unknown afterwards.
    let files = std::fs::read_dir(s.dir.path()).unwrap().count();
    let resp = s
        .client
        .delete(s.url(&format!("/api/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_error(s.get(&format!("/api/v1/jobs/{id}")).await, 404, "no job").await;
    assert_error(s.get(url).await, 404, "no image").await;
    assert_eq!(std::fs::read_dir(s.dir.path()).unwrap().count(), files - 2);
    assert_error(
        s.client
            .delete(s.url(&format!("/api/v1/jobs/{id}")))
            .send()
            .await
            .unwrap(),
        404,
        "no job",
    )
    .await;
}

#[tokio::test]
async fn all_request_fields_reach_the_engine() {
    let s = TestServer::start().await;
    let body = json!({
        "prompt": "(p:1.2)", "negative_prompt": "n", "seed": 7, "steps": 3, "cfg_scale": 1.5,
        "sampler": "DPM++ 2M SDE Karras", "schedule_type": "beta", "width": 32, "height": 48,
        "batch_size": 2, "prompt_syntax": "a1111", "clip_skip": 1
    });
    let id = s
        .post("/api/v1/jobs", body)
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = s.wait_job(&id).await;
    // The explicit schedule type wins over the legacy name's Karras.
    assert_eq!(job["params"]["sampler"], "dpmpp_2m_sde");
    assert_eq!(job["params"]["schedule_type"], "beta");
    assert_eq!(job["params"]["steps"], 3);
    assert_eq!(job["params"]["cfg_scale"], 1.5);
    assert_eq!(job["params"]["prompt_syntax"], "a1111");
    assert_eq!(job["params"]["clip_skip"], 1);
    assert_eq!(job["images"].as_array().unwrap().len(), 2);
    let mut want = request("(p:1.2)", 7);
    want.prompt_syntax = sdserve_server::engine_api::PromptSyntax::A1111;
    want.clip_skip = 1;
    want.negative_prompt = "n".into();
    want.steps = 3;
    want.cfg_scale = 1.5;
    want.sampler = "dpmpp_2m_sde".parse().unwrap();
    want.schedule_type = "beta".parse().unwrap();
    want.width = 32;
    want.height = 48;
    want.batch_size = 2;
    let expected = expected_pngs(&want);
    for (i, image) in job["images"].as_array().unwrap().iter().enumerate() {
        let got = s
            .get(image["url"].as_str().unwrap())
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(got.to_vec(), expected[i], "image {i}");
    }
}

/// The prompt-reading fields are checked by name: an unknown syntax, a
/// negative clip skip, and an A1111 weight that is no number.
#[tokio::test]
async fn prompt_syntax_and_clip_skip_are_checked() {
    let s = TestServer::start().await;
    for (body, field, message) in [
        (
            json!({"prompt": "p", "prompt_syntax": "comfy"}),
            "prompt_syntax",
            "unknown variant",
        ),
        (
            json!({"prompt": "p", "clip_skip": -1}),
            "clip_skip",
            "must be 0 or more",
        ),
        (
            json!({"prompt": "ok", "negative_prompt": "(x:1..2)", "prompt_syntax": "a1111"}),
            "negative_prompt",
            "emphasis weight \\\"1..2\\\" is not a number",
        ),
    ] {
        let body = assert_error(s.post("/api/v1/jobs", body).await, 422, message).await;
        assert_eq!(body["field"], field, "{body}");
    }
    // Plain syntax reads the same text as words.
    let id = s
        .submit_job(json!({"prompt": "ok", "negative_prompt": "(x:1..2)"}))
        .await;
    assert_eq!(s.wait_job(&id).await["status"], "succeeded");
}

#[tokio::test]
async fn random_seed_is_reported() {
    let s = TestServer::start().await;
    let id = s.submit_job(json!({"prompt": "x"})).await;
    let job = s.wait_job(&id).await;
    assert_eq!(job["params"]["seed"], Value::Null);
    let seed = job["images"][0]["seed"].as_u64().unwrap();
    let got = s
        .get(job["images"][0]["url"].as_str().unwrap())
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.to_vec(), expected_pngs(&request("x", seed))[0]);
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let s = TestServer::start().await;
    let unknown = uuid::Uuid::new_v4();
    let body = assert_error(
        s.get(&format!("/api/v1/jobs/{unknown}")).await,
        404,
        "no job",
    )
    .await;
    assert_eq!(body["error_type"], "not_found");
    assert_error(
        s.get(&format!("/api/v1/images/{unknown}")).await,
        404,
        "no image",
    )
    .await;
    assert_error(
        s.client
            .delete(s.url(&format!("/api/v1/jobs/{unknown}")))
            .send()
            .await
            .unwrap(),
        404,
        "no job",
    )
    .await;
    // `..` segments are resolved by the client before they reach us: no such route.
    assert_eq!(s.get("/api/v1/images/../../etc/passwd").await.status(), 404);
    for bad in [
        "abc",
        "..%2f..%2fetc",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "67e5504410b1426f9247bb680e5fe0c8",
    ] {
        let body = assert_error(s.get(&format!("/api/v1/images/{bad}")).await, 400, "UUID").await;
        assert_eq!(body["error_type"], "invalid_id");
        assert_error(s.get(&format!("/api/v1/jobs/{bad}")).await, 400, "UUID").await;
    }
    assert_error(
        s.post("/api/v1/jobs", json!({"prompt": "x", "bogus": 1}))
            .await,
        422,
        "bogus",
    )
    .await;
}

#[tokio::test]
async fn listings() {
    let s = TestServer::start().await;
    let models: Value = s.get("/api/v1/models").await.json().await.unwrap();
    assert_eq!(
        models,
        json!({"models": [{"id": "fake-sd", "sha256": null, "default": true, "loaded": true,
            "native_width": 64, "native_height": 64,
            "default_steps": 4, "default_cfg_scale": 7.0, "vae_scale_factor": 8}]})
    );
    let samplers: Value = s.get("/api/v1/samplers").await.json().await.unwrap();
    let ids: Vec<_> = samplers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "dpmpp_2m",
            "dpmpp_2m_sde",
            "dpmpp_3m_sde",
            "euler",
            "euler_ancestral",
            "lms",
            "heun",
            "dpm2",
            "dpm2_ancestral",
            "unipc",
            "lcm",
            "ddim",
            "plms"
        ]
    );
    assert_eq!(samplers[4]["label"], "Euler a");
    let types = |i: usize| -> Vec<String> {
        samplers[i]["schedule_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                format!(
                    "{}={}",
                    t["id"].as_str().unwrap(),
                    t["label"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        types(0),
        [
            "automatic=Automatic",
            "karras=Karras",
            "exponential=Exponential",
            "sgm_uniform=SGM Uniform",
            "beta=Beta"
        ]
    );
    assert_eq!(types(10), ["automatic=Automatic"]);
    assert_eq!(
        types(11),
        ["automatic=Automatic", "sgm_uniform=SGM Uniform"]
    );
}

/// Reads SSE events from a response until the stream ends.
async fn read_events(mut resp: reqwest::Response) -> Vec<(String, Value)> {
    let mut buf = String::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    buf.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_string());
                }
                if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).ok();
                }
            }
            Some((name?, data?))
        })
        .collect()
}

#[tokio::test]
async fn events_stream_state_and_progress() {
    let s = TestServer::with(
        |_| {},
        FakeBackend::new().with_step_delay(Duration::from_millis(40)),
    )
    .await;
    // Occupy the worker so the watched job is seen queued first.
    s.post("/api/v1/jobs", json!({"prompt": "first", "seed": 1}))
        .await;
    let id = s
        .submit_job(json!({"prompt": "second", "seed": 2, "steps": 3}))
        .await;
    let resp = s.get(&format!("/api/v1/jobs/{id}/events")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = read_events(resp).await;
    let states: Vec<&str> = events
        .iter()
        .filter(|(n, _)| n == "state")
        .map(|(_, d)| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "running", "succeeded"], "{events:?}");
    let steps: Vec<u64> = events
        .iter()
        .filter(|(n, d)| n == "progress" && d["status"] == "running")
        .filter_map(|(_, d)| d["progress"]["step"].as_u64())
        .collect();
    assert!(
        !steps.is_empty() && steps.windows(2).all(|w| w[0] <= w[1]),
        "{steps:?}"
    );
    assert_eq!(
        events.last().unwrap().1["images"].as_array().unwrap().len(),
        1
    );
    // A finished job streams its final state once.
    let again = read_events(s.get(&format!("/api/v1/jobs/{id}/events")).await).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1["status"], "succeeded");
}

#[tokio::test]
async fn compatible_jobs_share_a_batch_with_unchanged_images() {
    let fake = FakeBackend::new().with_step_delay(Duration::from_millis(30));
    let s = TestServer::with(|_| {}, fake).await;
    // A different-size job holds the worker while three compatible ones queue up.
    s.post(
        "/api/v1/jobs",
        json!({"prompt": "blocker", "width": 32, "seed": 0}),
    )
    .await;
    let mut ids = Vec::new();
    for seed in 1..=3u64 {
        let v: Value = s
            .post(
                "/api/v1/jobs",
                json!({"prompt": format!("p{seed}"), "seed": seed}),
            )
            .await
            .json()
            .await
            .unwrap();
        ids.push((seed, v["id"].as_str().unwrap().to_string()));
    }
    for (seed, id) in &ids {
        let job = s.wait_job(id).await;
        let got = s
            .get(job["images"][0]["url"].as_str().unwrap())
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            got.to_vec(),
            expected_pngs(&request(&format!("p{seed}"), *seed))[0]
        );
    }
    assert_eq!(s.fake.batch_sizes(), [1, 3]);
    let text = s.get("/metrics").await.text().await.unwrap();
    assert!(text.contains("sd_batch_size_sum 4"), "{text}");
}

#[tokio::test]
async fn engine_failure_and_panic_fail_the_job_not_the_server() {
    let s = TestServer::start().await;
    let prompt = format!("x {}", FakeBackend::FAIL_MARKER);
    let id = s.submit_job(json!({"prompt": prompt})).await;
    let job = s.wait_job(&id).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["kind"], "generation");
    let prompt = format!("x {}", FakeBackend::PANIC_MARKER);
    let id = s.submit_job(json!({"prompt": prompt})).await;
    let job = s.wait_job(&id).await;
    assert_eq!(job["status"], "failed");
    assert!(job["error"]["message"]
        .as_str()
        .unwrap()
        .contains("panicked"));
    // The worker lives on.
    let id = s.submit_job(json!({"prompt": "fine"})).await;
    assert_eq!(s.wait_job(&id).await["status"], "succeeded");
    assert_eq!(
        s.metric("sd_request_failures_total{reason=\"generation\"}")
            .await,
        1.0
    );
    assert_eq!(
        s.metric("sd_request_failures_total{reason=\"internal\"}")
            .await,
        1.0
    );
}
