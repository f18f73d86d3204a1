//! The web page and the native API it needs: `/` and `/ui/*` are embedded,
//! public and carry a same-origin-only Content-Security-Policy; the caller's
//! job list (own jobs only, newest first, also after a restart, never a
//! response-only result); a running job's ETA and live preview (on its SSE
//! stream, and only its own); the limits and the samplers' schedules.

use std::time::Duration;

use sdserve_server::{FakeBackend, ServerConfig};
use serde_json::{json, Value};

use crate::common::{assert_error, TestServer};

fn keys(c: &mut ServerConfig) {
    c.auth.api_keys = vec!["alice-key".into(), "bob-key".into()];
}

#[tokio::test]
async fn the_page_and_its_files_are_public_with_a_same_origin_policy() {
    let s = TestServer::with(keys, FakeBackend::new()).await;
    let page = s.get("/").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("http"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/ui/main.js">"#));
    for (path, kind) in [
        ("/ui/main.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let resp = s.get(path).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], kind, "{path}");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        assert!(resp.headers().contains_key("content-security-policy"));
    }
    assert_error(s.get("/ui/..%2FCargo.toml").await, 404, "not_found").await;
    assert_error(s.get("/ui/secret.js").await, 404, "not_found").await;
    // The API itself still wants a key.
    assert_eq!(s.get("/api/v1/jobs").await.status(), 401);
}

async fn submit(s: &TestServer, key: &str, body: Value) -> String {
    let resp = s
        .client
        .post(s.url("/api/v1/jobs"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn listed(s: &TestServer, key: &str, query: &str) -> Vec<String> {
    let resp = s
        .client
        .get(s.url(&format!("/api/v1/jobs{query}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_job_list_is_the_callers_own_newest_first_and_survives_a_restart() {
    let s = TestServer::with(keys, FakeBackend::new()).await;
    let mut alice = Vec::new();
    for seed in 0..3 {
        let id = submit(&s, "alice-key", json!({"prompt": "a", "seed": seed})).await;
        s.client
            .get(s.url(&format!("/api/v1/jobs/{id}")))
            .bearer_auth("alice-key")
            .send()
            .await
            .unwrap();
        alice.push(id);
        // Distinct creation times, so "newest first" is one order.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bob = submit(&s, "bob-key", json!({"prompt": "b"})).await;
    let newest_first: Vec<String> = alice.iter().rev().cloned().collect();
    // Wait for all four to finish (as their owners).
    for id in alice.iter().chain([&bob]) {
        let key = if id == &bob { "bob-key" } else { "alice-key" };
        for _ in 0..300 {
            let job: Value = s
                .client
                .get(s.url(&format!("/api/v1/jobs/{id}")))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if job["status"] == "succeeded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(listed(&s, "alice-key", "").await, newest_first);
    assert_eq!(listed(&s, "bob-key", "").await, vec![bob.clone()]);
    assert_eq!(listed(&s, "alice-key", "?limit=2").await, newest_first[..2]);
    for bad in ["?limit=0", "?limit=101", "?limit=x"] {
        let resp = s
            .client
            .get(s.url(&format!("/api/v1/jobs{bad}")))
            .bearer_auth("alice-key")
            .send()
            .await
            .unwrap();
        let body = assert_error(resp, 422, "limit").await;
        assert_eq!(body["field"], "limit");
    }
    // A synchronous A1111 job without save_images leaves no listed result.
    let resp = s
        .client
        .post(s.url("/sdapi/v1/txt2img"))
        .bearer_auth("alice-key")
        .json(&json!({"prompt": "gone"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(listed(&s, "alice-key", "").await, newest_first);

    // After a restart the jobs come from their records on disk.
    let dir = s.dir.clone();
    s.stop().await.unwrap();
    let again = TestServer::on_dir(dir, keys, FakeBackend::new()).await;
    assert_eq!(listed(&again, "alice-key", "").await, newest_first);
    assert_eq!(listed(&again, "bob-key", "").await, vec![bob]);
}

#[tokio::test]
async fn a_script_gets_basic_under_a_name_browsers_leave_to_it() {
    let s = TestServer::with(
        |c| c.auth.basic = vec!["ann:pw".parse().unwrap()],
        FakeBackend::new(),
    )
    .await;
    let plain = s.get("/api/v1/models").await;
    assert_eq!(plain.status(), 401);
    assert_eq!(
        plain.headers()["www-authenticate"],
        r#"Basic realm="sdserve""#
    );
    let script = s
        .client
        .get(s.url("/api/v1/models"))
        .header("X-Requested-With", "XMLHttpRequest")
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 401);
    assert_eq!(
        script.headers()["www-authenticate"],
        r#"xBasic realm="sdserve""#
    );
}

/// The `data` of the SSE events up to the first one `stop` accepts.
async fn events_until(s: &TestServer, id: &str, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut resp = s.get(&format!("/api/v1/jobs/{id}/events")).await;
    let mut text = String::new();
    let mut seen = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                let job: Value = serde_json::from_str(data).unwrap();
                let done = stop(&job);
                seen.push(job);
                if done {
                    return seen;
                }
            }
        }
    }
    seen
}

#[tokio::test]
async fn a_running_job_shows_its_eta_and_its_own_live_preview() {
    let fake = FakeBackend::new().with_step_delay(Duration::from_millis(150));
    let s = TestServer::with(|_| {}, fake).await;
    let first = s
        .submit_job(json!({"prompt": "a", "seed": 1, "steps": 6}))
        .await;
    // Another size: not batched with the first, so it waits.
    let second = s
        .submit_job(json!({"prompt": "b", "seed": 2, "width": 32}))
        .await;
    let events = events_until(&s, &first, |j| {
        j["progress"]["step"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    let running = events.last().unwrap();
    assert_eq!(running["status"], "running");
    let preview = running["preview"].as_str().unwrap();
    assert!(preview.starts_with("data:image/png;base64,"), "{preview}");
    let eta = running["eta_seconds"].as_f64().unwrap();
    assert!(eta > 0.0 && eta < 30.0, "{eta}");
    // The waiting job has neither; nor does it show the first one's preview.
    let waiting: Value = s
        .get(&format!("/api/v1/jobs/{second}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(waiting["status"], "queued");
    assert_eq!(waiting["preview"], Value::Null);
    assert_eq!(waiting["eta_seconds"], Value::Null);
    let done = s.wait_job(&first).await;
    assert_eq!(done["preview"], Value::Null);
    assert_eq!(done["eta_seconds"], Value::Null);
    assert!(done["images"][0]["infotext"]
        .as_str()
        .unwrap()
        .contains("Seed: 1"));
    s.wait_job(&second).await;
}

#[tokio::test]
async fn limits_and_sampler_schedules_describe_the_form() {
    let s = TestServer::with(
        |c| {
            c.limits.max_width = 512;
            c.limits.max_steps = 40;
        },
        FakeBackend::new(),
    )
    .await;
    let limits: Value = s.get("/api/v1/limits").await.json().await.unwrap();
    assert_eq!(limits["max_width"], 512);
    assert_eq!(limits["max_steps"], 40);
    for key in [
        "max_height",
        "max_pixels",
        "max_batch",
        "max_prompt_chars",
        "max_body_bytes",
    ] {
        assert!(limits[key].as_u64().unwrap() > 0, "{key}");
    }
    // The form offers, per sampler, exactly the schedule types a job takes:
    // each listed pair is accepted, each other one refused naming the field.
    let samplers: Value = s.get("/api/v1/samplers").await.json().await.unwrap();
    let all = ["automatic", "karras", "exponential", "sgm_uniform", "beta"];
    for sampler in samplers.as_array().unwrap() {
        let id = sampler["id"].as_str().unwrap();
        let listed: Vec<&str> = sampler["schedule_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert_eq!(listed[0], "automatic", "{id}");
        for schedule in all {
            let body = json!({"prompt": "p", "sampler": id, "schedule_type": schedule, "steps": 2});
            let resp = s.post("/api/v1/jobs", body).await;
            if listed.contains(&schedule) {
                assert_eq!(resp.status(), 202, "{id} + {schedule}");
            } else {
                assert_error(resp, 422, "schedule_type").await;
            }
        }
    }
}
