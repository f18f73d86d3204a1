//! What a job is, as every dialect and the file store see it: its state machine
//! (`queued → running → succeeded | failed | cancelled`), its progress, its
//! images and its settings. [`JobSnapshot`] is both the in-memory state published
//! to waiters and the heart of the JSON record written beside the PNGs
//! (`record.rs` adds what only the server needs), so a status read after a
//! restart looks the same as one before.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::id::{ImageId, JobId};
use crate::engine_api::{
    GenerateRequest, HiresFix, HiresSize, LoraRef, PromptSyntax, SamplerId, SamplerName,
    ScheduleType, StepCount, Upscaler,
};

/// Where a job is in its life. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting in the queue.
    Queued,
    /// In a batch on the worker.
    Running,
    /// Finished; its images are on disk.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Stopped on request (or because its synchronous client went away).
    Cancelled,
}

impl JobStatus {
    /// True once the job can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The lowercase name used on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The settings a job runs with, after defaults and validation (the engine request, as data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobParams {
    /// Text prompt.
    pub prompt: String,
    /// Negative prompt ("" for none).
    pub negative_prompt: String,
    /// The requested seed; `null` means the engine drew one (see each image's seed).
    pub seed: Option<u64>,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale (1 or less: guidance off).
    pub cfg_scale: f64,
    /// Sampler id (`euler`, `euler_ancestral`, `dpmpp_2m`, `unipc`...; see
    /// `GET /api/v1/samplers`). Records written before schedule types may
    /// carry a legacy id with its schedule (`dpmpp_2m_karras`).
    pub sampler: String,
    /// Schedule type id (`automatic`, `karras`, `exponential`, `sgm_uniform`,
    /// `beta`); absent in records written before schedule types.
    #[serde(default = "automatic_schedule")]
    pub schedule_type: String,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Images generated from the seed in one noise draw.
    pub batch_size: usize,
    /// The model it runs on (its catalog name); absent in records written
    /// before models could be switched, which run on the default model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Image-to-image: the strength it ran with (absent for text-to-image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// Inpainting: the init image came with a mask.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inpainting: bool,
    /// Image `i` of the batch was seeded `seed + i` (A1111's batches).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seed_per_image: bool,
    /// The hires fix it runs (text-to-image only); `width` and `height` are the first pass's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hires: Option<HiresParams>,
    /// How the prompts were read: `plain` (absent) or `a1111`.
    #[serde(default, skip_serializing_if = "is_plain")]
    #[schema(value_type = String)]
    pub prompt_syntax: PromptSyntax,
    /// Final text-encoder layers left out (diffusers' `clip_skip`; 0 when absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub clip_skip: usize,
    /// LoRAs applied, in order (names in the server's `--lora-dir`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraParams>,
}

fn is_plain(syntax: &PromptSyntax) -> bool {
    *syntax == PromptSyntax::Plain
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One LoRA as a job records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LoraParams {
    /// File stem in the LoRA folder.
    pub name: String,
    /// Multiplier on the text encoders' layers.
    pub te_weight: f64,
    /// Multiplier on the UNet's layers.
    pub unet_weight: f64,
}

impl From<&LoraRef> for LoraParams {
    fn from(l: &LoraRef) -> Self {
        Self {
            name: l.name.clone(),
            te_weight: l.te_weight,
            unet_weight: l.unet_weight,
        }
    }
}

impl LoraParams {
    /// The engine's reference again.
    pub fn to_engine(&self) -> LoraRef {
        LoraRef {
            name: self.name.clone(),
            te_weight: self.te_weight,
            unet_weight: self.unet_weight,
        }
    }
}

/// A hires fix as a job records it: A1111's settings (the second pass runs
/// exactly `steps` steps, as A1111 does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HiresParams {
    /// Upscaler name, as A1111 spells it (`Latent`, `Lanczos`...).
    pub upscaler: String,
    /// Upscale factor; absent when the target is a size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// Target width (0: from the height and the aspect ratio); with `scale`, 0.
    #[serde(default)]
    pub resize_width: usize,
    /// Target height (0: from the width and the aspect ratio); with `scale`, 0.
    #[serde(default)]
    pub resize_height: usize,
    /// Second-pass steps (0: the first pass's).
    pub steps: usize,
    /// Second-pass denoising strength.
    pub denoising_strength: f64,
}

impl From<&HiresFix> for HiresParams {
    fn from(h: &HiresFix) -> Self {
        let (scale, resize_width, resize_height) = match h.size {
            HiresSize::Scale(scale) => (Some(scale), 0, 0),
            HiresSize::Resize { width, height } => (None, width, height),
        };
        Self {
            upscaler: h.upscaler.name().to_string(),
            scale,
            resize_width,
            resize_height,
            steps: h.steps,
            denoising_strength: h.denoising_strength,
        }
    }
}

impl HiresParams {
    /// The engine's settings again (fails on an upscaler this build lacks).
    pub fn to_engine(&self) -> Result<HiresFix, String> {
        let upscaler = Upscaler::parse(&self.upscaler)
            .ok_or_else(|| format!("unknown hires upscaler {:?}", self.upscaler))?;
        Ok(HiresFix {
            upscaler,
            size: match self.scale {
                Some(scale) => HiresSize::Scale(scale),
                None => HiresSize::Resize {
                    width: self.resize_width,
                    height: self.resize_height,
                },
            },
            steps: self.steps,
            denoising_strength: self.denoising_strength,
            step_count: StepCount::A1111,
        })
    }
}

/// The schedule type of records written before schedule types.
fn automatic_schedule() -> String {
    ScheduleType::Automatic.id().to_string()
}

impl From<&GenerateRequest> for JobParams {
    fn from(r: &GenerateRequest) -> Self {
        Self {
            prompt: r.prompt.clone(),
            negative_prompt: r.negative_prompt.clone(),
            seed: r.seed,
            steps: r.steps,
            cfg_scale: r.cfg_scale,
            sampler: r.sampler.id().to_string(),
            schedule_type: r.schedule_type.id().to_string(),
            width: r.width,
            height: r.height,
            batch_size: r.batch_size,
            model: None,
            strength: r.init.as_ref().map(|i| i.strength),
            inpainting: r.init.as_ref().is_some_and(|i| i.mask.is_some()),
            seed_per_image: r.seed_per_image,
            hires: r.hires.as_ref().map(HiresParams::from),
            prompt_syntax: r.prompt_syntax,
            clip_skip: r.clip_skip,
            loras: r.loras.iter().map(LoraParams::from).collect(),
        }
    }
}

impl JobParams {
    /// The sampler as the engine knows it (ids written by this server always parse).
    pub fn sampler_id(&self) -> Option<SamplerId> {
        self.sampling().map(|(sampler, _)| sampler)
    }

    /// The sampler and schedule type; a legacy sampler id's schedule stands
    /// when the record names none.
    pub fn sampling(&self) -> Option<(SamplerId, ScheduleType)> {
        let name: SamplerName = self.sampler.parse().ok()?;
        let schedule: ScheduleType = self.schedule_type.parse().ok()?;
        let schedule = match (schedule, name.schedule) {
            (ScheduleType::Automatic, Some(legacy)) => legacy,
            (schedule, _) => schedule,
        };
        Some((name.sampler, schedule))
    }

    /// The schedule type's A1111 label (`Karras`), as A1111 echoes `scheduler`.
    pub fn schedule_type_label(&self) -> String {
        self.sampling()
            .map_or(self.schedule_type.clone(), |(_, s)| s.label().to_string())
    }

    /// The engine request these settings stand for: the inverse of
    /// `From<&GenerateRequest>`, used to re-run a recorded job after a restart.
    /// Fails on a sampler id this build does not know, and for image-to-image
    /// jobs, whose init images live only in memory.
    pub fn to_request(&self) -> Result<GenerateRequest, String> {
        let (sampler, schedule_type) = self.sampling().ok_or_else(|| {
            format!(
                "unknown sampler {:?} or schedule type {:?}",
                self.sampler, self.schedule_type
            )
        })?;
        if self.strength.is_some() {
            return Err(
                "an image-to-image job's init image is not kept across restarts; submit it again"
                    .into(),
            );
        }
        Ok(GenerateRequest {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            seed: self.seed,
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            sampler,
            schedule_type,
            width: self.width,
            height: self.height,
            batch_size: self.batch_size,
            init: None,
            seed_per_image: self.seed_per_image,
            hires: self
                .hires
                .as_ref()
                .map(HiresParams::to_engine)
                .transpose()?,
            prompt_syntax: self.prompt_syntax,
            clip_skip: self.clip_skip,
            loras: self.loras.iter().map(LoraParams::to_engine).collect(),
        })
    }
}

/// Why a job failed, kept so a synchronous dialect can answer with the right status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The engine refused the request (a 4xx for the client).
    InvalidRequest,
    /// The engine failed while generating (a fault on our side).
    Generation,
    /// The worker broke (a fault on our side).
    Internal,
    /// An image or the job's record could not be written (disk full, output
    /// directory gone); none of its images are kept.
    Storage,
    /// The server stopped (crash, kill) while the job was unfinished, and its
    /// client (a synchronous dialect) could not come back for it.
    Interrupted,
}

impl FailureKind {
    /// The `reason` label of `sd_request_failures_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Generation => "generation",
            Self::Internal => "internal",
            Self::Storage => "storage",
            Self::Interrupted => "interrupted",
        }
    }
}

/// The error a failed job ended with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// Human-readable message.
    pub message: String,
}

/// One image of a finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageRecord {
    /// Image id: `GET /api/v1/images/{id}` and `GET /download/{id}` return its PNG.
    #[schema(value_type = uuid::Uuid)]
    pub id: ImageId,
    /// Seed the image was generated from.
    pub seed: u64,
    /// A1111 infotext stored in the PNG's `parameters` chunk.
    pub infotext: String,
}

/// Denoising progress of a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StepProgress {
    /// Steps done (0 before the first).
    pub step: usize,
    /// Total steps.
    pub total: usize,
}

/// Seconds spent in each phase of a finished job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobTimings {
    /// Waiting in the queue.
    pub queue: f64,
    /// Prompt encoding (for the whole batch the job ran in).
    pub text_encoding: f64,
    /// Denoising loop (for the whole batch).
    pub denoising: f64,
    /// VAE decoding (for the whole batch).
    pub decoding: f64,
    /// PNG encoding and writing of this job's images.
    pub encoding: f64,
    /// From submission to the end.
    pub total: f64,
}

/// The full state of one job at one moment; also the body of its on-disk record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobSnapshot {
    /// Job id.
    #[schema(value_type = uuid::Uuid)]
    pub id: JobId,
    /// Current state.
    pub status: JobStatus,
    /// Jobs that will run before this one (0: next); only while queued.
    pub queue_position: Option<usize>,
    /// Steps done and total; only once running.
    pub progress: Option<StepProgress>,
    /// True once a cancel was asked for a running job (it stops at the next step).
    pub cancel_requested: bool,
    /// Set when the job failed.
    pub error: Option<JobFailure>,
    /// Images of a succeeded job.
    pub images: Vec<ImageRecord>,
    /// Settings the job runs with.
    pub params: JobParams,
    /// Unix time of submission, in seconds.
    pub created_at: f64,
    /// Unix time the job started running.
    pub started_at: Option<f64>,
    /// Unix time the job reached a terminal state.
    pub finished_at: Option<f64>,
    /// Phase durations, once finished.
    pub timings: Option<JobTimings>,
}

impl JobSnapshot {
    /// The state of a job just accepted into the queue.
    pub fn queued(id: JobId, params: JobParams, queue_position: usize) -> Self {
        Self {
            id,
            status: JobStatus::Queued,
            queue_position: Some(queue_position),
            progress: None,
            cancel_requested: false,
            error: None,
            images: Vec::new(),
            params,
            created_at: unix_now(),
            started_at: None,
            finished_at: None,
            timings: None,
        }
    }
}

/// Seconds since the Unix epoch, as a float (0 if the clock is before 1970).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_map_back_to_the_whole_engine_request() {
        let base = GenerateRequest {
            prompt: "a cat".into(),
            negative_prompt: "dog".into(),
            seed: Some(42),
            steps: 7,
            cfg_scale: 6.5,
            sampler: SamplerId::Euler,
            schedule_type: ScheduleType::Automatic,
            width: 64,
            height: 128,
            batch_size: 3,
            init: None,
            seed_per_image: false,
            hires: None,
            prompt_syntax: PromptSyntax::A1111,
            clip_skip: 1,
            loras: Vec::new(),
        };
        for ((sampler, seed_per_image), schedule_type) in SamplerId::ALL
            .into_iter()
            .zip([true, false].into_iter().cycle())
            .zip(ScheduleType::ALL.into_iter().cycle())
        {
            let request = GenerateRequest {
                sampler,
                schedule_type,
                seed_per_image,
                ..base.clone()
            };
            let params = JobParams::from(&request);
            let json = serde_json::to_string(&params).unwrap();
            let back: JobParams = serde_json::from_str(&json).unwrap();
            assert_eq!(back.to_request().unwrap(), request);
        }
        let mut params = JobParams::from(&GenerateRequest { seed: None, ..base });
        assert_eq!(params.to_request().unwrap().seed, None);
        // Records from before schedule types: a legacy id, no schedule_type.
        let mut old = serde_json::to_value(&params).unwrap();
        old["sampler"] = "dpmpp_2m_karras".into();
        old.as_object_mut().unwrap().remove("schedule_type");
        let old: JobParams = serde_json::from_value(old).unwrap();
        let request = old.to_request().unwrap();
        assert_eq!(
            (request.sampler, request.schedule_type),
            (SamplerId::DpmPp2m, ScheduleType::Karras)
        );
        params.sampler = "no such".into();
        assert!(params.to_request().unwrap_err().contains("no such"));
    }

    #[test]
    fn image_to_image_params_record_strength_and_mask_but_do_not_rerun() {
        use crate::engine_api::{DecodedImage, GrayImage, ImageToImage};
        use std::sync::Arc;
        let image = Arc::new(DecodedImage {
            width: 8,
            height: 8,
            rgb: vec![0; 192],
        });
        let mask = Arc::new(GrayImage {
            width: 8,
            height: 8,
            luma: vec![255; 64],
        });
        let request = GenerateRequest {
            prompt: "a cat".into(),
            negative_prompt: String::new(),
            seed: Some(1),
            steps: 4,
            cfg_scale: 7.0,
            sampler: SamplerId::Euler,
            schedule_type: ScheduleType::Automatic,
            width: 8,
            height: 8,
            batch_size: 1,
            init: Some(ImageToImage {
                image,
                mask: Some(mask),
                strength: 0.6,
                resize_latents: false,
                overlay: None,
                paste: None,
            }),
            seed_per_image: false,
            hires: None,
            prompt_syntax: PromptSyntax::Plain,
            clip_skip: 0,
            loras: Vec::new(),
        };
        let params = JobParams::from(&request);
        assert_eq!((params.strength, params.inpainting), (Some(0.6), true));
        let json = serde_json::to_value(&params).unwrap();
        assert_eq!(json["strength"], 0.6);
        assert!(params.to_request().unwrap_err().contains("init image"));
    }
}
