//! A whole safetensors file held in memory through the loader's header checks
//! (`loader::parse_header`, the pure core of `validate_safetensors`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sdserve_engine::loader::parse_header(data);
});
