//! The web page at `/` in a real browser: Debian's `chromium` driven by
//! Playwright for Python (`tests/clients/test_web_page.py`, run with
//! `$SDSERVE_TEST_PYTHON`), against `sdserve serve` on the tiny model. The
//! browser is `$SDSERVE_TEST_CHROMIUM`, else `/usr/bin/chromium`; a missing
//! one fails these tests (CI installs it in `.ci/run`), never skips them.
//!
//! Screenshots land in `target/web-screenshots/`; with
//! `SDSERVE_WRITE_SCREENSHOT=1` the desktop one also replaces
//! `docs/screenshot.png`, which the README shows.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{repo_root, Server};

fn python() -> String {
    std::env::var("SDSERVE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("SDSERVE_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "no browser at {}: install Debian's chromium (`apt-get install chromium`) or set \
         SDSERVE_TEST_CHROMIUM; the web page tests need a real browser",
        path.display()
    );
    path
}

/// Where this run's screenshots go (kept after the test, for people to look at).
fn screenshots(scenario: &str) -> PathBuf {
    let dir = repo_root().join("target/web-screenshots").join(scenario);
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

/// Runs one scenario of the browser script against `server`.
fn run_page_script(server: &Server, scenario: &str, extra: &[&str], workdir: &Path) -> PathBuf {
    let shots = screenshots(scenario);
    let python = python();
    let out = Command::new(&python)
        .arg(repo_root().join("tests/clients/test_web_page.py"))
        .args(["--base-url", &server.base, "--scenario", scenario])
        .arg("--chromium")
        .arg(chromium())
        .arg("--screenshots")
        .arg(&shots)
        .args(extra)
        .current_dir(workdir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} ({e}); set SDSERVE_TEST_PYTHON"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "a Python package is missing for {python}: `{python} -m pip install -r \
         scripts/requirements-test.txt`\n{stderr}"
    );
    assert!(
        out.status.success(),
        "{scenario} failed ({}); screenshots in {}\n{stdout}\n{stderr}\nserver log:\n{}",
        out.status,
        shots.display(),
        server.log_text()
    );
    println!("{stdout}");
    shots
}

#[test]
fn the_page_generates_watches_cancels_and_reads_png_info_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let shots = run_page_script(&server, "page", &[], dir.path());
    if std::env::var_os("SDSERVE_WRITE_SCREENSHOT").is_some_and(|v| v == "1") {
        let docs = repo_root().join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(shots.join("screenshot.png"), docs.join("screenshot.png")).unwrap();
    }
}

#[test]
fn the_page_asks_for_the_key_once_and_shows_a_full_queue() {
    let dir = tempfile::tempdir().unwrap();
    let key = "web-test-key";
    let server = Server::start(dir.path(), &["--api-key", key, "--queue-size", "1"]);
    run_page_script(&server, "auth", &["--key", key], dir.path());
}

#[test]
fn the_page_signs_in_with_basic_credentials_and_shows_the_memory_plans_413() {
    let dir = tempfile::tempdir().unwrap();
    // 60 MiB fits the tiny model up to 144x144.
    let server = Server::start(
        dir.path(),
        &["--api-auth", "ann:pw-1", "--memory-limit", "60M"],
    );
    run_page_script(&server, "basic", &["--basic", "ann:pw-1"], dir.path());
}
