//! Results outlive the server: downloads and job status work after a restart
//! on the same output directory.

use sdserve_server::FakeBackend;
use serde_json::{json, Value};

use crate::common::{expected_pngs, request, TestServer};

#[tokio::test]
async fn downloads_and_status_survive_a_restart() {
    let first = TestServer::start().await;
    let dir = first.dir.clone();
    let simple: Value = first
        .post("/generate", json!({"prompt": "kept", "seed": 8}))
        .await
        .json()
        .await
        .unwrap();
    let download_id = simple["download_id"].as_str().unwrap().to_string();
    let job: Value = first
        .post("/api/v1/jobs", json!({"prompt": "kept too", "seed": 9}))
        .await
        .json()
        .await
        .unwrap();
    let job_id = job["id"].as_str().unwrap().to_string();
    let before = first.wait_job(&job_id).await;
    first.stop().await.unwrap();

    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.contains(&format!("{download_id}.png")), "{files:?}");
    assert!(files.contains(&format!("{job_id}.json")), "{files:?}");
    assert!(files.iter().all(|f| !f.starts_with(".tmp")), "{files:?}");

    let second = TestServer::on_dir(dir, |_| {}, FakeBackend::new()).await;
    let png = second.get(&format!("/download/{download_id}")).await;
    assert_eq!(png.status(), 200);
    // /generate's own defaults: scale 7.5, steps 50.
    let mut kept = request("kept", 8);
    kept.cfg_scale = 7.5;
    kept.steps = 50;
    assert_eq!(png.bytes().await.unwrap().to_vec(), expected_pngs(&kept)[0]);
    let after: Value = second
        .get(&format!("/api/v1/jobs/{job_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after, before);
    let image = second
        .get(after["images"][0]["url"].as_str().unwrap())
        .await;
    assert_eq!(
        image.bytes().await.unwrap().to_vec(),
        expected_pngs(&request("kept too", 9))[0]
    );
    // Its events replay the final state; cancelling it is a conflict.
    let events = second
        .get(&format!("/api/v1/jobs/{job_id}/events"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        events.contains("event: state") && events.contains("succeeded"),
        "{events}"
    );
    let resp = second
        .client
        .post(second.url(&format!("/api/v1/jobs/{job_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    // A job known only from its record is deleted from disk too.
    let resp = second
        .client
        .delete(second.url(&format!("/api/v1/jobs/{job_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        second.get(&format!("/api/v1/jobs/{job_id}")).await.status(),
        404
    );
    assert!(!second.dir.path().join(format!("{job_id}.json")).exists());
}
