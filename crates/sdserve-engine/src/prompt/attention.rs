//! A1111's prompt-emphasis syntax, as `prompt_parser.parse_prompt_attention`
//! defines it: `(x)` multiplies x's weight by 1.1, `[x]` divides it by 1.1,
//! `(x:1.3)` sets the factor, brackets nest (factors multiply), `\(` `\)` `\[`
//! `\]` `\\` are literals, unbalanced openers apply to the end of the prompt,
//! and `BREAK` (a word of its own) starts a new 75-token chunk.
//!
//! The weights are computed in f64 as Python does, so `(((house:1.3)))` is
//! 1.5730000000000004 exactly as in A1111's own doctest.

use std::sync::OnceLock;

use regex::Regex;

use crate::error::EngineError;

/// A `(text:w)` whose weight is no number (`(x:1.2.3)`); A1111 refuses it too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("emphasis weight {0:?} is not a number (write it as (text:1.2))")]
pub struct BadWeight(pub String);

impl From<BadWeight> for EngineError {
    fn from(e: BadWeight) -> Self {
        EngineError::InvalidRequest(format!("prompt: {e}"))
    }
}

const ROUND_FACTOR: f64 = 1.1;
const SQUARE_FACTOR: f64 = 1.0 / 1.1;

/// A1111's tokens of the syntax, in its order of preference (leftmost-first
/// alternation, as Python's `re`): escapes, openers, a `:weight)` closer,
/// closers, plain text, a lone colon.
const ATTENTION_PATTERN: &str =
    r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.0-9]+)\s*\)|\)|\]|[^\\()\[\]:]+|:";
const BREAK_PATTERN: &str = r"\s*\bBREAK\b\s*";

/// The weight A1111 gives its `BREAK` marker; a marker inside brackets gets
/// multiplied like any text and is then no longer a break (A1111 encodes the
/// word itself), which [`WeightedText::is_break`] reproduces.
const BREAK_WEIGHT: f64 = -1.0;

/// One stretch of prompt text and its emphasis weight.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedText {
    pub text: String,
    pub weight: f64,
}

impl WeightedText {
    fn new(text: &str, weight: f64) -> Self {
        Self {
            text: text.to_string(),
            weight,
        }
    }

    /// A `BREAK` marker: the chunk ends here.
    pub fn is_break(&self) -> bool {
        self.text == "BREAK" && self.weight == BREAK_WEIGHT
    }
}

fn patterns() -> &'static (Regex, Regex) {
    static PATTERNS: OnceLock<(Regex, Regex)> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        // Both patterns are constants covered by the tests below.
        let attention = Regex::new(ATTENTION_PATTERN).expect("valid attention pattern");
        let brk = Regex::new(BREAK_PATTERN).expect("valid BREAK pattern");
        (attention, brk)
    })
}

/// Splits `prompt` into weighted stretches, adjacent equal weights merged.
/// Fails only on a `(x:w)` weight that is no number (`(x:1.2.3)`), which
/// A1111 also refuses.
pub fn parse_attention(prompt: &str) -> Result<Vec<WeightedText>, BadWeight> {
    let (attention, brk) = patterns();
    let mut out: Vec<WeightedText> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |out: &mut Vec<WeightedText>, from: usize, factor: f64| {
        for piece in &mut out[from..] {
            piece.weight *= factor;
        }
    };
    for caps in attention.captures_iter(prompt) {
        let token = caps.get(0).map_or("", |m| m.as_str());
        if let Some(literal) = token.strip_prefix('\\') {
            out.push(WeightedText::new(literal, 1.0));
        } else if token == "(" {
            round.push(out.len());
        } else if token == "[" {
            square.push(out.len());
        } else if let (Some(weight), Some(&start)) = (caps.get(1), round.last()) {
            let factor = parse_weight(weight.as_str())?;
            round.pop();
            multiply(&mut out, start, factor);
        } else if let (")", Some(start)) = (token, round.last().copied()) {
            round.pop();
            multiply(&mut out, start, ROUND_FACTOR);
        } else if let ("]", Some(start)) = (token, square.last().copied()) {
            square.pop();
            multiply(&mut out, start, SQUARE_FACTOR);
        } else {
            for (i, part) in brk.split(token).enumerate() {
                if i > 0 {
                    out.push(WeightedText::new("BREAK", BREAK_WEIGHT));
                }
                out.push(WeightedText::new(part, 1.0));
            }
        }
    }
    // Unclosed brackets emphasise to the end, innermost last as A1111 loops.
    for start in round {
        multiply(&mut out, start, ROUND_FACTOR);
    }
    for start in square {
        multiply(&mut out, start, SQUARE_FACTOR);
    }
    if out.is_empty() {
        out.push(WeightedText::new("", 1.0));
    }
    let mut merged: Vec<WeightedText> = Vec::with_capacity(out.len());
    for piece in out {
        match merged.last_mut() {
            Some(last) if last.weight == piece.weight => last.text.push_str(&piece.text),
            _ => merged.push(piece),
        }
    }
    Ok(merged)
}

/// Python's `float()` on what the pattern admits (`[+-]?[.0-9]+`).
fn parse_weight(text: &str) -> Result<f64, BadWeight> {
    text.parse::<f64>()
        .ok()
        .filter(|w| w.is_finite())
        .ok_or_else(|| BadWeight(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(prompt: &str) -> Vec<(String, f64)> {
        parse_attention(prompt)
            .unwrap()
            .into_iter()
            .map(|p| (p.text, p.weight))
            .collect()
    }

    fn pairs(expected: &[(&str, f64)]) -> Vec<(String, f64)> {
        expected.iter().map(|(t, w)| (t.to_string(), *w)).collect()
    }

    /// A1111's own doctest of `parse_prompt_attention`, value for value.
    #[test]
    fn matches_a1111_doctest() {
        assert_eq!(parse("normal text"), pairs(&[("normal text", 1.0)]));
        assert_eq!(
            parse("an (important) word"),
            pairs(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)])
        );
        assert_eq!(parse("(unbalanced"), pairs(&[("unbalanced", 1.1)]));
        assert_eq!(parse(r"\(literal\]"), pairs(&[("(literal]", 1.0)]));
        assert_eq!(
            parse("(unnecessary)(parens)"),
            pairs(&[("unnecessaryparens", 1.1)])
        );
        assert_eq!(
            parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            pairs(&[
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ])
        );
    }

    #[test]
    fn brackets_breaks_and_colons() {
        assert_eq!(parse("[faint]"), pairs(&[("faint", 1.0 / 1.1)]));
        assert_eq!(parse("[[x]]"), pairs(&[("x", 1.0 / 1.1 / 1.1)]));
        assert_eq!(parse("(x: 0.5 )"), pairs(&[("x", 0.5)]));
        // A colon outside `(x:w)` is text.
        assert_eq!(parse("ratio 16:9"), pairs(&[("ratio 16:9", 1.0)]));
        // Stray closers are text too.
        assert_eq!(parse("a) b]"), pairs(&[("a) b]", 1.0)]));
        assert_eq!(parse(""), pairs(&[("", 1.0)]));
        let parts = parse_attention("a cat BREAK a dog").unwrap();
        assert_eq!(parts.len(), 3);
        assert!(parts[1].is_break());
        assert_eq!(
            (parts[0].text.as_str(), parts[2].text.as_str()),
            ("a cat", "a dog")
        );
        // BREAK must be a word of its own; inside brackets it is text.
        assert!(!parse_attention("BREAKFAST").unwrap()[0].is_break());
        let bracketed = parse_attention("(a BREAK b)").unwrap();
        assert!(bracketed.iter().all(|p| !p.is_break()));
        assert!(bracketed.iter().any(|p| p.text == "BREAK"));
    }

    #[test]
    fn bad_weight_is_refused() {
        let err = parse_attention("(x:1.2.3)").unwrap_err();
        assert!(err.to_string().contains("1.2.3"), "{err}");
        // Without an opener the `:w)` is plain text, as in A1111.
        assert_eq!(parse("x:1.5)"), pairs(&[("x:1.5)", 1.0)]));
    }
}
