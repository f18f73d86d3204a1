//! Single-file checkpoints: one `.safetensors` in the original LDM key layout
//! (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`),
//! as A1111 and most model sites keep SD 1.x and 2.x models.
//!
//! The architecture comes from the original config `<name>.yaml` next to the
//! file when there is one (`yaml.rs`), else from the tensors' names and shapes
//! for the standard architectures (`detect.rs`); `configs.rs` turns it into
//! the diffusers configs our modules are built from, `keys.rs` maps the LDM
//! names to diffusers names and `weights.rs` serves them to the modules. The
//! tokenizer is CLIP's BPE bundled in the binary (`vocab.rs`). SDXL base files
//! (`conditioner.embedders.0/1.*`, an SGM yaml) load too; the refiner is refused.

mod configs;
mod detect;
mod keys;
mod vocab;
mod weights;
mod yaml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::config::{PerBlock, SchedulerConfig, TextEncoderConfig, UNetConfig, VaeConfig};
use crate::error::{EngineError, Result};
use crate::loader::{tensor_shapes, TensorNames};
use crate::tokenizer::ClipTokenizer;
use detect::{Family, Refusal, Shapes};
pub use keys::Part;
use keys::{KeyMap, Layout, Source};
use yaml::{Component, ModelParams, OriginalConfig};

/// The latent scaling of the SD 1.x/2.x VAE, when the yaml gives no `scale_factor`.
const DEFAULT_SCALE_FACTOR: f64 = 0.18215;
/// SDXL's VAE scaling (`sd_xl_base.yaml`'s `scale_factor`).
const SDXL_SCALE_FACTOR: f64 = 0.13025;
/// Width of SDXL's size embeddings (`ConcatTimestepEmbedderND`'s `outdim`), when no yaml gives it.
const SDXL_TIME_EMBED_DIM: usize = 256;

/// A checked single-file checkpoint: its components' configs and key maps.
pub struct SingleFile {
    path: PathBuf,
    /// The original config it was described by, if any (named in config errors).
    yaml: Option<PathBuf>,
    family: Family,
    unet: UNetConfig,
    vae: VaeConfig,
    /// Per text encoder part (SDXL has two).
    text_encoders: HashMap<Part, TextEncoderConfig>,
    scheduler: SchedulerConfig,
    keys: KeyMap,
    /// Shape and dtype of each tensor, for the memory plan.
    tensors: HashMap<String, (Vec<usize>, DType)>,
}

impl SingleFile {
    /// Reads the header of `path` (and `<name>.yaml` beside it), works out the
    /// architecture and maps the keys; no tensor data is read.
    pub fn open(path: &Path) -> Result<Self> {
        let tensors: HashMap<String, (Vec<usize>, DType)> = tensor_shapes(path)?
            .into_iter()
            .map(|(name, shape, dtype)| (name, (shape, dtype)))
            .collect();
        let shapes: Shapes = tensors
            .iter()
            .map(|(k, (s, _))| (k.clone(), s.clone()))
            .collect();
        let family = detect::family(&shapes).map_err(|r| refusal(path, r))?;
        let yaml_path = path.with_extension("yaml");
        let (config, yaml) = if yaml_path.is_file() {
            (OriginalConfig::read(&yaml_path)?, Some(yaml_path))
        } else {
            let standard = detect::standard(&shapes, family).map_err(|r| match r {
                Refusal::Invalid(m) => EngineError::invalid_model(
                    path,
                    format!(
                        "{m}; put the model's original config next to it as {}",
                        yaml_path.display()
                    ),
                ),
                other => refusal(path, other),
            })?;
            tracing::info!("{}: detected {}", path.display(), standard.name);
            (from_standard(standard), None)
        };
        let at = yaml.as_deref().unwrap_or(path);
        let p = &config.model.params;
        if p.conditioner_config.is_some() && family != Family::Sdxl {
            return Err(refusal(
                at,
                Refusal::Invalid(format!(
                    "an SGM conditioner_config (SDXL) for a {family:?} checkpoint"
                )),
            ));
        }
        let missing =
            |what: &str| EngineError::invalid_model(at, format!("model.params.{what} is missing"));
        let unet_params = &p
            .unet_config
            .as_ref()
            .ok_or_else(|| missing("unet_config"))?
            .params;
        let vae_params = &p
            .first_stage_config
            .as_ref()
            .ok_or_else(|| missing("first_stage_config"))?
            .params;
        let image_size = p
            .image_size
            .unwrap_or(match (family, p.parameterization.as_deref()) {
                (Family::Sd2, Some("v")) => 96,
                (Family::Sdxl, _) => 128,
                _ => 64,
            });
        let cond = p.cond_stage_config.as_ref();
        let target = cond.and_then(|c| c.target.as_deref()).unwrap_or_default();
        let open_clip = target.ends_with("FrozenOpenCLIPEmbedder");
        if (open_clip || target.ends_with("FrozenCLIPEmbedder"))
            && family != Family::Sdxl
            && open_clip != (family == Family::Sd2)
        {
            return Err(EngineError::invalid_model(
                at,
                format!("cond_stage_config target {target} does not match the file's text encoder ({family:?})"),
            ));
        }
        let layer = cond.map(|c| c.params.layer.as_deref().unwrap_or("last"));
        let overrides = &config.diffusers;
        let time_embed_dim = p
            .conditioner_config
            .as_ref()
            .and_then(|c| c.time_embed_dim())
            .unwrap_or(SDXL_TIME_EMBED_DIM);
        let unet = configs::unet_config(unet_params, image_size, time_embed_dim, &overrides.unet)
            .map_err(|r| refusal(at, r))?;
        let scale = p.scale_factor.unwrap_or(match family {
            Family::Sdxl => SDXL_SCALE_FACTOR,
            _ => DEFAULT_SCALE_FACTOR,
        });
        let vae = configs::vae_config(vae_params, image_size, scale, &overrides.vae)
            .map_err(|r| refusal(at, r))?;
        let specs = configs::text_encoders(family, layer).map_err(|r| refusal(at, r))?;
        let mut text_encoders = HashMap::new();
        for spec in &specs {
            let part = spec.keys.part;
            let overrides = match part {
                Part::TextEncoder2 => &overrides.text_encoder_2,
                _ => &overrides.text_encoder,
            };
            let config = configs::text_encoder_config(&shapes, spec, overrides)
                .map_err(|r| refusal(at, r))?;
            text_encoders.insert(part, config);
        }
        let scheduler = configs::scheduler_config(p, family, &overrides.scheduler)
            .map_err(|r| refusal(at, r))?;
        let layers_per_block = match &unet_params.num_res_blocks {
            PerBlock::One(n) => *n,
            PerBlock::Each(v) => match v.first() {
                Some(n) if v.iter().all(|m| m == n) => *n,
                _ => {
                    return Err(refusal(
                        at,
                        Refusal::Unsupported("num_res_blocks differing per level".into()),
                    ))
                }
            },
        };
        let layout = Layout {
            unet_layers_per_block: layers_per_block,
            vae_levels: vae.block_out_channels.len(),
            text: specs.iter().map(|s| s.keys).collect(),
        };
        let mut keys = keys::map_keys(
            shapes.iter().map(|(k, s)| (k.as_str(), s.as_slice())),
            &layout,
        );
        // Layers a family skips (SD 2.x's last) are neither loaded nor counted.
        for (part, config) in &text_encoders {
            let layers = config.num_hidden_layers;
            if let Some(map) = keys.get_mut(part) {
                map.retain(|name, _| layer_index(name).is_none_or(|i| i < layers));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            yaml,
            family,
            unet,
            vae,
            text_encoders,
            scheduler,
            keys,
            tensors,
        })
    }

    /// The file itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the configs came from: the yaml when there is one, else the file.
    pub fn config_path(&self) -> &Path {
        self.yaml.as_deref().unwrap_or(&self.path)
    }

    /// Whether the file holds `part`.
    pub fn has(&self, part: Part) -> bool {
        match part {
            Part::TextEncoder | Part::TextEncoder2 => self.text_encoders.contains_key(&part),
            Part::Unet | Part::Vae => true,
        }
    }

    /// CLIP's bundled tokenizer for text encoder `part`, padded as the family's
    /// diffusers tokenizer (SD 2.x's and SDXL's `tokenizer_2` pad with `!`).
    pub fn tokenizer(&self, part: Part) -> Result<ClipTokenizer> {
        vocab::bundled_tokenizer(match (self.family, part) {
            (Family::Sd2, _) | (Family::Sdxl, Part::TextEncoder2) => vocab::Padding::Bang,
            _ => vocab::Padding::EndOfText,
        })
    }

    pub fn unet_config(&self) -> &UNetConfig {
        &self.unet
    }

    pub fn vae_config(&self) -> &VaeConfig {
        &self.vae
    }

    /// The config of text encoder `part`.
    pub fn text_encoder_config(&self, part: Part) -> Result<TextEncoderConfig> {
        match self.text_encoders.get(&part) {
            Some(config) => Ok(config.clone()),
            None => Err(EngineError::invalid_model(
                &self.path,
                format!("no {part:?} in this checkpoint"),
            )),
        }
    }

    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
    }

    fn part(&self, part: Part) -> HashMap<String, Source> {
        self.keys.get(&part).cloned().unwrap_or_default()
    }

    /// A VarBuilder serving `part` under diffusers names, and those names.
    pub fn var_builder(
        &self,
        part: Part,
        dtype: DType,
        device: &Device,
    ) -> Result<(VarBuilder<'static>, TensorNames)> {
        let map = self.part(part);
        let names = map.keys().cloned().collect();
        Ok((weights::var_builder(&self.path, map, dtype, device)?, names))
    }

    /// Bytes `part`'s tensors take once converted to `dtype`.
    pub fn runtime_bytes(&self, part: Part, dtype: DType) -> u64 {
        let mut total = 0u64;
        for source in self.part(part).values() {
            let Some((shape, file_dtype)) = self.tensors.get(source.key()) else {
                continue;
            };
            let elems: u64 = match source {
                Source::Whole(_) | Source::Transposed(_) => {
                    shape.iter().map(|d| *d as u64).product()
                }
                Source::Rows { len, .. } => {
                    let row: u64 = shape.iter().skip(1).map(|d| *d as u64).product();
                    row.saturating_mul(*len as u64)
                }
            };
            let size = if file_dtype.is_float() {
                dtype
            } else {
                *file_dtype
            }
            .size_in_bytes();
            total = total.saturating_add(elems.saturating_mul(size as u64));
        }
        total
    }
}

/// `i` of a `text_model.encoder.layers.i.` name.
fn layer_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("text_model.encoder.layers.")?;
    rest.split_once('.')?.0.parse().ok()
}

/// The yaml a standard architecture stands for.
fn from_standard(s: detect::Standard) -> OriginalConfig {
    OriginalConfig {
        model: yaml::ModelSection {
            params: ModelParams {
                parameterization: Some(s.parameterization.into()),
                image_size: Some(s.image_size),
                unet_config: Some(Component { params: s.unet }),
                first_stage_config: Some(Component { params: s.vae }),
                ..Default::default()
            },
        },
        diffusers: Default::default(),
    }
}

/// A detection or config refusal as the engine's error, naming `path`.
fn refusal(path: &Path, r: Refusal) -> EngineError {
    match r {
        Refusal::Invalid(m) => EngineError::invalid_model(path, m),
        Refusal::Unsupported(m) => EngineError::Unsupported(format!("{}: {m}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::ScoreBlock;
    use crate::conditioning::TextConditioner;
    use crate::model::StableDiffusion;
    use crate::test_util::max_diff;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
    }

    /// Each component built from the single file gives exactly the outputs of
    /// the one built from the diffusers folder, and diffusers' recorded outputs
    /// (`reference/debug.safetensors`) within 1e-4.
    #[test]
    fn components_equal_the_folders() {
        let debug = candle_core::safetensors::load(
            fixtures().join("reference/debug.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        for (model, key) in [("tiny-sd1", "sd1"), ("tiny-sd2", "sd2")] {
            let load = |path: PathBuf| {
                StableDiffusion::load_with(&path, &Device::Cpu, ScoreBlock::DEFAULT, DType::F32)
                    .unwrap()
            };
            let folder = load(fixtures().join("models").join(model));
            let single = load(fixtures().join(format!("models/single/{model}.safetensors")));
            let get = |name: &str| debug[&format!("{key}.{name}")].clone();

            let prompt = "a photograph of an astronaut riding a horse";
            let ids = |sd: &StableDiffusion| match &sd.text {
                TextConditioner::Single(e) => e.tokenizer.encode(prompt),
                TextConditioner::Dual { .. } => panic!("{model}: two text encoders"),
            };
            assert_eq!(ids(&single), ids(&folder), "{model}: tokenizer");
            let embeds = single
                .text
                .encode(prompt, Default::default(), &Device::Cpu)
                .unwrap()
                .context;
            let folder_embeds = folder
                .text
                .encode(prompt, Default::default(), &Device::Cpu)
                .unwrap()
                .context;
            assert_eq!(
                max_diff(&embeds, &folder_embeds),
                0.0,
                "{model}: text encoder"
            );
            assert!(
                max_diff(&embeds, &get("text_embeds")) < 1e-4,
                "{model}: text encoder vs diffusers"
            );

            let t = get("unet_t").to_vec1::<f32>().unwrap()[0] as f64;
            let (x, ctx) = (get("unet_in"), get("unet_ctx"));
            let noise = single.unet.forward(&x, t, &ctx, None).unwrap();
            assert_eq!(
                max_diff(&noise, &folder.unet.forward(&x, t, &ctx, None).unwrap()),
                0.0,
                "{model}: unet"
            );
            assert!(
                max_diff(&noise, &get("unet_out")) < 1e-4,
                "{model}: unet vs diffusers"
            );

            let z = get("vae_in");
            let pixels = single.vae.decode(&z).unwrap();
            assert_eq!(
                max_diff(&pixels, &folder.vae.decode(&z).unwrap()),
                0.0,
                "{model}: vae"
            );
            assert!(
                max_diff(&pixels, &get("vae_out")) < 1e-4,
                "{model}: vae vs diffusers"
            );

            assert_eq!(single.sample_size, folder.sample_size, "{model}");
            assert_eq!(single.vae_sample_size, folder.vae_sample_size, "{model}");
            assert_eq!(
                single.vae_scaling_factor, folder.vae_scaling_factor,
                "{model}"
            );
            let (s, f) = (&single.scheduler, &folder.scheduler);
            assert_eq!(
                (
                    &s.prediction_type,
                    &s.timestep_spacing,
                    s.steps_offset,
                    s.beta_start,
                    s.beta_end
                ),
                (
                    &f.prediction_type.clone().or(Some("epsilon".into())),
                    &f.timestep_spacing,
                    f.steps_offset,
                    f.beta_start,
                    f.beta_end
                ),
                "{model}: scheduler"
            );
        }
    }

    /// SDXL: both text encoders (hidden states and pooled output, zeros for an
    /// empty negative), the UNet with added conditioning and the VAE equal the folder's.
    #[test]
    fn sdxl_components_equal_the_folders() {
        use crate::unet::AddedConditioning;
        let debug = candle_core::safetensors::load(
            fixtures().join("reference/sdxl-debug.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let load = |path: PathBuf| {
            StableDiffusion::load_with(&path, &Device::Cpu, ScoreBlock::DEFAULT, DType::F32)
                .unwrap()
        };
        let folder = load(fixtures().join("models/tiny-sdxl"));
        let single = load(fixtures().join("models/single/tiny-sdxl.safetensors"));
        let get = |name: &str| debug[&format!("tiny_sdxl.{name}")].clone();
        let dev = &Device::Cpu;
        for (text, negative) in [
            ("a photograph of an astronaut riding a horse", false),
            ("blurry", true),
            ("", true),
        ] {
            let encode = |sd: &StableDiffusion| match negative {
                true => sd
                    .text
                    .encode_negative(text, Default::default(), dev)
                    .unwrap(),
                false => sd.text.encode(text, Default::default(), dev).unwrap(),
            };
            let (a, b) = (encode(&single), encode(&folder));
            assert_eq!(max_diff(&a.context, &b.context), 0.0, "{text:?}: context");
            let (pa, pb) = (a.pooled.unwrap(), b.pooled.unwrap());
            assert_eq!(max_diff(&pa, &pb), 0.0, "{text:?}: pooled");
        }
        let prompt = single
            .text
            .encode(
                "a photograph of an astronaut riding a horse",
                Default::default(),
                dev,
            )
            .unwrap();
        assert!(max_diff(&prompt.context, &get("prompt_embeds")) < 1e-4);
        assert!(max_diff(&prompt.pooled.unwrap(), &get("pooled_prompt_embeds")) < 1e-4);

        let t = get("unet_t").to_vec1::<f32>().unwrap()[0] as f64;
        let added = AddedConditioning {
            text_embeds: get("unet_text_embeds"),
            time_ids: get("unet_time_ids"),
        };
        let (x, ctx) = (get("unet_in"), get("unet_ctx"));
        let out = single.unet.forward(&x, t, &ctx, Some(&added)).unwrap();
        let reference = folder.unet.forward(&x, t, &ctx, Some(&added)).unwrap();
        assert_eq!(max_diff(&out, &reference), 0.0, "unet");
        assert!(max_diff(&out, &get("unet_out")) < 1e-4, "unet vs diffusers");
        let z = (get("unet_in").narrow(0, 0, 1).unwrap() * 0.5).unwrap();
        assert_eq!(
            max_diff(
                &single.vae.decode(&z).unwrap(),
                &folder.vae.decode(&z).unwrap()
            ),
            0.0,
            "vae"
        );
        assert_eq!(
            (
                single.sample_size,
                single.vae_sample_size,
                single.vae_scaling_factor
            ),
            (
                folder.sample_size,
                folder.vae_sample_size,
                folder.vae_scaling_factor
            )
        );
        let (s, f) = (&single.scheduler, &folder.scheduler);
        assert_eq!(
            (&s.timestep_spacing, s.steps_offset, &s.prediction_type),
            (&f.timestep_spacing, f.steps_offset, &f.prediction_type)
        );
    }

    /// The memory plan counts the same weight bytes for a single file as for
    /// its folder (SD 2.x's skipped layer and unused projection left out).
    #[test]
    fn weight_bytes_equal_the_folders() {
        use crate::model_files::ModelFiles;
        for model in ["tiny-sd1", "tiny-sd2", "tiny-sdxl"] {
            let folder = ModelFiles::open(&fixtures().join("models").join(model)).unwrap();
            let path = fixtures().join(format!("models/single/{model}.safetensors"));
            let single = ModelFiles::open(&path).unwrap();
            for part in [Part::TextEncoder, Part::TextEncoder2, Part::Unet, Part::Vae] {
                assert_eq!(single.has(part), folder.has(part), "{model} {part:?}");
                if !folder.has(part) {
                    continue;
                }
                let a = single.runtime_bytes(part, DType::F32).unwrap();
                let b = folder.runtime_bytes(part, DType::F32).unwrap();
                // A folder's text encoder may hold its int64 position_ids (77 x 8 bytes).
                assert!(a.abs_diff(b) <= 77 * 8, "{model} {part:?}: {a} vs {b}");
            }
        }
    }

    /// Real architectures (SD 1.5, SD 2.1 768-v, SDXL base): a sparse file with
    /// the tensor names and shapes of a real single file
    /// (`reference/single-file-standard-keys.json.gz`, from
    /// make_single_file_fixtures.py) is detected without a yaml, and its key
    /// map gives each part exactly the diffusers names and shapes it loads.
    #[test]
    fn standard_files_map_to_every_diffusers_weight() {
        use std::io::{Read, Write};
        type Entries = Vec<(String, Vec<usize>)>;
        let gz =
            std::fs::read(fixtures().join("reference/single-file-standard-keys.json.gz")).unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .unwrap();
        let all: HashMap<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (model, family, layers) in [
            (
                "sd15",
                Family::Sd1 { text_model: true },
                vec![(Part::TextEncoder, 12)],
            ),
            ("sd21", Family::Sd2, vec![(Part::TextEncoder, 23)]),
            (
                "sdxl",
                Family::Sdxl,
                vec![(Part::TextEncoder, 12), (Part::TextEncoder2, 32)],
            ),
        ] {
            let ldm: Entries = serde_json::from_value(all[model]["ldm"].clone()).unwrap();
            // A header-only (sparse) f16 file: shapes are real, data is never read.
            let mut header = serde_json::Map::new();
            let mut offset = 0usize;
            for (name, shape) in &ldm {
                let bytes = 2 * shape.iter().product::<usize>();
                let entry = serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + bytes]});
                header.insert(name.clone(), entry);
                offset += bytes;
            }
            let header = serde_json::to_vec(&header).unwrap();
            let path = dir.path().join(format!("{model}.safetensors"));
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
            f.write_all(&header).unwrap();
            f.set_len((8 + header.len() + offset) as u64).unwrap();

            let file = SingleFile::open(&path).unwrap();
            assert_eq!(file.family, family, "{model}");
            let ldm: HashMap<String, Vec<usize>> = ldm.into_iter().collect();
            let parts = [
                ("unet", Part::Unet),
                ("vae", Part::Vae),
                ("text_encoder", Part::TextEncoder),
                ("text_encoder_2", Part::TextEncoder2),
            ];
            for (key, part) in parts {
                let Some(expected) = all[model]["diffusers"].get(key) else {
                    assert!(!file.has(part), "{model}: {key}");
                    continue;
                };
                let expected: Entries = serde_json::from_value(expected.clone()).unwrap();
                let map = file.part(part);
                let mut got: Vec<&String> = map.keys().collect();
                got.sort();
                let names: Vec<&String> = expected.iter().map(|(n, _)| n).collect();
                assert_eq!(got, names, "{model}: {key} names");
                for (name, shape) in &expected {
                    let source = &map[name];
                    let file_shape = &ldm[source.key()];
                    let served = match source {
                        // LDM's 1x1-conv form of a linear weight has trailing 1s.
                        Source::Whole(_)
                            if file_shape[shape.len().min(file_shape.len())..]
                                .iter()
                                .all(|d| *d == 1) =>
                        {
                            file_shape[..shape.len().min(file_shape.len())].to_vec()
                        }
                        Source::Whole(_) => file_shape.clone(),
                        Source::Rows { len, .. } => [&[*len][..], &file_shape[1..]].concat(),
                        Source::Transposed(_) => file_shape.iter().rev().copied().collect(),
                    };
                    assert_eq!(&served, shape, "{model}: {name} from {}", source.key());
                }
            }
            for (part, n) in layers {
                assert_eq!(
                    file.text_encoder_config(part).unwrap().num_hidden_layers,
                    n,
                    "{model} {part:?}"
                );
            }
            let unet = file.unet_config();
            match model {
                "sdxl" => {
                    assert_eq!(unet.addition_embed_type.as_deref(), Some("text_time"));
                    assert_eq!(file.vae_config().scaling_factor, 0.13025);
                }
                "sd21" => assert_eq!(
                    file.scheduler_config().prediction_type.as_deref(),
                    Some("v_prediction")
                ),
                _ => assert_eq!(
                    file.scheduler_config().prediction_type.as_deref(),
                    Some("epsilon")
                ),
            }
        }
    }

    /// Copies `names` of `fixtures/models/single/` into a fresh folder.
    fn copy(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in names {
            std::fs::copy(
                fixtures().join("models/single").join(name),
                dir.path().join(name),
            )
            .unwrap();
        }
        dir
    }

    #[test]
    fn tiny_file_without_yaml_names_what_is_missing() {
        let dir = copy(&["tiny-sd1.safetensors"]);
        let file = dir.path().join("tiny-sd1.safetensors");
        let msg = SingleFile::open(&file).err().unwrap().to_string();
        assert!(msg.contains("tiny-sd1.safetensors"), "{msg}");
        assert!(msg.contains("not a standard SD 1.x architecture"), "{msg}");
        assert!(
            msg.contains("model.diffusion_model.input_blocks.0.0.weight is [32, 4, 3, 3]"),
            "{msg}"
        );
        assert!(msg.contains("tiny-sd1.yaml"), "{msg}");
    }

    #[test]
    fn yaml_without_head_count_or_with_the_wrong_family_is_refused() {
        let dir = copy(&["tiny-sd2.safetensors", "tiny-sd2.yaml"]);
        let (file, yaml) = (
            dir.path().join("tiny-sd2.safetensors"),
            dir.path().join("tiny-sd2.yaml"),
        );
        let text = std::fs::read_to_string(&yaml).unwrap();
        std::fs::write(&yaml, text.replace("    num_attention_heads: 4\n", "")).unwrap();
        let msg = SingleFile::open(&file).err().unwrap().to_string();
        assert!(
            msg.contains("tiny-sd2.yaml")
                && msg.contains("diffusers.text_encoder.num_attention_heads"),
            "{msg}"
        );

        std::fs::write(
            &yaml,
            text.replace("FrozenOpenCLIPEmbedder", "FrozenCLIPEmbedder"),
        )
        .unwrap();
        let msg = SingleFile::open(&file).err().unwrap().to_string();
        assert!(
            msg.contains("does not match the file's text encoder"),
            "{msg}"
        );

        std::fs::write(
            &yaml,
            text.replace("model_channels: 32", "model_channels: thirty-two"),
        )
        .unwrap();
        let msg = SingleFile::open(&file).err().unwrap().to_string();
        assert!(
            msg.contains("tiny-sd2.yaml") && msg.contains("model_channels"),
            "{msg}"
        );

        // A yaml whose UNet differs from the weights: the load names the tensor.
        std::fs::write(
            &yaml,
            text.replace("num_res_blocks: 2", "num_res_blocks: 1"),
        )
        .unwrap();
        let err = StableDiffusion::load_with(&file, &Device::Cpu, ScoreBlock::DEFAULT, DType::F32)
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(msg.contains("tiny-sd2.safetensors"), "{msg}");
    }

    #[test]
    fn pickles_and_non_model_files_are_refused() {
        for name in ["model.ckpt", "model.pt", "model.bin"] {
            let err = crate::model_files::ModelFiles::open(Path::new(name))
                .err()
                .unwrap();
            assert!(
                matches!(err, EngineError::UnsafeFormat { .. }),
                "{name}: {err}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("empty.safetensors");
        let header = br#"{"a.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0; 4]);
        std::fs::write(&file, bytes).unwrap();
        let msg = SingleFile::open(&file).err().unwrap().to_string();
        assert!(
            msg.contains("empty.safetensors") && msg.contains("model.diffusion_model"),
            "{msg}"
        );
    }
}
