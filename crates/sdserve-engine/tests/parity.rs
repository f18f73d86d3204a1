//! Image-for-image parity with diffusers: every reference case rendered by
//! `fixtures/make_fixtures.py` (and `make_sdxl_fixtures.py`, with
//! `StableDiffusionXLPipeline`) must be reproduced within 3/255 per channel,
//! including the renders made with diffusers' `vae.enable_tiling()`.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{fixtures, max_diff, read_cases, request, Case};
use sdserve_engine::{
    png, Engine, EngineOptions, GenerateRequest, ModelSource, NoopObserver, SamplerId, VaeTiling,
};

/// Largest per-channel difference allowed against diffusers' 8-bit output.
const TOLERANCE: u8 = 3;

/// `cases.json`, `vae-tiling-cases.json` and `sdxl-cases.json`.
fn cases() -> Vec<Case> {
    read_cases(&["cases.json", "vae-tiling-cases.json", "sdxl-cases.json"])
}

fn engine(model: &str, vae_tiling: VaeTiling) -> Engine {
    engine_at(fixtures().join("models").join(model), vae_tiling)
}

/// The engine for a folder or single file at `path`.
fn engine_at(path: PathBuf, vae_tiling: VaeTiling) -> Engine {
    let options = EngineOptions {
        vae_tiling,
        ..EngineOptions::default()
    };
    Engine::load_with(&ModelSource::Dir(path), options).expect("model loads")
}

/// Renders every reference case of `model` (a fixture folder's name) from
/// `path`; at least `expected` images must be compared.
fn check_model_at(model: &str, path: PathBuf, expected: usize) {
    // Each case runs as `--vae-tiling on` or `off`, as diffusers rendered it.
    let tiled = engine_at(path.clone(), VaeTiling::On);
    let untiled = engine_at(path, VaeTiling::Off);
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases().into_iter().filter(|c| c.model == model) {
        let engine = if case.vae_tiling { &tiled } else { &untiled };
        let output = engine
            .generate(&request(&case), &mut NoopObserver)
            .expect("generates");
        assert_eq!(
            output.images.len(),
            case.images.len(),
            "{}: image count",
            case.name
        );
        for (image, reference) in output.images.iter().zip(&case.images) {
            let bytes = std::fs::read(fixtures().join(reference)).expect("reference png");
            let (w, h, rgb) = png::decode_rgb(&bytes).expect("reference decodes");
            assert_eq!((image.width, image.height), (w, h), "{}: size", case.name);
            let diff = max_diff(&image.rgb, &rgb);
            let mean = image
                .rgb
                .iter()
                .zip(&rgb)
                .map(|(x, y)| x.abs_diff(*y) as f64)
                .sum::<f64>()
                / rgb.len() as f64;
            eprintln!("{model} {}: max {diff} mean {mean:.3}", case.name);
            if diff > TOLERANCE {
                failures.push(format!(
                    "{} ({}): max diff {diff}/255",
                    case.name, reference
                ));
            }
            checked += 1;
        }
    }
    assert!(
        checked >= expected,
        "{model}: only {checked} reference images checked"
    );
    assert!(
        failures.is_empty(),
        "{model}: images differ from diffusers:\n{}",
        failures.join("\n")
    );
}

fn check_model(model: &str, expected: usize) {
    check_model_at(model, fixtures().join("models").join(model), expected);
}

#[test]
fn tiny_sd1_matches_diffusers_for_every_sampler() {
    check_model("tiny-sd1", 18);
}

#[test]
fn tiny_sd2_matches_diffusers_for_every_sampler() {
    check_model("tiny-sd2", 18);
}

/// SDXL: two text encoders, pooled text and size conditioning, zero negative
/// embeddings for an empty negative prompt, non-square latents that do not
/// divide by the UNet's downsampling, three samplers, a batch of two.
#[test]
fn tiny_sdxl_matches_diffusers() {
    check_model("tiny-sdxl", 4);
}

/// SDXL-Turbo style: 1 and 2 Euler Ancestral "trailing" steps without guidance,
/// from fp16 variant weights.
#[test]
fn tiny_sdxl_turbo_style_matches_diffusers() {
    check_model("tiny-sdxl-fast", 2);
}

/// Turbo's defaults come from the configs (the folder's name does not say turbo).
#[test]
fn turbo_defaults_come_from_the_configs() {
    let fast = Engine::load(&ModelSource::Dir(fixtures().join("models/tiny-sdxl-fast"))).unwrap();
    let info = fast.info();
    assert_eq!((info.default_steps, info.default_cfg_scale), (1, 0.0));
    assert_eq!((info.native_width, info.native_height), (512, 512));
    let base = Engine::load(&ModelSource::Dir(fixtures().join("models/tiny-sdxl"))).unwrap();
    let info = base.info();
    assert_eq!((info.default_steps, info.default_cfg_scale), (20, 7.0));
    assert_eq!((info.native_width, info.native_height), (1024, 1024));
}

/// The same weights as one LDM-layout `.safetensors` (+ its original-config
/// yaml) render the folder's diffusers references: fixtures/make_single_file_fixtures.py.
#[test]
fn tiny_sd1_single_file_matches_the_folders_references() {
    let file = fixtures().join("models/single/tiny-sd1.safetensors");
    check_model_at("tiny-sd1", file, 18);
}

#[test]
fn tiny_sd2_single_file_matches_the_folders_references() {
    let file = fixtures().join("models/single/tiny-sd2.safetensors");
    check_model_at("tiny-sd2", file, 18);
}

/// SDXL as one SGM-layout `.safetensors` (conditioner.embedders.0/1) + its yaml.
#[test]
fn tiny_sdxl_single_file_matches_the_folders_references() {
    let file = fixtures().join("models/single/tiny-sdxl.safetensors");
    check_model_at("tiny-sdxl", file, 4);
}

#[test]
fn cases_cover_samplers_seeds_negative_batch_and_non_square() {
    let cases = cases();
    let mut per_model_sampler: HashMap<(String, String), Vec<&Case>> = HashMap::new();
    for c in &cases {
        per_model_sampler
            .entry((c.model.clone(), c.sampler.clone()))
            .or_default()
            .push(c);
    }
    // The samplers of `cases.json`; the others (and the schedule types) are
    // `sampler_parity.rs`'s.
    for model in ["tiny-sd1", "tiny-sd2"] {
        for sampler in ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM"] {
            let group = &per_model_sampler[&(model.to_string(), sampler.to_string())];
            let seeds: std::collections::HashSet<u64> = group.iter().map(|c| c.seed).collect();
            assert!(seeds.len() >= 2, "{model} {sampler}: two seeds");
            assert!(
                group.iter().any(|c| !c.negative_prompt.is_empty()),
                "{model} {sampler}: negative prompt"
            );
            assert!(
                group.iter().any(|c| c.batch_size == 2),
                "{model} {sampler}: batch of 2"
            );
            assert!(
                group.iter().any(|c| c.width != c.height),
                "{model} {sampler}: non-square"
            );
        }
    }
}

/// The tiled render's twin (same request, tiling off) is a different image,
/// by more than the parity tolerance, and `--vae-tiling off` at that size
/// gives that untiled image: the flag provably changes what is decoded.
#[test]
fn vae_tiling_off_gives_the_untiled_image_which_differs_from_the_tiled_one() {
    let all = cases();
    for model in ["tiny-sd1", "tiny-sd2"] {
        let pick = |tiling: bool| {
            all.iter()
                .find(|c| c.model == model && c.vae_tiling == tiling && c.width > 64)
                .unwrap_or_else(|| {
                    panic!("{model}: no case with vae_tiling {tiling} above one tile")
                })
        };
        let (tiled_case, untiled_case) = (pick(true), pick(false));
        let req = request(tiled_case);
        assert_eq!(
            req,
            request(untiled_case),
            "{model}: the twins share one request"
        );
        let read = |case: &Case| {
            let bytes = std::fs::read(fixtures().join(&case.images[0])).expect("reference png");
            png::decode_rgb(&bytes).expect("reference decodes").2
        };
        let (tiled_ref, untiled_ref) = (read(tiled_case), read(untiled_case));
        let apart = max_diff(&tiled_ref, &untiled_ref);
        assert!(
            apart > 2 * TOLERANCE,
            "{model}: references only {apart} apart"
        );

        let on = engine(model, VaeTiling::On)
            .generate(&req, &mut NoopObserver)
            .unwrap();
        let off = engine(model, VaeTiling::Off)
            .generate(&req, &mut NoopObserver)
            .unwrap();
        let off_vs_untiled = max_diff(&off.images[0].rgb, &untiled_ref);
        let off_vs_tiled = max_diff(&off.images[0].rgb, &tiled_ref);
        let on_vs_tiled = max_diff(&on.images[0].rgb, &tiled_ref);
        eprintln!("{model}: references {apart} apart; off vs untiled {off_vs_untiled}, off vs tiled {off_vs_tiled}, on vs tiled {on_vs_tiled}");
        assert!(off_vs_untiled <= TOLERANCE && on_vs_tiled <= TOLERANCE);
        assert!(off_vs_tiled > TOLERANCE, "{model}: off looks tiled");
    }
}

/// A job's images do not depend on the jobs it shares the UNet batch with.
#[test]
fn batched_jobs_equal_their_solo_images_exactly() {
    for model in ["tiny-sd1", "tiny-sd2", "tiny-sdxl"] {
        let engine = Engine::load(&ModelSource::Dir(fixtures().join("models").join(model)))
            .expect("model loads");
        for (sampler, cfg_scale) in [(SamplerId::EulerAncestral, 7.5), (SamplerId::DpmPp2m, 1.0)] {
            let jobs: Vec<GenerateRequest> = ["a red car", "a green tree", "a blue house"]
                .iter()
                .enumerate()
                .map(|(i, prompt)| GenerateRequest {
                    prompt: prompt.to_string(),
                    negative_prompt: "blurry".into(),
                    seed: Some(10 + i as u64),
                    steps: 3,
                    cfg_scale,
                    sampler,
                    schedule_type: Default::default(),
                    width: 64,
                    height: 48,
                    batch_size: 1 + i % 2,
                    seed_per_image: false,
                    hires: None,
                    prompt_syntax: Default::default(),
                    clip_skip: 0,
                    loras: Vec::new(),
                    init: None,
                })
                .collect();
            let batched = engine
                .generate_batch(&jobs, &mut NoopObserver)
                .expect("batch runs");
            for (job, result) in jobs.iter().zip(batched) {
                let together = result.expect("job succeeds");
                let alone = engine.generate(job, &mut NoopObserver).expect("solo runs");
                assert_eq!(together.images.len(), job.batch_size);
                assert_eq!(alone.images.len(), job.batch_size);
                for (a, b) in together.images.iter().zip(&alone.images) {
                    assert!(
                        a.rgb == b.rgb,
                        "{model} {sampler} {:?}: batched image differs from solo",
                        job.prompt
                    );
                }
            }
        }
    }
}
