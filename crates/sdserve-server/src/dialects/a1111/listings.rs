//! A1111's discovery and settings endpoints, which clients call before they
//! generate: models (listing, refresh, switching the default through
//! `options`), samplers, schedulers, options, memory and scripts.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::wire;
use super::{A1111Errors, A1111};
use crate::engine_api::{PromptSyntax, SamplerId, ScheduleType};
use crate::error::{ApiError, Rejection};
use crate::extract::parse_json;
use crate::models::Listed;
use crate::state::AppState;
use crate::validation::ValidationError;

/// One checkpoint of `GET /sdapi/v1/sd-models`, named as A1111 names it.
#[derive(Serialize, ToSchema)]
pub struct SdModel {
    /// `name [shorthash]` (just the name while the hash is being computed):
    /// what `sd_model_checkpoint` takes (so do the name, `model_name` and hashes).
    pub title: String,
    /// The name without extension, `/` replaced by `_`.
    pub model_name: String,
    /// Short hash: the first 10 hex digits of `sha256` (null until hashed).
    pub hash: Option<String>,
    /// SHA-256 of the checkpoint file; for a diffusers folder, of its UNet
    /// weights file (null until hashed, and for a hub repo id).
    pub sha256: Option<String>,
    /// The checkpoint file or model folder (or hub repo id).
    pub filename: String,
    /// Config file (none).
    pub config: Option<String>,
}

impl From<&Listed> for SdModel {
    fn from(m: &Listed) -> Self {
        Self {
            title: m.title(),
            model_name: m.entry.model_name.clone(),
            hash: m.short_hash().map(str::to_string),
            sha256: m.sha256.clone(),
            filename: m.entry.source.clone(),
            config: None,
        }
    }
}

/// List the checkpoints (`--models-dir` and `--model`), with their hashes as known now.
#[utoipa::path(get, path = "/sdapi/v1/sd-models", tag = "a1111",
    responses((status = 200, description = "Checkpoints", body = Vec<SdModel>), A1111Errors))]
pub async fn sd_models(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<SdModel>>, Rejection<A1111>> {
    let models = state.models()?;
    Ok(Json(
        models.catalog().list().iter().map(SdModel::from).collect(),
    ))
}

/// Scan `--models-dir` again; new files are hashed in the background.
#[utoipa::path(post, path = "/sdapi/v1/refresh-checkpoints", tag = "a1111",
    responses((status = 200, description = "Rescanned (null, as A1111 answers)", body = serde_json::Value),
        A1111Errors))]
pub async fn refresh_checkpoints(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, Rejection<A1111>> {
    let models = state.models()?.clone();
    tokio::task::spawn_blocking(move || models.catalog().refresh())
        .await
        .map_err(|e| ApiError::Internal(format!("rescan task failed: {e}")))?
        .map_err(|e| ApiError::Internal(format!("cannot read the models folder: {e}")))?;
    Ok(Json(serde_json::Value::Null))
}

/// One sampler of `GET /sdapi/v1/samplers`.
#[derive(Serialize, ToSchema)]
pub struct SamplerItem {
    /// A1111 label, what `sampler_name` takes.
    pub name: String,
    /// Other accepted names (the machine id, and the legacy names carrying
    /// a schedule, such as `DPM++ 2M Karras`).
    pub aliases: Vec<String>,
    /// Sampler options (none).
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// List the samplers by A1111 label.
#[utoipa::path(get, path = "/sdapi/v1/samplers", tag = "a1111",
    responses((status = 200, description = "Samplers", body = Vec<SamplerItem>), A1111Errors))]
pub async fn samplers() -> Json<Vec<SamplerItem>> {
    Json(
        SamplerId::ALL
            .iter()
            .map(|s| SamplerItem {
                name: s.label().to_string(),
                aliases: [s.id().to_string()]
                    .into_iter()
                    .chain(
                        [ScheduleType::Karras, ScheduleType::Exponential]
                            .into_iter()
                            .filter(|t| s.schedule_types().contains(t))
                            .map(|t| format!("{} {}", s.label(), t.label())),
                    )
                    .collect(),
                options: Default::default(),
            })
            .collect(),
    )
}

/// One schedule of `GET /sdapi/v1/schedulers`.
#[derive(Serialize, ToSchema)]
pub struct SchedulerItem {
    /// What `scheduler` takes.
    pub name: String,
    /// Display label.
    pub label: String,
    /// Other names (none).
    pub aliases: Option<Vec<String>>,
    /// Karras rho (7), -1 for the others.
    pub default_rho: f64,
    /// Always false.
    pub need_inner_model: bool,
}

/// List the schedule types (`automatic`, `karras`, `exponential`,
/// `sgm_uniform`, `beta`); DDIM and PLMS take only `automatic` and
/// `sgm_uniform`, LCM only `automatic`.
#[utoipa::path(get, path = "/sdapi/v1/schedulers", tag = "a1111",
    responses((status = 200, description = "Schedulers", body = Vec<SchedulerItem>), A1111Errors))]
pub async fn schedulers() -> Json<Vec<SchedulerItem>> {
    Json(
        ScheduleType::ALL
            .iter()
            .map(|t| SchedulerItem {
                name: t.id().into(),
                label: t.label().into(),
                aliases: None,
                default_rho: if *t == ScheduleType::Karras {
                    7.0
                } else {
                    -1.0
                },
                need_inner_model: false,
            })
            .collect(),
    )
}

/// Current settings, under A1111's keys, for the ones clients read:
/// `sd_model_checkpoint` is the default model's title and `sd_checkpoint_hash`
/// its sha256; the rest are the values sdserve runs with (which are A1111's
/// defaults: clip skip 1, the checkpoint's own VAE, PNG, each sampler's own
/// eta, no noise-seed delta, no live previews).
#[utoipa::path(get, path = "/sdapi/v1/options", tag = "a1111",
    responses((status = 200, description = "Options", body = Object), A1111Errors))]
pub async fn get_options(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, Rejection<A1111>> {
    let models = state.models()?;
    let default = models.default_model();
    let text = state.a1111_text();
    let mut options = serde_json::json!({
        "sd_model_checkpoint": default.as_ref().map(Listed::title),
        "sd_checkpoint_hash": default.and_then(|m| m.sha256),
        "CLIP_stop_at_last_layers": text.clip_skip + 1,
        "emphasis": match text.prompt_syntax {
            PromptSyntax::A1111 => "Original",
            PromptSyntax::Plain => "None",
        },
    });
    if let Some(map) = options.as_object_mut() {
        map.extend(FIXED_OPTIONS.iter().map(|(k, v)| ((*k).to_string(), v())));
    }
    Ok(Json(options))
}

/// A fixed option's value (a function: JSON values are not `const`).
pub type FixedValue = fn() -> serde_json::Value;

/// The settings `GET /sdapi/v1/options` reports at values sdserve does not
/// change: a `POST` may name them (clients send back what they read), only
/// at these values.
pub const FIXED_OPTIONS: &[(&str, FixedValue)] = &[
    ("sd_vae", || "Automatic".into()),
    ("sd_lora", || "None".into()),
    ("eta_noise_seed_delta", || 0.into()),
    ("eta_ddim", || 0.0.into()),
    ("eta_ancestral", || 1.0.into()),
    ("s_churn", || 0.0.into()),
    ("s_min_uncond", || 0.0.into()),
    ("s_tmin", || 0.0.into()),
    ("s_tmax", || 0.0.into()),
    ("s_noise", || 1.0.into()),
    ("samples_format", || "png".into()),
    ("enable_pnginfo", || true.into()),
    ("add_model_hash_to_info", || true.into()),
    ("add_model_name_to_info", || true.into()),
    ("live_previews_enable", || false.into()),
    ("show_progress_every_n_steps", || (-1).into()),
];

/// The values a `POST` may give a fixed option: its own (numbers by value,
/// `0` equal to `0.0`), `sd_vae`'s other names for the checkpoint's own VAE,
/// and null (leave it).
pub fn fixed_option_values(name: &str) -> Option<Vec<serde_json::Value>> {
    let (_, value) = FIXED_OPTIONS.iter().find(|(k, _)| *k == name)?;
    let mut values = vec![value(), serde_json::Value::Null];
    if name == "sd_vae" {
        values.extend(["None".into(), "".into()]);
    }
    Some(values)
}

/// Refuses an options key sdserve does not have, or a fixed one at another
/// value, naming it; `sd_checkpoint_hash` may only be null (the hash follows
/// the checkpoint).
fn check_other_options(
    other: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), ValidationError> {
    let same = |a: &serde_json::Value, b: &serde_json::Value| match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    };
    for (key, value) in other {
        let allowed = match key.as_str() {
            "sd_checkpoint_hash" => Some(vec![serde_json::Value::Null]),
            name => fixed_option_values(name),
        };
        let message = match allowed {
            Some(values) if values.iter().any(|v| same(v, value)) => continue,
            Some(values) => format!(
                "sdserve holds {key} at {}; got {value}",
                values[0]
            ),
            None => format!(
                "{key} is not a setting sdserve has; it takes sd_model_checkpoint, CLIP_stop_at_last_layers, emphasis, and the others GET /sdapi/v1/options lists at the values it lists"
            ),
        };
        return Err(ValidationError::Invalid {
            field: "options",
            message,
        });
    }
    Ok(())
}

/// `POST /sdapi/v1/options` body: A1111 settings. The other settings `GET`
/// reports are accepted at the values it reports; anything else is a 422
/// naming the key.
#[derive(Deserialize, ToSchema)]
pub struct OptionsRequest {
    /// The default checkpoint from now on: a title, name, `model_name` or hash
    /// from `GET /sdapi/v1/sd-models`; null leaves it. The answer comes once it
    /// is loaded.
    #[serde(default)]
    pub sd_model_checkpoint: Option<String>,
    /// Clip skip for A1111 requests from now on (1: the last layer).
    #[serde(
        default,
        rename = "CLIP_stop_at_last_layers",
        deserialize_with = "crate::extract::whole_number::option_i64"
    )]
    #[schema(minimum = 0, maximum = 12)]
    pub clip_stop_at_last_layers: Option<i64>,
    /// How A1111 requests read prompts from now on: `Original` (emphasis
    /// syntax) or `None` (plain text).
    #[serde(default)]
    pub emphasis: Option<wire::Emphasis>,
    /// Every other key, checked against the fixed settings.
    #[serde(flatten)]
    #[schema(ignore)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Accepts settings; `sd_model_checkpoint` switches the default model (loaded
/// before the answer, as A1111 does; 404 for an unknown one);
/// `CLIP_stop_at_last_layers` and `emphasis` apply to later A1111 requests
/// that do not override them. The fixed settings `GET` reports are accepted
/// at their values; any other key or value is a 422 naming it, and nothing
/// applies.
#[utoipa::path(post, path = "/sdapi/v1/options", tag = "a1111", request_body = OptionsRequest,
    responses((status = 200, description = "Accepted (null, as A1111 answers)", body = serde_json::Value),
        A1111Errors))]
pub async fn set_options(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, Rejection<A1111>> {
    let options: OptionsRequest = parse_json(body, state.config.limits.max_body_bytes)?;
    // Both checked before either applies.
    let clip_skip = options
        .clip_stop_at_last_layers
        .map(|v| wire::clip_skip("CLIP_stop_at_last_layers", v))
        .transpose()
        .map_err(ApiError::from)?;
    let syntax = options.emphasis.map(PromptSyntax::from);
    check_other_options(&options.other).map_err(ApiError::from)?;
    {
        let mut text = state.a1111_text.lock().unwrap_or_else(|e| e.into_inner());
        text.clip_skip = clip_skip.unwrap_or(text.clip_skip);
        text.prompt_syntax = syntax.unwrap_or(text.prompt_syntax);
    }
    let models = state.models()?;
    if let Some(wanted) = options.sd_model_checkpoint {
        let model = models.resolve(Some(&wanted), "sd_model_checkpoint")?;
        let lease = models.acquire(model).await?;
        models.set_default(lease.name());
        tracing::info!(model = %lease.name(), "default model switched");
    }
    Ok(Json(serde_json::Value::Null))
}

/// RAM use of this machine (`/proc/meminfo`); no CUDA statistics.
#[utoipa::path(get, path = "/sdapi/v1/memory", tag = "a1111",
    responses((status = 200, description = "Memory", body = Object), A1111Errors))]
pub async fn memory() -> Json<serde_json::Value> {
    let meminfo = tokio::fs::read_to_string("/proc/meminfo")
        .await
        .unwrap_or_default();
    let field = |key: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
    };
    let ram = match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(free)) => serde_json::json!({
            "free": free, "used": total.saturating_sub(free), "total": total
        }),
        _ => serde_json::json!({ "error": "memory statistics unavailable" }),
    };
    Json(serde_json::json!({
        "ram": ram,
        "cuda": { "error": "not reported by sdserve" },
    }))
}

/// Scripts (none), which `webuiapi` asks for when it connects.
#[utoipa::path(get, path = "/sdapi/v1/scripts", tag = "a1111",
    responses((status = 200, description = "Script names", body = Object), A1111Errors))]
pub async fn scripts() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "txt2img": [], "img2img": [] }))
}
