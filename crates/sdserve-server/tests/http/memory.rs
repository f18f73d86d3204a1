//! The memory plan at the gate: a request beyond it is refused with 413
//! before it is queued, in every dialect that takes a size, naming the budget,
//! its source and the largest size that fits; `/readyz` reports the plan; the
//! batcher never combines more images than the plan allows.

use std::time::Duration;

use sdserve_server::engine_api::{Budget, MemoryPlan, ModelInfo};
use sdserve_server::FakeBackend;
use serde_json::{json, Value};

use crate::common::TestServer;

/// 100 MiB from `--memory-limit`, 36 MiB of weights, 256 bytes per pixel per
/// image: 64 MiB of activations hold 512x512 at batch 1, 256x256 at batch 4.
fn plan() -> MemoryPlan {
    let budget = Budget {
        bytes: 100 << 20,
        source: "--memory-limit".into(),
        candidates: vec![],
    };
    MemoryPlan::per_pixel(budget, 36 << 20, 256)
}

const MESSAGE: &str = "1024x1024 x1 needs ~292.0 MiB but the memory budget is 100.0 MiB \
    (--memory-limit); the largest 1:1 size that fits at batch 1 is 512x512";

async fn server(fake: FakeBackend) -> TestServer {
    TestServer::with(|_| {}, fake.with_memory_plan(plan())).await
}

async fn refused(resp: reqwest::Response) -> Value {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("json body");
    assert_eq!(status, 413, "{body}");
    body
}

#[tokio::test]
async fn each_dialect_refuses_a_size_beyond_the_plan_with_413() {
    let s = server(FakeBackend::new()).await;
    let big = json!({"prompt": "p", "width": 1024, "height": 1024, "steps": 2});

    let native = refused(s.post("/api/v1/jobs", big.clone()).await).await;
    assert_eq!(
        native,
        json!({"error": MESSAGE, "error_type": "over_memory_budget", "field": "width"})
    );

    let a1111 = refused(s.post("/sdapi/v1/txt2img", big.clone()).await).await;
    assert_eq!(
        a1111,
        json!({"detail": [{"loc": ["body", "width"], "msg": MESSAGE, "type": "value_error"}]})
    );

    let openai = refused(
        s.post(
            "/v1/images/generations",
            json!({"prompt": "p", "size": "1024x1024", "steps": 2}),
        )
        .await,
    )
    .await;
    assert_eq!(
        openai,
        json!({"error": {
            "message": MESSAGE,
            "type": "invalid_request_error",
            "param": "size",
            "code": "over_memory_budget"
        }})
    );

    // Nothing was queued, and a size that fits still runs.
    assert_eq!(s.fake.batch_sizes(), Vec::<usize>::new());
    let ok = s
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "p", "width": 512, "height": 512, "steps": 1}),
        )
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(s.fake.batch_sizes(), [1]);
    // The batch counts too: 512x512 fits once, not twice.
    let two = refused(
        s.post(
            "/api/v1/jobs",
            json!({"prompt": "p", "width": 512, "height": 512, "batch_size": 2}),
        )
        .await,
    )
    .await;
    assert!(
        two["error"]
            .as_str()
            .unwrap()
            .ends_with("the largest 1:1 size that fits at batch 2 is 360x360"),
        "{two}"
    );
}

#[tokio::test]
async fn generate_refuses_a_native_size_beyond_the_plan() {
    let info = ModelInfo {
        name: "fake-big".into(),
        native_width: 1024,
        native_height: 1024,
        default_steps: 2,
        default_cfg_scale: 7.0,
        vae_scale_factor: 8,
        max_clip_skip: 11,
        lcm_max_steps: 50,
    };
    let s = server(FakeBackend::new().with_info(info)).await;
    let body = refused(s.post("/generate", json!({"prompt": "p", "seed": 1})).await).await;
    assert_eq!(
        body,
        json!({"detail": [{"loc": ["body", "width"], "msg": MESSAGE, "type": "value_error"}]})
    );
}

#[tokio::test]
async fn the_largest_size_named_is_within_the_configured_limits() {
    let s = TestServer::with(
        |c| c.limits.max_width = 256,
        FakeBackend::new().with_memory_plan(plan()),
    )
    .await;
    let body = refused(
        s.post(
            "/api/v1/jobs",
            json!({"prompt": "p", "width": 256, "height": 256, "batch_size": 8}),
        )
        .await,
    )
    .await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .ends_with("at batch 8 is 176x176"),
        "{body}"
    );
    let ready: Value = s.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["memory"]["largest_square_batch1"], 256);
}

#[tokio::test]
async fn readyz_reports_the_plan() {
    let s = server(FakeBackend::new()).await;
    let ready: Value = s.get("/readyz").await.json().await.unwrap();
    assert_eq!(
        ready,
        json!({"status": "ready", "memory": {
            "device": "default",
            "budget_bytes": 100u64 << 20,
            "budget_source": "--memory-limit",
            "weights_bytes": 36u64 << 20,
            "largest_square_batch1": 512,
            "vae_tiling": "off"
        }})
    );
    // Without a plan there is nothing to report.
    let plain = TestServer::start().await;
    let ready: Value = plain.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready, json!({"status": "ready"}));
}

#[tokio::test]
async fn the_batcher_never_combines_beyond_the_plan() {
    let fake = FakeBackend::new().with_step_delay(Duration::from_millis(40));
    let s = server(fake).await;
    // 256x256: four images fit in one batch (max_batch 8 would allow eight).
    let mut ids = Vec::new();
    for i in 0..7 {
        let resp = s
            .post(
                "/api/v1/jobs",
                json!({"prompt": format!("p{i}"), "width": 256, "height": 256, "steps": 3}),
            )
            .await;
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        assert_eq!(s.wait_job(id).await["status"], "succeeded");
    }
    let sizes = s.fake.batch_sizes();
    assert_eq!(sizes.iter().sum::<usize>(), 7);
    assert!(sizes.iter().all(|b| *b <= 4), "{sizes:?}");
    assert!(sizes.iter().any(|b| *b > 1), "{sizes:?}");
}
