//! The simple `/generate` + `/download/{id}` dialect.

use serde_json::{json, Value};

use crate::common::{assert_error, expected_pngs, request, TestServer};

#[tokio::test]
async fn generate_then_download() {
    let s = TestServer::start().await;
    let resp = s
        .post(
            "/generate",
            json!({"prompt": "a cat", "scale": 2.5, "steps": 3, "seed": 11}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let id = body["download_id"].as_str().unwrap();
    assert!(uuid::Uuid::try_parse(id).is_ok());
    assert!(body["time"].as_f64().unwrap() >= 0.0);
    let png = s.get(&format!("/download/{id}")).await;
    assert_eq!(png.status(), 200);
    assert_eq!(png.headers()["content-type"], "image/png");
    let mut want = request("a cat", 11);
    want.cfg_scale = 2.5;
    want.steps = 3;
    assert_eq!(png.bytes().await.unwrap().to_vec(), expected_pngs(&want)[0]);
}

#[tokio::test]
async fn defaults_and_errors() {
    let s = TestServer::start().await;
    let body: Value = s
        .post("/generate", json!({"prompt": "x", "seed": 4}))
        .await
        .json()
        .await
        .unwrap();
    let png = s
        .get(&format!(
            "/download/{}",
            body["download_id"].as_str().unwrap()
        ))
        .await;
    // The write-up's defaults (scale 7.5, steps 50), not the model's (7, 4).
    let mut want = request("x", 4);
    want.cfg_scale = 7.5;
    want.steps = 50;
    assert_eq!(png.bytes().await.unwrap().to_vec(), expected_pngs(&want)[0]);

    let unknown = uuid::Uuid::new_v4();
    let err = assert_error(
        s.get(&format!("/download/{unknown}")).await,
        404,
        "no image",
    )
    .await;
    assert!(err["detail"].is_string());
    assert_error(s.get("/download/not-an-id").await, 400, "UUID").await;
    assert_error(s.get("/download/..%2F..%2Fetc%2Fpasswd").await, 400, "UUID").await;
    let err = assert_error(
        s.post("/generate", json!({"scale": 1})).await,
        422,
        "prompt",
    )
    .await;
    assert_eq!(err["detail"][0]["loc"], json!(["body", "prompt"]));
    let err = assert_error(
        s.post("/generate", json!({"prompt": "x", "scale": 99}))
            .await,
        422,
        "scale",
    )
    .await;
    assert_eq!(err["detail"][0]["loc"], json!(["body", "scale"]));
}
