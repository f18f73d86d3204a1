//! CLIP's tokenizer for checkpoints that carry none. Single files hold only
//! weights, but both SD text encoders (OpenAI CLIP ViT-L/14 for SD 1.x, OpenCLIP
//! ViT-H/14 for SD 2.x) tokenize with the same BPE, which is bundled here as the
//! gzip file CLIP ships (`assets/README.md` says where it comes from).
//!
//! The vocabulary is derived as CLIP's `SimpleTokenizer` (and
//! `fixtures/make_fixtures.py`) do: the 256 byte characters, the same with
//! `</w>`, one token per merge, then `<|startoftext|>` and `<|endoftext|>`.
//! The special tokens and padding follow the `tokenizer/` folders of the SD
//! repos, so ids equal diffusers' for either family.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use serde_json::{json, Value};

use crate::error::{EngineError, Result};
use crate::tokenizer::ClipTokenizer;

/// `bpe_simple_vocab_16e6.txt.gz` from CLIP (via the open-clip-torch wheel).
const BPE_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");
/// Merges CLIP uses from that file: 49152 - 256 - 2 (its first line is a header).
const MERGES: usize = 49152 - 256 - 2;
/// Name the bundled vocabulary goes by in errors.
const ORIGIN: &str = "(bundled CLIP vocabulary)";
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// Which padding a family's tokenizer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// `<|endoftext|>`, as SD 1.x's `tokenizer/` (transformers' CLIP default).
    EndOfText,
    /// `!` (id 0), as SD 2.x's `tokenizer/` (OpenCLIP pads with 0).
    Bang,
}

/// CLIP's tokenizer from the bundled BPE, padded as `padding` says.
pub fn bundled_tokenizer(padding: Padding) -> Result<ClipTokenizer> {
    let (vocab, merges) = clip_vocab()?;
    let token = |content: &str| json!({"content": content, "lstrip": false, "normalized": true, "rstrip": false, "single_word": false});
    let pad = match padding {
        Padding::EndOfText => Value::String(EOS.into()),
        Padding::Bang => token("!"),
    };
    let special_tokens_map = json!({
        "bos_token": token(BOS), "eos_token": token(EOS), "unk_token": token(EOS), "pad_token": pad,
    });
    let config = json!({"model_max_length": crate::tokenizer::DEFAULT_MAX_LENGTH});
    ClipTokenizer::from_parts(
        vocab,
        merges,
        &config,
        &special_tokens_map,
        Path::new(ORIGIN),
    )
}

/// Token -> id.
type Vocab = HashMap<String, u32>;
/// Merges by rank.
type Merges = Vec<(String, String)>;

/// The 49,408-token vocabulary and the ranked merges.
pub fn clip_vocab() -> Result<(Vocab, Merges)> {
    let bad = |m: String| EngineError::invalid_model(ORIGIN, m);
    let mut text = String::new();
    flate2::read::GzDecoder::new(BPE_GZ)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("cannot decompress: {e}")))?;
    let merges: Merges = text
        .split('\n')
        .skip(1)
        .take(MERGES)
        .map(|line| {
            let (a, b) = line
                .split_once(' ')
                .ok_or_else(|| bad(format!("bad merge {line:?}")))?;
            Ok((a.to_string(), b.to_string()))
        })
        .collect::<Result<_>>()?;
    if merges.len() != MERGES {
        return Err(bad(format!("{} merges, expected {MERGES}", merges.len())));
    }
    let bytes = byte_chars();
    let mut tokens: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
    tokens.extend(bytes.iter().map(|c| format!("{c}</w>")));
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.extend([BOS.to_string(), EOS.to_string()]);
    let vocab: Vocab = tokens.into_iter().zip(0u32..).collect();
    Ok((vocab, merges))
}

/// GPT-2/CLIP's byte characters in vocabulary order: the printable Latin-1
/// bytes as themselves (in byte order), then the other 68 bytes as U+0100... .
fn byte_chars() -> Vec<char> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut chars: Vec<char> = (0..=255u8)
        .filter(|b| printable(*b))
        .map(char::from)
        .collect();
    let hidden = (0..=255u8).filter(|b| !printable(*b)).count() as u32;
    chars.extend((0x100..0x100 + hidden).filter_map(char::from_u32));
    chars
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derived vocabulary and merges are the fixtures' `vocab.json` and `merges.txt`.
    #[test]
    fn bundled_vocab_equals_the_sd_tokenizer_files() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-sd1/tokenizer");
        let (vocab, merges) = clip_vocab().unwrap();
        let text = std::fs::read_to_string(dir.join("vocab.json")).unwrap();
        let expected: HashMap<String, u32> = serde_json::from_str(&text).unwrap();
        assert_eq!(vocab.len(), 49408);
        assert_eq!(vocab, expected);
        let text = std::fs::read_to_string(dir.join("merges.txt")).unwrap();
        let expected: Vec<(String, String)> = text
            .lines()
            .skip(1)
            .map(|l| {
                l.split_once(' ')
                    .map(|(a, b)| (a.into(), b.into()))
                    .unwrap()
            })
            .collect();
        assert_eq!(merges, expected);
    }

    /// The bundled tokenizer gives transformers' ids for all 40 strings of
    /// `fixtures/reference/tokens.json`, with each family's padding.
    #[test]
    fn bundled_tokenizer_matches_transformers() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/reference/tokens.json");
        let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for (model, padding) in [
            ("tiny-sd1", Padding::EndOfText),
            ("tiny-sd2", Padding::Bang),
        ] {
            let tokenizer = bundled_tokenizer(padding).unwrap();
            let cases = json[model].as_array().unwrap();
            assert_eq!(cases.len(), 40);
            for case in cases {
                let text = case["text"].as_str().unwrap();
                let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
                assert_eq!(tokenizer.encode(text), ids, "{model}: {text:?}");
            }
        }
    }
}
