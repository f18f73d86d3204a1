//! A1111's "hires fix": a text-to-image pass at the requested size, its
//! latents (or its decoded image) upscaled, then an image-to-image pass at the
//! larger size. This module holds the settings, A1111's target-size and crop
//! arithmetic, the second pass's schedule and the latent upscalers
//! (`torch.nn.functional.interpolate` as A1111 calls it); `pipeline.rs` runs
//! the two passes.
//!
//! Sources read: A1111 `processing.py` (`calculate_target_resolution`,
//! `sample_hr_pass`), `sd_samplers_common.py` (`setup_img2img_steps`),
//! `shared.py` (`latent_upscale_modes`); torch's CPU upsample kernels. The
//! recipe and the facts each case relies on are in
//! `fixtures/make_hires_fixtures.py` and `fixtures/reference/hires-manifest.json`.

use crate::error::{EngineError, Result};
use crate::image_ops::Filter;

/// A1111's defaults for an enabled hires fix (`StableDiffusionProcessingTxt2Img`).
pub const DEFAULT_SCALE: f64 = 2.0;
pub const DEFAULT_DENOISING_STRENGTH: f64 = 0.75;

/// The hires-fix settings of a text-to-image job.
#[derive(Debug, Clone, PartialEq)]
pub struct HiresFix {
    pub upscaler: Upscaler,
    pub size: HiresSize,
    /// Steps of the second pass; 0 takes the first pass's (A1111's `hr_second_pass_steps`).
    pub steps: usize,
    /// How much of the second pass's schedule reruns, in (0, 1].
    pub denoising_strength: f64,
    pub step_count: StepCount,
}

/// The second pass's size, as A1111 takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HiresSize {
    /// `hr_scale`: both sides times the factor (truncated).
    Scale(f64),
    /// `hr_resize_x` / `hr_resize_y`: a size, 0 for "keep the aspect ratio";
    /// another aspect ratio than the first pass's is reached by a centre crop.
    Resize { width: usize, height: usize },
}

/// How the second pass's steps relate to its strength.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepCount {
    /// A1111: exactly `steps` steps run, the last ones of a schedule of
    /// `int(steps / min(strength, 0.999))`.
    A1111,
    /// diffusers' img2img pipeline: a `steps`-step schedule of which
    /// `int(steps * strength)` run.
    Diffusers,
}

/// What enlarges the first pass's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upscaler {
    /// Interpolate the latents (no VAE round trip).
    Latent(LatentMode),
    /// Decode, resize the 8-bit image with a Pillow filter, encode again.
    Image(ImageUpscaler),
}

/// A1111's latent upscale modes that sdserve implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentMode {
    /// "Latent": bilinear, `align_corners=False`, no antialiasing.
    Bilinear,
    /// "Latent (antialiased)": the same as bilinear when enlarging, which is all a hires fix does.
    BilinearAntialiased,
    /// "Latent (bicubic)": torch's bicubic (A = -0.75), edges replicated.
    Bicubic,
    /// "Latent (nearest)": `floor(dst * in / out)`.
    Nearest,
    /// "Latent (nearest-exact)": `floor((dst + 0.5) * in / out)`.
    NearestExact,
}

/// A1111's built-in image upscalers (no model files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageUpscaler {
    /// "None": no upscaler model, so `resize_image`'s final Lanczos resize.
    None,
    Lanczos,
    Nearest,
}

/// Every upscaler name [`Upscaler::parse`] takes, latent modes first.
pub const UPSCALER_NAMES: [&str; 8] = [
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
    "None",
    "Lanczos",
    "Nearest",
];

impl Upscaler {
    /// A1111's name for an upscaler (`hr_upscaler`), case-insensitively; `None`
    /// for a name sdserve does not implement (model-based upscalers such as
    /// ESRGAN, and "Latent (bicubic antialiased)").
    pub fn parse(name: &str) -> Option<Self> {
        use ImageUpscaler as I;
        use LatentMode as L;
        let all = [
            Self::Latent(L::Bilinear),
            Self::Latent(L::BilinearAntialiased),
            Self::Latent(L::Bicubic),
            Self::Latent(L::Nearest),
            Self::Latent(L::NearestExact),
            Self::Image(I::None),
            Self::Image(I::Lanczos),
            Self::Image(I::Nearest),
        ];
        all.into_iter()
            .find(|u| u.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The name A1111 lists and writes in the infotext.
    pub fn name(self) -> &'static str {
        match self {
            Self::Latent(LatentMode::Bilinear) => UPSCALER_NAMES[0],
            Self::Latent(LatentMode::BilinearAntialiased) => UPSCALER_NAMES[1],
            Self::Latent(LatentMode::Bicubic) => UPSCALER_NAMES[2],
            Self::Latent(LatentMode::Nearest) => UPSCALER_NAMES[3],
            Self::Latent(LatentMode::NearestExact) => UPSCALER_NAMES[4],
            Self::Image(ImageUpscaler::None) => UPSCALER_NAMES[5],
            Self::Image(ImageUpscaler::Lanczos) => UPSCALER_NAMES[6],
            Self::Image(ImageUpscaler::Nearest) => UPSCALER_NAMES[7],
        }
    }
}

impl ImageUpscaler {
    /// The one Pillow resize A1111's `resize_image` amounts to for these
    /// upscalers (their `do_upscale` is a plain PIL resize).
    pub fn filter(self) -> Filter {
        match self {
            Self::None | Self::Lanczos => Filter::Lanczos,
            Self::Nearest => Filter::Nearest,
        }
    }
}

/// Where the second pass's latents come from, in pixels and latent cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// The size the first pass's result is upscaled to (`hr_upscale_to_x/y`),
    /// before the crop: it covers the target with the first pass's aspect ratio.
    pub upscale_to: (usize, usize),
    /// Latent cells cut from (top, left) of the upscaled latents.
    pub crop_top: usize,
    pub crop_left: usize,
    /// The second pass's latent (height, width).
    pub latent: (usize, usize),
    /// The output image's (width, height): the latent times the VAE factor.
    pub output: (usize, usize),
}

impl HiresFix {
    /// A1111's `calculate_target_resolution` and the centre crop of
    /// `sample_hr_pass`, for a first pass of `width` x `height` and a VAE
    /// that scales by `factor`.
    pub fn geometry(&self, width: usize, height: usize, factor: usize) -> Result<Geometry> {
        let invalid = |m: String| Err(EngineError::InvalidRequest(m));
        let (up_x, up_y, target_x, target_y) = match self.size {
            HiresSize::Scale(scale) => {
                if !(1.0..=16.0).contains(&scale) {
                    return invalid(format!(
                        "the hires scale must be between 1 and 16, got {scale}"
                    ));
                }
                let x = (width as f64 * scale) as usize;
                let y = (height as f64 * scale) as usize;
                (x, y, x, y)
            }
            HiresSize::Resize {
                width: 0,
                height: 0,
            } => return invalid("a hires resize needs a width or a height".into()),
            HiresSize::Resize {
                width: rx,
                height: 0,
            } => {
                let y = rx.saturating_mul(height) / width.max(1);
                (rx, y, rx, y)
            }
            HiresSize::Resize {
                width: 0,
                height: ry,
            } => {
                let x = ry.saturating_mul(width) / height.max(1);
                (x, ry, x, ry)
            }
            HiresSize::Resize {
                width: rx,
                height: ry,
            } => {
                // Compare width / height with rx / ry exactly, in integers.
                if width.saturating_mul(ry) < rx.saturating_mul(height) {
                    (rx, rx.saturating_mul(height) / width.max(1), rx, ry)
                } else {
                    (ry.saturating_mul(width) / height.max(1), ry, rx, ry)
                }
            }
        };
        if up_x < width || up_y < height {
            return invalid(format!(
                "the hires fix enlarges: {target_x}x{target_y} is smaller than the first pass's {width}x{height}"
            ));
        }
        let truncate_x = (up_x - target_x) / factor;
        let truncate_y = (up_y - target_y) / factor;
        let (full_h, full_w) = (up_y / factor, up_x / factor);
        let latent_h = full_h.saturating_sub(truncate_y);
        let latent_w = full_w.saturating_sub(truncate_x);
        if latent_h == 0 || latent_w == 0 {
            return invalid(format!(
                "the hires size {target_x}x{target_y} is smaller than one latent cell"
            ));
        }
        Ok(Geometry {
            upscale_to: (up_x, up_y),
            crop_top: truncate_y / 2,
            crop_left: truncate_x / 2,
            latent: (latent_h, latent_w),
            output: (latent_w * factor, latent_h * factor),
        })
    }

    /// The second pass's schedule length and first step, after a first pass
    /// of `first_steps` steps.
    pub fn schedule(&self, first_steps: usize) -> (usize, usize) {
        let requested = if self.steps == 0 {
            first_steps
        } else {
            self.steps
        };
        match self.step_count {
            StepCount::A1111 => {
                let steps = (requested as f64 / self.denoising_strength.min(0.999)) as usize;
                let steps = steps.max(requested);
                (steps, steps - requested)
            }
            StepCount::Diffusers => (
                requested,
                crate::img2img::start_step(requested, self.denoising_strength),
            ),
        }
    }

    /// What only the settings can tell: a strength in (0, 1] that runs at
    /// least one step, and a schedule within the model's training timesteps.
    pub fn validate(&self, first_steps: usize, train_steps: usize) -> Result<()> {
        let s = self.denoising_strength;
        if !(s.is_finite() && s > 0.0 && s <= 1.0) {
            return Err(EngineError::InvalidRequest(format!(
                "the hires denoising strength must be in (0, 1], got {s}"
            )));
        }
        let (steps, start) = self.schedule(first_steps);
        if start >= steps {
            return Err(EngineError::InvalidRequest(format!(
                "hires denoising strength {s} runs no step of {steps}"
            )));
        }
        if steps > train_steps {
            return Err(EngineError::InvalidRequest(format!(
                "the hires pass's schedule ({steps} steps for denoising strength {s}) is longer \
                 than the model's {train_steps} training timesteps"
            )));
        }
        Ok(())
    }

    /// The infotext settings A1111 writes for a hires job.
    pub fn infotext_settings(&self) -> Vec<(&'static str, String)> {
        let mut settings = vec![("Denoising strength", self.denoising_strength.to_string())];
        match self.size {
            HiresSize::Scale(scale) => settings.push(("Hires upscale", scale.to_string())),
            HiresSize::Resize { width, height } => {
                settings.push(("Hires resize", format!("{width}x{height}")))
            }
        }
        if self.steps != 0 {
            settings.push(("Hires steps", self.steps.to_string()));
        }
        settings.push(("Hires upscaler", self.upscaler.name().to_string()));
        settings
    }
}

/// `F.interpolate(x, size=(out_h, out_w), mode, align_corners=False)` on
/// `(n, c, h, w)` values laid out row-major, as torch's CPU kernels compute it (f32).
pub fn interpolate(
    values: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    (out_h, out_w): (usize, usize),
    mode: LatentMode,
) -> Vec<f32> {
    let rows = axis_weights(h, out_h, mode);
    let cols = axis_weights(w, out_w, mode);
    let mut out = Vec::with_capacity(n * c * out_h * out_w);
    for plane in values.chunks_exact(h * w).take(n * c) {
        for (row_taps, row_weights) in &rows {
            for (col_taps, col_weights) in &cols {
                let mut sum = 0f32;
                for (&y, &wy) in row_taps.iter().zip(row_weights) {
                    let mut line = 0f32;
                    for (&x, &wx) in col_taps.iter().zip(col_weights) {
                        line += plane[y * w + x] * wx;
                    }
                    sum += line * wy;
                }
                out.push(sum);
            }
        }
    }
    out
}

/// [`interpolate`] on a `(n, c, h, w)` tensor (on any device; the values go
/// through the host, latents being small).
pub fn interpolate_tensor(
    latents: &candle_core::Tensor,
    size: (usize, usize),
    mode: LatentMode,
) -> Result<candle_core::Tensor> {
    let dims = latents.dims4()?;
    let values = latents
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let values = interpolate(&values, dims, size, mode);
    Ok(candle_core::Tensor::from_vec(
        values,
        (dims.0, dims.1, size.0, size.1),
        latents.device(),
    )?)
}

/// For each output index along one axis: the input indices it reads and their weights.
fn axis_weights(input: usize, output: usize, mode: LatentMode) -> Vec<(Vec<usize>, Vec<f32>)> {
    // torch's area_pixel_compute_scale without a scale factor: in / out, in f32.
    let scale = input as f32 / output as f32;
    let last = input.saturating_sub(1);
    (0..output)
        .map(|dst| match mode {
            LatentMode::Nearest | LatentMode::NearestExact => {
                let offset = if mode == LatentMode::Nearest {
                    0.0
                } else {
                    0.5
                };
                let src = ((dst as f32 + offset) * scale).floor() as usize;
                (vec![src.min(last)], vec![1.0])
            }
            LatentMode::Bilinear | LatentMode::BilinearAntialiased => {
                let real = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
                let index = (real.floor() as usize).min(last);
                let lambda = (real - index as f32).clamp(0.0, 1.0);
                let next = (index + 1).min(last);
                (vec![index, next], vec![1.0 - lambda, lambda])
            }
            LatentMode::Bicubic => {
                let real = scale * (dst as f32 + 0.5) - 0.5;
                let floor = real.floor();
                let t = real - floor;
                let taps = (-1..3)
                    .map(|k| (floor as i64 + k).clamp(0, last as i64) as usize)
                    .collect();
                (taps, cubic_weights(t).to_vec())
            }
        })
        .collect()
}

/// torch's `get_cubic_upsample_coefficients` with A = -0.75.
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(size: HiresSize) -> HiresFix {
        HiresFix {
            upscaler: Upscaler::Latent(LatentMode::Bilinear),
            size,
            steps: 0,
            denoising_strength: 0.7,
            step_count: StepCount::A1111,
        }
    }

    #[test]
    fn target_sizes_follow_calculate_target_resolution() {
        let g = fix(HiresSize::Scale(1.5)).geometry(64, 64, 8).unwrap();
        assert_eq!(
            (g.upscale_to, g.latent, g.output),
            ((96, 96), (12, 12), (96, 96))
        );
        // 512 x 1.3 = 665.6: the latent is 665 // 8 = 83 cells, the image 664.
        let g = fix(HiresSize::Scale(1.3)).geometry(512, 512, 8).unwrap();
        assert_eq!(
            (g.upscale_to, g.latent, g.output),
            ((665, 665), (83, 83), (664, 664))
        );
        // Another aspect ratio: cover 96x96, crop 4 rows of cells (2 at the top).
        let g = fix(HiresSize::Resize {
            width: 96,
            height: 64,
        })
        .geometry(64, 64, 8)
        .unwrap();
        assert_eq!((g.upscale_to, g.crop_top, g.crop_left), ((96, 96), 2, 0));
        assert_eq!((g.latent, g.output), ((8, 12), (96, 64)));
        // One side 0 keeps the aspect ratio.
        let g = fix(HiresSize::Resize {
            width: 0,
            height: 96,
        })
        .geometry(64, 48, 8)
        .unwrap();
        assert_eq!((g.upscale_to, g.output), ((128, 96), (128, 96)));
        assert!(fix(HiresSize::Scale(0.5)).geometry(64, 64, 8).is_err());
        assert!(fix(HiresSize::Scale(f64::NAN)).geometry(64, 64, 8).is_err());
        assert!(fix(HiresSize::Resize {
            width: 0,
            height: 0
        })
        .geometry(64, 64, 8)
        .is_err());
    }

    #[test]
    fn a1111_runs_exactly_the_requested_steps() {
        let mut f = fix(HiresSize::Scale(2.0));
        f.denoising_strength = 0.75;
        f.steps = 4;
        // int(4 / 0.75) = 5: steps 1..5 of a 5-step schedule.
        assert_eq!(f.schedule(20), (5, 1));
        f.steps = 0;
        assert_eq!(f.schedule(20), (26, 6));
        f.denoising_strength = 1.0; // min(1, 0.999): int(20 / 0.999) = 20.
        assert_eq!(f.schedule(20), (20, 0));
        f.step_count = StepCount::Diffusers;
        f.denoising_strength = 0.6;
        f.steps = 4;
        assert_eq!(f.schedule(20), (4, 2));
        f.denoising_strength = 0.001;
        f.step_count = StepCount::A1111;
        assert!(f.validate(20, 1000).is_err());
    }

    #[test]
    fn upscaler_names_round_trip() {
        for name in UPSCALER_NAMES {
            assert_eq!(Upscaler::parse(name).unwrap().name(), name);
        }
        assert_eq!(
            Upscaler::parse("latent (NEAREST)"),
            Some(Upscaler::Latent(LatentMode::Nearest))
        );
        assert_eq!(Upscaler::parse("R-ESRGAN 4x+"), None);
        assert_eq!(Upscaler::parse("Latent (bicubic antialiased)"), None);
    }

    /// Values torch gives for `F.interpolate` of `arange(4).view(1, 1, 1, 4)`
    /// to width 6 (align_corners=False).
    #[test]
    fn interpolation_matches_torch() {
        let x = [0.0, 1.0, 2.0, 3.0];
        let run = |mode| interpolate(&x, (1, 1, 1, 4), (1, 6), mode);
        assert_eq!(run(LatentMode::Nearest), [0.0, 0.0, 1.0, 2.0, 2.0, 3.0]);
        assert_eq!(
            run(LatentMode::NearestExact),
            [0.0, 1.0, 1.0, 2.0, 3.0, 3.0]
        );
        let bilinear = run(LatentMode::Bilinear);
        let expected = [0.0, 0.5, 1.1666666, 1.8333334, 2.5, 3.0];
        for (a, b) in bilinear.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{bilinear:?}");
        }
        let bicubic = run(LatentMode::Bicubic);
        let expected = [
            -0.0868056, 0.40625, 1.2129627, 1.7870371, 2.59375, 3.0868058,
        ];
        for (a, b) in bicubic.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{bicubic:?}");
        }
    }
}
