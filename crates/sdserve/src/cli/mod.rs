//! One module per subcommand.

pub mod generate;
pub mod healthcheck;
pub mod logging;
pub mod models;
pub mod serve;

use std::path::PathBuf;

/// The options that trade exactness for speed, the same on `generate` and
/// `serve` (off by default; each is named in the infotext when on).
#[derive(clap::Args, Debug)]
pub struct SpeedTrades {
    /// A tiny VAE folder (TAESD-class `AutoencoderTiny`, e.g. a download of
    /// madebyollin/taesd, or taesdxl for SDXL): live previews are drawn with
    /// it at full size, and with --fast-decode the final images too.
    #[arg(long, value_name = "DIR", env = "SDSERVE_TINY_VAE")]
    pub tiny_vae: Option<PathBuf>,
    /// Decode every image with --tiny-vae instead of the model's VAE: many
    /// times faster, approximate; the infotext says `Fast decode: <folder>`.
    #[arg(long, env = "SDSERVE_FAST_DECODE", requires = "tiny_vae")]
    pub fast_decode: bool,
    /// DeepCache-style step caching: every N-th UNet call of a job runs in
    /// full, the others reuse its deep features and run only the outermost
    /// layers (much faster, approximate; the infotext says
    /// `DeepCache interval: N`). N is at least 2; off by default.
    #[arg(long, value_name = "N", env = "SDSERVE_STEP_CACHE",
          value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub step_cache: Option<u32>,
}

/// `--memory-limit`: `8G`, `8GiB`, `512M` or plain bytes (binary units).
pub fn parse_memory_limit(s: &str) -> Result<u64, String> {
    match sdserve_engine::memory::parse_size(s) {
        Ok(0) => Err("the memory limit must be more than 0 bytes".into()),
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_limits_parse_with_units_and_refuse_garbage() {
        assert_eq!(super::parse_memory_limit("8G"), Ok(8 << 30));
        assert_eq!(super::parse_memory_limit("8GiB"), Ok(8 << 30));
        assert_eq!(super::parse_memory_limit("512M"), Ok(512 << 20));
        assert_eq!(super::parse_memory_limit("1000"), Ok(1000));
        assert!(super::parse_memory_limit("0").is_err());
        assert!(super::parse_memory_limit("lots")
            .unwrap_err()
            .contains("e.g. 8G, 8GiB, 512M"));
    }
}
