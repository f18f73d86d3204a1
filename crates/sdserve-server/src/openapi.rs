//! The OpenAPI document, generated from the handlers' `#[utoipa::path]`
//! annotations and the wire types' `ToSchema` derives: one [`ApiDoc`] lists every
//! route. [`document`] then writes the server's configured limits (and the
//! model's size multiple) into the request schemas and declares the security
//! schemes when auth is on, so clients and fuzzers see the real bounds.

use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::config::Limits;
use crate::dialects::{a1111, native, openai, openai_edits, simple};
use crate::engine_api::ModelInfo;
use crate::ops;
use crate::validation::{
    sampler_names, sampling_schema_rules, schedule_type_names, SamplingFields,
};

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
        native::get_image, native::list_jobs, native::list_models, native::list_samplers, native::list_loras, native::limits,
        a1111::txt2img, a1111::img2img, a1111::progress, a1111::interrupt, a1111::skip, a1111::sd_models,
        a1111::samplers, a1111::schedulers, a1111::get_options, a1111::set_options,
        a1111::png_info, a1111::memory, a1111::scripts, a1111::refresh_checkpoints,
        a1111::loras, a1111::embeddings, a1111::sd_vae, a1111::upscalers,
        a1111::latent_upscale_modes, a1111::hypernetworks, a1111::face_restorers,
        a1111::realesrgan_models, a1111::prompt_styles, a1111::cmd_flags, a1111::refresh_vae,
        a1111::refresh_loras, a1111::refresh_embeddings, a1111::internal_progress,
        a1111::pending_tasks,
        openai::generations, openai_edits::edits, openai::models, openai::image_file,
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
    let lcm_max_steps = model.map_or(50, |m| m.lcm_max_steps);
    for (schema, field, bound) in LIMITED {
        let Some(prop) = property(&mut doc, schema, field) else {
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
    describe_pixel_limit(&mut doc, limits);
    // Closed vocabularies: exactly the values the server takes.
    let mut samplers: Vec<Value> = sampler_names().into_iter().map(Value::from).collect();
    samplers.push(Value::Null);
    let mut schedulers: Vec<Value> = schedule_type_names().into_iter().map(Value::from).collect();
    schedulers.push(Value::Null);
    let mut enums = vec![
        ("CreateJob", "sampler", samplers.clone()),
        ("ImageGenerationRequest", "sampler", samplers.clone()),
        ("Txt2ImgRequest", "sampler_name", samplers.clone()),
        ("Txt2ImgRequest", "sampler_index", samplers),
        ("Txt2ImgRequest", "scheduler", schedulers.clone()),
        ("CreateJob", "schedule_type", schedulers),
        (
            "ImageGenerationRequest",
            "response_format",
            vec![json!("b64_json"), json!("url"), Value::Null],
        ),
    ];
    enums.extend([
        (
            "ImageGenerationRequest",
            "output_format",
            vec![json!("png"), json!("jpeg"), json!("webp"), Value::Null],
        ),
        // `transparent` is a value OpenAI defines that sdserve refuses (400).
        (
            "ImageGenerationRequest",
            "background",
            vec![json!("auto"), json!("opaque"), Value::Null],
        ),
        (
            "ImageGenerationRequest",
            "stream",
            vec![json!(false), Value::Null],
        ),
    ]);
    if let Some(model) = model {
        let mut names = vec![json!(model.name)];
        names.extend(openai::OPENAI_MODEL_NAMES.iter().map(|n| json!(n)));
        names.push(Value::Null);
        enums.push(("ImageGenerationRequest", "model", names));
        enums.push((
            "OptionsRequest",
            "sd_model_checkpoint",
            vec![json!(model.name), Value::Null],
        ));
    }
    for (schema, field, values) in enums {
        if let Some(prop) = property(&mut doc, schema, field) {
            prop.insert("enum".into(), Value::Array(values));
        }
    }
    if let Some(prop) = property(&mut doc, "ImageGenerationRequest", "size") {
        let pattern = openai::size_pattern(limits.max_width, limits.max_height, multiple);
        prop.insert("pattern".into(), json!(pattern));
    }
    // Rules across fields, which the gate applies after each field's own.
    if let Some(schema) = doc
        .pointer_mut("/components/schemas/Txt2ImgRequest")
        .and_then(Value::as_object_mut)
    {
        let rules = a1111::txt2img_schema_rules(limits.max_batch, lcm_max_steps);
        schema.insert("allOf".into(), Value::Array(rules));
    }
    if let Some(schema) = doc
        .pointer_mut("/components/schemas/CreateJob")
        .and_then(Value::as_object_mut)
    {
        let fields = SamplingFields {
            sampler: "sampler",
            alias: None,
            schedule_type: "schedule_type",
            steps: "steps",
        };
        let mut rules = sampling_schema_rules(&fields, lcm_max_steps);
        if let Some(Value::Array(existing)) = schema.remove("allOf") {
            rules.extend(existing);
        }
        schema.insert("allOf".into(), Value::Array(rules));
    }
    if let Some(schema) = doc
        .pointer_mut("/components/schemas/ImageGenerationRequest")
        .and_then(Value::as_object_mut)
    {
        // Only JPEG takes a compression level below 100.
        schema.insert(
            "allOf".into(),
            json!([{
                "if": {
                    "properties": { "output_format": { "const": "jpeg" } },
                    "required": ["output_format"],
                },
                "then": {},
                "else": { "properties": { "output_compression": { "enum": [100, null] } } },
            }]),
        );
    }
    require_defaults_beyond_limits(&mut doc, limits);
    // override_settings: only the settings the gate accepts, at the values it accepts.
    if let Some(schema) = doc
        .pointer_mut("/components/schemas/OverrideSettings")
        .and_then(Value::as_object_mut)
    {
        if let Some(props) = schema
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
        {
            props.extend(a1111::settings_schema());
        }
        schema.insert("additionalProperties".into(), json!(false));
    }
    // POST /sdapi/v1/options: the settings it changes, and the fixed ones at
    // their values; any other key is refused.
    if let Some(schema) = doc
        .pointer_mut("/components/schemas/OptionsRequest")
        .and_then(Value::as_object_mut)
    {
        if let Some(props) = schema
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
        {
            for (name, _) in a1111::FIXED_OPTIONS {
                let values = a1111::fixed_option_values(name).unwrap_or_default();
                props.insert((*name).to_string(), json!({ "enum": values }));
            }
            props.insert("sd_checkpoint_hash".into(), json!({ "enum": [null] }));
        }
        schema.insert("additionalProperties".into(), json!(false));
    }
    bound_unsigned_integers(&mut doc);
    add_links(&mut doc);
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

/// OpenAPI links from the responses that hand out ids to the routes that take
/// them, so clients (and schemathesis' stateful phase) can follow a job from
/// submission to its images.
const LINKS: &[(&str, &str, &str, &str, &str)] = &[
    // (path, method, status, target operationId, the id in the response)
    (
        "/api/v1/jobs",
        "post",
        "202",
        "get_job",
        "$response.body#/id",
    ),
    (
        "/api/v1/jobs",
        "post",
        "202",
        "job_events",
        "$response.body#/id",
    ),
    (
        "/api/v1/jobs",
        "post",
        "202",
        "cancel_job",
        "$response.body#/id",
    ),
    (
        "/api/v1/jobs/{id}",
        "get",
        "200",
        "get_image",
        "$response.body#/images/0/id",
    ),
    (
        "/generate",
        "post",
        "200",
        "download",
        "$response.body#/download_id",
    ),
];

fn add_links(doc: &mut Value) {
    for (path, method, status, target, id) in LINKS {
        let pointer = format!(
            "/paths/{}/{method}/responses/{status}",
            path.replace('~', "~0").replace('/', "~1")
        );
        if let Some(response) = doc.pointer_mut(&pointer).and_then(Value::as_object_mut) {
            let links = response.entry("links").or_insert_with(|| json!({}));
            if let Some(links) = links.as_object_mut() {
                links.insert(
                    (*target).to_string(),
                    json!({ "operationId": target, "parameters": { "id": id } }),
                );
            }
        }
    }
}

/// A dialect's fixed default (A1111's 512×512 and 50 steps, the simple API's
/// 50 steps) that this server's limits do not allow: the field must then be
/// sent, and the schema says so, since omitting it is refused by the gate.
fn require_defaults_beyond_limits(doc: &mut Value, limits: &Limits) {
    let size = a1111::A1111_DEFAULT_SIZE as usize;
    let a1111_steps = a1111::A1111_DEFAULT_STEPS as usize;
    let simple_steps = simple::SIMPLE_DEFAULT_STEPS as usize;
    let needed = [
        ("Txt2ImgRequest", "width", size > limits.max_width),
        ("Txt2ImgRequest", "height", size > limits.max_height),
        ("Txt2ImgRequest", "steps", a1111_steps > limits.max_steps),
        (
            "GenerationRequest",
            "steps",
            simple_steps > limits.max_steps,
        ),
    ];
    for (schema, field, required) in needed {
        if !required {
            continue;
        }
        let Some(schema) = doc
            .pointer_mut(&format!("/components/schemas/{schema}"))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if let Some(list) = schema
            .entry("required")
            .or_insert_with(|| json!([]))
            .as_array_mut()
        {
            if !list.iter().any(|f| f == field) {
                list.push(json!(field));
            }
        }
        if let Some(prop) = schema
            .get_mut("properties")
            .and_then(|p| p.get_mut(field))
            .and_then(Value::as_object_mut)
        {
            // The default is beyond this server's limit: no longer a default,
            // and null (which means "the default") is refused too.
            prop.remove("default");
            if let Some(types) = prop.get_mut("type").and_then(Value::as_array_mut) {
                types.retain(|t| t != "null");
            }
        }
    }
}

/// One property of a component schema.
fn property<'a>(
    doc: &'a mut Value,
    schema: &str,
    field: &str,
) -> Option<&'a mut serde_json::Map<String, Value>> {
    doc.pointer_mut(&format!("/components/schemas/{schema}/properties/{field}"))
        .and_then(Value::as_object_mut)
}

/// `--max-pixels` bounds width × height, which no JSON Schema keyword can state:
/// the size fields' descriptions say it instead.
fn describe_pixel_limit(doc: &mut Value, limits: &Limits) {
    let rule = format!(
        " At most {} pixels in all (width × height, `--max-pixels`); \
         JSON Schema cannot state this rule, so a larger image is refused with 422.",
        limits.max_pixels
    );
    for (schema, field) in [
        ("CreateJob", "width"),
        ("CreateJob", "height"),
        ("Txt2ImgRequest", "width"),
        ("Txt2ImgRequest", "height"),
        ("ImageGenerationRequest", "size"),
    ] {
        if let Some(prop) = property(doc, schema, field) {
            let text = prop
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let described = format!("{text}{rule}");
            prop.insert("description".into(), json!(described));
        }
    }
}

/// Unsigned integers get the OpenAPI format registry's name (utoipa writes
/// `u-int64`) and their type's maximum, written exactly (`2^64 - 1` is no
/// `f64`), so fuzzers neither stop at `i64`'s nor send numbers the server
/// cannot hold.
fn bound_unsigned_integers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let unsigned = match map.get("format").and_then(Value::as_str) {
                Some("u-int8" | "uint8") => Some(("uint8", u64::from(u8::MAX))),
                Some("u-int16" | "uint16") => Some(("uint16", u64::from(u16::MAX))),
                Some("u-int32" | "uint32") => Some(("uint32", u64::from(u32::MAX))),
                Some("u-int64" | "uint64") => Some(("uint64", u64::MAX)),
                _ => None,
            };
            if let Some((format, max)) = unsigned {
                map.insert("format".into(), json!(format));
                map.entry("minimum").or_insert(json!(0));
                map.entry("maximum").or_insert(json!(max));
            }
            map.values_mut().for_each(bound_unsigned_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_unsigned_integers),
        _ => {}
    }
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

    fn served() -> Value {
        let limits = Limits {
            max_width: 64,
            max_height: 48,
            max_batch: 2,
            ..Limits::default()
        };
        let model = ModelInfo {
            name: "tiny".into(),
            native_width: 64,
            native_height: 64,
            default_steps: 4,
            default_cfg_scale: 7.0,
            vae_scale_factor: 8,
            max_clip_skip: 11,
            lcm_max_steps: 50,
        };
        document(&limits, Some(&model), false)
    }

    #[test]
    fn fixed_defaults_beyond_the_limits_make_fields_required() {
        // served(): max width 64 and height 48 are below A1111's 512; steps are not.
        let doc = served();
        let schemas = &doc["components"]["schemas"];
        let txt2img = &schemas["Txt2ImgRequest"];
        assert_eq!(txt2img["required"], json!(["width", "height"]));
        for field in ["width", "height"] {
            let prop = &txt2img["properties"][field];
            assert!(prop.get("default").is_none(), "{field}");
            assert!(
                !prop["type"].to_string().contains("null"),
                "{field}: {prop}"
            );
        }
        assert_eq!(txt2img["properties"]["steps"]["default"], 50);
        assert!(schemas["GenerationRequest"].get("required") == Some(&json!(["prompt"])));
        // With --max-steps below 50 both dialects' steps must be sent.
        let low = Limits {
            max_steps: 20,
            ..Limits::default()
        };
        let doc = document(&low, None, false);
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["Txt2ImgRequest"]["required"], json!(["steps"]));
        assert_eq!(
            schemas["GenerationRequest"]["required"],
            json!(["prompt", "steps"])
        );
        let settings = &schemas["OverrideSettings"];
        assert_eq!(settings["additionalProperties"], false);
        let clip = &settings["properties"]["CLIP_stop_at_last_layers"];
        assert_eq!(
            (&clip["minimum"], &clip["maximum"]),
            (&json!(0), &json!(12))
        );
        assert_eq!(
            settings["properties"]["emphasis"]["oneOf"][1]["$ref"],
            "#/components/schemas/Emphasis"
        );
        assert_eq!(schemas["Emphasis"]["enum"], json!(["Original", "None"]));
        assert!(settings["properties"]["sd_model_checkpoint"].is_object());
        // Only JPEG takes a compression below 100.
        let rule = &schemas["ImageGenerationRequest"]["allOf"][0];
        assert_eq!(rule["if"]["properties"]["output_format"]["const"], "jpeg");
        assert_eq!(
            rule["else"]["properties"]["output_compression"]["enum"],
            json!([100, null])
        );
    }

    #[test]
    fn u64_fields_span_u64_exactly() {
        let doc = served();
        let schemas = &doc["components"]["schemas"];
        let params = &doc["paths"]["/v1/images/files/{id}"]["get"]["parameters"];
        let expires = params
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "expires")
            .unwrap();
        for seed in [
            &schemas["CreateJob"]["properties"]["seed"],
            &schemas["ImageGenerationRequest"]["properties"]["seed"],
            &schemas["GenerationRequest"]["properties"]["seed"],
            &schemas["ImageView"]["properties"]["seed"],
            &expires["schema"],
        ] {
            assert_eq!(seed["format"], "uint64", "{seed}");
            assert_eq!(seed["minimum"], 0, "{seed}");
            assert_eq!(seed["maximum"].as_u64(), Some(u64::MAX), "{seed}");
        }
        let text = serde_json::to_string(&doc).unwrap();
        assert!(text.contains(r#""maximum":18446744073709551615"#));
        assert!(!text.contains("u-int"));
        // A1111's seed is signed: -1 means random.
        let a1111_seed = &schemas["Txt2ImgRequest"]["properties"]["seed"];
        assert_eq!(
            (
                a1111_seed["format"].as_str(),
                a1111_seed["minimum"].as_i64()
            ),
            (Some("int64"), Some(-1))
        );
    }

    #[test]
    fn vocabularies_are_the_servers() {
        let doc = served();
        let schemas = &doc["components"]["schemas"];
        let mut samplers: Vec<Value> = sampler_names().into_iter().map(Value::from).collect();
        samplers.push(Value::Null);
        for (schema, field) in [
            ("CreateJob", "sampler"),
            ("ImageGenerationRequest", "sampler"),
            ("Txt2ImgRequest", "sampler_name"),
            ("Txt2ImgRequest", "sampler_index"),
        ] {
            assert_eq!(
                schemas[schema]["properties"][field]["enum"],
                json!(samplers)
            );
        }
        assert_eq!(
            schemas["Txt2ImgRequest"]["properties"]["scheduler"]["enum"],
            json!([
                "Automatic",
                "automatic",
                "Karras",
                "karras",
                "Exponential",
                "exponential",
                "SGM Uniform",
                "sgm_uniform",
                "Beta",
                "beta",
                null
            ])
        );
        assert_eq!(
            schemas["CreateJob"]["properties"]["schedule_type"]["enum"],
            schemas["Txt2ImgRequest"]["properties"]["scheduler"]["enum"]
        );
        assert_eq!(
            schemas["OptionsRequest"]["properties"]["sd_model_checkpoint"]["enum"],
            json!(["tiny", null])
        );
        assert_eq!(
            schemas["ImageGenerationRequest"]["properties"]["model"]["enum"],
            json!(["tiny", "dall-e-2", "dall-e-3", "gpt-image-1", null])
        );
        let props = &schemas["ImageGenerationRequest"]["properties"];
        assert_eq!(
            props["output_format"]["enum"],
            json!(["png", "jpeg", "webp", null])
        );
        assert_eq!(props["background"]["enum"], json!(["auto", "opaque", null]));
        assert_eq!(props["stream"]["enum"], json!([false, null]));
        assert_eq!(
            schemas["ImageGenerationRequest"]["properties"]["size"]["pattern"],
            "^(auto|(8|16|24|32|40|48|56|64)x(8|16|24|32|40|48))$"
        );
        assert_eq!(
            schemas["PngInfoRequest"]["properties"]["image"]["pattern"],
            a1111::IMAGE_PATTERN
        );
        let progress = &doc["paths"]["/sdapi/v1/progress"]["get"]["parameters"][0];
        assert_eq!(progress["name"], "skip_current_image");
        assert_eq!(progress["schema"]["type"], "boolean");
    }

    #[test]
    fn links_name_real_operations() {
        let doc = served();
        let mut ids = Vec::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                ids.extend(op["operationId"].as_str().map(str::to_string));
            }
        }
        for (path, method, status, target, _) in LINKS {
            let links = &doc["paths"][path][method]["responses"][status]["links"];
            assert_eq!(links[target]["operationId"], *target, "{path} {method}");
            assert!(ids.iter().any(|id| id == target), "{target}");
        }
    }

    #[test]
    fn rules_and_open_bodies_are_stated() {
        let doc = served();
        let schemas = &doc["components"]["schemas"];
        // Unknown fields: refused by the native API and POST /options only.
        assert_eq!(schemas["CreateJob"]["additionalProperties"], false);
        assert_eq!(schemas["OptionsRequest"]["additionalProperties"], false);
        assert_eq!(
            schemas["OptionsRequest"]["properties"]["sd_vae"]["enum"],
            json!(["Automatic", null, "None", ""])
        );
        assert_eq!(
            schemas["OptionsRequest"]["properties"]["s_noise"]["enum"],
            json!([1.0, null])
        );
        for open in [
            "Txt2ImgRequest",
            "ImageGenerationRequest",
            "GenerationRequest",
            "PngInfoRequest",
        ] {
            assert!(
                schemas[open].get("additionalProperties").is_none(),
                "{open}"
            );
        }
        // Karras, exponential, SGM uniform and beta need a sampler that runs
        // with them, LCM its step limit, and one n_iter rule for --max-batch 2.
        let rules = schemas["Txt2ImgRequest"]["allOf"].as_array().unwrap();
        assert_eq!(rules.len(), 6, "{rules:?}");
        assert_eq!(rules[4]["then"]["properties"]["steps"]["maximum"], 50);
        assert_eq!(rules[5]["then"]["properties"]["batch_size"]["maximum"], 1);
        let native = schemas["CreateJob"]["allOf"].as_array().unwrap();
        let sgm = &native[2];
        assert_eq!(
            sgm["if"]["properties"]["schedule_type"]["enum"],
            json!(["SGM Uniform", "sgm_uniform"])
        );
        assert_eq!(
            sgm["then"]["not"]["anyOf"][0]["properties"]["sampler"]["enum"],
            json!(["LCM", "lcm"])
        );
        for (schema, field) in [
            ("CreateJob", "width"),
            ("Txt2ImgRequest", "height"),
            ("ImageGenerationRequest", "size"),
        ] {
            let text = schemas[schema]["properties"][field]["description"]
                .as_str()
                .unwrap();
            assert!(
                text.contains("At most 2359296 pixels"),
                "{schema}.{field}: {text}"
            );
        }
    }
}
