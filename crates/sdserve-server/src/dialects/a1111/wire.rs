//! A1111's txt2img request and response shapes, and how they map to a job:
//! `seed: -1` is random, `sampler_name` + `scheduler` pick one engine sampler,
//! `batch_size × n_iter` images come from one job, and `info` is the JSON
//! *string* A1111 returns, with `all_seeds`, `infotexts` and its other keys.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::Limits;
use crate::engine_api::{PromptSyntax, SamplerId, ScheduleType};
use crate::jobs::{JobSnapshot, MAX_TASK_NAME_CHARS};
use crate::models::Listed;
use crate::state::TextSettings;
use crate::validation::{
    parse_sampler, resolve_sampling, sampling_schema_rules, split_prompt_tags, FieldNames, JobSpec,
    SamplingFields, ValidationError,
};

/// How the A1111 dialect names the shared fields.
pub const A1111_FIELDS: FieldNames = FieldNames {
    prompt: "prompt",
    negative_prompt: "negative_prompt",
    steps: "steps",
    cfg_scale: "cfg_scale",
    sampler: "sampler_name",
    schedule_type: "scheduler",
    width: "width",
    height: "height",
    batch_size: "batch_size",
    model: "override_settings.sd_model_checkpoint",
};

/// A1111's default sampler for API requests that name none.
pub const A1111_DEFAULT_SAMPLER: &str = "Euler";

/// A1111's API defaults for omitted fields (`StableDiffusionProcessing`'s
/// dataclass defaults, which its API models copy): a request that names no
/// steps, CFG scale or size gets what A1111 would give it, whatever the model's
/// own defaults are, so the same request gives the same image on both servers.
pub const A1111_DEFAULT_STEPS: i64 = 50;
/// A1111's default `cfg_scale`.
pub const A1111_DEFAULT_CFG_SCALE: f64 = 7.0;
/// A1111's default `width` and `height`.
pub const A1111_DEFAULT_SIZE: i64 = 512;

/// `POST /sdapi/v1/txt2img` body. The hires fix takes A1111's fields
/// (`enable_hr`, `hr_scale` or `hr_resize_x`/`hr_resize_y`, `hr_upscaler` from
/// `GET /sdapi/v1/upscalers` and `/latent-upscale-modes`, `hr_second_pass_steps`,
/// `denoising_strength`). A1111 fields sdserve does not implement
/// (face restoration, scripts, ...) are accepted only while they
/// hold their "off" value (`unsupported.rs`), else refused by name; omitted
/// fields take A1111's API defaults (steps 50, CFG 7, 512×512, `Euler`, a
/// random seed), not the model's.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct Txt2ImgRequest {
    /// Prompt.
    #[schema(max_length = 8192)]
    pub prompt: Option<String>,
    /// Negative prompt.
    #[schema(max_length = 8192)]
    pub negative_prompt: Option<String>,
    /// Seed; -1 (default) for a random one.
    #[schema(minimum = -1)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub seed: Option<i64>,
    /// Sampler label (`Euler a`, `DPM++ 2M`...); see `GET /sdapi/v1/samplers`.
    pub sampler_name: Option<String>,
    /// Deprecated alias of `sampler_name`.
    pub sampler_index: Option<String>,
    /// Schedule type: `automatic` (default: the sampler's own, or the one a
    /// legacy name such as `DPM++ 2M Karras` carries), `karras`,
    /// `exponential`, `sgm_uniform`, `beta`, or their labels; see
    /// `GET /sdapi/v1/schedulers`.
    pub scheduler: Option<String>,
    /// Denoising steps (default 50, as in A1111).
    #[schema(minimum = 1, maximum = 150, default = 50)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub steps: Option<i64>,
    /// Guidance scale, 0 to 30 (default 7, as in A1111).
    #[schema(minimum = 0, maximum = 30, default = 7.0)]
    pub cfg_scale: Option<f64>,
    /// Width in pixels (default 512, as in A1111).
    #[schema(minimum = 8, maximum = 2048, multiple_of = 8, default = 512)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub width: Option<i64>,
    /// Height in pixels (default 512, as in A1111).
    #[schema(minimum = 8, maximum = 2048, multiple_of = 8, default = 512)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub height: Option<i64>,
    /// Images per iteration.
    #[schema(minimum = 1, maximum = 8)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub batch_size: Option<i64>,
    /// Iterations; `batch_size × n_iter` images in all.
    #[schema(minimum = 1, maximum = 8)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub n_iter: Option<i64>,
    /// Return the images base64-encoded (default true).
    pub send_images: Option<bool>,
    /// Keep the images in the output dir after the response (default false, as
    /// in A1111: they are removed once the response is built).
    pub save_images: Option<bool>,
    /// A name the client picks for this request (A1111 1.8+, e.g.
    /// `task(abc123)`), to follow it with `POST /internal/progress` and
    /// `GET /internal/pending-tasks` while this call waits.
    #[schema(max_length = 256)]
    pub force_task_id: Option<String>,
    /// Settings for this request: `sd_model_checkpoint` picks its model.
    pub override_settings: Option<OverrideSettings>,
    /// With `false`, the overridden `sd_model_checkpoint` stays the default
    /// afterwards (as in A1111); default `true`: it applies to this request only.
    pub override_settings_restore_afterwards: Option<bool>,
    /// Every other field, checked by `unsupported::check`.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `override_settings` of a txt2img request. Other A1111 settings are
/// accepted only at their default value (`eta_noise_seed_delta` 0, `sd_vae`
/// "Automatic"), else refused by name.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct OverrideSettings {
    /// The model for this request: a title, name, `model_name` or hash from
    /// `GET /sdapi/v1/sd-models` (404 if none matches).
    pub sd_model_checkpoint: Option<String>,
    /// A1111's clip skip: the text encoder layer counted from the end (1,
    /// the default, is the last; diffusers' `clip_skip` is this less one).
    /// (0 reads as 1, as in A1111.)
    #[serde(
        default,
        rename = "CLIP_stop_at_last_layers",
        deserialize_with = "crate::extract::whole_number::option_i64"
    )]
    #[schema(minimum = 0, maximum = 12)]
    pub clip_stop_at_last_layers: Option<i64>,
    /// How emphasis is read: `Original` (the default: `(word:1.2)` syntax)
    /// or `None` (plain text). A1111's `No norm` is refused.
    pub emphasis: Option<Emphasis>,
    /// Every other setting, checked by `unsupported::check`.
    #[serde(flatten)]
    #[schema(ignore)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// `POST /sdapi/v1/txt2img` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Txt2ImgResponse {
    /// Base64 PNGs (empty when `send_images` is false).
    pub images: Vec<String>,
    /// The request's parameters with defaults filled in.
    pub parameters: serde_json::Value,
    /// A JSON *string* with `all_seeds`, `infotexts` and A1111's other keys.
    pub info: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ValidationError {
    ValidationError::Invalid {
        field,
        message: message.into(),
    }
}

/// The engine sampler and schedule type for an A1111 `sampler_name` (or
/// `sampler_index`) and `scheduler`, as the gate resolves them (see
/// [`resolve_sampling`]).
pub fn resolve_sampler(
    sampler: &str,
    scheduler: Option<&str>,
) -> Result<(SamplerId, ScheduleType), ValidationError> {
    resolve_sampling(&A1111_FIELDS, Some(sampler), scheduler)
}

/// The rules across fields of [`Txt2ImgRequest`] that [`Txt2ImgRequest::to_spec`]
/// applies, as JSON Schema `if`/`then` pairs for the OpenAPI document's `allOf`:
/// the sampling rules ([`sampling_schema_rules`]: `sampler_name`, or
/// `sampler_index` when `sampler_name` is absent or null, with `scheduler`),
/// and `batch_size × n_iter` within `--max-batch`.
pub fn txt2img_schema_rules(max_batch: usize, lcm_max_steps: usize) -> Vec<serde_json::Value> {
    let fields = SamplingFields {
        sampler: "sampler_name",
        alias: Some("sampler_index"),
        schedule_type: "scheduler",
        steps: "steps",
    };
    let mut rules = sampling_schema_rules(&fields, lcm_max_steps);
    // n_iter values sharing the same largest batch_size form one rule.
    let mut n_iter = 2;
    while n_iter <= max_batch {
        let most = max_batch / n_iter;
        let last = max_batch / most;
        rules.push(serde_json::json!({
            "if": {
                "properties": { "n_iter": { "type": "number", "minimum": n_iter, "maximum": last } },
                "required": ["n_iter"],
            },
            "then": { "properties": { "batch_size": { "maximum": most } } },
        }));
        n_iter = last + 1;
    }
    rules
}

impl Txt2ImgRequest {
    /// Images in all (`batch_size × n_iter`), checked against the batch limit.
    fn images(&self, limits: &Limits) -> Result<i64, ValidationError> {
        let n_iter = self.n_iter.unwrap_or(1);
        if n_iter < 1 {
            return Err(invalid(
                "n_iter",
                format!("must be at least 1, got {n_iter}"),
            ));
        }
        let batch = self.batch_size.unwrap_or(1);
        if n_iter > 1 && batch >= 1 && batch.saturating_mul(n_iter) > limits.max_batch as i64 {
            return Err(invalid(
                "n_iter",
                format!(
                    "batch_size × n_iter = {} images; the limit is {}",
                    batch.saturating_mul(n_iter),
                    limits.max_batch
                ),
            ));
        }
        Ok(batch.saturating_mul(n_iter))
    }

    /// The job this request asks for.
    /// `settings_now` are the server-wide A1111 settings the request's
    /// `override_settings` may override.
    pub fn to_spec(
        &self,
        limits: &Limits,
        settings_now: TextSettings,
    ) -> Result<JobSpec, ValidationError> {
        // The hires fix is txt2img's alone: img2img leaves its fields to
        // `unsupported.rs`, which refuses `enable_hr: true`.
        let rest: serde_json::Map<String, serde_json::Value> = self
            .extra
            .iter()
            .filter(|(k, _)| !super::hires::HIRES_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let spec = self.to_spec_with_extra(limits, &rest, settings_now)?;
        let first = super::hires::FirstPass {
            prompt: self.prompt.as_deref().unwrap_or(""),
            negative_prompt: self.negative_prompt.as_deref().unwrap_or(""),
            sampler: self
                .sampler_name
                .as_deref()
                .or(self.sampler_index.as_deref()),
            scheduler: self.scheduler.as_deref(),
        };
        let hires = super::hires::parse(&self.extra, &first)?;
        Ok(JobSpec { hires, ..spec })
    }

    /// [`Self::to_spec`] with `extra` (the fields txt2img does not know) in
    /// place of the request's own: img2img takes its fields out first.
    pub fn to_spec_with_extra(
        &self,
        limits: &Limits,
        extra: &serde_json::Map<String, serde_json::Value>,
        settings_now: TextSettings,
    ) -> Result<JobSpec, ValidationError> {
        let seed = match self.seed.unwrap_or(-1) {
            -1 => None,
            s if s >= 0 => Some(s as u64),
            s => {
                return Err(invalid(
                    "seed",
                    format!("must be -1 (random) or a non-negative integer, got {s}"),
                ))
            }
        };
        // The alias is checked even when sampler_name wins: the schema
        // constrains it either way.
        if let Some(index) = &self.sampler_index {
            parse_sampler("sampler_index", index)?;
        }
        let sampler = self
            .sampler_name
            .as_deref()
            .or(self.sampler_index.as_deref())
            .unwrap_or(A1111_DEFAULT_SAMPLER);
        let (sampler, schedule) = resolve_sampler(sampler, self.scheduler.as_deref())?;
        let no_settings = serde_json::Map::new();
        let settings = self
            .override_settings
            .as_ref()
            .map_or(&no_settings, |o| &o.other);
        super::unsupported::check(extra, settings, sampler)?;
        let overrides = self.override_settings.as_ref();
        let stop_at = overrides.and_then(|o| o.clip_stop_at_last_layers);
        let clip_skip = stop_at
            .map(|v| clip_skip("override_settings.CLIP_stop_at_last_layers", v))
            .transpose()?
            .unwrap_or(settings_now.clip_skip);
        let prompt_syntax = overrides
            .and_then(|o| o.emphasis)
            .map_or(settings_now.prompt_syntax, PromptSyntax::from);
        if let Some(name) = &self.force_task_id {
            let chars = name.chars().count();
            if chars > MAX_TASK_NAME_CHARS {
                return Err(ValidationError::TooLong {
                    field: "force_task_id",
                    max: MAX_TASK_NAME_CHARS,
                    got: chars,
                });
            }
        }
        // A1111's extra-network tags: out of the prompt, into the job's LoRAs
        // (the negative prompt is not parsed, as A1111).
        let (prompt, loras) = split_prompt_tags(self.prompt.as_deref().unwrap_or(""))?;
        Ok(JobSpec {
            loras,
            loras_field: "prompt",
            negative_prompt: self.negative_prompt.clone().unwrap_or_default(),
            seed,
            steps: Some(self.steps.unwrap_or(A1111_DEFAULT_STEPS)),
            cfg_scale: Some(self.cfg_scale.unwrap_or(A1111_DEFAULT_CFG_SCALE)),
            sampler: Some(sampler.id().to_string()),
            schedule_type: Some(schedule.id().to_string()),
            width: Some(self.width.unwrap_or(A1111_DEFAULT_SIZE)),
            height: Some(self.height.unwrap_or(A1111_DEFAULT_SIZE)),
            batch_size: Some(self.images(limits)?),
            model: self.override_model().map(str::to_string),
            // A1111's batches: image i is seed + i, reproducible alone.
            seed_per_image: true,
            prompt_syntax,
            clip_skip,
            clip_skip_saturates: true,
            ..JobSpec::new(prompt, A1111_FIELDS)
        })
    }
}

/// A1111's largest `CLIP_stop_at_last_layers` (the top of its slider).
const MAX_CLIP_STOP: usize = 12;

/// `CLIP_stop_at_last_layers` as diffusers' `clip_skip`: A1111 treats 0
/// and 1 alike (the last layer).
pub fn clip_skip(field: &'static str, stop_at_last_layers: i64) -> Result<usize, ValidationError> {
    match usize::try_from(stop_at_last_layers) {
        Ok(n) if n <= MAX_CLIP_STOP => Ok(n.saturating_sub(1)),
        _ => Err(invalid(
            field,
            format!("must be between 1 and {MAX_CLIP_STOP}, got {stop_at_last_layers}"),
        )),
    }
}

/// A1111's `emphasis` option, as far as sdserve implements it (its
/// "No norm" is refused when the JSON is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Emphasis {
    /// A1111's emphasis syntax with the mean restored.
    Original,
    /// Plain text.
    None,
}

impl From<Emphasis> for PromptSyntax {
    fn from(e: Emphasis) -> Self {
        match e {
            Emphasis::Original => PromptSyntax::A1111,
            Emphasis::None => PromptSyntax::Plain,
        }
    }
}

impl Txt2ImgRequest {
    /// The model `override_settings` picks, if any.
    pub fn override_model(&self) -> Option<&str> {
        self.override_settings
            .as_ref()
            .and_then(|o| o.sd_model_checkpoint.as_deref())
    }
}

/// `YYYYMMDDhhmmss` in UTC, as A1111's `job_timestamp`.
pub fn job_timestamp(unix_seconds: f64) -> String {
    let secs = unix_seconds.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The `parameters` echo: the request's A1111 fields with effective values
/// (the prompt as sent, `<lora:..>` tags included, as A1111 echoes it).
pub fn parameters(req: &Txt2ImgRequest, snap: &JobSnapshot) -> serde_json::Value {
    let p = &snap.params;
    let mut value = serde_json::json!({
        "prompt": req.prompt.as_deref().unwrap_or(""),
        "negative_prompt": p.negative_prompt,
        "seed": req.seed.unwrap_or(-1),
        "sampler_name": p.sampler_id().map_or(p.sampler.clone(), |s| s.label().to_string()),
        "scheduler": p.schedule_type_label(),
        "steps": p.steps,
        "cfg_scale": p.cfg_scale,
        "width": p.width,
        "height": p.height,
        "batch_size": req.batch_size.unwrap_or(1),
        "n_iter": req.n_iter.unwrap_or(1),
        "send_images": req.send_images.unwrap_or(true),
        "save_images": req.save_images.unwrap_or(false),
    });
    if let (Some(hires), Some(map)) = (&p.hires, value.as_object_mut()) {
        map.extend(super::hires::parameters(hires));
    }
    value
}

/// The `info` string: A1111's generation-info JSON for a finished job.
pub fn info(req: &Txt2ImgRequest, snap: &JobSnapshot, model: Option<&Listed>) -> String {
    info_value(req, snap, model).to_string()
}

/// [`info`] as JSON, for dialect routes that add keys (img2img).
pub fn info_value(
    req: &Txt2ImgRequest,
    snap: &JobSnapshot,
    model: Option<&Listed>,
) -> serde_json::Value {
    let p = &snap.params;
    let n = snap.images.len();
    let seeds: Vec<u64> = snap.images.iter().map(|i| i.seed).collect();
    let infotexts: Vec<&str> = snap.images.iter().map(|i| i.infotext.as_str()).collect();
    // The prompt as sent, extra-network tags included, as A1111 reports it.
    let prompt = req.prompt.as_deref().unwrap_or("");
    let value = serde_json::json!({
        "prompt": prompt,
        "all_prompts": vec![prompt; n],
        "negative_prompt": p.negative_prompt,
        "all_negative_prompts": vec![&p.negative_prompt; n],
        "seed": seeds.first().copied().unwrap_or_default(),
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": vec![-1; n],
        "subseed_strength": 0,
        "width": p.width,
        "height": p.height,
        // As A1111 1.9+: the sampler without its schedule (see the infotext).
        "sampler_name": p.sampler_id().map_or(p.sampler.clone(), |s| s.label().to_string()),
        "cfg_scale": p.cfg_scale,
        "steps": p.steps,
        "batch_size": req.batch_size.unwrap_or(1),
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": model.map(|m| m.entry.stem()),
        "sd_model_hash": model.and_then(Listed::short_hash),
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": p.hires.as_ref().map(|h| h.denoising_strength),
        "extra_generation_params": p.hires.as_ref().map(super::hires::extra_generation_params).unwrap_or_default(),
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": job_timestamp(snap.started_at.unwrap_or(snap.created_at)),
        "clip_skip": p.clip_skip + 1,
        "is_using_inpainting_conditioning": false,
        "version": concat!("sdserve ", env!("CARGO_PKG_VERSION")),
    });
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_like_a1111() {
        assert_eq!(job_timestamp(0.0), "19700101000000");
        assert_eq!(job_timestamp(1_709_251_199.0), "20240229235959");
    }

    #[test]
    fn sampler_and_scheduler_pairs() {
        let pair = |s: &str, t: Option<&str>| resolve_sampler(s, t).unwrap();
        assert_eq!(
            pair("Euler a", None),
            (SamplerId::EulerAncestral, ScheduleType::Automatic)
        );
        assert_eq!(
            pair("DPM++ 2M", Some("Karras")),
            (SamplerId::DpmPp2m, ScheduleType::Karras)
        );
        assert_eq!(
            pair("DPM++ 2M Karras", Some("automatic")),
            (SamplerId::DpmPp2m, ScheduleType::Karras)
        );
        assert_eq!(
            pair("Euler a", Some("karras")),
            (SamplerId::EulerAncestral, ScheduleType::Karras)
        );
        assert_eq!(
            pair("UniPC", Some("SGM Uniform")),
            (SamplerId::UniPc, ScheduleType::SgmUniform)
        );
        assert_eq!(
            pair("LMS Karras", None),
            (SamplerId::Lms, ScheduleType::Karras)
        );
        assert_eq!(
            pair("PLMS", None),
            (SamplerId::Plms, ScheduleType::Automatic)
        );
        for unknown in ["uniform", "", "KARRAS", " karras", "Align Your Steps"] {
            let e = resolve_sampler("Euler", Some(unknown)).unwrap_err();
            assert_eq!(e.field(), Some("scheduler"), "{unknown:?}");
        }
        let e = resolve_sampler("DDIM", Some("karras")).unwrap_err();
        assert_eq!(e.field(), Some("scheduler"));
        assert!(e.to_string().contains("Automatic, SGM Uniform"), "{e}");
        let e = resolve_sampler("DPM++ SDE", None).unwrap_err();
        assert_eq!(e.field(), Some("sampler_name"));
    }

    #[test]
    fn batch_rules_match_the_gate() {
        // For each n_iter, the schema's largest batch_size is the gate's.
        for max_batch in [1, 2, 7, 8, 30] {
            let limits = Limits {
                max_batch,
                ..Limits::default()
            };
            let rules = txt2img_schema_rules(max_batch, 50);
            for n_iter in 1..=max_batch as i64 {
                let schema_most = rules
                    .iter()
                    .filter(|r| !r["if"]["properties"]["n_iter"].is_null())
                    .find(|r| {
                        let n = &r["if"]["properties"]["n_iter"];
                        n["minimum"].as_i64().unwrap() <= n_iter
                            && n_iter <= n["maximum"].as_i64().unwrap()
                    })
                    .map_or(max_batch as i64, |r| {
                        r["then"]["properties"]["batch_size"]["maximum"]
                            .as_i64()
                            .unwrap()
                    });
                let accepted = |batch: i64| {
                    Txt2ImgRequest {
                        batch_size: Some(batch),
                        n_iter: Some(n_iter),
                        ..Default::default()
                    }
                    .to_spec(&limits, TextSettings::default())
                    .is_ok_and(|spec| spec.batch_size.unwrap() <= max_batch as i64)
                };
                assert!(accepted(schema_most), "{max_batch}: n_iter {n_iter}");
                assert!(!accepted(schema_most + 1), "{max_batch}: n_iter {n_iter}");
            }
        }
        // Karras is refused for exactly LCM, DDIM and PLMS.
        let karras = &txt2img_schema_rules(8, 50)[0];
        assert_eq!(
            karras["if"]["properties"]["scheduler"]["enum"],
            serde_json::json!(["Karras", "karras"])
        );
        assert_eq!(
            karras["then"]["not"]["anyOf"][0]["properties"]["sampler_name"]["enum"],
            serde_json::json!(["LCM", "lcm", "DDIM", "ddim", "PLMS", "plms"])
        );
    }

    #[test]
    fn seeds_and_iterations() {
        let limits = Limits::default();
        let spec = Txt2ImgRequest {
            seed: Some(-1),
            ..Default::default()
        }
        .to_spec(&limits, TextSettings::default())
        .unwrap();
        assert_eq!(spec.seed, None);
        assert_eq!(spec.sampler.as_deref(), Some("euler"));
        // A1111's API defaults, not the model's.
        assert_eq!(
            (
                spec.steps,
                spec.cfg_scale,
                spec.width,
                spec.height,
                spec.batch_size
            ),
            (Some(50), Some(7.0), Some(512), Some(512), Some(1))
        );
        assert_eq!(spec.negative_prompt, "");
        let spec = Txt2ImgRequest {
            seed: Some(42),
            batch_size: Some(2),
            n_iter: Some(3),
            ..Default::default()
        }
        .to_spec(&limits, TextSettings::default())
        .unwrap();
        assert_eq!((spec.seed, spec.batch_size), (Some(42), Some(6)));
        for bad in [
            Txt2ImgRequest {
                seed: Some(-2),
                ..Default::default()
            },
            Txt2ImgRequest {
                n_iter: Some(0),
                ..Default::default()
            },
            Txt2ImgRequest {
                batch_size: Some(4),
                n_iter: Some(3),
                ..Default::default()
            },
        ] {
            assert!(bad.to_spec(&limits, TextSettings::default()).is_err());
        }
    }
}
