//! How an engine is loaded: memory budget and VAE tiling. Plain data, parsed
//! from flags by the binary; the engine turns it into a memory plan at load.

use std::str::FromStr;

/// Whether the VAE decodes (and, for img2img, encodes) in overlapping tiles,
/// as diffusers' `enable_vae_tiling()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VaeTiling {
    /// Tile only when the memory plan says the whole image would not fit.
    #[default]
    Auto,
    /// Always tile images larger than one tile.
    On,
    /// Never tile.
    Off,
}

impl FromStr for VaeTiling {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown VAE tiling mode {other:?} (expected auto, on or off)"
            )),
        }
    }
}

/// Options fixed for the life of a loaded engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineOptions {
    /// `--vae-tiling`.
    pub vae_tiling: VaeTiling,
    /// `--memory-limit` in bytes: an upper bound on what the plan may use,
    /// lowered further by the container's and the device's own limits.
    pub memory_limit: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vae_tiling_parses_its_three_names_and_refuses_others() {
        assert_eq!("auto".parse(), Ok(VaeTiling::Auto));
        assert_eq!("on".parse(), Ok(VaeTiling::On));
        assert_eq!("off".parse(), Ok(VaeTiling::Off));
        assert!("yes"
            .parse::<VaeTiling>()
            .unwrap_err()
            .contains("auto, on or off"));
    }
}
