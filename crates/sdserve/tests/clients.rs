//! Real clients that no one here wrote, against `sdserve serve` with the tiny
//! fixture model: the `webuiapi` package (AUTOMATIC1111), the `openai` package,
//! and schemathesis fuzzing `/openapi.json`. Each is a script in
//! `tests/clients/`, run with `$SDSERVE_TEST_PYTHON` (default `python3`), which
//! needs the packages of `scripts/requirements-test.txt`.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use common::{cli_png, cli_png_of, repo_root, tiny_sd1, Server, Settings};

fn python() -> String {
    std::env::var("SDSERVE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Runs a client script; its working directory is `workdir`, so tool caches
/// (schemathesis, hypothesis) stay out of the source tree.
fn run_script(script: &str, args: &[String], workdir: &Path) {
    let python = python();
    let path = repo_root().join("tests/clients").join(script);
    let out = Command::new(&python)
        .arg(&path)
        .args(args)
        .current_dir(workdir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {python} ({e}); set SDSERVE_TEST_PYTHON to a Python that has \
             `pip install -r scripts/requirements-test.txt`"
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("ModuleNotFoundError") {
        panic!(
            "{script}: a Python package is missing for {python}; install them with \
             `{python} -m pip install -r scripts/requirements-test.txt` or point \
             SDSERVE_TEST_PYTHON at a venv that has them.\n{stderr}"
        );
    }
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");
}

/// The settings both generation clients use, as script flags.
fn settings_args(s: &Settings, reference: &Path) -> Vec<String> {
    vec![
        "--reference".into(),
        reference.display().to_string(),
        "--prompt".into(),
        s.prompt.into(),
        "--negative-prompt".into(),
        s.negative_prompt.into(),
        "--seed".into(),
        s.seed.to_string(),
        "--steps".into(),
        s.steps.to_string(),
        "--cfg-scale".into(),
        s.cfg_scale.to_string(),
        "--sampler".into(),
        s.sampler.into(),
        "--size".into(),
        s.width.to_string(),
    ]
}

fn reference(dir: &Path, settings: &Settings) -> std::path::PathBuf {
    let path = dir.join("reference.png");
    std::fs::write(&path, cli_png(settings, dir)).expect("reference written");
    path
}

#[test]
fn webuiapi_client_gets_the_cli_image() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let settings = Settings::default();
    let reference = reference(dir.path(), &settings);
    let mut args = vec!["--port".to_string(), server.port.to_string()];
    args.extend(settings_args(&settings, &reference));
    run_script("test_webuiapi.py", &args, dir.path());
}

/// A1111's prompt syntax through webuiapi: weights, nesting, an escape,
/// `BREAK` and more than 75 tokens give the image `sdserve generate
/// --prompt-syntax a1111` writes (and the same infotext).
#[test]
fn webuiapi_weighted_long_prompt_gets_the_cli_image() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let settings = Settings {
        prompt: "a (red:1.3) bicycle ((leaning)) on a [brick] wall, \\(vintage\\) BREAK \
                 golden hour, warm light, long shadows, cobblestones, flower pots, ivy, \
                 shutters, a cat on the sill, bokeh, film grain, (depth of field:0.8), \
                 35mm photo, soft focus, pastel colours, morning mist, quiet street, \
                 puddles, reflections, wet pavement, old lamp post, bunting, bakery sign, \
                 chalkboard menu, bicycle basket with bread, postcard, masterpiece",
        ..Settings::default()
    };
    let reference = dir.path().join("reference.png");
    let png = common::cli_png_with(
        &tiny_sd1(),
        &settings,
        dir.path(),
        &["--prompt-syntax", "a1111"],
    );
    std::fs::write(&reference, png).expect("reference written");
    let mut args = vec!["--port".to_string(), server.port.to_string()];
    args.extend(settings_args(&settings, &reference));
    run_script("test_webuiapi.py", &args, dir.path());
}

/// A `<lora:..>` tag, a sampler beyond the first five and a schedule type
/// through webuiapi (its `scheduler=`) give `sdserve generate`'s image and
/// infotext for `--lora`, `--sampler` and `--schedule-type`.
#[test]
fn webuiapi_lora_tag_sampler_and_scheduler_get_the_cli_image() {
    let dir = tempfile::tempdir().unwrap();
    let loras = repo_root().join("fixtures/models/loras");
    let loras = loras.to_str().unwrap();
    let server = Server::start(dir.path(), &["--lora-dir", loras]);
    let settings = Settings {
        prompt: "a red bicycle <lora:tiny-sd1-kohya:0.7> leaning on a wall",
        sampler: "DPM++ 2M SDE",
        ..Settings::default()
    };
    // The CLI reads the same LoRA from its flag; its prompt has no tag.
    let cli = Settings {
        prompt: "a red bicycle  leaning on a wall",
        ..settings
    };
    let png = common::cli_png_with(
        &tiny_sd1(),
        &cli,
        dir.path(),
        &[
            "--prompt-syntax",
            "a1111",
            "--lora-dir",
            loras,
            "--lora",
            "tiny-sd1-kohya:0.7",
            "--schedule-type",
            "Karras",
        ],
    );
    let reference = dir.path().join("reference.png");
    std::fs::write(&reference, png).expect("reference written");
    let mut args = vec!["--port".to_string(), server.port.to_string()];
    args.extend(settings_args(&cli, &reference));
    // webuiapi sends the tagged prompt; the infotext carries the tag after it.
    let prompt_at = args.iter().position(|a| a == "--prompt").unwrap() + 1;
    args[prompt_at] = settings.prompt.to_string();
    args.extend(["--scheduler".to_string(), "Karras".to_string()]);
    args.push("--only-txt2img".to_string());
    run_script("test_webuiapi.py", &args, dir.path());
}

/// A models folder of three families and two formats: tiny-sd1 and tiny-sdxl
/// as diffusers folders, and tiny-sd2 as a single-file LDM checkpoint with its
/// original-config yaml beside it (all linked). Returns the folder and each
/// model's (name, path).
fn three_models(dir: &Path) -> (std::path::PathBuf, Vec<(&'static str, std::path::PathBuf)>) {
    let models = dir.join("models");
    let fixtures = tiny_sd1().join("..");
    std::fs::create_dir_all(&models).unwrap();
    for (from, to) in [
        ("tiny-sd1", "tiny-sd1"),
        ("tiny-sdxl", "tiny-sdxl"),
        ("single/tiny-sd2.safetensors", "tiny-sd2.safetensors"),
        ("single/tiny-sd2.yaml", "tiny-sd2.yaml"),
    ] {
        std::os::unix::fs::symlink(fixtures.join(from), models.join(to)).unwrap();
    }
    let each = vec![
        ("tiny-sd1", models.join("tiny-sd1")),
        ("tiny-sd2", models.join("tiny-sd2.safetensors")),
        ("tiny-sdxl", models.join("tiny-sdxl")),
    ];
    (models, each)
}

#[test]
fn webuiapi_switches_between_three_models_and_gets_each_ones_cli_image() {
    let dir = tempfile::tempdir().unwrap();
    let (models, each) = three_models(dir.path());
    let settings = Settings::default();
    let mut cases = Vec::new();
    let mut pngs = Vec::new();
    for (name, path) in &each {
        let png = cli_png_of(path, &settings, dir.path());
        let path = dir.path().join(format!("reference-{name}.png"));
        std::fs::write(&path, &png).unwrap();
        cases.extend(["--case".to_string(), format!("{name}={}", path.display())]);
        pngs.push(png);
    }
    assert!(pngs[0] != pngs[1] && pngs[0] != pngs[2] && pngs[1] != pngs[2]);
    // Two of the three stay loaded: switching also unloads and reloads.
    let server = Server::start_with_models(
        dir.path(),
        &[
            OsStr::new("--models-dir"),
            models.as_os_str(),
            OsStr::new("--model"),
            OsStr::new("tiny-sd2"),
        ],
        &["--max-loaded-models", "2"],
    );
    let mut args = vec!["--port".to_string(), server.port.to_string()];
    args.extend(settings_args(&settings, &dir.path().join("unused.png")));
    // The script takes one reference per model instead of --reference.
    let at = args.iter().position(|a| a == "--reference").unwrap();
    args.drain(at..at + 2);
    args.extend(cases);
    run_script("test_webuiapi_models.py", &args, dir.path());
    let log = server.log_text();
    assert!(
        log.contains("unloading the least recently used model"),
        "{log}"
    );
}

#[test]
fn openai_client_gets_the_cli_image() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let settings = Settings::default();
    let reference = reference(dir.path(), &settings);
    let mut args = vec!["--base-url".to_string(), server.base.clone()];
    args.extend(settings_args(&settings, &reference));
    run_script("test_openai.py", &args, dir.path());
}

#[test]
fn schemathesis_finds_no_server_errors_or_schema_violations() {
    let dir = tempfile::tempdir().unwrap();
    // Small limits keep every generated request cheap; 64×64 is far below
    // --max-pixels, the one rule the schema can only describe. The queue holds
    // every native job a run submits, so no 429 stands in for an acceptance.
    let server = Server::start(
        dir.path(),
        &[
            "--max-width",
            "64",
            "--max-height",
            "64",
            "--max-steps",
            "3",
            "--max-batch",
            "2",
            "--max-prompt-chars",
            "200",
            "--queue-size",
            "1000",
        ],
    );
    run_script(
        "run_schemathesis.py",
        &[
            "--base-url".to_string(),
            server.base.clone(),
            "--max-examples".into(),
            "10".into(),
        ],
        dir.path(),
    );
    assert!(
        server.log_text().contains("ready"),
        "server log:\n{}",
        server.log_text()
    );
}

/// `sdserve generate` with extra flags (image-to-image); the PNG it wrote.
fn cli_png_with(settings: &Settings, extra: &[&std::ffi::OsStr], output: &Path) -> Vec<u8> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sdserve"))
        .arg("generate")
        .arg("--model")
        .arg(tiny_sd1())
        .args(["--prompt", settings.prompt])
        .args(["--seed", &settings.seed.to_string()])
        .args(["--steps", &settings.steps.to_string()])
        .args(["--cfg-scale", &settings.cfg_scale.to_string()])
        .args(["--sampler", settings.sampler])
        .args(extra)
        .arg("--output")
        .arg(output)
        .output()
        .expect("sdserve generate runs");
    assert!(
        out.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(output).expect("generate wrote its PNG")
}

/// webuiapi's img2img (with and without a mask), an A1111 batch's seeds and
/// the openai package's images.edit, each against the CLI's image.
#[test]
fn img2img_clients_get_the_cli_images() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let inputs = repo_root().join("fixtures/reference/img2img/inputs");
    let (init, mask) = (inputs.join("init-64x64.png"), inputs.join("mask-64x64.png"));
    let settings = Settings {
        negative_prompt: "",
        seed: 321,
        steps: 5,
        sampler: "Euler",
        ..Settings::default()
    };
    let strength = "0.6";
    let img2img = dir.path().join("ref-img2img.png");
    cli_png_with(
        &settings,
        &[
            "--init-image".as_ref(),
            init.as_os_str(),
            "--strength".as_ref(),
            strength.as_ref(),
        ],
        &img2img,
    );
    let inpaint = dir.path().join("ref-inpaint.png");
    cli_png_with(
        &settings,
        &[
            "--init-image".as_ref(),
            init.as_os_str(),
            "--mask".as_ref(),
            mask.as_os_str(),
            "--strength".as_ref(),
            "1".as_ref(),
        ],
        &inpaint,
    );
    let batch1 = dir.path().join("ref-batch1.png");
    let next_seed = Settings {
        seed: settings.seed + 1,
        ..settings.clone()
    };
    std::fs::write(&batch1, cli_png(&next_seed, dir.path())).unwrap();
    let path = |p: &Path| p.display().to_string();
    let args = vec![
        "--port".to_string(),
        server.port.to_string(),
        "--init".into(),
        path(&init),
        "--mask".into(),
        path(&mask),
        "--ref-img2img".into(),
        path(&img2img),
        "--ref-inpaint".into(),
        path(&inpaint),
        "--ref-batch1".into(),
        path(&batch1),
        // The edit's transparent pixels are the mask's white ones: the same image.
        "--ref-edit".into(),
        path(&inpaint),
        "--seed".into(),
        settings.seed.to_string(),
        "--steps".into(),
        settings.steps.to_string(),
        "--strength".into(),
        strength.into(),
        "--cfg-scale".into(),
        settings.cfg_scale.to_string(),
        "--prompt".into(),
        settings.prompt.into(),
        "--sampler".into(),
        settings.sampler.into(),
    ];
    run_script("test_img2img.py", &args, dir.path());
}
