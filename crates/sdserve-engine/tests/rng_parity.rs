//! The seeded noise equals `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`
//! as recorded by `fixtures/make_fixtures.py` in `fixtures/reference/debug.safetensors`.

use std::path::Path;

use candle_core::Device;
use sdserve_engine::rng::TorchRng;

fn torch_values(key: &str) -> Vec<f32> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/reference/debug.safetensors");
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).expect("debug tensors load");
    tensors[key]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn assert_close(ours: &[f32], theirs: &[f32], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "{what}[{i}]: {a} vs torch {b}"
        );
    }
}

#[test]
fn randn_matches_torch_for_vectorised_and_scalar_paths() {
    assert_close(
        &TorchRng::new(42).randn(256),
        &torch_values("randn_seed42_1x4x8x8"),
        "seed 42, 256 values",
    );
    assert_close(
        &TorchRng::new(3).randn(2 * 4 * 6 * 8),
        &torch_values("randn_seed3_2x4x6x8"),
        "seed 3, 384 values",
    );
    // Fewer than 16 values take torch's scalar double-precision path.
    assert_close(
        &TorchRng::new(7).randn(10),
        &torch_values("randn_seed7_10"),
        "seed 7, 10 values",
    );
    // 17 values: the last 16 are redrawn.
    assert_close(
        &TorchRng::new(7).randn(17),
        &torch_values("randn_seed7_17"),
        "seed 7, 17 values",
    );
}

#[test]
fn seeds_beyond_32_bits_behave_as_torch() {
    let seed = (1u64 << 40) + 5;
    assert_close(
        &TorchRng::new(seed).randn(256),
        &torch_values("randn_seed_big_1x4x8x8"),
        "seed 2^40+5",
    );
}
