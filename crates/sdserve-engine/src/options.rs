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

/// Precision of the weights and activations (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f16 on CUDA, f32 on the CPU.
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!(
                "unknown dtype {other:?} (expected auto, f32, f16 or bf16)"
            )),
        }
    }
}

/// Where the engine runs (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first CUDA GPU when built with `cuda` and one is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA device N as the process sees it (after `CUDA_VISIBLE_DEVICES`,
    /// which is also how a MIG instance is chosen: `MIG-<uuid>`).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => return Ok(Self::Auto),
            "cpu" => return Ok(Self::Cpu),
            "cuda" => return Ok(Self::Cuda(0)),
            _ => {}
        }
        if s.contains(',') || s == "all" {
            return Err(format!(
                "{s:?}: one engine serves one device for now; run one sdserve per GPU (CUDA_VISIBLE_DEVICES) behind a load balancer"
            ));
        }
        s.strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Self::Cuda)
            .ok_or_else(|| format!("unknown device {s:?} (expected auto, cpu, cuda or cuda:N)"))
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
    /// `--dtype`.
    pub dtype: Precision,
    /// `--device`.
    pub device: DeviceChoice,
    /// `--embeddings-dir`: textual-inversion embeddings prompts may name.
    pub embeddings_dir: Option<std::path::PathBuf>,
    /// `--lora-dir`: where requests' LoRAs are looked up by name.
    pub lora_dir: Option<std::path::PathBuf>,
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
