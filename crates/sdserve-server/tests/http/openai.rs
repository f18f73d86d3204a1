//! The OpenAI images dialect, field by field, with OpenAI's error shape.

use serde_json::{json, Value};

use crate::common::{assert_error, b64, expected_pngs, request, TestServer};

#[tokio::test]
async fn generations_b64_field_by_field() {
    let s = TestServer::start().await;
    let resp = s
        .post(
            "/v1/images/generations",
            json!({
                "prompt": "a cat", "model": "fake-sd", "n": 2, "size": "32x48",
                "response_format": "b64_json", "user": "u1", "quality": "hd",
                "negative_prompt": "dog", "seed": 5, "steps": 2, "cfg_scale": 3.0, "sampler": "ddim"
            }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let mut want = request("a cat", 5);
    want.negative_prompt = "dog".into();
    want.batch_size = 2;
    want.width = 32;
    want.height = 48;
    want.steps = 2;
    want.cfg_scale = 3.0;
    want.sampler = "ddim".parse().unwrap();
    let expected = expected_pngs(&want);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(b64(item["b64_json"].as_str().unwrap()), expected[i]);
        assert!(item.get("url").is_none());
        assert_eq!(item["revised_prompt"], "a cat");
        assert_eq!(item["seed"], 5);
    }
}

#[tokio::test]
async fn defaults_and_url_format() {
    let s = TestServer::start().await;
    let body: Value = s
        .post(
            "/v1/images/generations",
            json!({"prompt": "x", "seed": 3, "response_format": "url"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let url = body["data"][0]["url"].as_str().unwrap();
    assert!(url.starts_with(&s.base), "{url}");
    let png = s
        .client
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(png.to_vec(), expected_pngs(&request("x", 3))[0]);
    let body: Value = s
        .post(
            "/v1/images/generations",
            json!({"prompt": "x", "size": "auto"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn errors_in_openai_shape() {
    let s = TestServer::start().await;
    let err = assert_error(
        s.post(
            "/v1/images/generations",
            json!({"prompt": "x", "model": "dall-e-3"}),
        )
        .await,
        404,
        "available: fake-sd",
    )
    .await;
    assert_eq!(
        err,
        json!({"error": {"code": "model_not_found", "param": "model", "type": "invalid_request_error",
            "message": "`model`: no model \"dall-e-3\"; available: fake-sd"}})
    );
    for (body, param) in [
        (json!({"prompt": "x", "size": "big"}), "size"),
        (json!({"prompt": "x", "size": "0x64"}), "size"),
        (json!({"prompt": "x", "size": "63x64"}), "size"),
        (json!({"prompt": "x", "n": 0}), "n"),
        (json!({"prompt": "x", "n": 99}), "n"),
        (
            json!({"prompt": "x", "response_format": "gif"}),
            "response_format",
        ),
        (json!({"prompt": "x", "cfg_scale": 1e308}), "cfg_scale"),
        (json!({"prompt": 5}), "prompt"),
        (json!({}), "prompt"),
    ] {
        let resp = s.post("/v1/images/generations", body.clone()).await;
        let err = assert_error(resp, 422, "").await;
        let e = &err["error"];
        assert_eq!(e["type"], "invalid_request_error", "{body}: {err}");
        assert_eq!(e["param"], param, "{body}: {err}");
        assert!(e["message"].as_str().unwrap().contains(param), "{err}");
        assert!(e["code"].is_string());
    }
    let err = assert_error(
        s.post_raw("/v1/images/generations", "not json").await,
        400,
        "JSON",
    )
    .await;
    assert_eq!(err["error"]["code"], "invalid_json");
}

#[tokio::test]
async fn models_list() {
    let s = TestServer::start().await;
    let body: Value = s.get("/v1/models").await.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "fake-sd");
    assert_eq!(body["data"][0]["object"], "model");
    assert_eq!(body["data"][0]["owned_by"], "sdserve");
    assert!(body["data"][0]["created"].as_u64().is_some());
}
