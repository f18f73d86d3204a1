//! Image-for-image parity with diffusers: every reference case rendered by
//! `fixtures/make_fixtures.py` must be reproduced within 3/255 per channel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sdserve_engine::{png, Engine, GenerateRequest, ModelSource, NoopObserver, SamplerId};
use serde::Deserialize;

/// Largest per-channel difference allowed against diffusers' 8-bit output.
const TOLERANCE: u8 = 3;

#[derive(Deserialize)]
struct Case {
    model: String,
    name: String,
    prompt: String,
    negative_prompt: String,
    seed: u64,
    steps: usize,
    cfg_scale: f64,
    sampler: String,
    width: usize,
    height: usize,
    batch_size: usize,
    images: Vec<String>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn cases() -> Vec<Case> {
    let text =
        std::fs::read_to_string(fixtures().join("reference/cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json parses")
}

fn request(case: &Case) -> GenerateRequest {
    GenerateRequest {
        prompt: case.prompt.clone(),
        negative_prompt: case.negative_prompt.clone(),
        seed: Some(case.seed),
        steps: case.steps,
        cfg_scale: case.cfg_scale,
        sampler: case.sampler.parse::<SamplerId>().expect("known sampler"),
        width: case.width,
        height: case.height,
        batch_size: case.batch_size,
    }
}

/// Largest channel difference between two RGB buffers.
fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

fn check_model(model: &str) {
    let engine = Engine::load(&ModelSource::Dir(fixtures().join("models").join(model)))
        .expect("model loads");
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases().into_iter().filter(|c| c.model == model) {
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
        checked >= 16,
        "{model}: only {checked} reference images checked"
    );
    assert!(
        failures.is_empty(),
        "{model}: images differ from diffusers:\n{}",
        failures.join("\n")
    );
}

#[test]
fn tiny_sd1_matches_diffusers_for_every_sampler() {
    check_model("tiny-sd1");
}

#[test]
fn tiny_sd2_matches_diffusers_for_every_sampler() {
    check_model("tiny-sd2");
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
    for model in ["tiny-sd1", "tiny-sd2"] {
        for sampler in SamplerId::ALL {
            let group = &per_model_sampler[&(model.to_string(), sampler.label().to_string())];
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

/// A job's images do not depend on the jobs it shares the UNet batch with.
#[test]
fn batched_jobs_equal_their_solo_images_exactly() {
    for model in ["tiny-sd1", "tiny-sd2"] {
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
                    width: 64,
                    height: 48,
                    batch_size: 1 + i % 2,
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
