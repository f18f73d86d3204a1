//! The validation gate: the only way into the queue. Every dialect reduces its
//! request to a [`JobSpec`]; [`validate`] fills in the model's defaults, applies
//! the configured [`Limits`] and the engine's own checks, and returns the engine
//! request. Later code never re-checks. Each rule is one [`ValidationError`]
//! variant whose message names the field (as the dialect's client spelled it),
//! the limit and the value given.

use crate::backend::Backend;
use crate::config::Limits;
use crate::dialects::Dialect;
use crate::engine_api::{
    prompt, split_extra_networks, uses_guidance, DecodedImage, EngineError, GenerateRequest,
    GrayImage, ImageToImage, LoraRef, PasteBack, PromptSyntax, SamplerId, MAX_LORAS, MAX_WEIGHT,
};
use crate::jobs::ClientId;

mod errors;
mod hires;
mod sampling;
pub use errors::ValidationError;
pub use hires::{HiresFieldNames, HiresSpec};
pub use sampling::{
    parse_sampler, parse_schedule_type, resolve_sampling, sampler_names, sampling_schema_rules,
    schedule_type_names, SamplingFields,
};

/// Largest accepted CFG scale: the top of AUTOMATIC1111's CFG slider.
pub const MAX_CFG_SCALE: f64 = 30.0;

/// Sampler used when a request names none: the same as `sdserve generate`'s
/// default, so omitted settings give the same image in the CLI and the server.
pub const DEFAULT_SAMPLER: SamplerId = SamplerId::EulerAncestral;

/// How a dialect spells the shared fields, so errors name what the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldNames {
    /// Prompt field.
    pub prompt: &'static str,
    /// Negative prompt field.
    pub negative_prompt: &'static str,
    /// Steps field.
    pub steps: &'static str,
    /// Guidance scale field.
    pub cfg_scale: &'static str,
    /// Sampler field.
    pub sampler: &'static str,
    /// Schedule type field.
    pub schedule_type: &'static str,
    /// Width field.
    pub width: &'static str,
    /// Height field.
    pub height: &'static str,
    /// Images-per-request field.
    pub batch_size: &'static str,
    /// Model field.
    pub model: &'static str,
}

impl FieldNames {
    /// The native dialect's names (also the engine's).
    pub const NATIVE: FieldNames = FieldNames {
        prompt: "prompt",
        negative_prompt: "negative_prompt",
        steps: "steps",
        cfg_scale: "cfg_scale",
        sampler: "sampler",
        schedule_type: "schedule_type",
        width: "width",
        height: "height",
        batch_size: "batch_size",
        model: "model",
    };
}

/// A dialect's request reduced to the shared fields; `None` means the model's default.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Text prompt.
    pub prompt: String,
    /// Negative prompt.
    pub negative_prompt: String,
    /// Seed; `None` for a random one.
    pub seed: Option<u64>,
    /// Denoising steps.
    pub steps: Option<i64>,
    /// Guidance scale.
    pub cfg_scale: Option<f64>,
    /// Sampler id or A1111 label (or a legacy name carrying a schedule).
    pub sampler: Option<String>,
    /// Schedule type id or A1111 label; `None` for the sampler name's own
    /// schedule, if any, else `Automatic`.
    pub schedule_type: Option<String>,
    /// Width in pixels.
    pub width: Option<i64>,
    /// Height in pixels.
    pub height: Option<i64>,
    /// Images from the one seed.
    pub batch_size: Option<i64>,
    /// The model to run on (any of A1111's ids; see `GET /sdapi/v1/sd-models`);
    /// `None` for the default model.
    pub model: Option<String>,
    /// Image-to-image or inpainting: the decoded image, mask and strength.
    pub init: Option<InitSpec>,
    /// A1111's batches: image `i` seeded `seed + i` (see the engine's `seed_per_image`).
    pub seed_per_image: bool,
    /// A1111's hires fix (text-to-image only).
    pub hires: Option<HiresSpec>,
    /// How the prompts are read (A1111's emphasis syntax in its own dialect).
    pub prompt_syntax: PromptSyntax,
    /// Final text-encoder layers left out, as diffusers' `clip_skip`.
    pub clip_skip: usize,
    /// Beyond the model's deepest clip skip, use that one (A1111's setting
    /// is server-wide, so a value fit for one model must not break another);
    /// else the request is refused naming `clip_skip`.
    pub clip_skip_saturates: bool,
    /// LoRAs to apply (native `loras`, A1111's `<lora:..>` prompt tags).
    pub loras: Vec<LoraRef>,
    /// How the dialect names the LoRA list (`prompt` where tags carry it).
    pub loras_field: &'static str,
    /// How the dialect names these fields.
    pub names: FieldNames,
}

/// What a dialect received for image-to-image, already decoded by the bounded
/// decoder (`dialects::images`); `strength: None` takes `default_strength`.
#[derive(Debug, Clone)]
pub struct InitSpec {
    /// The init image (and, with `mask`, inpainting).
    pub image: std::sync::Arc<DecodedImage>,
    /// White repaints, black keeps.
    pub mask: Option<std::sync::Arc<GrayImage>>,
    /// Fraction of the schedule to run.
    pub strength: Option<f64>,
    /// The dialect's default when `strength` is omitted.
    pub default_strength: f64,
    /// How the dialect names the strength field.
    pub strength_field: &'static str,
    /// A1111's `resize_mode` 3: the image's latents are resized, not its pixels.
    pub resize_latents: bool,
    /// A1111's overlay mask at the output size (see the engine's `ImageToImage::overlay`).
    pub overlay: Option<std::sync::Arc<GrayImage>>,
    /// A1111's "only masked" inpainting: where the result goes back.
    pub paste: Option<std::sync::Arc<PasteBack>>,
}

impl JobSpec {
    /// A spec with only a prompt; everything else defaults.
    pub fn new(prompt: impl Into<String>, names: FieldNames) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            seed: None,
            steps: None,
            cfg_scale: None,
            sampler: None,
            schedule_type: None,
            width: None,
            height: None,
            batch_size: None,
            model: None,
            init: None,
            seed_per_image: false,
            hires: None,
            prompt_syntax: PromptSyntax::Plain,
            clip_skip: 0,
            clip_skip_saturates: false,
            loras: Vec::new(),
            loras_field: "loras",
            names,
        }
    }
}

/// A request that passed the gate, ready for the queue.
#[derive(Debug, Clone)]
pub struct ValidJob {
    /// What the engine will run.
    pub request: GenerateRequest,
    /// Who asked (fairness, A1111 interrupt).
    pub client: ClientId,
    /// Which dialect it came through.
    pub dialect: Dialect,
    /// The catalog name of the model it runs on.
    pub model: String,
}

/// A1111's `<lora:..>` tags out of `prompt`: the prompt without them and the
/// LoRAs they name, in order; a malformed tag is refused naming `prompt`.
pub fn split_prompt_tags(prompt: &str) -> Result<(String, Vec<LoraRef>), ValidationError> {
    split_extra_networks(prompt).map_err(|e| ValidationError::Invalid {
        field: "prompt",
        message: match e {
            EngineError::InvalidRequest(m) => m,
            other => other.to_string(),
        },
    })
}

/// At most [`MAX_LORAS`], each weight finite and within ±[`MAX_WEIGHT`];
/// names are checked by the engine against its LoRA folder.
fn check_loras(field: &'static str, loras: &[LoraRef]) -> Result<(), ValidationError> {
    let fail = |message: String| Err(ValidationError::Lora { field, message });
    if loras.len() > MAX_LORAS {
        return fail(format!(
            "at most {MAX_LORAS} LoRAs per request, got {}",
            loras.len()
        ));
    }
    for l in loras {
        for w in [l.te_weight, l.unet_weight] {
            if !w.is_finite() || w.abs() > MAX_WEIGHT {
                return fail(format!(
                    "LoRA \"{}\": weight {w} must be a finite number within ±{MAX_WEIGHT}",
                    l.name
                ));
            }
        }
    }
    Ok(())
}

fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), ValidationError> {
    let got = text.chars().count();
    if got > max {
        return Err(ValidationError::TooLong { field, max, got });
    }
    Ok(())
}

fn check_size(
    field: &'static str,
    value: i64,
    max: usize,
    multiple: usize,
) -> Result<usize, ValidationError> {
    if value <= 0 {
        return Err(ValidationError::NotPositive { field, got: value });
    }
    let size = usize::try_from(value).map_err(|_| ValidationError::TooLarge {
        field,
        max,
        got: value,
    })?;
    if size > max {
        return Err(ValidationError::TooLarge {
            field,
            max,
            got: value,
        });
    }
    if multiple > 1 && size % multiple != 0 {
        return Err(ValidationError::NotMultiple {
            field,
            multiple,
            got: value,
        });
    }
    Ok(size)
}

fn check_count(field: &'static str, value: i64, max: usize) -> Result<usize, ValidationError> {
    check_count_from(field, value, 1, max)
}

/// `value` in `min..=max`, or `OutOfRange` naming the field.
fn check_count_from(
    field: &'static str,
    value: i64,
    min: usize,
    max: usize,
) -> Result<usize, ValidationError> {
    match usize::try_from(value) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ValidationError::OutOfRange {
            field,
            min: min as i64,
            max,
            got: value,
        }),
    }
}

/// The largest square side (a multiple of `multiple`) the configured limits allow.
pub fn largest_allowed_square(limits: &Limits, multiple: usize) -> usize {
    let m = multiple.max(1);
    let side = limits
        .max_width
        .min(limits.max_height)
        .min(limits.max_pixels.isqrt());
    side / m * m
}

/// Strength in (0, 1]; the images were decoded within the image limits.
fn check_init(init: InitSpec) -> Result<ImageToImage, ValidationError> {
    let strength = init.strength.unwrap_or(init.default_strength);
    if !strength.is_finite() {
        return Err(ValidationError::NotFinite {
            field: init.strength_field,
        });
    }
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(ValidationError::Invalid {
            field: init.strength_field,
            message: format!("must be greater than 0 and at most 1, got {strength}"),
        });
    }
    Ok(ImageToImage {
        image: init.image,
        mask: init.mask,
        strength,
        resize_latents: init.resize_latents,
        overlay: init.overlay,
        paste: init.paste,
    })
}

/// Turns a spec into an engine request, or says which rule it breaks.
pub fn validate(
    spec: JobSpec,
    limits: &Limits,
    backend: &dyn Backend,
) -> Result<GenerateRequest, ValidationError> {
    let n = spec.names;
    let info = backend.info();
    check_text(n.prompt, &spec.prompt, limits.max_prompt_chars)?;
    let clip_skip = match spec.clip_skip {
        skip if skip <= info.max_clip_skip => skip,
        _ if spec.clip_skip_saturates => info.max_clip_skip,
        skip => {
            return Err(ValidationError::OutOfRange {
                field: "clip_skip",
                min: 0,
                max: info.max_clip_skip,
                got: i64::try_from(skip).unwrap_or(i64::MAX),
            })
        }
    };
    for (field, text) in [
        (n.prompt, &spec.prompt),
        (n.negative_prompt, &spec.negative_prompt),
    ] {
        prompt::parse(text, spec.prompt_syntax).map_err(|e| ValidationError::Invalid {
            field,
            message: e.to_string(),
        })?;
    }
    check_text(
        n.negative_prompt,
        &spec.negative_prompt,
        limits.max_prompt_chars,
    )?;
    let multiple = info.vae_scale_factor.max(1);
    // Image-to-image defaults to the init image's size (rounded down to the
    // VAE's multiple, as diffusers), text-to-image to the model's native size.
    let (default_width, default_height) = match &spec.init {
        Some(init) => (
            init.image.width / multiple * multiple,
            init.image.height / multiple * multiple,
        ),
        None => (info.native_width, info.native_height),
    };
    let width = check_size(
        n.width,
        spec.width.unwrap_or(default_width as i64),
        limits.max_width,
        multiple,
    )?;
    let height = check_size(
        n.height,
        spec.height.unwrap_or(default_height as i64),
        limits.max_height,
        multiple,
    )?;
    let pixels = width.saturating_mul(height);
    if pixels > limits.max_pixels {
        return Err(ValidationError::TooManyPixels {
            field: n.width,
            width,
            height,
            pixels,
            max: limits.max_pixels,
        });
    }
    // The model's default, but never above the configured limit.
    let default_steps = info.default_steps.min(limits.max_steps).max(1);
    let steps = check_count(
        n.steps,
        spec.steps.unwrap_or(default_steps as i64),
        limits.max_steps,
    )?;
    let batch_size = check_count(n.batch_size, spec.batch_size.unwrap_or(1), limits.max_batch)?;
    let cfg_scale = spec.cfg_scale.unwrap_or(info.default_cfg_scale);
    if !cfg_scale.is_finite() {
        return Err(ValidationError::NotFinite { field: n.cfg_scale });
    }
    if !(0.0..=MAX_CFG_SCALE).contains(&cfg_scale) {
        return Err(ValidationError::CfgOutOfRange {
            field: n.cfg_scale,
            got: cfg_scale,
        });
    }
    let (sampler, schedule_type) =
        resolve_sampling(&n, spec.sampler.as_deref(), spec.schedule_type.as_deref())?;
    // LCM's step limit, for both passes of a hires fix (whose steps are
    // checked below): the model's original_inference_steps.
    if sampler == SamplerId::Lcm && steps > info.lcm_max_steps {
        return Err(ValidationError::Invalid {
            field: n.steps,
            message: format!(
                "LCM runs at most {} steps on this model (its original_inference_steps), not {steps}",
                info.lcm_max_steps
            ),
        });
    }
    let init = spec.init.map(check_init).transpose()?;
    let spec_loras_field = spec.loras_field;
    check_loras(spec_loras_field, &spec.loras)?;
    let (hires, (out_width, out_height)) = match spec.hires {
        Some(h) => {
            let (fix, size) = hires::check(h, (width, height), multiple, limits)?;
            (Some(fix), size)
        }
        None => (None, (width, height)),
    };
    let request = GenerateRequest {
        prompt: spec.prompt,
        negative_prompt: spec.negative_prompt,
        seed: spec.seed,
        steps,
        cfg_scale,
        sampler,
        schedule_type,
        width,
        height,
        batch_size,
        init,
        seed_per_image: spec.seed_per_image,
        hires,
        prompt_syntax: spec.prompt_syntax,
        clip_skip,
        loras: spec.loras,
    };
    // The memory plan after the configured limits: it only ever lowers them,
    // and the largest size it suggests is one the limits also allow.
    if let Some(plan) = backend.memory_plan() {
        let guidance = uses_guidance(&request);
        if let Err(mut detail) = plan.check(out_width, out_height, batch_size, guidance, multiple) {
            detail.largest_square = detail
                .largest_square
                .min(largest_allowed_square(limits, multiple));
            return Err(ValidationError::OverBudget {
                field: n.width,
                detail,
            });
        }
    }
    backend.validate(&request).map_err(|e| match e {
        EngineError::InvalidRequest(message) => ValidationError::Engine(message),
        e @ (EngineError::UnknownLora { .. } | EngineError::InvalidLora { .. }) => {
            ValidationError::Lora {
                field: spec_loras_field,
                message: e.to_string(),
            }
        }
        EngineError::OverBudget(detail) => ValidationError::OverBudget {
            field: n.width,
            detail,
        },
        other => ValidationError::Engine(other.to_string()),
    })?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FakeBackend;
    use crate::engine_api::ScheduleType;

    fn spec() -> JobSpec {
        JobSpec::new("a cat", FieldNames::NATIVE)
    }

    fn check(spec: JobSpec) -> Result<GenerateRequest, ValidationError> {
        validate(spec, &Limits::default(), &FakeBackend::new())
    }

    #[test]
    fn fills_model_defaults() {
        let r = check(spec()).unwrap();
        assert_eq!((r.width, r.height, r.steps, r.batch_size), (64, 64, 4, 1));
        assert_eq!(r.cfg_scale, 7.0);
        assert_eq!(r.sampler, DEFAULT_SAMPLER);
        assert_eq!(DEFAULT_SAMPLER.label(), "Euler a");
        assert_eq!(r.seed, None);
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<(JobSpec, &str)> = vec![
            (
                JobSpec {
                    width: Some(0),
                    ..spec()
                },
                "width",
            ),
            (
                JobSpec {
                    height: Some(-64),
                    ..spec()
                },
                "height",
            ),
            (
                JobSpec {
                    width: Some(65),
                    ..spec()
                },
                "width",
            ),
            (
                JobSpec {
                    width: Some(4096),
                    ..spec()
                },
                "width",
            ),
            (
                JobSpec {
                    width: Some(i64::MAX),
                    ..spec()
                },
                "width",
            ),
            (
                JobSpec {
                    width: Some(2048),
                    height: Some(2048),
                    ..spec()
                },
                "width",
            ),
            (
                JobSpec {
                    steps: Some(0),
                    ..spec()
                },
                "steps",
            ),
            (
                JobSpec {
                    steps: Some(151),
                    ..spec()
                },
                "steps",
            ),
            (
                JobSpec {
                    steps: Some(-3),
                    ..spec()
                },
                "steps",
            ),
            (
                JobSpec {
                    batch_size: Some(9),
                    ..spec()
                },
                "batch_size",
            ),
            (
                JobSpec {
                    cfg_scale: Some(f64::NAN),
                    ..spec()
                },
                "cfg_scale",
            ),
            (
                JobSpec {
                    cfg_scale: Some(f64::INFINITY),
                    ..spec()
                },
                "cfg_scale",
            ),
            (
                JobSpec {
                    cfg_scale: Some(1e300),
                    ..spec()
                },
                "cfg_scale",
            ),
            (
                JobSpec {
                    cfg_scale: Some(-1.0),
                    ..spec()
                },
                "cfg_scale",
            ),
            (
                JobSpec {
                    sampler: Some("DPM++ SDE".into()),
                    ..spec()
                },
                "sampler",
            ),
            (
                JobSpec {
                    sampler: Some("DDIM".into()),
                    schedule_type: Some("Karras".into()),
                    ..spec()
                },
                "schedule_type",
            ),
            (
                JobSpec {
                    schedule_type: Some("Uniform".into()),
                    ..spec()
                },
                "schedule_type",
            ),
            (
                JobSpec {
                    prompt: "x".repeat(9000),
                    ..spec()
                },
                "prompt",
            ),
            (
                JobSpec {
                    negative_prompt: "x".repeat(9000),
                    ..spec()
                },
                "negative_prompt",
            ),
        ];
        for (case, field) in cases {
            let err = check(case.clone()).expect_err(&format!("{case:?} accepted"));
            assert_eq!(err.field(), Some(field), "{err}");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn default_steps_respect_the_limit() {
        let limits = Limits {
            max_steps: 2,
            ..Limits::default()
        };
        let r = validate(spec(), &limits, &FakeBackend::new()).unwrap();
        assert_eq!(r.steps, 2);
    }

    #[test]
    fn accepts_labels_and_limits_exactly() {
        let r = check(JobSpec {
            sampler: Some("DPM++ 2M Karras".into()),
            steps: Some(150),
            batch_size: Some(8),
            cfg_scale: Some(30.0),
            ..spec()
        })
        .unwrap();
        assert_eq!(
            (r.sampler, r.schedule_type),
            (SamplerId::DpmPp2m, ScheduleType::Karras)
        );
        // An explicit schedule type wins over the legacy name's; Automatic does not.
        let pick = |sampler: &str, schedule: &str| {
            let r = check(JobSpec {
                sampler: Some(sampler.into()),
                schedule_type: Some(schedule.into()),
                ..spec()
            })
            .unwrap();
            (r.sampler, r.schedule_type)
        };
        assert_eq!(
            pick("DPM++ 2M Karras", "Exponential"),
            (SamplerId::DpmPp2m, ScheduleType::Exponential)
        );
        assert_eq!(
            pick("DPM++ 2M Karras", "automatic"),
            (SamplerId::DpmPp2m, ScheduleType::Karras)
        );
        assert_eq!(
            pick("Euler a", "sgm_uniform"),
            (SamplerId::EulerAncestral, ScheduleType::SgmUniform)
        );
        assert_eq!((r.steps, r.batch_size), (150, 8));
    }
}
