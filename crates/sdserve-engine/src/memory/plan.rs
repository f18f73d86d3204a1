//! The memory plan computed once at load: the budget and where it came from,
//! what the weights take, and from the cost model which sizes and batches fit.
//!
//! It answers "would this request fit?" before anything is queued, so an
//! oversized request is refused with a message naming the limit instead of
//! the process being OOM-killed halfway through. It only ever refuses: the
//! server's configured limits still apply on top of it.

use std::fmt;

use super::budget::{human_bytes, Budget};
use super::cost::{Attention, ModelShape};
use crate::options::VaeTiling;

/// Side of the square VAE tiles of a per-pixel (fake) cost, in pixels.
pub const VAE_TILE: usize = 512;

/// Activations are counted 1 + 1/3 times (see `estimate_with`).
const ALLOCATOR_SLACK_DIVISOR: u128 = 3;

/// Largest side [`MemoryPlan::largest_square`] searches.
const MAX_SIDE: usize = 1 << 15;
/// Largest batch [`MemoryPlan::max_batch`] searches.
const MAX_BATCH: usize = 1 << 12;

/// How activations grow with size.
#[derive(Debug, Clone, PartialEq)]
enum Cost {
    /// Derived from the model's configs.
    Model(ModelShape),
    /// A flat number of bytes per pixel per image (fakes and tests).
    PerPixel(u64),
}

/// What the engine may run within its memory budget.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    budget: Budget,
    baseline: u64,
    weights: u64,
    cost: Cost,
    vae_tiling: VaeTiling,
    tiling_available: bool,
}

/// A request the plan refuses, with everything its message names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct OverBudget {
    /// Requested width.
    pub width: usize,
    /// Requested height.
    pub height: usize,
    /// Images in the request.
    pub batch: usize,
    /// Estimated peak bytes.
    pub need_bytes: u64,
    /// The budget.
    pub budget_bytes: u64,
    /// Where the budget came from.
    pub budget_source: String,
    /// Largest square side that fits at this batch (0: none).
    pub largest_square: usize,
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{} x{} needs ~{} but the memory budget is {} ({}); ",
            self.width,
            self.height,
            self.batch,
            human_bytes(self.need_bytes),
            human_bytes(self.budget_bytes),
            self.budget_source
        )?;
        match self.largest_square {
            0 => write!(f, "no 1:1 size fits at batch {}", self.batch),
            s => write!(
                f,
                "the largest 1:1 size that fits at batch {} is {s}x{s}",
                self.batch
            ),
        }
    }
}

impl MemoryPlan {
    /// A plan for a model of `shape`: `baseline` is the process without the
    /// model, `weights` the model's tensors at their runtime dtype.
    /// `tiling_available` says whether the engine can decode in tiles.
    pub fn new(
        budget: Budget,
        baseline: u64,
        weights: u64,
        shape: ModelShape,
        vae_tiling: VaeTiling,
        tiling_available: bool,
    ) -> Self {
        Self {
            budget,
            baseline,
            weights,
            cost: Cost::Model(shape),
            vae_tiling,
            tiling_available,
        }
    }

    /// A plan whose activations cost `bytes_per_pixel` per pixel per image:
    /// for fake backends and tests, where no model shape exists.
    pub fn per_pixel(budget: Budget, weights: u64, bytes_per_pixel: u64) -> Self {
        Self {
            budget,
            baseline: 0,
            weights,
            cost: Cost::PerPixel(bytes_per_pixel),
            vae_tiling: VaeTiling::Off,
            tiling_available: false,
        }
    }

    /// The budget in bytes.
    pub fn budget_bytes(&self) -> u64 {
        self.budget.bytes
    }

    /// Where the budget came from (`--memory-limit`, a cgroup file, `MemAvailable`...).
    pub fn budget_source(&self) -> &str {
        &self.budget.source
    }

    /// The budget with every candidate considered.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The model's weights at their runtime dtype.
    pub fn weights_bytes(&self) -> u64 {
        self.weights
    }

    /// The process without the model.
    pub fn baseline_bytes(&self) -> u64 {
        self.baseline
    }

    /// Bytes held before any request: baseline plus weights.
    pub fn resident_bytes(&self) -> u64 {
        self.baseline.saturating_add(self.weights)
    }

    /// Side of the VAE's tiles in pixels.
    fn vae_tile(&self) -> usize {
        match &self.cost {
            Cost::Model(shape) => shape.vae_tile,
            Cost::PerPixel(_) => VAE_TILE,
        }
    }

    /// The bytes of a GPU attention score block this plan counts
    /// (`attention::ScoreBlock`); `None` where the attention is not blocked.
    pub fn score_block_bytes(&self) -> Option<u64> {
        match &self.cost {
            Cost::Model(ModelShape {
                attention: Attention::Blocked { score_bytes },
                ..
            }) => Some(*score_bytes),
            _ => None,
        }
    }

    /// The VAE tiling mode the engine was loaded with.
    pub fn vae_tiling(&self) -> VaeTiling {
        self.vae_tiling
    }

    /// Whether an image of `w × h` should be decoded in tiles: `On` tiles
    /// anything larger than a tile; `Auto` tiles when decoding it whole at
    /// batch 1 would not fit the budget; `Off` never.
    pub fn tile_vae(&self, width: usize, height: usize) -> bool {
        let tile = self.vae_tile();
        let larger = width > tile || height > tile;
        match self.vae_tiling {
            VaeTiling::Off => false,
            VaeTiling::On => larger,
            VaeTiling::Auto => larger && !self.fits_decoded(width, height, 1, true, false),
        }
    }

    /// Estimated peak bytes of generating `batch` images of `w × h`
    /// (`guidance`: classifier-free guidance doubles the UNet's batch).
    pub fn estimate(&self, width: usize, height: usize, batch: usize, guidance: bool) -> u64 {
        let tiled = self.tiling_available && self.tile_vae(width, height);
        self.estimate_with(width, height, batch, guidance, tiled)
    }

    fn estimate_with(
        &self,
        width: usize,
        height: usize,
        batch: usize,
        guidance: bool,
        tiled: bool,
    ) -> u64 {
        let pixels = (width as u128) * (height as u128);
        let activations = match &self.cost {
            Cost::PerPixel(b) => u128::from(*b) * pixels * batch as u128,
            Cost::Model(shape) => {
                let unet_batch = batch * if guidance { 2 } else { 1 };
                let unet = shape.unet_peak(width, height, unet_batch);
                // images are decoded one at a time; the batch's latents and
                // finished RGB images stay alive meanwhile. An init image is
                // encoded (tiled alike) before: the VAE's worse pass counts.
                // With --fast-decode the tiny VAE decodes whole; tiling then
                // applies to the encode only.
                let (decode, encode) = if tiled {
                    let tile = shape.vae_tile;
                    (
                        shape.vae_tiled_peak(width, height, tile),
                        shape.vae_tiled_encode_peak(width, height, tile),
                    )
                } else {
                    (
                        shape.vae_decode_peak(width, height),
                        shape.vae_encode_peak(width, height),
                    )
                };
                let decode = shape
                    .tiny_decode_peak(width, height)
                    .unwrap_or(decode)
                    .max(encode);
                let held = pixels * batch as u128 * 3 * 2;
                let live = unet.max(decode + held);
                // What the cost model does not enumerate: buffers under
                // 1 MiB (glibc's heap, per-thread arenas), small temporaries
                // and the conversions around each layer. Large buffers are
                // the allocator's own mappings (crate::alloc), whose reuse
                // never raises the peak. Calibrated against measured peaks
                // (the memory_plan test: within 15% at 384 and 512 px).
                live + live / ALLOCATOR_SLACK_DIVISOR
            }
        };
        let total = u128::from(self.resident_bytes()) + activations;
        u64::try_from(total).unwrap_or(u64::MAX)
    }

    fn fits_decoded(
        &self,
        width: usize,
        height: usize,
        batch: usize,
        guidance: bool,
        tiled: bool,
    ) -> bool {
        batch > 0 && self.estimate_with(width, height, batch, guidance, tiled) <= self.budget.bytes
    }

    /// Whether `batch` images of `w × h` fit, with guidance (the costlier case).
    pub fn fits(&self, width: usize, height: usize, batch: usize) -> bool {
        self.fits_with(width, height, batch, true)
    }

    /// Whether `batch` images of `w × h` fit, with or without guidance.
    pub fn fits_with(&self, width: usize, height: usize, batch: usize, guidance: bool) -> bool {
        batch > 0 && self.estimate(width, height, batch, guidance) <= self.budget.bytes
    }

    /// Checks a request; the error names need, budget, source and the largest square.
    pub fn check(
        &self,
        width: usize,
        height: usize,
        batch: usize,
        guidance: bool,
        multiple: usize,
    ) -> Result<(), OverBudget> {
        if self.fits_with(width, height, batch, guidance) {
            return Ok(());
        }
        Err(OverBudget {
            width,
            height,
            batch,
            need_bytes: self.estimate(width, height, batch, guidance),
            budget_bytes: self.budget.bytes,
            budget_source: self.budget.source.clone(),
            largest_square: self.largest_square_with(batch, guidance, multiple),
        })
    }

    /// [`MemoryPlan::check`] with `extra` bytes held besides (a LoRA set's
    /// patched weight copies): the need includes them, the largest square
    /// is the one that fits beside them.
    pub fn check_with_extra(
        &self,
        width: usize,
        height: usize,
        batch: usize,
        guidance: bool,
        multiple: usize,
        extra: u64,
    ) -> Result<(), OverBudget> {
        if extra == 0 {
            return self.check(width, height, batch, guidance, multiple);
        }
        let mut rest = self.clone();
        rest.budget.bytes = self.budget.bytes.saturating_sub(extra);
        rest.check(width, height, batch, guidance, multiple)
            .map_err(|e| OverBudget {
                need_bytes: e.need_bytes.saturating_add(extra),
                budget_bytes: self.budget.bytes,
                ..e
            })
    }

    /// Largest multiple of `multiple` (the VAE factor) whose square fits `batch` images, with guidance; 0 if none.
    pub fn largest_square(&self, batch: usize, multiple: usize) -> usize {
        self.largest_square_with(batch, true, multiple)
    }

    /// [`MemoryPlan::largest_square`] with or without guidance.
    pub fn largest_square_with(&self, batch: usize, guidance: bool, multiple: usize) -> usize {
        let m = multiple.max(1);
        // The estimate grows with the side, so binary search the multiples.
        let (mut lo, mut hi) = (0usize, MAX_SIDE / m);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if self.fits_with(mid * m, mid * m, batch, guidance) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo * m
    }

    /// Most images of `w × h` (with or without guidance) one batch may hold; 0 if not even one.
    pub fn max_batch(&self, width: usize, height: usize, guidance: bool) -> usize {
        let (mut lo, mut hi) = (0usize, MAX_BATCH);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if self.fits_with(width, height, mid, guidance) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::cost::Attention;

    fn budget(bytes: u64) -> Budget {
        Budget {
            bytes,
            source: "--memory-limit".into(),
            candidates: vec![],
        }
    }

    #[test]
    fn extra_bytes_are_held_beside_the_request() {
        // 100 MiB budget, 36 MiB weights, 64 bytes per pixel: 1024² fits alone.
        let plan = MemoryPlan::per_pixel(budget(100 << 20), 36 << 20, 64);
        assert!(plan.check_with_extra(1024, 1024, 1, true, 8, 0).is_ok());
        // 16 MiB of patched LoRA weights beside it: 64 + 16 > 64 MiB free.
        let err = plan
            .check_with_extra(1024, 1024, 1, true, 8, 16 << 20)
            .unwrap_err();
        assert_eq!(err.need_bytes, (36 << 20) + (64 << 20) + (16 << 20));
        assert_eq!(err.budget_bytes, 100 << 20);
        // 48 MiB left for pixels: 48 Mi / 64 = 786432 pixels, 880² the largest multiple of 8.
        assert_eq!(err.largest_square, 880);
        assert!(plan
            .check_with_extra(880, 880, 1, true, 8, 16 << 20)
            .is_ok());
    }

    #[test]
    fn per_pixel_plans_are_exact_arithmetic() {
        // 100 MiB budget, 36 MiB weights, 64 bytes per pixel per image
        let plan = MemoryPlan::per_pixel(budget(100 << 20), 36 << 20, 64);
        // 1024 x 1024 x 64 = 64 MiB: exactly fits
        assert!(plan.fits(1024, 1024, 1));
        assert!(!plan.fits(1032, 1024, 1));
        assert!(!plan.fits(1024, 1024, 2));
        assert_eq!(plan.largest_square(1, 8), 1024);
        assert_eq!(plan.largest_square(2, 8), 720);
        assert_eq!(plan.largest_square(4, 64), 512);
        assert_eq!(plan.max_batch(512, 512, true), 4);
        assert_eq!(plan.max_batch(2048, 2048, true), 0);
        let err = plan.check(2048, 2048, 1, true, 8).unwrap_err();
        assert_eq!(err.need_bytes, (36 << 20) + (256 << 20));
        assert_eq!(
            err.to_string(),
            "2048x2048 x1 needs ~292.0 MiB but the memory budget is 100.0 MiB (--memory-limit); \
             the largest 1:1 size that fits at batch 1 is 1024x1024"
        );
        let none = MemoryPlan::per_pixel(budget(1 << 20), 2 << 20, 1);
        assert!(none
            .check(8, 8, 1, false, 8)
            .unwrap_err()
            .to_string()
            .ends_with("no 1:1 size fits at batch 1"));
    }

    fn tiny() -> ModelShape {
        ModelShape {
            unet_channels: vec![32, 64],
            unet_cross_attn: vec![true, false],
            unet_heads: vec![8, 8],
            unet_layers: 2,
            latent_channels: 4,
            vae_channels: vec![32, 32, 64, 64],
            vae_layers: 2,
            vae_factor: 8,
            dtype_bytes: 4,
            vae_dtype_bytes: 4,
            vae_tile: 512,
            attention: Attention::Chunked {
                q_block: 256,
                k_block: 256,
            },
            fast_decode_channels: None,
            cpu_convs: false,
        }
    }

    /// With --fast-decode the plan counts the tiny VAE's whole decode, not
    /// the VAE's: a tiled VAE decode no longer stands in for it.
    #[test]
    fn fast_decode_counts_the_tiny_decoder_whole() {
        let kl = MemoryPlan::new(budget(1 << 40), 0, 0, tiny(), VaeTiling::Off, true);
        let fast_shape = ModelShape {
            fast_decode_channels: Some(256),
            ..tiny()
        };
        let wide = fast_shape.tiny_decode_peak(4096, 4096).expect("tiny");
        let fast = MemoryPlan::new(budget(1 << 40), 0, 0, fast_shape, VaeTiling::On, true);
        // Tiled for the encode, yet the whole tiny decode is in the estimate.
        assert!(fast.tile_vae(4096, 4096));
        assert!(u128::from(fast.estimate(4096, 4096, 1, false)) >= wide);
        assert!(fast.estimate(4096, 4096, 1, false) > kl.estimate(4096, 4096, 1, false));
    }

    #[test]
    fn model_plans_are_monotonic_and_guidance_costs_more() {
        let plan = MemoryPlan::new(
            budget(1 << 30),
            50 << 20,
            20 << 20,
            tiny(),
            VaeTiling::Off,
            false,
        );
        let side = plan.largest_square(1, 8);
        assert!(side > 64 && side.is_multiple_of(8), "{side}");
        assert!(plan.fits(side, side, 1) && !plan.fits(side + 8, side + 8, 1));
        assert!(plan.estimate(512, 512, 1, true) >= plan.estimate(512, 512, 1, false));
        assert!(plan.max_batch(256, 256, true) >= 1);
        assert!(!plan.tile_vae(4096, 4096));
    }

    #[test]
    fn auto_tiling_starts_where_a_whole_decode_stops_fitting() {
        let plan = MemoryPlan::new(budget(1 << 30), 0, 0, tiny(), VaeTiling::Auto, true);
        assert!(!plan.tile_vae(512, 512));
        assert!(plan.tile_vae(4096, 4096));
        let on = MemoryPlan::new(budget(1 << 30), 0, 0, tiny(), VaeTiling::On, true);
        assert!(on.tile_vae(520, 512) && !on.tile_vae(512, 512));
    }
}
