//! Shared by the deployment tests (`deploy_*.rs`): whether they may run, the
//! image built from the binary under test, and small Docker helpers.
//!
//! They need a Docker daemon with gVisor's `runsc` runtime (`scripts/docker-up.sh`
//! starts one; CI runs it) and the deploy venv (`scripts/requirements-deploy.txt`).
//! Missing either is a failure, not a skip: a deployment test that silently skips
//! in CI proves nothing. Only `SDSERVE_SKIP_DEPLOY_TESTS=1`, set by hand on a
//! machine without them, turns them into a printed skip.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::repo_root;

/// The image every deployment test runs, built once per test binary.
pub const TEST_IMAGE: &str = "sdserve:cargo-test";

/// True when the deployment tests were asked to skip; says so on stderr.
pub fn skipped(test: &str) -> bool {
    let skip = std::env::var("SDSERVE_SKIP_DEPLOY_TESTS").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("{test}: skipped (SDSERVE_SKIP_DEPLOY_TESTS=1)");
    }
    skip
}

/// Runs a command; panics with its output if it cannot start.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Runs a command that must succeed; its stdout, trimmed.
pub fn run_ok(command: &mut Command) -> String {
    let out = run(command);
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn docker() -> Command {
    Command::new("docker")
}

/// Panics unless a Docker daemon with `runsc` answers.
pub fn require_docker() {
    let info = Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output();
    match info {
        Ok(out) if out.status.success() => {
            let runtimes = String::from_utf8_lossy(&out.stdout);
            assert!(
                runtimes.contains("\"runsc\""),
                "the Docker daemon has no runsc runtime ({runtimes}): run scripts/docker-up.sh's setup"
            );
        }
        Ok(out) => panic!(
            "no Docker daemon ({}): run `bash scripts/docker-up.sh` (as root, after \
             apt-get install docker.io runsc docker-compose), or set SDSERVE_SKIP_DEPLOY_TESTS=1",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "no docker command ({e}): apt-get install docker.io runsc docker-compose, \
             then bash scripts/docker-up.sh; or set SDSERVE_SKIP_DEPLOY_TESTS=1"
        ),
    }
}

/// Builds [`TEST_IMAGE`] from the binary under test with scripts/build-image.sh, once.
pub fn test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        require_docker();
        let line = run_ok(
            Command::new("bash")
                .arg(repo_root().join("scripts/build-image.sh"))
                .args([
                    "--binary",
                    env!("CARGO_BIN_EXE_sdserve"),
                    "--tag",
                    TEST_IMAGE,
                ]),
        );
        eprintln!("{line}");
    });
    TEST_IMAGE
}

/// The tiny fixture models' folder, absolute (for bind mounts).
pub fn fixture_models() -> PathBuf {
    repo_root()
        .join("fixtures/models")
        .canonicalize()
        .expect("fixtures/models exists")
}

/// `docker inspect -f FORMAT ID`.
pub fn inspect(id: &str, format: &str) -> String {
    run_ok(docker().args(["inspect", "-f", format, id]))
}

/// Waits until the container's health check reports `healthy`; panics with its
/// logs if it stops or turns unhealthy first.
pub fn wait_healthy(id: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let state = inspect(id, "{{.State.Status}} {{.State.Health.Status}}");
        match state.as_str() {
            "running healthy" => return,
            s if s.starts_with("exited") || s.ends_with("unhealthy") => {
                panic!("container {id} is {s}:\n{}", logs(id))
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "container {id} not healthy in {within:?} ({state}):\n{}",
            logs(id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The container's stdout and stderr.
pub fn logs(id: &str) -> String {
    let out = run(docker().args(["logs", id]));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Removes a container when dropped, so a failing test leaves none running.
pub struct Container(pub String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker().args(["rm", "-f", &self.0]).output();
    }
}
