//! Sampler and schedule-type names as the gate reads them: the exact
//! vocabulary (which the OpenAPI document lists as `enum`s), how a sampler
//! name and a schedule type resolve to the engine's pair, and the rules
//! across those fields as JSON Schema for the document.

use super::{FieldNames, ValidationError, DEFAULT_SAMPLER};
use crate::engine_api::{SamplerId, SamplerName, ScheduleType};

/// Every sampler name the gate accepts, exactly as spelled here: each A1111
/// label and id, the old k-diffusion aliases, and the legacy names that carry
/// a schedule (`DPM++ 2M Karras`, `dpmpp_2m_karras`). The OpenAPI document
/// lists these as the sampler fields' `enum`, so the two cannot disagree.
pub fn sampler_names() -> Vec<String> {
    let mut names = Vec::new();
    for s in SamplerId::ALL {
        names.push(s.label().to_string());
        names.push(s.id().to_string());
    }
    for alias in [
        "euler_a",
        "k_euler_a",
        "k_euler_ancestral",
        "k_euler",
        "k_lms",
        "k_heun",
    ] {
        names.push(alias.to_string());
    }
    for s in SamplerId::ALL {
        for t in [ScheduleType::Karras, ScheduleType::Exponential] {
            if s.schedule_types().contains(&t) {
                names.push(format!("{} {}", s.label(), t.label()));
                names.push(format!("{}_{}", s.id(), t.id()));
            }
        }
    }
    names
}

/// Every schedule type name the gate accepts: each A1111 label and id.
pub fn schedule_type_names() -> Vec<&'static str> {
    ScheduleType::ALL
        .iter()
        .flat_map(|s| [s.label(), s.id()])
        .collect()
}

/// Parses a sampler name (one of [`sampler_names`], case and spaces exact) for
/// the given field.
pub fn parse_sampler(field: &'static str, name: &str) -> Result<SamplerName, ValidationError> {
    let unknown = || ValidationError::UnknownSampler {
        field,
        message: format!(
            "unknown sampler {name:?}; known samplers: {}",
            sampler_names().join(", ")
        ),
    };
    if !sampler_names().iter().any(|n| n == name) {
        return Err(unknown());
    }
    name.parse::<SamplerName>().map_err(|_| unknown())
}

/// Parses a schedule type name (one of [`schedule_type_names`], exact).
pub fn parse_schedule_type(
    field: &'static str,
    name: &str,
) -> Result<ScheduleType, ValidationError> {
    schedule_type_names()
        .contains(&name)
        .then(|| name.parse::<ScheduleType>().ok())
        .flatten()
        .ok_or_else(|| ValidationError::Invalid {
            field,
            message: format!(
                "unknown schedule type {name:?}; known: {}",
                schedule_type_names().join(", ")
            ),
        })
}

/// The sampler and schedule a request runs: an explicit schedule type other
/// than `Automatic` wins (as A1111 does), else the one a legacy sampler name
/// carries, else `Automatic`; refused by name when the sampler cannot use it.
pub fn resolve_sampling(
    names: &FieldNames,
    sampler: Option<&str>,
    schedule_type: Option<&str>,
) -> Result<(SamplerId, ScheduleType), ValidationError> {
    let sampler = match sampler {
        None => SamplerName {
            sampler: DEFAULT_SAMPLER,
            schedule: None,
        },
        Some(name) => parse_sampler(names.sampler, name)?,
    };
    let explicit = schedule_type
        .map(|t| parse_schedule_type(names.schedule_type, t))
        .transpose()?;
    sampler
        .with_schedule(explicit)
        .map_err(|e| ValidationError::Invalid {
            field: names.schedule_type,
            message: e.to_string(),
        })
}

/// How a request schema names the sampling fields, for [`sampling_schema_rules`].
pub struct SamplingFields<'a> {
    /// The sampler field.
    pub sampler: &'a str,
    /// A deprecated alias read when `sampler` is absent or null (A1111's `sampler_index`).
    pub alias: Option<&'a str>,
    /// The schedule type field.
    pub schedule_type: &'a str,
    /// The steps field.
    pub steps: &'a str,
}

/// The gate's rules across the sampling fields as JSON Schema `if`/`then`
/// pairs (for the OpenAPI document's `allOf`): a schedule type needs a
/// sampler that runs with it, and LCM at most `lcm_max_steps` steps. The
/// default sampler runs with every schedule type.
pub fn sampling_schema_rules(f: &SamplingFields, lcm_max_steps: usize) -> Vec<serde_json::Value> {
    use serde_json::json;
    let names = sampler_names();
    let matching = |keep: &dyn Fn(SamplerName) -> bool| -> Vec<String> {
        names
            .iter()
            .filter(|n| parse_sampler("", n).is_ok_and(&keep))
            .cloned()
            .collect()
    };
    // `then` for "the sampler (or, failing it, the alias) is one of `names`".
    let sampler_in = |names: &[String]| {
        let set = json!({ "enum": names });
        let mut any = vec![json!({ "properties": { f.sampler: set }, "required": [f.sampler] })];
        if let Some(alias) = f.alias {
            any.push(json!({
                "properties": { f.sampler: { "type": "null" }, alias: set },
                "required": [alias],
            }));
            any.push(json!({
                "not": { "required": [f.sampler] },
                "properties": { alias: set },
                "required": [alias],
            }));
        }
        json!({ "anyOf": any })
    };
    let mut rules = Vec::new();
    for schedule in ScheduleType::ALL {
        let refused = matching(&|s| !s.sampler.schedule_types().contains(&schedule));
        if refused.is_empty() {
            continue;
        }
        rules.push(json!({
            "if": {
                "properties": { f.schedule_type: { "enum": [schedule.label(), schedule.id()] } },
                "required": [f.schedule_type],
            },
            "then": { "not": sampler_in(&refused) },
        }));
    }
    let lcm = matching(&|s| s.sampler == SamplerId::Lcm);
    rules.push(json!({
        "if": sampler_in(&lcm),
        "then": { "properties": { f.steps: { "maximum": lcm_max_steps } } },
    }));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_names_are_exact() {
        for name in sampler_names() {
            assert!(parse_sampler("sampler", &name).is_ok(), "{name}");
        }
        assert_eq!(
            parse_sampler("sampler", "k_euler_a").unwrap().sampler,
            SamplerId::EulerAncestral
        );
        assert_eq!(
            parse_sampler("sampler", "LMS Karras").unwrap(),
            SamplerName {
                sampler: SamplerId::Lms,
                schedule: Some(ScheduleType::Karras)
            }
        );
        for near in ["euler a", "EULER", " Euler a", "Euler a ", "dpm++ 2m", ""] {
            let err = parse_sampler("sampler_name", near).unwrap_err();
            assert_eq!(err.field(), Some("sampler_name"));
            assert!(
                err.to_string().contains("Euler a, euler_ancestral"),
                "{err}"
            );
        }
    }
}
