//! The model's loaded weights, kept by name so a LoRA set can rebuild the
//! modules it touches without reading the model files again.
//!
//! At load, the UNet's and text encoders' VarBuilders are wrapped in a
//! recording backend: every tensor a module takes is also kept in a map
//! (the same reference-counted storage, so no extra memory). A LoRA set then
//! computes patched copies of the tensors it touches, `W + Σ multiplier ·
//! scale · up·down` in f32, cast back to the weight's dtype, and the affected
//! modules are built again from an overlay backend: patched tensors where the
//! set has them, the base model's everywhere else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use super::file::LoraLayer;
use super::names::{Component, ModuleIndex};
use crate::error::{EngineError, Result};

/// The tensors a part's modules were built from, by name.
pub type Weights = HashMap<String, Tensor>;

/// What [`recording`] collects while modules are built.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Weights>>);

impl Recorder {
    /// The tensors recorded so far.
    pub fn take(&self) -> Weights {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct Recording {
    inner: VarBuilder<'static>,
    seen: Recorder,
}

/// `vb` as a VarBuilder that also keeps every tensor it hands out.
pub fn recording(vb: VarBuilder<'static>) -> (VarBuilder<'static>, Recorder) {
    let seen = Recorder::default();
    let dtype = vb.dtype();
    let device = vb.device().clone();
    let backend = Recording {
        inner: vb,
        seen: seen.clone(),
    };
    (
        VarBuilder::from_backend(Box::new(backend), dtype, device),
        seen,
    )
}

impl SimpleBackend for Recording {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        hints: Init,
        dtype: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.inner.get_with_hints_dtype(shape, name, hints, dtype)?;
        let mut seen = self.seen.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        let t = self.inner.get_unchecked_dtype(name, dtype)?;
        let mut seen = self.seen.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// One part's loaded weights and the index LoRA names resolve in.
pub struct PartWeights {
    pub weights: Arc<Weights>,
    pub index: ModuleIndex,
}

impl PartWeights {
    pub fn new(component: Component, weights: Weights) -> Self {
        let index = ModuleIndex::new(
            component,
            weights.iter().map(|(n, t)| (n.as_str(), t.rank())),
        );
        Self {
            weights: Arc::new(weights),
            index,
        }
    }
}

/// The base model's UNet and text-encoder weights.
pub struct BaseWeights {
    pub unet: PartWeights,
    pub text_encoder: PartWeights,
    pub text_encoder_2: Option<PartWeights>,
}

impl BaseWeights {
    pub fn part(&self, component: Component) -> Option<&PartWeights> {
        match component {
            Component::Unet => Some(&self.unet),
            Component::TextEncoder => Some(&self.text_encoder),
            Component::TextEncoder2 => self.text_encoder_2.as_ref(),
        }
    }

    /// Patched copies of the tensors `layers` touch, per part: each layer
    /// with the multiplier `weight(layer)`, summed where layers share a
    /// weight (several LoRAs on one projection).
    pub fn patch(
        &self,
        layers: &[(String, LoraLayer, f64)],
    ) -> Result<HashMap<Component, Weights>> {
        let mut deltas: HashMap<(Component, &str), Tensor> = HashMap::new();
        for (lora, layer, multiplier) in layers {
            if *multiplier == 0.0 {
                continue;
            }
            let base = self
                .part(layer.component)
                .and_then(|p| p.weights.get(&layer.target))
                .ok_or_else(|| EngineError::InvalidLora {
                    name: lora.clone(),
                    message: format!("{} is not a weight of this model", layer.target),
                })?;
            let delta = delta(layer, base.shape()).map_err(|message| EngineError::InvalidLora {
                name: lora.clone(),
                message,
            })?;
            let delta = (delta * (layer.scale * multiplier))?;
            let key = (layer.component, layer.target.as_str());
            let sum = match deltas.remove(&key) {
                Some(prev) => (prev + delta)?,
                None => delta,
            };
            deltas.insert(key, sum);
        }
        let mut out: HashMap<Component, Weights> = HashMap::new();
        for ((component, target), delta) in deltas {
            let Some(base) = self.part(component).and_then(|p| p.weights.get(target)) else {
                continue;
            };
            let patched = (base.to_dtype(DType::F32)? + delta)?.to_dtype(base.dtype())?;
            out.entry(component)
                .or_default()
                .insert(target.to_string(), patched);
        }
        Ok(out)
    }
}

/// `up · down` in the weight's shape: linear `(out, r)·(r, in)`; a
/// convolution's down `(r, in, kh, kw)` flattened to `(r, in·kh·kw)` and up
/// `(out, r, 1, 1)` to `(out, r)` (LoCon), which is what the unfused
/// `B(A(x))` of two convolutions computes.
fn delta(layer: &LoraLayer, shape: &Shape) -> std::result::Result<Tensor, String> {
    let fail =
        |e: candle_core::Error| format!("{}: {}", layer.target, crate::error::describe_candle(&e));
    let dims = shape.dims();
    let rank = layer.down.dim(0).map_err(fail)?;
    let out = dims.first().copied().unwrap_or(0);
    let fan_in: usize = dims.iter().skip(1).product();
    let down_in: usize = layer.down.dims().iter().skip(1).product();
    let up_rest: usize = layer.up.dims().iter().skip(2).product();
    if layer.up.dim(0).ok() != Some(out) || down_in != fan_in || up_rest != 1 {
        return Err(format!(
            "{}: down {:?} / up {:?} do not fit the weight {:?}",
            layer.target,
            layer.down.dims(),
            layer.up.dims(),
            dims
        ));
    }
    let down = layer.down.reshape((rank, fan_in)).map_err(fail)?;
    let up = layer.up.reshape((out, rank)).map_err(fail)?;
    up.matmul(&down)
        .and_then(|d| d.reshape(shape))
        .map_err(fail)
}

/// A part's weights with some replaced: what a LoRA set's modules are built from.
pub struct Overlay {
    base: Arc<Weights>,
    patched: Weights,
}

impl Overlay {
    /// A VarBuilder serving `patched` over `base`.
    pub fn var_builder(
        base: Arc<Weights>,
        patched: Weights,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Self { base, patched }), dtype, device.clone())
    }

    fn find(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.patched
            .get(name)
            .or_else(|| self.base.get(name))
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            })
    }
}

impl SimpleBackend for Overlay {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.find(name)?;
        if t.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: t.shape().clone(),
            });
        }
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        self.find(name)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.patched.contains_key(name) || self.base.contains_key(name)
    }
}
