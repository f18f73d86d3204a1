//! The UNet calls of one denoising step: inputs grouped by context length
//! (one batched call each), and `--step-cache`'s full and shallow calls.

use candle_core::{DType, Tensor};

use crate::conditioning::Conditioning;
use crate::error::Result;
use crate::model::StableDiffusion;
use crate::unet::{AddedConditioning, StepCache};

/// What the calls of a step do with `--step-cache`'s kept features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheMode {
    /// No step cache.
    Off,
    /// Full calls; each input's kept feature is replaced by this call's.
    Record,
    /// Shallow calls over each input's kept feature.
    Reuse,
}

/// The UNet's prediction (f32) for every input, in order. Inputs whose
/// contexts differ in length (prompts of more 75-token chunks than others)
/// cannot share a call: each length runs as its own batch, as A1111 runs
/// cond and uncond apart when their lengths differ.
pub(crate) fn predict(
    model: &StableDiffusion,
    t: f64,
    inputs: &[Tensor],
    conds: &[(&Conditioning, &Tensor)],
    cache: CacheMode,
    kept: &mut [Option<Tensor>],
) -> Result<Tensor> {
    let lengths = conds
        .iter()
        .map(|(c, _)| c.context.dim(1))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut distinct = lengths.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let mut parts: Vec<Option<Tensor>> = vec![None; inputs.len()];
    for length in &distinct {
        let rows: Vec<usize> = (0..inputs.len())
            .filter(|&i| lengths[i] == *length)
            .collect();
        let x = Tensor::cat(&rows.iter().map(|&i| &inputs[i]).collect::<Vec<_>>(), 0)?;
        let contexts: Vec<&Tensor> = rows.iter().map(|&i| &conds[i].0.context).collect();
        let context = Tensor::cat(&contexts, 0)?.to_dtype(model.unet_dtype)?;
        let pooled: Option<Vec<&Tensor>> =
            rows.iter().map(|&i| conds[i].0.pooled.as_ref()).collect();
        let added = match pooled {
            Some(pooled) if !pooled.is_empty() => Some(AddedConditioning {
                text_embeds: Tensor::cat(&pooled, 0)?,
                time_ids: Tensor::cat(&rows.iter().map(|&i| conds[i].1).collect::<Vec<_>>(), 0)?,
            }),
            _ => None,
        };
        // Latents and sampler arithmetic stay f32; the UNet runs in its own dtype.
        let x = x.to_dtype(model.unet_dtype)?;
        let deep;
        let step_cache = match cache {
            CacheMode::Off => StepCache::Off,
            CacheMode::Record => StepCache::Record,
            CacheMode::Reuse => {
                let rows: Option<Vec<&Tensor>> = rows.iter().map(|&i| kept[i].as_ref()).collect();
                let rows = rows.ok_or_else(|| {
                    candle_core::Error::Msg("a shallow UNet call without a kept feature".into())
                })?;
                deep = Tensor::cat(&rows, 0)?;
                StepCache::Reuse(&deep)
            }
        };
        let (prediction, recorded) =
            model
                .unet
                .forward_cached(&x, t, &context, added.as_ref(), step_cache)?;
        if let Some(recorded) = recorded {
            let mut offset = 0;
            for &i in &rows {
                let n = inputs[i].dim(0)?;
                kept[i] = Some(recorded.narrow(0, offset, n)?);
                offset += n;
            }
        }
        let prediction = prediction.to_dtype(DType::F32)?;
        if distinct.len() == 1 {
            return Ok(prediction);
        }
        let mut offset = 0;
        for &i in &rows {
            let n = inputs[i].dim(0)?;
            parts[i] = Some(prediction.narrow(0, offset, n)?);
            offset += n;
        }
    }
    Ok(Tensor::cat(
        &parts.into_iter().flatten().collect::<Vec<_>>(),
        0,
    )?)
}
