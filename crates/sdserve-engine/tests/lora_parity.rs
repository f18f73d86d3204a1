//! LoRA parity with diffusers: every case of `fixtures/reference/lora-cases.json`
//! (rendered by `fixtures/make_lora_fixtures.py` with `load_lora_weights` and
//! `set_adapters`, PEFT's unfused `base(x) + scale * B(A(x))`) within 3/255
//! per channel: a kohya file (alpha != rank, LoCon 3x3 and 1x1 convolutions,
//! text-encoder layers) at weights 1, 0.5 and te 0.7 / unet 0.3, and a
//! diffusers/PEFT file at 1 and 0.5. Also: the base model is unchanged after
//! LoRA jobs, a LoRA's infotext, and the errors a bad LoRA gives.

mod common;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use common::{diff_to_reference, fixtures, read_cases, request};
use sdserve_engine::{
    Engine, EngineError, EngineOptions, GenerateRequest, LoraRef, ModelSource, NoopObserver,
};

const TOLERANCE: u8 = 3;

fn lora_dir() -> PathBuf {
    fixtures().join("models/loras")
}

fn engine_with(lora_dir: PathBuf) -> Engine {
    engine_for("tiny-sd1", lora_dir)
}

fn engine_for(model: &str, lora_dir: PathBuf) -> Engine {
    let options = EngineOptions {
        lora_dir: Some(lora_dir),
        ..EngineOptions::default()
    };
    let model = ModelSource::Dir(fixtures().join("models").join(model));
    Engine::load_with(&model, options).expect("model loads")
}

/// The LoRAs of each case, in order (`lora-cases.json`'s extra field).
fn case_loras() -> Vec<Vec<LoraRef>> {
    loras_of("lora-cases.json")
}

fn loras_of(file: &str) -> Vec<Vec<LoraRef>> {
    let text = std::fs::read_to_string(fixtures().join("reference").join(file)).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    cases
        .iter()
        .map(|c| {
            c["loras"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    let name = l["name"].as_str().unwrap().to_string();
                    match l.get("weight") {
                        Some(w) => LoraRef::new(name, w.as_f64().unwrap()),
                        None => LoraRef {
                            name,
                            te_weight: l["te"].as_f64().unwrap(),
                            unet_weight: l["unet"].as_f64().unwrap(),
                        },
                    }
                })
                .collect()
        })
        .collect()
}

/// Each case rendered with its LoRAs is within [`TOLERANCE`] of its reference.
fn assert_cases_match(engine: &Engine, cases: &[common::Case], loras: Vec<Vec<LoraRef>>) {
    assert_eq!(cases.len(), loras.len());
    let mut failures = Vec::new();
    for (case, loras) in cases.iter().zip(loras) {
        let req = GenerateRequest {
            loras,
            ..request(case)
        };
        let out = engine.generate(&req, &mut NoopObserver).expect("generates");
        let diff = diff_to_reference(&out.images[0].rgb, &case.images[0]);
        println!("{}: max diff {diff}/255", case.name);
        if diff > TOLERANCE {
            failures.push(format!("{}: {diff}", case.name));
        }
    }
    assert!(failures.is_empty(), "over {TOLERANCE}/255: {failures:?}");
}

#[test]
fn tiny_sd1_loras_match_diffusers() {
    let engine = engine_with(lora_dir());
    let cases = read_cases(&["lora-cases.json"]);
    assert_eq!(cases.len(), 5);
    let plain = request(&cases[0]);
    let before = engine.generate(&plain, &mut NoopObserver).unwrap();
    assert_cases_match(&engine, &cases, case_loras());
    // The base weights are shared, never patched in place.
    let after = engine.generate(&plain, &mut NoopObserver).unwrap();
    assert_eq!(before.images[0].rgb, after.images[0].rgb);
    assert!(diff_to_reference(&after.images[0].rgb, &cases[0].images[0]) > 20);
}

/// SD 2.x: the same kohya layers on tiny-sd2 (v-prediction, OpenCLIP-shaped
/// text encoder), diffusers' renders at 1 and 0.5 (`fixtures/make_sd2_lora_fixtures.py`).
#[test]
fn tiny_sd2_kohya_loras_match_diffusers() {
    check_cases("tiny-sd2", "models/loras-sd2", "lora-sd2-cases.json");
}

/// Renders every case of `file` on `model` with the LoRAs of `dir` within 3/255.
fn check_cases(model: &str, dir: &str, file: &str) {
    let engine = engine_for(model, fixtures().join(dir));
    let cases = read_cases(&[file]);
    assert_eq!(cases.len(), 2);
    assert_cases_match(&engine, &cases, loras_of(file));
    // Without the LoRA the image is another one.
    let plain = engine
        .generate(&request(&cases[0]), &mut NoopObserver)
        .unwrap();
    assert!(diff_to_reference(&plain.images[0].rgb, &cases[0].images[0]) > 20);
}

/// kohya's SDXL LoRAs name the UNet by SGM paths (`lora_unet_input_blocks_4_1_..`)
/// and both text encoders (`lora_te1_`, `lora_te2_`); diffusers' renders with
/// `load_lora_weights` (`fixtures/make_sdxl_lora_fixtures.py`) at 1 and 0.5.
#[test]
fn tiny_sdxl_kohya_sgm_loras_match_diffusers() {
    check_cases("tiny-sdxl", "models/loras-sdxl", "lora-sdxl-cases.json");
}

/// A LoRA set's patched weight copies count against the memory budget:
/// around the largest size the budget holds, a request with the set is
/// refused at validation (413 in the server) exactly when its need plus the
/// patch passes the budget, the refusal naming that need, and some sizes are
/// refused for the patch alone.
#[test]
fn lora_patches_count_against_the_memory_budget() {
    let loras = vec![LoraRef::new("tiny-sd1-kohya", 1.0)];
    // A budget some way above the model's resident weights.
    let probe = engine_with(lora_dir());
    let patch = probe.lora_patch_bytes(&loras).unwrap();
    assert!(patch > 0);
    assert_eq!(probe.lora_patch_bytes(&[]).unwrap(), 0);
    let limit = probe.memory_plan().resident_bytes() + (256 << 20);
    drop(probe);
    let options = EngineOptions {
        lora_dir: Some(lora_dir()),
        memory_limit: Some(limit),
        ..EngineOptions::default()
    };
    let model = ModelSource::Dir(fixtures().join("models/tiny-sd1"));
    let engine = Engine::load_with(&model, options).expect("model loads");
    let plan = engine.memory_plan();
    let plain = request(&read_cases(&["lora-cases.json"])[0]);
    // Sizes around the largest square: a dense set of needs, so some fall
    // within the patch's bytes below the budget.
    let top = plan.largest_square(1, 8);
    let sides = || (top - 128..=top + 128).step_by(8);
    let mut refused = 0;
    for (width, height) in sides().flat_map(|w| sides().map(move |h| (w, h))) {
        let req = GenerateRequest {
            width,
            height,
            batch_size: 1,
            loras: loras.clone(),
            ..plain.clone()
        };
        let need = plan.estimate(width, height, 1, true) + patch;
        match engine.validate(&req) {
            Ok(()) => assert!(need <= limit, "{width}x{height}: {need} > {limit} accepted"),
            Err(EngineError::OverBudget(e)) => {
                assert!(need > limit, "{width}x{height}: {need} <= {limit} refused");
                assert_eq!((e.need_bytes, e.budget_bytes), (need, limit));
                if need - patch <= limit {
                    // Refused for the patch alone: the size fits without it.
                    let bare = GenerateRequest {
                        loras: Vec::new(),
                        ..req.clone()
                    };
                    engine.validate(&bare).expect("fits without the LoRA");
                    refused += 1;
                }
            }
            Err(other) => panic!("{width}x{height}: {other}"),
        }
    }
    eprintln!("patch {patch} bytes; {refused} sizes refused only for it");
    assert!(
        refused >= 3,
        "the patch ({patch} bytes) decided only {refused} sizes"
    );
}

#[test]
fn infotext_keeps_the_tags_and_adds_a1111_hashes() {
    let engine = engine_with(lora_dir());
    let case = &read_cases(&["lora-cases.json"])[0];
    let req = GenerateRequest {
        loras: vec![
            LoraRef::new("tiny-sd1-kohya", 0.5),
            LoraRef {
                name: "tiny-sd1-peft".into(),
                te_weight: 1.0,
                unet_weight: 0.25,
            },
        ],
        ..request(case)
    };
    let out = engine.generate(&req, &mut NoopObserver).unwrap();
    let info = &out.images[0].infotext;
    let first_line = info.lines().next().unwrap();
    assert_eq!(
        first_line,
        format!(
            "{} <lora:tiny-sd1-kohya:0.5> <lora:tiny-sd1-peft:1:0.25>",
            case.prompt
        )
    );
    // sha256 of each file after its header, 12 digits (A1111's addnet hash).
    assert!(
        info.contains(
            r#"Lora hashes: "tiny-sd1-kohya: a637d1141627, tiny-sd1-peft: 26071055fac0""#
        ),
        "{info}"
    );
}

#[test]
fn bad_loras_are_request_errors_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny-sd1-kohya", "tiny-sd1-peft"] {
        std::fs::copy(
            lora_dir().join(format!("{name}.safetensors")),
            dir.path().join(format!("{name}.safetensors")),
        )
        .unwrap();
    }
    let t = |shape: &[usize]| Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).unwrap();
    // A layer of a model with another architecture.
    let foreign = [
        (
            "lora_unet_down_blocks_3_attentions_0_proj_in.lora_down.weight",
            t(&[4, 32]),
        ),
        (
            "lora_unet_down_blocks_3_attentions_0_proj_in.lora_up.weight",
            t(&[32, 4]),
        ),
    ];
    candle_core::safetensors::save(
        &foreign
            .iter()
            .cloned()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        dir.path().join("foreign.safetensors"),
    )
    .unwrap();
    // LoHa, which is not supported.
    let loha = [("lora_unet_conv_in.hada_w1_a", t(&[4, 4]))];
    candle_core::safetensors::save(
        &loha
            .iter()
            .cloned()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        dir.path().join("loha.safetensors"),
    )
    .unwrap();
    // A wrong shape for a real layer.
    let shape = [
        ("lora_unet_conv_in.lora_down.weight", t(&[4, 3, 3, 3])),
        ("lora_unet_conv_in.lora_up.weight", t(&[32, 4, 1, 1])),
    ];
    candle_core::safetensors::save(
        &shape
            .iter()
            .cloned()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        dir.path().join("shape.safetensors"),
    )
    .unwrap();
    std::fs::write(dir.path().join("pickled.ckpt"), b"not read").unwrap();

    let engine = engine_with(dir.path().to_path_buf());
    let case = &read_cases(&["lora-cases.json"])[0];
    let with = |name: &str, weight: f64| GenerateRequest {
        loras: vec![LoraRef::new(name, weight)],
        ..request(case)
    };
    match engine.validate(&with("missing", 1.0)) {
        Err(EngineError::UnknownLora { name, available }) => {
            assert_eq!(name, "missing");
            assert_eq!(
                available,
                [
                    "foreign",
                    "loha",
                    "shape",
                    "tiny-sd1-kohya",
                    "tiny-sd1-peft"
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    for (name, says) in [
        (
            "foreign",
            "lora_unet_down_blocks_3_attentions_0_proj_in.lora_down.weight",
        ),
        ("loha", "hada_w1_a"),
        ("shape", "conv_in.weight"),
        ("pickled", "pickle"),
        ("../tiny-sd1-kohya", "unknown LoRA"),
    ] {
        let err = engine.validate(&with(name, 1.0)).unwrap_err().to_string();
        assert!(err.contains(says), "{name}: {err}");
    }
    for weight in [f64::NAN, 11.0, -11.0] {
        let err = engine
            .validate(&with("tiny-sd1-kohya", weight))
            .unwrap_err();
        assert!(
            matches!(err, EngineError::InvalidRequest(_)),
            "{weight}: {err}"
        );
    }
    let too_many = GenerateRequest {
        loras: vec![LoraRef::new("tiny-sd1-kohya", 0.1); 9],
        ..request(case)
    };
    assert!(engine
        .validate(&too_many)
        .unwrap_err()
        .to_string()
        .contains("at most 8"));
    // Without --lora-dir nothing is available.
    let bare = Engine::load(&ModelSource::Dir(fixtures().join("models/tiny-sd1"))).unwrap();
    let err = bare
        .validate(&with("tiny-sd1-kohya", 1.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no --lora-dir"), "{err}");
}
