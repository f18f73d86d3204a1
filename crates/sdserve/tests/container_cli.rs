//! What a container relies on, through the real binary: `serve` configured by
//! `SDSERVE_*` variables alone (no flags), JSON log lines on stderr, and
//! `sdserve healthcheck` telling a ready server from a stopped one by its exit
//! code.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, tiny_sd1};

fn sdserve() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sdserve"))
}

/// Runs `sdserve healthcheck --port PORT`; its exit code and output line.
fn healthcheck(port: u16) -> (Option<i32>, String) {
    let out = sdserve()
        .args(["healthcheck", "--port", &port.to_string(), "--timeout", "2"])
        .env_remove("SDSERVE_HOST")
        .output()
        .expect("sdserve healthcheck runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn wait_ready(child: &mut Child, port: u16, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "sdserve exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if healthcheck(port).0 == Some(0) {
            return;
        }
        assert!(Instant::now() < deadline, "not ready in 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serve_takes_its_settings_from_the_environment_and_logs_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log = dir.path().join("serve.log");
    let outputs = dir.path().join("outputs-from-env");

    // Nothing is listening yet: the probe fails with exit code 1.
    let (code, line) = healthcheck(port);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.contains("cannot connect"), "{line}");

    let mut child = sdserve()
        .arg("serve")
        .env("SDSERVE_MODEL", tiny_sd1())
        .env("SDSERVE_HOST", "127.0.0.1")
        .env("SDSERVE_PORT", port.to_string())
        .env("SDSERVE_OUTPUT_DIR", &outputs)
        .env("SDSERVE_MAX_STEPS", "3")
        .env("SDSERVE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("sdserve serve starts");
    wait_ready(&mut child, port, &log);

    let (code, line) = healthcheck(port);
    assert_eq!(code, Some(0), "{line}");
    assert!(line.trim_end().ends_with("/readyz: 200"), "{line}");

    // SDSERVE_MAX_STEPS took effect: 4 steps is past the limit, 3 is not.
    let client = reqwest::blocking::Client::new();
    let url = format!("http://127.0.0.1:{port}/generate");
    let refused = client
        .post(&url)
        .json(&serde_json::json!({"prompt": "a cat", "steps": 4, "scale": 1.0, "seed": 1}))
        .send()
        .expect("POST /generate");
    assert_eq!(refused.status(), 422);
    assert!(refused.text().unwrap_or_default().contains("steps"));
    let done: serde_json::Value = client
        .post(&url)
        .json(&serde_json::json!({"prompt": "a cat", "steps": 3, "scale": 1.0, "seed": 1}))
        .send()
        .expect("POST /generate")
        .json()
        .expect("JSON");
    let id = done["download_id"].as_str().expect("download_id");
    // SDSERVE_OUTPUT_DIR took effect: the PNG is there.
    assert!(
        outputs.join(format!("{id}.png")).is_file(),
        "no {id}.png in {}",
        outputs.display()
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit status {status}");
    let (code, _) = healthcheck(port);
    assert_eq!(code, Some(1), "a stopped server is unhealthy");

    // Every stderr line is one JSON object; the start-up lines are there.
    let text = std::fs::read_to_string(&log).expect("log");
    let mut messages = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["timestamp"].is_string(), "{line}");
        assert!(!line.contains('\u{1b}'), "ANSI escape in {line}");
        messages.push(
            value["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
    }
    assert!(
        messages.iter().any(|m| m.contains("model loaded; ready")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("SIGTERM")),
        "{messages:?}"
    );
}

#[test]
fn text_logs_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log = dir.path().join("serve.log");
    let mut child = sdserve()
        .arg("serve")
        .arg("--model")
        .arg(tiny_sd1())
        .args(["--port", &port.to_string(), "--output-dir"])
        .arg(dir.path().join("outputs"))
        .env("RUST_LOG", "info")
        .env_remove("SDSERVE_LOG_FORMAT")
        .env_remove("SDSERVE_HOST")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("sdserve serve starts");
    wait_ready(&mut child, port, &log);
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains(" INFO "), "no text log lines: {text}");
    assert!(text.contains("model loaded; ready"), "{text}");
    assert!(!text.contains('\u{1b}'), "ANSI escape: {text}");
}

/// `--hash-cache-dir` (here as its variable) moves the model-hash cache out of
/// the output folder, to a place replicas share and keep.
#[test]
fn the_hash_cache_goes_where_it_is_told() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log = dir.path().join("serve.log");
    let (outputs, hashes) = (dir.path().join("outputs"), dir.path().join("shared/hashes"));
    let mut child = sdserve()
        .arg("serve")
        .arg("--model")
        .arg(tiny_sd1())
        .args(["--port", &port.to_string(), "--output-dir"])
        .arg(&outputs)
        .env("SDSERVE_HASH_CACHE_DIR", &hashes)
        .env_remove("SDSERVE_HOST")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("sdserve serve starts");
    wait_ready(&mut child, port, &log);
    let _ = child.kill();
    let _ = child.wait();
    let cache = std::fs::read_to_string(hashes.join("model-hashes.json"))
        .unwrap_or_else(|e| panic!("no hash cache in {}: {e}", hashes.display()));
    assert!(cache.contains("sha256"), "{cache}");
    assert!(!outputs.join("model-hashes.json").exists());
}
