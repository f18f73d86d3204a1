//! A1111 txt2img fields sdserve does not implement. A client may send them
//! (webuiapi sends most of them on every call), so each is accepted while it
//! holds A1111's "off" value, and refused by name (422) as soon as it would
//! change the image: never silently ignored. Fields that do not touch the
//! image (saving flags, hires-fix settings while `enable_hr` is off) pass.
//! txt2img takes its hires-fix fields out first (`hires.rs` implements them);
//! img2img has no hires fix, so there `enable_hr` must stay false.

use serde_json::{Map, Value};

use crate::engine_api::SamplerId;
use crate::validation::ValidationError;

/// The values of a field under which it does nothing.
#[derive(Debug, Clone, Copy)]
enum Off {
    /// `false` (or null).
    False,
    /// `0` (or null).
    Zero,
    /// `1` (or null).
    One,
    /// `0`, a negative number or null (A1111's "no resize").
    NotPositive,
    /// An empty list or object (or null).
    Empty,
    /// null, `""` or `"None"`.
    Unset,
    /// As `Unset`, or `"Automatic"` (the checkpoint's own VAE, which is what runs).
    OwnVae,
    /// Anything: the field does not change the image here.
    Any,
}

impl Off {
    fn holds(self, v: &Value) -> bool {
        if v.is_null() {
            return true;
        }
        match self {
            Off::False => v == &Value::Bool(false),
            Off::Zero => v.as_f64() == Some(0.0),
            Off::One => v.as_f64() == Some(1.0),
            Off::NotPositive => v.as_f64().is_some_and(|x| x <= 0.0),
            Off::Empty => match v {
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                _ => false,
            },
            Off::Unset => matches!(v.as_str(), Some("" | "None")),
            Off::OwnVae => matches!(v.as_str(), Some("" | "None" | "Automatic")),
            Off::Any => true,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Off::False => "false",
            Off::Zero => "0",
            Off::One => "1",
            Off::NotPositive => "0 or -1",
            Off::Empty => "empty",
            Off::Unset => "null or \"None\"",
            Off::OwnVae => "\"Automatic\" or \"None\"",
            Off::Any => "anything",
        }
    }
}

/// A1111's txt2img fields that sdserve has no implementation of, and the value
/// each must keep. The hires-fix settings only matter with `enable_hr`.
const TXT2IMG: &[(&str, Off)] = &[
    ("styles", Off::Empty),
    ("subseed", Off::Any),
    ("subseed_strength", Off::Zero),
    ("seed_resize_from_h", Off::NotPositive),
    ("seed_resize_from_w", Off::NotPositive),
    ("restore_faces", Off::False),
    ("tiling", Off::False),
    ("do_not_save_samples", Off::Any),
    ("do_not_save_grid", Off::Any),
    ("denoising_strength", Off::Any),
    ("s_min_uncond", Off::Zero),
    ("s_churn", Off::Zero),
    // A1111 reads 0 as "no limit".
    ("s_tmax", Off::Zero),
    ("s_tmin", Off::Zero),
    ("s_noise", Off::One),
    ("refiner_checkpoint", Off::Unset),
    ("refiner_switch_at", Off::Any),
    ("disable_extra_networks", Off::Any),
    ("firstpass_image", Off::Unset),
    ("comments", Off::Any),
    ("enable_hr", Off::False),
    ("firstphase_width", Off::Any),
    ("firstphase_height", Off::Any),
    ("hr_scale", Off::Any),
    ("hr_upscaler", Off::Any),
    ("hr_second_pass_steps", Off::Any),
    ("hr_resize_x", Off::Any),
    ("hr_resize_y", Off::Any),
    ("hr_checkpoint_name", Off::Any),
    ("hr_sampler_name", Off::Any),
    ("hr_scheduler", Off::Any),
    ("hr_prompt", Off::Any),
    ("hr_negative_prompt", Off::Any),
    ("hr_additional_modules", Off::Any),
    ("script_name", Off::Unset),
    ("script_args", Off::Any),
    ("alwayson_scripts", Off::Empty),
    ("infotext", Off::Unset),
];

/// A1111 settings `override_settings` may carry besides `sd_model_checkpoint`.
const SETTINGS: &[(&str, Off)] = &[("eta_noise_seed_delta", Off::Zero), ("sd_vae", Off::OwnVae)];

/// What `override_settings` accepts besides `sd_model_checkpoint`, as JSON
/// Schema properties: each setting of [`SETTINGS`] with the values that pass
/// (null among them). Any other key is refused, so the OpenAPI document closes
/// the object with these.
pub fn settings_schema() -> Map<String, Value> {
    SETTINGS
        .iter()
        .map(|(name, off)| {
            let values = match off {
                Off::One => serde_json::json!([1, null]),
                Off::Zero => serde_json::json!([0, null]),
                Off::OwnVae => serde_json::json!(["", "None", "Automatic", null]),
                _ => serde_json::json!([null]),
            };
            ((*name).to_string(), serde_json::json!({ "enum": values }))
        })
        .collect()
}

/// Refuses an unimplemented txt2img field, or `override_settings` key, that
/// is set to something other than its "off" value. `eta` is checked against
/// the sampler: A1111 uses it only for DDIM (default 0) and the ancestral
/// and SDE samplers (default 1); sdserve runs each at its default.
pub fn check(
    extra: &Map<String, Value>,
    settings: &Map<String, Value>,
    sampler: SamplerId,
) -> Result<(), ValidationError> {
    for (name, off) in TXT2IMG {
        if let Some(v) = extra.get(*name) {
            if !off.holds(v) {
                return Err(ValidationError::Invalid {
                    field: name,
                    message: format!(
                        "is not supported by sdserve (it must be {} or absent), got {v}",
                        off.describe()
                    ),
                });
            }
        }
    }
    if let Some(eta) = extra.get("eta").filter(|v| !v.is_null()) {
        let default = match sampler {
            SamplerId::Ddim => Some(0.0),
            SamplerId::EulerAncestral
            | SamplerId::Dpm2Ancestral
            | SamplerId::DpmPp2mSde
            | SamplerId::DpmPp3mSde => Some(1.0),
            _ => None,
        };
        if let Some(default) = default {
            if eta.as_f64() != Some(default) {
                return Err(ValidationError::Invalid {
                    field: "eta",
                    message: format!(
                        "only the sampler's own eta ({default}) is supported, got {eta}"
                    ),
                });
            }
        }
    }
    for (key, v) in settings {
        let known = SETTINGS.iter().find(|(name, _)| name == key);
        let accepted = known.is_some_and(|(_, off)| off.holds(v));
        if !accepted {
            let what = match known {
                Some((_, off)) => format!("must be {} (or absent)", off.describe()),
                None => "is not supported by sdserve".to_string(),
            };
            return Err(ValidationError::Invalid {
                field: "override_settings",
                message: format!(
                    "{key} {what}, got {v}; supported: sd_model_checkpoint, CLIP_stop_at_last_layers, emphasis (\"Original\" or \"None\"), eta_noise_seed_delta = 0, sd_vae = \"Automatic\""
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn off_values_pass_and_anything_else_is_refused_by_name() {
        // What webuiapi sends on every call.
        let webuiapi = map(json!({
            "enable_hr": false, "denoising_strength": 0.7, "firstphase_width": 0,
            "hr_scale": 2, "hr_upscaler": "Latent", "styles": [], "subseed": -1,
            "subseed_strength": 0.0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
            "restore_faces": false, "tiling": false, "eta": 1.0, "s_churn": 0, "s_tmax": 0,
            "s_tmin": 0, "s_noise": 1, "script_args": null, "script_name": null,
            "alwayson_scripts": {}
        }));
        assert!(check(&webuiapi, &Map::new(), SamplerId::EulerAncestral).is_ok());
        assert!(check(&webuiapi, &Map::new(), SamplerId::Euler).is_ok());
        let refused = |extra: Value, settings: Value, sampler: SamplerId| match check(
            &map(extra),
            &map(settings),
            sampler,
        ) {
            Err(ValidationError::Invalid { field, message }) => format!("{field}: {message}"),
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(
            refused(json!({"enable_hr": true}), json!({}), SamplerId::Euler)
                .starts_with("enable_hr: ")
        );
        assert!(
            refused(json!({"styles": ["x"]}), json!({}), SamplerId::Euler).starts_with("styles: ")
        );
        assert!(refused(
            json!({"seed_resize_from_w": 512}),
            json!({}),
            SamplerId::Euler
        )
        .starts_with("seed_resize_from_w: "));
        assert!(refused(
            json!({"alwayson_scripts": {"controlnet": {}}}),
            json!({}),
            SamplerId::Euler
        )
        .starts_with("alwayson_scripts: "));
        // DDIM with webuiapi's default eta 1.0 would be A1111's stochastic DDIM.
        assert!(refused(json!({"eta": 1.0}), json!({}), SamplerId::Ddim).starts_with("eta: "));
        assert!(check(&map(json!({"eta": 0})), &Map::new(), SamplerId::Ddim).is_ok());
        let m = refused(
            json!({}),
            json!({"eta_noise_seed_delta": 31337}),
            SamplerId::Euler,
        );
        assert!(
            m.contains("eta_noise_seed_delta") && m.starts_with("override_settings: "),
            "{m}"
        );
        let m = refused(
            json!({}),
            json!({"sd_vae": "vae-ft-mse.safetensors"}),
            SamplerId::Euler,
        );
        assert!(m.contains("sd_vae"), "{m}");
        let m = refused(
            json!({}),
            json!({"samples_format": "jpg"}),
            SamplerId::Euler,
        );
        assert!(m.contains("samples_format is not supported"), "{m}");
        let fine = map(json!({"sd_vae": "Automatic", "eta_noise_seed_delta": 0}));
        assert!(check(&Map::new(), &fine, SamplerId::Euler).is_ok());
    }

    /// Every A1111 txt2img field sdserve does not implement: a value that
    /// would change the image is refused naming that field; A1111's default
    /// (and null, which A1111 reads as the default) passes.
    #[test]
    fn each_unimplemented_field_is_refused_by_name_and_passes_at_its_default() {
        let cases = [
            ("styles", json!(["cinematic"]), json!([])),
            ("subseed_strength", json!(0.5), json!(0)),
            ("seed_resize_from_h", json!(512), json!(-1)),
            ("seed_resize_from_w", json!(768), json!(0)),
            ("restore_faces", json!(true), json!(false)),
            ("tiling", json!(true), json!(false)),
            ("s_min_uncond", json!(0.2), json!(0)),
            ("s_churn", json!(1.0), json!(0.0)),
            ("s_tmax", json!(10), json!(0)),
            ("s_tmin", json!(0.1), json!(0)),
            ("s_noise", json!(0.9), json!(1.0)),
            ("refiner_checkpoint", json!("sdxl-refiner"), json!("")),
            ("firstpass_image", json!("iVBORw0KGgo="), json!(null)),
            ("enable_hr", json!(true), json!(false)),
            ("script_name", json!("x/y/z plot"), json!("")),
            (
                "alwayson_scripts",
                json!({"ADetailer": {"args": []}}),
                json!({}),
            ),
            ("infotext", json!("a cat\nSteps: 20"), json!(null)),
        ];
        for (field, on, off) in cases {
            let refused = check(&map(json!({ field: on })), &Map::new(), SamplerId::Euler);
            match refused {
                Err(ValidationError::Invalid {
                    field: named,
                    message,
                }) => {
                    assert_eq!(named, field);
                    assert!(message.contains("not supported"), "{field}: {message}");
                }
                other => panic!("{field} = {on}: expected a refusal, got {other:?}"),
            }
            for default in [off, Value::Null] {
                assert!(
                    check(
                        &map(json!({ field: default })),
                        &Map::new(),
                        SamplerId::Euler
                    )
                    .is_ok(),
                    "{field} = {default}"
                );
            }
        }
        // `eta` is the sampler's own: 0 for DDIM, 1 for Euler a; others ignore it in A1111.
        for (sampler, on, off) in [
            (SamplerId::Ddim, 0.5, 0.0),
            (SamplerId::EulerAncestral, 0.5, 1.0),
            (SamplerId::DpmPp2mSde, 0.5, 1.0),
        ] {
            assert!(check(&map(json!({"eta": on})), &Map::new(), sampler).is_err());
            assert!(check(&map(json!({"eta": off})), &Map::new(), sampler).is_ok());
        }
        assert!(check(&map(json!({"eta": 0.5})), &Map::new(), SamplerId::DpmPp2m).is_ok());
        // Fields that change nothing without another one pass at any value.
        let inert = map(json!({
            "subseed": 1234, "denoising_strength": 0.3, "hr_scale": 4, "hr_upscaler": "Lanczos",
            "script_args": [1, 2], "refiner_switch_at": 0.8, "comments": {"a": 1},
            "do_not_save_samples": true, "do_not_save_grid": true, "disable_extra_networks": true
        }));
        assert!(check(&inert, &Map::new(), SamplerId::Euler).is_ok());
        // override_settings: anything but the known settings at their defaults.
        for (key, value) in [
            ("eta_noise_seed_delta", json!(31337)),
            ("sd_vae", json!("kl-f8-anime.safetensors")),
            ("samples_format", json!("jpg")),
            ("sd_lora", json!("add_detail")),
        ] {
            match check(&Map::new(), &map(json!({ key: value })), SamplerId::Euler) {
                Err(ValidationError::Invalid { field, message }) => {
                    assert_eq!(field, "override_settings");
                    assert!(message.contains(key), "{message}");
                }
                other => panic!("{key}: expected a refusal, got {other:?}"),
            }
        }
    }
}
