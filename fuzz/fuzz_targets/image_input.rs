//! Untrusted image bytes through the engine's bounded reader: the text reader
//! and the RGB decoder with default limits. Any panic, abort or allocation past
//! libFuzzer's limits is a bug; errors are expected. The module's source is
//! compiled here directly (it depends on nothing else in the engine), so this
//! target builds without candle.
#![no_main]

#[path = "../../crates/sdserve-engine/src/image_input/mod.rs"]
#[allow(dead_code, unused_imports)]
mod image_input;

use image_input::{decode_rgb, read_text, ImageLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ImageLimits::default();
    if let Ok(text) = read_text(data, &limits) {
        let total: usize = text.chunks.iter().map(|c| c.text.len()).sum();
        // Latin-1 text may grow to 2 UTF-8 bytes a byte; the cap is on raw bytes.
        assert!(total <= 2 * limits.max_total_text_bytes);
    }
    if let Ok(image) = decode_rgb(data, &limits) {
        assert_eq!(image.rgb.len(), image.width * image.height * 3);
        assert!((image.width * image.height) as u64 <= limits.max_pixels);
    }
});
