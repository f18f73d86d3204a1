//! Wire shapes of the native API: the job request, and the job, model,
//! sampler and limits views it answers with.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::engine_api::{
    HiresSize, LoraRef, PromptSyntax, Upscaler, DEFAULT_DENOISING_STRENGTH, DEFAULT_SCALE,
};
use crate::jobs::{
    ImageId, JobFailure, JobId, JobParams, JobSnapshot, JobStatus, JobTimings, StepProgress,
};
use crate::validation::{
    split_prompt_tags, FieldNames, HiresFieldNames, HiresSpec, InitSpec, JobSpec, ValidationError,
};

/// `POST /api/v1/jobs` body. Omitted fields take the model's defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// Text prompt.
    #[schema(max_length = 8192)]
    pub prompt: String,
    /// Negative prompt.
    #[schema(max_length = 8192)]
    pub negative_prompt: Option<String>,
    /// Seed; omitted or null for a random one (reported per image).
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_u64")]
    pub seed: Option<u64>,
    /// Denoising steps (default: the model's).
    #[schema(minimum = 1, maximum = 150)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub steps: Option<i64>,
    /// Guidance scale, 0 to 30 (1 or less: guidance off; default: the model's).
    #[schema(minimum = 0, maximum = 30)]
    pub cfg_scale: Option<f64>,
    /// Sampler id or A1111 label (see `GET /api/v1/samplers`; default
    /// `euler_ancestral`); a legacy name such as `DPM++ 2M Karras` carries
    /// its schedule type.
    pub sampler: Option<String>,
    /// Schedule type id or A1111 label: `automatic` (default: the sampler's
    /// own), `karras`, `exponential`, `sgm_uniform`, `beta`; the sampler's
    /// listing names the ones it runs with.
    pub schedule_type: Option<String>,
    /// Width in pixels, a multiple of the model's VAE scale factor (default: native).
    #[schema(minimum = 8, maximum = 2048, multiple_of = 8)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub width: Option<i64>,
    /// Height in pixels (same rules as width).
    #[schema(minimum = 8, maximum = 2048, multiple_of = 8)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub height: Option<i64>,
    /// Images from the one seed (default 1).
    #[schema(minimum = 1, maximum = 8)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub batch_size: Option<i64>,
    /// Model id from `GET /api/v1/models` (A1111's titles and hashes work too;
    /// default: the server's default model). An unknown one is a 404.
    pub model: Option<String>,
    // The image-to-image fields are left out of the OpenAPI document for now:
    // no schema lets a fuzzer (tests/clients/run_schemathesis.py) generate
    // strings that are valid images, and its positive-data check would fail.
    /// Image-to-image: the image to start from, as base64 PNG/JPEG (a `data:`
    /// URL works too) or the id of an image of yours on this server. The size
    /// defaults to the image's (rounded down to the VAE's multiple).
    #[schema(ignore)]
    pub init_image: Option<String>,
    /// Inpainting mask for `init_image` (base64 or image id): white repaints, black keeps.
    #[schema(ignore)]
    pub mask: Option<String>,
    /// Fraction of the steps run from `init_image`, in (0, 1] (default 0.8,
    /// or 1 with a mask, as diffusers' pipelines).
    #[schema(ignore)]
    pub strength: Option<f64>,
    /// Hires fix (A1111's): generate at `width` x `height`, enlarge, then
    /// refine at the larger size with a second, image-to-image pass. (Left out
    /// of the OpenAPI document: its target must fit the server's size limits,
    /// a product JSON Schema cannot state.)
    #[schema(ignore)]
    pub hires: Option<HiresRequest>,
    /// How the prompts are read (default `plain`).
    pub prompt_syntax: Option<PromptSyntaxName>,
    /// Final text-encoder layers left out, as diffusers' `clip_skip`
    /// (A1111's "Clip skip" N is N-1; default 0). (Left out of the OpenAPI
    /// document: its maximum is the model's encoder depth less one or two.)
    #[schema(ignore)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub clip_skip: Option<i64>,
    /// LoRAs from the server's `--lora-dir`, applied in order (see `GET /api/v1/loras`).
    /// (Left out of the OpenAPI document: only the folder's names are valid,
    /// which no schema can list ahead of the server's start.)
    #[schema(ignore)]
    pub loras: Option<Vec<LoraRequest>>,
}

/// How a job's prompts are read.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PromptSyntaxName {
    /// Text as written, as diffusers reads it; prompts over 75 tokens are
    /// encoded in 75-token chunks (never truncated).
    Plain,
    /// A1111's emphasis syntax: `(word)`, `(word:1.3)`, `[word]`, `BREAK`, `\(`.
    A1111,
}

impl From<PromptSyntaxName> for PromptSyntax {
    fn from(name: PromptSyntaxName) -> Self {
        match name {
            PromptSyntaxName::Plain => PromptSyntax::Plain,
            PromptSyntaxName::A1111 => PromptSyntax::A1111,
        }
    }
}

/// One LoRA of a job.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraRequest {
    /// File stem in the LoRA folder (A1111's `<lora:name:weight>` name).
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    /// Multiplier (default 1): on the text encoders, and on the UNet unless `unet_weight` is given.
    #[schema(minimum = -10.0, maximum = 10.0)]
    pub weight: Option<f64>,
    /// Multiplier on the UNet alone (A1111's `<lora:name:te:unet>`).
    #[schema(minimum = -10.0, maximum = 10.0)]
    pub unet_weight: Option<f64>,
}

/// One LoRA of `GET /api/v1/loras`.
#[derive(Serialize, ToSchema)]
pub struct LoraView {
    /// What a job's `loras[].name` takes.
    pub name: String,
    /// The file's `__metadata__` (kohya's `ss_*` training notes).
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// The `hires` object of a job: A1111's `hr_*` settings under plain names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiresRequest {
    /// A1111's upscaler name: `Latent` (default), `Latent (antialiased)`,
    /// `Latent (bicubic)`, `Latent (nearest)`, `Latent (nearest-exact)`,
    /// `None`, `Lanczos` or `Nearest`.
    pub upscaler: Option<String>,
    /// Enlargement factor (default 2), unless `width` or `height` is given.
    pub scale: Option<f64>,
    /// Target width (0 or omitted with `height`: keep the aspect ratio; another
    /// ratio than the first pass's is centre-cropped).
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub width: Option<i64>,
    /// Target height (see `width`).
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub height: Option<i64>,
    /// Steps the second pass runs (default: as many as the first).
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub steps: Option<i64>,
    /// How much the second pass changes, in (0, 1] (default 0.75).
    pub denoising_strength: Option<f64>,
}

impl HiresRequest {
    const NAMES: HiresFieldNames = HiresFieldNames {
        size: "hires.scale",
        steps: "hires.steps",
        strength: "hires.denoising_strength",
    };

    /// The gate's spec, or the field that names no upscaler or size.
    fn to_spec(&self) -> Result<HiresSpec, ValidationError> {
        let name = self.upscaler.as_deref().unwrap_or("Latent");
        let upscaler = Upscaler::parse(name).ok_or_else(|| ValidationError::Invalid {
            field: "hires.upscaler",
            message: format!(
                "{name:?} is not one of {}",
                crate::engine_api::UPSCALER_NAMES.join(", ")
            ),
        })?;
        let side = |field: &'static str, v: Option<i64>| match v {
            None => Ok(0),
            Some(v) => usize::try_from(v).map_err(|_| ValidationError::Invalid {
                field,
                message: format!("must be 0 or more, got {v}"),
            }),
        };
        let (width, height) = (
            side("hires.width", self.width)?,
            side("hires.height", self.height)?,
        );
        let (size, names) = if width == 0 && height == 0 {
            (
                HiresSize::Scale(self.scale.unwrap_or(DEFAULT_SCALE)),
                Self::NAMES,
            )
        } else if self.scale.is_some() {
            return Err(ValidationError::Invalid {
                field: "hires.scale",
                message: "give a scale or a width/height, not both".into(),
            });
        } else {
            let size = if width != 0 {
                "hires.width"
            } else {
                "hires.height"
            };
            (
                HiresSize::Resize { width, height },
                HiresFieldNames {
                    size,
                    ..Self::NAMES
                },
            )
        };
        Ok(HiresSpec {
            upscaler,
            size,
            steps: self.steps.unwrap_or(0),
            denoising_strength: self
                .denoising_strength
                .unwrap_or(DEFAULT_DENOISING_STRENGTH),
            names,
        })
    }
}

impl CreateJob {
    /// The job this request asks for; `init` holds its decoded images
    /// (`init_image`, `mask`), which the handler resolves.
    pub fn into_spec(self, init: Option<InitSpec>) -> Result<JobSpec, ValidationError> {
        let hires = self.hires.as_ref().map(HiresRequest::to_spec).transpose()?;
        let clip_skip = match self.clip_skip {
            None => 0,
            Some(n) => usize::try_from(n).map_err(|_| ValidationError::Invalid {
                field: "clip_skip",
                message: format!("must be 0 or more, got {n}"),
            })?,
        };
        let prompt_syntax = self.prompt_syntax.map_or(PromptSyntax::Plain, Into::into);
        let mut loras: Vec<LoraRef> = self
            .loras
            .unwrap_or_default()
            .into_iter()
            .map(|l| {
                let weight = l.weight.unwrap_or(1.0);
                LoraRef {
                    name: l.name,
                    te_weight: weight,
                    unet_weight: l.unet_weight.unwrap_or(weight),
                }
            })
            .collect();
        // A1111's syntax includes its `<lora:name:weight>` tags: out of the
        // prompt, after the listed LoRAs (the negative prompt is not parsed,
        // as A1111). Plain text keeps them as text.
        let (prompt, loras_field) = match prompt_syntax {
            PromptSyntax::A1111 => {
                let (prompt, tagged) = split_prompt_tags(&self.prompt)?;
                let field = if loras.is_empty() && !tagged.is_empty() {
                    "prompt"
                } else {
                    "loras"
                };
                loras.extend(tagged);
                (prompt, field)
            }
            PromptSyntax::Plain => (self.prompt, "loras"),
        };
        Ok(JobSpec {
            prompt_syntax,
            clip_skip,
            init,
            hires,
            negative_prompt: self.negative_prompt.unwrap_or_default(),
            seed: self.seed,
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            sampler: self.sampler,
            schedule_type: self.schedule_type,
            width: self.width,
            height: self.height,
            batch_size: self.batch_size,
            model: self.model,
            loras,
            loras_field,
            ..JobSpec::new(prompt, FieldNames::NATIVE)
        })
    }
}

/// Answer to `POST /api/v1/jobs`.
#[derive(Serialize, ToSchema)]
pub struct JobAccepted {
    /// The new job's id.
    #[schema(value_type = uuid::Uuid)]
    pub id: JobId,
    /// `queued`.
    pub status: JobStatus,
    /// Jobs that will run before this one.
    pub queue_position: Option<usize>,
}

/// One image of a job, with where to fetch it.
#[derive(Serialize, ToSchema)]
pub struct ImageView {
    /// Image id.
    #[schema(value_type = uuid::Uuid)]
    pub id: ImageId,
    /// `/api/v1/images/{id}`.
    pub url: String,
    /// Seed it was generated from.
    pub seed: u64,
    /// The A1111 infotext in the PNG's `parameters` chunk.
    pub infotext: String,
}

/// A job's state as the native API shows it.
#[derive(Serialize, ToSchema)]
pub struct JobView {
    /// Job id.
    #[schema(value_type = uuid::Uuid)]
    pub id: JobId,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: JobStatus,
    /// Jobs ahead of this one, while queued.
    pub queue_position: Option<usize>,
    /// Steps done and total, once running.
    pub progress: Option<StepProgress>,
    /// Seconds until the running job's last step, from the pace so far
    /// (null while queued, before the first step, and once finished).
    pub eta_seconds: Option<f64>,
    /// While running: the latest live preview of this job's latents, as a
    /// `data:image/png;base64,...` URL (A1111's "Approx cheap", latent size).
    pub preview: Option<String>,
    /// A cancel was asked for while running.
    pub cancel_requested: bool,
    /// Why it failed.
    pub error: Option<JobFailure>,
    /// Images, once succeeded.
    pub images: Vec<ImageView>,
    /// Settings the job runs with.
    pub params: JobParams,
    /// Unix time of submission.
    pub created_at: f64,
    /// Unix time it started running.
    pub started_at: Option<f64>,
    /// Unix time it finished.
    pub finished_at: Option<f64>,
    /// Phase durations in seconds, once finished.
    pub timings: Option<JobTimings>,
}

impl JobView {
    /// This view with a live preview PNG (see [`JobView::preview`]).
    pub fn with_preview(mut self, png: Option<&[u8]>) -> Self {
        self.preview = png.map(|png| {
            let base64 = base64::engine::general_purpose::STANDARD.encode(png);
            format!("data:image/png;base64,{base64}")
        });
        self
    }
}

/// Seconds left for a running job: the time per step so far times the steps left.
fn eta_seconds(s: &JobSnapshot) -> Option<f64> {
    let progress = s.progress.filter(|p| p.step > 0 && p.total >= p.step)?;
    if s.status != JobStatus::Running {
        return None;
    }
    let elapsed = (crate::jobs::job::unix_now() - s.started_at?).max(0.0);
    Some(elapsed / progress.step as f64 * (progress.total - progress.step) as f64)
}

impl From<JobSnapshot> for JobView {
    fn from(s: JobSnapshot) -> Self {
        Self {
            eta_seconds: eta_seconds(&s),
            preview: None,
            id: s.id,
            status: s.status,
            queue_position: s.queue_position,
            progress: s.progress,
            cancel_requested: s.cancel_requested,
            error: s.error,
            images: s
                .images
                .into_iter()
                .map(|i| ImageView {
                    url: format!("/api/v1/images/{}", i.id),
                    id: i.id,
                    seed: i.seed,
                    infotext: i.infotext,
                })
                .collect(),
            params: s.params,
            created_at: s.created_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            timings: s.timings,
        }
    }
}

/// A served model, with its defaults once it has been loaded.
#[derive(Serialize, ToSchema)]
pub struct ModelView {
    /// Model name (its path below `--models-dir`, or the folder's or hub
    /// repo's name): what a job's `model` takes.
    pub id: String,
    /// SHA-256 of the checkpoint file, or of a diffusers folder's UNet
    /// weights (null until hashed, and for a hub repo id).
    pub sha256: Option<String>,
    /// True for the model jobs without `model` run on.
    pub default: bool,
    /// True while it is loaded.
    pub loaded: bool,
    /// Native width (null until first loaded).
    pub native_width: Option<usize>,
    /// Native height (null until first loaded).
    pub native_height: Option<usize>,
    /// Default steps (null until first loaded).
    pub default_steps: Option<usize>,
    /// Default guidance scale (null until first loaded).
    pub default_cfg_scale: Option<f64>,
    /// Sizes must be multiples of this (null until first loaded).
    pub vae_scale_factor: Option<usize>,
}

/// `GET /api/v1/models`.
#[derive(Serialize, ToSchema)]
pub struct ModelList {
    /// The served models, by name.
    pub models: Vec<ModelView>,
}

/// A sampler, by id and A1111 label, with the schedule types it runs with.
#[derive(Serialize, ToSchema)]
pub struct SamplerView {
    /// Machine id (`euler_ancestral`...), what `sampler` takes.
    pub id: String,
    /// A1111 label (`Euler a`...), also accepted.
    pub label: String,
    /// The schedule types `schedule_type` may name with this sampler, the
    /// first (`automatic`) its own.
    pub schedule_types: Vec<ScheduleTypeView>,
}

/// A schedule type, by id and A1111 label.
#[derive(Serialize, ToSchema)]
pub struct ScheduleTypeView {
    /// Machine id (`karras`...), what `schedule_type` takes.
    pub id: String,
    /// A1111 label (`Karras`...), also accepted.
    pub label: String,
}

/// `GET /api/v1/jobs` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobListQuery {
    /// Most jobs to return, newest first (1 to 100, default 30).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
}

/// `GET /api/v1/jobs`: the caller's jobs, newest first.
#[derive(Serialize, ToSchema)]
pub struct JobList {
    /// Queued, running and finished jobs whose results are kept, newest first.
    pub jobs: Vec<JobView>,
}

/// `GET /api/v1/limits`: the bounds a job must keep, so a client can check
/// before it submits (the server still checks).
#[derive(Serialize, ToSchema)]
pub struct LimitsView {
    /// Largest width in pixels.
    pub max_width: usize,
    /// Largest height in pixels.
    pub max_height: usize,
    /// Largest width × height.
    pub max_pixels: usize,
    /// Most steps.
    pub max_steps: usize,
    /// Most images per job.
    pub max_batch: usize,
    /// Longest prompt, in characters.
    pub max_prompt_chars: usize,
    /// Largest request body in bytes (init images travel in it, base64).
    pub max_body_bytes: usize,
    /// Largest square size one image of the default model fits in memory
    /// (within the limits above); null while the model loads.
    pub largest_square: Option<usize>,
}

/// One server-sent event of `GET /api/v1/jobs/{id}/events`.
#[derive(Serialize, ToSchema)]
pub struct JobEvent {
    /// `state` (the status changed) or `progress` (a step or a queue move).
    pub event: String,
    /// The job as JSON, shaped like [`JobView`].
    pub data: String,
}
