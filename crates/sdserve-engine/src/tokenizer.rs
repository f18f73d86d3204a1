//! CLIP's byte-level BPE tokenizer, matching Hugging Face transformers 5's `CLIPTokenizer`
//! (the `tokenizers`-backed class that diffusers' StableDiffusionPipeline loads) called as
//! `tokenizer(text, padding="max_length", max_length=77, truncation=True)`.
//!
//! The steps mirror that backend in order: added special tokens are cut out of the raw text
//! (or, for tokens flagged `normalized`, out of the normalised text); the rest is normalised
//! (NFC then per-character lowercase; whitespace only separates words, so its collapsing is
//! implicit); split with CLIP's pattern and again with the byte-level (GPT-2) pattern; mapped
//! byte by byte to printable characters; then merged by BPE with the `</w>` end-of-word suffix.

use std::collections::HashMap;
use std::path::Path;

use regex::Regex;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::error::{EngineError, Result};

/// CLIP's context length (tokens incl. bos/eos), used when `tokenizer_config.json` gives none.
pub const DEFAULT_MAX_LENGTH: usize = 77;
const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";
const END_OF_WORD: &str = "</w>";
/// transformers writes ~1e30 as `model_max_length` when a tokenizer has no limit.
const UNLIMITED_MAX_LENGTH: u64 = 1 << 20;
/// The `Split` pre-tokenizer of transformers' CLIPTokenizer.
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+";
/// The `ByteLevel` pre-tokenizer's GPT-2 pattern, restricted to pieces without whitespace.
const BYTE_LEVEL_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+";

/// A token matched verbatim in the prompt before BPE (bos, eos, pad, unk, added tokens).
#[derive(Debug, Clone)]
struct AddedToken {
    content: String,
    id: u32,
    /// Matched in the normalised text (true) or in the raw text (false).
    normalized: bool,
}

/// CLIP's byte-level BPE, loaded from a diffusers `tokenizer/` folder.
#[derive(Debug)]
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    /// `(left id, right id)` → `(rank, merged id)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    added: Vec<AddedToken>,
    byte_chars: [char; 256],
    clip_split: Regex,
    byte_level_split: Regex,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    unk_id: Option<u32>,
    max_length: usize,
}

/// A named special token as written in a config: content and `normalized` flag.
type Named = (String, bool);

impl ClipTokenizer {
    /// Loads `tokenizer.json` if present, else `vocab.json` + `merges.txt`; reads pad/bos/eos tokens
    /// and model_max_length from `tokenizer_config.json` / `special_tokens_map.json` when present
    /// (defaults: bos `<|startoftext|>`, eos `<|endoftext|>`, pad = eos, max length 77).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let config = read_optional_json(&config_path)?;
        let map_path = dir.join("special_tokens_map.json");
        let map = read_optional_json(&map_path)?;
        // transformers ignores special_tokens_map.json when the config lists added_tokens_decoder.
        let decoder = config.as_ref().and_then(|c| c.get("added_tokens_decoder"));
        let map = if decoder.is_some() { None } else { map };

        let json_path = dir.join("tokenizer.json");
        let (vocab_path, vocab, merges, mut listed, json_unk) = if json_path.is_file() {
            load_tokenizer_json(&json_path)?
        } else {
            let vocab_path = dir.join("vocab.json");
            let vocab: HashMap<String, u32> =
                serde_json::from_slice(&read(&vocab_path)?).map_err(|e| {
                    bad(
                        &vocab_path,
                        format!("expected an object of token -> id: {e}"),
                    )
                })?;
            let merges = parse_merges_txt(&dir.join("merges.txt"))?;
            (vocab_path, vocab, merges, Vec::new(), None)
        };
        if let Some(decoder) = decoder {
            listed = parse_added_tokens(decoder, &config_path)?;
        }

        let mut named = Vec::new();
        for (key, default) in [("bos_token", DEFAULT_BOS), ("eos_token", DEFAULT_EOS)]
            .into_iter()
            .chain([("unk_token", DEFAULT_EOS), ("pad_token", DEFAULT_EOS)])
        {
            let from_map = match &map {
                Some(m) => named_token(m.get(key), &map_path)?,
                None => None,
            };
            let from_config = match &config {
                Some(c) => named_token(c.get(key), &config_path)?,
                None => None,
            };
            named.push(
                from_map
                    .or(from_config)
                    .unwrap_or((default.to_string(), false)),
            );
        }

        // Flags: listed tokens (tokenizer.json / added_tokens_decoder) win, else the last
        // named token with that content (order bos, eos, unk, pad), as transformers adds them.
        let mut added: Vec<AddedToken> = Vec::new();
        let lookup = |content: &str, explicit: Option<u32>| {
            vocab.get(content).copied().or(explicit).ok_or_else(|| {
                bad(
                    &vocab_path,
                    format!("special token {content:?} is not in the vocabulary"),
                )
            })
        };
        for (content, normalized) in &named {
            let id = lookup(content, None);
            added.retain(|t| &t.content != content);
            added.push(AddedToken {
                content: content.clone(),
                id: id?,
                normalized: *normalized,
            });
        }
        for (content, id, normalized) in listed {
            let id = lookup(&content, Some(id))?;
            added.retain(|t| t.content != content);
            added.push(AddedToken {
                content,
                id,
                normalized,
            });
        }
        let id_of = |content: &str| added.iter().find(|t| t.content == content).map(|t| t.id);
        let unk_name = json_unk.unwrap_or_else(|| named[2].0.clone());
        let unk_id = vocab.get(&unk_name).copied();
        let (bos_id, eos_id, pad_id) =
            match (id_of(&named[0].0), id_of(&named[1].0), id_of(&named[3].0)) {
                (Some(b), Some(e), Some(p)) => (b, e, p),
                _ => {
                    return Err(bad(
                        &vocab_path,
                        "bos/eos/pad token ids could not be resolved",
                    ))
                }
            };
        let max_length = parse_max_length(config.as_ref(), &config_path)?;
        Self::build(
            vocab,
            &merges,
            added,
            [bos_id, eos_id, pad_id],
            unk_id,
            max_length,
        )
        .map_err(|message| bad(&vocab_path, message))
    }

    /// Assembles a tokenizer from parsed parts; merges naming unknown tokens are an error,
    /// as in the `tokenizers` BPE builder.
    fn build(
        vocab: HashMap<String, u32>,
        merges: &[(String, String)],
        added: Vec<AddedToken>,
        [bos_id, eos_id, pad_id]: [u32; 3],
        unk_id: Option<u32>,
        max_length: usize,
    ) -> std::result::Result<Self, String> {
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let merged = format!("{a}{b}");
            let id = |t: &str| {
                vocab.get(t).copied().ok_or(format!(
                    "merge {a:?} {b:?} uses {t:?}, absent from the vocabulary"
                ))
            };
            merge_map.insert((id(a)?, id(b)?), (rank as u32, id(&merged)?));
        }
        Ok(Self {
            vocab,
            merges: merge_map,
            added,
            byte_chars: bytes_to_unicode(),
            clip_split: Regex::new(CLIP_PATTERN).map_err(|e| e.to_string())?,
            byte_level_split: Regex::new(BYTE_LEVEL_PATTERN).map_err(|e| e.to_string())?,
            bos_id,
            eos_id,
            pad_id,
            unk_id,
            max_length,
        })
    }

    /// Exactly `max_length` ids: bos, the BPE ids truncated to max_length-2, eos, then pad ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        ids.extend(self.tokenize(text).into_iter().take(self.max_length - 2));
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        ids
    }

    /// Number of BPE tokens of `text` before truncation (for prompt-length warnings).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.tokenize(text).len()
    }

    /// Total ids per prompt, bos and eos included (`model_max_length`, 77 for CLIP).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Id filling the tail of [`ClipTokenizer::encode`]'s output (eos for SD1, `!` for SD2).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The content ids of `text`, without bos/eos/padding.
    fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for (raw, special) in self.split_added(text, false) {
            if let Some(id) = special {
                ids.push(id);
                continue;
            }
            let normalized: String = raw.nfc().flat_map(char::to_lowercase).collect();
            for (piece, special) in self.split_added(&normalized, true) {
                match special {
                    Some(id) => ids.push(id),
                    None => self.tokenize_words(piece, &mut ids),
                }
            }
        }
        ids
    }

    /// Cuts `text` at added tokens with the given `normalized` flag, leftmost then longest
    /// first; yields text pieces as `(piece, None)` and tokens as `("", Some(id))`.
    fn split_added<'t>(&self, text: &'t str, normalized: bool) -> Vec<(&'t str, Option<u32>)> {
        let tokens: Vec<&AddedToken> = self
            .added
            .iter()
            .filter(|t| t.normalized == normalized)
            .collect();
        let mut out = Vec::new();
        let (mut start, mut pos) = (0, 0);
        while pos < text.len() {
            let rest = &text[pos..];
            let best = tokens
                .iter()
                .filter(|t| !t.content.is_empty() && rest.starts_with(&t.content))
                .max_by_key(|t| t.content.len());
            if let Some(token) = best {
                if start < pos {
                    out.push((&text[start..pos], None));
                }
                out.push(("", Some(token.id)));
                pos += token.content.len();
                start = pos;
            } else {
                pos += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if start < text.len() {
            out.push((&text[start..], None));
        }
        out
    }

    /// Pre-tokenizes normalised text into words and appends each word's BPE ids.
    fn tokenize_words(&self, text: &str, ids: &mut Vec<u32>) {
        for piece in self.clip_split.find_iter(text) {
            for word in self.byte_level_split.find_iter(piece.as_str()) {
                self.bpe_word(word.as_str(), ids);
            }
        }
    }

    /// BPE on one word: its bytes as CLIP characters, `</w>` on the last, then merges applied
    /// lowest rank first (leftmost on ties). Unknown characters become unk, or vanish without one.
    fn bpe_word(&self, word: &str, ids: &mut Vec<u32>) {
        let chars: Vec<char> = word
            .bytes()
            .map(|b| self.byte_chars[usize::from(b)])
            .collect();
        let mut symbols: Vec<u32> = Vec::with_capacity(chars.len());
        for (i, c) in chars.iter().enumerate() {
            let mut symbol = c.to_string();
            if i + 1 == chars.len() {
                symbol.push_str(END_OF_WORD);
            }
            if let Some(id) = self.vocab.get(&symbol).copied().or(self.unk_id) {
                symbols.push(id);
            }
        }
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, pair)| {
                    self.merges
                        .get(&(pair[0], pair[1]))
                        .map(|&(rank, id)| (rank, i, id))
                })
                .min();
            let Some((_, i, id)) = best else { break };
            symbols[i] = id;
            symbols.remove(i + 1);
        }
        ids.extend(symbols);
    }
}

/// GPT-2/CLIP's reversible byte → printable character table: printable Latin-1 bytes map to
/// themselves, the other bytes to U+0100 upward in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[usize::from(b)] = if printable(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap_or('\0')
        };
    }
    table
}

fn bad(path: &Path, message: impl Into<String>) -> EngineError {
    EngineError::invalid_model(path, message)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| bad(path, format!("cannot read: {e}")))
}

fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let value = serde_json::from_slice(&read(path)?)
        .map_err(|e| bad(path, format!("invalid JSON: {e}")))?;
    Ok(Some(value))
}

/// `merges.txt`: an optional `#version` line, then one `left right` pair per line, by rank.
fn parse_merges_txt(path: &Path) -> Result<Vec<(String, String)>> {
    let text = String::from_utf8(read(path)?).map_err(|e| bad(path, format!("not UTF-8: {e}")))?;
    let mut merges = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("#version") || line.is_empty() {
            continue;
        }
        match line.split(' ').collect::<Vec<_>>()[..] {
            [a, b] => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(bad(
                    path,
                    format!("line {}: expected two tokens, got {line:?}", n + 1),
                ))
            }
        }
    }
    Ok(merges)
}

type JsonParts = (
    std::path::PathBuf,
    HashMap<String, u32>,
    Vec<(String, String)>,
    Vec<(String, u32, bool)>,
    Option<String>,
);

/// `tokenizer.json`: the BPE model's vocab, merges (`"a b"` strings or `["a", "b"]` pairs),
/// unk token and the added tokens; the pipeline itself is CLIP's whatever the file says,
/// as transformers' CLIPTokenizer also rebuilds it.
fn load_tokenizer_json(path: &Path) -> Result<JsonParts> {
    let json: Value = serde_json::from_slice(&read(path)?)
        .map_err(|e| bad(path, format!("invalid JSON: {e}")))?;
    let model = &json["model"];
    if model.get("type").is_some_and(|t| t != "BPE") {
        return Err(bad(
            path,
            format!("model type {} is not BPE", model["type"]),
        ));
    }
    let vocab = serde_json::from_value(model["vocab"].clone()).map_err(|e| {
        bad(
            path,
            format!("model.vocab: expected an object of token -> id: {e}"),
        )
    })?;
    let entries = model["merges"]
        .as_array()
        .ok_or_else(|| bad(path, "model.merges: expected an array"))?;
    let mut merges = Vec::with_capacity(entries.len());
    for entry in entries {
        let pair = match entry {
            Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(a) => match &a[..] {
                [Value::String(l), Value::String(r)] => Some((l.clone(), r.clone())),
                _ => None,
            },
            _ => None,
        };
        merges
            .push(pair.ok_or_else(|| bad(path, format!("model.merges: malformed entry {entry}")))?);
    }
    let unk = model
        .get("unk_token")
        .and_then(Value::as_str)
        .map(str::to_string);
    let added = match json.get("added_tokens") {
        Some(Value::Array(list)) => list
            .iter()
            .map(|t| added_entry(t, t.get("id"), path))
            .collect::<Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    Ok((path.to_path_buf(), vocab, merges, added, unk))
}

/// `added_tokens_decoder` of `tokenizer_config.json`: id (as a string key) → AddedToken object.
fn parse_added_tokens(decoder: &Value, path: &Path) -> Result<Vec<(String, u32, bool)>> {
    let entries = decoder
        .as_object()
        .ok_or_else(|| bad(path, "added_tokens_decoder: expected an object"))?;
    entries
        .iter()
        .map(|(id, t)| added_entry(t, Some(&Value::String(id.clone())), path))
        .collect()
}

/// One AddedToken object: `(content, id, normalized)`; `normalized` defaults to `!special`.
fn added_entry(token: &Value, id: Option<&Value>, path: &Path) -> Result<(String, u32, bool)> {
    let id = match id {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    let content = token.get("content").and_then(Value::as_str);
    let special = token
        .get("special")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let normalized = token
        .get("normalized")
        .and_then(Value::as_bool)
        .unwrap_or(!special);
    match (content, id.and_then(|i| u32::try_from(i).ok())) {
        (Some(c), Some(i)) => Ok((c.to_string(), i, normalized)),
        _ => Err(bad(path, format!("malformed added token {token}"))),
    }
}

/// A special token given as a string (matched raw) or an AddedToken object `{"content": ...}`.
fn named_token(value: Option<&Value>, path: &Path) -> Result<Option<Named>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some((s.clone(), false))),
        Some(Value::Object(o)) => match o.get("content").and_then(Value::as_str) {
            Some(c) => Ok(Some((
                c.to_string(),
                o.get("normalized")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            ))),
            None => Err(bad(
                path,
                format!("special token object without content: {value:?}"),
            )),
        },
        Some(other) => Err(bad(
            path,
            format!("special token must be a string or object, got {other}"),
        )),
    }
}

/// `model_max_length`, defaulting to 77 when absent or transformers' "unlimited" sentinel.
fn parse_max_length(config: Option<&Value>, path: &Path) -> Result<usize> {
    let Some(value) = config.and_then(|c| c.get("model_max_length")) else {
        return Ok(DEFAULT_MAX_LENGTH);
    };
    let n = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0)
            .map(|f| f.min(u64::MAX as f64) as u64)
    });
    match n {
        Some(n) if n >= UNLIMITED_MAX_LENGTH => Ok(DEFAULT_MAX_LENGTH),
        Some(n) if n >= 2 => Ok(n as usize),
        _ => Err(bad(
            path,
            format!("model_max_length must be an integer >= 2, got {value}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_matching_clip() {
        let table = bytes_to_unicode();
        assert_eq!(table[usize::from(b'a')], 'a');
        assert_eq!(table[usize::from(b' ')], 'Ġ'); // U+0120: space is the 33rd unprintable byte
        assert_eq!(table[0], 'Ā');
        assert_eq!(table[0xAD], 'Ń');
        let mut seen: Vec<char> = table.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
    }

    /// A vocabulary over `l o w e r` with merges `l o`, `lo w</w>`, `e r</w>`, `lo w`.
    fn tiny() -> ClipTokenizer {
        let tokens = [
            "<|startoftext|>",
            "<|endoftext|>",
            "l",
            "o",
            "w",
            "e",
            "r",
            "w</w>",
            "r</w>",
            "lo",
            "low</w>",
            "er</w>",
            "low",
            "!</w>",
        ];
        let vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges: Vec<(String, String)> =
            [("l", "o"), ("lo", "w</w>"), ("e", "r</w>"), ("lo", "w")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
        let added = vec![
            AddedToken {
                content: "<|startoftext|>".into(),
                id: 0,
                normalized: true,
            },
            AddedToken {
                content: "<|endoftext|>".into(),
                id: 1,
                normalized: false,
            },
        ];
        ClipTokenizer::build(vocab, &merges, added, [0, 1, 1], Some(1), 8)
            .expect("tiny vocab is consistent")
    }

    #[test]
    fn bpe_applies_merges_by_rank() {
        let t = tiny();
        assert_eq!(t.tokenize("low"), vec![10]);
        assert_eq!(t.tokenize("LOWER"), vec![12, 11]); // lo+w (rank 3), e+r</w> (rank 2)
        assert_eq!(t.tokenize("low!  lo"), vec![10, 13, 2, 1]); // "o</w>" is unknown: unk
        // A one-letter word is its end-of-word form ("w</w>"); "?" is unknown.
        assert_eq!(t.tokenize("w?"), vec![7, 1]);
    }

    #[test]
    fn encode_adds_specials_truncates_and_pads() {
        let t = tiny();
        assert_eq!(t.encode("low"), vec![0, 10, 1, 1, 1, 1, 1, 1]);
        assert_eq!(
            t.encode(&"low ".repeat(10)),
            vec![0, 10, 10, 10, 10, 10, 10, 1]
        );
        assert_eq!(t.count_tokens(&"low ".repeat(10)), 10);
        // Raw-matched eos, normalised-matched bos, uppercase eos is plain text.
        assert_eq!(
            t.tokenize("low<|endoftext|><|STARTOFTEXT|>"),
            vec![10, 1, 0]
        );
        // "<|", "endoftext", "|>" as BPE words, mostly unknown characters here.
        assert_eq!(t.tokenize("<|ENDOFTEXT|>").len(), 13);
    }
}
