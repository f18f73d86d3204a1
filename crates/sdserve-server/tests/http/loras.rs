//! LoRAs over HTTP: A1111's `<lora:name:w>` prompt tags and the native
//! `loras` list reach the engine request as the same list (same image
//! bytes), names are checked against `--lora-dir` (422 listing what it
//! holds), the listings show its files, and what cannot apply is refused by name.

use std::sync::Arc;

use sdserve_server::engine_api::{LoraDir, LoraRef};
use sdserve_server::FakeBackend;
use serde_json::{json, Value};

use crate::common::{assert_error, b64, expected_pngs, request, TestServer};

/// A folder with `style.safetensors` (no tensors; kohya's `ss_output_name`
/// metadata) and `detail.safetensors`.
fn lora_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, header) in [
        (
            "style",
            r#"{"__metadata__":{"ss_output_name":"Style One"}}"#,
        ),
        ("detail", "{}"),
    ] {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        std::fs::write(dir.path().join(format!("{name}.safetensors")), bytes).unwrap();
    }
    dir
}

async fn server(dir: &tempfile::TempDir) -> TestServer {
    let loras = Arc::new(LoraDir::open(dir.path()).unwrap());
    let fake = FakeBackend::new().with_lora_dir(LoraDir::open(dir.path()).unwrap());
    TestServer::with(|c| c.lora_dir = Some(loras), fake).await
}

#[tokio::test]
async fn a1111_tags_and_native_loras_make_the_same_image() {
    let dir = lora_dir();
    let s = server(&dir).await;
    let body: Value = s
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "a cat <lora:style:0.5>, <lora:detail:0.7:0.2>", "seed": 7, "steps": 4,
                "cfg_scale": 7, "width": 64, "height": 64, "sampler_name": "Euler a"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let a1111 = b64(body["images"][0].as_str().unwrap());
    // The prompt is echoed as sent, tags included, as A1111 does.
    let sent = "a cat <lora:style:0.5>, <lora:detail:0.7:0.2>";
    assert_eq!(body["parameters"]["prompt"], sent);
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(
        (&info["prompt"], &info["all_prompts"][0]),
        (&json!(sent), &json!(sent))
    );
    let mut want = request("a cat , ", 7);
    want.loras = vec![
        LoraRef::new("style", 0.5),
        LoraRef {
            name: "detail".into(),
            te_weight: 0.7,
            unet_weight: 0.2,
        },
    ];
    assert_eq!(a1111, expected_pngs(&want)[0]);
    assert_ne!(a1111, expected_pngs(&request("a cat , ", 7))[0]);

    let id = s
        .submit_job(
            json!({"prompt": "a cat , ", "seed": 7, "steps": 4, "cfg_scale": 7,
            "width": 64, "height": 64, "sampler": "euler_ancestral",
            "loras": [{"name": "style", "weight": 0.5},
                      {"name": "detail", "weight": 0.7, "unet_weight": 0.2}]}),
        )
        .await;
    let job = s.wait_job(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["params"]["loras"],
        json!([{"name": "style", "te_weight": 0.5, "unet_weight": 0.5},
               {"name": "detail", "te_weight": 0.7, "unet_weight": 0.2}])
    );
    let url = job["images"][0]["url"].as_str().unwrap();
    let native = s.get(url).await.bytes().await.unwrap();
    assert_eq!(&native[..], &a1111[..]);

    // The native API reads the tags too when it reads A1111's syntax; as
    // plain text they stay words of the prompt.
    let tagged = json!({"prompt": "a cat <lora:style:0.5>, <lora:detail:0.7:0.2>", "seed": 7,
        "steps": 4, "cfg_scale": 7, "width": 64, "height": 64, "sampler": "euler_ancestral",
        "prompt_syntax": "a1111"});
    let job = s.wait_job(&s.submit_job(tagged.clone()).await).await;
    assert_eq!(job["params"]["prompt"], "a cat , ");
    assert_eq!(job["params"]["loras"][1]["unet_weight"], 0.2);
    let url = job["images"][0]["url"].as_str().unwrap();
    assert_eq!(&s.get(url).await.bytes().await.unwrap()[..], &a1111[..]);
    let mut plain = tagged;
    plain["prompt_syntax"] = "plain".into();
    let job = s.wait_job(&s.submit_job(plain).await).await;
    assert!(job["params"].get("loras").is_none(), "{job}");
    assert_eq!(
        job["params"]["prompt"],
        "a cat <lora:style:0.5>, <lora:detail:0.7:0.2>"
    );
    // An unknown tag names the prompt.
    let bad = json!({"prompt": "a <lora:nope:1>", "prompt_syntax": "a1111"});
    let body = assert_error(
        s.post("/api/v1/jobs", bad).await,
        422,
        "available: detail, style",
    )
    .await;
    assert_eq!(body["field"], "prompt");
}

#[tokio::test]
async fn unknown_loras_are_422_listing_the_folder() {
    let dir = lora_dir();
    let s = server(&dir).await;
    assert_error(
        s.post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "a <lora:nope:1>", "steps": 4}),
        )
        .await,
        422,
        r#"unknown LoRA \"nope\"; available: detail, style"#,
    )
    .await;
    assert_error(
        s.post(
            "/api/v1/jobs",
            json!({"prompt": "a", "loras": [{"name": "../style"}]}),
        )
        .await,
        422,
        "available: detail, style",
    )
    .await;
    // Without --lora-dir every name is unknown.
    let bare = TestServer::start().await;
    assert_error(
        bare.post(
            "/api/v1/jobs",
            json!({"prompt": "a", "loras": [{"name": "style"}]}),
        )
        .await,
        422,
        "no --lora-dir",
    )
    .await;
}

#[tokio::test]
async fn what_cannot_apply_is_refused_by_name() {
    let dir = lora_dir();
    let s = server(&dir).await;
    for (prompt, says) in [
        ("a <hypernet:h:1>", "hypernet"),
        ("a <lora:style:x>", "not a finite number"),
        ("a <lora:style:1:1:8>", "dyn"),
        ("a <lora:style:11>", "within ±10"),
    ] {
        assert_error(
            s.post("/sdapi/v1/txt2img", json!({"prompt": prompt, "steps": 4}))
                .await,
            422,
            says,
        )
        .await;
    }
    let nine: Vec<Value> = (0..9).map(|_| json!({"name": "style"})).collect();
    assert_error(
        s.post("/api/v1/jobs", json!({"prompt": "a", "loras": nine}))
            .await,
        422,
        "at most 8 LoRAs",
    )
    .await;
    assert_error(
        s.post(
            "/api/v1/jobs",
            json!({"prompt": "a", "loras": [{"name": "style", "weight": 0.5, "te": 1}]}),
        )
        .await,
        422,
        "te",
    )
    .await;
    // Tags in the negative prompt stay text, as in A1111.
    let body: Value = s
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "a", "negative_prompt": "<lora:nope:1>", "steps": 4}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(body["images"][0].is_string(), "{body}");
}

#[tokio::test]
async fn listings_show_the_folder() {
    let dir = lora_dir();
    let s = server(&dir).await;
    let a1111: Value = s.get("/sdapi/v1/loras").await.json().await.unwrap();
    let path = dir.path().join("style.safetensors");
    assert_eq!(a1111[0]["name"], "detail");
    assert_eq!(a1111[0]["alias"], "detail");
    assert_eq!(a1111[1]["name"], "style");
    assert_eq!(a1111[1]["alias"], "Style One");
    assert_eq!(a1111[1]["path"], path.display().to_string());
    assert_eq!(a1111[1]["metadata"], json!({"ss_output_name": "Style One"}));
    let native: Value = s.get("/api/v1/loras").await.json().await.unwrap();
    assert_eq!(
        native,
        json!([{"name": "detail", "metadata": {}},
               {"name": "style", "metadata": {"ss_output_name": "Style One"}}])
    );
    let bare = TestServer::start().await;
    let none: Value = bare.get("/sdapi/v1/loras").await.json().await.unwrap();
    assert_eq!(none, json!([]));
}
