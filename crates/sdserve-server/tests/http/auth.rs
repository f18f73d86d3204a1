//! API keys and HTTP Basic: every route but the probes needs one when configured.

use base64::Engine as _;
use sdserve_server::BasicCredential;
use serde_json::{json, Value};

use crate::common::TestServer;

async fn secured() -> TestServer {
    TestServer::with(
        |c| {
            c.auth.api_keys = vec!["key-one".into(), "Key-Two".into()];
            c.auth.basic = vec!["ann:pa:ss".parse::<BasicCredential>().unwrap()];
        },
        Default::default(),
    )
    .await
}

#[tokio::test]
async fn every_route_but_probes_requires_credentials() {
    let s = secured().await;
    for path in ["/livez", "/readyz"] {
        assert_eq!(s.get(path).await.status(), 200, "{path}");
    }
    let gets = [
        "/api/v1/models",
        "/api/v1/samplers",
        "/sdapi/v1/sd-models",
        "/sdapi/v1/progress",
        "/sdapi/v1/options",
        "/v1/models",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/download/67e55044-10b1-426f-9247-bb680e5fe0c8",
    ];
    for path in gets {
        let resp = s.get(path).await;
        assert_eq!(resp.status(), 401, "{path}");
        assert!(resp.headers().contains_key("www-authenticate"), "{path}");
    }
    let posts = [
        "/api/v1/jobs",
        "/sdapi/v1/txt2img",
        "/v1/images/generations",
        "/generate",
        "/sdapi/v1/interrupt",
    ];
    for path in posts {
        let resp = s.post(path, json!({"prompt": "x"})).await;
        assert_eq!(resp.status(), 401, "{path}");
        let body: Value = resp.json().await.unwrap();
        match path {
            "/v1/images/generations" => assert_eq!(body["error"]["code"], "invalid_api_key"),
            "/api/v1/jobs" => assert_eq!(body["error_type"], "unauthorized"),
            _ => assert!(body["detail"].is_string(), "{path}: {body}"),
        }
    }
    // Nothing unauthenticated was queued or counted.
    assert_eq!(s.app.state().jobs.queued(), 0);
}

#[tokio::test]
async fn keys_and_basic_pairs_are_checked_exactly() {
    let s = secured().await;
    let ok = |r: reqwest::RequestBuilder| async move { r.send().await.unwrap().status().as_u16() };
    let url = s.url("/v1/models");
    assert_eq!(ok(s.client.get(&url).bearer_auth("key-one")).await, 200);
    assert_eq!(ok(s.client.get(&url).bearer_auth("Key-Two")).await, 200);
    assert_eq!(ok(s.client.get(&url).bearer_auth("key-two")).await, 401);
    assert_eq!(ok(s.client.get(&url).bearer_auth("key-one ")).await, 200);
    assert_eq!(ok(s.client.get(&url).bearer_auth("key")).await, 401);
    assert_eq!(
        ok(s.client.get(&url).basic_auth("ann", Some("pa:ss"))).await,
        200
    );
    assert_eq!(
        ok(s.client.get(&url).basic_auth("ann", Some("pa"))).await,
        401
    );
    assert_eq!(
        ok(s.client.get(&url).basic_auth("bob", Some("pa:ss"))).await,
        401
    );
    assert_eq!(
        ok(s.client
            .get(&url)
            .header("authorization", "Basic !!notbase64"))
        .await,
        401
    );
    let token = base64::engine::general_purpose::STANDARD.encode("ann:pa:ss");
    let resp = s
        .client
        .post(s.url("/generate"))
        .header("authorization", format!("Basic {token}"))
        .json(&json!({"prompt": "x", "seed": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn without_credentials_configured_everything_is_open() {
    let s = TestServer::start().await;
    assert_eq!(s.get("/v1/models").await.status(), 200);
    assert_eq!(
        s.client
            .get(s.url("/v1/models"))
            .bearer_auth("whatever")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn openai_url_links_work_without_a_key_and_only_as_signed() {
    let s = secured().await;
    let body: Value = s
        .client
        .post(s.url("/v1/images/generations"))
        .bearer_auth("key-one")
        .json(&json!({"prompt": "x", "seed": 3, "response_format": "url"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = body["data"][0]["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{}/v1/images/files/", s.base)),
        "{url}"
    );
    // A plain GET with no credentials, as a browser or curl does.
    let plain = reqwest::get(&url).await.unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.headers()["content-type"], "image/png");
    assert_eq!(
        plain.bytes().await.unwrap().to_vec(),
        crate::common::expected_pngs(&crate::common::request("x", 3))[0]
    );
    // Any change to the id, the expiry or the signature is refused.
    let (path, query) = url.split_once('?').unwrap();
    let expires: u64 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("expires="))
        .unwrap()
        .parse()
        .unwrap();
    let signature = query.split_once("signature=").unwrap().1;
    let id = path.rsplit('/').next().unwrap();
    let other_id = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    for tampered in [
        format!("{path}?expires={}&signature={signature}", expires + 3600),
        format!("{}{other_id}?{query}", path.trim_end_matches(id)),
        format!("{path}?expires={expires}&signature={}", "0".repeat(64)),
        format!("{path}?expires={expires}"),
        path.to_string(),
    ] {
        let resp = reqwest::get(&tampered).await.unwrap();
        assert_eq!(resp.status(), 403, "{tampered}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_link", "{body}");
    }
    // An expired link: signed for the past with the server's own key.
    let image = id.parse().unwrap();
    let old = s.app.state().signer.link(image, 1_000, 60);
    let resp = reqwest::get(s.url(&old)).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("expired"));
}
