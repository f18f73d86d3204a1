//! The AUTOMATIC1111 dialect, field by field, with A1111's error shapes.

use std::time::Duration;

use base64::Engine as _;
use sdserve_server::engine_api::{GenerateRequest, PromptSyntax};
use sdserve_server::FakeBackend;
use serde_json::{json, Value};

use crate::common::{assert_error, b64, expected_pngs, request, TestServer};

#[tokio::test]
async fn txt2img_field_by_field() {
    let s = TestServer::start().await;
    let resp = s
        .post(
            "/sdapi/v1/txt2img",
            json!({
                "prompt": "a cat", "negative_prompt": "dog", "seed": 42, "sampler_name": "Euler a",
                "scheduler": "Automatic", "steps": 3, "cfg_scale": 5.5, "width": 32, "height": 48,
                "batch_size": 1, "n_iter": 1, "send_images": true, "save_images": false,
                "enable_hr": false, "alwayson_scripts": {}, "restore_faces": false, "eta": 1.0,
                "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"}
            }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let mut want = request("a cat", 42);
    want.negative_prompt = "dog".into();
    want.sampler = "euler_ancestral".parse().unwrap();
    want.steps = 3;
    want.cfg_scale = 5.5;
    want.width = 32;
    want.height = 48;
    let images = body["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(b64(images[0].as_str().unwrap()), expected_pngs(&want)[0]);

    let p = &body["parameters"];
    assert_eq!(p["prompt"], "a cat");
    assert_eq!(p["seed"], 42);
    assert_eq!(p["sampler_name"], "Euler a");
    assert_eq!(p["steps"], 3);
    assert_eq!(p["cfg_scale"], 5.5);
    assert_eq!(
        (p["width"].as_u64(), p["height"].as_u64()),
        (Some(32), Some(48))
    );

    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["prompt"], "a cat");
    assert_eq!(info["all_prompts"], json!(["a cat"]));
    assert_eq!(info["negative_prompt"], "dog");
    assert_eq!(info["all_negative_prompts"], json!(["dog"]));
    assert_eq!(info["seed"], 42);
    assert_eq!(info["all_seeds"], json!([42]));
    assert_eq!(info["subseed"], -1);
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64()),
        (Some(32), Some(48))
    );
    assert_eq!(info["sampler_name"], "Euler a");
    assert_eq!(info["cfg_scale"], 5.5);
    assert_eq!(info["steps"], 3);
    assert_eq!(info["batch_size"], 1);
    assert_eq!(info["sd_model_name"], "fake-sd");
    assert_eq!(info["index_of_first_image"], 0);
    assert_eq!(info["job_timestamp"].as_str().unwrap().len(), 14);
    let infotext = info["infotexts"][0].as_str().unwrap();
    assert!(
        infotext.starts_with("a cat\nNegative prompt: dog\nSteps: 3, Sampler: Euler a"),
        "{infotext}"
    );
    assert!(infotext.contains("Seed: 42"));
    for key in [
        "restore_faces",
        "styles",
        "clip_skip",
        "extra_generation_params",
        "version",
    ] {
        assert!(info.get(key).is_some(), "info.{key}");
    }
}

#[tokio::test]
async fn defaults_random_seed_batches_and_send_images() {
    let s = TestServer::start().await;
    let body: Value = s
        .post("/sdapi/v1/txt2img", json!({"prompt": "x"}))
        .await
        .json()
        .await
        .unwrap();
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    let seed = info["seed"].as_u64().unwrap();
    assert_eq!(info["all_seeds"], json!([seed]));
    // A1111's API defaults (StableDiffusionProcessing's), not the model's
    // (the fake model's are 4 steps, CFG 7, 64x64).
    assert_eq!(info["steps"], 50, "A1111's default steps");
    assert_eq!(info["cfg_scale"], 7.0);
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64()),
        (Some(512), Some(512))
    );
    assert_eq!(info["sampler_name"], "Euler", "A1111's API default sampler");
    assert_eq!(info["negative_prompt"], "");
    assert_eq!(info["batch_size"], 1);
    let p = &body["parameters"];
    assert_eq!(
        (
            &p["steps"],
            &p["cfg_scale"],
            &p["width"],
            &p["height"],
            &p["n_iter"],
            &p["seed"]
        ),
        (
            &json!(50),
            &json!(7.0),
            &json!(512),
            &json!(512),
            &json!(1),
            &json!(-1)
        )
    );
    let mut want = request("x", seed);
    want.sampler = "euler".parse().unwrap();
    want.steps = 50;
    want.width = 512;
    want.height = 512;
    assert_eq!(
        b64(body["images"][0].as_str().unwrap()),
        expected_pngs(&want)[0]
    );

    let body: Value = s
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "y", "seed": -1, "batch_size": 2, "n_iter": 2, "steps": 2, "width": 64, "height": 64}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["images"].as_array().unwrap().len(), 4);
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"].as_array().unwrap().len(), 4);
    assert_eq!(info["infotexts"].as_array().unwrap().len(), 4);

    let body: Value = s
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "z", "send_images": false}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["images"], json!([]));
}

#[tokio::test]
async fn errors_in_a1111_shape() {
    let s = TestServer::start().await;
    let body = assert_error(
        s.post("/sdapi/v1/txt2img", json!({"steps": 0})).await,
        422,
        "steps",
    )
    .await;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "steps"]));
    assert!(body["detail"][0]["msg"].as_str().unwrap().contains("steps"));
    let body = assert_error(
        s.post("/sdapi/v1/txt2img", json!({"steps": "ten"})).await,
        422,
        "steps",
    )
    .await;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "steps"]));
    let body = assert_error(
        s.post("/sdapi/v1/txt2img", json!({"sampler_name": "DPM++ SDE"}))
            .await,
        422,
        "DPM++ SDE",
    )
    .await;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "sampler_name"]));
    // A1111 features sdserve lacks are refused by name once they would change the image.
    let body = assert_error(
        s.post("/sdapi/v1/txt2img", json!({"restore_faces": true}))
            .await,
        422,
        "not supported",
    )
    .await;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "restore_faces"]));
    let body = assert_error(
        s.post(
            "/sdapi/v1/txt2img",
            json!({"override_settings": {"CLIP_stop_at_last_layers": -1}}),
        )
        .await,
        422,
        "must be between 1 and 12, got -1",
    )
    .await;
    assert_eq!(
        body["detail"][0]["loc"],
        json!(["body", "override_settings.CLIP_stop_at_last_layers"])
    );
    let body = assert_error(
        s.post(
            "/sdapi/v1/txt2img",
            json!({"override_settings": {"emphasis": "No norm"}}),
        )
        .await,
        422,
        "No norm",
    )
    .await;
    assert_eq!(
        body["detail"][0]["loc"],
        json!(["body", "override_settings.emphasis"])
    );
    // A1111 reads prompts with its emphasis syntax: a weight that is no number is refused.
    let body = assert_error(
        s.post("/sdapi/v1/txt2img", json!({"prompt": "a (cat:1.2.3)"}))
            .await,
        422,
        "1.2.3",
    )
    .await;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "prompt"]));
    let body = assert_error(
        s.post(
            "/sdapi/v1/txt2img",
            json!({"sampler_name": "DDIM", "eta": 1.0}),
        )
        .await,
        422,
        "eta",
    )
    .await;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "eta"]));
    let body = assert_error(
        s.post(
            "/sdapi/v1/txt2img",
            json!({"scheduler": "align_your_steps"}),
        )
        .await,
        422,
        "scheduler",
    )
    .await;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "scheduler"]));
    assert_error(
        s.post("/sdapi/v1/txt2img", json!({"seed": -7})).await,
        422,
        "seed",
    )
    .await;
    let body = assert_error(s.post_raw("/sdapi/v1/txt2img", "{nope").await, 400, "JSON").await;
    assert_eq!(body["detail"][0]["type"], "json_invalid");
    let body = assert_error(s.get("/sdapi/v1/nothing-here").await, 404, "no route").await;
    assert!(body["detail"].is_string());
    let prompt = format!("x {}", FakeBackend::FAIL_MARKER);
    let body = assert_error(
        s.post("/sdapi/v1/txt2img", json!({"prompt": prompt})).await,
        500,
        "fake failure",
    )
    .await;
    assert_eq!(body["error"], "GenerationError");
    for key in ["detail", "body", "errors"] {
        assert!(body.get(key).is_some(), "{key}");
    }
}

#[tokio::test]
async fn discovery_and_options() {
    let s = TestServer::start().await;
    let models: Value = s.get("/sdapi/v1/sd-models").await.json().await.unwrap();
    assert_eq!(models[0]["title"], "fake-sd");
    assert_eq!(models[0]["model_name"], "fake-sd");
    let samplers: Value = s.get("/sdapi/v1/samplers").await.json().await.unwrap();
    let names: Vec<_> = samplers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "DPM++ 2M",
            "DPM++ 2M SDE",
            "DPM++ 3M SDE",
            "Euler",
            "Euler a",
            "LMS",
            "Heun",
            "DPM2",
            "DPM2 a",
            "UniPC",
            "LCM",
            "DDIM",
            "PLMS"
        ]
    );
    assert_eq!(
        samplers[0]["aliases"],
        json!(["dpmpp_2m", "DPM++ 2M Karras", "DPM++ 2M Exponential"])
    );
    assert_eq!(samplers[12]["aliases"], json!(["plms"]));
    let schedulers: Value = s.get("/sdapi/v1/schedulers").await.json().await.unwrap();
    let pairs: Vec<(&str, &str, f64)> = schedulers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["label"].as_str().unwrap(),
                s["default_rho"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("automatic", "Automatic", -1.0),
            ("karras", "Karras", 7.0),
            ("exponential", "Exponential", -1.0),
            ("sgm_uniform", "SGM Uniform", -1.0),
            ("beta", "Beta", -1.0)
        ]
    );
    let options: Value = s.get("/sdapi/v1/options").await.json().await.unwrap();
    assert_eq!(options["sd_model_checkpoint"], "fake-sd");
    // What GET reported goes back unchanged (clients round-trip it).
    let resp = s.post("/sdapi/v1/options", options.clone()).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let resp = s
        .post(
            "/sdapi/v1/options",
            json!({"sd_model_checkpoint": "fake-sd", "sd_vae": "None", "eta_ddim": 0, "s_noise": null}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    // A setting sdserve lacks, or a fixed one changed, is refused by name and
    // nothing applies (clip skip stays 1).
    for (body, needle) in [
        (
            json!({"CLIP_stop_at_last_layers": 2, "other": 1}),
            "other is not a setting sdserve has",
        ),
        (
            json!({"CLIP_stop_at_last_layers": 2, "s_noise": 0.9}),
            "sdserve holds s_noise at 1.0",
        ),
        (json!({"samples_format": "jpg"}), "samples_format"),
        (json!({"sd_checkpoint_hash": "abc"}), "sd_checkpoint_hash"),
    ] {
        assert_error(s.post("/sdapi/v1/options", body).await, 422, needle).await;
    }
    let after: Value = s.get("/sdapi/v1/options").await.json().await.unwrap();
    assert_eq!(after, options);
    let body = assert_error(
        s.post(
            "/sdapi/v1/options",
            json!({"sd_model_checkpoint": "v1-5.ckpt"}),
        )
        .await,
        404,
        "available: fake-sd",
    )
    .await;
    assert_eq!(
        body["detail"],
        "`sd_model_checkpoint`: no model \"v1-5.ckpt\"; available: fake-sd"
    );
    let memory: Value = s.get("/sdapi/v1/memory").await.json().await.unwrap();
    assert!(memory["ram"].is_object() && memory["cuda"].is_object());
    let scripts: Value = s.get("/sdapi/v1/scripts").await.json().await.unwrap();
    assert_eq!(scripts, json!({"txt2img": [], "img2img": []}));
}

#[tokio::test]
async fn png_info_reads_back_the_parameters() {
    let s = TestServer::start().await;
    let body: Value = s
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "a cat", "negative_prompt": "dog", "seed": 9, "steps": 2}),
        )
        .await
        .json()
        .await
        .unwrap();
    let image = body["images"][0].as_str().unwrap();
    let info: Value = s
        .post(
            "/sdapi/v1/png-info",
            json!({"image": format!("data:image/png;base64,{image}")}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(info["info"]
        .as_str()
        .unwrap()
        .starts_with("a cat\nNegative prompt: dog\nSteps: 2"));
    assert_eq!(info["parameters"]["Prompt"], "a cat");
    assert_eq!(info["parameters"]["Negative prompt"], "dog");
    assert_eq!(info["parameters"]["Seed"], 9);
    assert_eq!(info["parameters"]["Steps"], 2);
    let empty: Value = s
        .post("/sdapi/v1/png-info", json!({"image": ""}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(empty["info"], "");
    // Bytes of no image format have no parameters (any base64 is schema-valid).
    let not_png = base64::engine::general_purpose::STANDARD.encode(b"hello");
    let none: Value = s
        .post("/sdapi/v1/png-info", json!({"image": not_png}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            none["info"].as_str(),
            none["items"].as_object().map(|m| m.len())
        ),
        (Some(""), Some(0))
    );
    assert_error(
        s.post("/sdapi/v1/png-info", json!({"image": "@@@"})).await,
        422,
        "image",
    )
    .await;
    assert_error(s.post("/sdapi/v1/png-info", json!({})).await, 422, "image").await;
}

/// A PNG from raw chunks (CRCs left zero: the text reader does not check them).
fn png_of(chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in chunks {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(*kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&[0; 4]);
    }
    out
}

fn ihdr(width: u32, height: u32) -> Vec<u8> {
    let mut data = width.to_be_bytes().to_vec();
    data.extend_from_slice(&height.to_be_bytes());
    data.extend_from_slice(&[8, 2, 0, 0, 0]);
    data
}

async fn png_info_of(s: &TestServer, png: &[u8]) -> reqwest::Response {
    let image = base64::engine::general_purpose::STANDARD.encode(png);
    s.post("/sdapi/v1/png-info", json!({ "image": image }))
        .await
}

#[tokio::test]
async fn png_info_refuses_bombs_and_garbage_by_their_limits() {
    let s = TestServer::start().await;
    // 93 bytes whose IHDR claims 100000x100000 pixels (aborted the process before).
    let mut giant = png_of(&[
        (b"IHDR", ihdr(100_000, 100_000)),
        (b"IDAT", vec![0; 36]),
        (b"IEND", vec![]),
    ]);
    giant.truncate(93);
    assert_eq!(giant.len(), 93);
    assert_error(
        png_info_of(&s, &giant).await,
        413,
        "image width exceeds the limit of 8192 pixels (got 100000 pixels)",
    )
    .await;
    // A zTXt chunk of ~8 KiB that inflates to 8 MiB.
    let mut ztxt = b"parameters\0\0".to_vec();
    ztxt.extend(miniz_oxide::deflate::compress_to_vec_zlib(
        &vec![b'a'; 8 << 20],
        9,
    ));
    let bomb = png_of(&[(b"IHDR", ihdr(1, 1)), (b"zTXt", ztxt), (b"IEND", vec![])]);
    assert!(bomb.len() < 64 * 1024);
    let body = assert_error(png_info_of(&s, &bomb).await, 413, "limit of 1048576 bytes").await;
    assert!(body.to_string().contains("parameters"), "{body}");
    // A truncated or malformed PNG is a 422 on the `image` field.
    let mut bad_ihdr = giant.clone();
    bad_ihdr[16..24].copy_from_slice(&[0; 8]);
    for bad in [&giant[..20], &bad_ihdr[..]] {
        assert_error(png_info_of(&s, bad).await, 422, "image").await;
    }
    // Other text chunks come back in `items`, as A1111 lists them.
    let with_items = png_of(&[
        (b"IHDR", ihdr(1, 1)),
        (
            b"tEXt",
            b"parameters\0a dog\nSteps: 3, Sampler: Euler, Seed: 5".to_vec(),
        ),
        (b"tEXt", b"Software\0sdserve".to_vec()),
        (b"IEND", vec![]),
    ]);
    let info: Value = png_info_of(&s, &with_items).await.json().await.unwrap();
    assert_eq!(info["parameters"]["Prompt"], "a dog");
    assert_eq!(info["parameters"]["Seed"], 5);
    assert_eq!(info["items"], json!({"Software": "sdserve"}));
}

#[tokio::test]
async fn progress_and_interrupt() {
    let fake = FakeBackend::new().with_step_delay(Duration::from_millis(50));
    let s = TestServer::with(|_| {}, fake).await;
    let idle: Value = s.get("/sdapi/v1/progress").await.json().await.unwrap();
    assert_eq!(idle["progress"], 0.0);
    assert_eq!(idle["state"]["job_count"], 0);
    assert_eq!(idle["current_image"], Value::Null);

    let client = s.client.clone();
    let url = s.url("/sdapi/v1/txt2img");
    let pending = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"prompt": "long", "steps": 40}))
            .send()
            .await
            .unwrap()
    });
    // Wait until it is running with a few steps done.
    let mut running = Value::Null;
    for _ in 0..200 {
        running = s.get("/sdapi/v1/progress").await.json().await.unwrap();
        if running["state"]["sampling_step"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(running["state"]["sampling_steps"], 40);
    assert_eq!(running["state"]["job_count"], 1);
    let fraction = running["progress"].as_f64().unwrap();
    assert!(fraction > 0.0 && fraction < 1.0, "{running}");
    assert!(running["eta_relative"].as_f64().unwrap() > 0.0);
    // The live preview: a PNG of the running batch (the fake's is 2x2).
    let preview = b64(running["current_image"].as_str().expect("a preview"));
    let (w, h, _) = sdserve_engine::png::decode_rgb(&preview).unwrap();
    assert_eq!((w, h), (2, 2));
    let skipped: Value = s
        .get("/sdapi/v1/progress?skip_current_image=true")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(skipped["current_image"], Value::Null);

    let resp = s
        .client
        .post(s.url("/sdapi/v1/interrupt"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // As A1111: the interrupted request still answers 200, with the image
    // decoded from where it stopped.
    let interrupted = pending.await.unwrap();
    assert_eq!(interrupted.status(), 200);
    let body: Value = interrupted.json().await.unwrap();
    assert_eq!(body["images"].as_array().unwrap().len(), 1);
    assert_eq!(
        s.metric("sd_request_failures_total{reason=\"cancelled\"}")
            .await,
        0.0
    );
}

/// `skip` ends the running request's sampling: it answers 200 with the image
/// decoded from where it stopped, and the caller's queued request still runs.
#[tokio::test]
async fn skip_returns_the_running_image_and_keeps_the_queue() {
    let s = TestServer::with(
        |_| {},
        FakeBackend::new().with_step_delay(Duration::from_millis(20)),
    )
    .await;
    let post = |body: Value| {
        let client = s.client.clone();
        let url = s.url("/sdapi/v1/txt2img");
        tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap() })
    };
    let running = post(json!({"prompt": "long", "steps": 40, "seed": 1}));
    for _ in 0..200 {
        let p: Value = s.get("/sdapi/v1/progress").await.json().await.unwrap();
        if p["state"]["sampling_step"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another request of the same caller, queued behind (other steps: not batched with it).
    let queued = post(json!({"prompt": "next", "steps": 3, "seed": 2}));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let asked = std::time::Instant::now();
    let resp = s.client.post(s.url("/sdapi/v1/skip")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let skipped = running.await.unwrap();
    assert_eq!(skipped.status(), 200);
    // Unskipped, its 35-odd remaining steps would take 1.75 s or more.
    let waited = asked.elapsed();
    assert!(waited < Duration::from_millis(1000), "{waited:?}");
    let body: Value = skipped.json().await.unwrap();
    assert_eq!(body["images"].as_array().unwrap().len(), 1);
    let next = queued.await.unwrap();
    assert_eq!(next.status(), 200, "the queued request was not skipped");
    let body: Value = next.json().await.unwrap();
    assert_eq!(body["images"].as_array().unwrap().len(), 1);
}

/// A1111 reads prompts with its emphasis syntax unless `emphasis` is "None",
/// and `CLIP_stop_at_last_layers` is the job's clip skip (diffusers' value + 1).
#[tokio::test]
async fn emphasis_and_clip_skip_reach_the_job() {
    let s = TestServer::start().await;
    let post = |body: Value| {
        let s = &s;
        async move {
            let resp = s.post("/sdapi/v1/txt2img", body).await;
            assert_eq!(resp.status(), 200);
            let body: Value = resp.json().await.unwrap();
            let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
            (b64(body["images"][0].as_str().unwrap()), info)
        }
    };
    let base = json!({"prompt": "a (cat:1.3)", "seed": 5, "steps": 2, "width": 32, "height": 32});
    let mut want = request("a (cat:1.3)", 5);
    (want.steps, want.width, want.height) = (2, 32, 32);
    want.sampler = "euler".parse().unwrap(); // A1111's default sampler
    want.cfg_scale = 7.0;

    let (weighted, info) = post(base.clone()).await;
    let a1111 = GenerateRequest {
        prompt_syntax: PromptSyntax::A1111,
        ..want.clone()
    };
    assert_eq!(weighted, expected_pngs(&a1111)[0]);
    assert_eq!(info["clip_skip"], 1);

    let mut plain = base.clone();
    plain["override_settings"] = json!({"emphasis": "None"});
    let (image, _) = post(plain).await;
    assert_eq!(image, expected_pngs(&want)[0]);
    assert_ne!(image, weighted);

    let mut skipped = base;
    skipped["override_settings"] = json!({"CLIP_stop_at_last_layers": 2});
    let (image, info) = post(skipped).await;
    let skip = GenerateRequest {
        clip_skip: 1,
        ..a1111
    };
    assert_eq!(image, expected_pngs(&skip)[0]);
    assert_eq!(info["clip_skip"], 2);
    assert!(info["infotexts"][0]
        .as_str()
        .unwrap()
        .contains("Clip skip: 2"));

    // The same settings server-wide, through POST /sdapi/v1/options.
    let set = s
        .post(
            "/sdapi/v1/options",
            json!({"CLIP_stop_at_last_layers": 2, "emphasis": "None"}),
        )
        .await;
    assert_eq!(set.status(), 200);
    let options: Value = s.get("/sdapi/v1/options").await.json().await.unwrap();
    assert_eq!(
        (&options["CLIP_stop_at_last_layers"], &options["emphasis"]),
        (&json!(2), &json!("None"))
    );
    let plain_skip = GenerateRequest {
        clip_skip: 1,
        ..want.clone()
    };
    let (image, info) = post(json!({"prompt": "a (cat:1.3)", "seed": 5, "steps": 2,
        "width": 32, "height": 32}))
    .await;
    assert_eq!(image, expected_pngs(&plain_skip)[0]);
    assert_eq!(info["clip_skip"], 2);
    // A request's override_settings still win.
    let (image, _) = post(json!({"prompt": "a (cat:1.3)", "seed": 5, "steps": 2,
        "width": 32, "height": 32, "override_settings": {"emphasis": "Original"}}))
    .await;
    assert_eq!(image, expected_pngs(&skip)[0]);
    let bad = s
        .post("/sdapi/v1/options", json!({"CLIP_stop_at_last_layers": -3}))
        .await;
    assert_eq!(bad.status(), 422);
}
