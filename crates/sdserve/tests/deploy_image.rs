//! The container image, built by scripts/build-image.sh from the binary under
//! test and run as an operator would: `docker run -m 1g --read-only` under runc
//! and under gVisor (runsc), the tiny model mounted read-only. Each run must
//! become healthy through `sdserve healthcheck`, see the 1 GiB limit in its
//! memory plan, serve `/generate` + `/download` and A1111's txt2img with the
//! same pixels as the binary outside the container, and drain on `docker stop`.
//! Needs Docker with runsc (common/deploy.rs says how); fails without it.

mod common;

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use common::deploy::{self, docker, run_ok, Container};
use sdserve_engine::png;
use serde_json::{json, Value};

const GENERATE: &str = r#"{"prompt": "a lighthouse at dusk", "steps": 3, "seed": 7, "scale": 7.5}"#;

fn txt2img() -> Value {
    json!({"prompt": "a lighthouse at dusk", "steps": 3, "seed": 7, "width": 64,
           "height": 64, "cfg_scale": 7, "sampler_name": "Euler"})
}

/// The two PNGs (`/download` of /generate, A1111 txt2img) from the binary
/// itself, outside any container: what every container must reproduce.
fn reference() -> &'static (Vec<u8>, Vec<u8>) {
    static REFERENCE: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = common::Server::start(dir.path(), &[]);
        let pngs = generate_and_txt2img(&server.base);
        drop(server);
        pngs
    })
}

/// Runs both requests against `base`; the two PNGs.
fn generate_and_txt2img(base: &str) -> (Vec<u8>, Vec<u8>) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let done: Value = client
        .post(format!("{base}/generate"))
        .header("content-type", "application/json")
        .body(GENERATE)
        .send()
        .expect("POST /generate")
        .error_for_status()
        .expect("/generate succeeds")
        .json()
        .expect("JSON");
    let id = done["download_id"].as_str().expect("download_id");
    let download = client
        .get(format!("{base}/download/{id}"))
        .send()
        .expect("GET /download");
    assert_eq!(download.status(), 200);
    let generated = download.bytes().expect("PNG bytes").to_vec();

    let a1111: Value = client
        .post(format!("{base}/sdapi/v1/txt2img"))
        .json(&txt2img())
        .send()
        .expect("POST txt2img")
        .error_for_status()
        .expect("txt2img succeeds")
        .json()
        .expect("JSON");
    let b64 = a1111["images"][0].as_str().expect("images[0]");
    let image = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 PNG");
    (generated, image)
}

/// Runs the image under `runtime` and checks everything the module doc lists.
fn serves_under(runtime: &str) {
    let image = deploy::test_image();
    let models = deploy::fixture_models();
    let id = run_ok(docker().args([
        "run",
        "-d",
        "--runtime",
        runtime,
        "-m",
        "1g",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/data/outputs:uid=10001,gid=10001",
        "--health-interval",
        "1s",
        "-p",
        "127.0.0.1::7860",
        "-v",
        &format!("{}:/models:ro", models.display()),
        "-e",
        "SDSERVE_MODEL=/models/tiny-sd1",
        image,
    ]));
    let container = Container(id);
    deploy::wait_healthy(&container.0, Duration::from_secs(120));
    let port = run_ok(docker().args(["port", &container.0, "7860/tcp"]));
    let base = format!("http://{}", port.lines().next().expect("a published port"));

    let ready: Value = reqwest::blocking::get(format!("{base}/readyz"))
        .expect("GET /readyz")
        .json()
        .expect("JSON");
    let budget = ready["memory"]["budget_bytes"].as_u64().expect("budget");
    // The host has far more; the plan must see the container's 1 GiB (gVisor
    // reports it as the sandbox's memory, plus what the process holds).
    assert!(
        (512 << 20..=1100 << 20).contains(&budget),
        "{runtime}: budget {budget} is not the 1 GiB limit: {ready}"
    );

    let (generated, image) = generate_and_txt2img(&base);
    let (want_generated, want_image) = reference();
    common::assert_same_image(&generated, want_generated, &format!("{runtime} /download"));
    common::assert_same_image(&image, want_image, &format!("{runtime} txt2img"));
    let parameters = png::read_parameters(&image).expect("infotext");
    assert!(parameters.contains("Seed: 7"), "{parameters}");

    // SIGTERM to PID 1 (sdserve itself): it drains and exits 0.
    run_ok(docker().args(["stop", "-t", "30", &container.0]));
    assert_eq!(deploy::inspect(&container.0, "{{.State.ExitCode}}"), "0");
    let logs = deploy::logs(&container.0);
    assert!(logs.contains("drained; exiting"), "{logs}");
}

#[test]
fn serves_under_runc_with_a_memory_limit() {
    if !deploy::skipped("serves_under_runc_with_a_memory_limit") {
        serves_under("runc");
    }
}

#[test]
fn serves_under_gvisor_with_a_memory_limit() {
    if !deploy::skipped("serves_under_gvisor_with_a_memory_limit") {
        serves_under("runsc");
    }
}

/// The image holds the binary, its libraries, CA certificates and the user
/// files, nothing else (no shell), runs as 10001 and is far under 50 MB.
#[test]
fn image_is_small_non_root_and_holds_nothing_else() {
    if deploy::skipped("image_is_small_non_root_and_holds_nothing_else") {
        return;
    }
    let image = deploy::test_image();
    let size: u64 = run_ok(docker().args(["image", "inspect", "-f", "{{.Size}}", image]))
        .parse()
        .expect("size");
    assert!(size < 50_000_000, "image is {size} bytes");
    assert_eq!(deploy::inspect(image, "{{.Config.User}}"), "10001:10001");
    let health = deploy::inspect(image, "{{json .Config.Healthcheck.Test}}");
    assert!(health.contains("sdserve\",\"healthcheck"), "{health}");

    let created = Container(run_ok(docker().args(["create", image])));
    let export = deploy::run(docker().args(["export", &created.0]));
    assert!(export.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let tar = dir.path().join("image.tar");
    std::fs::write(&tar, &export.stdout).expect("tar written");
    let listing = run_ok(std::process::Command::new("tar").arg("-tf").arg(&tar));
    // Docker adds these to every container; they are not in the image.
    let docker_made = [
        ".dockerenv",
        "dev/",
        "proc/",
        "sys/",
        "etc/hostname",
        "etc/hosts",
    ];
    let files: BTreeSet<&str> = listing
        .lines()
        .filter(|f| !f.ends_with('/'))
        .filter(|f| {
            !docker_made.iter().any(|d| f.starts_with(d))
                && *f != "etc/resolv.conf"
                && *f != "etc/mtab"
        })
        .collect();
    let expected: BTreeSet<&str> = [
        "usr/local/bin/sdserve",
        "etc/passwd",
        "etc/group",
        "etc/ssl/certs/ca-certificates.crt",
        "lib64/ld-linux-x86-64.so.2",
        "lib/x86_64-linux-gnu/libc.so.6",
        "lib/x86_64-linux-gnu/libm.so.6",
        "lib/x86_64-linux-gnu/libgcc_s.so.1",
    ]
    .into_iter()
    .collect();
    assert_eq!(files, expected, "files in the image");
    // Writable places: /data/* for the user 10001, /tmp for anyone (sticky).
    let verbose = run_ok(
        std::process::Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&tar),
    );
    let entry = |path: &str| {
        verbose
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("no {path} in:\n{verbose}"))
            .to_string()
    };
    assert!(
        entry("tmp/").starts_with("drwxrwxrwt 0/0 "),
        "{}",
        entry("tmp/")
    );
    for dir in ["data/outputs/", "data/huggingface/", "data/models/"] {
        assert!(
            entry(dir).starts_with("drwxr-xr-x 10001/10001 "),
            "{}",
            entry(dir)
        );
    }
    let no_shell = deploy::run(docker().args(["run", "--rm", "--entrypoint", "/bin/sh", image]));
    assert!(!no_shell.status.success(), "the image has a shell");
}

/// The CUDA variant cannot be built here (no CUDA binary), so its packaging is
/// checked on a stand-in: a binary linked against a fake `libcublas.so.13` (as
/// the wheels ship it) and a fake driver `libcuda.so.1`. The context must hold
/// the former in /usr/local/cuda/lib64 and never the latter (the host driver's).
#[test]
fn cuda_variant_ships_the_cuda_libraries_it_links_but_never_libcuda() {
    if deploy::skipped("cuda_variant_ships_the_cuda_libraries_it_links_but_never_libcuda") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (wheel, driver) = (dir.path().join("cu13-lib"), dir.path().join("driver"));
    std::fs::create_dir_all(&wheel).expect("mkdir");
    std::fs::create_dir_all(&driver).expect("mkdir");
    let gcc = |args: &[&std::ffi::OsStr]| run_ok(std::process::Command::new("gcc").args(args));
    let source = dir.path().join("lib.c");
    std::fs::write(
        &source,
        "int cublasCreate_v2(void) { return 0; }\nint cuInit(void) { return 100; }\n",
    )
    .expect("write");
    let so = |soname: &str, out: &std::path::Path| {
        gcc(&[
            "-shared".as_ref(),
            "-fPIC".as_ref(),
            format!("-Wl,-soname,{soname}").as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
            source.as_os_str(),
        ])
    };
    so("libcublas.so.13", &wheel.join("libcublas.so.13"));
    so("libcuda.so.1", &driver.join("libcuda.so"));
    std::os::unix::fs::symlink("libcublas.so.13", wheel.join("libcublas.so")).expect("symlink");
    let main = dir.path().join("main.c");
    std::fs::write(&main, "int cublasCreate_v2(void); int cuInit(void);\nint main(void) { return cuInit() + cublasCreate_v2(); }\n")
        .expect("write");
    let binary = dir.path().join("sdserve");
    gcc(&[
        main.as_os_str(),
        "-o".as_ref(),
        binary.as_os_str(),
        format!("-L{}", wheel.display()).as_ref(),
        "-lcublas".as_ref(),
        format!("-L{}", driver.display()).as_ref(),
        "-lcuda".as_ref(),
    ]);
    let script = common::repo_root().join("scripts/build-image.sh");
    let no_libs = deploy::run(
        std::process::Command::new("bash")
            .arg(&script)
            .args(["--variant", "cuda", "--context-only"])
            .arg(dir.path().join("refused"))
            .arg("--binary")
            .arg(&binary),
    );
    assert_eq!(
        no_libs.status.code(),
        Some(2),
        "--variant cuda without --cuda-lib-dir"
    );

    let ctx = dir.path().join("ctx");
    run_ok(
        std::process::Command::new("bash")
            .arg(&script)
            .args(["--variant", "cuda", "--binary"])
            .arg(&binary)
            .arg("--cuda-lib-dir")
            .arg(&wheel)
            .arg("--context-only")
            .arg(&ctx),
    );
    let root = ctx.join("rootfs");
    assert!(root.join("usr/local/cuda/lib64/libcublas.so.13").is_file());
    assert!(root.join("lib/x86_64-linux-gnu/libc.so.6").is_file());
    let listing = run_ok(std::process::Command::new("find").arg(&root));
    assert!(
        !listing.contains("libcuda"),
        "the driver library was shipped:\n{listing}"
    );
    let dockerfile = std::fs::read_to_string(ctx.join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains("LD_LIBRARY_PATH=/usr/local/cuda/lib64"),
        "{dockerfile}"
    );
}
