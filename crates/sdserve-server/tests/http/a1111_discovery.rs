//! A1111's discovery routes (each answering A1111's type, field by field),
//! `options`, `/progress`'s text, and the multi-client tracking of A1111 1.8+:
//! `force_task_id`, `POST /internal/progress`, `GET /internal/pending-tasks`.

use std::time::Duration;

use sdserve_server::{FakeBackend, ServerConfig};
use serde_json::{json, Value};

use crate::common::{assert_error, TestServer};

async fn get_json(s: &TestServer, path: &str) -> Value {
    let resp = s.get(path).await;
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn discovery_routes_answer_a1111_types() {
    let s = TestServer::start().await;
    // Lists of things sdserve has none of: empty, but lists.
    for path in [
        "/sdapi/v1/loras",
        "/sdapi/v1/sd-vae",
        "/sdapi/v1/hypernetworks",
        "/sdapi/v1/face-restorers",
        "/sdapi/v1/realesrgan-models",
        "/sdapi/v1/prompt-styles",
    ] {
        assert_eq!(get_json(&s, path).await, json!([]), "{path}");
    }
    assert_eq!(
        get_json(&s, "/sdapi/v1/embeddings").await,
        json!({"loaded": {}, "skipped": {}})
    );
    // The hires fix's image upscalers, with A1111's UpscalerItem fields.
    let upscalers = get_json(&s, "/sdapi/v1/upscalers").await;
    let names: Vec<&str> = upscalers
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["None", "Lanczos", "Nearest"]);
    for item in upscalers.as_array().unwrap() {
        let mut keys: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["model_name", "model_path", "model_url", "name", "scale"]
        );
        assert_eq!(
            (&item["model_name"], &item["model_path"], &item["model_url"]),
            (&Value::Null, &Value::Null, &Value::Null)
        );
        assert_eq!(item["scale"], 4.0);
    }
    assert_eq!(
        get_json(&s, "/sdapi/v1/latent-upscale-modes").await,
        json!([{"name": "Latent"}, {"name": "Latent (antialiased)"}, {"name": "Latent (bicubic)"},
            {"name": "Latent (nearest)"}, {"name": "Latent (nearest-exact)"}])
    );
    let flags = get_json(&s, "/sdapi/v1/cmd-flags").await;
    assert!(flags.is_object());
    assert_eq!(flags["api"], true);
    assert_eq!(flags["nowebui"], true);
    assert!(
        flags.get("api_auth").is_none(),
        "credentials are never echoed"
    );
    for path in [
        "/sdapi/v1/refresh-vae",
        "/sdapi/v1/refresh-loras",
        "/sdapi/v1/refresh-embeddings",
        "/sdapi/v1/refresh-checkpoints",
    ] {
        let resp = s.client.post(s.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.json::<Value>().await.unwrap(), Value::Null, "{path}");
    }
}

#[tokio::test]
async fn options_carry_the_keys_clients_read() {
    let s = TestServer::start().await;
    let options = get_json(&s, "/sdapi/v1/options").await;
    assert_eq!(options["sd_model_checkpoint"], "fake-sd");
    assert!(options.get("sd_checkpoint_hash").is_some());
    for (key, value) in [
        ("sd_vae", json!("Automatic")),
        ("CLIP_stop_at_last_layers", json!(1)),
        ("eta_noise_seed_delta", json!(0)),
        ("samples_format", json!("png")),
        ("sd_lora", json!("None")),
        ("eta_ddim", json!(0.0)),
        ("eta_ancestral", json!(1.0)),
        ("s_noise", json!(1.0)),
        ("live_previews_enable", json!(false)),
    ] {
        assert_eq!(options[key], value, "{key}");
    }
}

/// Polls `/internal/progress` for `task` until `done` holds (5 s at most).
async fn internal_progress_until(
    s: &TestServer,
    task: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..500 {
        last = s
            .post(
                "/internal/progress",
                json!({"id_task": task, "id_live_preview": -1, "live_preview": true}),
            )
            .await
            .json()
            .await
            .unwrap();
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{task}: last answer {last}");
}

#[tokio::test]
async fn force_task_id_is_tracked_on_internal_progress() {
    let fake = FakeBackend::new().with_step_delay(Duration::from_millis(20));
    let s = TestServer::with(|_| {}, fake).await;
    let keys = [
        "active",
        "queued",
        "completed",
        "progress",
        "eta",
        "live_preview",
        "id_live_preview",
        "textinfo",
    ];
    // An unknown task, as A1111 answers it.
    let unknown: Value = s
        .post("/internal/progress", json!({"id_task": "task(nobody)"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        unknown,
        json!({"active": false, "queued": false, "completed": false, "progress": null,
            "eta": null, "live_preview": null, "id_live_preview": -1, "textinfo": "Waiting..."})
    );
    let submit = |task: &'static str| {
        let client = s.client.clone();
        let url = s.url("/sdapi/v1/txt2img");
        tokio::spawn(async move {
            client
                .post(url)
                .json(
                    &json!({"prompt": task, "steps": 30, "width": 64, "height": 64,
                    "force_task_id": task}),
                )
                .send()
                .await
                .unwrap()
        })
    };
    let first = submit("task(first)");
    let active = internal_progress_until(&s, "task(first)", |v| {
        v["active"] == true && v["progress"].as_f64().unwrap_or(0.0) > 0.0
    })
    .await;
    let mut fields: Vec<&str> = active
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    assert_eq!(fields, keys);
    assert_eq!(
        (&active["queued"], &active["completed"]),
        (&json!(false), &json!(false))
    );
    let fraction = active["progress"].as_f64().unwrap();
    assert!(fraction > 0.0 && fraction < 1.0, "{active}");
    assert!(active["eta"].as_f64().unwrap() >= 0.0, "{active}");
    assert!(
        active["textinfo"].as_str().unwrap().starts_with("Step "),
        "{active}"
    );
    assert!(
        active["textinfo"].as_str().unwrap().ends_with("/30"),
        "{active}"
    );
    // Asked with live_preview true and id -1: the running batch's latest
    // preview as a data URL, with its (positive) id.
    let preview = active["live_preview"].as_str().expect("a live preview");
    assert!(preview.starts_with("data:image/png;base64,"), "{preview}");
    let preview_id = active["id_live_preview"].as_i64().unwrap();
    assert!(preview_id > 0, "{active}");
    // Asked again with that id and no newer preview yet, or without asking: none.
    let again = s
        .post(
            "/internal/progress",
            json!({"id_task": "task(first)", "id_live_preview": i64::from(i32::MAX), "live_preview": true}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(again["live_preview"], Value::Null, "{again}");
    assert_eq!(again["id_live_preview"], i64::from(i32::MAX));
    // The global progress says the same in A1111's State keys.
    let global = get_json(&s, "/sdapi/v1/progress").await;
    assert_eq!(global["state"]["job_count"], 1);
    assert_eq!(global["state"]["stopping_generation"], false);
    assert_eq!(global["state"]["sampling_steps"], 30);
    assert!(
        global["textinfo"].as_str().unwrap().starts_with("Step "),
        "{global}"
    );

    // A second request waits behind the running batch.
    let second = submit("task(second)");
    let queued = internal_progress_until(&s, "task(second)", |v| v["queued"] == true).await;
    assert_eq!(queued["active"], false);
    assert_eq!(queued["textinfo"], "In queue: 1/1");
    assert_eq!(queued["id_live_preview"], -1);
    let pending = get_json(&s, "/internal/pending-tasks").await;
    assert_eq!(pending, json!({"size": 1, "tasks": ["task(second)"]}));
    assert_eq!(get_json(&s, "/internal/pendingTasks").await, pending);

    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(second.await.unwrap().status(), 200);
    for task in ["task(first)", "task(second)"] {
        let done = internal_progress_until(&s, task, |v| v["completed"] == true).await;
        assert_eq!(
            (&done["active"], &done["queued"]),
            (&json!(false), &json!(false))
        );
        assert_eq!(done["textinfo"], "Waiting...");
    }
    assert_eq!(
        get_json(&s, "/internal/pending-tasks").await,
        json!({"size": 0, "tasks": []})
    );
    let idle = get_json(&s, "/sdapi/v1/progress").await;
    assert_eq!(idle["state"]["job_count"], 0);
    assert_eq!(idle["textinfo"], Value::Null);

    // A name longer than the map keeps is refused by name.
    let long = "x".repeat(257);
    let body = assert_error(
        s.post(
            "/sdapi/v1/txt2img",
            json!({"force_task_id": long, "steps": 1, "width": 64, "height": 64}),
        )
        .await,
        422,
        "force_task_id",
    )
    .await;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "force_task_id"]));
    // Bad bodies answer in A1111's error shape.
    let body = assert_error(
        s.post("/internal/progress", json!({"id_live_preview": "x"}))
            .await,
        422,
        "id_live_preview",
    )
    .await;
    assert!(body["detail"].is_array(), "{body}");
}

#[tokio::test]
async fn task_names_belong_to_their_caller() {
    let keys = |c: &mut ServerConfig| {
        c.auth.api_keys = vec!["alice-key".into(), "bob-key".into()];
    };
    let s = TestServer::with(keys, FakeBackend::new()).await;
    let resp = s
        .client
        .post(s.url("/sdapi/v1/txt2img"))
        .bearer_auth("alice-key")
        .json(
            &json!({"prompt": "p", "steps": 1, "width": 64, "height": 64,
            "force_task_id": "task(mine)"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let progress_as = |key: &'static str| {
        let req = s
            .client
            .post(s.url("/internal/progress"))
            .bearer_auth(key)
            .json(&json!({"id_task": "task(mine)"}));
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(progress_as("alice-key").await["completed"], true);
    let bob = progress_as("bob-key").await;
    assert_eq!(
        (&bob["active"], &bob["queued"], &bob["completed"]),
        (&json!(false), &json!(false), &json!(false)),
        "another caller's name is an unknown task"
    );
    // Without a key: 401 in A1111's shape.
    let resp = s
        .post("/internal/progress", json!({"id_task": "task(mine)"}))
        .await;
    let body = assert_error(resp, 401, "authentication").await;
    assert!(body["detail"].is_string(), "{body}");
}
