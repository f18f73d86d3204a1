//! The plan for a model folder, computed before its weights are loaded so
//! that a budget too small for the weights fails with a message instead of
//! the loader being OOM-killed.

use std::path::Path;

use candle_core::{DType, Device};

use super::budget::{self, Budget, Candidate, HostPaths};
use super::cost::ModelShape;
use super::plan::MemoryPlan;
use crate::config::{UNetConfig, VaeConfig};
use crate::error::{EngineError, Result};
use crate::model_files::{ModelFiles, Part};
use crate::options::EngineOptions;

/// `vae_tiling.rs` can cut any image the VAE config allows into tiles.
const TILING_AVAILABLE: bool = true;

/// Memory the process holds beyond its resident size at start that the
/// model's load adds besides weights: the tokenizer's tables, allocator
/// arenas of the loader's threads. Measured on the tiny fixtures; small next
/// to any real model.
const LOAD_OVERHEAD: u64 = 16 << 20;

/// Used when the process's resident size cannot be read (not Linux).
const FALLBACK_BASELINE: u64 = 64 << 20;

/// Computes the plan for the diffusers folder or single file `dir` on `device`, refusing a
/// budget below what the weights and the process need.
pub fn plan_for_model(
    dir: &Path,
    options: &EngineOptions,
    device: &Device,
    dtype: DType,
) -> Result<MemoryPlan> {
    let files = ModelFiles::open(dir)?;
    let unet: UNetConfig = files.unet_config()?;
    let vae: VaeConfig = files.vae_config()?;
    let vae_dtype = crate::model::vae_dtype(dtype, &vae);
    let tiny_vae = options
        .tiny_vae
        .as_deref()
        .map(crate::tiny_vae::folder)
        .transpose()?;
    let mut weights = 0u64;
    for (part, dtype) in [
        (Part::TextEncoder, dtype),
        (Part::TextEncoder2, dtype),
        (Part::Unet, dtype),
        // A folder's whole file is counted, though only the decoder's part is loaded.
        (Part::Vae, vae_dtype),
    ] {
        if part == Part::TextEncoder2 && !files.has(part) {
            continue;
        }
        weights = weights.saturating_add(files.runtime_bytes(part, dtype)?);
    }
    if let Some((_, files)) = &tiny_vae {
        weights = weights.saturating_add(crate::loader::runtime_bytes(files, vae_dtype)?);
    }
    let paths = HostPaths::default();
    let baseline = budget::current_rss(&paths)
        .unwrap_or(FALLBACK_BASELINE)
        .saturating_add(LOAD_OVERHEAD);
    let candidates = if device.is_cuda() {
        gpu_candidates(options.memory_limit)?
    } else {
        budget::host_candidates(options.memory_limit, &paths)
    };
    let budget = Budget::smallest(candidates).unwrap_or(Budget {
        bytes: u64::MAX,
        source: "no limit found".into(),
        candidates: Vec::new(),
    });
    let shape = ModelShape {
        cpu_convs: device.is_cpu(),
        fast_decode_channels: tiny_vae
            .filter(|_| options.fast_decode)
            .and_then(|(c, _)| c.decoder_block_out_channels.iter().copied().max()),
        ..ModelShape::from_configs(
            &unet,
            &vae,
            crate::model::compute_dtype(dtype, device).size_in_bytes(),
            crate::model::vae_compute_dtype(dtype, &vae, device).size_in_bytes(),
            super::cost::engine_attention(device, budget.bytes),
        )
    };
    let plan = MemoryPlan::new(
        budget,
        baseline,
        weights,
        shape,
        options.vae_tiling,
        TILING_AVAILABLE,
    );
    if plan.resident_bytes() > plan.budget_bytes() {
        return Err(EngineError::MemoryBudget {
            budget: plan.budget_bytes(),
            source_name: plan.budget_source().to_string(),
            need: plan.resident_bytes(),
            weights,
        });
    }
    Ok(plan)
}

/// Device memory limits for CUDA device 0: `--memory-limit`, the
/// GPU-sharing systems' variables, and the driver's free memory.
fn gpu_candidates(memory_limit: Option<u64>) -> Result<Vec<Candidate>> {
    let mut out = Vec::new();
    if let Some(bytes) = memory_limit {
        out.push(Candidate {
            bytes,
            source: "--memory-limit".into(),
        });
    }
    let env = budget::gpu_env_candidates(0, |k| std::env::var(k).ok())
        .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
    out.extend(env);
    out.extend(budget::cuda_free_memory());
    Ok(out)
}
