//! Several devices behind the one queue (`--device cuda:0,cuda:1`): one pool
//! and worker per device, batches running side by side, requests checked
//! against the device with the smallest memory budget, and `/readyz` naming
//! each device's plan. Each device is a FakeBackend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sdserve_server::engine_api::{Budget, MemoryPlan};
use sdserve_server::models::{Catalog, DevicePool, HashStore, ModelEntry, ModelPool, Models};
use sdserve_server::{App, Backend, FakeBackend, ServerConfig};
use serde_json::{json, Value};

use crate::common::TestServer;

/// `mib` of budget from `--memory-limit`, 36 MiB of weights, 256 bytes per pixel.
fn plan(mib: u64) -> MemoryPlan {
    let budget = Budget {
        bytes: mib << 20,
        source: "--memory-limit".into(),
        candidates: vec![],
    };
    MemoryPlan::per_pixel(budget, 36 << 20, 256)
}

/// A server whose model is loaded on two devices with the given budgets.
async fn two_devices(budgets: [u64; 2]) -> (TestServer, [Arc<FakeBackend>; 2]) {
    let fakes = budgets.map(|mib| {
        Arc::new(
            FakeBackend::new()
                .with_step_delay(Duration::from_millis(20))
                .with_memory_plan(plan(mib)),
        )
    });
    let name = fakes[0].info().name.clone();
    let devices = ["cuda:0", "cuda:1"]
        .iter()
        .zip(&fakes)
        .map(|(label, fake)| {
            let pool = ModelPool::new(1, None);
            pool.insert(&name, fake.clone());
            DevicePool {
                label: label.to_string(),
                pool,
            }
        })
        .collect();
    let catalog = Catalog::fixed(vec![ModelEntry::named(&name)], HashStore::in_memory());
    let models = Models::new(catalog, devices, &name).unwrap();
    let info = models.load_default_everywhere().unwrap();
    assert_eq!(info.name, name);
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = App::new(ServerConfig::new(dir.path())).unwrap();
    app.install_models(Arc::new(models)).unwrap();
    let s = TestServer::serve(app, fakes[0].clone(), dir).await;
    (s, fakes)
}

#[tokio::test]
async fn two_devices_run_two_batches_at_once_from_one_queue() {
    let (s, fakes) = two_devices([400, 400]).await;
    // Prompts differ in steps, so the two jobs can never share a batch.
    let a = s
        .submit_job(json!({"prompt": "a", "steps": 30, "width": 64, "height": 64}))
        .await;
    let b = s
        .submit_job(json!({"prompt": "b", "steps": 31, "width": 64, "height": 64}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (sa, sb) = (s.job_status(&a).await, s.job_status(&b).await);
        if sa == "running" && sb == "running" {
            break;
        }
        assert!(
            Instant::now() < deadline && sa != "succeeded" && sb != "succeeded",
            "the jobs never ran side by side: {sa}, {sb}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(s.metric("sd_requests_running").await, 2.0);
    for id in [&a, &b] {
        assert_eq!(s.wait_job(id).await["status"], "succeeded");
    }
    assert_eq!(fakes[0].batch_sizes(), [1], "one batch on each device");
    assert_eq!(fakes[1].batch_sizes(), [1]);
    assert_eq!(s.metric("sd_requests_running").await, 0.0);
}

#[tokio::test]
async fn requests_are_checked_against_the_device_with_the_smallest_budget() {
    // cuda:0 could hold 1024x1024 (292 MiB, up to 1216 px); cuda:1 holds 512x512 at most.
    let (s, fakes) = two_devices([400, 100]).await;
    let ready: Value = s.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["memory"]["device"], "cuda:1", "{ready}");
    assert_eq!(ready["memory"]["budget_bytes"], 100u64 << 20);
    let devices: Vec<(Value, Value, Value)> = ready["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device"].clone(),
                d["budget_bytes"].clone(),
                d["largest_square_batch1"].clone(),
            )
        })
        .collect();
    assert_eq!(
        devices,
        [
            (json!("cuda:0"), json!(400u64 << 20), json!(1216)),
            (json!("cuda:1"), json!(100u64 << 20), json!(512)),
        ]
    );
    let resp = s
        .post(
            "/api/v1/jobs",
            json!({"prompt": "p", "width": 1024, "height": 1024, "steps": 2}),
        )
        .await;
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("largest 1:1 size that fits at batch 1 is 512x512"),
        "{body}"
    );
    let fits = s
        .submit_job(json!({"prompt": "p", "width": 512, "height": 512, "steps": 2}))
        .await;
    assert_eq!(s.wait_job(&fits).await["status"], "succeeded");
    let ran: usize = fakes.iter().map(|f| f.batch_sizes().len()).sum();
    assert_eq!(ran, 1);
}
