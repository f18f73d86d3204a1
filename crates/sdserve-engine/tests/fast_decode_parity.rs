//! `--fast-decode` against diffusers with the same tiny VAE swapped in
//! (`pipe.vae = AutoencoderTiny(...)`): every case of
//! `fixtures/make_tiny_vae_fixtures.py` within 3/255 per channel, and the
//! infotext names the decoder.

mod common;

use common::{diff_to_reference, fixtures, read_cases, request};
use sdserve_engine::{Engine, EngineOptions, ModelSource, NoopObserver};

const TOLERANCE: u8 = 3;

fn load_engine(model: &str, fast_decode: &str) -> Engine {
    let options = EngineOptions {
        tiny_vae: Some(fixtures().join("models").join(fast_decode)),
        fast_decode: true,
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
                assert_eq!((image.width, image.height), (case.width, case.height));
                let diff = diff_to_reference(&image.rgb, reference);
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
    let diff = diff_to_reference(&full.images[0].rgb, &case.images[0]);
    assert!(
        diff > 20,
        "full VAE within {diff}/255 of the tiny VAE's image"
    );
    assert!(!full.images[0].infotext.contains("Fast decode"));
}

/// Collects the live previews.
struct Previews(Vec<sdserve_engine::preview::Preview>);

impl sdserve_engine::Observer for Previews {
    fn wants_preview(&mut self) -> bool {
        true
    }
    fn preview(&mut self, preview: sdserve_engine::preview::Preview) {
        self.0.push(preview);
    }
}

/// With a tiny VAE, live previews are its full-size decodes (the last one,
/// at sigma 0, is the fast-decoded image itself); without --fast-decode the
/// final image is still the model's VAE's.
#[test]
fn tiny_vae_previews_are_full_size_and_final_images_need_fast_decode() {
    let case = read_cases(&["tiny-vae-cases.json"])
        .into_iter()
        .find(|c| c.model == "tiny-sd1" && c.batch_size == 1)
        .expect("a single-image tiny-sd1 case");
    let mut previews = Previews(Vec::new());
    let fast = load_engine("tiny-sd1", "tiny-taesd")
        .generate(&request(&case), &mut previews)
        .expect("generates");
    assert_eq!(previews.0.len(), case.steps);
    for p in &previews.0 {
        assert_eq!((p.width, p.height), (case.width, case.height));
        assert_eq!(p.rgb.len(), case.width * case.height * 3);
    }
    let last = previews.0.last().expect("previews");
    assert_eq!(last.rgb, fast.images[0].rgb);

    let options = EngineOptions {
        tiny_vae: Some(fixtures().join("models").join("tiny-taesd")),
        ..EngineOptions::default()
    };
    let dir = fixtures().join("models").join("tiny-sd1");
    let previews_only = Engine::load_with(&ModelSource::Dir(dir), options)
        .expect("loads")
        .generate(&request(&case), &mut NoopObserver)
        .expect("generates");
    // CASE_A with the model's own VAE: the main parity suite's reference.
    let diff = diff_to_reference(
        &previews_only.images[0].rgb,
        "reference/tiny-sd1/euler_ancestral-a-0.png",
    );
    assert!(diff <= TOLERANCE, "max diff {diff}");
    assert!(!previews_only.images[0].infotext.contains("Fast decode"));
}

/// --fast-decode without a tiny VAE is refused.
#[test]
fn fast_decode_needs_a_tiny_vae() {
    let options = EngineOptions {
        fast_decode: true,
        ..EngineOptions::default()
    };
    let dir = fixtures().join("models").join("tiny-sd1");
    let err = Engine::load_with(&ModelSource::Dir(dir), options)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("--tiny-vae"), "{err}");
}

/// A folder that is not a tiny VAE is refused by name.
#[test]
fn a_folder_without_a_tiny_vae_config_is_refused() {
    let options = EngineOptions {
        tiny_vae: Some(fixtures().join("models").join("tiny-sd1")),
        ..EngineOptions::default()
    };
    let dir = fixtures().join("models").join("tiny-sd1");
    let err = Engine::load_with(&ModelSource::Dir(dir), options)
        .err()
        .expect("a pipeline folder is not a tiny VAE");
    assert!(err.to_string().contains("config.json"), "{err}");
}

/// A tiny VAE that decodes at another scale than the model's VAE (here the
/// fixture's weights with no upsampling: 1x instead of 8x) is refused at
/// load, naming both scales.
#[test]
fn a_tiny_vae_of_another_scale_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tiny = fixtures().join("models").join("tiny-taesd");
    let weights = "diffusion_pytorch_model.safetensors";
    std::fs::copy(tiny.join(weights), dir.path().join(weights)).expect("copy weights");
    let config = std::fs::read_to_string(tiny.join("config.json")).expect("config");
    let mut config: serde_json::Value = serde_json::from_str(&config).expect("json");
    config["upsampling_scaling_factor"] = 1.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write config");
    let options = EngineOptions {
        tiny_vae: Some(dir.path().to_path_buf()),
        ..EngineOptions::default()
    };
    let model = fixtures().join("models").join("tiny-sd1");
    let err = Engine::load_with(&ModelSource::Dir(model), options)
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("4 latent channels at 1x; the model has 4 at 8x"),
        "{err}"
    );
}
