//! End-to-end tests of `sdserve serve` with the tiny fixture model: every
//! dialect returns the image `sdserve generate` writes for the same settings,
//! batched jobs match solo ones, results survive a restart, SIGTERM drains and
//! exits 0, and the auth flags work.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{assert_same_image, cli_png, Server, Settings};
use reqwest::blocking::Client;
use serde_json::{json, Value};

fn b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

fn wait_job(client: &Client, server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job: Value = client
            .get(server.url(&format!("/api/v1/jobs/{id}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or("")) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} did not finish: {job}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn native_png(client: &Client, server: &Server, body: Value) -> Vec<u8> {
    let resp = client
        .post(server.url("/api/v1/jobs"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = wait_job(client, server, &id);
    assert_eq!(job["status"], "succeeded", "{job}");
    let url = job["images"][0]["url"].as_str().unwrap();
    client
        .get(server.url(url))
        .send()
        .unwrap()
        .bytes()
        .unwrap()
        .to_vec()
}

#[test]
fn every_dialect_returns_the_cli_image() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = Client::new();
    let s = Settings::default();
    let want = cli_png(&s, dir.path());

    let native = native_png(
        &client,
        &server,
        json!({
            "prompt": s.prompt, "negative_prompt": s.negative_prompt, "seed": s.seed,
            "steps": s.steps, "cfg_scale": s.cfg_scale, "sampler": s.sampler,
            "width": s.width, "height": s.height
        }),
    );
    assert_same_image(&native, &want, "native");

    let a1111: Value = client
        .post(server.url("/sdapi/v1/txt2img"))
        .json(&json!({
            "prompt": s.prompt, "negative_prompt": s.negative_prompt, "seed": s.seed,
            "steps": s.steps, "cfg_scale": s.cfg_scale, "sampler_name": s.sampler,
            "scheduler": "Automatic", "width": s.width, "height": s.height
        }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_same_image(&b64(a1111["images"][0].as_str().unwrap()), &want, "a1111");
    let info: Value = serde_json::from_str(a1111["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([s.seed]));
    assert_eq!(info["sd_model_name"], "tiny-sd1");

    let openai: Value = client
        .post(server.url("/v1/images/generations"))
        .json(&json!({
            "prompt": s.prompt, "model": "tiny-sd1", "n": 1,
            "size": format!("{}x{}", s.width, s.height), "response_format": "b64_json",
            "negative_prompt": s.negative_prompt, "seed": s.seed, "steps": s.steps,
            "cfg_scale": s.cfg_scale, "sampler": s.sampler
        }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_same_image(
        &b64(openai["data"][0]["b64_json"].as_str().unwrap()),
        &want,
        "openai",
    );

    // The simple dialect has no negative prompt or sampler: the CLI's defaults apply to both.
    let plain = Settings {
        negative_prompt: "",
        ..s.clone()
    };
    let want_plain = cli_png(&plain, dir.path());
    let simple: Value = client
        .post(server.url("/generate"))
        .json(&json!({"prompt": s.prompt, "scale": s.cfg_scale, "steps": s.steps, "seed": s.seed}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = simple["download_id"].as_str().unwrap();
    let png = client
        .get(server.url(&format!("/download/{id}")))
        .send()
        .unwrap();
    assert_eq!(png.headers()["content-type"], "image/png");
    assert_same_image(&png.bytes().unwrap(), &want_plain, "simple");
}

/// The hires fix gives the CLI's image through A1111's fields and the native
/// `hires` object, at the target size, on the real tiny model.
#[test]
fn hires_fix_images_equal_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = Client::new();
    let s = Settings::default();
    for (upscaler, steps, strength) in [("Latent", 3, 0.6), ("Lanczos", 0, 0.5)] {
        let want = common::cli_png_with(
            &common::tiny_sd1(),
            &s,
            dir.path(),
            &[
                "--hires-scale",
                "1.5",
                "--hires-upscaler",
                upscaler,
                "--hires-steps",
                &steps.to_string(),
                "--hires-strength",
                &strength.to_string(),
            ],
        );
        let (w, h, _) = sdserve_engine::png::decode_rgb(&want).unwrap();
        assert_eq!((w, h), (96, 96), "{upscaler}");
        let a1111: Value = client
            .post(server.url("/sdapi/v1/txt2img"))
            .json(&json!({
                "prompt": s.prompt, "negative_prompt": s.negative_prompt, "seed": s.seed,
                "steps": s.steps, "cfg_scale": s.cfg_scale, "sampler_name": s.sampler,
                "width": s.width, "height": s.height, "enable_hr": true, "hr_scale": 1.5,
                "hr_upscaler": upscaler, "hr_second_pass_steps": steps,
                "denoising_strength": strength
            }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let png = b64(a1111["images"][0].as_str().unwrap());
        assert_same_image(&png, &want, upscaler);
        let infotext = png_parameters(&png);
        assert!(
            infotext.contains(&format!(
                "Denoising strength: {strength}, Hires upscale: 1.5"
            )) && infotext.contains(&format!("Hires upscaler: {upscaler}")),
            "{infotext}"
        );
        let native = native_png(
            &client,
            &server,
            json!({
                "prompt": s.prompt, "negative_prompt": s.negative_prompt, "seed": s.seed,
                "steps": s.steps, "cfg_scale": s.cfg_scale, "sampler": s.sampler,
                "width": s.width, "height": s.height,
                "hires": {"upscaler": upscaler, "scale": 1.5, "steps": steps,
                    "denoising_strength": strength}
            }),
        );
        assert_same_image(&native, &want, "native hires");
    }
}

/// A LoRA gives the CLI's image (`--lora`) through A1111's `<lora:..>` tag
/// and the native `loras` list; `/sdapi/v1/loras` lists the folder, and an
/// unknown name is a 422 listing it.
#[test]
fn lora_images_equal_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let loras = common::repo_root().join("fixtures/models/loras");
    let server = Server::start(dir.path(), &["--lora-dir", loras.to_str().unwrap()]);
    let client = Client::new();
    // The A1111 prompt below without its tag.
    let s = Settings {
        prompt: "a red bicycle ,  leaning on a wall",
        ..Settings::default()
    };
    let want = common::cli_png_with(
        &common::tiny_sd1(),
        &s,
        dir.path(),
        &[
            "--lora-dir",
            loras.to_str().unwrap(),
            "--lora",
            "tiny-sd1-kohya:0.5",
        ],
    );
    let plain = cli_png(&s, dir.path());
    assert_ne!(
        png_parameters(&want).lines().next(),
        png_parameters(&plain).lines().next()
    );
    let a1111: Value = client
        .post(server.url("/sdapi/v1/txt2img"))
        .json(&json!({
            "prompt": "a red bicycle , <lora:tiny-sd1-kohya:0.5> leaning on a wall",
            "negative_prompt": s.negative_prompt, "seed": s.seed,
            "steps": s.steps, "cfg_scale": s.cfg_scale, "sampler_name": s.sampler,
            "width": s.width, "height": s.height
        }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let png = b64(a1111["images"][0].as_str().unwrap());
    assert_same_image(&png, &want, "a1111 lora");
    let infotext = png_parameters(&png);
    assert!(
        infotext.starts_with("a red bicycle ,  leaning on a wall <lora:tiny-sd1-kohya:0.5>\n")
            && infotext.contains(r#"Lora hashes: "tiny-sd1-kohya: a637d1141627""#),
        "{infotext}"
    );
    let native = native_png(
        &client,
        &server,
        json!({
            "prompt": s.prompt, "negative_prompt": s.negative_prompt, "seed": s.seed,
            "steps": s.steps, "cfg_scale": s.cfg_scale, "sampler": s.sampler,
            "width": s.width, "height": s.height,
            "loras": [{"name": "tiny-sd1-kohya", "weight": 0.5}]
        }),
    );
    assert_same_image(&native, &want, "native lora");

    let listed: Value = client
        .get(server.url("/sdapi/v1/loras"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tiny-sd1-kohya", "tiny-sd1-peft"]);
    let resp = client
        .post(server.url("/sdapi/v1/txt2img"))
        .json(&json!({"prompt": "a <lora:nope:1>", "steps": 2}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 422);
    let text = resp.text().unwrap();
    assert!(
        text.contains("available: tiny-sd1-kohya, tiny-sd1-peft"),
        "{text}"
    );
}

/// The A1111 `parameters` text of a PNG.
fn png_parameters(png: &[u8]) -> String {
    sdserve_engine::png::read_parameters(png).expect("a parameters chunk")
}

#[test]
fn batched_jobs_match_their_solo_cli_images() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = Client::new();
    // Each job keeps its own prompt, seed and noise: its image is exactly its
    // solo image, with guidance off (one UNet row per job) and on (two).
    let cases = [
        ("a cat", 1.0),
        ("a dog on a beach", 1.0),
        ("an astronaut", 1.0),
    ];
    let guided = [
        ("a red car", 7.5),
        ("a green tree", 7.5),
        ("a blue house", 7.5),
    ];
    for group in [cases, guided] {
        // A long job with other settings holds the worker while three compatible jobs queue up.
        let blocker = client
            .post(server.url("/api/v1/jobs"))
            .json(&json!({"prompt": "blocker", "steps": 60, "seed": 1}))
            .send()
            .unwrap();
        assert_eq!(blocker.status(), 202);
        let mut ids = Vec::new();
        for (i, (prompt, cfg)) in group.iter().enumerate() {
            let body = json!({
                "prompt": prompt, "negative_prompt": "blurry", "seed": 100 + i, "steps": 3,
                "cfg_scale": cfg, "sampler": "Euler a", "width": 64, "height": 64
            });
            let v: Value = client
                .post(server.url("/api/v1/jobs"))
                .json(&body)
                .send()
                .unwrap()
                .json()
                .unwrap();
            ids.push(v["id"].as_str().unwrap().to_string());
        }
        for (i, id) in ids.iter().enumerate() {
            let (prompt, cfg) = group[i];
            let job = wait_job(&client, &server, id);
            assert_eq!(job["status"], "succeeded", "{job}");
            let got = client
                .get(server.url(job["images"][0]["url"].as_str().unwrap()))
                .send()
                .unwrap()
                .bytes()
                .unwrap();
            let settings = Settings {
                prompt,
                seed: 100 + i as u64,
                steps: 3,
                cfg_scale: cfg,
                ..Settings::default()
            };
            assert_same_image(&got, &cli_png(&settings, dir.path()), prompt);
        }
    }
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let value = |sample: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(
        value("sd_batch_size_count"),
        4.0,
        "per group, the blocker alone, then one batch of three:\n{metrics}"
    );
    assert_eq!(value("sd_batch_size_sum"), 8.0, "{metrics}");
}

#[test]
fn results_survive_restart_and_sigterm_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let server = Server::start(dir.path(), &[]);
    let simple: Value = client
        .post(server.url("/generate"))
        .json(&json!({"prompt": "kept", "seed": 5, "steps": 2}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let download_id = simple["download_id"].as_str().unwrap().to_string();
    let before = client
        .get(server.url(&format!("/download/{download_id}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");

    let server = Server::start(dir.path(), &[]);
    let after = client
        .get(server.url(&format!("/download/{download_id}")))
        .send()
        .unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(after.bytes().unwrap(), before);
    let unknown = client
        .get(server.url("/download/00000000-0000-4000-8000-000000000000"))
        .send()
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(server.terminate().success());
}

#[test]
fn sigkill_loses_no_accepted_job() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let server = Server::start(dir.path(), &[]);
    let submit = |body: Value| -> String {
        let resp = client
            .post(server.url("/api/v1/jobs"))
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 202);
        resp.json::<Value>().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // A long job holds the worker while the others wait in the queue.
    let long = submit(json!({"prompt": "interrupted", "steps": 40, "seed": 1}));
    let s = Settings {
        steps: 3,
        ..Settings::default()
    };
    let mut queued = Vec::new();
    for seed in [11, 12, 13] {
        queued.push(submit(json!({
            "prompt": s.prompt, "negative_prompt": s.negative_prompt, "seed": seed,
            "steps": s.steps, "cfg_scale": s.cfg_scale, "sampler": s.sampler,
            "width": s.width, "height": s.height
        })));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job: Value = client
            .get(server.url(&format!("/api/v1/jobs/{long}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if job["status"] == "running" {
            assert_eq!(job["progress"]["total"], 40);
            break;
        }
        assert_eq!(job["status"], "queued", "{job}");
        assert!(Instant::now() < deadline, "{job}");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill();
    // Killed mid-run: every accepted job is on disk, none finished.
    for id in std::iter::once(&long).chain(&queued) {
        let record: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(format!("{id}.json"))).unwrap())
                .unwrap();
        assert_eq!(record["status"], "queued", "{record}");
    }

    // The retention and disk flags parse (and keep everything here).
    let server = Server::start(
        dir.path(),
        &[
            "--result-ttl",
            "0",
            "--max-output-bytes",
            "0",
            "--min-free-disk",
            "1",
        ],
    );
    for id in std::iter::once(&long).chain(&queued) {
        let job = wait_job(&client, &server, id);
        assert_eq!(job["status"], "succeeded", "{job}");
        let png = client
            .get(server.url(job["images"][0]["url"].as_str().unwrap()))
            .send()
            .unwrap();
        assert_eq!(png.status(), 200);
    }
    let job = wait_job(&client, &server, &queued[0]);
    let got = client
        .get(server.url(job["images"][0]["url"].as_str().unwrap()))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let want = cli_png(&Settings { seed: 11, ..s }, dir.path());
    assert_same_image(&got, &want, "re-run after SIGKILL");
    assert!(server.terminate().success());
}

#[test]
fn sigterm_drains_the_running_job_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let server = Server::start(dir.path(), &[]);
    let job: Value = client
        .post(server.url("/api/v1/jobs"))
        .json(&json!({"prompt": "finish me", "steps": 80, "seed": 3}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let base = server.base.clone();
    let pid_probe = std::thread::spawn(move || {
        // While draining, readiness is off and new work is refused.
        let client = Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client
                .get(format!("{base}/readyz"))
                .send()
                .map(|r| r.status().as_u16());
            match ready {
                Ok(503) => {
                    let refused = client
                        .post(format!("{base}/generate"))
                        .json(&json!({"prompt": "late"}))
                        .send()
                        .map(|r| r.status().as_u16());
                    return (true, refused.ok());
                }
                Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => return (false, None),
            }
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    let (saw_draining, refused) = pid_probe.join().unwrap();
    assert!(saw_draining, "readyz never reported draining");
    assert!(
        matches!(refused, Some(503) | None),
        "late request: {refused:?}"
    );
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(format!("{id}.json"))).unwrap())
            .unwrap();
    assert_eq!(record["status"], "succeeded", "{record}");
}

#[test]
fn sigterm_exits_in_bounded_time_whatever_clients_hold_and_reports_cancelled_jobs() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let server = Server::start(dir.path(), &["--drain-timeout", "0"]);
    // A job longer than the (zero) drain timeout.
    let resp = client
        .post(server.url("/api/v1/jobs"))
        .json(&json!({"prompt": "endless", "steps": 150, "seed": 1, "batch_size": 2}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202);
    // A client holding a half-sent request head, and one holding a half-sent body.
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut half_head = std::net::TcpStream::connect(&addr).unwrap();
    half_head
        .write_all(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut half_body = std::net::TcpStream::connect(&addr).unwrap();
    half_body
        .write_all(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let status = server.terminate();
    // No drain + the running step noticing the cancel + 3 s of grace, with room.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "exit took {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(3), "exit status {status}");
    drop((half_head, half_body));
}

#[test]
fn auth_flags_protect_everything_but_probes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--api-key", "k-123", "--api-auth", "ann:secret"],
    );
    let client = Client::new();
    assert_eq!(
        client.get(server.url("/livez")).send().unwrap().status(),
        200
    );
    assert_eq!(
        client.get(server.url("/readyz")).send().unwrap().status(),
        200
    );
    assert_eq!(
        client
            .get(server.url("/v1/models"))
            .send()
            .unwrap()
            .status(),
        401
    );
    let with_key = client
        .get(server.url("/v1/models"))
        .bearer_auth("k-123")
        .send()
        .unwrap();
    assert_eq!(with_key.status(), 200);
    assert_eq!(
        with_key.json::<Value>().unwrap()["data"][0]["id"],
        "tiny-sd1"
    );
    let basic = client
        .get(server.url("/sdapi/v1/sd-models"))
        .basic_auth("ann", Some("secret"))
        .send()
        .unwrap();
    assert_eq!(basic.status(), 200);
    let wrong = client
        .get(server.url("/sdapi/v1/sd-models"))
        .basic_auth("ann", Some("nope"))
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
}

#[test]
fn bad_flags_and_models_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sdserve"))
        .args(["serve", "--api-auth", "no-colon", "--output-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("USER:PASS"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sdserve"))
        .args([
            "serve",
            "--port",
            &common::free_port().to_string(),
            "--model",
        ])
        .arg(dir.path().join("no-such-model"))
        .arg("--output-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loading model"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A models folder that is missing, or empty with no --model, or a
    // --max-loaded-models of 0: clear errors at start.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for (args, needle) in [
        (
            vec!["--models-dir", "/no/such/dir"],
            "reading --models-dir /no/such/dir",
        ),
        (
            vec!["--models-dir", empty.to_str().unwrap()],
            "holds no model",
        ),
        (
            vec!["--max-loaded-models", "0"],
            "--max-loaded-models must be at least 1",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sdserve"))
            .args(["serve", "--port", &common::free_port().to_string()])
            .args(&args)
            .arg("--output-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // --output-dir: a URL of another scheme is refused, not taken for a
    // folder named `gs:`; a bucket that cannot be reached stops the start,
    // naming it (the endpoint is a closed local port).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sdserve"))
        .args(["serve", "--output-dir", "gs://bucket/results"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unsupported output URL scheme `gs://`"),
        "{err}"
    );
    assert!(!dir.path().join("gs:").exists());
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sdserve"))
        .args(["serve", "--port", &common::free_port().to_string()])
        .args(["--output-dir", "s3://unreachable-bucket/run1"])
        .env("AWS_ENDPOINT_URL", &closed)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unreachable-bucket"), "{err}");
}

/// `serve --vae-tiling on` serves diffusers' `vae.enable_tiling()` render of the
/// 128x96 reference case; a bad mode stops the server at start.
#[test]
fn serve_vae_tiling_on_serves_the_tiled_image_and_refuses_bad_modes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--vae-tiling", "on"]);
    let client = Client::new();
    let got = native_png(
        &client,
        &server,
        json!({
            "prompt": "a lighthouse on a cliff at dusk", "negative_prompt": "blurry", "seed": 99,
            "steps": 4, "cfg_scale": 7.5, "sampler": "Euler a", "width": 128, "height": 96
        }),
    );
    let (w, h, got) = sdserve_engine::png::decode_rgb(&got).unwrap();
    assert_eq!((w, h), (128, 96));
    let reference = |name: &str| {
        let path = common::repo_root()
            .join("fixtures/reference/tiny-sd1")
            .join(name);
        sdserve_engine::png::decode_rgb(&std::fs::read(path).unwrap())
            .unwrap()
            .2
    };
    let max_diff = |want: &[u8]| got.iter().zip(want).map(|(a, b)| a.abs_diff(*b)).max();
    let tiled = max_diff(&reference("euler_ancestral-tiled-0.png"));
    let untiled = max_diff(&reference("euler_ancestral-untiled-0.png"));
    assert!(
        tiled <= Some(3) && untiled > Some(3),
        "tiled {tiled:?}, untiled {untiled:?}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sdserve"))
        .args(["serve", "--vae-tiling", "sometimes", "--output-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected auto, on or off"), "{err}");
}

/// Textual-inversion embeddings from `--embeddings-dir`: A1111's route lists
/// the one that fits the model and the files that do not; a prompt naming it
/// gives the image `sdserve generate --embeddings-dir` writes, which differs
/// from the same prompt without the folder (the name read as words).
#[test]
fn embeddings_are_listed_and_used_as_the_cli_uses_them() {
    let dir = tempfile::tempdir().unwrap();
    let folder = common::repo_root().join("fixtures/models/embeddings");
    let folder = folder.to_str().unwrap();
    let server = Server::start(dir.path(), &["--embeddings-dir", folder]);
    let client = Client::new();
    let list: Value = client
        .get(server.url("/sdapi/v1/embeddings"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let loaded: Vec<&String> = list["loaded"].as_object().unwrap().keys().collect();
    assert_eq!(loaded, ["tinycat"], "{list}");
    assert_eq!(list["loaded"]["tinycat"]["vectors"], 2);
    assert_eq!(list["loaded"]["tinycat"]["shape"], 32);
    let skipped: Vec<&String> = list["skipped"].as_object().unwrap().keys().collect();
    assert_eq!(skipped, ["wide", "xlstyle"], "{list}");

    let s = Settings {
        prompt: "a (tinycat:1.2) on a red bicycle",
        ..Settings::default()
    };
    let model = common::tiny_sd1();
    let syntax = ["--prompt-syntax", "a1111"];
    let want = common::cli_png_with(
        &model,
        &s,
        dir.path(),
        &["--embeddings-dir", folder, syntax[0], syntax[1]],
    );
    let a1111: Value = client
        .post(server.url("/sdapi/v1/txt2img"))
        .json(&json!({
            "prompt": s.prompt, "negative_prompt": s.negative_prompt, "seed": s.seed,
            "steps": s.steps, "cfg_scale": s.cfg_scale, "sampler_name": s.sampler,
            "width": s.width, "height": s.height
        }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let png = b64(a1111["images"][0].as_str().unwrap());
    assert_same_image(&png, &want, "A1111 prompt with an embedding");
    let words = common::cli_png_with(&model, &s, dir.path(), &syntax);
    let pixels = |png: &[u8]| sdserve_engine::png::decode_rgb(png).unwrap().2;
    assert_ne!(
        pixels(&words),
        pixels(&want),
        "the embedding changed nothing"
    );
}
