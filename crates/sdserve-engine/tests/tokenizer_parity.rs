//! Token ids must equal transformers' CLIPTokenizer as diffusers calls it
//! (`padding="max_length", max_length=77, truncation=True`); the references in
//! `fixtures/reference/tokens.json` were written by `fixtures/make_fixtures.py`.

use std::path::{Path, PathBuf};

use sdserve_engine::tokenizer::ClipTokenizer;
use sdserve_engine::EngineError;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

/// `(text, ids)` pairs of one model from `tokens.json`.
fn references(model: &str) -> Vec<(String, Vec<u32>)> {
    let path = Path::new(FIXTURES).join("reference/tokens.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("tokens.json is JSON");
    let cases = json[model]
        .as_array()
        .unwrap_or_else(|| panic!("tokens.json has no {model}"));
    cases
        .iter()
        .map(|case| {
            let text = case["text"].as_str().expect("text is a string").to_string();
            let ids = serde_json::from_value(case["ids"].clone()).expect("ids are u32s");
            (text, ids)
        })
        .collect()
}

/// Asserts every reference string of `model` against the tokenizer in `dir`; returns how many.
fn assert_parity(model: &str, dir: &Path) -> usize {
    let tokenizer =
        ClipTokenizer::from_dir(dir).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()));
    assert_eq!(tokenizer.max_length(), 77);
    let cases = references(model);
    assert!(!cases.is_empty(), "no reference strings for {model}");
    let mut failures = Vec::new();
    for (text, expected) in &cases {
        let got = tokenizer.encode(text);
        if &got != expected {
            failures.push(format!(
                "text {text:?}\n  expected {expected:?}\n  got      {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{model}: {} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    cases.len()
}

fn model_dir(model: &str) -> PathBuf {
    Path::new(FIXTURES)
        .join("models")
        .join(model)
        .join("tokenizer")
}

#[test]
fn tiny_sd1_matches_transformers() {
    assert_parity("tiny-sd1", &model_dir("tiny-sd1"));
}

#[test]
fn tiny_sd2_matches_transformers_with_bang_padding() {
    let n = assert_parity("tiny-sd2", &model_dir("tiny-sd2"));
    assert!(n > 0);
    let tokenizer = ClipTokenizer::from_dir(&model_dir("tiny-sd2")).expect("loads");
    assert_eq!(tokenizer.pad_id(), 0, "SD2 pads with '!'");
}

#[test]
fn tokenizer_json_folder_matches_tiny_sd1() {
    assert_parity(
        "tiny-sd1",
        &Path::new(FIXTURES).join("reference/tokenizer-json"),
    );
}

#[test]
fn count_tokens_is_untruncated() {
    let tokenizer = ClipTokenizer::from_dir(&model_dir("tiny-sd1")).expect("loads");
    assert_eq!(tokenizer.count_tokens(""), 0);
    assert_eq!(tokenizer.count_tokens("a photograph of a fox"), 5);
    assert_eq!(tokenizer.count_tokens(&"repeated ".repeat(100)), 100);
    assert_eq!(tokenizer.encode(&"repeated ".repeat(100)).len(), 77);
}

/// A scratch folder under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sdserve-tokenizer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Asserts `dir` fails to load with an InvalidModel error whose path ends in `file`.
fn assert_invalid(dir: &Path, file: &str) {
    match ClipTokenizer::from_dir(dir) {
        Err(EngineError::InvalidModel { path, message }) => {
            assert!(
                path.ends_with(file),
                "error names {} ({message}), expected {file}",
                path.display()
            );
            assert!(EngineError::InvalidModel { path, message }
                .to_string()
                .contains(file));
        }
        Err(other) => panic!("expected InvalidModel naming {file}, got {other}"),
        Ok(_) => panic!("expected an error naming {file}"),
    }
}

#[test]
fn missing_folder_names_vocab_json() {
    assert_invalid(Path::new("/nonexistent/sdserve/tokenizer"), "vocab.json");
}

#[test]
fn malformed_files_are_named() {
    let scratch = Scratch::new("malformed");
    let dir = &scratch.0;
    std::fs::write(dir.join("vocab.json"), "{\"a\": \"not an id\"}").expect("write");
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\n").expect("write");
    assert_invalid(dir, "vocab.json");

    std::fs::write(
        dir.join("vocab.json"),
        "{\"a</w>\": 0, \"<|startoftext|>\": 1, \"<|endoftext|>\": 2}",
    )
    .expect("write");
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\na b c\n").expect("write");
    assert_invalid(dir, "merges.txt");

    std::fs::write(dir.join("merges.txt"), "#version: 0.2\n").expect("write");
    std::fs::write(dir.join("tokenizer_config.json"), "{\"pad_token\": 3}").expect("write");
    assert_invalid(dir, "tokenizer_config.json");

    std::fs::write(
        dir.join("tokenizer_config.json"),
        "{\"pad_token\": {\"content\": \"!\"}}",
    )
    .expect("write");
    assert_invalid(dir, "vocab.json"); // "!" is not in this vocabulary

    std::fs::write(
        dir.join("tokenizer_config.json"),
        "{\"model_max_length\": 77}",
    )
    .expect("write");
    let tokenizer = ClipTokenizer::from_dir(dir).expect("minimal folder loads");
    assert_eq!(tokenizer.encode("a")[..3], [1, 0, 2]);

    std::fs::write(dir.join("tokenizer.json"), "{\"model\": {\"vocab\": []}}").expect("write");
    assert_invalid(dir, "tokenizer.json");
}
