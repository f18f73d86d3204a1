//! The hires fix at the gate: its steps, strength and target size against the
//! configured limits. The engine checks the rest (the schedule its strength
//! makes, the memory plan at the target size).

use super::{check_count_from, ValidationError};
use crate::config::Limits;
use crate::engine_api::{HiresFix, HiresSize, StepCount, Upscaler};

/// A dialect's hires fix, its upscaler already named by the dialect's rules.
#[derive(Debug, Clone)]
pub struct HiresSpec {
    /// What enlarges the first pass.
    pub upscaler: Upscaler,
    /// Scale factor or target size.
    pub size: HiresSize,
    /// Second-pass steps; 0 takes the first pass's.
    pub steps: i64,
    /// Second-pass denoising strength.
    pub denoising_strength: f64,
    /// How the dialect names these fields.
    pub names: HiresFieldNames,
}

/// How a dialect spells the hires fields, so errors name what the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HiresFieldNames {
    /// The scale (or resize) field: errors about the target size name it.
    pub size: &'static str,
    /// Second-pass steps.
    pub steps: &'static str,
    /// Second-pass strength.
    pub strength: &'static str,
}

/// The engine's hires settings and the output size, or the rule `spec` breaks
/// for a first pass of `width` x `height`.
pub(super) fn check(
    spec: HiresSpec,
    (width, height): (usize, usize),
    multiple: usize,
    limits: &Limits,
) -> Result<(HiresFix, (usize, usize)), ValidationError> {
    let n = spec.names;
    let steps = check_count_from(n.steps, spec.steps, 0, limits.max_steps)?;
    let strength = spec.denoising_strength;
    if !strength.is_finite() {
        return Err(ValidationError::NotFinite { field: n.strength });
    }
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(ValidationError::Invalid {
            field: n.strength,
            message: format!("must be greater than 0 and at most 1, got {strength}"),
        });
    }
    let fix = HiresFix {
        upscaler: spec.upscaler,
        size: spec.size,
        steps,
        denoising_strength: strength,
        step_count: StepCount::A1111,
    };
    let geometry = fix
        .geometry(width, height, multiple)
        .map_err(|e| ValidationError::Invalid {
            field: n.size,
            message: e.to_string(),
        })?;
    let (out_w, out_h) = geometry.output;
    for (max, got) in [(limits.max_width, out_w), (limits.max_height, out_h)] {
        if got > max {
            return Err(ValidationError::Invalid {
                field: n.size,
                message: format!(
                    "the hires fix makes {out_w}x{out_h} images; the size limit is {}x{}",
                    limits.max_width, limits.max_height
                ),
            });
        }
    }
    let pixels = out_w.saturating_mul(out_h);
    if pixels > limits.max_pixels {
        return Err(ValidationError::TooManyPixels {
            field: n.size,
            width: out_w,
            height: out_h,
            pixels,
            max: limits.max_pixels,
        });
    }
    Ok((fix, (out_w, out_h)))
}
