//! Connection limits and bounded shutdown, driven with raw sockets: slow
//! headers and bodies are cut off, idle connections are closed, the connection
//! cap holds, and long legitimate requests (a slow txt2img, an SSE stream) are
//! never cut. SIGTERM returns within the drain timeout plus the grace period
//! whatever a client holds open.

use std::time::{Duration, Instant};

use sdserve_server::{FakeBackend, ServerConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::TestServer;

fn short_timeouts(c: &mut ServerConfig) {
    c.connections.header_read_timeout = Duration::from_millis(400);
    c.connections.body_read_timeout = Duration::from_millis(400);
    c.connections.keep_alive_timeout = Duration::from_millis(300);
    c.connections.shutdown_grace = Duration::from_millis(200);
}

async fn connect(s: &TestServer) -> TcpStream {
    TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Reads until the server closes the connection (or `limit` passes); returns
/// what was read and how long it took.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "connection still open after {limit:?}; read {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

#[tokio::test]
async fn trickled_headers_are_cut_off() {
    let s = TestServer::with(short_timeouts, FakeBackend::new()).await;
    let mut stream = connect(&s).await;
    stream.write_all(b"GET /livez HTTP/1.1\r\n").await.unwrap();
    let start = Instant::now();
    // One header byte every 100 ms: the whole head would take 3 s.
    for byte in b"Host: example.invalid\r\nX-Slow: yes\r\n\r\n" {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if start.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let (text, _) = read_until_closed(&mut stream, Duration::from_secs(2)).await;
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "closed after {:?}",
        start.elapsed()
    );
    assert!(!text.contains("alive"), "a slow head was served: {text}");
}

#[tokio::test]
async fn trickled_body_gets_408() {
    let s = TestServer::with(short_timeouts, FakeBackend::new()).await;
    let mut stream = connect(&s).await;
    stream
        .write_all(
            b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{",
        )
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b" ").await.is_err() {
                break;
            }
        }
        stream
    });
    let mut stream = writer.await.unwrap();
    let (text, _) = read_until_closed(&mut stream, Duration::from_secs(2)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(s.app.state().jobs.list().is_empty());
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let s = TestServer::with(short_timeouts, FakeBackend::new()).await;
    // Never sends a byte.
    let mut silent = connect(&s).await;
    let (_, took) = read_until_closed(&mut silent, Duration::from_secs(2)).await;
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // Idle after one keep-alive request.
    let mut kept = connect(&s).await;
    kept.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (text, took) = read_until_closed(&mut kept, Duration::from_secs(2)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("alive"), "{text}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_requests_and_event_streams_are_not_idle() {
    let s = TestServer::with(
        short_timeouts,
        FakeBackend::new().with_step_delay(Duration::from_millis(150)),
    )
    .await;
    // 8 steps × 150 ms: far past the keep-alive and header timeouts.
    let started = Instant::now();
    let resp = s
        .post("/sdapi/v1/txt2img", json!({"prompt": "slow", "steps": 8}))
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["images"].as_array().unwrap().len(), 1);
    assert!(started.elapsed() > Duration::from_millis(1000));

    let job: Value = s
        .post("/api/v1/jobs", json!({"prompt": "watched", "steps": 8}))
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();
    let events = s
        .get(&format!("/api/v1/jobs/{id}/events"))
        .await
        .text()
        .await
        .unwrap();
    assert!(events.contains("\"succeeded\""), "{events}");
}

#[tokio::test]
async fn the_connection_cap_holds() {
    let s = TestServer::with(
        |c| {
            c.connections.max_connections = 2;
            c.connections.keep_alive_timeout = Duration::from_secs(30);
        },
        FakeBackend::new(),
    )
    .await;
    let first = connect(&s).await;
    let second = connect(&s).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = connect(&s).await;
    let _ = third
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (text, took) = read_until_closed(&mut third, Duration::from_secs(2)).await;
    assert!(text.is_empty(), "served past the cap: {text}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    drop((first, second));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.get("/livez").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_whatever_clients_hold() {
    let mut s = TestServer::with(
        |c| {
            short_timeouts(c);
            c.connections.header_read_timeout = Duration::from_secs(60);
            c.connections.keep_alive_timeout = Duration::from_secs(60);
            c.drain_timeout = Duration::from_millis(300);
        },
        FakeBackend::new().with_step_delay(Duration::from_millis(100)),
    )
    .await;
    // A half-sent request head and a half-sent body, never completed.
    let mut half_head = connect(&s).await;
    half_head
        .write_all(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut half_body = connect(&s).await;
    half_body
        .write_all(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    // A job that cannot finish within the drain timeout.
    let job: Value = s
        .post("/api/v1/jobs", json!({"prompt": "long", "steps": 100}))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        job["status"] == "queued" || job["status"] == "running",
        "{job}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    s.signal_shutdown();
    let report = tokio::time::timeout(Duration::from_secs(10), s.join())
        .await
        .expect("serve returned")
        .unwrap();
    // drain 0.3 s + cancel wait (a step is 0.1 s) + grace 0.2 s, with room for a busy machine.
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(report.timed_out);
    assert_eq!(report.cancelled_jobs, 1);
    // Both held connections were closed by the server.
    let (_, took) = read_until_closed(&mut half_head, Duration::from_secs(1)).await;
    assert!(took < Duration::from_secs(1));
    let (_, took) = read_until_closed(&mut half_body, Duration::from_secs(1)).await;
    assert!(took < Duration::from_secs(1));
}
