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
            json!({"prompt": "x", "model": "dall-e-4"}),
        )
        .await,
        404,
        "available: fake-sd",
    )
    .await;
    assert_eq!(
        err,
        json!({"error": {"code": "model_not_found", "param": "model", "type": "invalid_request_error",
            "message": "`model`: no model \"dall-e-4\"; available: fake-sd"}})
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
        (
            json!({"prompt": "x", "output_format": "gif"}),
            "output_format",
        ),
        (
            json!({"prompt": "x", "output_format": "jpeg", "output_compression": 101}),
            "output_compression",
        ),
        (json!({"prompt": "x", "background": "green"}), "background"),
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

/// `b64_json` of each item, decoded.
fn files(body: &Value) -> Vec<Vec<u8>> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| b64(d["b64_json"].as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn output_format_and_compression() {
    let s = TestServer::start().await;
    let generate = |extra: Value| {
        let mut body = json!({"prompt": "x", "seed": 3, "n": 1, "size": "64x64"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s.post("/v1/images/generations", body)
    };
    let png = expected_pngs(&request("x", 3))[0].clone();
    for extra in [
        json!({}),
        json!({"output_format": "png", "output_compression": 100}),
    ] {
        let body: Value = generate(extra).await.json().await.unwrap();
        assert_eq!(
            files(&body)[0],
            png,
            "PNG is the stored file, infotext and all"
        );
    }
    let jpeg = |quality: i64| {
        let req = generate(json!({"output_format": "jpeg", "output_compression": quality}));
        async move { files(&req.await.json::<Value>().await.unwrap()).remove(0) }
    };
    let (high, low) = (jpeg(100).await, jpeg(10).await);
    for file in [&high, &low] {
        assert!(file.starts_with(&[0xff, 0xd8, 0xff]), "{:?}", &file[..4]);
    }
    assert!(
        low.len() < high.len(),
        "compression 10 ({}) vs 100 ({})",
        low.len(),
        high.len()
    );
    assert!(
        jpeg(0).await.starts_with(&[0xff, 0xd8, 0xff]),
        "0 is quality 1"
    );
    let body: Value = generate(json!({"output_format": "webp"}))
        .await
        .json()
        .await
        .unwrap();
    let webp = &files(&body)[0];
    assert_eq!((&webp[..4], &webp[8..12]), (&b"RIFF"[..], &b"WEBP"[..]));

    // `url` serves the same encoding, with its media type; the format is signed.
    let body: Value = generate(json!({"response_format": "url", "output_format": "jpeg",
        "output_compression": 60}))
    .await
    .json()
    .await
    .unwrap();
    let url = body["data"][0]["url"].as_str().unwrap();
    assert!(url.contains("format=jpeg-60"), "{url}");
    let resp = s.client.get(url).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    assert!(resp.bytes().await.unwrap().starts_with(&[0xff, 0xd8, 0xff]));
    let tampered = url.replace("format=jpeg-60", "format=webp");
    assert_error(
        s.client.get(&tampered).send().await.unwrap(),
        403,
        "signature",
    )
    .await;
    let body: Value = generate(json!({"response_format": "url", "output_format": "webp"}))
        .await
        .json()
        .await
        .unwrap();
    let resp = s
        .client
        .get(body["data"][0]["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "image/webp");
    assert!(resp.bytes().await.unwrap().starts_with(b"RIFF"));
}

#[tokio::test]
async fn openai_model_names_and_what_cannot_be_honoured() {
    let s = TestServer::start().await;
    // OpenAI's model names run on the default model (Open WebUI sends dall-e-2).
    let png = expected_pngs(&request("x", 3))[0].clone();
    for model in ["dall-e-2", "dall-e-3", "gpt-image-1"] {
        let resp = s
            .post(
                "/v1/images/generations",
                json!({"prompt": "x", "seed": 3, "model": model, "background": "auto",
                    "stream": false}),
            )
            .await;
        assert_eq!(resp.status(), 200, "{model}");
        assert_eq!(files(&resp.json().await.unwrap())[0], png, "{model}");
    }
    let resp = s
        .post(
            "/v1/images/generations",
            json!({"prompt": "x", "background": "opaque"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    // What cannot be honoured is a 400 naming the field, in OpenAI's shape.
    for (body, param) in [
        (
            json!({"prompt": "x", "background": "transparent"}),
            "background",
        ),
        (json!({"prompt": "x", "stream": true}), "stream"),
        (
            json!({"prompt": "x", "output_compression": 50}),
            "output_compression",
        ),
        (
            json!({"prompt": "x", "output_format": "webp", "output_compression": 80}),
            "output_compression",
        ),
    ] {
        let err = assert_error(
            s.post("/v1/images/generations", body.clone()).await,
            400,
            param,
        )
        .await;
        assert_eq!(
            (
                &err["error"]["type"],
                &err["error"]["param"],
                &err["error"]["code"]
            ),
            (
                &json!("invalid_request_error"),
                &json!(param),
                &json!("unsupported_value")
            ),
            "{body}: {err}"
        );
    }
}
