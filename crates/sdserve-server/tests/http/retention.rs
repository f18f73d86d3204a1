//! Results do not pile up: past `--result-ttl` or over `--max-output-bytes` a
//! job's images and record go together (then it is 404), and results that only
//! travel in a synchronous response (A1111 `save_images: false`, OpenAI
//! `b64_json`) leave nothing on disk.

use std::time::Duration;

use sdserve_server::jobs::job::unix_now;
use sdserve_server::FakeBackend;
use serde_json::{json, Value};

use crate::common::TestServer;
use crate::durability::outputs;

async fn finished_native(s: &TestServer, prompt: &str) -> Value {
    let job: Value = s
        .post("/api/v1/jobs", json!({"prompt": prompt}))
        .await
        .json()
        .await
        .unwrap();
    s.wait_job(job["id"].as_str().unwrap()).await
}

#[tokio::test]
async fn results_expire_after_the_ttl_images_and_record_together() {
    let s = TestServer::with(
        |c| c.result_ttl = Duration::from_secs(60),
        FakeBackend::new(),
    )
    .await;
    let job = finished_native(&s, "short-lived").await;
    let id = job["id"].as_str().unwrap();
    let image_url = job["images"][0]["url"].as_str().unwrap();
    let simple: Value = s
        .post("/generate", json!({"prompt": "also short-lived"}))
        .await
        .json()
        .await
        .unwrap();
    let download = format!("/download/{}", simple["download_id"].as_str().unwrap());
    assert_eq!(outputs(s.dir.path()).0.len(), 2);

    let jobs = &s.app.state().jobs;
    assert_eq!(jobs.sweep_at(unix_now() + 30.0).unwrap(), 0);
    assert_eq!(s.get(image_url).await.status(), 200);
    assert_eq!(jobs.sweep_at(unix_now() + 61.0).unwrap(), 2);
    assert_eq!(outputs(s.dir.path()), (vec![], vec![]));
    for path in [
        format!("/api/v1/jobs/{id}"),
        image_url.to_string(),
        download,
    ] {
        assert_eq!(s.get(&path).await.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn a_zero_ttl_keeps_results_and_the_size_cap_removes_the_oldest_first() {
    // A fake 64×64 PNG is about 12 KiB and a record about 1 KiB: one job fits, two do not.
    let s = TestServer::with(
        |c| {
            c.result_ttl = Duration::ZERO;
            c.max_output_bytes = 20_000;
        },
        FakeBackend::new(),
    )
    .await;
    let mut ids = Vec::new();
    for prompt in ["oldest", "middle", "newest"] {
        ids.push(
            finished_native(&s, prompt).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let jobs = &s.app.state().jobs;
    assert_eq!(jobs.sweep_at(unix_now() + 1e9).unwrap(), 2);
    let (pngs, records) = outputs(s.dir.path());
    assert_eq!((pngs.len(), records), (1, vec![format!("{}.json", ids[2])]));
    for id in &ids[..2] {
        assert_eq!(s.get(&format!("/api/v1/jobs/{id}")).await.status(), 404);
    }
    let newest: Value = s
        .get(&format!("/api/v1/jobs/{}", ids[2]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(newest["status"], "succeeded");
    assert_eq!(jobs.sweep_at(unix_now() + 1e9).unwrap(), 0);
}

#[tokio::test]
async fn response_only_results_leave_no_file() {
    let s = TestServer::start().await;
    // A1111's default (`save_images` omitted) and an explicit false.
    for body in [
        json!({"prompt": "gone"}),
        json!({"prompt": "gone", "save_images": false, "batch_size": 2}),
    ] {
        let resp: Value = s
            .post("/sdapi/v1/txt2img", body)
            .await
            .json()
            .await
            .unwrap();
        assert!(!resp["images"].as_array().unwrap().is_empty(), "{resp}");
        assert_eq!(outputs(s.dir.path()), (vec![], vec![]));
    }
    let resp: Value = s
        .post(
            "/v1/images/generations",
            json!({"prompt": "gone", "response_format": "b64_json"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(resp["data"][0]["b64_json"].is_string(), "{resp}");
    assert_eq!(outputs(s.dir.path()), (vec![], vec![]));

    // Asked to keep them: kept.
    let resp = s
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "kept", "save_images": true}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let resp: Value = s
        .post(
            "/v1/images/generations",
            json!({"prompt": "kept", "response_format": "url"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let (pngs, records) = outputs(s.dir.path());
    assert_eq!((pngs.len(), records.len()), (2, 2));
    let url = resp["data"][0]["url"].as_str().unwrap();
    assert_eq!(reqwest::get(url).await.unwrap().status(), 200);
}
