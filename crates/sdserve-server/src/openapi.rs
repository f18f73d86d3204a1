//! The OpenAPI document, generated from the handlers' `#[utoipa::path]`
//! annotations and the wire types' `ToSchema` derives: one [`ApiDoc`] lists every
//! route. [`document`] then writes the server's configured limits (and the
//! model's size multiple) into the request schemas and declares the security
//! schemes when auth is on, so clients and fuzzers see the real bounds.

use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::config::Limits;
use crate::dialects::{a1111, native, openai, simple};
use crate::engine_api::{ModelInfo, SamplerId};
use crate::ops;

/// Every route and schema of the server.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sdserve",
        description = "Stable Diffusion serving: one job queue behind a native async API, \
            AUTOMATIC1111-compatible, OpenAI-images-compatible and simple /generate dialects."
    ),
    paths(
        native::create_job, native::get_job, native::cancel_job, native::delete_job, native::job_events,
        native::get_image, native::list_models, native::list_samplers,
        a1111::txt2img, a1111::progress, a1111::interrupt, a1111::skip, a1111::sd_models,
        a1111::samplers, a1111::schedulers, a1111::get_options, a1111::set_options,
        a1111::png_info, a1111::memory, a1111::scripts,
        openai::generations, openai::models, openai::image_file,
        simple::generate, simple::download,
        ops::livez, ops::readyz, ops::metrics, ops::openapi_json, ops::docs,
    ),
    components(schemas(
        native::NativeError, a1111::A1111Detail, a1111::A1111Exception, a1111::ValidationItem,
        openai::OpenAiError, openai::OpenAiErrorDetail,
    )),
    tags(
        (name = "native", description = "Asynchronous jobs with progress, events and cancel"),
        (name = "a1111", description = "AUTOMATIC1111 web UI API compatible"),
        (name = "openai", description = "OpenAI images API compatible"),
        (name = "simple", description = "POST /generate + GET /download/{id}"),
        (name = "ops", description = "Probes, metrics and documentation"),
    )
)]
pub struct ApiDoc;

/// Request schemas and their limited fields: (schema, field, what bounds it).
const LIMITED: &[(&str, &str, Bound)] = &[
    ("CreateJob", "prompt", Bound::Prompt),
    ("CreateJob", "negative_prompt", Bound::Prompt),
    ("CreateJob", "width", Bound::Width),
    ("CreateJob", "height", Bound::Height),
    ("CreateJob", "steps", Bound::Steps),
    ("CreateJob", "batch_size", Bound::Batch),
    ("Txt2ImgRequest", "prompt", Bound::Prompt),
    ("Txt2ImgRequest", "negative_prompt", Bound::Prompt),
    ("Txt2ImgRequest", "width", Bound::Width),
    ("Txt2ImgRequest", "height", Bound::Height),
    ("Txt2ImgRequest", "steps", Bound::Steps),
    ("Txt2ImgRequest", "batch_size", Bound::Batch),
    ("Txt2ImgRequest", "n_iter", Bound::Batch),
    ("ImageGenerationRequest", "prompt", Bound::Prompt),
    ("ImageGenerationRequest", "negative_prompt", Bound::Prompt),
    ("ImageGenerationRequest", "steps", Bound::Steps),
    ("ImageGenerationRequest", "n", Bound::Batch),
    ("GenerationRequest", "prompt", Bound::Prompt),
    ("GenerationRequest", "steps", Bound::Steps),
];

#[derive(Clone, Copy)]
enum Bound {
    Prompt,
    Width,
    Height,
    Steps,
    Batch,
}

/// The document as served: limits and security filled in.
pub fn document(limits: &Limits, model: Option<&ModelInfo>, auth: bool) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    let multiple = model.map_or(8, |m| m.vae_scale_factor.max(1));
    for (schema, field, bound) in LIMITED {
        let Some(prop) = doc
            .pointer_mut(&format!("/components/schemas/{schema}/properties/{field}"))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        match bound {
            Bound::Prompt => {
                prop.insert("maxLength".into(), json!(limits.max_prompt_chars));
            }
            Bound::Width | Bound::Height => {
                let max = if matches!(bound, Bound::Width) {
                    limits.max_width
                } else {
                    limits.max_height
                };
                prop.insert("minimum".into(), json!(multiple));
                prop.insert("maximum".into(), json!(max - max % multiple));
                prop.insert("multipleOf".into(), json!(multiple));
            }
            Bound::Steps => {
                prop.insert("maximum".into(), json!(limits.max_steps));
            }
            Bound::Batch => {
                prop.insert("maximum".into(), json!(limits.max_batch));
            }
        }
    }
    // Closed vocabularies: listed so clients and fuzzers send accepted values.
    let mut samplers: Vec<Value> = SamplerId::ALL
        .iter()
        .flat_map(|s| [json!(s.label()), json!(s.id())])
        .collect();
    samplers.push(Value::Null);
    let mut enums = vec![
        ("CreateJob", "sampler", samplers.clone()),
        ("ImageGenerationRequest", "sampler", samplers.clone()),
        ("Txt2ImgRequest", "sampler_name", samplers.clone()),
        ("Txt2ImgRequest", "sampler_index", samplers),
        (
            "Txt2ImgRequest",
            "scheduler",
            vec![json!("automatic"), json!("karras"), Value::Null],
        ),
        (
            "ImageGenerationRequest",
            "response_format",
            vec![json!("b64_json"), json!("url"), Value::Null],
        ),
    ];
    if let Some(model) = model {
        enums.push((
            "ImageGenerationRequest",
            "model",
            vec![json!(model.name), Value::Null],
        ));
    }
    for (schema, field, values) in enums {
        if let Some(prop) = doc
            .pointer_mut(&format!("/components/schemas/{schema}/properties/{field}"))
            .and_then(Value::as_object_mut)
        {
            prop.insert("enum".into(), Value::Array(values));
        }
    }
    if auth {
        if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
            components.insert(
                "securitySchemes".into(),
                json!({
                    "api_key": { "type": "http", "scheme": "bearer" },
                    "basic": { "type": "http", "scheme": "basic" },
                }),
            );
        }
        if let Some(root) = doc.as_object_mut() {
            root.insert(
                "security".into(),
                json!([{ "api_key": [] }, { "basic": [] }]),
            );
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_reach_the_schemas() {
        let limits = Limits {
            max_width: 100,
            max_steps: 4,
            ..Limits::default()
        };
        let doc = document(&limits, None, true);
        let width = &doc["components"]["schemas"]["CreateJob"]["properties"]["width"];
        assert_eq!(width["maximum"], 96);
        assert_eq!(width["multipleOf"], 8);
        let steps = &doc["components"]["schemas"]["Txt2ImgRequest"]["properties"]["steps"];
        assert_eq!(steps["maximum"], 4);
        assert!(doc["security"].is_array());
        let sampler = &doc["components"]["schemas"]["Txt2ImgRequest"]["properties"]["sampler_name"];
        assert!(sampler["enum"]
            .as_array()
            .unwrap()
            .contains(&json!("Euler a")));
        assert!(doc["paths"]["/sdapi/v1/txt2img"]["post"].is_object());
        assert!(doc["paths"]["/api/v1/jobs/{id}/events"]["get"].is_object());
    }
}
