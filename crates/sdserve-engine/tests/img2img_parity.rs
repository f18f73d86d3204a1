//! Image-to-image and inpainting parity with diffusers: every case of
//! `fixtures/reference/img2img-cases.json` (rendered by
//! `fixtures/make_img2img_fixtures.py` with `StableDiffusionImg2ImgPipeline`,
//! `StableDiffusionXLImg2ImgPipeline` and `StableDiffusionInpaintPipeline`,
//! for an inpainting UNet and a regular one) within 3/255 per channel, and of
//! `img2img-tiled-cases.json` (the same pipelines after `vae.enable_tiling()`:
//! tiled encode and decode; `fixtures/make_tiled_encode_fixtures.py`).

mod common;

use std::collections::HashSet;

use common::{fixtures, read_cases, request, Case};
use sdserve_engine::{png, Engine, EngineOptions, ModelSource, NoopObserver, VaeTiling};

const TOLERANCE: u8 = 3;

fn cases() -> Vec<Case> {
    read_cases(&["img2img-cases.json"])
}

/// Renders every case of `model`; at least `expected` images must be compared.
fn check(model: &str, pipeline_kind: fn(&Case) -> bool, expected: usize) {
    let cases = cases()
        .into_iter()
        .filter(|c| c.model == model && pipeline_kind(c))
        .collect();
    check_cases(model, cases, expected);
}

/// Renders `cases` on `model`; at least `expected` images must be compared.
fn check_cases(model: &str, cases: Vec<Case>, expected: usize) {
    check_with(model, cases, expected, VaeTiling::Auto);
}

/// [`check_cases`] with the engine's `--vae-tiling` mode.
fn check_with(model: &str, cases: Vec<Case>, expected: usize, vae_tiling: VaeTiling) {
    let options = EngineOptions {
        vae_tiling,
        ..EngineOptions::default()
    };
    let engine = Engine::load_with(
        &ModelSource::Dir(fixtures().join("models").join(model)),
        options,
    )
    .expect("model loads");
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases {
        let output = engine
            .generate(&request(&case), &mut NoopObserver)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(output.images.len(), case.images.len(), "{}", case.name);
        for (image, reference) in output.images.iter().zip(&case.images) {
            let bytes = std::fs::read(fixtures().join(reference)).expect("reference png");
            let (w, h, rgb) = png::decode_rgb(&bytes).expect("reference decodes");
            assert_eq!((image.width, image.height), (w, h), "{}: size", case.name);
            let diff = image
                .rgb
                .iter()
                .zip(&rgb)
                .map(|(x, y)| x.abs_diff(*y))
                .max()
                .unwrap_or(0);
            eprintln!("{model} {}: max {diff}", case.name);
            if diff > TOLERANCE {
                failures.push(format!("{} ({reference}): max diff {diff}/255", case.name));
            }
            checked += 1;
        }
    }
    assert!(
        checked >= expected,
        "{model}: only {checked} images checked"
    );
    assert!(
        failures.is_empty(),
        "{model}: images differ from diffusers:\n{}",
        failures.join("\n")
    );
}

fn img2img(c: &Case) -> bool {
    c.mask.is_none()
}

fn inpaint(c: &Case) -> bool {
    c.mask.is_some()
}

#[test]
fn tiny_sd1_img2img_matches_diffusers_for_every_sampler_and_strength() {
    check("tiny-sd1", img2img, 7);
}

#[test]
fn tiny_sd2_img2img_matches_diffusers() {
    check("tiny-sd2", img2img, 2);
}

#[test]
fn tiny_sdxl_img2img_matches_diffusers() {
    check("tiny-sdxl", img2img, 3);
}

/// The 9-channel inpainting UNet: mask and masked-image latents as input.
#[test]
fn inpainting_unet_matches_diffusers() {
    check("tiny-sd1-inpaint", inpaint, 4);
}

/// A regular 4-channel UNet inpaints by blending the re-noised image each step.
#[test]
fn regular_unet_inpainting_matches_diffusers() {
    check("tiny-sd1", inpaint, 4);
}

/// `--vae-tiling on` against diffusers' `enable_tiling()` with an init image
/// of 3 x 2 tiles: img2img (SD 1.x, SDXL) and 4-channel inpainting, whose
/// image and masked image are both encoded in tiles.
#[test]
fn tiled_vae_encode_and_decode_match_diffusers() {
    let cases = read_cases(&["img2img-tiled-cases.json"]);
    assert!(cases.iter().all(|c| c.vae_tiling && c.width > 64));
    for (model, expected) in [("tiny-sd1", 4), ("tiny-sdxl", 1)] {
        let mine = cases.iter().filter(|c| c.model == model).cloned().collect();
        check_with(model, mine, expected, VaeTiling::On);
    }
}

/// A1111's `resize_mode` 3: the image encoded at its own size (70x53 up to
/// 64x64, 96x64 down to 64x48), its latents resized bilinearly
/// (`fixtures/make_latent_resize_fixtures.py`).
#[test]
fn latent_resize_matches_the_reference() {
    let cases = read_cases(&["latent-resize-cases.json"]);
    assert!(cases
        .iter()
        .all(|c| request(c).init.is_some_and(|i| i.resize_latents)));
    check_cases("tiny-sd1", cases, 2);
}

#[test]
fn cases_cover_samplers_strengths_batches_and_resizing() {
    let cases = cases();
    let samplers: HashSet<&str> = cases
        .iter()
        .filter(|c| c.model == "tiny-sd1" && c.mask.is_none())
        .map(|c| c.sampler.as_str())
        .collect();
    assert!(samplers.len() >= 4, "img2img samplers: {samplers:?}");
    let strengths: HashSet<u64> = cases
        .iter()
        .filter_map(|c| c.strength.map(|s| (s * 100.0) as u64))
        .collect();
    assert!(strengths.len() >= 4, "strengths: {strengths:?}");
    assert!(cases.iter().any(|c| c.batch_size == 2 && c.mask.is_some()));
    assert!(cases
        .iter()
        .any(|c| c.strength == Some(1.0) && c.mask.is_some()));
    // An init image whose size differs from the output's exercises the resize.
    assert!(cases
        .iter()
        .any(|c| c.init_image.as_deref().is_some_and(|p| p.contains("80x56"))));
}

/// "Inpaint only masked" (A1111's `inpaint_full_res`): the job runs at its
/// size on a crop and its images come back at the whole image's size, equal
/// to the image outside the crop and where the mask is 0, and named so in
/// the infotext.
#[test]
fn only_masked_results_are_pasted_back_into_the_whole_image() {
    use sdserve_engine::image_input::DecodedImage;
    use sdserve_engine::image_ops::GrayImage;
    use sdserve_engine::request::ImageToImage;
    use sdserve_engine::{GenerateRequest, PasteBack};
    use std::sync::Arc;

    let engine = Engine::load(&ModelSource::Dir(fixtures().join("models/tiny-sd1"))).unwrap();
    let case = cases()
        .into_iter()
        .find(inpaint)
        .expect("an inpainting case");
    let base = request(&case);
    let (cw, ch) = (96, 80);
    let canvas = DecodedImage {
        width: cw,
        height: ch,
        rgb: (0..cw * ch * 3).map(|i| (i * 7 % 251) as u8).collect(),
    };
    // Mask on inside (40..56, 30..46), off elsewhere; the crop is (32, 22, 32, 32).
    let luma: Vec<u8> = (0..cw * ch)
        .map(|i| {
            let (x, y) = (i % cw, i / cw);
            if (40..56).contains(&x) && (30..46).contains(&y) {
                255
            } else {
                0
            }
        })
        .collect();
    let init = base.init.clone().expect("an init image");
    let req = GenerateRequest {
        init: Some(ImageToImage {
            overlay: None,
            paste: Some(Arc::new(PasteBack {
                canvas: Arc::new(canvas.clone()),
                mask: Arc::new(GrayImage {
                    width: cw,
                    height: ch,
                    luma: luma.clone(),
                }),
                region: (32, 22, 32, 32),
                padding: 8,
            })),
            ..init
        }),
        ..base
    };
    let out = engine.generate(&req, &mut NoopObserver).expect("generates");
    let image = &out.images[0];
    assert_eq!((image.width, image.height), (cw, ch));
    let mut changed = 0;
    for (i, m) in luma.iter().enumerate() {
        let (ours, theirs) = (&image.rgb[i * 3..i * 3 + 3], &canvas.rgb[i * 3..i * 3 + 3]);
        if *m == 0 {
            assert_eq!(ours, theirs, "pixel {i} outside the mask changed");
        } else if ours != theirs {
            changed += 1;
        }
    }
    assert!(changed > 200, "only {changed} masked pixels were inpainted");
    assert!(
        image
            .infotext
            .contains("Inpaint area: Only masked, Masked area padding: 8"),
        "{}",
        image.infotext
    );
}
