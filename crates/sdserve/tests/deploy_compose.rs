//! deploy/compose.yaml brought up with Docker Compose (Debian's `docker-compose`
//! or the `docker compose` plugin) on the image built from the binary under
//! test: healthy through its health check, `/generate` + `/download` on
//! `PUBLIC_PORT`, and the outputs volume keeping a result across a recreated
//! container. The GPU override must merge into a valid file (no GPU here to run it).

mod common;

use std::process::Command;
use std::time::Duration;

use common::deploy::{self, run_ok};
use serde_json::Value;

/// `docker compose` when the plugin is there, else Debian's `docker-compose`.
fn compose() -> Command {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if plugin {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else {
        Command::new("docker-compose")
    }
}

/// One compose project, taken down with its volumes when dropped.
struct Project {
    name: String,
    port: u16,
}

impl Project {
    fn command(&self) -> Command {
        let mut c = compose();
        c.current_dir(common::repo_root())
            .args(["-p", &self.name, "-f", "deploy/compose.yaml"])
            .env("PUBLIC_PORT", self.port.to_string())
            .env("SDSERVE_IMAGE", deploy::TEST_IMAGE)
            .env("MODELS_DIR", deploy::fixture_models())
            .env("MODEL", "tiny-sd1")
            .env("MEMORY_LIMIT", "1g")
            .env("HEALTH_INTERVAL", "1s");
        c
    }

    /// The service's container, once healthy.
    fn healthy_container(&self) -> String {
        let id = run_ok(self.command().args(["ps", "-q", "sdserve"]));
        assert!(!id.is_empty(), "no sdserve container");
        deploy::wait_healthy(&id, Duration::from_secs(120));
        id
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.command().args(["down", "-v", "-t", "5"]).output();
    }
}

#[test]
fn compose_serves_generate_and_keeps_outputs_in_its_volume() {
    if deploy::skipped("compose_serves_generate_and_keeps_outputs_in_its_volume") {
        return;
    }
    deploy::test_image();
    let project = Project {
        name: format!("sdserve-cargo-test-{}", std::process::id()),
        port: common::free_port(),
    };
    run_ok(project.command().args(["up", "-d"]));
    let first = project.healthy_container();
    assert_eq!(
        deploy::inspect(&first, "{{.HostConfig.Memory}}"),
        (1u64 << 30).to_string()
    );

    let base = format!("http://127.0.0.1:{}", project.port);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let done: Value = client
        .post(format!("{base}/generate"))
        .json(&serde_json::json!({"prompt": "a cat", "steps": 2, "seed": 3}))
        .send()
        .expect("POST /generate")
        .error_for_status()
        .expect("/generate succeeds")
        .json()
        .expect("JSON");
    let id = done["download_id"]
        .as_str()
        .expect("download_id")
        .to_string();
    let download = |what: &str| {
        let response = client
            .get(format!("{base}/download/{id}"))
            .send()
            .unwrap_or_else(|e| panic!("GET /download ({what}): {e}"));
        assert_eq!(response.status(), 200, "{what}");
        response.bytes().expect("PNG").to_vec()
    };
    let before = download("first container");
    assert!(before.starts_with(b"\x89PNG"));

    // A new container (new image, new settings...) finds the result in the volume.
    run_ok(project.command().args(["up", "-d", "--force-recreate"]));
    let second = project.healthy_container();
    assert_ne!(first, second, "the container was not recreated");
    assert_eq!(download("recreated container"), before);
}

#[test]
fn the_gpu_override_reserves_an_nvidia_gpu() {
    if deploy::skipped("the_gpu_override_reserves_an_nvidia_gpu") {
        return;
    }
    let config = run_ok(
        compose()
            .current_dir(common::repo_root())
            .args([
                "-f",
                "deploy/compose.yaml",
                "-f",
                "deploy/compose.gpu.yaml",
                "config",
            ])
            .env_remove("SDSERVE_IMAGE"),
    );
    for want in [
        "driver: nvidia",
        "- gpu",
        "image: sdserve:cuda",
        "SDSERVE_DEVICE: cuda",
    ] {
        assert!(config.contains(want), "no `{want}` in:\n{config}");
    }
    let cpu = run_ok(
        compose()
            .current_dir(common::repo_root())
            .args(["-f", "deploy/compose.yaml", "config"])
            .env_remove("SDSERVE_IMAGE"),
    );
    assert!(!cpu.contains("nvidia"), "the GPU is opt-in:\n{cpu}");
}
