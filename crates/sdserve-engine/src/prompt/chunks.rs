//! Prompts of any length as A1111's CLIP hook (`sd_hijack_clip`) cuts them:
//! each weighted stretch tokenized on its own, the tokens packed into chunks
//! of 75 (CLIP's context less bos and eos), a chunk ending early at `BREAK`
//! or, when it fills up, at a comma among its last 20 tokens (the text after
//! the comma moves on to the next chunk). Each chunk is encoded on its own and
//! the hidden states are concatenated, so nothing is ever truncated.

use super::attention::WeightedText;

/// How far back a full chunk looks for a comma to end at (A1111's
/// `comma_padding_backtrack` option, default 20).
const COMMA_BACKTRACK: usize = 20;

/// The ids a chunk is framed with, from the tokenizer.
#[derive(Debug, Clone, Copy)]
pub struct ChunkIds {
    pub bos: u32,
    pub eos: u32,
    /// What fills a chunk after its eos (eos itself for SD 1.x's tokenizer, `!` for SD 2.x's).
    pub pad: u32,
    /// The `,</w>` token, where the vocabulary has one.
    pub comma: Option<u32>,
    /// Content tokens per chunk: the context length less bos and eos (75).
    pub length: usize,
}

/// One encoder input: `length + 2` ids and the emphasis weight of each.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptChunk {
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
    /// Textual-inversion embeddings placed in this chunk: (index in `ids`,
    /// index of the embedding in the list given to [`chunk_prompt`]). Their
    /// vectors replace the token embeddings there; `ids` holds 0s.
    pub fixes: Vec<(usize, usize)>,
}

/// A textual-inversion embedding as a prompt names it: its name's token ids
/// and the number of vectors it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingName {
    pub ids: Vec<u32>,
    pub vectors: usize,
}

impl PromptChunk {
    /// True when every weight is 1 (encoding needs no emphasis step).
    pub fn is_plain(&self) -> bool {
        self.weights.iter().all(|&w| w == 1.0)
    }
}

/// The chunk under construction: content tokens, their weights, and the
/// embeddings placed (position among `tokens`, embedding index).
#[derive(Default)]
struct Open {
    tokens: Vec<u32>,
    weights: Vec<f32>,
    fixes: Vec<(usize, usize)>,
}

struct Chunker {
    ids: ChunkIds,
    done: Vec<PromptChunk>,
    open: Open,
    /// Position in `open` just before the last comma, if any since the last cut.
    last_comma: Option<usize>,
}

impl Chunker {
    /// Closes the open chunk: bos, its tokens, eos, then padding to the full length.
    fn close(&mut self) {
        let open = std::mem::take(&mut self.open);
        let length = self.ids.length + 2;
        let mut ids = Vec::with_capacity(length);
        ids.push(self.ids.bos);
        ids.extend(&open.tokens);
        ids.push(self.ids.eos);
        ids.resize(length, self.ids.pad);
        let mut weights = Vec::with_capacity(length);
        weights.push(1.0);
        weights.extend(&open.weights);
        weights.resize(length, 1.0);
        // Positions in `ids` count the bos.
        let fixes = open.fixes.iter().map(|&(at, e)| (at + 1, e)).collect();
        self.done.push(PromptChunk {
            ids,
            weights,
            fixes,
        });
        self.last_comma = None;
    }

    /// What A1111 does before placing the token at hand: note a comma, or
    /// (full, with a comma near) move the text after it on; close a full chunk.
    fn make_room(&mut self, token: u32) {
        let length = self.ids.length;
        if Some(token) == self.ids.comma {
            self.last_comma = Some(self.open.tokens.len());
        } else if let Some(comma) = self
            .last_comma
            .filter(|&at| self.open.tokens.len() == length && length - at <= COMMA_BACKTRACK)
        {
            // Full, and a comma is near: what follows it starts the next chunk.
            let cut = comma + 1;
            let tokens = self.open.tokens.split_off(cut);
            let weights = self.open.weights.split_off(cut);
            // Embeddings after the comma move with their tokens (A1111 leaves
            // their fixes behind, which puts the vectors on padding).
            let (kept, moved): (Vec<_>, Vec<_>) =
                self.open.fixes.iter().partition(|&&(at, _)| at < cut);
            self.open.fixes = kept;
            self.close();
            let fixes = moved.into_iter().map(|(at, e)| (at - cut, e)).collect();
            self.open = Open {
                tokens,
                weights,
                fixes,
            };
        }
        if self.open.tokens.len() == length {
            self.close();
        }
    }

    fn push(&mut self, token: u32, weight: f32) {
        self.make_room(token);
        self.open.tokens.push(token);
        self.open.weights.push(weight);
    }

    /// Places embedding `index` of `vectors` vectors, in a fresh chunk when
    /// the open one cannot hold them all.
    fn push_embedding(&mut self, first_token: u32, index: usize, vectors: usize, weight: f32) {
        self.make_room(first_token);
        if self.open.tokens.len() + vectors > self.ids.length {
            self.close();
        }
        self.open.fixes.push((self.open.tokens.len(), index));
        self.open.tokens.extend(std::iter::repeat_n(0, vectors));
        self.open
            .weights
            .extend(std::iter::repeat_n(weight, vectors));
    }
}

/// The longest embedding whose name's ids start at `tokens[at..]`.
/// (Names of more vectors than a chunk holds never match.)
fn embedding_at(tokens: &[u32], at: usize, names: &[EmbeddingName], room: usize) -> Option<usize> {
    names
        .iter()
        .enumerate()
        .filter(|(_, n)| n.vectors <= room && !n.ids.is_empty())
        .filter(|(_, n)| {
            tokens
                .get(at..)
                .is_some_and(|rest| rest.starts_with(&n.ids))
        })
        .max_by_key(|(i, n)| (n.ids.len(), std::cmp::Reverse(*i)))
        .map(|(i, _)| i)
}

/// Cuts weighted text into chunks; `tokenize` gives a stretch's content ids
/// (no bos, eos or padding). Where the ids of an embedding's name appear
/// (longest name first), its vectors take their place. Always at least one chunk.
pub fn chunk_prompt(
    pieces: &[WeightedText],
    tokenize: impl Fn(&str) -> Vec<u32>,
    ids: ChunkIds,
    names: &[EmbeddingName],
) -> Vec<PromptChunk> {
    let mut chunker = Chunker {
        ids,
        done: Vec::new(),
        open: Open::default(),
        last_comma: None,
    };
    for piece in pieces {
        if piece.is_break() {
            chunker.close();
            continue;
        }
        // torch.asarray of Python floats: the weights become f32.
        let weight = piece.weight as f32;
        let tokens = tokenize(&piece.text);
        let mut at = 0;
        while let Some(&token) = tokens.get(at) {
            match embedding_at(&tokens, at, names, ids.length) {
                Some(index) => {
                    let name = &names[index];
                    chunker.push_embedding(token, index, name.vectors, weight);
                    at += name.ids.len();
                }
                None => {
                    chunker.push(token, weight);
                    at += 1;
                }
            }
        }
    }
    if !chunker.open.tokens.is_empty() || chunker.done.is_empty() {
        chunker.close();
    }
    chunker.done
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: ChunkIds = ChunkIds {
        bos: 100,
        eos: 101,
        pad: 0,
        comma: Some(7),
        length: 5,
    };

    /// Each character is one token: its digit value (`,` is the comma id 7).
    fn tokenize(text: &str) -> Vec<u32> {
        text.chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| {
                if c == ',' {
                    7
                } else {
                    c.to_digit(10).unwrap() + 10
                }
            })
            .collect()
    }

    fn plain(text: &str) -> Vec<WeightedText> {
        vec![WeightedText {
            text: text.into(),
            weight: 1.0,
        }]
    }

    fn ids(chunks: &[PromptChunk]) -> Vec<Vec<u32>> {
        chunks.iter().map(|c| c.ids.clone()).collect()
    }

    #[test]
    fn short_prompt_is_one_padded_chunk() {
        let chunks = chunk_prompt(&plain("12"), tokenize, IDS, &[]);
        assert_eq!(ids(&chunks), vec![vec![100, 11, 12, 101, 0, 0, 0]]);
        assert!(chunks[0].is_plain());
        // Empty prompt: bos, eos, padding.
        let chunks = chunk_prompt(&plain(""), tokenize, IDS, &[]);
        assert_eq!(ids(&chunks), vec![vec![100, 101, 0, 0, 0, 0, 0]]);
        // Exactly full: still one chunk.
        let chunks = chunk_prompt(&plain("12345"), tokenize, IDS, &[]);
        assert_eq!(ids(&chunks), vec![vec![100, 11, 12, 13, 14, 15, 101]]);
    }

    #[test]
    fn long_prompt_continues_in_the_next_chunk() {
        let chunks = chunk_prompt(&plain("1234567"), tokenize, IDS, &[]);
        assert_eq!(
            ids(&chunks),
            vec![
                vec![100, 11, 12, 13, 14, 15, 101],
                vec![100, 16, 17, 101, 0, 0, 0]
            ]
        );
    }

    #[test]
    fn full_chunk_ends_at_a_recent_comma() {
        // "12,34" fills the chunk; "5" moves "34" on with it.
        let chunks = chunk_prompt(&plain("12,345"), tokenize, IDS, &[]);
        assert_eq!(
            ids(&chunks),
            vec![
                vec![100, 11, 12, 7, 101, 0, 0],
                vec![100, 13, 14, 15, 101, 0, 0]
            ]
        );
    }

    #[test]
    fn embeddings_take_their_vectors_place() {
        // "9" is an embedding of 3 vectors; "89" a longer name of 1 vector.
        let names = [
            EmbeddingName {
                ids: vec![19],
                vectors: 3,
            },
            EmbeddingName {
                ids: vec![18, 19],
                vectors: 1,
            },
        ];
        let chunks = chunk_prompt(&plain("19"), tokenize, IDS, &names);
        assert_eq!(ids(&chunks), vec![vec![100, 11, 0, 0, 0, 101, 0]]);
        assert_eq!(chunks[0].fixes, vec![(2, 0)]);
        let chunks = chunk_prompt(&plain("189"), tokenize, IDS, &names);
        assert_eq!(ids(&chunks), vec![vec![100, 11, 0, 101, 0, 0, 0]]);
        assert_eq!(chunks[0].fixes, vec![(2, 1)]);
        // Three vectors do not fit after four tokens: they start the next chunk.
        let chunks = chunk_prompt(&plain("12349"), tokenize, IDS, &names);
        assert_eq!(
            ids(&chunks),
            vec![
                vec![100, 11, 12, 13, 14, 101, 0],
                vec![100, 0, 0, 0, 101, 0, 0]
            ]
        );
        assert_eq!(
            (chunks[0].fixes.len(), chunks[1].fixes.clone()),
            (0, vec![(1, 0)])
        );
    }

    #[test]
    fn break_and_weights() {
        let pieces = vec![
            WeightedText {
                text: "1".into(),
                weight: 1.1,
            },
            WeightedText {
                text: "BREAK".into(),
                weight: -1.0,
            },
            WeightedText {
                text: "2".into(),
                weight: 1.0,
            },
        ];
        let chunks = chunk_prompt(&pieces, tokenize, IDS, &[]);
        assert_eq!(
            ids(&chunks),
            vec![
                vec![100, 11, 101, 0, 0, 0, 0],
                vec![100, 12, 101, 0, 0, 0, 0]
            ]
        );
        assert_eq!(chunks[0].weights, vec![1.0, 1.1, 1.0, 1.0, 1.0, 1.0, 1.0]);
        assert!(!chunks[0].is_plain() && chunks[1].is_plain());
    }
}
