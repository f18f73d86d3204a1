//! Request bodies through the server's JSON parser into each dialect's request
//! type, then through the validation gate against the fake backend's model.
//! The first byte picks the dialect; the rest is the body.
#![no_main]

use axum::body::Bytes;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use sdserve_server::config::Limits;
use sdserve_server::dialects::{a1111, native, openai, simple};
use sdserve_server::engine_api::{image_input, ImageLimits};
use sdserve_server::extract::parse_json;
use sdserve_server::validation::{validate, FieldNames, JobSpec};
use sdserve_server::FakeBackend;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let limits = Limits::default();
    let backend = FakeBackend::new();
    let body = || Ok(Bytes::copy_from_slice(body));
    let spec = match which % 5 {
        0 => parse_json::<native::CreateJob>(body(), limits.max_body_bytes)
            .ok()
            .map(native::CreateJob::into_spec),
        1 => parse_json::<a1111::Txt2ImgRequest>(body(), limits.max_body_bytes)
            .ok()
            .and_then(|r| r.to_spec(&limits).ok()),
        // openai.rs and simple.rs build their specs inside the handlers; these
        // mirror them (size parsing aside) so the gate sees their field values.
        2 => parse_json::<openai::ImageGenerationRequest>(body(), limits.max_body_bytes)
            .ok()
            .map(|r| JobSpec {
                negative_prompt: r.negative_prompt.unwrap_or_default(),
                seed: r.seed,
                steps: r.steps,
                cfg_scale: r.cfg_scale,
                sampler: r.sampler,
                batch_size: r.n,
                ..JobSpec::new(r.prompt, FieldNames::NATIVE)
            }),
        3 => parse_json::<simple::GenerationRequest>(body(), limits.max_body_bytes)
            .ok()
            .map(|r| JobSpec {
                seed: r.seed,
                steps: r.steps,
                cfg_scale: r.scale,
                ..JobSpec::new(r.prompt, FieldNames::NATIVE)
            }),
        _ => {
            if let Ok(r) = parse_json::<a1111::PngInfoRequest>(body(), limits.max_body_bytes) {
                let text = r.image.trim();
                let b64 = text.split_once(";base64,").map_or(text, |(_, d)| d);
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) {
                    if let Ok(t) = image_input::read_text(&bytes, &ImageLimits::default()) {
                        let _ = a1111::parse_infotext(t.parameters().unwrap_or_default());
                    }
                }
                let _ = a1111::parse_infotext(text);
            }
            None
        }
    };
    if let Some(spec) = spec {
        if let Ok(request) = validate(spec, &limits, &backend) {
            assert!(request.width <= limits.max_width && request.height <= limits.max_height);
            assert!(request.steps >= 1 && request.steps <= limits.max_steps);
            assert!(request.cfg_scale.is_finite());
        }
    }
});
