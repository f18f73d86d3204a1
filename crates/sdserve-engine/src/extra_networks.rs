//! A1111's extra-network prompt syntax (`modules/extra_networks.py`
//! `parse_prompt`, `extensions-builtin/Lora/extra_networks_lora.py`):
//! `<lora:name>`, `<lora:name:0.8>`, `<lora:name:te:unet>` and the named forms
//! `te=`/`unet=` are taken out of the prompt (the tag is replaced by nothing,
//! as A1111's `re.sub`) and become the job's LoRA list. A1111 parses the
//! positive prompt only: tags in the negative prompt stay text, as there.
//! Other networks (`<hypernet:..>`, `<lyco:..>`) and `dyn=` are refused by
//! name: a tag A1111 would act on is never silently dropped.

use std::sync::OnceLock;

use regex::Regex;

use crate::error::{EngineError, Result};
use crate::lora::LoraRef;

/// A1111's `re_extra_net`: `<(\w+):([^>]+)>`.
fn pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"<(\w+):([^>]+)>").expect("a valid literal pattern"))
}

/// The prompt without its extra-network tags, and the LoRAs they name in
/// order (te weight: the first number, 1 by default; unet weight: the
/// second, else the te weight, as `ExtraNetworkLora.activate`).
pub fn split_extra_networks(prompt: &str) -> Result<(String, Vec<LoraRef>)> {
    let mut loras = Vec::new();
    let mut error = None;
    let cleaned = pattern().replace_all(prompt, |caps: &regex::Captures| {
        let kind = &caps[1];
        let args = &caps[2];
        match kind {
            "lora" => match parse_lora(args) {
                Ok(lora) => loras.push(lora),
                Err(e) => {
                    error.get_or_insert(e);
                }
            },
            other => {
                error.get_or_insert(EngineError::InvalidRequest(format!(
                    "extra network <{other}:{args}> is not supported (only <lora:name:weight>)"
                )));
            }
        }
        String::new()
    });
    match error {
        Some(e) => Err(e),
        None => Ok((cleaned.into_owned(), loras)),
    }
}

/// `name[:te[:unet]]` with `te=`/`unet=` named forms (A1111's
/// `ExtraNetworkParams`: an item with one `=` is named, else positional).
fn parse_lora(args: &str) -> Result<LoraRef> {
    let bad = |m: String| EngineError::InvalidRequest(format!("<lora:{args}>: {m}"));
    let mut positional = Vec::new();
    let mut te_named = None;
    let mut unet_named = None;
    for item in args.split(':') {
        match item.split_once('=') {
            Some(("te", v)) => te_named = Some(v),
            Some(("unet", v)) => unet_named = Some(v),
            Some((key, _)) => {
                return Err(bad(format!(
                    "argument `{key}=` is not supported (only te= and unet=)"
                )))
            }
            None => positional.push(item),
        }
    }
    if positional.len() > 3 {
        return Err(bad(
            "a fourth argument (dyn, LyCORIS' dynamic dimension) is not supported".into(),
        ));
    }
    let number = |s: &str| {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad(format!("weight `{s}` is not a finite number")))
    };
    let name = positional.first().copied().unwrap_or_default().to_string();
    let mut te = 1.0;
    if let Some(v) = positional.get(1) {
        te = number(v)?;
    }
    if let Some(v) = te_named {
        te = number(v)?;
    }
    let mut unet = te;
    if let Some(v) = positional.get(2) {
        unet = number(v)?;
    }
    if let Some(v) = unet_named {
        unet = number(v)?;
    }
    Ok(LoraRef {
        name,
        te_weight: te,
        unet_weight: unet,
    })
}

/// The tag that [`split_extra_networks`] reads back as `lora` (A1111's
/// infotext keeps the tags in the prompt).
pub fn lora_tag(lora: &LoraRef) -> String {
    if lora.te_weight == lora.unet_weight {
        format!("<lora:{}:{}>", lora.name, lora.te_weight)
    } else {
        format!(
            "<lora:{}:{}:{}>",
            lora.name, lora.te_weight, lora.unet_weight
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lora(name: &str, te: f64, unet: f64) -> LoraRef {
        LoraRef {
            name: name.into(),
            te_weight: te,
            unet_weight: unet,
        }
    }

    #[test]
    fn tags_are_removed_and_parsed_as_a1111() {
        let (text, loras) =
            split_extra_networks("a cat <lora:style:0.8>, sitting <lora:detail> <lora:x:0.5:0.25>")
                .unwrap();
        assert_eq!(text, "a cat , sitting  ");
        assert_eq!(
            loras,
            vec![
                lora("style", 0.8, 0.8),
                lora("detail", 1.0, 1.0),
                lora("x", 0.5, 0.25)
            ]
        );
        let (_, named) = split_extra_networks("<lora:n:unet=0.3:te=0.6>").unwrap();
        assert_eq!(named, vec![lora("n", 0.6, 0.3)]);
        let (plain, none) = split_extra_networks("no tags <here> or <a b:c>").unwrap();
        assert_eq!(
            (plain.as_str(), none.len()),
            ("no tags <here> or <a b:c>", 0)
        );
    }

    #[test]
    fn other_networks_and_bad_weights_are_refused_by_name() {
        for (prompt, says) in [
            ("<hypernet:h:1>", "hypernet"),
            ("<lora:n:abc>", "abc"),
            ("<lora:n:1:1:8>", "dyn"),
            ("<lora:n:dyn=8>", "dyn="),
            ("<lora:n:inf>", "inf"),
        ] {
            let err = split_extra_networks(prompt).unwrap_err().to_string();
            assert!(err.contains(says), "{prompt}: {err}");
        }
    }

    #[test]
    fn tags_read_back() {
        for l in [lora("a", 0.5, 0.5), lora("b", 1.0, 0.25)] {
            let (_, parsed) = split_extra_networks(&lora_tag(&l)).unwrap();
            assert_eq!(parsed, vec![l]);
        }
    }
}
