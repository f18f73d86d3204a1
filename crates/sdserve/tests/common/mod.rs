//! Shared by the end-to-end tests: run the real `sdserve` binary (`serve` on a
//! loopback port with the tiny fixture model, and `generate` for reference
//! images), plus small HTTP and PNG helpers.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sdserve_engine::png;

pub mod deploy;

/// The tiny SD 1.x fixture model.
pub fn tiny_sd1() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-sd1")
}

/// The repository root (where `tests/clients` lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A free loopback port (bound then released; the race is harmless in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running `sdserve serve`.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub port: u16,
    pub log: PathBuf,
}

impl Server {
    /// Starts `sdserve serve --model tiny-sd1` on a free port and waits for `/readyz`.
    pub fn start(output_dir: &Path, extra: &[&str]) -> Self {
        Self::start_in(output_dir, extra, None)
    }

    /// [`Server::start`], the process first moving itself into the cgroup
    /// whose `cgroup.procs` file is `procs` (through `sh`, which then execs sdserve).
    pub fn start_in(output_dir: &Path, extra: &[&str], procs: Option<&Path>) -> Self {
        let model = tiny_sd1();
        Self::launch(
            output_dir,
            &[OsStr::new("--model"), model.as_os_str()],
            extra,
            procs,
        )
    }

    /// Starts `sdserve serve` with `models` as its model flags (`--models-dir`...)
    /// instead of `--model tiny-sd1`.
    pub fn start_with_models(output_dir: &Path, models: &[&OsStr], extra: &[&str]) -> Self {
        Self::launch(output_dir, models, extra, None)
    }

    fn launch(output_dir: &Path, models: &[&OsStr], extra: &[&str], procs: Option<&Path>) -> Self {
        let port = free_port();
        let log = output_dir.join(format!("serve-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = match procs {
            None => Command::new(env!("CARGO_BIN_EXE_sdserve")),
            Some(procs) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                    .arg(procs)
                    .arg(env!("CARGO_BIN_EXE_sdserve"));
                sh
            }
        };
        let child = command
            .arg("serve")
            .args(models)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--output-dir")
            .arg(output_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("sdserve serve starts");
        let mut server = Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            port,
            log,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("sdserve serve exited with {status}:\n{}", self.log_text());
            }
            let ready = client
                .get(self.url("/readyz"))
                .send()
                .map(|r| r.status() == 200)
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server not ready:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process with SIGKILL (no drain, no cleanup) and waits for it.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        let sent = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let _ = child.wait();
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Generation settings, as `sdserve generate` flags.
#[derive(Clone, Debug)]
pub struct Settings {
    pub prompt: &'static str,
    pub negative_prompt: &'static str,
    pub seed: u64,
    pub steps: usize,
    pub cfg_scale: f64,
    pub sampler: &'static str,
    pub width: usize,
    pub height: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prompt: "a red bicycle leaning on a wall",
            negative_prompt: "blurry",
            seed: 1234,
            steps: 4,
            cfg_scale: 7.5,
            sampler: "Euler a",
            width: 64,
            height: 64,
        }
    }
}

/// The PNG `sdserve generate` writes for these settings.
pub fn cli_png(settings: &Settings, dir: &Path) -> Vec<u8> {
    cli_png_of(&tiny_sd1(), settings, dir)
}

/// The PNG `sdserve generate --model MODEL` writes for these settings.
pub fn cli_png_of(model: &Path, settings: &Settings, dir: &Path) -> Vec<u8> {
    cli_png_with(model, settings, dir, &[])
}

/// [`cli_png_of`] with extra flags (hires fix, image to image...).
pub fn cli_png_with(model: &Path, settings: &Settings, dir: &Path, extra: &[&str]) -> Vec<u8> {
    let output = dir.join(format!("cli-{}-{}.png", settings.seed, uuid_like()));
    let out = Command::new(env!("CARGO_BIN_EXE_sdserve"))
        .arg("generate")
        .arg("--model")
        .arg(model)
        .args(["--prompt", settings.prompt])
        .args(["--negative-prompt", settings.negative_prompt])
        .args(["--seed", &settings.seed.to_string()])
        .args(["--steps", &settings.steps.to_string()])
        .args(["--cfg-scale", &settings.cfg_scale.to_string()])
        .args(["--sampler", settings.sampler])
        .args(["--width", &settings.width.to_string()])
        .args(["--height", &settings.height.to_string()])
        .args(extra)
        .arg("--output")
        .arg(&output)
        .output()
        .expect("sdserve generate runs");
    assert!(
        out.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&output).expect("generate wrote its PNG")
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Asserts two PNGs hold the same pixels and the same A1111 parameters.
pub fn assert_same_image(got: &[u8], want: &[u8], what: &str) {
    let (gw, gh, g) = png::decode_rgb(got).expect("server PNG decodes");
    let (ww, wh, w) = png::decode_rgb(want).expect("CLI PNG decodes");
    assert_eq!((gw, gh), (ww, wh), "{what}: size");
    if g != w {
        let diffs: Vec<i32> = g
            .iter()
            .zip(&w)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .collect();
        let differing = diffs.iter().filter(|d| **d > 0).count();
        let max = diffs.iter().max().copied().unwrap_or(0);
        panic!(
            "{what}: pixels differ from `sdserve generate`: {differing} of {} channel values, max difference {max}",
            diffs.len()
        );
    }
    assert_eq!(
        png::read_parameters(got),
        png::read_parameters(want),
        "{what}: infotext"
    );
}
