//! Prompt text to the token chunks the text encoders read: A1111's emphasis
//! syntax ([`attention`]) and its 75-token chunking ([`chunks`]).

pub mod attention;
pub mod chunks;

use std::fmt;
use std::str::FromStr;

use crate::tokenizer::ClipTokenizer;
pub use attention::{parse_attention, BadWeight, WeightedText};
pub use chunks::{chunk_prompt, ChunkIds, EmbeddingName, PromptChunk};

/// How prompt text is read.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PromptSyntax {
    /// Text as written, as diffusers reads it (and A1111 with emphasis
    /// "None"): equal to diffusers up to 75 tokens; longer prompts are
    /// encoded in 75-token chunks as A1111 does, never truncated.
    #[default]
    Plain,
    /// A1111's emphasis syntax (`(x:1.3)`, `[x]`, `BREAK`, `\(`) with its
    /// "Original" emphasis: weights scale the hidden states, whose mean is
    /// then restored.
    A1111,
}

impl PromptSyntax {
    /// The wire name (`plain`, `a1111`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::A1111 => "a1111",
        }
    }
}

impl fmt::Display for PromptSyntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no prompt syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown prompt syntax {0:?}; known: plain, a1111")]
pub struct UnknownSyntax(pub String);

impl FromStr for PromptSyntax {
    type Err = UnknownSyntax;

    fn from_str(name: &str) -> std::result::Result<Self, Self::Err> {
        match name.trim().to_ascii_lowercase().as_str() {
            "plain" => Ok(Self::Plain),
            "a1111" => Ok(Self::A1111),
            _ => Err(UnknownSyntax(name.to_string())),
        }
    }
}

/// The weighted stretches of `text` under `syntax` (fails only on an A1111
/// weight that is no number).
pub fn parse(text: &str, syntax: PromptSyntax) -> Result<Vec<WeightedText>, BadWeight> {
    match syntax {
        PromptSyntax::Plain => Ok(vec![WeightedText {
            text: text.to_string(),
            weight: 1.0,
        }]),
        PromptSyntax::A1111 => parse_attention(text),
    }
}

/// `text` as the chunks `tokenizer`'s encoder reads, with the textual-inversion
/// embeddings `names` put where the prompt names them.
pub fn tokenize(
    text: &str,
    syntax: PromptSyntax,
    tokenizer: &ClipTokenizer,
    names: &[EmbeddingName],
) -> Result<Vec<PromptChunk>, BadWeight> {
    let pieces = parse(text, syntax)?;
    Ok(chunk_prompt(
        &pieces,
        |t| tokenizer.content_ids(t),
        tokenizer.chunk_ids(),
        names,
    ))
}
