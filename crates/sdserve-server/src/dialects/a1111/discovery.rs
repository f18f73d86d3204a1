//! A1111's discovery routes for what sdserve has few or none of: LoRAs,
//! embeddings, VAEs, hypernetworks, styles, face restorers, Real-ESRGAN models,
//! the image and latent upscalers of the hires fix, and the command-line flags.
//! Clients (webuiapi, Discord bots, Open WebUI) call these at start and treat
//! a 404 as a broken server, so each answers A1111's type: a list (empty where
//! sdserve has nothing of the kind), and `null` for the `refresh-*` routes, as
//! A1111's handlers return nothing. Nothing listed here is accepted by a
//! request unless sdserve implements it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{A1111Errors, A1111};
use crate::engine_api::{Upscaler, UPSCALER_NAMES};
use crate::error::Rejection;
use crate::state::AppState;

/// One LoRA of `GET /sdapi/v1/loras` (A1111's Lora extension's shape).
#[derive(Serialize, ToSchema)]
pub struct LoraItem {
    /// File stem, what `<lora:name:weight>` takes.
    pub name: String,
    /// Alias from the file's metadata.
    pub alias: String,
    /// The file.
    pub path: String,
    /// The file's training metadata.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// The `.safetensors` files of `--lora-dir` (none without it). `alias` is
/// kohya's `ss_output_name` when the file has one, else the name, as A1111.
#[utoipa::path(get, path = "/sdapi/v1/loras", tag = "a1111",
    responses((status = 200, description = "LoRAs of --lora-dir", body = Vec<LoraItem>), A1111Errors))]
pub async fn loras(State(state): State<Arc<AppState>>) -> Json<Vec<LoraItem>> {
    let entries = state.lora_entries().await;
    Json(
        entries
            .into_iter()
            .map(|e| LoraItem {
                alias: e
                    .metadata
                    .get("ss_output_name")
                    .cloned()
                    .unwrap_or_else(|| e.name.clone()),
                path: e.path.display().to_string(),
                metadata: e
                    .metadata
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect(),
                name: e.name,
            })
            .collect(),
    )
}

/// One textual-inversion embedding of `GET /sdapi/v1/embeddings`.
#[derive(Serialize, ToSchema)]
pub struct EmbeddingItem {
    /// Training steps, if known.
    pub step: Option<i64>,
    /// Hash of the checkpoint it was trained on, if known.
    pub sd_checkpoint: Option<String>,
    /// Name of that checkpoint, if known.
    pub sd_checkpoint_name: Option<String>,
    /// Width of each vector.
    pub shape: i64,
    /// Number of vectors.
    pub vectors: i64,
}

/// `GET /sdapi/v1/embeddings` answer.
#[derive(Serialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// Embeddings loaded for the current model, by name.
    pub loaded: BTreeMap<String, EmbeddingItem>,
    /// Embeddings skipped (incompatible with the current model), by name.
    pub skipped: BTreeMap<String, EmbeddingItem>,
}

/// Textual-inversion embeddings of `--embeddings-dir` for the default model:
/// those it loaded, and the files it skipped (another model family's widths,
/// unreadable files). Empty while the default model is not loaded.
#[utoipa::path(get, path = "/sdapi/v1/embeddings", tag = "a1111",
    responses((status = 200, description = "Embeddings", body = EmbeddingsResponse), A1111Errors))]
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
) -> Result<Json<EmbeddingsResponse>, Rejection<A1111>> {
    let models = state.models()?;
    let list = models
        .pool()
        .peek(&models.default_name(), |backend| backend.embeddings())
        .unwrap_or_default();
    let item = |vectors: usize, shape: usize| EmbeddingItem {
        step: None,
        sd_checkpoint: None,
        sd_checkpoint_name: None,
        shape: shape as i64,
        vectors: vectors as i64,
    };
    Ok(Json(EmbeddingsResponse {
        loaded: list
            .loaded
            .iter()
            .map(|e| (e.name.clone(), item(e.vectors, e.width)))
            .collect(),
        skipped: list
            .skipped
            .keys()
            .map(|name| (name.clone(), item(0, 0)))
            .collect(),
    }))
}

/// One VAE of `GET /sdapi/v1/sd-vae`.
#[derive(Serialize, ToSchema)]
pub struct SdVaeItem {
    /// What `sd_vae` takes.
    pub model_name: String,
    /// The file.
    pub filename: String,
}

/// Separate VAE files: none (each checkpoint runs with its own VAE, which is
/// what `sd_vae: "Automatic"` means).
#[utoipa::path(get, path = "/sdapi/v1/sd-vae", tag = "a1111",
    responses((status = 200, description = "VAE files (none)", body = Vec<SdVaeItem>), A1111Errors))]
pub async fn sd_vae() -> Json<Vec<SdVaeItem>> {
    Json(Vec::new())
}

/// One image upscaler of `GET /sdapi/v1/upscalers`.
#[derive(Serialize, ToSchema)]
pub struct UpscalerItem {
    /// What `hr_upscaler` takes.
    pub name: String,
    /// Model name (none for the built-in resamplers).
    pub model_name: Option<String>,
    /// Model file (none for the built-in resamplers).
    pub model_path: Option<String>,
    /// Model download URL (none).
    pub model_url: Option<String>,
    /// Nominal scale (A1111 reports 4 for its built-in resamplers).
    pub scale: Option<f64>,
}

/// The image upscalers of the hires fix: A1111's built-in ones that need no
/// model (`None`, `Lanczos`, `Nearest`), with A1111's fields and values.
#[utoipa::path(get, path = "/sdapi/v1/upscalers", tag = "a1111",
    responses((status = 200, description = "Image upscalers", body = Vec<UpscalerItem>), A1111Errors))]
pub async fn upscalers() -> Json<Vec<UpscalerItem>> {
    Json(
        image_upscalers()
            .iter()
            .map(|name| UpscalerItem {
                name: (*name).to_string(),
                model_name: None,
                model_path: None,
                model_url: None,
                scale: Some(4.0),
            })
            .collect(),
    )
}

/// The image upscalers listed by `GET /sdapi/v1/upscalers`.
fn image_upscalers() -> Vec<&'static str> {
    upscalers_where(|u| matches!(u, Upscaler::Image(_)))
}

/// The names of [`UPSCALER_NAMES`] whose upscaler passes `keep`.
fn upscalers_where(keep: fn(Upscaler) -> bool) -> Vec<&'static str> {
    UPSCALER_NAMES
        .into_iter()
        .filter(|name| Upscaler::parse(name).is_some_and(keep))
        .collect()
}

/// The latent upscale modes listed by `GET /sdapi/v1/latent-upscale-modes`:
/// only those sdserve's hires fix implements (A1111 lists more).
fn latent_upscale_modes_names() -> Vec<&'static str> {
    upscalers_where(|u| matches!(u, Upscaler::Latent(_)))
}

/// One mode of `GET /sdapi/v1/latent-upscale-modes`.
#[derive(Serialize, ToSchema)]
pub struct LatentUpscalerModeItem {
    /// What `hr_upscaler` takes.
    pub name: String,
}

/// The latent upscale modes of the hires fix.
#[utoipa::path(get, path = "/sdapi/v1/latent-upscale-modes", tag = "a1111",
    responses((status = 200, description = "Latent upscale modes", body = Vec<LatentUpscalerModeItem>),
        A1111Errors))]
pub async fn latent_upscale_modes() -> Json<Vec<LatentUpscalerModeItem>> {
    Json(
        latent_upscale_modes_names()
            .iter()
            .map(|name| LatentUpscalerModeItem {
                name: (*name).to_string(),
            })
            .collect(),
    )
}

/// One hypernetwork of `GET /sdapi/v1/hypernetworks`.
#[derive(Serialize, ToSchema)]
pub struct HypernetworkItem {
    /// Name.
    pub name: String,
    /// The file.
    pub path: Option<String>,
}

/// Hypernetworks: none.
#[utoipa::path(get, path = "/sdapi/v1/hypernetworks", tag = "a1111",
    responses((status = 200, description = "Hypernetworks (none)", body = Vec<HypernetworkItem>), A1111Errors))]
pub async fn hypernetworks() -> Json<Vec<HypernetworkItem>> {
    Json(Vec::new())
}

/// One face restorer of `GET /sdapi/v1/face-restorers`.
#[derive(Serialize, ToSchema)]
pub struct FaceRestorerItem {
    /// Name.
    pub name: String,
    /// Its model folder.
    pub cmd_dir: Option<String>,
}

/// Face restorers: none (`restore_faces: true` is refused).
#[utoipa::path(get, path = "/sdapi/v1/face-restorers", tag = "a1111",
    responses((status = 200, description = "Face restorers (none)", body = Vec<FaceRestorerItem>), A1111Errors))]
pub async fn face_restorers() -> Json<Vec<FaceRestorerItem>> {
    Json(Vec::new())
}

/// One model of `GET /sdapi/v1/realesrgan-models`.
#[derive(Serialize, ToSchema)]
pub struct RealesrganItem {
    /// Name.
    pub name: String,
    /// The file.
    pub path: Option<String>,
    /// Its scale.
    pub scale: Option<i64>,
}

/// Real-ESRGAN models: none.
#[utoipa::path(get, path = "/sdapi/v1/realesrgan-models", tag = "a1111",
    responses((status = 200, description = "Real-ESRGAN models (none)", body = Vec<RealesrganItem>), A1111Errors))]
pub async fn realesrgan_models() -> Json<Vec<RealesrganItem>> {
    Json(Vec::new())
}

/// One style of `GET /sdapi/v1/prompt-styles`.
#[derive(Serialize, ToSchema)]
pub struct PromptStyleItem {
    /// What `styles` takes.
    pub name: String,
    /// Text added to the prompt.
    pub prompt: Option<String>,
    /// Text added to the negative prompt.
    pub negative_prompt: Option<String>,
}

/// Prompt styles: none (a non-empty `styles` is refused).
#[utoipa::path(get, path = "/sdapi/v1/prompt-styles", tag = "a1111",
    responses((status = 200, description = "Prompt styles (none)", body = Vec<PromptStyleItem>), A1111Errors))]
pub async fn prompt_styles() -> Json<Vec<PromptStyleItem>> {
    Json(Vec::new())
}

/// A1111's command-line flags that clients read to learn what a server does,
/// answered for sdserve: the API is on and there is no web UI, no low-memory
/// modes or attention libraries to report, and no folders of LoRAs,
/// embeddings, hypernetworks or VAEs. Credentials are never echoed (A1111
/// returns `api_auth` as given; sdserve leaves the key out).
#[utoipa::path(get, path = "/sdapi/v1/cmd-flags", tag = "a1111",
    responses((status = 200, description = "Flags", body = Object), A1111Errors))]
pub async fn cmd_flags() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "api": true,
        "nowebui": true,
        "api_log": false,
        "medvram": false,
        "medvram_sdxl": false,
        "lowvram": false,
        "lowram": false,
        "xformers": false,
        "disable_safe_unpickle": false,
        "lora_dir": null,
        "embeddings_dir": null,
        "hypernetwork_dir": null,
        "vae_dir": null,
    }))
}

/// Rescan the VAE files (there are none to find; answers `null` as A1111).
#[utoipa::path(post, path = "/sdapi/v1/refresh-vae", tag = "a1111",
    responses((status = 200, description = "Done (null)", body = serde_json::Value), A1111Errors))]
pub async fn refresh_vae() -> Json<serde_json::Value> {
    Json(serde_json::Value::Null)
}

/// Rescan the LoRA files (there are none to find; answers `null` as A1111).
#[utoipa::path(post, path = "/sdapi/v1/refresh-loras", tag = "a1111",
    responses((status = 200, description = "Done (null)", body = serde_json::Value), A1111Errors))]
pub async fn refresh_loras() -> Json<serde_json::Value> {
    Json(serde_json::Value::Null)
}

/// Reload the embeddings (there are none to find; answers `null` as A1111).
#[utoipa::path(post, path = "/sdapi/v1/refresh-embeddings", tag = "a1111",
    responses((status = 200, description = "Done (null)", body = serde_json::Value), A1111Errors))]
pub async fn refresh_embeddings() -> Json<serde_json::Value> {
    Json(serde_json::Value::Null)
}
