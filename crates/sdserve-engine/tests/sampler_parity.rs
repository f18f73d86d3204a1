//! Every sampler and schedule type against diffusers: the renders of
//! `fixtures/make_sampler_fixtures.py` (text to image on tiny-sd1 and the
//! v-prediction tiny-sd2, odd step counts, batches, image to image) within
//! 3/255 per channel, and each schedule's timesteps equal to those diffusers'
//! scheduler set (`sampler-schedules.safetensors`).

mod common;

use std::collections::HashMap;

use candle_core::Device;
use common::{fixtures, read_cases, request};
use sdserve_engine::config::{read_json, SchedulerConfig};
use sdserve_engine::samplers::{self, SamplerId};
use sdserve_engine::{png, Engine, EngineOptions, ModelSource, NoopObserver};

/// Largest per-channel difference allowed against diffusers' 8-bit output.
const TOLERANCE: u8 = 3;

#[test]
fn every_sampler_and_schedule_matches_diffusers() {
    let cases = read_cases(&["sampler-cases.json"]);
    let mut engines: HashMap<String, Engine> = HashMap::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut seen = std::collections::HashSet::new();
    for case in &cases {
        let engine = engines.entry(case.model.clone()).or_insert_with(|| {
            let dir = fixtures().join("models").join(&case.model);
            Engine::load_with(&ModelSource::Dir(dir), EngineOptions::default())
                .expect("model loads")
        });
        let req = request(case);
        seen.insert((req.sampler, req.schedule_type));
        let output = match engine.generate(&req, &mut NoopObserver) {
            Ok(output) => output,
            Err(e) => {
                failures.push(format!("{} {}: {e}", case.model, case.name));
                continue;
            }
        };
        assert_eq!(output.images.len(), case.images.len(), "{}", case.name);
        for (image, reference) in output.images.iter().zip(&case.images) {
            let bytes = std::fs::read(fixtures().join(reference)).expect(reference);
            let (w, h, rgb) = png::decode_rgb(&bytes).expect("reference decodes");
            assert_eq!((image.width, image.height), (w, h), "{}", case.name);
            let diff = image
                .rgb
                .iter()
                .zip(&rgb)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap_or(0);
            eprintln!("{} {}: max {diff}", case.model, case.name);
            if diff > TOLERANCE {
                failures.push(format!("{} {}: max diff {diff}/255", case.model, case.name));
            }
            checked += 1;
        }
    }
    // Every sampler with every schedule type it takes was rendered, here or
    // in `cases.json` (parity.rs).
    for case in read_cases(&["cases.json"]) {
        let req = request(&case);
        seen.insert((req.sampler, req.schedule_type));
    }
    for id in SamplerId::ALL {
        for schedule in id.schedule_types() {
            assert!(
                seen.contains(&(id, *schedule)),
                "no reference for {id} + {schedule}"
            );
        }
    }
    assert!(checked >= 84, "only {checked} images checked");
    assert!(
        failures.is_empty(),
        "images differ from diffusers:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_schedule_has_diffusers_timesteps() {
    let tables = candle_core::safetensors::load(
        fixtures().join("reference/sampler-schedules.safetensors"),
        &Device::Cpu,
    )
    .expect("schedules load");
    let mut compared = 0;
    for model in ["tiny-sd1", "tiny-sd2"] {
        let path = fixtures()
            .join("models")
            .join(model)
            .join("scheduler/scheduler_config.json");
        let config: SchedulerConfig = read_json(&path).unwrap();
        for id in SamplerId::ALL {
            for schedule in id.schedule_types() {
                for steps in [5, 7] {
                    let key = format!("{model}.{}.{}.{steps}.timesteps", id.id(), schedule.id());
                    // Euler a's Karras/exponential/beta tables are the fixture's
                    // (EulerDiscreteScheduler's sigmas under the ancestral step).
                    let theirs = tables.get(&key).unwrap_or_else(|| panic!("{key} missing"));
                    let theirs: Vec<f64> = theirs
                        .to_dtype(candle_core::DType::F64)
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    let sampler = samplers::build(id, *schedule, &config, steps).unwrap();
                    let ours = sampler.timesteps();
                    assert_eq!(ours.len(), theirs.len(), "{key}: {ours:?} vs {theirs:?}");
                    // The UNet sees float32 timesteps; DPM2's interpolated ones
                    // come from a float32 log-sigma interpolation in diffusers.
                    for (a, b) in ours.iter().zip(&theirs) {
                        assert!((a - b).abs() <= 1e-3, "{key}: {ours:?} vs {theirs:?}");
                    }
                    compared += 1;
                }
            }
        }
    }
    assert!(compared >= 100, "only {compared} schedules compared");
}
