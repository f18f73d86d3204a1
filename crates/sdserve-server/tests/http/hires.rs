//! The hires fix over HTTP: A1111's `enable_hr` fields and the native `hires`
//! object reach the engine request, the images come back at the target size,
//! the echoes carry the settings, and every unsupported variant is refused by
//! name.

use sdserve_server::engine_api::{HiresFix, HiresSize, StepCount, Upscaler};
use serde_json::{json, Value};

use crate::common::{assert_error, b64, expected_pngs, request, TestServer};

fn fix(upscaler: &str, size: HiresSize, steps: usize, strength: f64) -> HiresFix {
    HiresFix {
        upscaler: Upscaler::parse(upscaler).unwrap(),
        size,
        steps,
        denoising_strength: strength,
        step_count: StepCount::A1111,
    }
}

#[tokio::test]
async fn a1111_txt2img_runs_the_hires_fix() {
    let s = TestServer::start().await;
    let body: Value = s
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "a cat", "seed": 7, "steps": 4, "cfg_scale": 7, "width": 64,
                "height": 48, "sampler_name": "Euler a", "enable_hr": true, "hr_scale": 1.5,
                "hr_upscaler": "Latent (nearest)", "hr_second_pass_steps": 3,
                "denoising_strength": 0.6, "hr_prompt": "", "hr_negative_prompt": "",
                "hr_sampler_name": "Use same sampler", "hr_checkpoint_name": "Use same checkpoint",
                "hr_resize_x": 0, "hr_resize_y": 0, "firstphase_width": 0, "firstphase_height": 0}),
        )
        .await
        .json()
        .await
        .unwrap();
    let mut want = request("a cat", 7);
    (want.width, want.height) = (64, 48);
    want.hires = Some(fix("Latent (nearest)", HiresSize::Scale(1.5), 3, 0.6));
    let png = b64(body["images"][0].as_str().unwrap());
    assert_eq!(png, expected_pngs(&want)[0]);
    // 96x72: the PNG's IHDR.
    assert_eq!(&png[16..24], &[0, 0, 0, 96, 0, 0, 0, 72]);

    let p = &body["parameters"];
    assert_eq!(
        (p["width"].as_u64(), p["height"].as_u64()),
        (Some(64), Some(48))
    );
    assert_eq!(p["enable_hr"], true);
    assert_eq!(p["hr_scale"], 1.5);
    assert_eq!(p["hr_upscaler"], "Latent (nearest)");
    assert_eq!(p["hr_second_pass_steps"], 3);
    assert_eq!(p["denoising_strength"], 0.6);
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["denoising_strength"], 0.6);
    assert_eq!(
        info["extra_generation_params"],
        json!({"Hires upscale": 1.5, "Hires steps": 3, "Hires upscaler": "Latent (nearest)"})
    );
}

#[tokio::test]
async fn a1111_defaults_and_resize_targets() {
    let s = TestServer::start().await;
    // enable_hr alone: A1111's defaults (x2, Latent, strength 0.75).
    let body: Value = s
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "p", "seed": 1, "steps": 4, "cfg_scale": 7, "width": 64, "height": 64,
                "sampler_name": "Euler a", "enable_hr": true}),
        )
        .await
        .json()
        .await
        .unwrap();
    let mut want = request("p", 1);
    want.hires = Some(fix("Latent", HiresSize::Scale(2.0), 0, 0.75));
    assert_eq!(
        b64(body["images"][0].as_str().unwrap()),
        expected_pngs(&want)[0]
    );
    assert_eq!(body["parameters"]["hr_upscaler"], "Latent");

    // A target of another aspect ratio: 128x64 from 64x64 (cover, then crop).
    let body: Value = s
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "p", "seed": 1, "steps": 4, "cfg_scale": 7, "width": 64, "height": 64,
                "sampler_name": "Euler a", "enable_hr": true, "hr_resize_x": 128, "hr_resize_y": 64,
                "hr_upscaler": "Lanczos"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let png = b64(body["images"][0].as_str().unwrap());
    assert_eq!(&png[16..24], &[0, 0, 0, 128, 0, 0, 0, 64]);
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["extra_generation_params"]["Hires resize"], "128x64");
}

#[tokio::test]
async fn a1111_refuses_what_the_hires_fix_cannot_do_by_name() {
    let s = TestServer::start().await;
    let base = json!({"prompt": "p", "width": 64, "height": 64, "steps": 4, "enable_hr": true});
    for (extra, field, status) in [
        (json!({"hr_upscaler": "R-ESRGAN 4x+"}), "hr_upscaler", 422),
        (json!({"hr_prompt": "another prompt"}), "hr_prompt", 422),
        (json!({"hr_sampler_name": "DDIM"}), "hr_sampler_name", 422),
        (
            json!({"hr_checkpoint_name": "other"}),
            "hr_checkpoint_name",
            422,
        ),
        (json!({"denoising_strength": 0}), "denoising_strength", 422),
        (
            json!({"denoising_strength": 1.5}),
            "denoising_strength",
            422,
        ),
        (
            json!({"hr_second_pass_steps": 151}),
            "hr_second_pass_steps",
            422,
        ),
        (json!({"hr_scale": 0.5}), "hr_scale", 422),
        (json!({"hr_scale": 64}), "hr_scale", 422),
        (
            json!({"hr_resize_x": 4096, "hr_resize_y": 64}),
            "hr_resize_x",
            422,
        ),
        (json!({"firstphase_width": 32}), "firstphase_width", 422),
    ] {
        let mut body = base.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let resp = s.post("/sdapi/v1/txt2img", body.clone()).await;
        assert_error(resp, status, field).await;
    }
    // Beyond --max-pixels at the target size (the first pass alone fits).
    let resp = s
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "p", "width": 1024, "height": 1024, "steps": 4, "enable_hr": true,
                "hr_scale": 2}),
        )
        .await;
    assert_error(resp, 422, "hr_scale").await;
    // img2img has no hires fix.
    let resp = s
        .post(
            "/sdapi/v1/img2img",
            json!({"prompt": "p", "init_images": [crate::img2img::png_b64(64, 64)], "enable_hr": true}),
        )
        .await;
    assert_error(resp, 422, "enable_hr").await;
}

#[tokio::test]
async fn native_jobs_take_a_hires_object() {
    let s = TestServer::start().await;
    let id = s
        .submit_job(
            json!({"prompt": "a fox", "seed": 3, "width": 64, "height": 64,
            "hires": {"upscaler": "Nearest", "width": 96, "steps": 2, "denoising_strength": 0.5}}),
        )
        .await;
    let job = s.wait_job(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["params"]["hires"],
        json!({"upscaler": "Nearest", "resize_width": 96, "resize_height": 0, "steps": 2,
            "denoising_strength": 0.5})
    );
    let image = &job["images"][0];
    let png = s
        .get(image["url"].as_str().unwrap())
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(&png[16..24], &[0, 0, 0, 96, 0, 0, 0, 96]);
    let mut want = request("a fox", 3);
    want.hires = Some(fix(
        "Nearest",
        HiresSize::Resize {
            width: 96,
            height: 0,
        },
        2,
        0.5,
    ));
    assert_eq!(png.to_vec(), expected_pngs(&want)[0]);

    for (hires, field) in [
        (json!({"upscaler": "SwinIR"}), "hires.upscaler"),
        (json!({"scale": 2, "width": 128}), "hires.scale"),
        (json!({"width": -8}), "hires.width"),
        (json!({"steps": -1}), "hires.steps"),
        (json!({"denoising_strength": 2}), "hires.denoising_strength"),
        (json!({"sharpness": 1}), "sharpness"),
    ] {
        let resp = s
            .post("/api/v1/jobs", json!({"prompt": "p", "hires": hires}))
            .await;
        assert_error(resp, 422, field).await;
    }
}
