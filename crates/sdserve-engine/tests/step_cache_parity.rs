//! `--step-cache N` against the `DeepCache` package's own helper on diffusers
//! (`fixtures/make_step_cache_fixtures.py`): every case within 3/255 per
//! channel, the infotext naming the interval, and visibly unlike the
//! uncached image (so the comparison would catch a cache that did nothing).

mod common;

use common::{diff_to_reference, fixtures, max_diff, read_cases, request};
use sdserve_engine::{Engine, EngineOptions, ModelSource, NoopObserver};

const TOLERANCE: u8 = 3;

fn load_engine(model: &str, step_cache: Option<usize>) -> Engine {
    let options = EngineOptions {
        step_cache,
        ..EngineOptions::default()
    };
    let dir = fixtures().join("models").join(model);
    Engine::load_with(&ModelSource::Dir(dir), options).expect("model loads")
}

#[test]
fn step_cache_matches_deepcache_on_diffusers() {
    let cases = read_cases(&["step-cache-cases.json"]);
    let mut checked = 0;
    for case in &cases {
        let interval = case.step_cache.expect("a step-cache case");
        let engine = load_engine(&case.model, Some(interval));
        let output = engine
            .generate(&request(case), &mut NoopObserver)
            .expect("generates");
        assert_eq!(output.images.len(), case.images.len(), "{}", case.name);
        for (image, reference) in output.images.iter().zip(&case.images) {
            assert_eq!((image.width, image.height), (case.width, case.height));
            let diff = diff_to_reference(&image.rgb, reference);
            eprintln!("{} {}: max {diff}", case.model, case.name);
            assert!(diff <= TOLERANCE, "{reference}: max diff {diff}/255");
            assert!(
                image
                    .infotext
                    .contains(&format!("DeepCache interval: {interval}")),
                "{}",
                image.infotext
            );
            checked += 1;
        }
        // Without the cache the same request gives a visibly different image.
        let plain = load_engine(&case.model, None)
            .generate(&request(case), &mut NoopObserver)
            .expect("generates");
        let diff = max_diff(&plain.images[0].rgb, &output.images[0].rgb);
        assert!(diff > 6, "{}: uncached image within {diff}/255", case.name);
        assert!(!plain.images[0].infotext.contains("DeepCache"));
    }
    assert!(checked >= 4, "only {checked} images checked");
}

/// An interval below 2 is refused when the engine loads.
#[test]
fn an_interval_below_two_is_refused() {
    let options = EngineOptions {
        step_cache: Some(1),
        ..EngineOptions::default()
    };
    let dir = fixtures().join("models").join("tiny-sd1");
    let err = Engine::load_with(&ModelSource::Dir(dir), options)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("at least 2"), "{err}");
}
