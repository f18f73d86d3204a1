//! Hires-fix parity with diffusers: every case of
//! `fixtures/reference/hires-cases.json` (rendered by
//! `fixtures/make_hires_fixtures.py`: a `StableDiffusionPipeline` first pass,
//! A1111's upscale and crop, then `StableDiffusionImg2ImgPipeline` with a
//! fresh generator on the same seed) within 3/255 per channel, and the first
//! pass's images as plain text-to-image.

mod common;

use common::{fixtures, read_cases, request, Case};
use std::sync::Arc;

use sdserve_engine::hires::{HiresFix, HiresSize, StepCount, Upscaler};
use sdserve_engine::image_input::DecodedImage;
use sdserve_engine::image_ops::resize;
use sdserve_engine::request::ImageToImage;
use sdserve_engine::{png, Engine, ModelSource, NoopObserver, Observer, Progress};

const TOLERANCE: u8 = 3;

fn cases() -> Vec<Case> {
    read_cases(&["hires-cases.json"])
}

/// The engine's settings for a case. Most cases were rendered with diffusers'
/// step count (`num_inference_steps` = the hires steps); the one with
/// `diffusers_num_inference_steps` reproduces A1111's count.
fn hires_fix(case: &Case) -> HiresFix {
    let h = case.hires.as_ref().expect("a hires case");
    let number = |key: &str| h[key].as_f64().unwrap_or_else(|| panic!("{key}"));
    let size = match h.get("scale").and_then(|s| s.as_f64()) {
        Some(scale) => HiresSize::Scale(scale),
        None => HiresSize::Resize {
            width: number("resize_x") as usize,
            height: number("resize_y") as usize,
        },
    };
    let upscaler = h["upscaler"].as_str().expect("upscaler");
    HiresFix {
        upscaler: Upscaler::parse(upscaler).expect("a known upscaler"),
        size,
        steps: number("second_pass_steps") as usize,
        denoising_strength: number("denoising_strength"),
        step_count: if h.get("diffusers_num_inference_steps").is_some() {
            StepCount::A1111
        } else {
            StepCount::Diffusers
        },
    }
}

fn max_diff(ours: &[u8], reference: &str) -> (usize, usize, u8) {
    let bytes = std::fs::read(fixtures().join(reference)).expect("reference png");
    let (w, h, rgb) = png::decode_rgb(&bytes).expect("reference decodes");
    assert_eq!(ours.len(), rgb.len(), "{reference}: size");
    let diff = ours
        .iter()
        .zip(&rgb)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0);
    (w, h, diff)
}

/// Counts the steps reported, and keeps the last total.
#[derive(Default)]
struct Steps {
    last: Option<(usize, usize)>,
}

impl Observer for Steps {
    fn progress(&mut self, progress: Progress) {
        if let Progress::Step { step, total } = progress {
            self.last = Some((step, total));
        }
    }
}

#[test]
fn tiny_sd1_hires_fix_matches_diffusers() {
    let engine =
        Engine::load(&ModelSource::Dir(fixtures().join("models/tiny-sd1"))).expect("model loads");
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases() {
        // The first pass alone is plain text-to-image.
        let first = engine
            .generate(&request(&case), &mut NoopObserver)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        for (image, reference) in first.images.iter().zip(&case.first_pass_images) {
            let (_, _, diff) = max_diff(&image.rgb, reference);
            eprintln!("{} first pass: max {diff}", case.name);
            assert!(
                diff <= TOLERANCE,
                "{}: first pass differs by {diff}",
                case.name
            );
        }

        let fix = hires_fix(&case);
        let (steps, start) = fix.schedule(case.steps);
        let hires_request = sdserve_engine::GenerateRequest {
            hires: Some(fix),
            ..request(&case)
        };
        let mut progress = Steps::default();
        let output = engine
            .generate(&hires_request, &mut progress)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let total = case.steps + steps - start;
        assert_eq!(
            progress.last,
            Some((total, total)),
            "{}: progress",
            case.name
        );
        assert_eq!(output.images.len(), case.images.len(), "{}", case.name);
        for (image, reference) in output.images.iter().zip(&case.images) {
            let (w, h, diff) = max_diff(&image.rgb, reference);
            assert_eq!((image.width, image.height), (w, h), "{}", case.name);
            eprintln!("{}: {w}x{h} max {diff}", case.name);
            if diff > TOLERANCE {
                failures.push(format!("{} ({reference}): max diff {diff}/255", case.name));
            }
            assert!(
                image.infotext.contains(&format!(
                    "Hires upscaler: {}",
                    hires_request.hires.as_ref().unwrap().upscaler.name()
                )),
                "{}",
                image.infotext
            );
            checked += 1;
        }
    }
    assert!(checked >= 7, "only {checked} images checked");
    assert!(
        failures.is_empty(),
        "images differ from diffusers:\n{}",
        failures.join("\n")
    );
}

/// The second pass of an image upscaler is diffusers' img2img from the
/// upscaled 8-bit first-pass image, so a first pass 1/255 off could move it:
/// from diffusers' own first-pass PNG, upscaled as A1111 does, our
/// image-to-image pass must match the reference within 3/255 as well.
#[test]
fn image_upscaler_second_pass_matches_diffusers() {
    let engine =
        Engine::load(&ModelSource::Dir(fixtures().join("models/tiny-sd1"))).expect("model loads");
    let mut checked = 0;
    for case in cases() {
        let fix = hires_fix(&case);
        let Upscaler::Image(upscaler) = fix.upscaler else {
            continue;
        };
        let geometry = fix.geometry(case.width, case.height, 8).expect("geometry");
        let first = common::read_rgb(&case.first_pass_images[0]);
        let upscaled = resize(
            &first.rgb,
            (first.width, first.height),
            3,
            geometry.upscale_to,
            upscaler.filter(),
        );
        let (width, height) = geometry.output;
        assert_eq!(
            geometry.upscale_to,
            (width, height),
            "no crop in these cases"
        );
        let (steps, _) = fix.schedule(case.steps);
        let request = sdserve_engine::GenerateRequest {
            steps,
            width,
            height,
            init: Some(ImageToImage {
                image: Arc::new(DecodedImage {
                    width,
                    height,
                    rgb: upscaled,
                }),
                mask: None,
                strength: fix.denoising_strength,
                resize_latents: false,
                overlay: None,
                paste: None,
            }),
            ..request(&case)
        };
        let output = engine
            .generate(&request, &mut NoopObserver)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let (_, _, diff) = max_diff(&output.images[0].rgb, &case.images[0]);
        eprintln!("{} from diffusers' first pass: max {diff}", case.name);
        assert!(diff <= TOLERANCE, "{}: {diff}/255", case.name);
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} image-upscaler cases");
}

/// The cases cover latent and image upscalers, a crop to another aspect
/// ratio, a batch and A1111's step count.
#[test]
fn cases_cover_upscalers_crop_batch_and_a1111_steps() {
    let cases = cases();
    let fixes: Vec<HiresFix> = cases.iter().map(hires_fix).collect();
    assert!(fixes
        .iter()
        .any(|f| matches!(f.upscaler, Upscaler::Latent(_))));
    assert!(fixes
        .iter()
        .any(|f| matches!(f.upscaler, Upscaler::Image(_))));
    assert!(fixes
        .iter()
        .any(|f| matches!(f.size, HiresSize::Resize { .. })));
    assert!(fixes.iter().any(|f| f.step_count == StepCount::A1111));
    assert!(cases.iter().any(|c| c.batch_size > 1));
}
