//! `--fast-decode` against diffusers with the same tiny VAE swapped in
//! (`pipe.vae = AutoencoderTiny(...)`): every case of
//! `fixtures/make_tiny_vae_fixtures.py` within 3/255 per channel, and the
//! infotext names the decoder.

mod common;

use common::{fixtures, read_cases, request};
use sdserve_engine::{png, Engine, EngineOptions, ModelSource, NoopObserver};

const TOLERANCE: u8 = 3;

fn load_engine(model: &str, fast_decode: &str) -> Engine {
    let options = EngineOptions {
        fast_decode: Some(fixtures().join("models").join(fast_decode)),
        ..EngineOptions::default()
    };
    let dir = fixtures().join("models").join(model);
    Engine::load_with(&ModelSource::Dir(dir), options).expect("model and tiny VAE load")
}

#[test]
fn fast_decode_matches_diffusers_with_the_tiny_vae_swapped_in() {
    let cases = read_cases(&["tiny-vae-cases.json"]);
    let mut checked = 0;
    for model in ["tiny-sd1", "tiny-sdxl"] {
        let mut engine = None;
        for case in cases.iter().filter(|c| c.model == model) {
            let tiny = case.fast_decode.as_deref().expect("a fast-decode case");
            let engine = engine.get_or_insert_with(|| load_engine(model, tiny));
            let output = engine
                .generate(&request(case), &mut NoopObserver)
                .expect("generates");
            assert_eq!(output.images.len(), case.images.len(), "{}", case.name);
            for (image, reference) in output.images.iter().zip(&case.images) {
                let bytes = std::fs::read(fixtures().join(reference)).expect("reference png");
                let (w, h, rgb) = png::decode_rgb(&bytes).expect("reference decodes");
                assert_eq!((image.width, image.height), (w, h), "{}", case.name);
                let diff = image
                    .rgb
                    .iter()
                    .zip(&rgb)
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap_or(0);
                eprintln!("{model} {}: max {diff}", case.name);
                assert!(diff <= TOLERANCE, "{reference}: max diff {diff}/255");
                assert!(
                    image.infotext.contains(&format!("Fast decode: {tiny}")),
                    "{}",
                    image.infotext
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 4, "only {checked} images checked");
}

/// The full VAE's image is not the tiny one's: the comparison above would
/// catch a `--fast-decode` that fell back to the model's VAE.
#[test]
fn the_full_vae_renders_a_different_image() {
    let case = read_cases(&["tiny-vae-cases.json"])
        .into_iter()
        .find(|c| c.model == "tiny-sd1")
        .expect("a tiny-sd1 case");
    let dir = fixtures().join("models").join("tiny-sd1");
    let full = Engine::load_with(&ModelSource::Dir(dir), EngineOptions::default())
        .expect("model loads")
        .generate(&request(&case), &mut NoopObserver)
        .expect("generates");
    let bytes = std::fs::read(fixtures().join(&case.images[0])).expect("reference png");
    let (_, _, rgb) = png::decode_rgb(&bytes).expect("reference decodes");
    let diff = full.images[0]
        .rgb
        .iter()
        .zip(&rgb)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    assert!(
        diff > 20,
        "full VAE within {diff}/255 of the tiny VAE's image"
    );
    assert!(!full.images[0].infotext.contains("Fast decode"));
}

/// A tiny VAE of another latent space or scale is refused at load, by name.
#[test]
fn a_tiny_vae_that_does_not_fit_the_model_is_refused() {
    let options = EngineOptions {
        fast_decode: Some(fixtures().join("models").join("tiny-sd1")),
        ..EngineOptions::default()
    };
    let dir = fixtures().join("models").join("tiny-sd1");
    let err = Engine::load_with(&ModelSource::Dir(dir), options)
        .err()
        .expect("a pipeline folder is not a tiny VAE");
    assert!(err.to_string().contains("config.json"), "{err}");
}
