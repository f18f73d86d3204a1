//! A1111's prompt syntax, long prompts and clip skip against references from
//! `fixtures/make_prompt_fixtures.py`: conditioning computed as A1111 does
//! (emphasis, 75-token chunks with comma back-tracking, "Original" mean
//! restoration, clip skip as diffusers' `clip_skip`), images rendered by
//! diffusers from it. The chunks (ids and weights) must be equal; the images
//! within 3/255 per channel.

mod common;

use common::{fixtures, read_cases, request, Case};

use sdserve_engine::prompt::{self, EmbeddingName, PromptSyntax};
use sdserve_engine::tokenizer::ClipTokenizer;
use sdserve_engine::{png, Engine, EngineOptions, ModelSource, NoopObserver};
use serde_json::Value;

const TOLERANCE: u8 = 3;

fn cases() -> Vec<Case> {
    read_cases(&["prompt-cases.json"])
}

fn manifest() -> Value {
    let path = fixtures().join("reference/prompt-manifest.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("manifest")).expect("json")
}

fn syntax(case: &Case) -> PromptSyntax {
    case.prompt_syntax
        .as_deref()
        .unwrap_or("plain")
        .parse()
        .expect("syntax")
}

fn engine(model: &str) -> Engine {
    let options = EngineOptions {
        embeddings_dir: Some(fixtures().join("models/embeddings")),
        ..Default::default()
    };
    Engine::load_with(
        &ModelSource::Dir(fixtures().join("models").join(model)),
        options,
    )
    .unwrap_or_else(|e| panic!("{model}: {e}"))
}

/// Every prompt and negative prompt cut into the same chunks, with the same
/// weights (f32) and textual-inversion embeddings in the same places, for
/// each of the model's tokenizers.
#[test]
fn chunks_match_a1111() {
    let manifest = manifest();
    for case in cases() {
        let library = engine(&case.model).embeddings().clone();
        let encoders = manifest["cases"][&case.name]["chunks"]
            .as_object()
            .unwrap_or_else(|| panic!("{}: no chunks", case.name));
        for (encoder, texts) in encoders {
            let folder = encoder.replace("text_encoder", "tokenizer");
            let dir = fixtures().join("models").join(&case.model).join(folder);
            let tokenizer = ClipTokenizer::from_dir(&dir).expect("tokenizer");
            let names: Vec<EmbeddingName> = library
                .loaded
                .values()
                .map(|e| EmbeddingName {
                    ids: tokenizer.content_ids(&e.name),
                    vectors: e.vectors,
                })
                .collect();
            let embedding_names: Vec<&String> = library.loaded.keys().collect();
            for (field, text) in [
                ("prompt", &case.prompt),
                ("negative_prompt", &case.negative_prompt),
            ] {
                let ours =
                    prompt::tokenize(text, syntax(&case), &tokenizer, &names).expect("parses");
                let theirs = texts[field].as_array().expect("chunk list");
                let at = format!("{}/{encoder}/{field}", case.name);
                assert_eq!(ours.len(), theirs.len(), "{at}: chunk count");
                for (i, (chunk, reference)) in ours.iter().zip(theirs).enumerate() {
                    let ids: Vec<u32> = serde_json::from_value(reference[0].clone()).expect("ids");
                    let weights: Vec<f64> =
                        serde_json::from_value(reference[1].clone()).expect("weights");
                    let weights: Vec<f32> = weights.into_iter().map(|w| w as f32).collect();
                    let fixes: Vec<(usize, String)> =
                        serde_json::from_value(reference[2].clone()).expect("fixes");
                    let our_fixes: Vec<(usize, String)> = chunk
                        .fixes
                        .iter()
                        .map(|&(at, e)| (at, embedding_names[e].clone()))
                        .collect();
                    assert_eq!(chunk.ids, ids, "{at}: chunk {i} ids");
                    assert_eq!(chunk.weights, weights, "{at}: chunk {i} weights");
                    assert_eq!(our_fixes, fixes, "{at}: chunk {i} embeddings");
                }
            }
        }
    }
}

#[test]
fn images_match_diffusers() {
    let mut worst = Vec::new();
    for case in cases() {
        let output = engine(&case.model)
            .generate(&request(&case), &mut NoopObserver)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        for (image, reference) in output.images.iter().zip(&case.images) {
            let bytes = std::fs::read(fixtures().join(reference)).expect("reference png");
            let (_, _, rgb) = png::decode_rgb(&bytes).expect("decodes");
            let diff = image
                .rgb
                .iter()
                .zip(&rgb)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap_or(0);
            worst.push((case.name.clone(), diff));
        }
    }
    eprintln!("prompt parity, max diff per case: {worst:?}");
    assert_eq!(worst.len(), cases().len());
    for (name, diff) in &worst {
        assert!(*diff <= TOLERANCE, "{name}: max diff {diff} > {TOLERANCE}");
    }
}
