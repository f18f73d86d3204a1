//! A VarBuilder backend that shows one part of a single file under diffusers
//! names: each request is looked up in the part's key map (`keys.rs`), read
//! through the loader's memory-mapped backend (which validated the header and
//! releases each tensor's pages once converted), cut to its rows for a fused
//! in_proj, and reshaped where LDM stores a linear layer as a 1x1 convolution
//! (the VAE's attention). Errors name the diffusers name and the file's key.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use super::keys::Source;
use crate::error::Result;
use crate::loader::MappedWeights;

/// One part of a single file, under diffusers names.
pub struct RenamedWeights {
    file: MappedWeights,
    map: HashMap<String, Source>,
}

/// A VarBuilder over `path` that serves the diffusers names of `map`.
pub fn var_builder(
    path: &Path,
    map: HashMap<String, Source>,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let file = MappedWeights::open(&[path.to_path_buf()])?;
    let backend = RenamedWeights { file, map };
    Ok(VarBuilder::from_backend(
        Box::new(backend),
        dtype,
        device.clone(),
    ))
}

impl RenamedWeights {
    fn load(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let source = self
            .map
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            })?;
        let tensor = self.file.load(source.key(), dtype, device)?;
        match source {
            Source::Whole(_) => Ok(tensor),
            Source::Transposed(_) => tensor.t()?.contiguous(),
            Source::Rows { key, start, len } => {
                let rows = tensor.dims().first().copied().unwrap_or(0);
                if *len == 0 || rows != 3 * len {
                    return Err(candle_core::Error::Msg(format!(
                        "{key}: shape {:?} is not three stacked q, k, v projections",
                        tensor.dims()
                    )));
                }
                tensor.narrow(0, *start, *len)
            }
        }
    }
}

impl SimpleBackend for RenamedWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, dtype, device)?;
        if tensor.shape() == &shape {
            return Ok(tensor);
        }
        // LDM keeps some linear weights as (out, in, 1, 1) convolutions.
        let squeezed: Vec<usize> = {
            let dims = tensor.dims();
            let keep = dims.len() - dims.iter().rev().take_while(|d| **d == 1).count();
            dims[..keep.max(shape.rank()).min(dims.len())].to_vec()
        };
        if squeezed == shape.dims() {
            return tensor.reshape(shape);
        }
        let key = self.map.get(name).map_or("?", Source::key);
        Err(candle_core::Error::UnexpectedShape {
            msg: format!("shape mismatch for {name} (the file's {key})"),
            expected: shape,
            got: tensor.shape().clone(),
        })
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    /// A file of one tensor `a` of `shape`, served as `x.weight` from `source`.
    fn builder(dir: &Path, shape: &[usize], source: Source) -> VarBuilder<'static> {
        let path = dir.join("w.safetensors");
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let t = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("a".to_string(), t)]), &path).unwrap();
        let map = HashMap::from([("x.weight".to_string(), source)]);
        var_builder(&path, map, DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn conv_weights_reshape_and_bad_shapes_are_errors_naming_both_keys() {
        let dir = tempfile::tempdir().unwrap();
        let whole = || Source::Whole("a".into());
        let vb = builder(dir.path(), &[2, 3, 1, 1], whole());
        assert_eq!(vb.get((2, 3), "x.weight").unwrap().dims(), &[2, 3]);
        // A rank the file's tensor cannot have: an error, not a panic.
        let vb = builder(dir.path(), &[2, 3], whole());
        let err = vb.get((2, 3, 1, 1), "x.weight").unwrap_err().to_string();
        assert!(
            err.contains("x.weight") && err.contains("the file's a"),
            "{err}"
        );
        let vb = builder(
            dir.path(),
            &[4, 3],
            Source::Rows {
                key: "a".into(),
                start: 0,
                len: 2,
            },
        );
        let err = vb.get((2, 3), "x.weight").unwrap_err().to_string();
        assert!(err.contains("three stacked"), "{err}");
        let vb = builder(dir.path(), &[2, 3], Source::Transposed("a".into()));
        let t = vb.get((3, 2), "x.weight").unwrap();
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
        );
    }
}
