//! txt2img's hires fix (`enable_hr`): A1111's fields read into the gate's
//! [`HiresSpec`]. The second pass runs with the first pass's checkpoint,
//! sampler, prompts and extra networks; the fields that would change those
//! are accepted only while they say "the same", else refused by name.

use serde_json::{Map, Value};

use crate::engine_api::{
    HiresSize, Upscaler, DEFAULT_DENOISING_STRENGTH, DEFAULT_SCALE, UPSCALER_NAMES,
};
use crate::jobs::job::HiresParams;
use crate::validation::{HiresFieldNames, HiresSpec, ValidationError};

/// Every txt2img field of the hires fix, taken out before `unsupported.rs`
/// sees the rest.
pub const HIRES_FIELDS: [&str; 15] = [
    "enable_hr",
    "denoising_strength",
    "hr_scale",
    "hr_upscaler",
    "hr_second_pass_steps",
    "hr_resize_x",
    "hr_resize_y",
    "firstphase_width",
    "firstphase_height",
    "hr_checkpoint_name",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
    "hr_additional_modules",
];

/// `hr_upscaler: null` takes A1111's default latent mode.
const DEFAULT_UPSCALER: &str = "Latent";

const NAMES: HiresFieldNames = HiresFieldNames {
    size: "hr_scale",
    steps: "hr_second_pass_steps",
    strength: "denoising_strength",
};

fn invalid(field: &'static str, message: impl Into<String>) -> ValidationError {
    ValidationError::Invalid {
        field,
        message: message.into(),
    }
}

/// The fields the first pass uses, for the "same as the first pass" checks.
pub struct FirstPass<'a> {
    /// Prompt and negative prompt as sent.
    pub prompt: &'a str,
    pub negative_prompt: &'a str,
    /// `sampler_name` (or `sampler_index`) and `scheduler` as sent.
    pub sampler: Option<&'a str>,
    pub scheduler: Option<&'a str>,
}

/// The hires fix `extra` asks for: `None` while `enable_hr` is false or absent
/// (the other fields then change nothing and pass).
pub fn parse(
    extra: &Map<String, Value>,
    first: &FirstPass<'_>,
) -> Result<Option<HiresSpec>, ValidationError> {
    let get = |name: &str| extra.get(name).filter(|v| !v.is_null());
    match get("enable_hr") {
        None | Some(Value::Bool(false)) => return Ok(None),
        Some(Value::Bool(true)) => {}
        Some(other) => {
            return Err(invalid(
                "enable_hr",
                format!("must be a boolean, got {other}"),
            ))
        }
    }
    let number = |name: &'static str| -> Result<Option<f64>, ValidationError> {
        get(name)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| invalid(name, format!("must be a number, got {v}")))
            })
            .transpose()
    };
    let whole = |name: &'static str| -> Result<i64, ValidationError> {
        match number(name)? {
            None => Ok(0),
            Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => Ok(x as i64),
            Some(x) => Err(invalid(name, format!("must be a whole number, got {x}"))),
        }
    };
    for name in ["firstphase_width", "firstphase_height"] {
        if whole(name)? != 0 {
            return Err(invalid(
                name,
                "the pre-1.0 hires fix is not supported; send width/height for the first pass and hr_scale or hr_resize_x/y",
            ));
        }
    }
    check_same(extra, first)?;

    let upscaler = match get("hr_upscaler") {
        None => DEFAULT_UPSCALER.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(invalid(
                "hr_upscaler",
                format!("must be a string, got {other}"),
            ))
        }
    };
    let upscaler = Upscaler::parse(&upscaler).ok_or_else(|| {
        invalid(
            "hr_upscaler",
            format!(
                "{upscaler:?} is not available in sdserve; available: {}",
                UPSCALER_NAMES.join(", ")
            ),
        )
    })?;
    let (resize_x, resize_y) = (whole("hr_resize_x")?, whole("hr_resize_y")?);
    let size = if resize_x == 0 && resize_y == 0 {
        HiresSize::Scale(number("hr_scale")?.unwrap_or(DEFAULT_SCALE))
    } else {
        let side = |name: &'static str, v: i64| {
            usize::try_from(v).map_err(|_| invalid(name, format!("must be 0 or more, got {v}")))
        };
        HiresSize::Resize {
            width: side("hr_resize_x", resize_x)?,
            height: side("hr_resize_y", resize_y)?,
        }
    };
    let names = match size {
        HiresSize::Scale(_) => NAMES,
        HiresSize::Resize { .. } => HiresFieldNames {
            size: if resize_x != 0 {
                "hr_resize_x"
            } else {
                "hr_resize_y"
            },
            ..NAMES
        },
    };
    Ok(Some(HiresSpec {
        upscaler,
        size,
        steps: whole("hr_second_pass_steps")?,
        denoising_strength: number("denoising_strength")?.unwrap_or(DEFAULT_DENOISING_STRENGTH),
        names,
    }))
}

/// The second pass reuses the first pass's checkpoint, sampler, scheduler,
/// prompts and extra networks: each `hr_*` override passes only while it
/// says so (empty, A1111's "Use same ..." choice, or the first pass's value).
fn check_same(extra: &Map<String, Value>, first: &FirstPass<'_>) -> Result<(), ValidationError> {
    let text = |name: &str| extra.get(name).and_then(Value::as_str);
    let present = |name: &str| extra.get(name).is_some_and(|v| !v.is_null());
    let same = |name: &'static str, choice: &str, first_value: Option<&str>| {
        if !present(name) {
            return Ok(());
        }
        match text(name) {
            Some(v) if v.is_empty() || v == choice || Some(v) == first_value => Ok(()),
            _ => Err(invalid(
                name,
                format!(
                    "a different {} for the hires pass is not supported; send \"\" or \"{choice}\", got {}",
                    name.trim_start_matches("hr_").replace('_', " "),
                    extra[name]
                ),
            )),
        }
    };
    same("hr_checkpoint_name", "Use same checkpoint", None)?;
    same("hr_sampler_name", "Use same sampler", first.sampler)?;
    same("hr_scheduler", "Use same scheduler", first.scheduler)?;
    same("hr_prompt", "", Some(first.prompt))?;
    same("hr_negative_prompt", "", Some(first.negative_prompt))?;
    match extra.get("hr_additional_modules") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(a))
            if a.is_empty() || a.iter().all(|m| m.as_str() == Some("Use same choices")) =>
        {
            Ok(())
        }
        Some(other) => Err(invalid(
            "hr_additional_modules",
            format!("other modules for the hires pass are not supported; send [] or [\"Use same choices\"], got {other}"),
        )),
    }
}

/// The `parameters` echo's hires fields for a job that ran one.
pub fn parameters(hires: &HiresParams) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("enable_hr".into(), true.into());
    map.insert("denoising_strength".into(), hires.denoising_strength.into());
    map.insert(
        "hr_scale".into(),
        hires.scale.unwrap_or(DEFAULT_SCALE).into(),
    );
    map.insert("hr_upscaler".into(), hires.upscaler.clone().into());
    map.insert("hr_second_pass_steps".into(), hires.steps.into());
    map.insert("hr_resize_x".into(), hires.resize_width.into());
    map.insert("hr_resize_y".into(), hires.resize_height.into());
    map
}

/// A1111's `extra_generation_params` for a hires job (the infotext's keys).
pub fn extra_generation_params(hires: &HiresParams) -> Map<String, Value> {
    let mut map = Map::new();
    match hires.scale {
        Some(scale) => map.insert("Hires upscale".into(), scale.into()),
        None => map.insert(
            "Hires resize".into(),
            format!("{}x{}", hires.resize_width, hires.resize_height).into(),
        ),
    };
    if hires.steps != 0 {
        map.insert("Hires steps".into(), hires.steps.into());
    }
    map.insert("Hires upscaler".into(), hires.upscaler.clone().into());
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn first() -> FirstPass<'static> {
        FirstPass {
            prompt: "a cat",
            negative_prompt: "",
            sampler: Some("Euler a"),
            scheduler: None,
        }
    }

    fn run(v: Value) -> Result<Option<HiresSpec>, ValidationError> {
        let Value::Object(map) = v else { panic!() };
        parse(&map, &first())
    }

    #[test]
    fn off_unless_enabled() {
        assert!(run(json!({"hr_scale": 4, "hr_upscaler": "ESRGAN_4x"}))
            .unwrap()
            .is_none());
        assert!(run(json!({"enable_hr": false, "hr_prompt": "x"}))
            .unwrap()
            .is_none());
        assert_eq!(
            run(json!({"enable_hr": "yes"})).unwrap_err().field(),
            Some("enable_hr")
        );
    }

    #[test]
    fn defaults_and_sizes() {
        let spec = run(json!({"enable_hr": true})).unwrap().unwrap();
        assert_eq!(spec.size, HiresSize::Scale(2.0));
        assert_eq!(spec.upscaler.name(), "Latent");
        assert_eq!((spec.steps, spec.denoising_strength), (0, 0.75));
        let spec = run(
            json!({"enable_hr": true, "hr_resize_x": 96, "hr_resize_y": 0,
            "hr_upscaler": "Lanczos", "hr_second_pass_steps": 3, "denoising_strength": 0.4}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            spec.size,
            HiresSize::Resize {
                width: 96,
                height: 0
            }
        );
        assert_eq!(spec.names.size, "hr_resize_x");
        assert_eq!((spec.steps, spec.denoising_strength), (3, 0.4));
    }

    #[test]
    fn refusals_name_their_field() {
        for (body, field) in [
            (
                json!({"enable_hr": true, "hr_upscaler": "R-ESRGAN 4x+"}),
                "hr_upscaler",
            ),
            (
                json!({"enable_hr": true, "hr_upscaler": "Latent (bicubic antialiased)"}),
                "hr_upscaler",
            ),
            (
                json!({"enable_hr": true, "hr_prompt": "a dog"}),
                "hr_prompt",
            ),
            (
                json!({"enable_hr": true, "hr_sampler_name": "DDIM"}),
                "hr_sampler_name",
            ),
            (
                json!({"enable_hr": true, "hr_checkpoint_name": "other.safetensors"}),
                "hr_checkpoint_name",
            ),
            (
                json!({"enable_hr": true, "hr_additional_modules": ["vae.pt"]}),
                "hr_additional_modules",
            ),
            (
                json!({"enable_hr": true, "firstphase_width": 256}),
                "firstphase_width",
            ),
            (json!({"enable_hr": true, "hr_scale": "big"}), "hr_scale"),
            (json!({"enable_hr": true, "hr_resize_x": -8}), "hr_resize_x"),
            (
                json!({"enable_hr": true, "hr_second_pass_steps": 2.5}),
                "hr_second_pass_steps",
            ),
        ] {
            let e = run(body.clone()).unwrap_err();
            assert_eq!(e.field(), Some(field), "{body}: {e}");
        }
        // "The same" passes in every spelling webuiapi and the UI send.
        assert!(run(
            json!({"enable_hr": true, "hr_prompt": "", "hr_negative_prompt": "",
            "hr_sampler_name": "Euler a", "hr_checkpoint_name": "Use same checkpoint",
            "hr_scheduler": "Use same scheduler", "hr_additional_modules": ["Use same choices"]})
        )
        .unwrap()
        .is_some());
    }
}
