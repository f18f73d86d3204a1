//! CLIP's byte-level BPE tokenizer, matching Hugging Face transformers 5's `CLIPTokenizer`
//! (the `tokenizers`-backed class that diffusers' StableDiffusionPipeline loads) called as
//! `tokenizer(text, padding="max_length", max_length=77, truncation=True)`.
//!
//! The steps mirror that backend in order: added special tokens are cut out of the raw text
//! (or, for tokens flagged `normalized`, out of the normalised text); the rest is normalised
//! (NFC then per-character lowercase; whitespace only separates words, so collapsing it is
//! implicit); split with CLIP's pattern and again with the byte-level (GPT-2) pattern; mapped
//! byte by byte to printable characters; then merged by BPE with the `</w>` end-of-word suffix.
//! transformers 5 never runs ftfy or BERT's BasicTokenizer here, so neither do we.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::error::{EngineError, Result};

/// CLIP's context length (tokens incl. bos/eos), used when `tokenizer_config.json` gives none.
pub const DEFAULT_MAX_LENGTH: usize = 77;
const DEFAULTS: [(&str, &str); 4] = [
    ("bos_token", "<|startoftext|>"),
    ("eos_token", "<|endoftext|>"),
    ("unk_token", "<|endoftext|>"),
    ("pad_token", "<|endoftext|>"),
];
const END_OF_WORD: &str = "</w>";
/// transformers writes ~1e30 as `model_max_length` when a tokenizer has no limit.
const UNLIMITED_MAX_LENGTH: f64 = (1u64 << 20) as f64;
/// The `Split` pre-tokenizer of transformers' CLIPTokenizer.
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+";
/// The `ByteLevel` pre-tokenizer's GPT-2 pattern, restricted to pieces without whitespace.
const BYTE_LEVEL_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+";

/// A token matched verbatim in the prompt before BPE (bos, eos, pad, unk, added tokens).
#[derive(Debug, Clone, Deserialize)]
struct AddedToken {
    content: String,
    /// Absent in `added_tokens_decoder`, where the id is the key.
    #[serde(default)]
    id: u32,
    /// Matched in the normalised text (true) or in the raw text (false); defaults to `!special`.
    normalized: Option<bool>,
    #[serde(default)]
    special: bool,
}

impl AddedToken {
    fn normalized(&self) -> bool {
        self.normalized.unwrap_or(!self.special)
    }
}

/// A special token in a config: a plain string (matched raw) or an AddedToken object.
#[derive(Deserialize)]
#[serde(untagged)]
enum NamedToken {
    Plain(String),
    /// `normalized` defaults to false here: transformers marks these tokens special.
    Object(AddedToken),
}

/// The parts of `tokenizer.json` that transformers' CLIPTokenizer keeps (it rebuilds the rest).
#[derive(Deserialize)]
struct TokenizerJson {
    model: BpeModel,
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
}

#[derive(Deserialize)]
struct BpeModel {
    vocab: HashMap<String, u32>,
    merges: Vec<Merge>,
    unk_token: Option<String>,
}

/// A merge, as `"a b"` (older files) or `["a", "b"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Merge {
    Joined(String),
    Pair(String, String),
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
    /// bos, eos, pad.
    specials: [u32; 3],
    unk_id: Option<u32>,
    max_length: usize,
}

impl ClipTokenizer {
    /// Loads `tokenizer.json` if present, else `vocab.json` + `merges.txt`; reads pad/bos/eos tokens
    /// and model_max_length from `tokenizer_config.json` / `special_tokens_map.json` when present
    /// (defaults: bos `<|startoftext|>`, eos `<|endoftext|>`, pad = eos, max length 77).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let config = read_optional_json(&config_path)?.unwrap_or(Value::Null);
        let map_path = dir.join("special_tokens_map.json");
        // transformers ignores special_tokens_map.json when the config has added_tokens_decoder.
        let decoder = config.get("added_tokens_decoder");
        let map = match decoder {
            Some(_) => Value::Null,
            None => read_optional_json(&map_path)?.unwrap_or(Value::Null),
        };

        Self::assemble(BpeFiles::load(dir)?, &config, &config_path, &map, &map_path)
    }

    /// A tokenizer from an in-memory vocabulary and merges (the one bundled for
    /// single-file checkpoints), with `tokenizer_config.json` and
    /// `special_tokens_map.json` contents given as values; `origin` names it in errors.
    pub(crate) fn from_parts(
        vocab: HashMap<String, u32>,
        merges: Vec<(String, String)>,
        config: &Value,
        special_tokens_map: &Value,
        origin: &Path,
    ) -> Result<Self> {
        let files = BpeFiles {
            vocab_path: origin.to_path_buf(),
            merges_path: origin.to_path_buf(),
            vocab,
            merges,
            listed: Vec::new(),
            unk: None,
        };
        Self::assemble(files, config, origin, special_tokens_map, origin)
    }

    /// The special tokens and limits of `config` and `map` over the BPE files' vocabulary.
    fn assemble(
        files: BpeFiles,
        config: &Value,
        config_path: &Path,
        map: &Value,
        map_path: &Path,
    ) -> Result<Self> {
        let decoder = config.get("added_tokens_decoder");
        let BpeFiles {
            vocab_path,
            merges_path,
            vocab,
            merges,
            mut listed,
            unk,
        } = files;
        if let Some(decoder) = decoder {
            let entries: HashMap<u32, AddedToken> = parse_json_value(decoder, config_path)?;
            listed = entries
                .into_iter()
                .map(|(id, t)| AddedToken { id, ..t })
                .collect();
        }

        // Named tokens (map over config over defaults), added in the order bos, eos, unk, pad
        // with the last flag winning; tokens listed with ids (tokenizer.json's added_tokens,
        // added_tokens_decoder) override their flags, as in transformers' loading.
        let mut added: Vec<AddedToken> = Vec::new();
        let mut named_ids = [0u32; 4];
        let mut named_contents: [String; 4] = Default::default();
        for (i, (key, default)) in DEFAULTS.iter().enumerate() {
            let named = match (map.get(key), config.get(key)) {
                (Some(v), _) if !v.is_null() => parse_json_value(v, map_path)?,
                (_, Some(v)) if !v.is_null() => parse_json_value(v, config_path)?,
                _ => NamedToken::Plain(default.to_string()),
            };
            let (content, normalized) = match named {
                NamedToken::Plain(content) => (content, false),
                NamedToken::Object(t) => (t.content, t.normalized.unwrap_or(false)),
            };
            let from_list = listed.iter().find(|t| t.content == content);
            let id = vocab.get(&content).copied().or(from_list.map(|t| t.id));
            let id = id.ok_or_else(|| {
                bad(
                    &vocab_path,
                    format!("{key} {content:?} is not in the vocabulary"),
                )
            })?;
            let normalized = from_list.map_or(normalized, AddedToken::normalized);
            named_ids[i] = id;
            named_contents[i] = content.clone();
            added.retain(|t| t.content != content);
            added.push(AddedToken {
                content,
                id,
                normalized: Some(normalized),
                special: true,
            });
        }
        for token in listed {
            if !added.iter().any(|t| t.content == token.content) {
                let id = vocab.get(&token.content).copied().unwrap_or(token.id);
                added.push(AddedToken { id, ..token });
            }
        }
        let [_, _, unk_named, _] = named_contents;
        let unk_id = vocab.get(&unk.unwrap_or(unk_named)).copied();
        let max_length = parse_max_length(config, config_path)?;
        let [bos, eos, _, pad] = named_ids;
        Self::build(vocab, &merges, added, [bos, eos, pad], unk_id, max_length)
            .map_err(|message| bad(&merges_path, message))
    }

    /// Assembles a tokenizer from parsed parts; a merge naming a token absent from the
    /// vocabulary is an error, as in the `tokenizers` BPE builder (later duplicates win).
    fn build(
        vocab: HashMap<String, u32>,
        merges: &[(String, String)],
        added: Vec<AddedToken>,
        specials: [u32; 3],
        unk_id: Option<u32>,
        max_length: usize,
    ) -> std::result::Result<Self, String> {
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let id = |t: &str| {
                let message =
                    || format!("merge {a:?} {b:?} uses {t:?}, absent from the vocabulary");
                vocab.get(t).copied().ok_or_else(message)
            };
            let rank = u32::try_from(rank).map_err(|e| e.to_string())?;
            merge_map.insert((id(a)?, id(b)?), (rank, id(&format!("{a}{b}"))?));
        }
        Ok(Self {
            vocab,
            merges: merge_map,
            added,
            byte_chars: bytes_to_unicode(),
            clip_split: Regex::new(CLIP_PATTERN).map_err(|e| e.to_string())?,
            byte_level_split: Regex::new(BYTE_LEVEL_PATTERN).map_err(|e| e.to_string())?,
            specials,
            unk_id,
            max_length,
        })
    }

    /// Exactly `max_length` ids: bos, the BPE ids truncated to max_length-2, eos, then pad ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let [bos, eos, pad] = self.specials;
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(bos);
        let content = self.tokenize(text);
        ids.extend(content.into_iter().take(self.max_length.saturating_sub(2)));
        ids.push(eos);
        ids.resize(self.max_length, pad);
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
        self.specials[2]
    }

    /// The content ids of `text`, without bos/eos/padding and never truncated
    /// (A1111 tokenizes each weighted stretch this way before chunking).
    pub fn content_ids(&self, text: &str) -> Vec<u32> {
        self.tokenize(text)
    }

    /// The ids prompt chunks are framed with: bos, eos, pad, the `,</w>`
    /// token, and `max_length - 2` content tokens per chunk.
    pub fn chunk_ids(&self) -> crate::prompt::ChunkIds {
        let [bos, eos, pad] = self.specials;
        crate::prompt::ChunkIds {
            bos,
            eos,
            pad,
            comma: self.vocab.get(",</w>").copied(),
            length: self.max_length.saturating_sub(2),
        }
    }

    /// The content ids of `text`, without bos/eos/padding.
    fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for raw in self.split_added(text, false) {
            let raw = match raw {
                Piece::Token(id) => {
                    ids.push(id);
                    continue;
                }
                Piece::Text(raw) => raw,
            };
            let normalized: String = raw.nfc().flat_map(char::to_lowercase).collect();
            for piece in self.split_added(&normalized, true) {
                match piece {
                    Piece::Token(id) => ids.push(id),
                    Piece::Text(text) => {
                        for word in self.clip_split.find_iter(text) {
                            for word in self.byte_level_split.find_iter(word.as_str()) {
                                ids.extend(self.bpe(word.as_str()));
                            }
                        }
                    }
                }
            }
        }
        ids
    }

    /// Cuts `text` at the added tokens with this `normalized` flag, taking at each position
    /// the longest token that starts there (the `tokenizers` added-vocabulary matcher).
    fn split_added<'t>(&self, text: &'t str, normalized: bool) -> Vec<Piece<'t>> {
        let tokens = self.added.iter().filter(|t| t.normalized() == normalized);
        let tokens: Vec<&AddedToken> = tokens.filter(|t| !t.content.is_empty()).collect();
        let mut pieces = Vec::new();
        let (mut start, mut pos) = (0, 0);
        while let Some(rest) = text.get(pos..).filter(|r| !r.is_empty()) {
            let matching = tokens.iter().filter(|t| rest.starts_with(&t.content));
            if let Some(token) = matching.max_by_key(|t| t.content.len()) {
                if start < pos {
                    pieces.push(Piece::Text(&text[start..pos]));
                }
                pieces.push(Piece::Token(token.id));
                pos += token.content.len();
                start = pos;
            } else {
                pos += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if start < text.len() {
            pieces.push(Piece::Text(&text[start..]));
        }
        pieces
    }

    /// BPE on one word: its bytes as CLIP characters, `</w>` on the last, then merges applied
    /// lowest rank first (leftmost on ties). Unknown characters become unk, or vanish without one.
    fn bpe(&self, word: &str) -> Vec<u32> {
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
            symbols.extend(self.vocab.get(&symbol).copied().or(self.unk_id));
        }
        // Merge the lowest-ranked adjacent pair, leftmost on ties, until none is left; a heap
        // of candidates over a linked list keeps long words O(n log n) like `tokenizers` does.
        let n = symbols.len();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect(); // MAX: none
        let mut next: Vec<usize> = (1..=n).collect(); // n: none
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let candidate = |symbols: &[u32], i: usize, j: usize| {
            let merge = self.merges.get(&(symbols[i], symbols[j]));
            merge.map(|&(rank, id)| Reverse((rank, i, id)))
        };
        heap.extend((1..n).filter_map(|j| candidate(&symbols, j - 1, j)));
        while let Some(Reverse((rank, i, id))) = heap.pop() {
            let j = next[i];
            if !alive[i] || j >= n || candidate(&symbols, i, j) != Some(Reverse((rank, i, id))) {
                continue;
            }
            symbols[i] = id;
            alive[j] = false;
            next[i] = next[j];
            if next[i] < n {
                prev[next[i]] = i;
                heap.extend(candidate(&symbols, i, next[i]));
            }
            if prev[i] < n {
                heap.extend(candidate(&symbols, prev[i], i));
            }
        }
        let kept = symbols.into_iter().zip(alive).filter(|&(_, alive)| alive);
        kept.map(|(symbol, _)| symbol).collect()
    }
}

/// A stretch of prompt text, or an added token found in it.
enum Piece<'t> {
    Text(&'t str),
    Token(u32),
}

/// GPT-2/CLIP's reversible byte -> printable character table: printable Latin-1 bytes map to
/// themselves, the other bytes to U+0100 upward in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next = 0x100u32..;
    for b in 0..=255u8 {
        table[usize::from(b)] = match printable(b) {
            true => char::from(b),
            false => next.next().and_then(char::from_u32).unwrap_or('\0'),
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

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| bad(path, format!("malformed: {e}")))
}

fn parse_json_value<T: serde::de::DeserializeOwned>(value: &Value, path: &Path) -> Result<T> {
    T::deserialize(value).map_err(|e| bad(path, format!("malformed value {value}: {e}")))
}

fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    match path.is_file() {
        true => parse_json(&read(path)?, path).map(Some),
        false => Ok(None),
    }
}

/// Splits a merge line `left right`; anything but exactly two space-separated tokens is `None`.
fn split_merge(line: &str) -> Option<(String, String)> {
    let (a, b) = line.split_once(' ')?;
    (!b.contains(' ')).then(|| (a.to_string(), b.to_string()))
}

/// `merges.txt`: an optional `#version` line, then one `left right` pair per line, by rank.
fn parse_merges_txt(path: &Path) -> Result<Vec<(String, String)>> {
    let text = String::from_utf8(read(path)?).map_err(|e| bad(path, format!("not UTF-8: {e}")))?;
    let lines = text.lines().enumerate();
    let lines = lines.filter(|(_, line)| !line.is_empty() && !line.starts_with("#version"));
    lines
        .map(|(n, line)| {
            let message = || format!("line {}: expected two tokens, got {line:?}", n + 1);
            split_merge(line).ok_or_else(|| bad(path, message()))
        })
        .collect()
}

/// The vocabulary, ranked merges and listed added tokens, from `tokenizer.json` if present,
/// else from `vocab.json` + `merges.txt`.
struct BpeFiles {
    vocab_path: PathBuf,
    merges_path: PathBuf,
    vocab: HashMap<String, u32>,
    merges: Vec<(String, String)>,
    listed: Vec<AddedToken>,
    unk: Option<String>,
}

impl BpeFiles {
    fn load(dir: &Path) -> Result<Self> {
        let json_path = dir.join("tokenizer.json");
        if !json_path.is_file() {
            let (vocab_path, merges_path) = (dir.join("vocab.json"), dir.join("merges.txt"));
            let vocab = parse_json(&read(&vocab_path)?, &vocab_path)?;
            let merges = parse_merges_txt(&merges_path)?;
            let (listed, unk) = (Vec::new(), None);
            return Ok(Self {
                vocab_path,
                merges_path,
                vocab,
                merges,
                listed,
                unk,
            });
        }
        let json: TokenizerJson = parse_json(&read(&json_path)?, &json_path)?;
        let merges = json.model.merges.into_iter().map(|m| match m {
            Merge::Pair(a, b) => Ok((a, b)),
            Merge::Joined(s) => split_merge(&s).ok_or(s),
        });
        let merges = merges
            .collect::<std::result::Result<_, _>>()
            .map_err(|s| bad(&json_path, format!("malformed merge {s:?}")))?;
        Ok(Self {
            vocab_path: json_path.clone(),
            merges_path: json_path,
            vocab: json.model.vocab,
            merges,
            listed: json.added_tokens,
            unk: json.model.unk_token,
        })
    }
}

/// `model_max_length`, defaulting to 77 when absent or transformers' "unlimited" sentinel.
fn parse_max_length(config: &Value, path: &Path) -> Result<usize> {
    let Some(value) = config.get("model_max_length").filter(|v| !v.is_null()) else {
        return Ok(DEFAULT_MAX_LENGTH);
    };
    match value.as_f64() {
        Some(n) if n >= UNLIMITED_MAX_LENGTH => Ok(DEFAULT_MAX_LENGTH),
        Some(n) if n >= 2.0 && n.fract() == 0.0 => Ok(n as usize),
        _ => Err(bad(
            path,
            format!("model_max_length {value} is not an integer >= 2"),
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
        assert_eq!(table[0xFF], 'ÿ');
        let mut seen = table.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
    }

    fn special(content: &str, id: u32, normalized: bool) -> AddedToken {
        let content = content.to_string();
        AddedToken {
            content,
            id,
            normalized: Some(normalized),
            special: true,
        }
    }

    /// A vocabulary over `l o w e r` with merges `l o`, `lo w</w>`, `e r</w>`, `lo w`;
    /// bos is matched after normalisation, eos (also unk and pad) on the raw text.
    fn tiny() -> ClipTokenizer {
        let tokens =
            "<|startoftext|> <|endoftext|> l o w e r w</w> r</w> lo low</w> er</w> low !</w>";
        let vocab = tokens
            .split(' ')
            .zip(0..)
            .map(|(t, i)| (t.to_string(), i))
            .collect();
        let merges = ["l o", "lo w</w>", "e r</w>", "lo w"].map(|m| split_merge(m).expect("pair"));
        let added = vec![
            special("<|startoftext|>", 0, true),
            special("<|endoftext|>", 1, false),
        ];
        ClipTokenizer::build(vocab, &merges, added, [0, 1, 1], Some(1), 8).expect("consistent")
    }

    #[test]
    fn bpe_applies_merges_by_rank_then_leftmost() {
        let t = tiny();
        assert_eq!(t.tokenize("low"), vec![10]);
        assert_eq!(t.tokenize("LOWER"), vec![12, 11]); // e+r</w> (rank 2) before lo+w (rank 3)
        assert_eq!(t.tokenize("low!  lo"), vec![10, 13, 2, 1]); // "o</w>" is unknown: unk
        assert_eq!(t.tokenize("w?"), vec![7, 1]); // two words: "w</w>", unknown "?</w>"
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
        // Raw-matched eos, normalised-matched bos; an uppercase eos is plain text that splits
        // into the words "<|", "endoftext", "|>" (mostly unknown characters here).
        assert_eq!(
            t.tokenize("low<|endoftext|><|STARTOFTEXT|>"),
            vec![10, 1, 0]
        );
        assert_eq!(t.tokenize("<|ENDOFTEXT|>").len(), 13);
    }

    #[test]
    fn inconsistent_merges_are_rejected() {
        let vocab = HashMap::from([("a".to_string(), 0), ("b".to_string(), 1)]);
        let merges = [split_merge("a b").expect("pair")];
        let err = ClipTokenizer::build(vocab, &merges, Vec::new(), [0, 0, 0], None, 77);
        assert!(err.expect_err("ab is missing").contains("\"ab\""));
        assert_eq!(split_merge("a b c"), None);
    }
}
