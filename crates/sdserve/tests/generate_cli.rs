//! End-to-end tests of `sdserve generate`: the binary, its flags, its files,
//! model loading from a folder and from a Hugging Face cache laid out here,
//! and the errors users see for unsafe or broken model files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sdserve_engine::png;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn sdserve(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdserve"));
    cmd.args(args).env_remove("HF_HUB_OFFLINE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("sdserve runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Reference case `euler_ancestral-a` of tiny-sd1 as CLI flags.
fn case_a_args<'a>(model: &'a str, output: &'a str) -> Vec<&'a str> {
    vec![
        "generate",
        "--model",
        model,
        "--prompt",
        "a photograph of an astronaut riding a horse",
        "--negative-prompt",
        "blurry, low quality",
        "--seed",
        "42",
        "--steps",
        "5",
        "--cfg-scale",
        "7.5",
        "--sampler",
        "Euler a",
        "--width",
        "64",
        "--height",
        "64",
        "--output",
        output,
    ]
}

fn assert_matches_reference(png_path: &Path, reference: &str) {
    let bytes = std::fs::read(png_path).expect("output written");
    let (w, h, ours) = png::decode_rgb(&bytes).unwrap();
    let (rw, rh, theirs) =
        png::decode_rgb(&std::fs::read(fixtures().join(reference)).unwrap()).unwrap();
    assert_eq!((w, h), (rw, rh));
    let diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        diff <= 3,
        "{}: max diff {diff} against {reference}",
        png_path.display()
    );
}

/// A sampler and schedule type by flag, and a legacy name carrying its
/// schedule, give diffusers' images, and the infotext names both apart.
#[test]
fn sampler_and_schedule_type_flags_give_the_diffusers_image() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/tiny-sd1");
    let model = model.to_str().unwrap();
    for (i, (flags, reference, infotext)) in [
        (
            vec!["--sampler", "DPM++ 2M SDE", "--schedule-type", "karras"],
            "reference/sampler/tiny-sd1/dpmpp_2m_sde-karras-a-0.png",
            "Sampler: DPM++ 2M SDE, Schedule type: Karras,",
        ),
        (
            vec!["--sampler", "LMS Karras"],
            "reference/sampler/tiny-sd1/lms-karras-a-0.png",
            "Sampler: LMS, Schedule type: Karras,",
        ),
        (
            vec!["--sampler", "unipc", "--schedule-type", "SGM Uniform"],
            "reference/sampler/tiny-sd1/unipc-sgm_uniform-a-0.png",
            "Sampler: UniPC, Schedule type: SGM Uniform,",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let out = dir.path().join(format!("{i}.png"));
        let mut args = case_a_args(model, out.to_str().unwrap());
        let at = args.iter().position(|a| *a == "--sampler").unwrap();
        args.drain(at..at + 2);
        args.extend(flags);
        let result = sdserve(&args, &[]);
        assert!(result.status.success(), "{}", stderr(&result));
        assert_matches_reference(&out, reference);
        let text = png::read_parameters(&std::fs::read(&out).unwrap()).expect("parameters");
        assert!(text.contains(infotext), "{infotext}: {text}");
    }
    let result = sdserve(
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            "x",
            "--sampler",
            "DDIM",
            "--schedule-type",
            "karras",
            "--output",
            "/dev/null",
        ],
        &[],
    );
    assert!(!result.status.success());
    assert!(
        stderr(&result).contains("DDIM sampler does not run with the Karras schedule type"),
        "{}",
        stderr(&result)
    );
}

#[test]
fn generate_writes_the_diffusers_image_with_a1111_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("astronaut.png");
    let model = fixtures().join("models/tiny-sd1");
    let cache = dir.path().join("cache");
    let result = sdserve(
        &case_a_args(model.to_str().unwrap(), out.to_str().unwrap()),
        &[("XDG_CACHE_HOME", cache.to_str().unwrap())],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    // The model's hash (its UNet weights file's sha256) is cached for the next run.
    let hashes = std::fs::read_to_string(cache.join("sdserve/model-hashes.json")).unwrap();
    assert!(
        hashes.contains("8e8c3ec5efaa3f66a6ea1abc541867547f3c7849ef5df658e90178a1a060d4c8"),
        "{hashes}"
    );
    assert_matches_reference(&out, "reference/tiny-sd1/euler_ancestral-a-0.png");
    let params = png::read_parameters(&std::fs::read(&out).unwrap()).expect("parameters chunk");
    assert_eq!(
        params,
        concat!(
            "a photograph of an astronaut riding a horse\nNegative prompt: blurry, low quality\n\
             Steps: 5, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 42, Size: 64x64, \
             Model hash: 8e8c3ec5ef, Model: tiny-sd1, Version: sdserve ",
            env!("CARGO_PKG_VERSION")
        )
    );
    let err = stderr(&result);
    assert!(err.contains("seed: 42"), "{err}");
    for stage in ["load", "text encoding", "denoising", "decoding"] {
        assert!(err.contains(stage), "timing for {stage} missing: {err}");
    }
}

/// `--tiny-vae DIR --fast-decode`: diffusers' image with the same tiny VAE
/// swapped in, named in the infotext; a folder that is not a tiny VAE is
/// refused by name, and --fast-decode alone asks for --tiny-vae.
#[test]
fn fast_decode_writes_the_tiny_vae_image_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fast.png");
    let model = fixtures().join("models/tiny-sd1");
    let tiny = fixtures().join("models/tiny-taesd");
    let mut args = case_a_args(model.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--tiny-vae", tiny.to_str().unwrap(), "--fast-decode"]);
    let result = sdserve(&args, &[]);
    assert!(result.status.success(), "{}", stderr(&result));
    assert_matches_reference(&out, "reference/tiny-vae/tiny-sd1/fast-a-0.png");
    let params = png::read_parameters(&std::fs::read(&out).unwrap()).expect("parameters chunk");
    assert!(
        params.contains(", Fast decode: tiny-taesd, Version: sdserve "),
        "{params}"
    );

    let mut args = case_a_args(model.to_str().unwrap(), out.to_str().unwrap());
    let not_tiny = fixtures().join("models/tiny-sdxl");
    args.extend(["--tiny-vae", not_tiny.to_str().unwrap(), "--fast-decode"]);
    let result = sdserve(&args, &[]);
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("not a tiny VAE folder"), "{err}");

    let mut args = case_a_args(model.to_str().unwrap(), out.to_str().unwrap());
    args.push("--fast-decode");
    let result = sdserve(&args, &[]);
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("--tiny-vae"), "{err}");
}

/// `--step-cache 3`: the image diffusers renders with the DeepCache
/// package's helper at interval 3, named in the infotext; 1 is refused.
#[test]
fn step_cache_writes_the_deepcache_image_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cached.png");
    let model = fixtures().join("models/tiny-sd1");
    let mut args = case_a_args(model.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--step-cache", "3"]);
    let result = sdserve(&args, &[]);
    assert!(result.status.success(), "{}", stderr(&result));
    assert_matches_reference(&out, "reference/step-cache/tiny-sd1/cache-a-0.png");
    let params = png::read_parameters(&std::fs::read(&out).unwrap()).expect("parameters chunk");
    assert!(
        params.contains(", DeepCache interval: 3, Version: sdserve "),
        "{params}"
    );

    let mut args = case_a_args(model.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--step-cache", "1"]);
    let result = sdserve(&args, &[]);
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("--step-cache"), "{err}");
}

/// `--model file.safetensors`: the single-file (LDM layout) twin of tiny-sd2 (v-prediction,
/// OpenCLIP text encoder) renders the folder's diffusers image and is named by its stem.
#[test]
fn single_file_checkpoint_renders_the_folders_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("single.png");
    let model = fixtures().join("models/single/tiny-sd2.safetensors");
    let result = sdserve(
        &case_a_args(model.to_str().unwrap(), out.to_str().unwrap()),
        &[],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    assert_matches_reference(&out, "reference/tiny-sd2/euler_ancestral-a-0.png");
    let params = png::read_parameters(&std::fs::read(&out).unwrap()).expect("parameters chunk");
    assert!(
        params.contains(", Model: tiny-sd2, Version: sdserve "),
        "{params}"
    );
}

#[test]
fn batch_writes_numbered_files_and_random_seed_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fox.png");
    let model = fixtures().join("models/tiny-sd2");
    let result = sdserve(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a watercolor painting of a fox",
            "--seed",
            "1234",
            "--steps",
            "4",
            "--cfg-scale",
            "5",
            "--sampler",
            "DPM++ 2M Karras",
            "--width",
            "64",
            "--height",
            "48",
            "--batch-size",
            "2",
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(!out.exists());
    assert_matches_reference(
        &dir.path().join("fox-0.png"),
        "reference/tiny-sd2/dpmpp_2m_karras-b-0.png",
    );
    assert_matches_reference(
        &dir.path().join("fox-1.png"),
        "reference/tiny-sd2/dpmpp_2m_karras-b-1.png",
    );

    let random = sdserve(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "x",
            "--seed",
            "-1",
            "--steps",
            "1",
            "--output",
            dir.path().join("r.png").to_str().unwrap(),
        ],
        &[],
    );
    assert!(random.status.success(), "{}", stderr(&random));
    let seed_line = stderr(&random)
        .lines()
        .find(|l| l.starts_with("seed: "))
        .map(str::to_owned)
        .expect("seed line");
    let seed: u64 = seed_line["seed: ".len()..]
        .trim()
        .parse()
        .expect("numeric seed");
    let params = png::read_parameters(&std::fs::read(dir.path().join("r.png")).unwrap()).unwrap();
    assert!(params.contains(&format!("Seed: {seed},")), "{params}");
    // Native size from the model's config, default sampler Euler a.
    assert!(
        params.contains("Size: 64x64") && params.contains("Sampler: Euler a"),
        "{params}"
    );
}

/// Copies `src` into a fresh hub cache as `models--<org>--<name>` and returns HF_HOME.
fn lay_out_hub_cache(src: &Path, home: &Path, org: &str, name: &str) {
    let repo = home.join("hub").join(format!("models--{org}--{name}"));
    let revision = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(revision);
    copy_dir(src, &snapshot);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), revision).unwrap();
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn hub_repo_id_loads_from_the_local_cache_without_network() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf");
    lay_out_hub_cache(
        &fixtures().join("models/tiny-sd1"),
        &home,
        "sdserve-test",
        "tiny-sd1",
    );
    let out = dir.path().join("hub.png");
    // The endpoint is a closed local port: any network access would fail the run.
    let envs = [
        ("HF_HOME", home.to_str().unwrap()),
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
    ];
    let result = sdserve(
        &case_a_args("sdserve-test/tiny-sd1", out.to_str().unwrap()),
        &envs,
    );
    assert!(result.status.success(), "{}", stderr(&result));
    assert_matches_reference(&out, "reference/tiny-sd1/euler_ancestral-a-0.png");
    let params = png::read_parameters(&std::fs::read(&out).unwrap()).unwrap();
    // A hub repo keeps its whole id, and has no hash (no local file to hash).
    assert!(
        params.ends_with(concat!(
            ", Size: 64x64, Model: sdserve-test/tiny-sd1, Version: sdserve ",
            env!("CARGO_PKG_VERSION")
        )),
        "{params}"
    );

    // Offline mode with a repo that is not cached: a clear error, no download.
    let missing = sdserve(
        &case_a_args("sdserve-test/not-cached", out.to_str().unwrap()),
        &[("HF_HOME", home.to_str().unwrap()), ("HF_HUB_OFFLINE", "1")],
    );
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("HF_HUB_OFFLINE"),
        "{}",
        stderr(&missing)
    );
}

/// An SDXL-Turbo style repo from the hub cache: both text encoders come
/// along, and with no --steps / --cfg-scale the model's Turbo defaults (1
/// step, no guidance, from its configs) give diffusers' 1-step image.
#[test]
fn sdxl_turbo_style_repo_uses_its_defaults_and_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf");
    let model = fixtures().join("models/tiny-sdxl-fast");
    lay_out_hub_cache(&model, &home, "sdserve-test", "tiny-sdxl-fast");
    let out = dir.path().join("turbo.png");
    let envs = [
        ("HF_HOME", home.to_str().unwrap()),
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
    ];
    let args = [
        "generate",
        "--model",
        "sdserve-test/tiny-sdxl-fast",
        "--prompt",
        "a cinematic shot of a raccoon in a suit",
        "--seed",
        "5",
        "--width",
        "64",
        "--height",
        "64",
        "--output",
        out.to_str().unwrap(),
    ];
    let result = sdserve(&args, &envs);
    assert!(result.status.success(), "{}", stderr(&result));
    assert_matches_reference(&out, "reference/tiny-sdxl-fast/euler_ancestral-one-0.png");
    let params = png::read_parameters(&std::fs::read(&out).unwrap()).unwrap();
    assert!(
        params.contains("Steps: 1,") && params.contains("CFG scale: 0,"),
        "{params}"
    );

    // A cached SDXL snapshot without its second text encoder is incomplete:
    // offline, that is an error rather than a half-loaded model.
    let partial = dir.path().join("partial");
    lay_out_hub_cache(&model, &partial, "sdserve-test", "tiny-sdxl-fast");
    let snapshots = partial.join("hub/models--sdserve-test--tiny-sdxl-fast/snapshots");
    let snapshot = std::fs::read_dir(&snapshots)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_dir_all(snapshot.join("text_encoder_2")).unwrap();
    let result = sdserve(
        &args,
        &[
            ("HF_HOME", partial.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    assert!(!result.status.success());
    assert!(
        stderr(&result).contains("HF_HUB_OFFLINE"),
        "{}",
        stderr(&result)
    );
}

#[test]
fn pickle_checkpoints_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("v1-5-pruned.ckpt");
    std::fs::write(&ckpt, b"\x80\x02cos\nsystem\n").unwrap();
    let result = sdserve(&case_a_args(ckpt.to_str().unwrap(), "/dev/null"), &[]);
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(
        err.contains("pickle") && err.contains("safetensors") && err.contains("v1-5-pruned.ckpt"),
        "{err}"
    );

    // A model folder whose UNet ships only a pickle is refused too.
    let model = dir.path().join("model");
    copy_dir(&fixtures().join("models/tiny-sd1"), &model);
    std::fs::remove_file(model.join("unet/diffusion_pytorch_model.fp16.safetensors")).unwrap();
    std::fs::write(model.join("unet/diffusion_pytorch_model.bin"), b"pickle").unwrap();
    let result = sdserve(&case_a_args(model.to_str().unwrap(), "/dev/null"), &[]);
    assert!(!result.status.success());
    assert!(
        stderr(&result).contains("diffusion_pytorch_model.bin"),
        "{}",
        stderr(&result)
    );
}

#[test]
fn malformed_safetensors_give_errors_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_dir(&fixtures().join("models/tiny-sd1"), &model);
    let weights = model.join("unet/diffusion_pytorch_model.fp16.safetensors");
    let bytes = std::fs::read(&weights).unwrap();

    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let result = sdserve(&case_a_args(model.to_str().unwrap(), "/dev/null"), &[]);
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(
        err.contains("diffusion_pytorch_model.fp16.safetensors") && err.contains("tensor "),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A tensor whose shape does not fit the config: name the file and the tensor.
    let vae = model.join("vae/config.json");
    let config = std::fs::read_to_string(&vae).unwrap();
    std::fs::write(&weights, &bytes).unwrap();
    std::fs::write(
        &vae,
        config.replace("\"latent_channels\": 4", "\"latent_channels\": 8"),
    )
    .unwrap();
    let result = sdserve(&case_a_args(model.to_str().unwrap(), "/dev/null"), &[]);
    assert!(!result.status.success());
    assert!(
        stderr(&result).contains("latent_channels"),
        "{}",
        stderr(&result)
    );
    std::fs::write(&vae, &config).unwrap();

    let unet_cfg = model.join("unet/config.json");
    let config = std::fs::read_to_string(&unet_cfg).unwrap();
    std::fs::write(
        &unet_cfg,
        config.replace("\"layers_per_block\": 2", "\"layers_per_block\": 3"),
    )
    .unwrap();
    let result = sdserve(&case_a_args(model.to_str().unwrap(), "/dev/null"), &[]);
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(
        err.contains("diffusion_pytorch_model.fp16.safetensors") && err.contains("resnets.2"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("candle_core::"),
        "no panic, no backtrace: {err}"
    );
}

#[test]
fn bad_flags_are_clear_errors() {
    let model = fixtures().join("models/tiny-sd1");
    let model = model.to_str().unwrap();
    for (flag, value, needle) in [
        ("--width", "60", "width must be a positive multiple of 8"),
        ("--height", "0", "height must be a positive multiple of 8"),
        ("--steps", "0", "steps must be between"),
        ("--sampler", "DPM fast", "unknown sampler"),
        ("--schedule-type", "uniform", "unknown schedule type"),
        ("--batch-size", "0", "batch_size"),
    ] {
        let result = sdserve(
            &[
                "generate",
                "--model",
                model,
                "--prompt",
                "x",
                flag,
                value,
                "--output",
                "/dev/null",
            ],
            &[],
        );
        assert!(!result.status.success(), "{flag} {value}");
        assert!(
            stderr(&result).contains(needle),
            "{flag} {value}: {}",
            stderr(&result)
        );
    }
}

/// `--vae-tiling on` gives diffusers' `vae.enable_tiling()` render of the
/// 128x96 reference case, `off` its untiled twin (the two differ by far more
/// than the tolerance); anything else is refused naming the accepted values.
#[test]
fn vae_tiling_flag_selects_the_tiled_or_untiled_image_and_refuses_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/tiny-sd1");
    let model = model.to_str().unwrap();
    let run = |mode: &str, out: &Path| {
        sdserve(
            &[
                "generate",
                "--model",
                model,
                "--prompt",
                "a lighthouse on a cliff at dusk",
                "--negative-prompt",
                "blurry",
                "--seed",
                "99",
                "--steps",
                "4",
                "--cfg-scale",
                "7.5",
                "--sampler",
                "Euler a",
                "--width",
                "128",
                "--height",
                "96",
                "--vae-tiling",
                mode,
                "--output",
                out.to_str().unwrap(),
            ],
            &[],
        )
    };
    for (mode, reference) in [
        ("on", "reference/tiny-sd1/euler_ancestral-tiled-0.png"),
        ("off", "reference/tiny-sd1/euler_ancestral-untiled-0.png"),
    ] {
        let out = dir.path().join(format!("{mode}.png"));
        let result = run(mode, &out);
        assert!(result.status.success(), "{mode}: {}", stderr(&result));
        assert_matches_reference(&out, reference);
    }
    let read = |p: &Path| png::decode_rgb(&std::fs::read(p).unwrap()).unwrap().2;
    let (on, off) = (
        read(&dir.path().join("on.png")),
        read(&dir.path().join("off.png")),
    );
    let apart = on.iter().zip(&off).map(|(a, b)| a.abs_diff(*b)).max();
    assert!(apart > Some(3), "on and off differ by only {apart:?}");

    let out = dir.path().join("bad.png");
    let result = run("yes", &out);
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(
        err.contains("--vae-tiling") && err.contains("expected auto, on or off"),
        "{err}"
    );
    assert!(!out.exists());
}

/// `--device cpu` renders the diffusers image; a CUDA device on a build
/// without CUDA, several devices and unknown names are refused by name.
#[test]
fn device_flag_runs_on_the_cpu_and_refuses_what_this_build_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/tiny-sd1");
    let model = model.to_str().unwrap();
    let out_path = dir.path().join("cpu.png");
    let mut args = case_a_args(model, out_path.to_str().unwrap());
    args.extend(["--device", "cpu", "--dtype", "f32"]);
    let out = sdserve(&args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_matches_reference(&out_path, "reference/tiny-sd1/euler_ancestral-a-0.png");

    let refused = [
        ("cuda:0,cuda:1", "this command runs on one device"),
        ("tpu", "expected auto, cpu, cuda or cuda:N"),
        ("cuda:1", "built without CUDA"),
    ];
    for (device, expected) in refused {
        if cfg!(feature = "cuda") && device == "cuda:1" {
            continue;
        }
        let out_path = dir.path().join("refused.png");
        let mut args = case_a_args(model, out_path.to_str().unwrap());
        args.extend(["--device", device]);
        let out = sdserve(&args, &[("RUST_BACKTRACE", "0")]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{device}: {err}");
        assert!(err.contains(expected), "{device}: {err}");
        assert!(!out_path.exists(), "{device}");
    }
}
