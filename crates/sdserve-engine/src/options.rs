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
                "{s:?}: this command runs on one device (auto, cpu, cuda or cuda:N); `sdserve serve` takes lists and `all`"
            ));
        }
        s.strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Self::Cuda)
            .ok_or_else(|| format!("unknown device {s:?} (expected auto, cpu, cuda or cuda:N)"))
    }
}

/// `sdserve serve --device`: one device, a list of CUDA devices
/// (`cuda:0,cuda:1`), or `all` of them. The server runs one engine and one
/// worker per device behind its one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSet {
    /// One device, as `generate` takes it.
    One(DeviceChoice),
    /// Distinct CUDA devices, in the order given.
    Cuda(Vec<usize>),
    /// Every CUDA device the process sees; the CPU when there is none (as `auto`).
    All,
}

impl Default for DeviceSet {
    fn default() -> Self {
        Self::One(DeviceChoice::Auto)
    }
}

impl FromStr for DeviceSet {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s == "all" {
            return Ok(Self::All);
        }
        if !s.contains(',') {
            return s.parse().map(Self::One).map_err(|_| {
                format!("unknown device {s:?} (expected auto, cpu, cuda, cuda:N, a list cuda:0,cuda:1 or all)")
            });
        }
        let mut ordinals = Vec::new();
        for part in s.split(',').map(str::trim) {
            let ordinal = match part.parse::<DeviceChoice>() {
                Ok(DeviceChoice::Cuda(n)) => n,
                _ => {
                    return Err(format!(
                        "{part:?} in the device list {s:?}: a list names CUDA devices only (cuda:N)"
                    ))
                }
            };
            if ordinals.contains(&ordinal) {
                return Err(format!(
                    "cuda:{ordinal} appears twice in the device list {s:?}"
                ));
            }
            ordinals.push(ordinal);
        }
        Ok(Self::Cuda(ordinals))
    }
}

impl DeviceSet {
    /// The devices to open, one engine each: `All` counts the CUDA devices
    /// (none, or a build without CUDA: the CPU alone).
    pub fn resolve(&self) -> Vec<DeviceChoice> {
        match self {
            Self::One(choice) => vec![*choice],
            Self::Cuda(ordinals) => ordinals.iter().map(|&n| DeviceChoice::Cuda(n)).collect(),
            Self::All => match crate::engine::cuda_device_count() {
                0 => vec![DeviceChoice::Cpu],
                n => (0..n).map(DeviceChoice::Cuda).collect(),
            },
        }
    }
}

impl DeviceChoice {
    /// How logs and `/readyz` name the device: `auto` as what it picks.
    pub fn label(self) -> String {
        match self {
            Self::Auto if crate::engine::cuda_device_count() > 0 => "cuda:0".into(),
            Self::Auto => "cpu".into(),
            other => other.to_string(),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
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
    /// `--dtype`.
    pub dtype: Precision,
    /// `--device`.
    pub device: DeviceChoice,
    /// `--embeddings-dir`: textual-inversion embeddings prompts may name.
    pub embeddings_dir: Option<std::path::PathBuf>,
    /// `--lora-dir`: where requests' LoRAs are looked up by name.
    pub lora_dir: Option<std::path::PathBuf>,
    /// `--tiny-vae`: a tiny VAE (TAESD-class `AutoencoderTiny` folder) that
    /// draws the live previews, and with `fast_decode` the final images.
    pub tiny_vae: Option<std::path::PathBuf>,
    /// `--fast-decode`: the tiny VAE decodes every final image instead of
    /// the model's VAE (needs `tiny_vae`).
    pub fast_decode: bool,
    /// `--step-cache N`: DeepCache-style reuse of the UNet's deep features,
    /// a full call every N (at least 2) calls of a job.
    pub step_cache: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_sets_parse_lists_and_all_and_refuse_mixtures() {
        assert_eq!("cuda:1".parse(), Ok(DeviceSet::One(DeviceChoice::Cuda(1))));
        assert_eq!("cpu".parse(), Ok(DeviceSet::One(DeviceChoice::Cpu)));
        assert_eq!("all".parse(), Ok(DeviceSet::All));
        assert_eq!("cuda:2, cuda:0".parse(), Ok(DeviceSet::Cuda(vec![2, 0])));
        assert_eq!(
            DeviceSet::Cuda(vec![2, 0]).resolve(),
            [DeviceChoice::Cuda(2), DeviceChoice::Cuda(0)]
        );
        for (bad, says) in [
            ("cpu,cuda:0", "CUDA devices only"),
            ("cuda:0,cuda:0", "appears twice"),
            ("cuda:0,", "CUDA devices only"),
            ("tpu", "a list cuda:0,cuda:1 or all"),
        ] {
            let err = bad.parse::<DeviceSet>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        // one device only where one engine runs (generate)
        let err = "cuda:0,cuda:1".parse::<DeviceChoice>().unwrap_err();
        assert!(err.contains("`sdserve serve` takes lists"), "{err}");
        assert_eq!(DeviceChoice::Cuda(3).to_string(), "cuda:3");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn all_is_the_cpu_without_cuda() {
        assert_eq!(DeviceSet::All.resolve(), [DeviceChoice::Cpu]);
    }

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
