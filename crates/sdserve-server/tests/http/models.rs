//! A models folder served through every dialect: listing (A1111 names and
//! hashes), switching the default, per-request models, unknown models, a
//! rescan, least-recently-used eviction, and batches that never mix models.
//! Each model is a FakeBackend named after it, so an image's infotext says
//! which model made it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sdserve_server::engine_api::ModelInfo;
use sdserve_server::models::{Catalog, DevicePool, HashStore, Listed, Loader, ModelPool, Models};
use sdserve_server::{App, Backend, FakeBackend, ServerConfig};
use serde_json::{json, Value};

use crate::common::{assert_error, b64, TestServer};

const ALPHA_SHA: &str = "c50beabecdf7f6ac7f0687a1a3a0fc068a12fcf3e9fcb66395f1a955afa3ff35";
const BETA_SHA: &str = "f44e64e75f3948e9f73f8dfa94721c4ce8cbb4f265c4790c702b2d41cfbf2753";
const GAMMA_SHA: &str = "be9d587defa1f0c09ef49eb17e206983a5f8f8289e4281860bd0ee5a19592c67";
const DELTA_SHA: &str = "4f4a9410ffcdf895c4adb880659e9b5c0dd1f23a30790684340b3eaacb045398";

/// Every backend the loader made, in load order, with its model's name.
type Loaded = Arc<Mutex<Vec<(String, Arc<FakeBackend>)>>>;

struct ModelsServer {
    s: TestServer,
    loaded: Loaded,
    models_dir: tempfile::TempDir,
}

impl ModelsServer {
    fn loads(&self) -> Vec<String> {
        self.loaded
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Batch sizes each load of `name` ran, all loads together.
    fn batches(&self, name: &str) -> Vec<usize> {
        self.loaded
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, f)| f.batch_sizes())
            .collect()
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A models folder with a diffusers folder (`alpha`), a checkpoint (`beta`),
/// one in A1111's layout (`gamma`) and one the loader refuses (`broken`).
fn models_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("alpha/model_index.json"), b"{}");
    write(
        &d.join("alpha/unet/diffusion_pytorch_model.safetensors"),
        b"alpha-unet",
    );
    write(&d.join("beta.safetensors"), b"beta");
    write(&d.join("Stable-diffusion/gamma.safetensors"), b"gamma");
    write(&d.join("zz/broken.safetensors"), b"broken");
    dir
}

async fn start(max_loaded: usize, step_delay: Duration) -> ModelsServer {
    let models_dir = models_dir();
    let out = Arc::new(tempfile::tempdir().unwrap());
    let app = App::new(ServerConfig::new(out.path())).unwrap();
    let loaded: Loaded = Arc::default();
    let record = loaded.clone();
    let loader: Loader =
        Arc::new(move |m: &Listed| {
            if m.entry.name.contains("broken") {
                return Err("not a model this engine can load".into());
            }
            let fake = Arc::new(FakeBackend::new().with_step_delay(step_delay).with_info(
                ModelInfo {
                    name: m.entry.stem().to_string(),
                    ..FakeBackend::new().info().clone()
                },
            ));
            record
                .lock()
                .unwrap()
                .push((m.entry.name.clone(), fake.clone()));
            Ok(fake as Arc<dyn Backend>)
        });
    let catalog = Catalog::open(
        Some(models_dir.path().to_path_buf()),
        Vec::new(),
        HashStore::open(out.path()),
    )
    .unwrap();
    let device = DevicePool {
        label: "fake".into(),
        pool: ModelPool::new(max_loaded, Some(loader)),
    };
    let models = Models::new(catalog, vec![device], "alpha").unwrap();
    let default = models.default_model().unwrap();
    drop(models.acquire_blocking(&default).unwrap());
    app.install_models(Arc::new(models)).unwrap();
    let s = TestServer::serve(app, Arc::new(FakeBackend::new()), out).await;
    ModelsServer {
        s,
        loaded,
        models_dir,
    }
}

/// `GET /sdapi/v1/sd-models` once every listed model has a hash (background hashing).
async fn hashed_listing(s: &TestServer) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list: Vec<Value> = s.get("/sdapi/v1/sd-models").await.json().await.unwrap();
        if list.iter().all(|m| m["sha256"].is_string()) {
            return list;
        }
        assert!(Instant::now() < deadline, "never hashed: {list:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `Model: ` of a txt2img answer's first infotext.
fn model_of(answer: &Value) -> String {
    let info: Value = serde_json::from_str(answer["info"].as_str().unwrap()).unwrap();
    let text = info["infotexts"][0].as_str().unwrap();
    text.split(", ")
        .find_map(|p| p.strip_prefix("Model: "))
        .unwrap_or_default()
        .to_string()
}

/// The infotext of a native job's first image.
async fn infotext(s: &TestServer, job: &Value) -> String {
    let url = job["images"][0]["url"].as_str().unwrap();
    let png = s.get(url).await.bytes().await.unwrap();
    sdserve_server::engine_api::png::read_parameters(&png).unwrap()
}

async fn txt2img(s: &TestServer, body: Value) -> Value {
    let resp = s.post("/sdapi/v1/txt2img", body).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn every_dialect_lists_every_model_with_a1111_names_and_hashes() {
    let m = start(1, Duration::ZERO).await;
    let list = hashed_listing(&m.s).await;
    let dir = m.models_dir.path();
    let expect = |name: &str, model_name: &str, sha: &str, file: &Path| {
        json!({"title": format!("{name} [{}]", &sha[..10]), "model_name": model_name,
            "hash": &sha[..10], "sha256": sha, "filename": file.to_string_lossy(), "config": null})
    };
    assert_eq!(
        list,
        [
            expect("alpha", "alpha", ALPHA_SHA, &dir.join("alpha")),
            expect(
                "beta.safetensors",
                "beta",
                BETA_SHA,
                &dir.join("beta.safetensors")
            ),
            expect(
                "gamma.safetensors",
                "gamma",
                GAMMA_SHA,
                &dir.join("Stable-diffusion/gamma.safetensors")
            ),
            list[3].clone(),
        ]
    );
    let broken = list[3]["title"].as_str().unwrap();
    assert!(broken.starts_with("zz/broken.safetensors ["), "{broken}");
    assert_eq!(list[3]["model_name"], "zz_broken");
    let names = [
        "alpha",
        "beta.safetensors",
        "gamma.safetensors",
        "zz/broken.safetensors",
    ];
    let openai: Value = m.s.get("/v1/models").await.json().await.unwrap();
    let ids: Vec<&str> = openai["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, names);
    let native: Value = m.s.get("/api/v1/models").await.json().await.unwrap();
    let models = native["models"].as_array().unwrap();
    let ids: Vec<&str> = models.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, names);
    assert_eq!(models[0]["default"], true);
    assert_eq!(models[0]["loaded"], true);
    assert_eq!(models[0]["native_width"], 64);
    assert_eq!(models[1]["sha256"], BETA_SHA);
    assert_eq!(models[1]["loaded"], false);
    assert_eq!(models[1]["native_width"], Value::Null, "never loaded yet");
    // The hashes were cached in the output dir.
    let cache = std::fs::read_to_string(m.s.dir.path().join("model-hashes.json")).unwrap();
    assert!(cache.contains(GAMMA_SHA), "{cache}");
}

#[tokio::test]
async fn options_switch_the_default_by_title_name_or_hash() {
    let m = start(1, Duration::ZERO).await;
    let list = hashed_listing(&m.s).await;
    let options: Value = m.s.get("/sdapi/v1/options").await.json().await.unwrap();
    assert_eq!(options["sd_model_checkpoint"], list[0]["title"]);
    assert_eq!(options["sd_checkpoint_hash"], ALPHA_SHA);
    for (id, expect) in [
        (list[1]["title"].as_str().unwrap(), "beta"),
        ("gamma", "gamma"),
        (&ALPHA_SHA[..10], "alpha"),
        ("beta.safetensors", "beta"),
        (GAMMA_SHA, "gamma"),
    ] {
        let resp =
            m.s.post("/sdapi/v1/options", json!({"sd_model_checkpoint": id}))
                .await;
        assert_eq!(resp.status(), 200, "{id}");
        assert_eq!(resp.json::<Value>().await.unwrap(), Value::Null);
        let options: Value = m.s.get("/sdapi/v1/options").await.json().await.unwrap();
        let title = options["sd_model_checkpoint"].as_str().unwrap();
        assert!(title.starts_with(expect), "{id}: {title}");
        // Requests that name no model run on the default.
        let answer = txt2img(&m.s, json!({"prompt": "p", "seed": 1})).await;
        assert_eq!(model_of(&answer), expect, "{id}");
        let id = m.s.submit_job(json!({"prompt": "p", "seed": 1})).await;
        let job = m.s.wait_job(&id).await;
        assert_eq!(
            job["params"]["model"].as_str().unwrap().split('.').next(),
            Some(expect)
        );
    }
}

#[tokio::test]
async fn each_request_may_pick_its_model_in_its_dialect() {
    let m = start(2, Duration::ZERO).await;
    hashed_listing(&m.s).await;
    let answer = txt2img(
        &m.s,
        json!({"prompt": "p", "seed": 3, "override_settings": {"sd_model_checkpoint": "gamma"}}),
    )
    .await;
    assert_eq!(model_of(&answer), "gamma");
    let info: Value = serde_json::from_str(answer["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sd_model_name"], "gamma");
    assert_eq!(info["sd_model_hash"], &GAMMA_SHA[..10]);
    // Restored afterwards (A1111's default): the default did not change...
    let options: Value = m.s.get("/sdapi/v1/options").await.json().await.unwrap();
    assert_eq!(options["sd_checkpoint_hash"], ALPHA_SHA);
    // ...unless the request says not to restore it.
    txt2img(
        &m.s,
        json!({"prompt": "p", "override_settings": {"sd_model_checkpoint": "beta"},
            "override_settings_restore_afterwards": false}),
    )
    .await;
    let options: Value = m.s.get("/sdapi/v1/options").await.json().await.unwrap();
    assert_eq!(options["sd_checkpoint_hash"], BETA_SHA);

    let resp =
        m.s.post(
            "/v1/images/generations",
            json!({"prompt": "p", "model": "alpha", "seed": 3}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let png = b64(body["data"][0]["b64_json"].as_str().unwrap());
    let text = sdserve_server::engine_api::png::read_parameters(&png).unwrap();
    assert!(text.ends_with("Model: alpha"), "{text}");

    let id =
        m.s.submit_job(json!({"prompt": "p", "model": "gamma.safetensors"}))
            .await;
    let job = m.s.wait_job(&id).await;
    assert_eq!(job["params"]["model"], "gamma.safetensors");
    assert!(infotext(&m.s, &job).await.ends_with("Model: gamma"));
}

#[tokio::test]
async fn unknown_models_are_404_naming_the_available_ones() {
    let m = start(1, Duration::ZERO).await;
    let available = "available: alpha, beta.safetensors, gamma.safetensors, zz/broken.safetensors";
    let a1111 = assert_error(
        m.s.post("/sdapi/v1/options", json!({"sd_model_checkpoint": "nope"}))
            .await,
        404,
        available,
    )
    .await;
    assert_eq!(
        a1111,
        json!({"detail": format!("`sd_model_checkpoint`: no model \"nope\"; {available}")})
    );
    let a1111 = assert_error(
        m.s.post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "p", "override_settings": {"sd_model_checkpoint": "nope"}}),
        )
        .await,
        404,
        available,
    )
    .await;
    assert_eq!(
        a1111["detail"],
        format!("`override_settings.sd_model_checkpoint`: no model \"nope\"; {available}")
    );
    let openai = assert_error(
        m.s.post(
            "/v1/images/generations",
            json!({"prompt": "p", "model": "nope"}),
        )
        .await,
        404,
        available,
    )
    .await;
    assert_eq!(openai["error"]["param"], "model");
    assert_eq!(openai["error"]["code"], "model_not_found");
    assert_eq!(openai["error"]["type"], "invalid_request_error");
    let native = assert_error(
        m.s.post("/api/v1/jobs", json!({"prompt": "p", "model": "nope"}))
            .await,
        404,
        available,
    )
    .await;
    assert_eq!(
        native,
        json!({"error": format!("`model`: no model \"nope\"; {available}"),
            "error_type": "model_not_found", "field": "model"})
    );
    // Case matters, as in A1111.
    assert_error(
        m.s.post("/sdapi/v1/options", json!({"sd_model_checkpoint": "ALPHA"}))
            .await,
        404,
        "no model",
    )
    .await;
    // A listed model the engine cannot load is the server's failure.
    let broken = assert_error(
        m.s.post("/api/v1/jobs", json!({"prompt": "p", "model": "zz_broken"}))
            .await,
        500,
        "not a model this engine can load",
    )
    .await;
    assert_eq!(
        broken,
        json!({"error": "could not load model \"zz/broken.safetensors\": not a model this engine can load",
            "error_type": "model_load_failed", "field": null})
    );
    let options: Value = m.s.get("/sdapi/v1/options").await.json().await.unwrap();
    assert!(options["sd_model_checkpoint"]
        .as_str()
        .unwrap()
        .starts_with("alpha"));
}

#[tokio::test]
async fn refresh_checkpoints_lists_new_files() {
    let m = start(1, Duration::ZERO).await;
    write(&m.models_dir.path().join("new/delta.safetensors"), b"delta");
    let before: Vec<Value> = m.s.get("/sdapi/v1/sd-models").await.json().await.unwrap();
    assert_eq!(before.len(), 4);
    assert_error(
        m.s.post("/api/v1/jobs", json!({"prompt": "p", "model": "delta"}))
            .await,
        404,
        "no model",
    )
    .await;
    let resp = m.s.post("/sdapi/v1/refresh-checkpoints", json!({})).await;
    assert_eq!(resp.status(), 200);
    let doc: Value = m.s.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["paths"]["/sdapi/v1/refresh-checkpoints"]["post"].is_object());
    let schemas = &doc["components"]["schemas"];
    assert!(
        schemas["OverrideSettings"]["properties"]["sd_model_checkpoint"].is_object(),
        "{schemas}"
    );
    let after = hashed_listing(&m.s).await;
    let delta = after
        .iter()
        .find(|e| e["model_name"] == "new_delta")
        .expect("listed");
    assert_eq!(delta["sha256"], DELTA_SHA);
    assert_eq!(
        delta["title"],
        format!("new/delta.safetensors [{}]", &DELTA_SHA[..10])
    );
    let answer = txt2img(
        &m.s,
        json!({"prompt": "p", "override_settings": {"sd_model_checkpoint": "delta"}}),
    )
    .await;
    assert_eq!(model_of(&answer), "delta");
}

#[tokio::test]
async fn the_least_recently_used_model_is_unloaded_first() {
    let m = start(2, Duration::ZERO).await;
    for model in ["alpha", "beta", "alpha", "gamma", "alpha", "beta"] {
        let answer = txt2img(
            &m.s,
            json!({"prompt": "p", "override_settings": {"sd_model_checkpoint": model}}),
        )
        .await;
        assert_eq!(model_of(&answer), model);
    }
    // alpha (start), beta; gamma evicts beta (alpha was used after it); beta evicts gamma.
    assert_eq!(
        m.loads(),
        [
            "alpha",
            "beta.safetensors",
            "gamma.safetensors",
            "beta.safetensors"
        ]
    );
    let native: Value = m.s.get("/api/v1/models").await.json().await.unwrap();
    let loaded: Vec<&str> = native["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["loaded"] == true)
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(loaded, ["alpha", "beta.safetensors"]);
    // Facts of an unloaded model stay known once it has been loaded.
    let gamma = &native["models"][2];
    assert_eq!(
        (gamma["loaded"].clone(), gamma["native_width"].clone()),
        (json!(false), json!(64))
    );

    let one = start(1, Duration::ZERO).await;
    for model in ["beta", "beta", "alpha"] {
        txt2img(
            &one.s,
            json!({"prompt": "p", "override_settings": {"sd_model_checkpoint": model}}),
        )
        .await;
    }
    assert_eq!(one.loads(), ["alpha", "beta.safetensors", "alpha"]);
}

#[tokio::test]
async fn jobs_of_different_models_are_never_batched_together() {
    let m = start(2, Duration::from_millis(40)).await;
    let submit = |model: &'static str, prompt: &'static str| {
        let s = &m.s;
        async move {
            let resp = s
                .post(
                    "/api/v1/jobs",
                    json!({"prompt": prompt, "model": model, "seed": 5, "steps": 3}),
                )
                .await;
            assert_eq!(resp.status(), 202);
            resp.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    // Load beta before the test proper, so its load does not reorder anything.
    submit("beta", "warm").await;
    // The worker is busy with this one while the others queue behind it.
    let blocker = submit("alpha", "blocker").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.s.job_status(&blocker).await != "running" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut ids = Vec::new();
    for (model, prompt) in [
        ("alpha", "a1"),
        ("beta", "b1"),
        ("alpha", "a2"),
        ("beta", "b2"),
    ] {
        ids.push((model, submit(model, prompt).await));
    }
    for (model, id) in &ids {
        let job = m.s.wait_job(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let text = infotext(&m.s, &job).await;
        assert!(
            text.ends_with(&format!("Model: {model}")),
            "{model}: {text}"
        );
    }
    m.s.wait_job(&blocker).await;
    // Compatible jobs were batched, but only with jobs of their own model.
    assert_eq!(m.batches("alpha"), [1, 2]);
    assert_eq!(m.batches("beta.safetensors"), [1, 2]);
}
