//! Bad input of every kind gets a 4xx naming the field, in every dialect; never
//! a 5xx, and the server stays up.

use serde_json::{json, Value};

use crate::common::TestServer;

/// (path, body, the field or word the message must name).
fn cases() -> Vec<(&'static str, Value, &'static str)> {
    let mut out = Vec::new();
    let generic: Vec<(Value, &'static str)> = vec![
        (json!({"width": 0}), "width"),
        (json!({"width": -64}), "width"),
        (json!({"height": 0}), "height"),
        (json!({"height": -8}), "height"),
        (json!({"width": 65}), "width"),
        (json!({"height": 100}), "height"),
        (json!({"width": 4096}), "width"),
        (json!({"width": 2048, "height": 2048}), "width"),
        (json!({"width": 1e30}), "width"),
        (json!({"width": "64"}), "width"),
        (json!({"steps": 0}), "steps"),
        (json!({"steps": -1}), "steps"),
        (json!({"steps": 151}), "steps"),
        (json!({"steps": 1e20}), "steps"),
        (json!({"steps": 2.5}), "steps"),
        (json!({"cfg_scale": 1e308}), "cfg_scale"),
        (json!({"cfg_scale": -1}), "cfg_scale"),
        (json!({"cfg_scale": "high"}), "cfg_scale"),
        (json!({"batch_size": 0}), "batch_size"),
        (json!({"batch_size": 9}), "batch_size"),
        (json!({"prompt": 12}), "prompt"),
        (json!({"prompt": "x".repeat(9000)}), "prompt"),
        (
            json!({"negative_prompt": "x".repeat(9000)}),
            "negative_prompt",
        ),
        (json!({"seed": "abc"}), "seed"),
        (json!({"seed": 1.5}), "seed"),
    ];
    for (patch, field) in generic {
        // Native and A1111 share these field names.
        let mut native = json!({"prompt": "p"});
        let mut a1111 = json!({"prompt": "p"});
        for (k, v) in patch.as_object().unwrap() {
            native[k] = v.clone();
            a1111[k] = v.clone();
        }
        out.push(("/api/v1/jobs", native, field));
        out.push(("/sdapi/v1/txt2img", a1111, field));
    }
    out.extend([
        (
            "/api/v1/jobs",
            json!({"prompt": "p", "sampler": "DPM fast"}),
            "sampler",
        ),
        ("/api/v1/jobs", json!({"prompt": "p", "seed": -1}), "seed"),
        (
            "/sdapi/v1/txt2img",
            json!({"sampler_name": "unknown"}),
            "sampler_name",
        ),
        (
            "/sdapi/v1/txt2img",
            json!({"sampler_index": "unknown"}),
            "sampler_index",
        ),
        (
            "/sdapi/v1/txt2img",
            json!({"batch_size": 4, "n_iter": 4}),
            "n_iter",
        ),
        ("/sdapi/v1/txt2img", json!({"n_iter": -1}), "n_iter"),
        (
            "/v1/images/generations",
            json!({"prompt": "p", "size": "-64x64"}),
            "size",
        ),
        (
            "/v1/images/generations",
            json!({"prompt": "p", "size": "64x64x64"}),
            "size",
        ),
        (
            "/v1/images/generations",
            json!({"prompt": "p", "size": "9999999999999999999999x8"}),
            "size",
        ),
        (
            "/v1/images/generations",
            json!({"prompt": "p", "sampler": "nope"}),
            "sampler",
        ),
        (
            "/v1/images/generations",
            json!({"prompt": "p", "steps": 0}),
            "steps",
        ),
        (
            "/v1/images/generations",
            json!({"prompt": "p", "n": "two"}),
            "n",
        ),
        ("/generate", json!({"prompt": "p", "steps": 1000}), "steps"),
        ("/generate", json!({"prompt": "p", "scale": -3}), "scale"),
        ("/generate", json!({"prompt": "p", "seed": -5}), "seed"),
        ("/generate", json!({"prompt": ["p"]}), "prompt"),
        ("/generate", json!(null), "body"),
        ("/generate", json!([1, 2]), "body"),
    ]);
    out
}

#[tokio::test]
async fn every_bad_field_is_a_4xx_naming_it() {
    let s = TestServer::start().await;
    for (path, body, field) in cases() {
        let resp = s.post(path, body.clone()).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 422, "{path} {body}: {text}");
        assert!(
            text.contains(field),
            "{path} {body}: {field:?} not named in {text}"
        );
    }
    assert_eq!(s.get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn malformed_bodies_are_400_and_large_ones_413() {
    let s = TestServer::with(|c| c.limits.max_body_bytes = 4096, Default::default()).await;
    for path in [
        "/api/v1/jobs",
        "/sdapi/v1/txt2img",
        "/v1/images/generations",
        "/generate",
        "/sdapi/v1/png-info",
        "/sdapi/v1/options",
    ] {
        for raw in [
            "",
            "{",
            "{\"prompt\": NaN}",
            "{\"cfg_scale\": Infinity}",
            "{\"prompt\": \"x\"} {}",
            "\u{0}",
        ] {
            if path == "/sdapi/v1/png-info" && raw.ends_with("{}") {
                continue; // its missing `image` field is reported first (422)
            }
            let resp = s.post_raw(path, raw).await;
            assert_eq!(resp.status(), 400, "{path} {raw:?}");
        }
        let huge = format!("{{\"prompt\": \"{}\"}}", "x".repeat(10_000));
        let resp = s
            .client
            .post(s.url(path))
            .header("content-type", "application/json")
            .body(huge)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413, "{path}");
        assert!(resp.text().await.unwrap().contains("4096"));
    }
    // Non-JSON content types are parsed as JSON all the same.
    let resp = s
        .client
        .post(s.url("/api/v1/jobs"))
        .header("content-type", "text/plain")
        .body("{\"prompt\": \"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
}

#[tokio::test]
async fn configured_limits_apply() {
    let s = TestServer::with(
        |c| {
            c.limits.max_width = 32;
            c.limits.max_steps = 2;
            c.limits.max_batch = 1;
            c.limits.max_prompt_chars = 5;
            c.limits.max_pixels = 32 * 16;
        },
        Default::default(),
    )
    .await;
    for (body, field) in [
        (json!({"prompt": "p"}), "width"),
        (json!({"prompt": "p", "width": 40, "height": 16}), "width"),
        (json!({"prompt": "p", "width": 32, "height": 32}), "width"),
        (
            json!({"prompt": "p", "width": 32, "height": 16, "steps": 3}),
            "steps",
        ),
        (
            json!({"prompt": "p", "width": 32, "height": 16, "steps": 2, "batch_size": 2}),
            "batch_size",
        ),
        (
            json!({"prompt": "toolong", "width": 32, "height": 16, "steps": 2}),
            "prompt",
        ),
    ] {
        let resp = s.post("/api/v1/jobs", body.clone()).await;
        assert_eq!(resp.status(), 422, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["field"], field, "{err}");
    }
    let resp = s
        .post(
            "/api/v1/jobs",
            json!({"prompt": "ok", "width": 32, "height": 16, "steps": 2}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let doc: Value = s.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(
        doc["components"]["schemas"]["CreateJob"]["properties"]["width"]["maximum"],
        32
    );
    assert_eq!(
        doc["components"]["schemas"]["Txt2ImgRequest"]["properties"]["steps"]["maximum"],
        2
    );
}

#[tokio::test]
async fn no_route_and_wrong_method() {
    let s = TestServer::start().await;
    assert_eq!(s.get("/nope").await.status(), 404);
    let resp = s.get("/generate").await;
    assert_eq!(resp.status(), 405);
    let resp = s
        .client
        .put(s.url("/v1/images/generations"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "method_not_allowed");
}
