//! With keys configured, each caller sees only its own jobs and images: another
//! caller's id answers exactly as an unknown id, also after a restart. An admin
//! key sees everything.

use reqwest::StatusCode;
use sdserve_server::{FakeBackend, ServerConfig};
use serde_json::{json, Value};

use crate::common::TestServer;

fn keys(c: &mut ServerConfig) {
    c.auth.api_keys = vec!["alice-key".into(), "bob-key".into()];
    c.auth.admin_keys = vec!["ops-key".into()];
}

async fn as_key(
    s: &TestServer,
    key: &str,
    method: reqwest::Method,
    path: &str,
) -> (StatusCode, Value) {
    let resp = s
        .client
        .request(method, s.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Every read and write of a job and its image, as `key` sees them.
async fn statuses(s: &TestServer, key: &str, job: &str, image: &str) -> Vec<(String, u16, Value)> {
    use reqwest::Method;
    let mut out = Vec::new();
    for (method, path) in [
        (Method::GET, format!("/api/v1/jobs/{job}")),
        (Method::GET, format!("/api/v1/jobs/{job}/events")),
        (Method::GET, format!("/api/v1/images/{image}")),
        (Method::GET, format!("/download/{image}")),
        (Method::POST, format!("/api/v1/jobs/{job}/cancel")),
    ] {
        let (status, body) = as_key(s, key, method, &path).await;
        // The error text names the id; what matters is that it is the unknown-id answer.
        let shape = json!({"error_type": body["error_type"], "field": body["field"], "detail": body["detail"].is_string()});
        out.push((path, status.as_u16(), shape));
    }
    out
}

#[tokio::test]
async fn callers_see_only_their_own_jobs_and_images() {
    let s = TestServer::with(keys, FakeBackend::new()).await;
    let (status, job) = {
        let resp = s
            .client
            .post(s.url("/api/v1/jobs"))
            .bearer_auth("alice-key")
            .json(&json!({"prompt": "alice's", "seed": 5}))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 202);
    let job_id = job["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let image_id = loop {
        let (_, view) = as_key(
            &s,
            "alice-key",
            reqwest::Method::GET,
            &format!("/api/v1/jobs/{job_id}"),
        )
        .await;
        if view["status"] == "succeeded" {
            break view["images"][0]["id"].as_str().unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "{view}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let unknown_job = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    let unknown_image = "77e55044-10b1-426f-9247-bb680e5fe0c8";

    let owner = statuses(&s, "alice-key", &job_id, &image_id).await;
    let codes: Vec<u16> = owner.iter().map(|r| r.1).collect();
    assert_eq!(codes, [200, 200, 200, 200, 409], "{owner:?}");
    let admin = statuses(&s, "ops-key", &job_id, &image_id).await;
    let codes: Vec<u16> = admin.iter().map(|r| r.1).collect();
    assert_eq!(codes, [200, 200, 200, 200, 409], "{admin:?}");

    let other = statuses(&s, "bob-key", &job_id, &image_id).await;
    let unknown = statuses(&s, "bob-key", unknown_job, unknown_image).await;
    for (seen, never) in other.iter().zip(&unknown) {
        assert_eq!(seen.1, 404, "{seen:?}");
        assert_eq!(
            (seen.1, &seen.2),
            (never.1, &never.2),
            "{seen:?} vs {never:?}"
        );
    }
    // Bob cannot delete it either; Alice's job is untouched.
    let (status, _) = as_key(
        &s,
        "bob-key",
        reqwest::Method::DELETE,
        &format!("/api/v1/jobs/{job_id}"),
    )
    .await;
    assert_eq!(status, 404);

    // Ownership is on disk: the same answers after a restart.
    let dir = s.dir.clone();
    s.stop().await.unwrap();
    let s = TestServer::on_dir(dir, keys, FakeBackend::new()).await;
    let other = statuses(&s, "bob-key", &job_id, &image_id).await;
    assert!(other.iter().all(|r| r.1 == 404), "{other:?}");
    let owner = statuses(&s, "alice-key", &job_id, &image_id).await;
    let codes: Vec<u16> = owner.iter().map(|r| r.1).collect();
    assert_eq!(codes, [200, 200, 200, 200, 409], "{owner:?}");
    let (status, _) = as_key(
        &s,
        "ops-key",
        reqwest::Method::DELETE,
        &format!("/api/v1/jobs/{job_id}"),
    )
    .await;
    assert_eq!(status, 204);
    let owner = statuses(&s, "alice-key", &job_id, &image_id).await;
    assert!(owner.iter().all(|r| r.1 == 404), "{owner:?}");
}
