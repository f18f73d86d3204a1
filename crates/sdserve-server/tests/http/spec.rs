//! The server takes exactly what `/openapi.json` allows, field by field: the
//! edges schemathesis probes (`tests/clients/run_schemathesis.py`), pinned here
//! so they hold without Python.

use serde_json::{json, Value};

use crate::common::{assert_error, TestServer};

/// Status of a POST with this JSON body.
async fn status(s: &TestServer, path: &str, body: Value) -> u16 {
    s.post(path, body).await.status().as_u16()
}

#[tokio::test]
async fn u64_seeds_span_u64_and_stop_there() {
    let s = TestServer::start().await;
    let doc: Value = s.get("/openapi.json").await.json().await.unwrap();
    let seed = &doc["components"]["schemas"]["CreateJob"]["properties"]["seed"];
    assert_eq!(seed["maximum"].as_u64(), Some(u64::MAX));
    for (path, ok) in [
        ("/api/v1/jobs", 202),
        ("/v1/images/generations", 200),
        ("/generate", 200),
    ] {
        // Above i64 but within u64: what the schema allows is accepted.
        let body = json!({"prompt": "p", "seed": u64::MAX});
        assert_eq!(status(&s, path, body).await, ok, "{path}");
        let body = json!({"prompt": "p", "seed": 9_223_372_036_854_775_808u64});
        assert_eq!(status(&s, path, body).await, ok, "{path}");
        for bad in ["18446744073709551616", "-1", "1e30"] {
            let raw: &'static str =
                Box::leak(format!(r#"{{"prompt": "p", "seed": {bad}}}"#).into());
            assert_error(s.post_raw(path, raw).await, 422, "seed").await;
        }
    }
}

#[tokio::test]
async fn sampler_names_are_the_listed_ones_exactly() {
    let s = TestServer::start().await;
    for name in [
        "Euler a",
        "euler_ancestral",
        "k_euler_a",
        "DPM++ 2M Karras",
        "ddim",
    ] {
        assert_eq!(
            status(&s, "/api/v1/jobs", json!({"prompt": "p", "sampler": name})).await,
            202,
            "{name}"
        );
    }
    for name in ["euler a", "EULER", " Euler", "Euler a ", ""] {
        let native = s.post("/api/v1/jobs", json!({"prompt": "p", "sampler": name}));
        assert_error(native.await, 422, "sampler").await;
        let openai = s.post(
            "/v1/images/generations",
            json!({"prompt": "p", "sampler": name}),
        );
        assert_error(openai.await, 422, "sampler").await;
        let a1111 = s.post("/sdapi/v1/txt2img", json!({"sampler_name": name}));
        assert_error(a1111.await, 422, "sampler_name").await;
    }
}

#[tokio::test]
async fn a1111_schedulers_and_their_rule() {
    let s = TestServer::start().await;
    for (sampler, scheduler) in [
        ("Euler", "automatic"),
        ("Euler", "Automatic"),
        ("DPM++ 2M", "karras"),
        ("dpmpp_2m_karras", "Karras"),
        ("Euler", "karras"),
        ("Euler a", "Exponential"),
        ("UniPC", "Beta"),
        ("DDIM", "sgm_uniform"),
        ("PLMS", "SGM Uniform"),
        ("LCM", "automatic"),
        ("LMS Karras", "automatic"),
        ("DPM++ 3M SDE Exponential", "beta"),
    ] {
        let body = json!({"sampler_name": sampler, "scheduler": scheduler});
        assert_eq!(
            status(&s, "/sdapi/v1/txt2img", body).await,
            200,
            "{sampler} {scheduler}"
        );
    }
    // sampler_index stands in for an absent or null sampler_name.
    let body = json!({"sampler_name": null, "sampler_index": "DPM++ 2M", "scheduler": "karras"});
    assert_eq!(status(&s, "/sdapi/v1/txt2img", body).await, 200);
    // An unknown alias is refused even when sampler_name decides.
    let body = json!({"sampler_name": "Euler", "sampler_index": "__not_in_enum__"});
    assert_error(
        s.post("/sdapi/v1/txt2img", body).await,
        422,
        "sampler_index",
    )
    .await;
    for body in [
        json!({"scheduler": "KARRAS", "sampler_name": "DPM++ 2M"}),
        json!({"scheduler": ""}),
        json!({"scheduler": " automatic"}),
        json!({"scheduler": "uniform"}),
        // DDIM, PLMS and LCM have no sigmas to space; LCM ignores the spacing.
        json!({"scheduler": "karras", "sampler_name": "DDIM"}),
        json!({"scheduler": "beta", "sampler_name": "PLMS"}),
        json!({"scheduler": "sgm_uniform", "sampler_name": "LCM"}),
        json!({"scheduler": "exponential", "sampler_name": null, "sampler_index": "LCM"}),
    ] {
        assert_error(s.post("/sdapi/v1/txt2img", body).await, 422, "scheduler").await;
    }
    // LCM runs at most the model's original_inference_steps.
    let body = json!({"sampler_name": "LCM", "steps": 51});
    assert_error(
        s.post("/sdapi/v1/txt2img", body).await,
        422,
        "at most 50 steps",
    )
    .await;
}

#[tokio::test]
async fn a1111_batch_times_iterations_within_the_limit() {
    let s = TestServer::with(|c| c.limits.max_batch = 4, Default::default()).await;
    let doc: Value = s.get("/openapi.json").await.json().await.unwrap();
    let rules = doc["components"]["schemas"]["Txt2ImgRequest"]["allOf"].clone();
    // Four schedule-type rules, LCM's steps, and two n_iter rules.
    assert_eq!(rules.as_array().unwrap().len(), 7, "{rules}");
    for (batch, n_iter, ok) in [
        (2, 2, true),
        (4, 1, true),
        (1, 4, true),
        (3, 2, false),
        (2, 3, false),
    ] {
        let resp = s
            .post(
                "/sdapi/v1/txt2img",
                json!({"batch_size": batch, "n_iter": n_iter}),
            )
            .await;
        if ok {
            assert_eq!(resp.status(), 200, "{batch}×{n_iter}");
        } else {
            assert_error(resp, 422, "n_iter").await;
        }
    }
}

#[tokio::test]
async fn openai_size_is_spelled_as_the_pattern() {
    let s = TestServer::start().await;
    let doc: Value = s.get("/openapi.json").await.json().await.unwrap();
    let pattern = doc["components"]["schemas"]["ImageGenerationRequest"]["properties"]["size"]
        ["pattern"]
        .as_str()
        .unwrap()
        .to_string();
    let pattern = regex::Regex::new(&pattern).unwrap();
    for size in ["auto", "64x64", "8x2048", "2048x8"] {
        assert!(pattern.is_match(size), "{size}");
        let body = json!({"prompt": "p", "size": size});
        assert_eq!(
            status(&s, "/v1/images/generations", body).await,
            200,
            "{size}"
        );
    }
    for size in [
        "064x64", "64X64", " 64x64", "64x64 ", "+64x64", "64x 64", "60x64", "2056x8", "Auto",
    ] {
        assert!(!pattern.is_match(size), "{size}");
        let body = json!({"prompt": "p", "size": size});
        assert_error(s.post("/v1/images/generations", body).await, 422, "size").await;
    }
}

#[tokio::test]
async fn png_info_image_is_strict_base64() {
    let s = TestServer::start().await;
    for image in ["", " QUJD\n", "data:image/png;base64,QUJD", "data:;base64,"] {
        let resp = s.post("/sdapi/v1/png-info", json!({"image": image})).await;
        assert_eq!(resp.status(), 200, "{image:?}");
    }
    for image in ["data:image/png,QUJD", "QR==", "QQ", "QU JD", "\u{a0}QUJD"] {
        let resp = s.post("/sdapi/v1/png-info", json!({"image": image})).await;
        assert_error(resp, 422, "image").await;
    }
}

#[tokio::test]
async fn a1111_options_and_progress_refuse_what_the_schema_does() {
    let s = TestServer::start().await;
    for body in [
        json!({}),
        json!({"sd_model_checkpoint": null, "s_noise": 1}),
        json!({"sd_model_checkpoint": "fake-sd"}),
    ] {
        assert_eq!(status(&s, "/sdapi/v1/options", body).await, 200);
    }
    // A key the schema does not list is refused, as the schema says.
    let resp = s
        .post(
            "/sdapi/v1/options",
            json!({"sd_model_checkpoint": null, "x": 1}),
        )
        .await;
    assert_error(resp, 422, "x is not a setting sdserve has").await;
    let resp = s
        .post(
            "/sdapi/v1/options",
            json!({"sd_model_checkpoint": "FAKE-SD"}),
        )
        .await;
    assert_error(resp, 404, "sd_model_checkpoint").await;
    let resp = s
        .post("/sdapi/v1/options", json!({"sd_model_checkpoint": 1}))
        .await;
    assert_error(resp, 422, "sd_model_checkpoint").await;
    for query in [
        "",
        "?skip_current_image=true",
        "?skip_current_image=false&other=1",
    ] {
        let resp = s.get(&format!("/sdapi/v1/progress{query}")).await;
        assert_eq!(resp.status(), 200, "{query}");
    }
    for query in [
        "?skip_current_image=null",
        "?skip_current_image=1",
        "?skip_current_image=true&skip_current_image=true",
    ] {
        let resp = s.get(&format!("/sdapi/v1/progress{query}")).await;
        assert_error(resp, 422, "skip_current_image").await;
    }
}
